//! Built-in sanity tasks made from the demo corpus, in our own JSONL format, reproducible from a
//! seed. They check that a model learned something from its corpus, not what it knows:
//!
//! - `sanity_ko_continuation`, `sanity_en_continuation`: a passage's beginning, and four
//!   continuations of the same number of words — the true one and three taken from other
//!   passages (chance: 25 %);
//! - `sanity_word_order`: the same, but the three wrong continuations are the true one's words
//!   in shuffled order (Korean and English; an easier test that a model learned word order);
//! - `sanity_ko_constitution`: complete the first sentence of an article of the Korean
//!   constitution (generative, greedy, exact and normalised match);
//! - `sanity_bpb`: bits per byte on Korean and English passages.

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Questions per continuation task.
const CONTINUATIONS: usize = 100;
const CONSTITUTION_ITEMS: usize = 40;
const BPB_PASSAGES: usize = 20;

fn text_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "txt") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Paragraphs (blank-line separated) as word lists, those with at least `min_words` words.
fn passages(dir: &Path, min_words: usize) -> Result<Vec<Vec<String>>> {
    let files = text_files(dir)?;
    if files.is_empty() {
        bail!("no .txt files under {} (run `jarip data fetch-demo`)", dir.display());
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let text = text.replace("\r\n", "\n").replace('\u{feff}', "");
        for p in text.split("\n\n") {
            let words: Vec<String> = p.split_whitespace().map(str::to_string).collect();
            if words.len() >= min_words {
                out.push(words);
            }
        }
    }
    Ok(out)
}

