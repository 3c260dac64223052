//! Supervised fine-tuning: a base checkpoint learns to answer in the chat template.
//!
//! Conversations are rendered with the tokenizer's chat template and packed into windows whose
//! mask counts only the assistant's tokens ([`jarip_data::SftData`]); the loss is the mean over
//! those. Everything else is pretraining's machinery: the same optimizer, schedule, atomic
//! checkpoints (now also recording the base model's hash), bit-exact resume and ledger entries
//! (`sft-start`, `sft-checkpoint`).

use crate::checkpoint::{checkpoint_entry, latest_checkpoint, load_checkpoint, save_checkpoint, TrainerState};
use crate::dist::{agree_ok, check_replicas_agree, Collective, DataParallel, Solo};
use crate::eval::{evaluate_batches, token_byte_lengths, EvalResult};
use crate::metrics::MetricsLog;
use crate::optim::{Optimizer, OptimizerOptions};
use crate::pretrain::{device_for, device_kind, progress_bar, LEDGER_FILE};
use crate::records::{CheckpointDetails, DataRange, Processes, SftConfig, SftStart, StepMetrics};
use crate::schedule::{Schedule, ScheduleKind};
use crate::step::train_step_masked_parallel;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use jarip_data::conversations::read_conversations;
use jarip_data::sft::SftData;
use jarip_data::{Batch, SamplerState};
use jarip_ledger::{Entry, FileRef, Ledger};
use jarip_model::Kernels;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    let leader = dp.is_leader();
    let (device, compute_dtype) = device_for(&opts.device)?;
    let base = jarip_infer::load_model(&opts.base, &device).with_context(|| "cannot load the base model")?;
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
    let metrics = MetricsLog::at(&opts.out);
    let latest = latest_checkpoint(&opts.out)?;
    let tok_file = base.dir.join(jarip_infer::model_dir::TOKENIZER_FILE);
    let (mut model, mut optim, mut state, resumed_from) = if opts.resume {
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
        if leader {
            metrics.truncate_after(loaded.state.step)?;
        }
        (loaded.model, optim, loaded.state, Some(dir))
    } else {
        if latest.is_some() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue it, or choose a new --out",
                opts.out.display()
            );
        }
        if leader {
            metrics.truncate_after(0)?;
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
    if leader {
        std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    }
    if leader {
        let mut e = Entry::new(if resumed_from.is_some() { "sft-resume" } else { "sft-start" });
        e.inputs = [FileRef::of_file(&opts.data), FileRef::of_file(&tok_file)].into_iter().flatten().collect();
        if let Ok(m) = FileRef::of_file(&base.dir.join(jarip_ledger::manifest::MANIFEST_FILE)) {
            e.inputs.push(m);
        }
        e.config = settings.clone();
        e.seed = Some(opts.seed);
        e.set_details(&SftStart {
            step: state.step,
            base_weights_sha256: base_sha.clone(),
            weights_sha256: model.weights_sha256()?,
            train_conversations: data.train.conversations,
            val_conversations: data.val.conversations,
            train_windows: windows,
            sampler: state.sampler,
            resumed_from: resumed_from.as_ref().map(|d| d.display().to_string()),
            processes: Some(Processes { backend: comm.backend().into(), world_size: comm.world_size() }),
        })?;
        ledger.append(e)?;
    }

    let token_bytes = token_byte_lengths(&tokenizer);
    let val = |model: &jarip_model::Gpt| -> Result<Option<EvalResult>> {
        if data.val.windows.is_empty() {
            return Ok(None);
        }
        Ok(Some(evaluate_batches(model, data.val_batches(opts.batch_size), 0, &token_bytes)?))
    };
    let pb = progress_bar(Some(total_steps), opts.progress && leader);
    pb.set_position(state.step);
    let say = |s: String| match (leader, pb.is_hidden()) {
        (false, _) => {}
        (true, true) => eprintln!("{s}"),
        (true, false) => pb.println(s),
    };
    say(format!(
        "sft: {} train / {} val conversations, {windows} windows of {} tokens, {total_steps} steps",
        data.train.conversations, data.val.conversations, opts.seq_len
    ));
    let run_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let (mut last_loss, mut last_eval) = (None, None);
    let mut cursor_at_ckpt = state.sampler;
    let mut last_ckpt = resumed_from.clone();
    while state.step < total_steps && opts.stop_at_step.is_none_or(|s| state.step < s) {
        let lr_factor = opts.schedule.factor(state.step, total_steps);
        // Every rank draws the whole batch; replica r takes its r-th share of the windows.
        let batch = data.next_batch(&mut state.sampler, opts.batch_size);
        let counted = batch.counted_targets() as u64;
        let share = opts.batch_size / dp.replicas;
        let part = |r: usize| micro(&batch.rows(r * share, share), &device);
        let out = train_step_masked_parallel(&model, &mut optim, dp.replicas, part, lr_factor, dp)
            .with_context(|| format!("fine-tuning stopped at step {}", state.step + 1))?;
        state.step += 1;
        state.tokens_seen += counted;
        last_loss = Some(out.loss);
        let mut line = StepMetrics {
            step: state.step,
            loss: Some(out.loss),
            lr: Some(opts.optimizer.lr * lr_factor),
            grad_norm: Some(out.grad_norm),
            tokens: Some(state.tokens_seen),
            epoch: Some(state.sampler.epoch),
            elapsed_s: Some(elapsed_before + run_start.elapsed().as_secs_f64()),
            ..Default::default()
        };
        let last_step = state.step == total_steps || opts.stop_at_step == Some(state.step);
        // Evaluation and metrics are rank 0's; the other ranks learn whether they failed.
        let mut bookkeeping = || -> Result<()> {
            if !leader {
                return Ok(());
            }
            if (opts.eval_every > 0 && state.step % opts.eval_every == 0) || last_step {
                if let Some(ev) = val(&model)? {
                    line.val_loss = Some(ev.loss);
                    line.val_bpb = Some(ev.bpb);
                    say(format!("sft step {}: val loss {:.4}, val bpb {:.4}", state.step, ev.loss, ev.bpb));
                    last_eval = Some(ev);
                }
            }
            metrics.append(&line)
        };
        let done = bookkeeping();
        agree_ok(comm, done)?;
        pb.set_position(state.step);
        pb.set_message(format!("loss {:.4}", out.loss));
        if (opts.checkpoint_every > 0 && state.step % opts.checkpoint_every == 0) || last_step {
            state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
            state.weights_sha256 = model.weights_sha256()?;
            check_replicas_agree(comm, &state.weights_sha256)?;
            let saved = if leader {
                save_checkpoint(&opts.out, &model, &optim, &state, &tok_file, settings.clone(), opts.keep_checkpoints)
                    .and_then(|dir| {
                        let mut e = checkpoint_entry("sft-checkpoint", &dir, opts.seed)?;
                        e.set_details(&CheckpointDetails {
                            step: state.step,
                            weights_sha256: state.weights_sha256.clone(),
                            tokens_seen: Some(state.tokens_seen),
                            total_steps: Some(total_steps),
                            base_weights_sha256: Some(base_sha.clone()),
                            data: Some(DataRange { sampler_before: cursor_at_ckpt, sampler_after: state.sampler }),
                            loss: Some(out.loss),
                            val_loss: last_eval.map(|e: EvalResult| e.loss),
                            val_bpb: last_eval.map(|e: EvalResult| e.bpb),
                            replicas_agree: (comm.world_size() > 1).then_some(comm.world_size()),
                        })?;
                        ledger.append(e)?;
                        Ok(dir)
                    })
            } else {
                Ok(crate::checkpoint::checkpoint_dir(&opts.out, state.step))
            };
            let dir = agree_ok(comm, saved)?;
            cursor_at_ckpt = state.sampler;
            last_ckpt = Some(dir);
        }
        if opts.step_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(opts.step_delay_ms));
        }
    }
    pb.finish_and_clear();
    Ok(SftSummary {
        out: opts.out.clone(),
        steps: state.step,
        final_loss: last_loss,
        val_loss: last_eval.map(|e| e.loss),
        val_bpb: last_eval.map(|e| e.bpb),
        last_checkpoint: last_ckpt,
        base_checkpoint: base.dir,
        base_weights_sha256: base_sha,
        weights_sha256: model.weights_sha256()?,
        train_conversations: data.train.conversations,
        val_conversations: data.val.conversations,
        elapsed_s: t_start.elapsed().as_secs_f64(),
    })
}
