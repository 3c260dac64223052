//! Supervised fine-tuning: a base checkpoint learns to answer in the chat template.
//!
//! Conversations are rendered with the tokenizer's chat template and packed into windows whose
//! mask counts only the assistant's tokens ([`jarip_data::SftData`]); the loss is the mean over
//! those. Everything else is pretraining's machinery: the same optimizer, schedule, atomic
//! checkpoints (now also recording the base model's hash), bit-exact resume and ledger entries
//! (`sft-start`, `sft-checkpoint`).

use crate::checkpoint::{latest_checkpoint, load_checkpoint, TrainerState};
use crate::dist::{Collective, DataParallel, Solo};
use crate::driver::{device_for, device_kind, Run, Stage, StartEntry};
use crate::eval::{evaluate_batches, token_byte_lengths, EvalResult};
use crate::optim::{Optimizer, OptimizerOptions};
use crate::pretrain::LEDGER_FILE;
use crate::records::{Processes, SftConfig, SftStart, StepMetrics};
use crate::schedule::{Schedule, ScheduleKind};
use crate::step::{masked_loss, train_step_with, StepOutcome};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use jarip_data::conversations::read_conversations;
use jarip_data::sft::SftData;
use jarip_data::{Batch, SamplerState};
use jarip_ledger::{FileRef, Ledger};
use jarip_model::{Gpt, Kernels};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftOptions {
    /// The base model: a checkpoint directory, or a run directory (its newest checkpoint).
    pub base: PathBuf,
    /// Conversations, one `{"messages":[…]}` per line.
    pub data: PathBuf,
    /// Run directory of the fine-tuning (checkpoints, metrics.jsonl).
    pub out: PathBuf,
    /// The ledger to append to (default: `out/ledger.jsonl`); the speedrun keeps one per run.
    pub ledger: Option<PathBuf>,
    pub max_steps: Option<u64>,
    /// Or this many passes over the training conversations.
    pub epochs: Option<f64>,
    pub stop_at_step: Option<u64>,
    pub resume: bool,
    pub seed: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    /// Data-parallel replicas, each taking `batch_size / replicas` of every step's windows
    /// (default: the number of processes; see [`crate::dist`]).
    pub replicas: Option<usize>,
    /// Share of conversations held out for validation.
    pub val_fraction: f64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub eval_every: u64,
    pub optimizer: OptimizerOptions,
    pub schedule: Schedule,
    pub kernels: Kernels,
    pub device: String,
    pub progress: bool,
    /// Sleep after each step; only for tests that interrupt a run.
    pub step_delay_ms: u64,
}

