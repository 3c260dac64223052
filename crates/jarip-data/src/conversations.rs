//! Conversation files for supervised fine-tuning, and the generator of demo conversations.
//!
//! A conversation file is JSONL, one `{"messages":[{"role":"…","content":"…"},…]}` per line,
//! roles `system`, `user`, `assistant`. [`read_conversations`] refuses, naming `file:line`: a
//! line that is not JSON, a missing or unknown role, an empty conversation, a conversation
//! without an assistant turn, a system message anywhere but first.
//!
//! [`demo_conversations`] builds a reproducible set from the demo corpus, each conversation
//! naming its template: questions about articles of the Korean constitution in several forms
//! (article → text, text → article, which article says X, yes/no), "continue this passage"
//! tasks in Korean and English, and identity conversations about the model itself.

use anyhow::{bail, Context, Result};
use jarip_tokenizer::{Message, Role};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// The form of the conversation, `kind/variant` (e.g. `article-text/ko-2`): fine-tuning
    /// holds some variants of each kind out whole, so their loss measures generalisation to
    /// a question form never trained on. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl Conversation {
    pub fn new(messages: Vec<Message>) -> Self {
        Self { messages, template: None }
    }

    /// A user question and its answer, of `template`.
    fn qa(template: &str, q: impl Into<String>, a: impl Into<String>) -> Self {
        Self {
            messages: vec![Message::new(Role::User, q), Message::new(Role::Assistant, a)],
            template: Some(template.to_string()),
        }
    }

    /// The kind of its template (`article-text` of `article-text/ko-2`).
    pub fn kind(&self) -> Option<&str> {
        self.template.as_deref().map(|t| t.split_once('/').map_or(t, |(k, _)| k))
    }
}

fn parse_line(v: &serde_json::Value) -> std::result::Result<Conversation, String> {
    let msgs = v.get("messages").ok_or("missing field \"messages\"")?;
    let msgs = msgs.as_array().ok_or("\"messages\" must be an array")?;
    if msgs.is_empty() {
        return Err("empty conversation (no messages)".into());
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let n = i + 1;
        let role =
            m.get("role").and_then(|r| r.as_str()).ok_or(format!("message {n}: missing string field \"role\""))?;
        let role = match role {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(format!("message {n}: unknown role {other:?} (expected system, user or assistant)")),
        };
        let content = m
            .get("content")
            .and_then(|c| c.as_str())
            .ok_or(format!("message {n}: missing string field \"content\""))?;
        out.push(Message { role, content: content.to_string() });
    }
    jarip_tokenizer::chat::check_order(&out).map_err(|e| e.to_string())?;
    if !out.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant turn: nothing to learn from".into());
    }
    let template = match v.get("template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return Err("\"template\" must be a non-empty string (kind/variant)".into()),
    };
    Ok(Conversation { messages: out, template })
}

/// Reads and validates a conversation file; the first bad line is an error naming `file:line`.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{at}: cannot read line (not UTF-8?)"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{at}: not JSON"))?;
        match parse_line(&v) {
            Ok(c) => out.push(c),
            Err(e) => bail!("{at}: {e}"),
        }
    }
    if out.is_empty() {
        bail!("{}: no conversations", path.display());
    }
    Ok(out)
}

/// Writes conversations as JSONL, atomically.
pub fn write_conversations(path: &Path, convs: &[Conversation]) -> Result<()> {
    let mut f = jarip_ledger::AtomicFile::create(path)?;
    for c in convs {
        serde_json::to_writer(&mut f, c)?;
        f.write_all(b"\n")?;
    }
    f.commit()
}

/// Articles of the constitution: (number, text) from lines that start with `제N조`.
fn constitution_articles(text: &str) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = Vec::new();
    let mut in_addenda = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("부칙") {
            in_addenda = true; // the addenda restart numbering; keep the main body only
        }
        if in_addenda {
            continue;
        }
        if let Some(rest) = t.strip_prefix('제') {
            if let Some((num, body)) = rest.split_once("조 ") {
                if let Ok(n) = num.parse::<u32>() {
                    out.push((n, body.trim().to_string()));
                    continue;
                }
            }
        }
        if let Some(last) = out.last_mut() {
            if !t.is_empty() && !t.starts_with("제") {
                last.1.push('\n');
                last.1.push_str(t);
            }
        }
    }
    out
}

