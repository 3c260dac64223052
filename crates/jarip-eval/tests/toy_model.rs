//! Metrics against hand-computed values, on a toy model whose log-likelihoods are set by the
//! test, with a bytes-only tokenizer (one token per UTF-8 byte) so token counts are known too.

use jarip_eval::{evaluate_task, load_task, EvalOptions, LanguageModel, Layout, LlRequest, LlScore, TaskSpec};
use jarip_infer::Request;
use jarip_tokenizer::Tokenizer;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// 256 byte tokens + the special tokens, no merges.
fn byte_tokenizer() -> Tokenizer {
    let cfg = jarip_tokenizer::TrainConfig { vocab_size: 263, ..Default::default() };
    jarip_tokenizer::train(["abc".to_string()].into_iter(), &cfg).unwrap()
}

/// Scores "context tail|choice" from a table; anything else costs one bit per token.
/// Generation replays a scripted text for the prompt's last line. Every request is recorded.
struct Toy {
    tok: Tokenizer,
    table: HashMap<String, f64>,
    script: HashMap<String, String>,
    max_len: usize,
    seen: RefCell<Vec<(String, String)>>,
    /// Whether every scored context started with `<|bos|>`.
    bos_first: RefCell<bool>,
}

impl Toy {
    fn new(table: &[(&str, f64)]) -> Self {
        let tok = byte_tokenizer();
        Self {
            tok,
            table: table.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            script: HashMap::new(),
            max_len: 64,
            seen: RefCell::new(vec![]),
            bos_first: RefCell::new(true),
        }
    }

    fn text(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.tok.decode_bytes(ids)).into_owned()
    }
}

impl LanguageModel for Toy {
    fn max_len(&self) -> usize {
        self.max_len
    }

    fn loglikelihood(&self, requests: &[LlRequest]) -> anyhow::Result<Vec<LlScore>> {
        Ok(requests
            .iter()
            .map(|r| {
                *self.bos_first.borrow_mut() &= r.context[0] == self.tok.bos_id();
                let ctx = self.text(&r.context[1..]);
                let cont = self.text(&r.continuation);
                let tail = ctx.lines().last().unwrap_or("").trim().to_string();
                let key = format!("{tail}|{}", cont.trim());
                self.seen.borrow_mut().push((ctx, cont));
                let logprob =
                    self.table.get(&key).copied().unwrap_or(-(r.continuation.len() as f64) * std::f64::consts::LN_2);
                LlScore { logprob, is_greedy: false }
            })
            .collect())
    }

    /// Replays the script for the prompt's last line, cut at the first stop string as the
    /// engine would cut it; records each request's stop strings and whether `<|end|>` stops it.
    fn generate(&self, requests: Vec<Request>) -> anyhow::Result<Vec<String>> {
        Ok(requests
            .iter()
            .map(|r| {
                let end = self.tok.special_id("<|end|>").unwrap();
                assert!(r.stop_tokens.contains(&end) && r.truncate_prompt);
                let p = self.text(&r.prompt[1..]);
                let line = p.lines().last().unwrap_or("").to_string();
                let out = self.script.get(&line).cloned().unwrap_or_default();
                let cut = r.stop.iter().filter_map(|s| out.find(s.as_str())).min().unwrap_or(out.len());
                out[..cut].to_string()
            })
            .collect())
    }
}

fn jsonl(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    p
}

fn metric(r: &jarip_eval::TaskResult, name: &str) -> f64 {
    r.metric(name).unwrap_or_else(|| panic!("no {name} in {:?}", r.metrics))
}

/// Four two-choice questions and the log-likelihoods the toy model gives each continuation.
fn four_questions(dir: &Path) -> (PathBuf, Toy) {
    let p = jsonl(
        dir,
        "toy.jsonl",
        &[
            json!({"context": "Q1", "choices": ["yes", "no"], "gold": 0}),
            json!({"context": "Q2", "choices": ["예", "아니오"], "gold": 1}),
            json!({"context": "Q3", "choices": ["a", "bb"], "gold": 1}),
            json!({"context": "Q4", "choices": ["예", "yes"], "gold": 1}),
        ],
    );
    let toy = Toy::new(&[
        // Q1: acc picks "no" (-0.9 > -1.0); per character -1/3 > -0.9/2 picks "yes" (gold).
        ("Q1|yes", -1.0),
        ("Q1|no", -0.9),
        // Q2: acc picks "예"; per character -2/1 < -3/3 and per byte -2/3 < -3/9 pick "아니오".
        ("Q2|예", -2.0),
        ("Q2|아니오", -3.0),
        // Q3: every rule picks "bb".
        ("Q3|a", -5.0),
        ("Q3|bb", -1.0),
        // Q4: acc picks "예" (-2.4 > -3); per character -2.4 < -1.0 picks "yes" (gold), but per
        // byte -2.4/3 = -0.8 > -1.0 picks "예".
        ("Q4|예", -2.4),
        ("Q4|yes", -3.0),
    ]);
    (p, toy)
}

