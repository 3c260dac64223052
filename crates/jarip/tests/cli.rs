//! End-to-end tests of the `jarip` binary on small corpora made here: each stage, the ledger
//! chain across stages, and the bad inputs the stages must refuse with a clear message.

mod common;
use common::{fails_with, jarip, ok, s};

use std::path::{Path, PathBuf};

/// A small bilingual corpus with a duplicate and a near-duplicate.
fn corpus(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).unwrap();
    let ko = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. ";
    let en = "All the world's a stage, and all the men and women merely players; they have their exits and their entrances. ";
    for i in 0..30 {
        let text = format!("{} {} 제{}조 number {}\n", ko.repeat(1 + i % 3), en.repeat(1 + i % 2), i, i * 37);
        std::fs::write(c.join(format!("doc{i:02}.txt")), text).unwrap();
    }
    std::fs::write(c.join("copy.txt"), std::fs::read(c.join("doc05.txt")).unwrap()).unwrap();
    let lines: Vec<String> = (0..20)
        .map(|i| serde_json::json!({"text": format!("JSONL 문서 {i}: 국민의 자유와 권리는 헌법에 열거되지 아니한 이유로 경시되지 아니한다. line {i}")}).to_string())
        .collect();
    std::fs::write(c.join("more.jsonl"), lines.join("\n")).unwrap();
    c
}

#[test]
fn prepare_tokenize_shard_chain_into_one_ledger() {
    let d = tempfile::tempdir().unwrap();
    let c = corpus(d.path());
    let run = d.path().join("run");

    ok(&jarip(&["data", "prepare", &s(&c), "--out", &s(&run.join("prepared"))]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("prepared/summary.json")).unwrap()).unwrap();
    assert!(summary.to_string().contains("exact"), "{summary}");

    ok(&jarip(&[
        "tokenizer",
        "train",
        &s(&run.join("prepared")),
        "--vocab-size",
        "600",
        "--out",
        &s(&run.join("tok")),
    ]));
    assert!(run.join("tok/tokenizer.json").exists() && run.join("tok/manifest.json").exists());

    let sample = d.path().join("sample.txt");
    std::fs::write(&sample, "대한민국은 민주공화국이다. All the world's a stage.").unwrap();
    let tokenizer_json = |command: &str| -> serde_json::Value {
        let tok = s(&run.join("tok"));
        let out = ok(&jarip(&["tokenizer", command, "--tokenizer", &tok, "--input", &s(&sample), "--json"]));
        serde_json::from_str(&out).unwrap()
    };
    let enc = tokenizer_json("encode");
    let ids = enc["ids"].as_array().unwrap();
    assert!(!ids.is_empty());
    let stats = tokenizer_json("stats");
    assert_eq!(stats["tokens"].as_u64().unwrap() as usize, ids.len());
    assert_eq!(stats["bytes"].as_u64().unwrap(), std::fs::metadata(&sample).unwrap().len());
    assert!(stats["bytes_per_token"].as_f64().unwrap() > 1.5, "{stats}");

    ok(&jarip(&[
        "data",
        "shard",
        "--tokenizer",
        &s(&run.join("tok")),
        &s(&run.join("prepared")),
        "--out",
        &s(&run.join("shards")),
    ]));
    assert!(run.join("shards/manifest.json").exists());

    let ledger = std::fs::read_to_string(run.join("ledger.jsonl")).unwrap();
    let stages: Vec<String> = ledger
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, ["prepare", "tokenizer-train", "shard"]);
    jarip_ledger::Ledger::at(&run.join("ledger.jsonl")).verify_chain().unwrap();
}

#[test]
fn bad_inputs_are_named_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();

    let bad = d.path().join("bad.txt");
    let mut bytes = "좋은 텍스트 ".repeat(10).into_bytes();
    let offset = bytes.len();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    std::fs::write(&bad, &bytes).unwrap();
    let out = d.path().join("out");
    fails_with(
        &jarip(&["data", "prepare", &s(&bad), "--out", &s(&out), "--on-invalid", "fail"]),
        &["bad.txt", &offset.to_string()],
    );
    assert!(!out.exists(), "no half-written output");

    let jl = d.path().join("x.jsonl");
    std::fs::write(&jl, "{\"text\": \"fine document number one with enough text\"}\n{not json}\n").unwrap();
    fails_with(&jarip(&["data", "prepare", &s(&jl), "--out", &s(&out)]), &["x.jsonl:2"]);
    assert!(!out.exists());

    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&jarip(&["tokenizer", "train", &s(&empty), "--vocab-size", "1000", "--out", &s(&out)]), &["empty"]);

    let c = corpus(d.path());
    fails_with(&jarip(&["tokenizer", "train", &s(&c), "--vocab-size", "100", "--out", &s(&out)]), &["vocab"]);
    assert!(!out.exists());

    fails_with(&jarip(&["data", "prepare", "/nonexistent/input.txt", "--out", &s(&out)]), &["/nonexistent/input.txt"]);
}
