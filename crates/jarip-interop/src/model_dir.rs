//! A model on disk: a jarip checkpoint directory (`ckpt-STEP/`, with `model.safetensors`,
//! `config.json`, `tokenizer.json` and a manifest), or a run directory meaning its selected
//! checkpoint (`selected.json`), else its newest. Loading checks every file against the manifest and the tokenizer against the
//! model, so a mismatched pair is refused rather than producing fluent nonsense.

use anyhow::{bail, Context, Result};
use jarip_kernels::decode_matmul::WeightFormat;
use jarip_ledger::manifest::MANIFEST_FILE;
use jarip_ledger::Manifest;
use jarip_model::Gpt;
use jarip_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Written by the trainer beside the weights; its presence marks a checkpoint.
pub const TRAINER_FILE: &str = "trainer.json";

/// A checkpoint directory, or a run directory (its selected checkpoint, else its newest; see
/// [`jarip_ledger::run_dir`]) → checkpoint directory. Naming a checkpoint always wins.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if !path.is_dir() {
        bail!("{} is a file; --model takes a checkpoint or run directory", path.display());
    }
    if path.join(MANIFEST_FILE).exists() && path.join(TRAINER_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    match jarip_ledger::run_dir::model_of_run(path)? {
        Some(d) => Ok(d),
        None => bail!(
            "{} is not a jarip checkpoint (no {MANIFEST_FILE} and {TRAINER_FILE}) nor a run directory holding ckpt-* checkpoints",
            path.display()
        ),
    }
}

/// Whose weights these are, as far as jarip's records can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A jarip checkpoint, or an export of one whose recorded hashes match: a ledger proves them.
    Own,
    /// No jarip record proves these weights (another model, or a file whose hashes do not match).
    Foreign { family: String },
    /// Fine-tuned by a jarip run from a base no jarip ledger proves (`sft --allow-foreign-base`):
    /// the fine-tuning is recorded, the model is not from scratch.
    NotFromScratch { base: String },
}

/// How every output names a model no jarip ledger proves.
pub const NOT_BUILT_HERE: &str = "not built by this run";

/// A model ready for inference.
pub struct LoadedModel {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    /// The checkpoint directory (or the export directory, or the GGUF file).
    pub dir: PathBuf,
    /// Its manifest (hashes of every file, the training settings).
    pub manifest: Manifest,
    /// How the file stored the weight matrices (a Q8_0 GGUF is decoded as Q8_0 by default).
    pub stored_format: WeightFormat,
    pub origin: Origin,
}

impl LoadedModel {
    /// Whether no jarip record proves these weights.
    pub fn is_foreign(&self) -> bool {
        matches!(self.origin, Origin::Foreign { .. })
    }

    /// Whether these weights were trained from scratch by a jarip run.
    pub fn is_own(&self) -> bool {
        self.origin == Origin::Own
    }

    /// "built by this run" or [`NOT_BUILT_HERE`] (with the family), for tables and panels.
    pub fn origin_label(&self) -> String {
        match &self.origin {
            Origin::Own => "built by this run".into(),
            Origin::Foreign { family } => format!("{NOT_BUILT_HERE} ({family})"),
            Origin::NotFromScratch { base } => format!("not from scratch: fine-tuned from {base}"),
        }
    }

    /// Optimizer steps behind these weights, as the trainer recorded them.
    pub fn step(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join(TRAINER_FILE)).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?.get("step")?.as_u64()
    }
}