/// Multiple-choice rows: up to `ctx_words` words of a passage, then `cont_words` words that
/// follow it or that follow the same point in three other passages.
fn continuation_rows(
    passages: &[Vec<String>],
    ctx_words: usize,
    cont_words: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Value> {
    let split = |p: &[String]| -> (String, String) {
        let cut = (p.len() - cont_words).min(ctx_words);
        (p[..cut].join(" "), p[cut..cut + cont_words].join(" "))
    };
    let mut order: Vec<usize> = (0..passages.len()).collect();
    order.shuffle(rng);
    let mut rows = Vec::new();
    for &i in &order {
        if rows.len() == CONTINUATIONS {
            break;
        }
        let (context, truth) = split(&passages[i]);
        let mut choices = vec![truth];
        // Distractors: continuations of other passages, all different (the corpus holds
        // two editions of some plays, so an identical passage can turn up).
        for _ in 0..50 {
            if choices.len() == 4 {
                break;
            }
            let j = rng.gen_range(0..passages.len());
            let (_, other) = split(&passages[j]);
            if j != i && !choices.contains(&other) {
                choices.push(other);
            }
        }
        if choices.len() < 4 {
            continue;
        }
        choices.shuffle(rng);
        let gold = choices.iter().position(|c| *c == split(&passages[i]).1).expect("truth is a choice");
        rows.push(json!({ "context": context, "choices": choices, "gold": gold }));
    }
    rows
}

/// Multiple-choice rows: a passage's beginning, then its next `cont_words` words in their order
/// or in three shuffled orders.
fn word_order_rows(
    passages: &[Vec<String>],
    ctx_words: usize,
    cont_words: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Value> {
    let mut order: Vec<usize> = (0..passages.len()).collect();
    order.shuffle(rng);
    let mut rows = Vec::new();
    for &i in &order {
        if rows.len() == n {
            break;
        }
        let p = &passages[i];
        let cut = (p.len() - cont_words).min(ctx_words);
        let words = &p[cut..cut + cont_words];
        let truth = words.join(" ");
        let mut choices = vec![truth.clone()];
        for _ in 0..50 {
            if choices.len() == 4 {
                break;
            }
            let mut w = words.to_vec();
            w.shuffle(rng);
            let s = w.join(" ");
            if !choices.contains(&s) {
                choices.push(s);
            }
        }
        if choices.len() < 4 {
            continue;
        }
        choices.shuffle(rng);
        let gold = choices.iter().position(|c| *c == truth).expect("truth is a choice");
        rows.push(json!({ "context": p[..cut].join(" "), "choices": choices, "gold": gold }));
    }
    rows
}

/// `(article number, first sentence without its final period)` of the constitution's main body.
fn constitution_sentences(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("부칙") {
            break; // the addenda restart their numbering
        }
        let Some(rest) = t.strip_prefix('제') else { continue };
        let Some((num, body)) = rest.split_once("조 ") else { continue };
        let Ok(n) = num.parse::<u32>() else { continue };
        let body = body.trim_start_matches('①').trim();
        if let Some(end) = body.find('.') {
            out.push((n, body[..end].to_string()));
        }
    }
    out
}

/// Generative rows: the article heading and the first half of its first sentence; the answer
/// is the rest of the sentence, ended by the period.
fn constitution_rows(text: &str, rng: &mut ChaCha8Rng) -> Vec<Value> {
    let mut items: Vec<Value> = constitution_sentences(text)
        .into_iter()
        .filter_map(|(n, s)| {
            let words: Vec<&str> = s.split_whitespace().collect();
            if words.len() < 3 || words.len() > 12 {
                return None;
            }
            let cut = words.len() / 2;
            Some(json!({
                "prompt": format!("제{n}조 {}", words[..cut].join(" ")),
                "answer": words[cut..].join(" "),
                "stop": [".", "\n"],
                "max_tokens": 32,
            }))
        })
        .collect();
    items.shuffle(rng);
    items.truncate(CONSTITUTION_ITEMS);
    items
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    if rows.is_empty() {
        bail!("the demo corpus gave no rows for {}", path.display());
    }
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    jarip_ledger::atomic_write(path, text.as_bytes())
}

/// Writes the sanity tasks made from the demo corpus at `demo` (its `ko/` and `en/` folders)
/// into `out` and returns their paths; every file is in the `jsonl` layout. The same corpus and
/// seed give the same bytes.
pub fn write_demo_tasks(demo: &Path, out: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ko = passages(&demo.join("ko"), 16)?;
    let en = passages(&demo.join("en"), 20)?;
    let mut written = Vec::new();
    let mut emit = |name: &str, rows: Vec<Value>| -> Result<()> {
        let p = out.join(format!("{name}.jsonl"));
        write_jsonl(&p, &rows)?;
        written.push(p);
        Ok(())
    };
    emit("sanity_ko_continuation", continuation_rows(&ko, 40, 6, &mut rng))?;
    emit("sanity_en_continuation", continuation_rows(&en, 40, 8, &mut rng))?;
    let mut order = word_order_rows(&ko, 40, 6, CONTINUATIONS / 2, &mut rng);
    order.extend(word_order_rows(&en, 40, 8, CONTINUATIONS / 2, &mut rng));
    emit("sanity_word_order", order)?;

    let constitution = demo.join("ko/kolaw/constitution.txt");
    let text = std::fs::read_to_string(&constitution)
        .with_context(|| format!("cannot read {} (run `jarip data fetch-demo`)", constitution.display()))?;
    emit("sanity_ko_constitution", constitution_rows(&text.replace("\r\n", "\n"), &mut rng))?;

    let mut texts: Vec<Value> = Vec::new();
    for pool in [&ko, &en] {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        idx.shuffle(&mut rng);
        texts.extend(idx.iter().take(BPB_PASSAGES / 2).map(|&i| json!({ "text": pool[i].join(" ") })));
    }
    emit("sanity_bpb", texts)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::load_task;
    use crate::task::{Examples, Layout, TaskSpec};

    /// A miniature demo corpus in the real one's layout.
    fn mini_demo(dir: &Path) {
        let ko = dir.join("ko/kolaw");
        let en = dir.join("en/shakespeare");
        std::fs::create_dir_all(&ko).unwrap();
        std::fs::create_dir_all(&en).unwrap();
        let mut c = String::from("대한민국헌법\n\n");
        for n in 1..=30 {
            c.push_str(&format!("  제{n}조 ① 대한민국의 제{n}조 조항은 국민의 권리와 의무를 정한다.\n②둘째 항.\n"));
        }
        c.push_str("부칙\n제1조 이 헌법은 시행한다.\n");
        for n in 0..40 {
            c.push_str(&format!(
                "\n\n제{n}항 국가는 모든 국민의 {n}번째 권리를 보장하며 법률이 정하는 바에 의하여 국민의 자유와 복리를 증진하고 평화를 지키며 문화를 발전시키고 교육을 진흥한다 {n}"
            ));
        }
        std::fs::write(ko.join("constitution.txt"), c).unwrap();
        let play: String = (0..60)
            .map(|n| format!("Enter the king number {n} with all his lords and ladies, who speak of the weather and of war and of love and of the sea and the stars tonight {n}.\n\n"))
            .collect();
        std::fs::write(en.join("play_gut.txt"), play).unwrap();
    }

    #[test]
    fn sanity_tasks_are_valid_tasks_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        mini_demo(d.path());
        let a = write_demo_tasks(d.path(), &d.path().join("a"), 7).unwrap();
        let b = write_demo_tasks(d.path(), &d.path().join("b"), 7).unwrap();
        assert_eq!(a.len(), 5);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
        }
        let kinds: Vec<&str> =
            a.iter().map(|p| load_task(&TaskSpec::new(Layout::Jsonl, p)).unwrap().examples.kind()).collect();
        assert_eq!(kinds, ["multiple_choice", "multiple_choice", "multiple_choice", "generative", "bits_per_byte"]);
        let Examples::MultipleChoice(w) = load_task(&TaskSpec::new(Layout::Jsonl, &a[2])).unwrap().examples else {
            panic!()
        };
        for ex in &w {
            let mut sorted: Vec<Vec<&str>> = ex.choices.iter().map(|c| c.split(' ').collect()).collect();
            sorted.iter_mut().for_each(|v| v.sort());
            assert!(sorted.windows(2).all(|p| p[0] == p[1]), "the same words, reordered: {:?}", ex.choices);
        }
        let Examples::MultipleChoice(v) = load_task(&TaskSpec::new(Layout::Jsonl, &a[1])).unwrap().examples else {
            panic!()
        };
        assert!(v.len() >= 30);
        for ex in &v {
            assert_eq!(ex.choices.len(), 4);
            let words: Vec<usize> = ex.choices.iter().map(|c| c.split_whitespace().count()).collect();
            assert_eq!(words, vec![8; 4]);
            let mut uniq = ex.choices.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 4);
        }
        let Examples::Generative(g) = load_task(&TaskSpec::new(Layout::Jsonl, &a[3])).unwrap().examples else {
            panic!()
        };
        assert!(g.iter().all(|e| e.prompt.starts_with('제') && !e.answers[0].ends_with('.')));
        let c = write_demo_tasks(d.path(), &d.path().join("c"), 8).unwrap();
        assert_ne!(std::fs::read(&a[0]).unwrap(), std::fs::read(&c[0]).unwrap());
    }

    #[test]
    fn a_missing_corpus_says_how_to_get_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ko")).unwrap();
        let e = write_demo_tasks(d.path(), &d.path().join("out"), 1).unwrap_err().to_string();
        assert!(e.contains("fetch-demo"), "{e}");
    }
}
