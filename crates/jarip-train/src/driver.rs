//! The training loop both stages run: device, the ledger's start entry, progress, the step
//! loop with its schedule (and a time budget planned after a few measured steps), rank 0's
//! bookkeeping (evaluation, samples, metrics), checkpoints with their ledger entries and the
//! check that data-parallel replicas agree. Pretraining and fine-tuning supply a [`Stage`]:
//! their batches and loss, and what their records add.
//!
//! A run that selects ([`Select`], fine-tuning) also evaluates before its first step, keeps the
//! checkpoint with the lowest held-out loss from being pruned, and stops early once `patience`
//! evaluations in a row have not improved on it; its [`Outcome`] lists every evaluation.

use crate::checkpoint::{checkpoint_dir, checkpoint_entry, save_checkpoint, TrainerState};
use crate::dist::{agree_ok, agree_u64, check_replicas_agree, Collective, DataParallel};
use crate::eval::EvalResult;
use crate::metrics::MetricsLog;
use crate::optim::Optimizer;
use crate::records::{CheckpointDetails, DataRange, HeldOutEval, StepMetrics};
use crate::schedule::Schedule;
use crate::step::StepOutcome;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use jarip_data::SamplerState;
use jarip_ledger::{Entry, FileRef, Ledger};
use jarip_model::Gpt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The kind of device a run records (`cuda:1` is `cuda`): ranks on different GPUs run one run.
pub(crate) fn device_kind(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub(crate) fn device_for(name: &str) -> Result<(Device, DType)> {
    let gpu = match name {
        "cpu" => return Ok((Device::Cpu, DType::F32)),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => bail!("unknown device {other:?} (use cpu, cuda or cuda:N)"),
        },
    };
    let d = Device::new_cuda(gpu)
        .with_context(|| format!("cannot open CUDA device {gpu} (was jarip built with --features cuda?)"))?;
    Ok((d, DType::BF16))
}

pub(crate) fn progress_bar(total: Option<u64>, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// What a training stage brings to the loop.
pub(crate) trait Stage {
    /// Ledger stage of its checkpoint entries (`checkpoint`, `sft-checkpoint`).
    const CHECKPOINT: &'static str;
    /// Draws the step's data and runs one optimizer step on it (this process's share of the
    /// micro-batches, gradients added across replicas); returns the outcome and the tokens the
    /// step counts.
    fn train(
        &mut self,
        model: &Gpt,
        optim: &mut Optimizer,
        lr_factor: f64,
        dp: DataParallel,
    ) -> Result<(StepOutcome, u64)>;
    /// Where the training data stands.
    fn cursor(&self) -> SamplerState;
    /// Adds the stage's own keys to the step's metrics line; returns the progress message.
    fn annotate(&mut self, line: &mut StepMetrics, out: &StepOutcome, step_s: f64) -> String;
    /// Validation loss and bits per byte (`None` when there is nothing to evaluate on).
    fn evaluate(&self, model: &Gpt) -> Result<Option<EvalResult>>;
    /// A second held-out figure reported beside the first (fine-tuning: held out by template).
    fn evaluate_template(&self, _model: &Gpt) -> Result<Option<EvalResult>> {
        Ok(None)
    }
    /// Where a second data stream stands (fine-tuning's mixed-in pretraining text).
    fn mix_cursor(&self) -> Option<SamplerState> {
        None
    }
    /// How evaluation messages name a step (`step 10`, `sft step 10`).
    fn step_label(&self) -> &'static str;
    /// A sample generation for this step, if the stage samples at it.
    fn sample(&self, _model: &Gpt, _step: u64) -> Result<Option<String>> {
        Ok(None)
    }
    /// What the stage's checkpoint entries record besides the common details.
    fn base_weights_sha256(&self) -> Option<String> {
        None
    }
    /// The error a failed step stops the run with.
    fn stopped(&self, step: u64, err: anyhow::Error, last_checkpoint: Option<&Path>) -> anyhow::Error;
}

/// The ledger entry a run (or its resumption) starts with.
pub(crate) struct StartEntry {
    pub stage: &'static str,
    pub inputs: Vec<FileRef>,
    pub details: serde_json::Value,
}

/// Where a run writes and how its loop is paced; the same for both stages.
pub(crate) struct Run<'a> {
    pub comm: &'a dyn Collective,
    pub dp: DataParallel<'a>,
    pub out: &'a Path,
    pub ledger: Ledger,
    /// The settings recorded as the start entry's config and in every checkpoint's manifest.
    pub settings: serde_json::Value,
    /// The tokenizer copied into every checkpoint.
    pub tokenizer_json: PathBuf,
    pub seed: u64,
    pub lr: f64,
    pub schedule: Schedule,
    /// The run's length, if known; a time budget (`budget_s`) plans it after a few steps.
    pub total_steps: Option<u64>,
    pub budget_s: Option<f64>,
    pub stop_at_step: Option<u64>,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub step_delay_ms: u64,
    pub progress: bool,
    /// Lines printed (by rank 0) before the first step.
    pub banner: Vec<String>,
    /// Keep the best checkpoint by held-out loss (and evaluate before the first step).
    pub select: Option<Select>,
    /// Steps a time budget leaves for what comes after this run (the speedrun's fine-tuning).
    pub reserve_steps: u64,
}