/// Loads `path` (checkpoint or run directory, or a directory `jarip export` wrote in the HF
/// layout) on `device` with its tokenizer.
pub fn load_model(path: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return load_gguf(path, device);
    }
    if path.is_dir() && crate::hf::is_hf_export(path) {
        return load_hf_export(path, device);
    }
    if crate::foreign::is_foreign_hf(path) {
        return load_foreign(path, device);
    }
    let dir = resolve_checkpoint(path)?;
    let manifest = Manifest::read(&dir)?;
    if manifest.kind != "checkpoint" {
        bail!("{} is a {:?}, not a checkpoint", dir.display(), manifest.kind);
    }
    manifest.verify(&dir)?;
    let model = Gpt::load(&dir, device).with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let tok_file = dir.join(TOKENIZER_FILE);
    if !tok_file.exists() {
        bail!("{} has no {TOKENIZER_FILE}: copy the tokenizer the model was trained with into it", dir.display());
    }
    let foreign_base = jarip_ledger::records::CheckpointSettings::of(&manifest.settings).foreign_base;
    let tokenizer = match foreign_base {
        // Fine-tuned from another model: its tokenizer and templates were copied beside the weights.
        Some(_) if Tokenizer::load(&tok_file).is_err() => Tokenizer::load_foreign(&dir),
        _ => Tokenizer::load(&tok_file),
    }
    .with_context(|| format!("cannot load tokenizer {}", tok_file.display()))?;
    check_pair(&model, &tokenizer, &manifest, &tok_file)?;
    let origin = match foreign_base {
        Some(base) => Origin::NotFromScratch { base },
        None => Origin::Own,
    };
    Ok(LoadedModel { model, tokenizer, dir, manifest, stored_format: WeightFormat::F32, origin })
}

/// [`load_model`] onto the CPU, where inference runs.
pub fn load_model_cpu(path: &Path) -> Result<LoadedModel> {
    load_model(path, &candle_core::Device::Cpu)
}

/// An HF-layout export: its manifest must verify (it names the source checkpoint and tokenizer).
fn load_hf_export(dir: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    let manifest = Manifest::read(dir).with_context(|| {
        format!("{} is in the HF layout but was not exported by jarip (no manifest)", dir.display())
    })?;
    if manifest.kind != crate::hf::EXPORT_KIND {
        bail!("{} is a {:?}, not an export", dir.display(), manifest.kind);
    }
    manifest.verify(dir)?;
    let model = crate::hf::load_hf(dir, device)?;
    let tok_file = dir.join(TOKENIZER_FILE);
    let tokenizer =
        Tokenizer::load(&tok_file).with_context(|| format!("cannot load tokenizer {}", tok_file.display()))?;
    check_pair(&model, &tokenizer, &manifest, &tok_file)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        dir: dir.to_path_buf(),
        manifest,
        stored_format: WeightFormat::F32,
        origin: Origin::Own,
    })
}

/// A GGUF file `jarip export` wrote: its weights are checked against the hash recorded in it; the
/// manifest is made from its metadata (the file is its own record).
fn load_gguf(path: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    {
        let f = crate::gguf::GgufFile::open(path)?;
        if f.get(&format!("{}.config", crate::gguf_model::ARCH)).is_none() {
            return load_foreign_gguf(&f, path, device);
        }
    }
    let g = crate::gguf_model::load_gguf(path, device)?;
    let mut settings = g.source.get("source_settings").cloned().unwrap_or_default();
    if let Some(obj) = settings.as_object_mut() {
        obj.insert("file_type".into(), g.file_type.clone().into());
        obj.insert("weights_sha256".into(), g.weights_sha256.clone().into());
    }
    let manifest = file_manifest("export-gguf", path, settings)?;
    check_pair(&g.model, &g.tokenizer, &manifest, path)?;
    // Decoded as stored: Q8_0 blocks, bf16 (widened a block at a time: the same bits as f32 on
    // these values, half the bytes per step), else f32.
    let stored_format = match g.file_type.as_str() {
        "q8_0" => WeightFormat::Q8_0,
        "bf16" => WeightFormat::Bf16,
        _ => WeightFormat::F32,
    };
    Ok(LoadedModel {
        model: g.model,
        tokenizer: g.tokenizer,
        dir: path.to_path_buf(),
        manifest,
        stored_format,
        origin: Origin::Own,
    })
}

