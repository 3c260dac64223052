//! Replaying a recorded checkpoint interval with the trainer itself.
//!
//! Interval K runs from checkpoint K to checkpoint K+1, checkpoints numbered from 1 in ledger
//! order and 0 standing for the seeded initialisation. Checkpoint K is copied into a scratch
//! run directory and [`jarip_train::pretrain`] resumes it with the recorded configuration and
//! run length, stopping at checkpoint K+1's step (the schedule is a function of the step and the
//! recorded length, so stopping early changes nothing before it). The weights it ends with must
//! hash to what the ledger recorded for checkpoint K+1, and its data cursor must end where the
//! ledger says: on CPU (fp32, deterministic kernels) training is reproducible bit for bit.

use crate::record::{CheckpointRec, Pretraining, RunRecord};
use crate::verify::Check;
use anyhow::{bail, Context, Result};
use jarip_model::Precision;
use jarip_train::checkpoint::{TrainerState, TOKENIZER_FILE, TRAINER_FILE};
use jarip_train::records::SftConfig;
use jarip_train::PretrainOptions;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The trainer options that re-run the recorded pretraining in `out`.
fn options(rec: &RunRecord, p: &Pretraining, out: &Path, total_steps: u64, stop: u64) -> Result<PretrainOptions> {
    let c = &p.config;
    let manifest = p.shard_manifest.as_ref().context("pretrain-start records no shard manifest")?;
    let data = rec.paths.locate(manifest).parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(PretrainOptions {
        data,
        out: out.to_path_buf(),
        max_steps: Some(total_steps),
        stop_at_step: Some(stop),
        seed: c.seed,
        data_seed: Some(c.order_seed()),
        seq_len: c.seq_len,
        batch_size: c.batch_size,
        batch_tokens: Some(c.batch_tokens),
        // One process stands in for every data-parallel rank the run had.
        replicas: Some(c.replicas),
        checkpoint_every: 0,
        keep_checkpoints: 0,
        eval_every: 0,
        // The last step always evaluates; a single batch keeps that cheap (it reads no state
        // that training uses).
        eval_tokens: c.seq_len * c.batch_size,
        sample_every: 0,
        optimizer: c.optimizer.clone(),
        schedule: c.schedule,
        kernels: c.kernels,
        precision: Some(if c.matmul.is_bf16() { Precision::Bf16 } else { Precision::Fp32 }),
        // The recorded bf16 path, or one with its bits (AVX512-BF16 → portable without it).
        bf16_kernel: c.matmul.is_bf16().then(|| c.matmul.for_replay()).transpose().map_err(anyhow::Error::msg)?,
        device: "cpu".into(),
        progress: false,
        ..Default::default()
    })
}

/// The run's length in steps as the ledger recorded it (the target checkpoint's, else any).
fn total_steps(p: &Pretraining, target: &CheckpointRec) -> Option<u64> {
    target.total_steps.or_else(|| p.checkpoints.iter().find_map(|c| c.total_steps))
}