#[test]
fn acc_acc_norm_and_acc_bytes_match_hand_computed_values() {
    let d = tempfile::tempdir().unwrap();
    let (p, toy) = four_questions(d.path());
    let task = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert_eq!(r.n, 4);
    assert_eq!(metric(&r, "acc"), 0.25);
    assert_eq!(metric(&r, "acc_norm"), 1.0);
    assert_eq!(metric(&r, "acc_bytes"), 0.75);
    // [0, 0, 1, 0]: sample sd 0.5, over √4.
    assert!((metric(&r, "acc_stderr") - 0.25).abs() < 1e-12);
    assert_eq!(metric(&r, "acc_norm_stderr"), 0.0);
    assert!(r.metric("f1").is_none(), "macro-F1 is reported for KoBEST only");
    // Continuations are the delimiter plus the choice.
    assert!(toy.seen.borrow().iter().any(|(c, k)| c == "Q2" && k == " 아니오"));
    assert!(*toy.bos_first.borrow(), "contexts start with <|bos|>, as training documents did");

    let limited = EvalOptions { limit: Some(2), ..Default::default() };
    let r = evaluate_task(&toy, &toy.tok, &task, &limited).unwrap();
    assert_eq!((r.n, metric(&r, "acc"), metric(&r, "acc_norm")), (2, 0.0, 1.0));
}

#[test]
fn kobest_macro_f1_and_the_harness_context_boundary() {
    let d = tempfile::tempdir().unwrap();
    let p = jsonl(
        d.path(),
        "boolq.jsonl",
        &[
            json!({"paragraph": "P1", "question": "q1", "label": 1}),
            json!({"paragraph": "P2", "question": "q2", "label": 1}),
            json!({"paragraph": "P3", "question": "q3", "label": 0}),
        ],
    );
    let tail = |i: u32| format!("P{i} 질문: q{i} 답변:");
    let toy = Toy::new(&[
        (&format!("{}|예", tail(1)), -0.1),
        (&format!("{}|아니오", tail(1)), -5.0),
        (&format!("{}|예", tail(2)), -5.0),
        (&format!("{}|아니오", tail(2)), -0.1),
        (&format!("{}|예", tail(3)), -5.0),
        (&format!("{}|아니오", tail(3)), -0.1),
    ]);
    let task = load_task(&TaskSpec::new(Layout::KobestBoolq, &p)).unwrap();
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    // Predictions [1, 0, 0] against gold [1, 1, 0]: F1 is 2/3 for both labels.
    assert!((metric(&r, "acc") - 2.0 / 3.0).abs() < 1e-12);
    assert!((metric(&r, "f1") - 2.0 / 3.0).abs() < 1e-12);
    // "… 답변: " + " 예": the context's trailing space moves to the continuation, as in lm-eval.
    let seen = toy.seen.borrow();
    assert!(seen.iter().any(|(c, k)| c == "P1 질문: q1 답변:" && k == "  예"), "{seen:?}");
}