/// Selection of the best checkpoint by held-out loss, with early stopping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Select {
    /// Stop after this many evaluations in a row without a lower held-out loss.
    pub patience: Option<u32>,
}

/// Where the loop ended.
pub(crate) struct Outcome {
    pub state: TrainerState,
    pub final_loss: Option<f64>,
    pub last_eval: Option<EvalResult>,
    pub last_checkpoint: Option<PathBuf>,
    /// Seconds the loop ran.
    pub trained_s: f64,
    /// Every evaluation of the run (a selecting run's start included), oldest first.
    pub evals: Vec<HeldOutEval>,
    /// The step at which early stopping ended the run.
    pub stopped_early_at: Option<u64>,
}

/// The loop's position and what it last saw.
struct Progress {
    state: TrainerState,
    total: Option<u64>,
    last_loss: Option<f64>,
    last_eval: Option<EvalResult>,
    last_ckpt: Option<PathBuf>,
    cursor_at_ckpt: SamplerState,
    mix_at_ckpt: Option<SamplerState>,
    elapsed_before: f64,
    run_start: Instant,
    evals: Vec<HeldOutEval>,
}

impl Progress {
    fn best(&self) -> Option<&HeldOutEval> {
        best_eval(&self.evals)
    }

    /// Evaluations since the best one.
    fn since_best(&self) -> usize {
        let best = self.best().map_or(0, |b| b.step);
        self.evals.iter().filter(|e| e.step > best).count()
    }
}

impl Progress {
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.run_start.elapsed().as_secs_f64()
    }
}

