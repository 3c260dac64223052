//! Checkpoints: `RUN/ckpt-STEP/` holding `model.safetensors`, `config.json`, `tokenizer.json`,
//! `optimizer.safetensors`, `trainer.json` and a `manifest.json` (kind "checkpoint") with the
//! SHA-256 of each file. Built under a temporary name and renamed when complete
//! ([`AtomicDir`]), so a crash or full disk never leaves a half checkpoint; the last K are kept.

use crate::optim::Optimizer;
use anyhow::{bail, Context, Result};
use jarip_data::SamplerState;
use jarip_ledger::{AtomicDir, Manifest};
use jarip_model::{Gpt, MatmulPath, ModelConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_FILE: &str = "trainer.json";
pub const CHECKPOINT_KIND: &str = "checkpoint";
/// A copy of the tokenizer travels in every checkpoint, so a checkpoint alone is a usable model.
pub const TOKENIZER_FILE: &str = jarip_interop::model_dir::TOKENIZER_FILE;
/// Files of another model's tokenizer besides tokenizer.json, kept with checkpoints fine-tuned from it.
const FOREIGN_TOKENIZER_FILES: [&str; 3] = ["tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// Everything besides weights and moments needed to continue exactly where a run stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    /// Where the training data sampler stands.
    pub sampler: SamplerState,
    /// The run's seed: weights at step 0, data order, and the sampling RNG (which is re-seeded
    /// from (seed, step) at every sample, so it carries no state of its own).
    pub seed: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    /// Tokens per optimizer step (gradient accumulation reaches it).
    pub batch_tokens: usize,
    /// Data-parallel replicas the step's micro-batches are split among (see [`crate::dist`]).
    #[serde(default = "one")]
    pub replicas: usize,
    pub elapsed_s: f64,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    /// The run's length in steps; for a time-limited run, the plan fixed after its first steps.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Fine-tuning with pretraining text mixed in: where that text's sampler stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix_sampler: Option<SamplerState>,
    /// How the run multiplies matrices (absent: fp32); a resumed run keeps these bits.
    #[serde(default, skip_serializing_if = "MatmulPath::is_fp32")]
    pub matmul: MatmulPath,
}

pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join(format!("ckpt-{step:06}"))
}

/// Completed checkpoints of a run, oldest first (none when the run directory does not exist).
pub fn list_checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !run.exists() {
        return Ok(Vec::new());
    }
    jarip_ledger::run_dir::checkpoints(run)
}

pub fn latest_checkpoint(run: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list_checkpoints(run)?.pop())
}

/// Writes checkpoint `state.step` atomically, then removes all but the newest `keep` (and the
/// checkpoint of step `protect`, the best one so far of a run that selects).
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint(
    run: &Path,
    model: &Gpt,
    optim: &Optimizer,
    state: &TrainerState,
    tokenizer_json: &Path,
    settings: serde_json::Value,
    keep: usize,
    protect: Option<u64>,
) -> Result<PathBuf> {
    let target = checkpoint_dir(run, state.step);
    let dir = AtomicDir::create(&target)?;
    model.save(dir.path())?;
    std::fs::copy(tokenizer_json, dir.path().join(TOKENIZER_FILE))
        .with_context(|| format!("cannot copy {} into the checkpoint", tokenizer_json.display()))?;
    // Another model's tokenizer (a foreign base's) keeps its special tokens and chat template
    // in these files; jarip's tokenizers have none of them.
    if let Some(src) = tokenizer_json.parent() {
        for name in FOREIGN_TOKENIZER_FILES {
            if src.join(name).is_file() {
                std::fs::copy(src.join(name), dir.path().join(name))
                    .with_context(|| format!("cannot copy {name} into the checkpoint"))?;
            }
        }
    }
    optim.save(&dir.path().join(OPTIMIZER_FILE))?;
    std::fs::write(dir.path().join(TRAINER_FILE), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("cannot write {}", TRAINER_FILE))?;
    Manifest::for_dir(CHECKPOINT_KIND, dir.path(), vec![], settings)?.write(dir.path())?;
    dir.commit().with_context(|| format!("cannot complete checkpoint {}", target.display()))?;
    let all = list_checkpoints(run)?;
    if keep > 0 && all.len() > keep {
        for (_, old) in all[..all.len() - keep].iter().filter(|(step, _)| Some(*step) != protect) {
            std::fs::remove_dir_all(old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
        }
    }
    Ok(target)
}

/// A checkpoint read back, its files checked against its manifest.
pub struct Loaded {
    pub config: ModelConfig,
    pub model: Gpt,
    pub state: TrainerState,
    pub dir: PathBuf,
}

pub fn load_checkpoint(dir: &Path, device: &candle_core::Device) -> Result<Loaded> {
    let manifest = Manifest::read(dir)?;
    if manifest.kind != CHECKPOINT_KIND {
        bail!("{} is a {:?}, not a checkpoint", dir.display(), manifest.kind);
    }
    manifest.verify(dir)?;
    let model = Gpt::load(dir, device)?;
    let text = std::fs::read_to_string(dir.join(TRAINER_FILE))
        .with_context(|| format!("cannot read {}", dir.join(TRAINER_FILE).display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not trainer state", dir.join(TRAINER_FILE).display()))?;
    Ok(Loaded { config: model.config().clone(), model, state, dir: dir.to_path_buf() })
}

/// A ledger entry for checkpoint `dir` of stage `stage`, listing each of its files with its hash.
pub fn checkpoint_entry(stage: &str, dir: &Path, seed: u64) -> Result<jarip_ledger::Entry> {
    let mut e = jarip_ledger::Entry::new(stage);
    e.outputs = Manifest::read(dir)?
        .files
        .iter()
        .map(|(n, f)| jarip_ledger::FileRef {
            path: dir.join(n).display().to_string(),
            sha256: f.sha256.clone(),
            bytes: Some(f.bytes),
        })
        .collect();
    e.seed = Some(seed);
    Ok(e)
}

fn one() -> usize {
    1
}