#[test]
fn fewshot_contexts_are_seeded_and_complete() {
    let d = tempfile::tempdir().unwrap();
    let rows: Vec<_> =
        (0..6).map(|i| json!({"context": format!("Q{i} =>"), "choices": ["x", "y"], "gold": i % 2})).collect();
    let p = jsonl(d.path(), "shots.jsonl", &rows);
    let task = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
    let contexts = |seed: u64| {
        let toy = Toy::new(&[]);
        let opts = EvalOptions { fewshot: 2, seed, ..Default::default() };
        evaluate_task(&toy, &toy.tok, &task, &opts).unwrap();
        let seen = toy.seen.borrow().iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
        seen
    };
    let a = contexts(1);
    assert_eq!(a, contexts(1));
    assert_ne!(a, contexts(2));
    // Example 3's context: two solved examples (not itself), a blank line after each, then it.
    let c = &a[3 * 2];
    let blocks: Vec<&str> = c.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{c:?}");
    assert_eq!(blocks[2], "Q3 =>");
    for b in &blocks[..2] {
        assert!(b.ends_with(" x") || b.ends_with(" y"), "{b:?}");
        assert!(!b.starts_with("Q3 "), "{b:?}");
    }
    let toy = Toy::new(&[]);
    let e = evaluate_task(&toy, &toy.tok, &task, &EvalOptions { fewshot: 6, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("--fewshot 6 needs at least 7 examples"), "{e}");
}

#[test]
fn generative_exact_and_normalised_match_with_stop_strings() {
    let d = tempfile::tempdir().unwrap();
    let p = jsonl(
        d.path(),
        "gen.jsonl",
        &[
            json!({"prompt": "capital of Korea:", "answer": "Seoul", "stop": ["."]}),
            json!({"prompt": "부산은:", "answer": "부산이다", "stop": ["\n"]}),
            json!({"prompt": "other:", "answers": ["y", "z"]}),
        ],
    );
    let mut toy = Toy::new(&[]);
    toy.script.insert("capital of Korea:".into(), " Seoul. And more".into());
    toy.script.insert("부산은:".into(), " 부산이다!".into());
    toy.script.insert("other:".into(), "x\n\nnext".into());
    let task = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert!((metric(&r, "exact_match") - 1.0 / 3.0).abs() < 1e-12, "{:?}", r.metrics);
    assert!((metric(&r, "normalized_match") - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn bits_per_byte_of_a_one_bit_per_token_model_is_tokens_over_bytes() {
    let d = tempfile::tempdir().unwrap();
    let text = "대한민국은 민주공화국이다. To be, or not to be.\n".repeat(5);
    let p = d.path().join("text.txt");
    std::fs::write(&p, &text).unwrap();
    let toy = Toy::new(&[]); // one bit per token; a byte tokenizer: one token per byte
    let task = load_task(&TaskSpec::new(Layout::Bpb, &p)).unwrap();
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert!((metric(&r, "bits_per_byte") - 1.0).abs() < 1e-12, "{:?}", r.metrics);
    assert_eq!(metric(&r, "bytes"), text.len() as f64);
    assert_eq!(metric(&r, "tokens"), text.len() as f64);
    assert!((metric(&r, "byte_perplexity") - 2.0).abs() < 1e-12);
    // 3 windows of 64 predicted tokens cover it (max_len 64), each scored once.
    let words = text.split_whitespace().count() as f64;
    assert!((metric(&r, "word_perplexity") - (text.len() as f64 * std::f64::consts::LN_2 / words).exp()).abs() < 1e-9);
}

#[test]
fn clean_subsets_are_scored_from_the_same_outputs() {
    let d = tempfile::tempdir().unwrap();
    // The multiple-choice task of the first test: acc per question [0, 0, 1, 0], acc_norm all 1.
    let (p, toy) = four_questions(d.path());
    let mut task = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
    let full = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert!(full.clean.is_none());
    task.clean = Some(vec![false, true, true, false]);
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert_eq!(r.metrics, full.metrics, "the full set's scores do not change");
    let c = r.clean.as_ref().unwrap();
    assert_eq!((c.n, c.excluded), (2, 2));
    assert_eq!((c.metric("acc"), c.metric("acc_norm")), (Some(0.5), Some(1.0)));
    // With --limit, the subset is taken among the scored examples.
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions { limit: Some(2), ..Default::default() }).unwrap();
    let c = r.clean.unwrap();
    assert_eq!((c.n, c.excluded, c.metric("acc")), (1, 1, Some(0.0)));
    // An empty subset scores NaN, never a made-up number.
    task.clean = Some(vec![false; 4]);
    let c = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap().clean.unwrap();
    assert_eq!(c.n, 0);
    assert!(c.metric("acc").unwrap().is_nan());
    // A mask of the wrong length is refused.
    task.clean = Some(vec![true; 3]);
    assert!(evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).is_err());

    // Generation: the clean subset is the second and third prompts.
    let p = jsonl(
        d.path(),
        "gen.jsonl",
        &[
            json!({"prompt": "a:", "answer": "x"}),
            json!({"prompt": "b:", "answer": "y"}),
            json!({"prompt": "c:", "answer": "z"}),
        ],
    );
    let mut toy = Toy::new(&[]);
    for (k, v) in [("a:", "x"), ("b:", "y"), ("c:", "q")] {
        toy.script.insert(k.into(), v.into());
    }
    let mut task = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
    task.clean = Some(vec![false, true, true]);
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert!((metric(&r, "exact_match") - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.clean.unwrap().metric("exact_match"), Some(0.5));

    // Bits per byte over the clean documents alone: one bit per byte-token, so tokens/bytes.
    let p =
        jsonl(d.path(), "text.jsonl", &[json!({"text": "ab"}), json!({"text": "대한민국"}), json!({"text": "c d"})]);
    let toy = Toy::new(&[]);
    let mut task = load_task(&TaskSpec::new(Layout::Bpb, &p)).unwrap();
    task.clean = Some(vec![true, false, true]);
    let r = evaluate_task(&toy, &toy.tok, &task, &EvalOptions::default()).unwrap();
    assert_eq!(metric(&r, "bytes"), 17.0);
    let c = r.clean.unwrap();
    assert_eq!((c.n, c.metric("bytes"), c.metric("tokens")), (2, Some(5.0), Some(5.0)));
    assert!((c.metric("bits_per_byte").unwrap() - 1.0).abs() < 1e-12);
}