impl Run<'_> {
    fn leader(&self) -> bool {
        self.dp.is_leader()
    }

    /// Rank 0's messages, above the progress bar when there is one.
    fn say(&self, pb: &indicatif::ProgressBar, s: String) {
        match (self.leader(), pb.is_hidden()) {
            (false, _) => {}
            (true, true) => eprintln!("{s}"),
            (true, false) => pb.println(s),
        }
    }

    /// Trains `model` from `state` (step, data cursor, tokens) to the end of the run; rank 0
    /// writes `start` to the ledger first, and metrics, checkpoints and their entries as it goes.
    pub(crate) fn train<S: Stage>(
        &self,
        stage: &mut S,
        model: &Gpt,
        optim: &mut Optimizer,
        state: TrainerState,
        resumed_from: Option<PathBuf>,
        start: StartEntry,
    ) -> Result<Outcome> {
        let mut evals = Vec::new();
        if self.leader() {
            // A resumed run rewrites what the interrupted one logged past its last checkpoint;
            // a new one drops lines left by an attempt that died before its first checkpoint.
            let log = MetricsLog::at(self.out);
            if resumed_from.is_some() {
                log.truncate_after(state.step)?;
                // The evaluations so far, for selection and patience.
                let path = self.out.join(crate::metrics::METRICS_FILE);
                if path.exists() {
                    evals = MetricsLog::steps(&path)?.iter().filter_map(held_out_eval).collect();
                }
            } else {
                log.clear()?;
            }
            std::fs::create_dir_all(self.out).with_context(|| format!("cannot create {}", self.out.display()))?;
            let mut e = Entry::new(start.stage);
            e.inputs = start.inputs;
            e.config = self.settings.clone();
            e.seed = Some(self.seed);
            e.details = start.details;
            self.ledger.append(e)?;
        }
        let pb = progress_bar(self.total_steps, self.progress && self.leader());
        pb.set_position(state.step);
        for line in &self.banner {
            self.say(&pb, line.clone());
        }
        let mut p = Progress {
            cursor_at_ckpt: state.sampler,
            mix_at_ckpt: state.mix_sampler,
            evals,
            elapsed_before: state.elapsed_s,
            state,
            total: self.total_steps,
            last_loss: None,
            last_eval: None,
            last_ckpt: resumed_from,
            run_start: Instant::now(),
        };
        // A time budget becomes a step count after a few measured steps, so that the schedule
        // (and hence every weight) is a function of the step alone: resumable and replayable bit
        // for bit. Steps before the plan are at most the first step past warmup, whose rate does
        // not depend on the total. The rate is the median of the measured steps after the first
        // (which pays for allocations and cold caches), over up to ten.
        let plan_after = self.schedule.warmup_steps.clamp(1, 10);
        let (first_step, mut step_times) = (p.state.step, Vec::new());
        let mut stopped_early_at = None;
        if self.select.is_some() && p.state.step == 0 {
            // The starting point is a candidate too: fine-tuning that never beats the base
            // model's held-out loss selects the base.
            let mut line = StepMetrics { step: 0, elapsed_s: Some(0.0), ..Default::default() };
            let done = self.bookkeeping(stage, model, &pb, &mut line, &mut p, true);
            agree_ok(self.comm, done)?;
        }
        loop {
            let step = p.state.step;
            if p.total.is_some_and(|t| step >= t) || self.stop_at_step.is_some_and(|s| step >= s) {
                break;
            }
            let lr_factor = self.schedule.factor(step, p.total.unwrap_or(u64::MAX));
            let t0 = Instant::now();
            let (out, tokens) = match stage.train(model, optim, lr_factor, self.dp) {
                Ok(o) => o,
                Err(e) => {
                    pb.abandon();
                    return Err(stage.stopped(step + 1, e, p.last_ckpt.as_deref()));
                }
            };
            p.state.step += 1;
            p.state.tokens_seen += tokens;
            p.state.sampler = stage.cursor();
            p.last_loss = Some(out.loss);
            let step = p.state.step;
            let dt = t0.elapsed().as_secs_f64();
            step_times.push(dt);
            if let (Some(b), None) = (self.budget_s, p.total) {
                if step - first_step >= plan_after {
                    let per_step = typical_step_s(&step_times);
                    let left = ((b - p.run_start.elapsed().as_secs_f64()).max(0.0) / per_step) as u64;
                    let planned = left.saturating_sub(self.reserve_steps) + step;
                    // Rank 0's clock decides for every rank.
                    let planned = agree_u64(self.comm, planned)?;
                    // Too small: nothing left past the planning steps, or (when a later stage was
                    // given its share) not even one evaluation interval.
                    let least = self.eval_every.max(1);
                    if planned <= step || (self.reserve_steps > 0 && planned < least) {
                        pb.abandon();
                        let need_s =
                            (least + self.reserve_steps) as f64 * per_step + p.run_start.elapsed().as_secs_f64();
                        bail!(
                            "the time budget of {:.1} min is too small: at {:.0} ms/step it leaves {planned} steps{}, \
                             fewer than the {least} of one evaluation; give at least {:.1} min",
                            b / 60.0,
                            per_step * 1e3,
                            if self.reserve_steps > 0 {
                                format!(" after the {} kept for fine-tuning", self.reserve_steps)
                            } else {
                                String::new()
                            },
                            need_s / 60.0
                        );
                    }
                    p.total = Some(planned.max(step));
                    p.state.total_steps = p.total;
                    self.say(
                        &pb,
                        format!("time budget {:.1} min → {} steps at {:.0} ms/step", b / 60.0, planned, per_step * 1e3),
                    );
                    pb.set_length(planned);
                }
            }
            let mut line = StepMetrics {
                step,
                loss: Some(out.loss),
                lr: Some(self.lr * lr_factor),
                grad_norm: Some(out.grad_norm),
                tokens: Some(p.state.tokens_seen),
                elapsed_s: Some(p.elapsed()),
                ..Default::default()
            };
            let message = stage.annotate(&mut line, &out, dt);
            let mut last_step = p.total == Some(step) || self.stop_at_step == Some(step);
            // Evaluation, samples and metrics are rank 0's; the other ranks learn whether they failed.
            let done = self.bookkeeping(stage, model, &pb, &mut line, &mut p, last_step);
            agree_ok(self.comm, done)?;
            pb.set_position(step);
            pb.set_message(message);
            let evaluated = self.eval_every > 0 && step.is_multiple_of(self.eval_every);
            if let Some(patience) = self.select.and_then(|s| s.patience).filter(|_| evaluated) {
                // Rank 0 holds the evaluations; its decision is every rank's.
                let stop = agree_u64(self.comm, u64::from(p.since_best() >= patience as usize && !last_step))? == 1;
                if stop {
                    let best = p.best().map_or(0, |b| b.step);
                    self.say(
                        &pb,
                        format!(
                            "{} {step}: early stop, {patience} evaluations without a lower held-out loss than step {best}'s",
                            stage.step_label()
                        ),
                    );
                    stopped_early_at = Some(step);
                    last_step = true;
                }
            }
            if (self.checkpoint_every > 0 && step.is_multiple_of(self.checkpoint_every)) || last_step {
                self.checkpoint(stage, model, optim, &mut p, out.loss)?;
            }
            if stopped_early_at.is_some() {
                break;
            }
            if self.step_delay_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(self.step_delay_ms));
            }
        }
        pb.finish_and_clear();
        Ok(Outcome {
            trained_s: p.run_start.elapsed().as_secs_f64(),
            state: p.state,
            final_loss: p.last_loss,
            last_eval: p.last_eval,
            last_checkpoint: p.last_ckpt,
            evals: p.evals,
            stopped_early_at,
        })
    }

    /// Rank 0 evaluates, samples and appends the metrics line; other ranks do nothing.
    fn bookkeeping<S: Stage>(
        &self,
        stage: &S,
        model: &Gpt,
        pb: &indicatif::ProgressBar,
        line: &mut StepMetrics,
        p: &mut Progress,
        last_step: bool,
    ) -> Result<()> {
        if !self.leader() {
            return Ok(());
        }
        let step = line.step;
        if (self.eval_every > 0 && step.is_multiple_of(self.eval_every)) || last_step {
            if let Some(ev) = stage.evaluate(model)? {
                line.val_loss = Some(ev.loss);
                line.val_bpb = Some(ev.bpb);
                let label = stage.step_label();
                let mut msg = format!("{label} {step}: val loss {:.4}, val bpb {:.4}", ev.loss, ev.bpb);
                if let Some(t) = stage.evaluate_template(model)? {
                    line.val_template_loss = Some(t.loss);
                    msg.push_str(&format!(", held-out-template loss {:.4}", t.loss));
                }
                if self.select.is_some() {
                    let before = p.best().map(|b| b.val_loss);
                    p.evals.extend(held_out_eval(line));
                    msg.push_str(match before {
                        None => " (start)",
                        Some(b) if ev.loss < b => " (best so far)",
                        Some(_) => "",
                    });
                } else {
                    p.evals.extend(held_out_eval(line));
                }
                self.say(pb, msg);
                p.last_eval = Some(ev);
            }
        }
        if step == 0 {
            return MetricsLog::at(self.out).append(line);
        }
        if let Some(text) = stage.sample(model, step)? {
            self.say(pb, format!("step {step} sample: {text:?}"));
            line.sample = Some(text);
        }
        MetricsLog::at(self.out).append(line)
    }

    /// Checks that the replicas agree, then rank 0 writes the checkpoint and its ledger entry;
    /// the other ranks wait for it, so a failed write stops them all.
    fn checkpoint<S: Stage>(
        &self,
        stage: &S,
        model: &Gpt,
        optim: &Optimizer,
        p: &mut Progress,
        loss: f64,
    ) -> Result<()> {
        p.state.elapsed_s = p.elapsed();
        p.state.weights_sha256 = model.weights_sha256()?;
        check_replicas_agree(self.comm, &p.state.weights_sha256)?;
        p.state.mix_sampler = stage.mix_cursor();
        let protect = self.select.and(p.best().map(|b| b.step));
        let ts = &p.state;
        let saved = if self.leader() {
            save_checkpoint(
                self.out,
                model,
                optim,
                ts,
                &self.tokenizer_json,
                self.settings.clone(),
                self.keep_checkpoints,
                protect,
            )
            .and_then(|dir| {
                let mut e = checkpoint_entry(S::CHECKPOINT, &dir, self.seed)?;
                let world = self.comm.world_size();
                e.set_details(&CheckpointDetails {
                    step: ts.step,
                    weights_sha256: ts.weights_sha256.clone(),
                    tokens_seen: Some(ts.tokens_seen),
                    total_steps: p.total,
                    base_weights_sha256: stage.base_weights_sha256(),
                    data: Some(DataRange { sampler_before: p.cursor_at_ckpt, sampler_after: ts.sampler }),
                    loss: Some(loss),
                    val_loss: p.last_eval.map(|e| e.loss),
                    val_bpb: p.last_eval.map(|e| e.bpb),
                    replicas_agree: (world > 1).then_some(world),
                    mix_data: p
                        .mix_at_ckpt
                        .zip(ts.mix_sampler)
                        .map(|(before, after)| DataRange { sampler_before: before, sampler_after: after }),
                })?;
                self.ledger.append(e)?;
                Ok(dir)
            })
        } else {
            Ok(checkpoint_dir(self.out, ts.step))
        };
        let dir = agree_ok(self.comm, saved)?;
        p.cursor_at_ckpt = p.state.sampler;
        p.mix_at_ckpt = p.state.mix_sampler;
        p.last_ckpt = Some(dir);
        Ok(())
    }
}

