//! `jarip export`: a checkpoint into formats other tools load (HF layout; GGUF), with the
//! source's weight hash in the export's manifest and an `export` entry in the run's ledger.

use anyhow::{Context, Result};
use clap::Args;
use jarip_interop::hf::{self, Dtype};
use jarip_ledger::{Entry, FileRef, Ledger};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (created atomically; must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight type: f32 keeps the weights bit for bit; bf16 and f16 halve the file.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// Do not append an `export` entry to the run's ledger.
    #[arg(long)]
    pub no_ledger: bool,
}

/// Ledgers live in the run directory or, for `RUN/sft/ckpt-*`, one level further up.
fn find_ledger(ckpt: &Path) -> Option<PathBuf> {
    ckpt.ancestors().skip(1).take(2).map(|d| d.join("ledger.jsonl")).find(|p| p.is_file())
}

pub fn run(a: &ExportArgs) -> Result<()> {
    if a.out.exists() {
        anyhow::bail!("{} already exists: choose a new --out", a.out.display());
    }
    let loaded = jarip_infer::load_model(&a.model, &candle_core::Device::Cpu)?;
    let source_sha = loaded.model.weights_sha256()?;
    let ledger = find_ledger(&loaded.dir);
    let ledger_head = match &ledger {
        Some(l) => Ledger::at(l).entries()?.last().map(|e| e.hash.clone()),
        None => None,
    };
    let provenance = json!({
        "statement": "trained from scratch with jarip",
        "source_checkpoint": loaded.dir.display().to_string(),
        "source_kind": loaded.manifest.kind,
        "source_manifest_sha256": loaded.manifest.content_hash(),
        "source_weights_sha256": source_sha,
        "step": loaded.step(),
        "source_settings": loaded.manifest.settings,
        "ledger": ledger.as_ref().map(|l| l.display().to_string()),
        "ledger_head": ledger_head,
    });
    let tok_file = loaded.dir.join(jarip_infer::model_dir::TOKENIZER_FILE);
    let e = hf::export_hf(&loaded.model, &tok_file, &a.out, a.dtype, provenance)?;
    println!(
        "exported {} ({}, {} parameters) → {}\n  weights sha256 {} ({})",
        loaded.dir.display(),
        a.dtype.torch_name(),
        loaded.model.num_params(),
        a.out.display(),
        e.weights_sha256,
        if e.weights_sha256 == source_sha { "identical to the checkpoint" } else { "rounded from the checkpoint's" }
    );
    if let (Some(l), false) = (ledger, a.no_ledger) {
        let mut entry = Entry::new("export");
        let weights = loaded.dir.join(jarip_model::WEIGHTS_FILE);
        entry.inputs.push(FileRef::of_file(&weights)?);
        entry.config = json!({ "format": "hf", "dtype": a.dtype.torch_name() });
        // The export may move or be deleted later: its files are recorded as facts, not outputs.
        let files: Value = serde_json::to_value(&e.manifest.files)?;
        entry.details = json!({
            "out": a.out.display().to_string(),
            "source_weights_sha256": source_sha,
            "weights_sha256": e.weights_sha256,
            "files": files,
        });
        Ledger::at(&l).append(entry).with_context(|| format!("cannot append to {}", l.display()))?;
        println!("  ledger: export entry appended to {}", l.display());
    }
    Ok(())
}
