//! A small deterministic Korean + English corpus made from word lists.

#![allow(dead_code)]

const KO: &[&str] = &[
    "대한민국은",
    "민주공화국이다",
    "모든",
    "국민은",
    "법",
    "앞에",
    "평등하다",
    "누구든지",
    "성별",
    "종교",
    "또는",
    "사회적",
    "신분에",
    "의하여",
    "정치적",
    "경제적",
    "문화적",
    "생활의",
    "영역에",
    "있어서",
    "차별을",
    "받지",
    "아니한다",
    "국가는",
    "개인이",
    "가지는",
    "불가침의",
    "기본적",
    "인권을",
    "확인하고",
    "이를",
    "보장할",
    "의무를",
    "진다",
    "학교에서",
    "공부를",
    "했습니다",
    "오늘은",
    "날씨가",
    "좋아서",
    "친구와",
    "함께",
    "산책을",
    "갔어요",
    "한국어",
    "토크나이저를",
    "직접",
    "학습합니다",
    "데이터",
    "처리",
    "과정은",
    "투명하게",
    "기록됩니다",
];
const EN: &[&str] = &[
    "the",
    "king",
    "is",
    "dead",
    "long",
    "live",
    "to",
    "be",
    "or",
    "not",
    "that",
    "question",
    "whether",
    "nobler",
    "in",
    "mind",
    "suffer",
    "slings",
    "and",
    "arrows",
    "of",
    "outrageous",
    "fortune",
    "we",
    "train",
    "our",
    "own",
    "tokenizer",
    "from",
    "scratch",
    "it's",
    "they're",
    "don't",
];

/// A tiny LCG so tests need no RNG crate and are reproducible.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() as usize) % xs.len()]
    }
}

/// `n` documents, mostly Korean sentences, some English, with numbers and punctuation.
pub fn docs(n: usize, seed: u64) -> Vec<String> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|_| {
            let mut d = String::new();
            for s in 0..(3 + r.next() % 4) {
                let english = r.next().is_multiple_of(4);
                for w in 0..(4 + r.next() % 8) {
                    if w > 0 {
                        d.push(' ');
                    }
                    d.push_str(if english { r.pick(EN) } else { r.pick(KO) });
                }
                if r.next().is_multiple_of(3) {
                    d.push_str(&format!(" {}", r.next() % 100000));
                }
                d.push_str(if s % 2 == 0 { ". " } else { "!\n" });
            }
            d
        })
        .collect()
}

pub fn korean_text(n: usize, seed: u64) -> String {
    let mut r = Lcg(seed);
    (0..n).map(|_| r.pick(KO)).collect::<Vec<_>>().join(" ")
}