/// A step's duration for planning: the median of those measured, leaving out the first when
/// there are three or more.
fn typical_step_s(times: &[f64]) -> f64 {
    let mut t: Vec<f64> = if times.len() >= 3 { times[1..].to_vec() } else { times.to_vec() };
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(0.0).max(1e-9)
}

/// The evaluation with the lowest held-out loss (the earliest of equals).
pub(crate) fn best_eval(evals: &[HeldOutEval]) -> Option<&HeldOutEval> {
    evals.iter().fold(None, |b: Option<&HeldOutEval>, e| match b {
        Some(b) if b.val_loss <= e.val_loss => Some(b),
        _ => Some(e),
    })
}

/// The held-out figures of a metrics line that has them.
fn held_out_eval(line: &StepMetrics) -> Option<HeldOutEval> {
    Some(HeldOutEval {
        step: line.step,
        val_loss: line.val_loss?,
        val_bpb: line.val_bpb?,
        template_loss: line.val_template_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planning_ignores_the_slow_first_step() {
        assert_eq!(typical_step_s(&[2.0, 0.5, 0.4, 0.6, 0.5]), 0.5);
        assert_eq!(typical_step_s(&[2.0, 0.4]), 2.0);
        assert!(typical_step_s(&[]) > 0.0);
    }
}