impl Default for SftOptions {
    fn default() -> Self {
        Self {
            base: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            ledger: None,
            max_steps: None,
            epochs: None,
            stop_at_step: None,
            resume: false,
            seed: 42,
            seq_len: 256,
            batch_size: 8,
            replicas: None,
            val_fraction: 0.05,
            checkpoint_every: 200,
            keep_checkpoints: 2,
            eval_every: 100,
            optimizer: OptimizerOptions { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
            schedule: Schedule { kind: ScheduleKind::Cosine, warmup_steps: 20, min_lr_frac: 0.0, decay_frac: 0.2 },
            kernels: Kernels::Fused,
            device: "cpu".into(),
            progress: true,
            step_delay_ms: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSummary {
    pub out: PathBuf,
    pub steps: u64,
    pub final_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub last_checkpoint: Option<PathBuf>,
    pub base_checkpoint: PathBuf,
    pub base_weights_sha256: String,
    pub weights_sha256: String,
    pub train_conversations: usize,
    pub val_conversations: usize,
    pub elapsed_s: f64,
}

fn micro(b: &Batch, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = (b.batch_size, b.seq_len);
    let mask: Vec<f32> = match &b.mask {
        Some(m) => m.iter().map(|&c| if c { 1.0 } else { 0.0 }).collect(),
        None => vec![1.0; b.targets.len()],
    };
    Ok((
        Tensor::from_vec(b.inputs.clone(), shape, device)?,
        Tensor::from_vec(b.targets.clone(), shape, device)?,
        Tensor::from_vec(mask, b.targets.len(), device)?,
    ))
}

/// Fine-tuning's part of the loop: windows of rendered conversations, each replica taking its
/// share of the step's windows, and the loss over the assistant's tokens only.
struct FineTuning<'a> {
    data: &'a SftData,
    sampler: SamplerState,
    batch_size: usize,
    replicas: usize,
    device: Device,
    token_bytes: Vec<u32>,
    base_weights_sha256: String,
}

impl Stage for FineTuning<'_> {
    const CHECKPOINT: &'static str = "sft-checkpoint";

    fn train(
        &mut self,
        model: &Gpt,
        optim: &mut Optimizer,
        lr_factor: f64,
        dp: DataParallel,
    ) -> Result<(StepOutcome, u64)> {
        // Every rank draws the whole batch; replica r takes its r-th share of the windows.
        let batch = self.data.next_batch(&mut self.sampler, self.batch_size);
        let counted = batch.counted_targets() as u64;
        let share = self.batch_size / self.replicas;
        let device = &self.device;
        let loss_of = |r: usize| {
            let (x, y, m) = micro(&batch.rows(r * share, share), device)?;
            masked_loss(model, &x, &y, &m)
        };
        Ok((train_step_with(optim, self.replicas, lr_factor, loss_of, dp)?, counted))
    }

    fn cursor(&self) -> SamplerState {
        self.sampler
    }

    fn annotate(&mut self, line: &mut StepMetrics, out: &StepOutcome, _step_s: f64) -> String {
        line.epoch = Some(self.sampler.epoch);
        format!("loss {:.4}", out.loss)
    }

    fn evaluate(&self, model: &Gpt) -> Result<Option<EvalResult>> {
        if self.data.val.windows.is_empty() {
            return Ok(None);
        }
        Ok(Some(evaluate_batches(model, self.data.val_batches(self.batch_size), 0, &self.token_bytes)?))
    }

    fn step_label(&self) -> &'static str {
        "sft step"
    }

    fn base_weights_sha256(&self) -> Option<String> {
        Some(self.base_weights_sha256.clone())
    }

    fn stopped(&self, step: u64, err: anyhow::Error, _last_checkpoint: Option<&Path>) -> anyhow::Error {
        err.context(format!("fine-tuning stopped at step {step}"))
    }
}

/// Runs (or resumes) fine-tuning as `opts` describe, in this process alone.
pub fn sft(opts: &SftOptions) -> Result<SftSummary> {
    sft_parallel(opts, &Solo)
}

/// Runs (or resumes) fine-tuning as one rank of `comm`: every rank runs this with the same
/// options; rank 0 writes the run's files.
pub fn sft_parallel(opts: &SftOptions, comm: &dyn Collective) -> Result<SftSummary> {
    let t_start = Instant::now();
    if opts.seq_len < 2 || opts.batch_size == 0 {
        bail!("--seq-len must be at least 2 and --batch-size positive");
    }
    let dp = DataParallel::new(comm, opts.replicas.unwrap_or(comm.world_size()))?;
    if !opts.batch_size.is_multiple_of(dp.replicas) {
        bail!("--batch-size {} cannot be split among {} data-parallel replicas", opts.batch_size, dp.replicas);
    }
    let (device, compute_dtype) = device_for(&opts.device)?;
    let base =
        jarip_interop::model_dir::load_model(&opts.base, &device).with_context(|| "cannot load the base model")?;
    let base_sha = base.model.weights_sha256()?;
    let tokenizer = base.tokenizer;
    let convs = read_conversations(&opts.data)?;
    if convs.is_empty() {
        bail!("{} holds no conversations", opts.data.display());
    }
    let data_sha = jarip_ledger::sha256_file(&opts.data)?;
    let data = SftData::new(
        &tokenizer,
        &convs,
        &jarip_data::sft::SftOptions { seq_len: opts.seq_len, val_fraction: opts.val_fraction, seed: opts.seed },
    )?;
    base.model.config().check_seq_len(opts.seq_len)?;
    let windows = data.train.windows.len() as u64;
    let steps_per_epoch = windows.div_ceil(opts.batch_size as u64).max(1);
    let total_steps = match (opts.max_steps, opts.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * steps_per_epoch as f64).ceil() as u64).max(1),
        (None, None) => bail!("give a limit: --max-steps or --epochs"),
    };
    let settings = serde_json::to_value(SftConfig {
        stage: "sft".into(),
        model: base.model.config().clone(),
        seed: opts.seed,
        seq_len: opts.seq_len,
        batch_size: opts.batch_size,
        batch_tokens: opts.seq_len * opts.batch_size,
        optimizer: opts.optimizer.clone(),
        schedule: opts.schedule,
        total_steps,
        val_fraction: opts.val_fraction,
        kernels: opts.kernels,
        device: device_kind(&opts.device).to_string(),
        tokenizer_sha256: tokenizer.sha256().to_string(),
        base_checkpoint: base.dir.display().to_string(),
        base_weights_sha256: base_sha.clone(),
        data: opts.data.display().to_string(),
        data_sha256: data_sha,
        // Absent for one replica, so runs recorded before the setting existed still resume.
        replicas: (dp.replicas > 1).then_some(dp.replicas),
    })?;

    let ledger = Ledger::at(&opts.ledger.clone().unwrap_or_else(|| opts.out.join(LEDGER_FILE)));
    let latest = latest_checkpoint(&opts.out)?;
    let tok_file = base.dir.join(jarip_interop::model_dir::TOKENIZER_FILE);
    let (mut model, mut optim, state, resumed_from) = if opts.resume {
        let (_, dir) =
            latest.with_context(|| format!("--resume: {} has no checkpoint to resume from", opts.out.display()))?;
        let loaded = load_checkpoint(&dir, &device)?;
        let recorded = jarip_ledger::Manifest::read(&dir)?.settings;
        if recorded != settings {
            bail!(
                "--resume: {} was fine-tuned with other settings or inputs:\nrun       {}\nrequested {}",
                dir.display(),
                serde_json::to_string(&recorded)?,
                serde_json::to_string(&settings)?
            );
        }
        let mut optim = Optimizer::new(loaded.model.params(), &opts.optimizer, true)?;
        optim.load(&dir.join(crate::checkpoint::OPTIMIZER_FILE))?;
        (loaded.model, optim, loaded.state, Some(dir))
    } else {
        if latest.is_some() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue it, or choose a new --out",
                opts.out.display()
            );
        }
        let optim = Optimizer::new(base.model.params(), &opts.optimizer, true)?;
        let state = TrainerState {
            replicas: dp.replicas,
            step: 0,
            tokens_seen: 0,
            sampler: SamplerState { seed: opts.seed, epoch: 0, position: 0 },
            seed: opts.seed,
            seq_len: opts.seq_len,
            batch_size: opts.batch_size,
            batch_tokens: opts.seq_len * opts.batch_size,
            elapsed_s: 0.0,
            weights_sha256: base_sha.clone(),
            tokenizer_sha256: tokenizer.sha256().to_string(),
            total_steps: Some(total_steps),
        };
        (base.model, optim, state, None)
    };
    model.set_kernels(opts.kernels);
    model.set_compute_dtype(compute_dtype);
    let mut inputs: Vec<FileRef> =
        [FileRef::of_file(&opts.data), FileRef::of_file(&tok_file)].into_iter().flatten().collect();
    if let Ok(m) = FileRef::of_file(&base.dir.join(jarip_ledger::manifest::MANIFEST_FILE)) {
        inputs.push(m);
    }
    let start = StartEntry {
        stage: if resumed_from.is_some() { "sft-resume" } else { "sft-start" },
        inputs,
        details: serde_json::to_value(SftStart {
            step: state.step,
            base_weights_sha256: base_sha.clone(),
            weights_sha256: model.weights_sha256()?,
            train_conversations: data.train.conversations,
            val_conversations: data.val.conversations,
            train_windows: windows,
            sampler: state.sampler,
            resumed_from: resumed_from.as_ref().map(|d| d.display().to_string()),
            processes: Some(Processes { backend: comm.backend().into(), world_size: comm.world_size() }),
        })?,
    };
    let banner = vec![format!(
        "sft: {} train / {} val conversations, {windows} windows of {} tokens, {total_steps} steps",
        data.train.conversations, data.val.conversations, opts.seq_len
    )];
    let run = Run {
        comm,
        dp,
        out: &opts.out,
        ledger,
        settings,
        tokenizer_json: tok_file,
        seed: opts.seed,
        lr: opts.optimizer.lr,
        schedule: opts.schedule,
        total_steps: Some(total_steps),
        budget_s: None,
        stop_at_step: opts.stop_at_step,
        eval_every: opts.eval_every,
        checkpoint_every: opts.checkpoint_every,
        keep_checkpoints: opts.keep_checkpoints,
        step_delay_ms: opts.step_delay_ms,
        progress: opts.progress,
        banner,
    };
    let mut stage = FineTuning {
        data: &data,
        sampler: state.sampler,
        batch_size: opts.batch_size,
        replicas: dp.replicas,
        device,
        token_bytes: token_byte_lengths(&tokenizer),
        base_weights_sha256: base_sha.clone(),
    };
    let done = run.train(&mut stage, &model, &mut optim, state, resumed_from, start)?;
    Ok(SftSummary {
        out: opts.out.clone(),
        steps: done.state.step,
        final_loss: done.final_loss,
        val_loss: done.last_eval.map(|e| e.loss),
        val_bpb: done.last_eval.map(|e| e.bpb),
        last_checkpoint: done.last_checkpoint,
        base_checkpoint: base.dir,
        base_weights_sha256: base_sha,
        weights_sha256: model.weights_sha256()?,
        train_conversations: data.train.conversations,
        val_conversations: data.val.conversations,
        elapsed_s: t_start.elapsed().as_secs_f64(),
    })
}