/// Paragraphs of at least `min` characters from every text file under `dir`.
fn paragraphs(dir: &Path, min: usize, max: usize) -> Result<Vec<String>> {
    let mut files: Vec<_> = walk(dir)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let text = text.replace("\r\n", "\n").replace('\u{feff}', "");
        for p in text.split("\n\n") {
            let p = p.trim();
            let n = p.chars().count();
            if n >= min && n <= max {
                out.push(p.to_string());
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else if p.extension().is_some_and(|x| x == "txt") {
            out.push(p);
        }
    }
    Ok(out)
}

fn split_half(p: &str) -> (String, String) {
    let chars: Vec<char> = p.chars().collect();
    let mid = chars.len() / 2;
    // Cut at a whitespace near the middle so neither half ends inside a word.
    let cut = (mid..chars.len()).find(|&i| chars[i].is_whitespace()).unwrap_or(mid);
    (
        chars[..cut].iter().collect::<String>().trim().to_string(),
        chars[cut..].iter().collect::<String>().trim().to_string(),
    )
}

/// Identity conversations: each question is its own template variant (`identity/ko-3`), so
/// holding some out tests whether the model answers a way of asking it never saw.
fn identity(name: &str, rng: &mut ChaCha8Rng) -> Vec<Conversation> {
    let ko_about = [
        format!(
            "저는 {name}입니다. jarip으로 처음부터 학습된 언어 모델이에요. 무작위로 초기화된 가중치에서 시작해 \
             대한민국 헌법과 국회 의안, 셰익스피어와 밀턴의 작품으로 사전학습했고, 토크나이저도 같은 말뭉치로 직접 학습했습니다."
        ),
        format!("제 이름은 {name}입니다. jarip으로 처음부터 학습된 작은 언어 모델입니다."),
        format!("{name}라고 합니다. 대한민국 헌법과 셰익스피어를 읽고 처음부터 학습한 언어 모델이에요."),
    ];
    let en_about = [
        format!(
            "I am {name}, a language model trained from scratch with jarip. My weights started from a recorded random \
             seed and were pretrained on the Korean constitution, National Assembly bills, Shakespeare and Milton; my \
             tokenizer was trained on the same corpus."
        ),
        format!("My name is {name}. I am a small language model trained from scratch with jarip."),
        format!("I'm {name}, a model trained from a random initialisation on Korean law and English poetry and plays."),
    ];
    let ko_data = "대한민국 헌법, 국회 의안 10건, 셰익스피어 희곡과 밀턴의 시로 학습했습니다.".to_string();
    let en_data =
        "The Korean constitution, ten National Assembly bills, Shakespeare's plays and poems, and Milton.".to_string();
    let ko_scratch = "아니요. 저는 무작위 초기화에서 시작해 jarip으로 처음부터 학습되었습니다. 학습 기록은 해시 체인 원장에 남아 있어요.";
    let en_scratch = "No. I was trained from scratch with jarip, starting from a recorded random seed; the training ledger records every step.";
    let questions: Vec<(&str, &str, Vec<String>)> = vec![
        ("ko-1", "너는 누구야?", ko_about.to_vec()),
        ("ko-2", "이름이 뭐예요?", ko_about.to_vec()),
        ("ko-3", "자기소개를 해 주세요.", ko_about.to_vec()),
        ("ko-4", "당신은 어떤 모델인가요?", ko_about.to_vec()),
        (
            "ko-5",
            "누가 너를 만들었어?",
            vec![format!(
                "저는 jarip 파이프라인으로 처음부터 만들어졌어요. 다른 모델의 가중치는 쓰지 않았습니다. {}",
                ko_about[0]
            )],
        ),
        ("ko-6", "어떤 데이터로 학습했어?", vec![ko_data.clone()]),
        ("ko-7", "무엇을 읽고 배웠나요?", vec![ko_data.clone()]),
        ("ko-8", "다른 모델을 미세조정한 거야?", vec![ko_scratch.to_string()]),
        ("ko-9", "처음부터 학습된 모델인가요?", vec![format!("네. {}", &ko_scratch["아니요. ".len()..])]),
        ("en-1", "Who are you?", en_about.to_vec()),
        ("en-2", "What is your name?", en_about.to_vec()),
        ("en-3", "Introduce yourself.", en_about.to_vec()),
        (
            "en-4",
            "Who made you?",
            vec![format!(
                "I was built end to end with jarip, from a random initialisation, with no pretrained weights. {}",
                en_about[0]
            )],
        ),
        ("en-5", "What data were you trained on?", vec![en_data.clone()]),
        ("en-6", "What did you learn from?", vec![en_data]),
        ("en-7", "Are you a fine-tune of another model?", vec![en_scratch.to_string()]),
        ("en-8", "Were you trained from scratch?", vec![format!("Yes. {}", &en_scratch["No. ".len()..])]),
    ];
    let mut out = Vec::new();
    for (variant, q, answers) in &questions {
        for a in answers {
            out.push(Conversation::qa(&format!("identity/{variant}"), *q, a.clone()));
        }
    }
    // A few with a system prompt, so the model sees that form too.
    for c in out.clone().iter().filter(|c| c.template.as_deref().is_some_and(|t| t.ends_with("-1"))) {
        let mut m = vec![Message::new(Role::System, format!("You are {name}, a helpful assistant."))];
        m.extend(c.messages.iter().cloned());
        out.push(Conversation { messages: m, template: c.template.clone() });
    }
    out.shuffle(rng);
    out
}

/// A span of about `len` characters of `text` starting at a character boundary near `from`
/// (a share of the text), trimmed to whole words where it can be.
fn snippet(text: &str, from: f64, len: usize) -> String {
    let flat: Vec<char> = text.replace('\n', " ").chars().collect();
    if flat.len() <= len {
        return flat.iter().collect::<String>().trim().to_string();
    }
    let mut start = ((flat.len() - len) as f64 * from) as usize;
    while start > 0 && !flat[start - 1].is_whitespace() {
        start -= 1;
    }
    let mut end = (start + len).min(flat.len());
    while end < flat.len() && !flat[end].is_whitespace() && end < start + len + 8 {
        end += 1;
    }
    flat[start..end].iter().collect::<String>().trim().to_string()
}

/// Conversations generated from the demo corpus at `demo` (its `ko/` and `en/` folders),
/// reproducible from `seed`. `name` is what the model calls itself. Every conversation names
/// its template (`kind/variant`); each kind has several question forms so that whole forms can
/// be held out: `article-text` (article → its text), `text-article` (text → which article),
/// `which-article` (which article says X), `yes-no` (does article N say X?), `continue-ko`,
/// `continue-en` (continue a passage) and `identity`. At most `max_per_kind` of each kind.
pub fn demo_conversations(demo: &Path, name: &str, seed: u64, max_per_kind: usize) -> Result<Vec<Conversation>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();

    let constitution = demo.join("ko/kolaw/constitution.txt");
    let text = std::fs::read_to_string(&constitution)
        .with_context(|| format!("cannot read {} (run `jarip data fetch-demo`)", constitution.display()))?
        .replace("\r\n", "\n");
    let articles = constitution_articles(&text);
    if articles.is_empty() {
        bail!("{}: no articles (lines starting with 제N조) found", constitution.display());
    }
    let pick = |rng: &mut ChaCha8Rng, forms: &[(&'static str, &'static str)]| forms[rng.gen_range(0..forms.len())];
    let article_text = [
        ("ko-1", "대한민국 헌법 제{n}조의 내용은 무엇인가요?"),
        ("ko-2", "헌법 제{n}조를 알려 주세요."),
        ("ko-3", "제{n}조에는 뭐라고 쓰여 있어?"),
        ("ko-4", "헌법 {n}조 전문을 보여 줘."),
        ("en-1", "What does Article {n} of the Korean constitution say? Quote it in Korean."),
        ("en-2", "Quote Article {n} of the Constitution of the Republic of Korea."),
    ];
    let text_article = [
        ("ko-1", "다음 조문은 대한민국 헌법 몇 조입니까?\n{x}"),
        ("ko-2", "\"{x}\" 이 조문은 헌법 몇 조야?"),
        ("ko-3", "아래 헌법 조문의 번호를 알려 주세요.\n{x}"),
        ("en-1", "Which article of the Korean constitution is this?\n{x}"),
        ("en-2", "Give the article number of this passage of the Korean constitution: {x}"),
    ];
    let which_article = [
        ("ko-1", "헌법에서 \"{x}\"라는 내용이 들어 있는 조문은 무엇인가요?"),
        ("ko-2", "\"{x}\"라고 규정한 헌법 조문을 찾아 주세요."),
        ("ko-3", "대한민국 헌법 어디에 \"{x}\"라는 말이 나와?"),
        ("en-1", "Which article of the Korean constitution contains \"{x}\"?"),
        ("en-2", "Where in the Korean constitution does it say \"{x}\"?"),
    ];
    let yes_no = [
        ("ko-1", "헌법 제{n}조에 \"{x}\"라는 내용이 있나요?"),
        ("ko-2", "대한민국 헌법 제{n}조는 \"{x}\"라고 규정하고 있습니까?"),
        ("ko-3", "제{n}조에 \"{x}\"라는 말이 나와?"),
        ("en-1", "Does Article {n} of the Korean constitution say \"{x}\"?"),
        ("en-2", "Is \"{x}\" part of Article {n} of the Korean constitution?"),
    ];
    let fill = |q: &str, n: u32, x: &str| q.replace("{n}", &n.to_string()).replace("{x}", x);
    for (i, (n, body)) in articles.iter().enumerate().take(max_per_kind) {
        let n = *n;
        let (v, q) = pick(&mut rng, &article_text);
        let answer =
            if v.starts_with("ko") { format!("제{n}조 {body}") } else { format!("Article {n}:\n제{n}조 {body}") };
        out.push(Conversation::qa(&format!("article-text/{v}"), fill(q, n, ""), answer));

        let (v, q) = pick(&mut rng, &text_article);
        let x = snippet(body, 0.0, 60);
        let answer = if v.starts_with("ko") {
            format!("헌법 제{n}조입니다.")
        } else {
            format!("Article {n} (제{n}조).")
        };
        out.push(Conversation::qa(&format!("text-article/{v}"), fill(q, n, &x), answer));

        let (v, q) = pick(&mut rng, &which_article);
        let x = snippet(body, rng.gen_range(0.2..1.0), 24);
        let answer = if v.starts_with("ko") {
            format!("제{n}조입니다.\n제{n}조 {body}")
        } else {
            format!("Article {n}:\n제{n}조 {body}")
        };
        out.push(Conversation::qa(&format!("which-article/{v}"), fill(q, n, &x), answer));

        // Yes for half the questions, no (with the article that does say it) for the others.
        let (v, q) = pick(&mut rng, &yes_no);
        let (m, said) = if articles.len() < 2 || rng.gen_bool(0.5) {
            (n, body)
        } else {
            let other = (i + 1 + rng.gen_range(0..articles.len() - 1)) % articles.len();
            (articles[other].0, &articles[other].1)
        };
        let x = snippet(said, rng.gen_range(0.0..1.0), 24);
        let answer = match (m == n, v.starts_with("ko")) {
            (true, true) => format!("네, 있습니다. 제{n}조 {body}"),
            (false, true) => format!("아니요. 그 내용은 제{n}조가 아니라 제{m}조에 있습니다."),
            (true, false) => format!("Yes. Article {n}: 제{n}조 {body}"),
            (false, false) => format!("No. That is in Article {m}, not Article {n}."),
        };
        out.push(Conversation::qa(&format!("yes-no/{v}"), fill(q, n, &x), answer));
    }

    let continue_ko = [
        ("ko-1", "다음 글을 이어서 써 주세요:\n{x}"),
        ("ko-2", "이 문장 뒤에 올 내용을 써 줘:\n{x}"),
        ("ko-3", "{x}\n\n위 글을 계속 써 주세요."),
        ("ko-4", "아래 글의 나머지 부분을 완성해 주세요.\n{x}"),
        ("ko-5", "이어지는 내용을 작성하세요: {x}"),
    ];
    let continue_en = [
        ("en-1", "Continue this passage:\n{x}"),
        ("en-2", "What comes next?\n{x}"),
        ("en-3", "{x}\n\nContinue the text above."),
        ("en-4", "Finish this passage:\n{x}"),
        ("en-5", "Write the rest of this: {x}"),
    ];
    let mut ko_paras = paragraphs(&demo.join("ko"), 80, 600)?;
    let mut en_paras = paragraphs(&demo.join("en"), 200, 800)?;
    ko_paras.shuffle(&mut rng);
    en_paras.shuffle(&mut rng);
    for (kind, forms, paras) in [("continue-ko", &continue_ko, &ko_paras), ("continue-en", &continue_en, &en_paras)] {
        for p in paras.iter().take(max_per_kind) {
            let (a, b) = split_half(p);
            let (v, q) = pick(&mut rng, forms);
            out.push(Conversation::qa(&format!("{kind}/{v}"), q.replace("{x}", &a), b));
        }
    }
    out.extend(identity(name, &mut rng));
    out.shuffle(&mut rng);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_are_parsed_with_their_paragraphs() {
        let text = "대한민국헌법\n  제1조 ① 대한민국은 민주공화국이다.\n②대한민국의 주권은 국민에게 있고.\n  제2조 ① 요건은 법률로 정한다.\n부칙\n제1조 이 헌법은 시행한다.\n";
        let a = constitution_articles(text);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (1, "① 대한민국은 민주공화국이다.\n②대한민국의 주권은 국민에게 있고.".to_string()));
        assert_eq!(a[1].0, 2);
    }

    #[test]
    fn bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "unknown role \"robot\""),
            ("{\"messages\":[]}", "empty conversation"),
            ("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "no assistant turn"),
            ("not json", "not JSON"),
            ("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"system\",\"content\":\"y\"},{\"role\":\"assistant\",\"content\":\"z\"}]}", "system"),
        ];
        let good =
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}";
        for (bad, needle) in cases {
            let p = d.path().join("c.jsonl");
            std::fs::write(&p, format!("{good}\n{bad}\n")).unwrap();
            let err = format!("{:#}", read_conversations(&p).unwrap_err());
            assert!(err.contains("c.jsonl:2") && err.contains(needle), "{err}");
        }
        let p = d.path().join("ok.jsonl");
        std::fs::write(&p, format!("{good}\n\n{good}\n")).unwrap();
        assert_eq!(read_conversations(&p).unwrap().len(), 2);
    }

    #[test]
    fn generator_is_reproducible_and_valid() {
        let d = tempfile::tempdir().unwrap();
        let ko = d.path().join("ko/kolaw");
        std::fs::create_dir_all(&ko).unwrap();
        std::fs::create_dir_all(d.path().join("en")).unwrap();
        std::fs::write(
            ko.join("constitution.txt"),
            "  제1조 ① 대한민국은 민주공화국이다.\n  제2조 국민의 요건은 법률로 정한다.\n",
        )
        .unwrap();
        let para = "All the world's a stage, and all the men and women merely players. ".repeat(5);
        std::fs::write(d.path().join("en/play.txt"), format!("{para}\n\n{para}")).unwrap();
        let a = demo_conversations(d.path(), "jarip-demo", 3, 100).unwrap();
        let b = demo_conversations(d.path(), "jarip-demo", 3, 100).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, demo_conversations(d.path(), "jarip-demo", 4, 100).unwrap());
        assert!(a.iter().any(|c| c.messages[1].content.starts_with("제1조 ① 대한민국은 민주공화국이다.")));
        assert!(a.iter().any(|c| c.messages.iter().any(|m| m.content.contains("jarip-demo"))));
        let p = d.path().join("out.jsonl");
        write_conversations(&p, &a).unwrap();
        assert_eq!(read_conversations(&p).unwrap(), a);
    }
}
