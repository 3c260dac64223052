//! Helpers shared by the binary's end-to-end tests: run `jarip`, check how it ended.
#![allow(dead_code)] // each test file uses its own subset

use candle_core::Device;
use jarip_model::{Gpt, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn jarip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jarip")).args(args).output().expect("run jarip")
}

pub fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 test path").to_string()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "jarip failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts failure with a message on stderr that mentions every needle.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

/// A checkpoint directory as the trainer lays it out (weights, config, tokenizer, trainer state,
/// manifest) in `dir/NAME`: a randomly initialised tiny model with a small trained tokenizer,
/// written in-process in a second (for tests whose behaviour does not depend on good weights).
pub fn tiny_checkpoint(dir: &Path, name: &str, context: usize) -> PathBuf {
    let docs: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고 {i}. All the world's a stage, and all the men and women merely players {i}."
            )
        })
        .collect();
    let cfg = jarip_tokenizer::TrainConfig { vocab_size: 320, ..Default::default() };
    let tok = jarip_tokenizer::train(docs.into_iter(), &cfg).unwrap();
    let mut mc = ModelConfig::tiny(tok.vocab_size());
    mc.max_seq_len = context;
    let model = Gpt::new(&mc, 11, &Device::Cpu).unwrap();
    let ckpt = dir.join(name);
    std::fs::create_dir_all(&ckpt).unwrap();
    model.save(&ckpt).unwrap();
    std::fs::write(ckpt.join("tokenizer.json"), tok.to_json()).unwrap();
    std::fs::write(ckpt.join("trainer.json"), r#"{"step": 0}"#).unwrap();
    let settings = serde_json::json!({
        "model": mc, "seed": 11, "tokenizer_sha256": tok.sha256(), "shards_merkle_root": "ab".repeat(32)
    });
    jarip_ledger::Manifest::for_dir("checkpoint", &ckpt, vec![], settings).unwrap().write(&ckpt).unwrap();
    ckpt
}

/// corpus → prepare → tokenizer (300 tokens) → shards with the CLI, into `root/run` (`prepared/`,
/// `tok/`, `shards/` and the ledger), ready for `jarip pretrain`.
pub fn tiny_shards(root: &Path) -> PathBuf {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house", "국민", "헌법", "자유",
    ];
    let mut x: u64 = 12345;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let lines: Vec<String> = (0..300)
        .map(|_| {
            let doc = (0..20 + next() % 30).map(|_| words[next() % words.len()]).collect::<Vec<_>>().join(" ");
            serde_json::json!({ "text": doc + "." }).to_string()
        })
        .collect();
    std::fs::write(corpus.join("docs.jsonl"), lines.join("\n")).unwrap();
    let run = root.join("run");
    let r = |p: &str| s(&run.join(p));
    ok(&jarip(&["data", "prepare", &s(&corpus), "--out", &r("prepared"), "--no-near-dedup"]));
    ok(&jarip(&["tokenizer", "train", &r("prepared"), "--vocab-size", "300", "--out", &r("tok")]));
    ok(&jarip(&["data", "shard", "--tokenizer", &r("tok"), &r("prepared"), "--out", &r("shards")]));
    run
}

/// 24 small conversations (system, user, assistant) in the fine-tuning format, at `path`.
pub fn conversations(path: &Path) {
    let lines: Vec<String> = (0..24)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "system", "content": "당신은 jarip으로 처음부터 학습된 모델입니다."},
                {"role": "user", "content": format!("제{i}조는 무엇입니까?")},
                {"role": "assistant", "content": format!("제{i}조: 대한민국은 민주공화국이다. number {i}")},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}
