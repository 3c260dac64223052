//! `jarip export`: a checkpoint into formats other tools load (the HF layout, or one GGUF file),
//! with the source's weight hash recorded in the export and an `export` entry in the run's ledger.

use anyhow::{Context, Result};
use clap::Args;
use jarip_interop::gguf_model::{self, GgufArch, WeightType};
use jarip_interop::hf;
use jarip_ledger::records::{ExportConfig, ExportDetails};
use jarip_ledger::{Entry, FileRef, Ledger};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its selected checkpoint, else its newest).
    #[arg(long)]
    pub model: PathBuf,
    /// Output: a directory for `hf`, a `.gguf` file for `gguf` (written atomically; must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// `hf` (safetensors + config + tokenizer + PyTorch code) or `gguf` (one file); default: gguf
    /// when --out ends in .gguf, else hf.
    #[arg(long)]
    pub format: Option<String>,
    /// Weight type: f32 keeps the weights bit for bit; bf16 and f16 halve the file; q8_0 (gguf
    /// only) stores 8-bit blocks, 3.8× smaller than f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// GGUF architecture: jarip, qwen3 or llama. Default: llama.cpp's own graph for the
    /// `--arch qwen3|llama` shapes (exact), else jarip. qwen3 also takes a SwiGLU jarip model
    /// (llama.cpp then runs it without the logit soft-cap; jarip still loads the file exactly).
    #[arg(long)]
    pub gguf_arch: Option<GgufArch>,
    /// Do not append an `export` entry to the run's ledger.
    #[arg(long)]
    pub no_ledger: bool,
}

/// Which engines run this export, in plain words.
fn engines_line(
    cfg: &jarip_model::ModelConfig,
    gguf: bool,
    arch: GgufArch,
    tok: &jarip_tokenizer::Tokenizer,
) -> String {
    let family = hf::native_family(cfg);
    if !gguf {
        return match family {
            Some((_, class)) => format!(
                "jarip; transformers ({class}, no remote code), vLLM and SGLang with their own {class} implementation"
            ),
            None => "jarip; transformers only with trust_remote_code (the export's modeling_jarip.py); vLLM and SGLang cannot load it (train with --arch llama or qwen3 for models they run)"
                .into(),
        };
    }
    let split = match tok.preset().and_then(|p| p.llama_cpp_name()) {
        Some(name) => format!("text tokenized exactly as jarip does ({name})"),
        None => "token ids exact; text split by qwen2's rule, which differs from jarip's on numbers (train the tokenizer with --preset llama3 for an exact split)"
            .into(),
    };
    match (arch, family) {
        (GgufArch::Jarip, _) => "jarip only: llama.cpp has no graph for architecture jarip (train with --arch llama or qwen3 for llama.cpp/Ollama)"
            .into(),
        (_, Some(_)) => format!("jarip; llama.cpp and Ollama as {} exactly; {split}", arch.name()),
        (_, None) => format!(
            "jarip exactly; llama.cpp as {} without jarip's logit soft-cap (its outputs will differ); {split}",
            arch.name()
        ),
    }
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
    if loaded.manifest.kind != "checkpoint" {
        anyhow::bail!(
            "{} is an export ({}), not a checkpoint: export from the checkpoint it came from, so the record stays whole",
            a.model.display(),
            loaded.manifest.kind
        );
    }
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
    let gguf = match a.format.as_deref() {
        Some("gguf") => true,
        Some("hf") => false,
        Some(other) => anyhow::bail!("unknown --format {other:?}: use hf or gguf"),
        None => a.out.extension().is_some_and(|e| e == "gguf"),
    };
    let wt: WeightType = a.dtype.parse().map_err(|e| {
        if gguf {
            e
        } else {
            anyhow::anyhow!("unknown weight type {:?} for the HF layout: use f32, bf16 or f16", a.dtype)
        }
    })?;
    let cfg = loaded.model.config();
    let gguf_arch = a.gguf_arch.unwrap_or_else(|| GgufArch::for_config(cfg));
    let engines = engines_line(cfg, gguf, gguf_arch, &loaded.tokenizer);
    let (weights_sha256, files, dtype) = if gguf {
        let name = loaded.dir.file_name().map_or_else(|| "jarip".into(), |n| n.to_string_lossy().to_string());
        let arch = gguf_arch;
        let e = gguf_model::export_gguf(&loaded.model, &tok_file, &a.out, wt, arch, &name, &provenance)?;
        let f = FileRef::of_file(&a.out)?;
        (e.weights_sha256, serde_json::to_value([f])?, wt.name())
    } else {
        let e = hf::export_hf(&loaded.model, &tok_file, &a.out, wt, provenance)?;
        (e.weights_sha256, serde_json::to_value(&e.manifest.files)?, wt.torch_name().unwrap_or(wt.name()))
    };
    println!(
        "exported {} ({dtype}, {} parameters) → {}\n  weights sha256 {weights_sha256} ({})",
        loaded.dir.display(),
        loaded.model.num_params(),
        a.out.display(),
        if weights_sha256 == source_sha { "identical to the checkpoint" } else { "rounded from the checkpoint's" }
    );
    println!("  runs in: {engines}");
    if let (Some(l), false) = (ledger, a.no_ledger) {
        let mut entry = Entry::new("export");
        let weights = loaded.dir.join(jarip_model::WEIGHTS_FILE);
        entry.inputs.push(FileRef::of_file(&weights)?);
        entry
            .set_config(&ExportConfig { format: if gguf { "gguf" } else { "hf" }.into(), dtype: dtype.to_string() })?;
        // The export may move or be deleted later: its files are recorded as facts, not outputs.
        entry.set_details(&ExportDetails {
            out: a.out.display().to_string(),
            source_weights_sha256: source_sha,
            weights_sha256,
            files,
        })?;
        Ledger::at(&l).append(entry).with_context(|| format!("cannot append to {}", l.display()))?;
        println!("  ledger: export entry appended to {}", l.display());
    }
    Ok(())
}