fn replay_interval(rec: &RunRecord, p: &Pretraining, k: usize) -> Result<String> {
    let n = p.checkpoints.len();
    if k >= n {
        bail!(
            "the ledger records {n} checkpoints, so intervals 0..={} can be replayed (0 = from the seed)",
            n.saturating_sub(1)
        );
    }
    if p.config.device != "cpu" {
        bail!(
            "the run trained on {:?}; bit-for-bit replay needs a CPU run (jarip pretrain --device cpu), where the \
             arithmetic is deterministic",
            p.config.device
        );
    }
    let target = &p.checkpoints[k];
    let total = total_steps(p, target).context("the ledger does not record the run's length (total_steps)")?;
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let out = scratch.path().join("replay");
    let mut opts = options(rec, p, &out, total, target.step)?;
    let from_step = if k == 0 {
        // From the seed: a fresh run with the recorded model config and tokenizer.
        let cfg = scratch.path().join("model.json");
        std::fs::write(&cfg, p.config.model.to_json())?;
        opts.config = Some(cfg);
        let tok = p.tokenizer_file.as_ref().context("pretrain-start records no tokenizer")?;
        opts.tokenizer = Some(rec.paths.locate(tok));
        0
    } else {
        let source = &p.checkpoints[k - 1];
        let dir = rec.paths.locate(source.recorded_dir.as_deref().context("checkpoint entry records no files")?);
        if !dir.is_dir() {
            bail!("checkpoint {} ({}) is not on disk", source.name(), dir.display());
        }
        let name = dir.file_name().map(PathBuf::from).context("checkpoint directory has no name")?;
        copy_dir(&dir, &out.join(name))?;
        opts.resume = true;
        opts.tokenizer = Some(dir.join(TOKENIZER_FILE));
        source.step
    };
    let t0 = Instant::now();
    let summary = jarip_train::pretrain(&opts).context("re-running the recorded training")?;
    let secs = t0.elapsed().as_secs_f64();
    if summary.steps != target.step {
        bail!("the replay stopped at step {}, not at {}", summary.steps, target.step);
    }
    if summary.weights_sha256 != target.weights_sha256 {
        bail!(
            "steps {from_step} → {}: the replayed weights hash to {}…, the ledger records {}… for {}",
            target.step,
            &summary.weights_sha256[..12],
            &target.weights_sha256[..target.weights_sha256.len().min(12)],
            target.name()
        );
    }
    let ckpt = summary.last_checkpoint.context("the replay wrote no checkpoint")?;
    let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(ckpt.join(TRAINER_FILE))?)?;
    if Some(state.sampler) != target.sampler_after {
        bail!(
            "the replay's data cursor ended at {:?}, the ledger records {}",
            state.sampler,
            crate::record::cursor_text(&target.sampler_after)
        );
    }
    Ok(format!(
        "steps {from_step} → {} re-run in {secs:.1} s: weights {}… and data cursor equal the ledger's for {}",
        target.step,
        &summary.weights_sha256[..12],
        target.name()
    ))
}

/// Check for interval `k` (see the module doc).
pub fn replay(rec: &RunRecord, p: &Pretraining, k: usize) -> Check {
    let name = match p.checkpoints.get(k) {
        Some(t) => {
            let from = if k == 0 { "seed".to_string() } else { p.checkpoints[k - 1].name() };
            format!("replay {k}: {from} → {}", t.name())
        }
        None => format!("replay {k}"),
    };
    match replay_interval(rec, p, k) {
        Ok(detail) => Check::pass(name, detail),
        Err(e) => Check::fail(name, format!("{e:#}")),
    }
}