/// Another model's HF directory ([`crate::foreign`]): its own tokenizer and templates, every file
/// hashed into a manifest of kind `foreign-hf`, and the origin marked foreign.
fn load_foreign(dir: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    let f = crate::foreign::load_foreign_hf(dir, device)?;
    let tokenizer = Tokenizer::load_foreign(dir)?;
    if !tokenizer.fits_vocab(f.model.config().vocab_size) {
        bail!(
            "{}: the tokenizer has {} tokens, more than the model's vocab_size {}",
            dir.display(),
            tokenizer.vocab_size(),
            f.model.config().vocab_size
        );
    }
    let manifest = Manifest {
        kind: "foreign-hf".into(),
        jarip_version: jarip_ledger::JARIP_VERSION.into(),
        git_commit: None,
        created: String::new(),
        files: f.files,
        inputs: vec![],
        settings: serde_json::json!({ "family": f.family, "model": f.model.config(), "tokenizer_sha256": tokenizer.sha256() }),
    };
    Ok(LoadedModel {
        model: f.model,
        tokenizer,
        dir: dir.to_path_buf(),
        manifest,
        stored_format: WeightFormat::F32,
        origin: Origin::Foreign { family: f.family },
    })
}

/// A GGUF file jarip did not write ([`crate::foreign::load_foreign_gguf`]).
fn load_foreign_gguf(f: &crate::gguf::GgufFile, path: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    let g = crate::foreign::load_foreign_gguf(f, path, device)?;
    if !g.tokenizer.fits_vocab(g.model.config().vocab_size) {
        bail!(
            "{}: the vocabulary has {} tokens, more than the embedding's {} rows",
            path.display(),
            g.tokenizer.vocab_size(),
            g.model.config().vocab_size
        );
    }
    let has = |ty: crate::gguf::GgmlType| f.tensors.iter().any(|t| t.ty == ty);
    let stored_format = if has(crate::gguf::GgmlType::Q8_0) {
        WeightFormat::Q8_0
    } else if has(crate::gguf::GgmlType::BF16) && !has(crate::gguf::GgmlType::F16) {
        // bf16 matrices decode as bf16 (exactly their values); an f16 tensor among them would
        // lose bits to bf16's shorter mantissa, so such a file decodes as f32.
        WeightFormat::Bf16
    } else {
        WeightFormat::F32
    };
    let settings =
        serde_json::json!({ "family": g.family, "model": g.model.config(), "tokenizer_sha256": g.tokenizer.sha256() });
    let manifest = file_manifest("foreign-gguf", path, settings)?;
    Ok(LoadedModel {
        model: g.model,
        tokenizer: g.tokenizer,
        dir: path.to_path_buf(),
        manifest,
        stored_format,
        origin: Origin::Foreign { family: g.family },
    })
}

/// A manifest for a model that is one file (a GGUF): its name, SHA-256 and size, and `settings`.
fn file_manifest(kind: &str, path: &Path, settings: serde_json::Value) -> Result<Manifest> {
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
    let bytes = std::fs::metadata(path)?.len();
    let hash = jarip_ledger::manifest::FileHash { sha256: jarip_ledger::sha256_file(path)?, bytes };
    Ok(Manifest {
        kind: kind.into(),
        jarip_version: jarip_ledger::JARIP_VERSION.into(),
        git_commit: None,
        created: String::new(),
        files: [(name, hash)].into_iter().collect(),
        inputs: vec![],
        settings,
    })
}

/// Refuses a tokenizer that is not the one the model was trained with.
fn check_pair(model: &Gpt, tok: &Tokenizer, manifest: &Manifest, tok_file: &Path) -> Result<()> {
    if let Some(want) = jarip_ledger::records::CheckpointSettings::of(&manifest.settings).tokenizer_sha256 {
        if tok.sha256() != want {
            bail!(
                "tokenizer {} (sha256 {}) does not match the model, which was trained with tokenizer {want}",
                tok_file.display(),
                tok.sha256()
            );
        }
    }
    if !tok.fits_vocab(model.config().vocab_size) {
        bail!(
            "tokenizer {} has {} tokens but the model's vocab_size is {}",
            tok_file.display(),
            tok.vocab_size(),
            model.config().vocab_size
        );
    }
    Ok(())
}
