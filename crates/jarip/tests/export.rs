//! `jarip export` through the binary: an export (HF layout, or GGUF) generates exactly what its checkpoint does,
//! records itself in the run's ledger without breaking `provenance verify`, and bad requests
//! (an existing output, an unknown dtype, a tampered export) fail with the reason named.

mod common;

use common::{fails_with, jarip, ok, s};
use serde_json::Value;

#[test]
fn export_round_trip_ledger_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = common::tiny_checkpoint(tmp.path(), "ckpt-000000", 64);
    let out = tmp.path().join("hf");
    let said = ok(&jarip(&["export", "--model", &s(&ckpt), "--out", &s(&out)]));
    assert!(said.contains("identical to the checkpoint"), "{said}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modeling_jarip.py"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let gen = |model: &str| {
        let args =
            ["generate", "--model", model, "--prompt", "대한민국은", "--max-tokens", "8", "--seed", "5", "--json"];
        serde_json::from_str::<Value>(&ok(&jarip(&args))).unwrap()
    };
    assert_eq!(gen(&s(&out)), gen(&s(&ckpt)));

    fails_with(&jarip(&["export", "--model", &s(&ckpt), "--out", &s(&out)]), &["already exists"]);
    fails_with(
        &jarip(&["export", "--model", &s(&ckpt), "--out", &s(&tmp.path().join("x")), "--dtype", "f8"]),
        &["f8", "f32, bf16 or f16"],
    );
    // GGUF: f32 generates exactly as the checkpoint; a flipped weight byte is refused.
    let gguf = tmp.path().join("m.gguf");
    ok(&jarip(&["export", "--model", &s(&ckpt), "--out", &s(&gguf)]));
    assert_eq!(gen(&s(&gguf)), gen(&s(&ckpt)));
    let q8 = tmp.path().join("m-q8.gguf");
    ok(&jarip(&["export", "--model", &s(&ckpt), "--out", &s(&q8), "--dtype", "q8_0"]));
    // A Q8_0 file decodes with Q8_0 weights: as the checkpoint does when asked to.
    let q8_args = |model: &str| {
        let args = [
            "generate",
            "--model",
            model,
            "--prompt",
            "대한민국은",
            "--max-tokens",
            "8",
            "--seed",
            "5",
            "--json",
            "--weights",
            "q8_0",
        ];
        serde_json::from_str::<Value>(&ok(&jarip(&args))).unwrap()
    };
    assert_eq!(gen(&s(&q8)), q8_args(&s(&ckpt)));
    fails_with(&jarip(&["export", "--model", &s(&q8), "--out", &s(&tmp.path().join("again"))]), &["not a checkpoint"]);
    fails_with(
        &jarip(&["export", "--model", &s(&ckpt), "--out", &s(&tmp.path().join("y")), "--dtype", "q8_0"]),
        &["q8_0", "f32, bf16 or f16"],
    );
    let at = {
        let f = jarip_interop::gguf::GgufFile::open(&gguf).unwrap();
        (f.data_offset + f.tensor("output.weight").unwrap().offset) as usize
    };
    let mut bytes = std::fs::read(&gguf).unwrap();
    bytes[at + 6] ^= 0x10;
    std::fs::write(&gguf, bytes).unwrap();
    fails_with(&jarip(&["generate", "--model", &s(&gguf), "--prompt", "x"]), &["m.gguf", "altered"]);

    let cfg = out.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"rms_norm_eps\"", "\"rms_norm_eps\" ")).unwrap();
    fails_with(&jarip(&["generate", "--model", &s(&out), "--prompt", "x"]), &["config.json"]);
}

#[test]
fn export_from_a_run_appends_a_ledger_entry_that_verify_accepts() {
    // A real run: the provenance verifier must still pass with the export recorded.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..30 {
        let text = format!("대한민국은 민주공화국이다 {i}. All the world's a stage {i}.\n").repeat(1 + i % 3);
        std::fs::write(corpus.join(format!("d{i}.txt")), text).unwrap();
    }
    let run = tmp.path().join("run");
    let r = |p: &str| s(&run.join(p));
    ok(&jarip(&["data", "prepare", &s(&corpus), "--out", &r("prepared"), "--no-near-dedup"]));
    ok(&jarip(&["tokenizer", "train", &r("prepared"), "--vocab-size", "300", "--out", &r("tokenizer")]));
    ok(&jarip(&["data", "shard", &r("prepared"), "--tokenizer", &r("tokenizer"), "--out", &r("shards")]));
    ok(&jarip(&[
        "pretrain",
        "--data",
        &r("shards"),
        "--out",
        &s(&run),
        "--depth",
        "1",
        "--max-steps",
        "4",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--eval-every",
        "0",
        "--eval-tokens",
        "64",
        "--sample-every",
        "0",
        "--warmup-steps",
        "1",
        "--no-progress",
    ]));
    ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&tmp.path().join("hf")), "--dtype", "bf16"]));
    let ledger = std::fs::read_to_string(run.join("ledger.jsonl")).unwrap();
    let last: Value = serde_json::from_str(ledger.lines().last().unwrap()).unwrap();
    assert_eq!(last["stage"], "export");
    assert_ne!(last["details"]["weights_sha256"], last["details"]["source_weights_sha256"], "bf16 rounds");
    let verdict = ok(&jarip(&["provenance", "verify", &s(&run)]));
    assert!(verdict.contains("checks passed"), "{verdict}");
}
