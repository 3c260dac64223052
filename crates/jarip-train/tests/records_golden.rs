//! The typed records write exactly the bytes the untyped (`json!`) writers wrote. `golden/`
//! holds a run made before the records were typed (`jarip pretrain` then `jarip sft` on a tiny
//! corpus): every ledger entry's `config` and `details`, every metrics line and every checkpoint
//! manifest's settings, read into its record and written back, must give the same bytes; the
//! ledgers' hash chains must still verify.

use jarip_ledger::records::{self as rec, Opaque, StepMetrics};
use jarip_ledger::{Entry, Ledger, Manifest};
use jarip_train::records::{CheckpointDetails, PretrainConfig, PretrainStart, SftConfig, SftStart};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// `v` read as `T` and converted back, as the writers convert.
fn through<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let typed: T = T::deserialize(v).unwrap_or_else(|e| panic!("{v} does not read as a record: {e}"));
    serde_json::to_value(&typed).unwrap()
}

/// The entry with `config` and `details` passed through the records of its stage, both with the
/// trainer's types inside and with opaque values.
fn retyped(e: &Entry) -> [Entry; 2] {
    let pass = |typed: bool| {
        let mut out = e.clone();
        let (c, d) = (&e.config, &e.details);
        (out.config, out.details) = match (e.stage.as_str(), typed) {
            ("prepare", _) => {
                (through::<jarip_data::prepare::PrepareOptions>(c), through::<jarip_data::prepare::PrepareSummary>(d))
            }
            ("tokenizer-train", _) => (through::<rec::TokenizerTrainConfig>(c), d.clone()),
            ("shard", _) => (through::<jarip_data::ShardOptions>(c), through::<jarip_data::ShardSummary>(d)),
            ("pretrain-start" | "pretrain-resume", true) => (through::<PretrainConfig>(c), through::<PretrainStart>(d)),
            ("pretrain-start" | "pretrain-resume", false) => {
                (through::<rec::PretrainConfig<Opaque>>(c), through::<rec::PretrainStart<Opaque>>(d))
            }
            ("sft-start" | "sft-resume", true) => (through::<SftConfig>(c), through::<SftStart>(d)),
            ("sft-start" | "sft-resume", false) => {
                (through::<rec::SftConfig<Opaque>>(c), through::<rec::SftStart<Opaque>>(d))
            }
            ("checkpoint" | "sft-checkpoint", true) => (c.clone(), through::<CheckpointDetails>(d)),
            ("checkpoint" | "sft-checkpoint", false) => (c.clone(), through::<rec::CheckpointDetails<Opaque>>(d)),
            (other, _) => panic!("no record for stage {other}"),
        };
        out
    };
    [pass(true), pass(false)]
}

fn check_ledger(name: &str, stages: &[&str]) {
    let path = golden(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let entries = Ledger::at(&path).verify_chain().unwrap();
    assert_eq!(entries.iter().map(|e| e.stage.as_str()).collect::<Vec<_>>(), stages);
    for (line, e) in text.lines().zip(&entries) {
        assert_eq!(serde_json::to_string(e).unwrap(), line);
        for again in retyped(e) {
            assert_eq!(serde_json::to_string(&again).unwrap(), line, "{} changed in its record", e.stage);
            assert_eq!(again.compute_hash(), e.hash);
        }
    }
}

#[test]
fn pretraining_ledger_is_written_byte_for_byte() {
    check_ledger(
        "ledger.jsonl",
        &["prepare", "tokenizer-train", "shard", "pretrain-start", "checkpoint", "checkpoint"],
    );
}

#[test]
fn fine_tuning_ledger_is_written_byte_for_byte() {
    check_ledger("sft-ledger.jsonl", &["sft-start", "sft-checkpoint", "sft-checkpoint"]);
}

#[test]
fn metrics_lines_are_written_byte_for_byte() {
    for (name, n, sft) in [("metrics.jsonl", 20, false), ("sft-metrics.jsonl", 8, true)] {
        let text = std::fs::read_to_string(golden(name)).unwrap();
        assert_eq!(text.lines().count(), n);
        for line in text.lines() {
            let m: StepMetrics = serde_json::from_str(line).unwrap();
            assert_eq!(rec::metrics_line(&m).unwrap(), line);
            // Each stage's keys: pretraining's throughput, fine-tuning's epoch.
            assert_eq!(m.epoch.is_some(), sft, "{line}");
            assert_eq!(m.mfu.is_some(), !sft, "{line}");
        }
        assert!(text.lines().any(|l| l.contains("\"val_bpb\"")));
    }
}

#[test]
fn checkpoint_settings_are_written_byte_for_byte() {
    for (name, sft) in [("ckpt-manifest.json", false), ("sft-ckpt-manifest.json", true)] {
        let text = std::fs::read_to_string(golden(name)).unwrap();
        let m: Manifest = serde_json::from_str(&text).unwrap();
        let mut again = m.clone();
        again.settings = if sft { through::<SftConfig>(&m.settings) } else { through::<PretrainConfig>(&m.settings) };
        // `--resume` compares these values: they must be equal as values and as bytes.
        assert_eq!(again.settings, m.settings);
        assert_eq!(serde_json::to_string_pretty(&again).unwrap(), text);
        let s = rec::CheckpointSettings::of(&m.settings);
        assert_eq!(s.is_sft(), sft);
        assert!(s.seed.is_some() && s.tokenizer_sha256.is_some());
    }
}