/// Fine-tuning interval `k` (0 = from the base checkpoint to the first SFT checkpoint, K from
/// SFT checkpoint K to K+1), re-run by [`jarip_train::sft`] with the settings `sft-start`
/// recorded; the weights must hash to the `sft-checkpoint` entry's.
fn replay_sft_interval(rec: &RunRecord, k: usize) -> Result<String> {
    let ckpts: Vec<CheckpointRec> = rec.sft_checkpoints().into_iter().collect::<Result<_>>()?;
    let n = ckpts.len();
    if k >= n {
        bail!(
            "the ledger records {n} fine-tuning checkpoints, so intervals 0..={} can be replayed (0 = from the base)",
            n.saturating_sub(1)
        );
    }
    let target = &ckpts[k];
    // The fine-tuning run the checkpoint belongs to: the last `sft-start` before it (a ledger may
    // hold several runs).
    let (start_at, start) = rec.entries[..target.entry]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, (_, e))| e.stage == "sft-start")
        .map(|(i, (_, e))| (i, e))
        .context("the ledger records no fine-tuning start (sft-start) before this checkpoint")?;
    // Resume from the previous checkpoint of the same run, or start from the base.
    let source = k.checked_sub(1).map(|j| &ckpts[j]).filter(|c| c.entry > start_at);
    let c: SftConfig = start
        .config_as()
        .with_context(|| format!("entry #{} sft-start: its config is not a fine-tuning config", start.seq))?;
    if c.device != "cpu" {
        bail!("the fine-tuning ran on {:?}; bit-for-bit replay needs a CPU run", c.device);
    }
    let (base, data) = (rec.paths.locate(&c.base_checkpoint), rec.paths.locate(&c.data));
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let out = scratch.path().join("replay");
    let mut opts = jarip_train::SftOptions {
        base: base.clone(),
        data: data.clone(),
        out: out.clone(),
        ledger: Some(scratch.path().join("ledger.jsonl")),
        max_steps: Some(c.total_steps),
        epochs: None,
        stop_at_step: Some(target.step),
        resume: false,
        seed: c.seed,
        seq_len: c.seq_len,
        batch_size: c.batch_size,
        // One process stands in for every data-parallel rank (absent: one replica).
        replicas: c.replicas,
        val_fraction: c.val_fraction,
        template_fraction: c.template_fraction.unwrap_or(0.0),
        keep_checkpoints: 0,
        eval_every: Some(0),
        patience: None,
        mix_data: c.mix.as_ref().map(|m| rec.paths.locate(&m.shards)),
        mix_fraction: c.mix.as_ref().map_or(0.0, |m| m.rows as f64 / c.batch_size as f64),
        optimizer: c.optimizer.clone(),
        schedule: c.schedule,
        kernels: c.kernels,
        precision: Some(if c.matmul.is_bf16() { Precision::Bf16 } else { Precision::Fp32 }),
        bf16_kernel: c.matmul.is_bf16().then(|| c.matmul.for_replay()).transpose().map_err(anyhow::Error::msg)?,
        device: "cpu".into(),
        progress: false,
        step_delay_ms: 0,
        allow_foreign_base: c.foreign_base.is_some(),
    };
    let from_step = if let Some(source) = source {
        let dir = rec.paths.locate(source.recorded_dir.as_deref().context("checkpoint entry records no files")?);
        if !dir.is_dir() {
            bail!("fine-tuning checkpoint {} ({}) is not on disk", source.name(), dir.display());
        }
        let copy = out.join(dir.file_name().context("checkpoint directory has no name")?);
        copy_dir(&dir, &copy)?;
        // The copy names its inputs where they are now, so resuming it is not refused for a
        // moved run; the settings that shape training stay as recorded.
        let mut m = jarip_ledger::Manifest::read(&copy)?;
        let mut settings: jarip_ledger::records::SftConfig<jarip_ledger::records::Opaque> =
            serde_json::from_value(m.settings.clone())
                .with_context(|| format!("{}: its settings are not a fine-tuning config", copy.display()))?;
        settings.base_checkpoint = base.display().to_string();
        settings.data = data.display().to_string();
        if let (Some(m), Some(dir)) = (settings.mix.as_mut(), opts.mix_data.as_ref()) {
            m.shards = dir.display().to_string();
        }
        m.settings = serde_json::to_value(&settings)?;
        m.write(&copy)?;
        opts.resume = true;
        source.step
    } else {
        0
    };
    let t0 = Instant::now();
    let summary = jarip_train::sft(&opts).context("re-running the recorded fine-tuning")?;
    let secs = t0.elapsed().as_secs_f64();
    if summary.steps != target.step || summary.weights_sha256 != target.weights_sha256 {
        bail!(
            "steps {from_step} → {}: the replay ended at step {} with weights {}…, the ledger records {}… for {}",
            target.step,
            summary.steps,
            &summary.weights_sha256[..12],
            &target.weights_sha256[..target.weights_sha256.len().min(12)],
            target.name()
        );
    }
    Ok(format!(
        "fine-tuning steps {from_step} → {} re-run in {secs:.1} s from {}: weights {}… equal the ledger's for {}",
        target.step,
        source.map_or_else(|| "the base checkpoint".to_string(), CheckpointRec::name),
        &summary.weights_sha256[..12],
        target.name()
    ))
}

/// Check for fine-tuning interval `k` (see [`replay_sft_interval`]).
pub fn replay_sft(rec: &RunRecord, k: usize) -> Check {
    let name = format!("replay sft {k}");
    match replay_sft_interval(rec, k) {
        Ok(detail) => Check::pass(name, detail),
        Err(e) => Check::fail(name, format!("{e:#}")),
    }
}
