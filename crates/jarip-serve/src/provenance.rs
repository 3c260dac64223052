//! The model's provenance summary for `/info` and the web page: where its weights came from, as
//! its checkpoint manifest and its run's ledger record it (seed, tokenizer and data hashes).

use jarip_infer::model_dir::{Origin, NOT_BUILT_HERE};
use jarip_infer::LoadedModel;
use jarip_ledger::records::CheckpointSettings;
use jarip_ledger::{Ledger, Manifest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Ledgers live in the run directory (the checkpoint's parent) or, for a fine-tuning run kept
/// inside its base run (`RUN/sft/ckpt-*`), one level further up.
fn find_ledger(ckpt: &Path) -> Option<PathBuf> {
    ckpt.ancestors().skip(1).take(2).map(|d| d.join("ledger.jsonl")).find(|p| p.is_file())
}

/// The JSON the page shows; every field is optional but the statement.
pub fn summary(name: &str, loaded: &LoadedModel) -> Value {
    let m = &loaded.manifest;
    let cfg = loaded.model.config();
    let trainer: Value = std::fs::read_to_string(loaded.dir.join(jarip_infer::model_dir::TRAINER_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let settings = CheckpointSettings::of(&m.settings);
    let sft = settings.is_sft();
    let (origin, statement) = match &loaded.origin {
        Origin::Own => ("own", "trained from scratch with jarip".to_string()),
        Origin::Foreign { family } => (
            "foreign",
            format!("{NOT_BUILT_HERE}: a {family} model loaded read-only; no jarip ledger proves its weights"),
        ),
        Origin::NotFromScratch { base } => (
            "not-from-scratch",
            format!("not from scratch: fine-tuned with jarip from {base}, which no jarip run built"),
        ),
    };
    if origin == "foreign" {
        let cfg = loaded.model.config();
        return json!({
            "model": name,
            "origin": origin,
            "statement": statement,
            "stage": "foreign",
            "checkpoint": loaded.dir.display().to_string(),
            "architecture": {
                "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "vocab_size": cfg.vocab_size,
                "context": cfg.max_seq_len,
            },
            "tokenizer_sha256": loaded.tokenizer.sha256(),
            "files": m.files,
            "ledger": Value::Null,
        });
    }
    let mut v = json!({
        "model": name,
        "origin": origin,
        "statement": statement,
        "stage": if sft { "sft" } else { "pretrain" },
        "checkpoint": loaded.dir.display().to_string(),
        "step": trainer.get("step"),
        "seed": settings.seed,
        "architecture": {
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "vocab_size": cfg.vocab_size,
            "context": cfg.max_seq_len,
        },
        "tokenizer_sha256": settings.tokenizer_sha256,
        "weights_sha256": trainer.get("weights_sha256").cloned()
            .or_else(|| m.files.get("model.safetensors").map(|f| json!(f.sha256))),
        "jarip_version": m.jarip_version,
        "git_commit": m.git_commit,
        "created": m.created,
    });
    if sft {
        v["data_sha256"] = json!(settings.data_sha256);
        v["base_weights_sha256"] = json!(settings.base_weights_sha256);
        // The pretraining behind the base: its seed and data, when the base is still on disk.
        if let Some(base) = &settings.base_checkpoint {
            if let Ok(bm) = Manifest::read(Path::new(base)) {
                let bs = CheckpointSettings::of(&bm.settings);
                v["base"] = json!({
                    "checkpoint": base, "seed": bs.seed,
                    "shards_merkle_root": bs.shards_merkle_root,
                });
            }
        }
    } else {
        v["shards_merkle_root"] = json!(settings.shards_merkle_root);
    }
    v["ledger"] = match find_ledger(&loaded.dir) {
        None => Value::Null,
        Some(path) => {
            let ledger = Ledger::at(&path);
            match ledger.verify_chain() {
                Ok(entries) => json!({
                    "path": path.display().to_string(),
                    "entries": entries.len(),
                    "chain": "intact",
                    "head": entries.last().map(|e| e.hash.clone()),
                    "stages": entries.iter().map(|e| e.stage.as_str()).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"path": path.display().to_string(), "chain": format!("broken: {e:#}")}),
            }
        }
    };
    v
}
