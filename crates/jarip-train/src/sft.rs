//! Supervised fine-tuning: a base checkpoint learns to answer in the chat template, and the
//! run keeps the checkpoint that answers held-out conversations best.
//!
//! Conversations are rendered with the tokenizer's chat template and packed into windows whose
//! mask counts only the assistant's tokens ([`jarip_data::SftData`]); the loss is the mean over
//! those. A share of every batch can be pretraining text (`mix_data`, all tokens counted), as
//! mid-training does, so the model keeps what pretraining taught; its cursor is in every
//! checkpoint and checkpoint entry, so replay covers it.
//!
//! The budget is set by the data: without `--max-steps`/`--epochs`, small sets are seen more
//! often ([`auto_epochs`]). The held-out conversations (by item, and by template when the
//! conversations name templates) are evaluated at step 0 (the base model) and then four times
//! an epoch, with a checkpoint at each evaluation; the checkpoint with the lowest held-out
//! loss is the run's model (`selected.json`, ledger entry `sft-select`), and `patience`
//! evaluations without improvement end the run. Everything else is pretraining's machinery:
//! the same optimizer, schedule, atomic checkpoints (also recording the base model's hash),
//! bit-exact resume and ledger entries (`sft-start`, `sft-checkpoint`).

use crate::checkpoint::{latest_checkpoint, load_checkpoint, TrainerState};
use crate::dist::{Collective, DataParallel, Solo};
use crate::driver::{device_for, device_kind, Run, Stage, StartEntry};
use crate::eval::{evaluate_batches, token_byte_lengths, EvalResult};
use crate::optim::{Optimizer, OptimizerOptions};
use crate::pretrain::LEDGER_FILE;
use crate::records::{HeldOutEval, MixConfig, Processes, SftConfig, SftSelection, SftStart, StepMetrics};
use crate::schedule::{Schedule, ScheduleKind};
use crate::step::{masked_loss, train_step_with, StepOutcome};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use jarip_data::conversations::read_conversations;
use jarip_data::sft::{SftData, ValSplit};
use jarip_data::{Batch, BatchSampler, SamplerState, ShardSet};
use jarip_ledger::{FileRef, Ledger};
use jarip_model::{Gpt, Kernels, MatmulPath, Precision};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftOptions {
    /// The base model: a checkpoint directory, or a run directory (its selected checkpoint, else its newest).
    pub base: PathBuf,
    /// Conversations, one `{"messages":[…]}` per line.
    pub data: PathBuf,
    /// Run directory of the fine-tuning (checkpoints, metrics.jsonl).
    pub out: PathBuf,
    /// The ledger to append to (default: `out/ledger.jsonl`); the speedrun keeps one per run.
    pub ledger: Option<PathBuf>,
    pub max_steps: Option<u64>,
    /// Or this many passes over the training conversations (neither: [`auto_epochs`]).
    pub epochs: Option<f64>,
    pub stop_at_step: Option<u64>,
    pub resume: bool,
    pub seed: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    /// Data-parallel replicas, each taking `batch_size / replicas` of every step's windows
    /// (default: the number of processes; see [`crate::dist`]).
    pub replicas: Option<usize>,
    /// Share of conversations held out for validation (by item).
    pub val_fraction: f64,
    /// Share of each kind's template variants held out whole (see [`jarip_data::sft`]).
    pub template_fraction: f64,
    /// Evaluate the held-out conversations, and keep a checkpoint, every N steps (`None`: four
    /// times an epoch; `Some(0)`: only at the end, with no selection).
    pub eval_every: Option<u64>,
    /// Stop after this many evaluations in a row without a lower held-out loss (`None`: never).
    pub patience: Option<u32>,
    /// Checkpoints to keep (0 = all); the selected one is always kept.
    pub keep_checkpoints: usize,
    /// Pretraining shards whose text is mixed into every batch.
    pub mix_data: Option<PathBuf>,
    /// Share of every batch's windows read from `mix_data`.
    pub mix_fraction: f64,
    pub optimizer: OptimizerOptions,
    pub schedule: Schedule,
    pub kernels: Kernels,
    /// As [`crate::PretrainOptions::precision`] (a resumed run keeps its own).
    pub precision: Option<Precision>,
    /// As [`crate::PretrainOptions::bf16_kernel`].
    pub bf16_kernel: Option<MatmulPath>,
    pub device: String,
    pub progress: bool,
    /// Sleep after each step; only for tests that interrupt a run.
    pub step_delay_ms: u64,
    /// Fine-tune a base no jarip ledger proves (another team's model). The result is recorded,
    /// carded and verified as **not from scratch**.
    pub allow_foreign_base: bool,
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
            template_fraction: 0.2,
            eval_every: None,
            patience: Some(3),
            keep_checkpoints: 0,
            mix_data: None,
            mix_fraction: 0.25,
            optimizer: OptimizerOptions { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
            schedule: Schedule { kind: ScheduleKind::Cosine, warmup_steps: 20, min_lr_frac: 0.0, decay_frac: 0.2 },
            kernels: Kernels::Fused,
            precision: None,
            bf16_kernel: None,
            device: "cpu".into(),
            progress: true,
            step_delay_ms: 0,
            allow_foreign_base: false,
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
    pub template_val_conversations: usize,
    /// The run's model: the checkpoint with the lowest held-out loss (possibly the base).
    pub selected_checkpoint: PathBuf,
    pub selected_step: u64,
    /// Every held-out evaluation, step 0 (the base) first.
    pub evals: Vec<HeldOutEval>,
    pub stopped_early_at: Option<u64>,
    pub elapsed_s: f64,
}

impl SftSummary {
    /// The evaluation of the selected checkpoint, and of the base (step 0).
    pub fn selected_eval(&self) -> Option<&HeldOutEval> {
        self.evals.iter().find(|e| e.step == self.selected_step)
    }

    pub fn base_eval(&self) -> Option<&HeldOutEval> {
        self.evals.iter().find(|e| e.step == 0)
    }
}

/// Fewer held-out conversations than this and the selection would follow noise: the last
/// checkpoint is then the run's model.
pub const MIN_SELECTION_CONVERSATIONS: usize = 8;

/// Passes over the training conversations when none are asked for: √(10⁶ / assistant tokens),
/// in half epochs, between 1 and 4. A set of 10⁶ assistant tokens or more is read once; a
/// small one more often, never more than four times (early stopping may end sooner).
pub fn auto_epochs(target_tokens: usize) -> f64 {
    let e = (1e6 / target_tokens.max(1) as f64).sqrt();
    ((e * 2.0).round() / 2.0).clamp(1.0, 4.0)
}

/// Steps of a run over `windows` training windows: `max_steps`, else `epochs` (else
/// [`auto_epochs`]) passes of `batch_size − mix_rows` conversation windows per step.
pub fn planned_steps(
    windows: u64,
    target_tokens: usize,
    conv_rows: usize,
    max_steps: Option<u64>,
    epochs: Option<f64>,
) -> (u64, f64) {
    let per_epoch = windows.div_ceil(conv_rows.max(1) as u64).max(1);
    match max_steps {
        Some(s) => (s, s as f64 / per_epoch as f64),
        None => {
            let e = epochs.unwrap_or_else(|| auto_epochs(target_tokens));
            (((e * per_epoch as f64).ceil() as u64).max(1), e)
        }
    }
}

/// Evaluations (and checkpoints) four times an epoch.
pub fn auto_eval_every(windows: u64, conv_rows: usize) -> u64 {
    windows.div_ceil(conv_rows.max(1) as u64).div_ceil(4).max(1)
}

/// Mixed-in pretraining rows of a batch of `batch_size` for `fraction`.
pub fn mix_rows(batch_size: usize, fraction: f64) -> Result<usize> {
    if !(0.0..1.0).contains(&fraction) {
        bail!("--mix-fraction must be in [0, 1), got {fraction}");
    }
    let rows = (batch_size as f64 * fraction).round() as usize;
    if fraction > 0.0 && (rows == 0 || rows >= batch_size) {
        bail!("--mix-fraction {fraction} of a batch of {batch_size} gives {rows} pretraining windows: it must leave room for both");
    }
    Ok(rows)
}

/// Puts `mix`'s rows among `conv`'s, evenly spread, so that each data-parallel replica's share
/// of the batch holds both kinds.
fn interleave(conv: &Batch, mix: &Batch) -> Batch {
    let (c, m) = (conv.batch_size, mix.batch_size);
    let b = c + m;
    let l = conv.seq_len;
    let mut out =
        Batch { batch_size: b, seq_len: l, inputs: vec![], targets: vec![], mask: Some(Vec::with_capacity(b * l)) };
    let (mut ci, mut mi) = (0, 0);
    for j in 0..b {
        let (src, row, all) = if (j + 1) * m / b > j * m / b { (mix, &mut mi, true) } else { (conv, &mut ci, false) };
        let r = src.rows(*row, 1);
        *row += 1;
        out.inputs.extend(r.inputs);
        out.targets.extend(r.targets);
        let mask = out.mask.as_mut().expect("set above");
        match (all, r.mask) {
            (false, Some(rm)) => mask.extend(rm),
            _ => mask.extend(std::iter::repeat_n(true, l)),
        }
    }
    out
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
    /// Pretraining text mixed into every batch.
    mix: Option<BatchSampler<'a>>,
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
        let batch = match &mut self.mix {
            None => self.data.next_batch(&mut self.sampler, self.batch_size),
            Some(mix) => {
                let conv = self.data.next_batch(&mut self.sampler, self.batch_size - mix.batch_size());
                interleave(&conv, &mix.next_batch())
            }
        };
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

    fn mix_cursor(&self) -> Option<SamplerState> {
        self.mix.as_ref().map(|m| m.state())
    }

    fn annotate(&mut self, line: &mut StepMetrics, out: &StepOutcome, _step_s: f64) -> String {
        line.epoch = Some(self.sampler.epoch);
        format!("loss {:.4}", out.loss)
    }

    fn evaluate(&self, model: &Gpt) -> Result<Option<EvalResult>> {
        if self.data.val.windows.is_empty() {
            return Ok(None);
        }
        Ok(Some(evaluate_batches(model, self.data.val_batches(ValSplit::Item, self.batch_size), 0, &self.token_bytes)?))
    }

    fn evaluate_template(&self, model: &Gpt) -> Result<Option<EvalResult>> {
        if self.data.val_template.windows.is_empty() {
            return Ok(None);
        }
        let batches = self.data.val_batches(ValSplit::Template, self.batch_size);
        Ok(Some(evaluate_batches(model, batches, 0, &self.token_bytes)?))
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

/// The rule: jarip fine-tunes models it trained from scratch. A base no jarip ledger proves is
/// refused unless `allow` (`--allow-foreign-base`); then, and for any model that descends from
/// such a base, the run records what the base was, and the result is not from scratch.
fn foreign_base_of(base: &jarip_interop::model_dir::LoadedModel, allow: bool) -> Result<Option<String>> {
    use jarip_interop::model_dir::Origin;
    match &base.origin {
        Origin::Own => Ok(None),
        Origin::NotFromScratch { base } => Ok(Some(base.clone())),
        Origin::Foreign { family } => {
            if !allow {
                bail!(
                    "{} is {}: no jarip ledger proves its weights, and a model fine-tuned from it would not be \
                     from scratch (every weight initialised and trained by this team). jarip fine-tunes the models \
                     it trained; pass --allow-foreign-base to fine-tune it anyway, and the result is recorded as \
                     not from scratch",
                    base.dir.display(),
                    jarip_interop::model_dir::NOT_BUILT_HERE
                );
            }
            let weights =
                base.manifest.files.iter().map(|(n, h)| format!("{n} sha256 {}", h.sha256)).collect::<Vec<_>>();
            Ok(Some(format!(
                "{} ({family} model not built by a jarip run; {})",
                base.dir.display(),
                weights.join(", ")
            )))
        }
    }
}

/// Runs (or resumes) fine-tuning as `opts` describe, in this process alone.
pub fn sft(opts: &SftOptions) -> Result<SftSummary> {
    sft_parallel(opts, &Solo)
}

/// Runs (or resumes) fine-tuning as one rank of `comm`: every rank runs this with the same
/// options; rank 0 writes the run's files.
pub fn sft_parallel(opts: &SftOptions, comm: &dyn Collective) -> Result<SftSummary> {
    // Freed activation and gradient buffers are reused, not faulted in again every step.
    jarip_kernels::alloc::retain_freed_memory();
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
    let foreign_base = foreign_base_of(&base, opts.allow_foreign_base)?;
    // Every checkpoint keeps the base's tokenizer.json: refuse now, before anything is written,
    // a base that has none beside it (a GGUF file carries its vocabulary inside).
    if !base.dir.join(jarip_interop::model_dir::TOKENIZER_FILE).is_file() {
        bail!(
            "{}: fine-tuning needs a base directory with its tokenizer.json (a checkpoint, run or HF-layout model), \
             not a single file",
            base.dir.display()
        );
    }
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
        &jarip_data::sft::SftOptions {
            seq_len: opts.seq_len,
            val_fraction: opts.val_fraction,
            seed: opts.seed,
            template_fraction: opts.template_fraction,
        },
    )?;
    base.model.config().check_seq_len(opts.seq_len)?;
    let windows = data.train.windows.len() as u64;
    // Pretraining text mixed in: its shards (checked against the base's tokenizer) and sampler.
    let rows = if opts.mix_data.is_some() { mix_rows(opts.batch_size, opts.mix_fraction)? } else { 0 };
    if let Some(e) = opts.epochs.filter(|e| !(e.is_finite() && *e > 0.0)) {
        bail!("--epochs must be positive, got {e}");
    }
    let (total_steps, epochs) =
        planned_steps(windows, data.train.target_tokens, opts.batch_size - rows, opts.max_steps, opts.epochs);
    let eval_every = opts.eval_every.unwrap_or_else(|| auto_eval_every(windows, opts.batch_size - rows));
    // Selection needs evaluations and enough held-out conversations to rank checkpoints on.
    let select = eval_every > 0 && data.val.conversations >= MIN_SELECTION_CONVERSATIONS;
    let mut warnings = Vec::new();
    if eval_every > 0 && !select {
        warnings.push(format!(
            "warning: only {} conversations are held out by item (fewer than {MIN_SELECTION_CONVERSATIONS}): too few to \
             choose a checkpoint on, so the last checkpoint is the run's model and there is no early stopping \
             (raise --val-fraction or add conversations)",
            data.val.conversations
        ));
    }
    let mix_set = match &opts.mix_data {
        Some(dir) => Some((
            dir.clone(),
            ShardSet::open(dir, Some(tokenizer.sha256()))
                .with_context(|| format!("--mix-data {}: cannot use these shards", dir.display()))?,
        )),
        None => None,
    };
    let mix_start = SamplerState { seed: opts.seed, epoch: 0, position: 0 };
    let mix_config = match &mix_set {
        Some((dir, _)) => Some(MixConfig {
            shards: dir.display().to_string(),
            shards_merkle_root: crate::pretrain::shards_merkle_root(dir)
                .with_context(|| format!("--mix-data {}: no shard manifest", dir.display()))?,
            rows,
            start: mix_start,
        }),
        None => None,
    };
    let has_templates = convs.iter().any(|c| c.template.is_some());
    let latest = latest_checkpoint(&opts.out)?;
    // A resumed run keeps the matmul path its checkpoints record.
    let recorded = match (&latest, opts.resume) {
        (Some((_, dir)), true) => Some(
            serde_json::from_value::<SftConfig>(jarip_ledger::Manifest::read(dir)?.settings)
                .with_context(|| format!("{}: checkpoint settings", dir.display()))?
                .matmul,
        ),
        _ => None,
    };
    let (matmul, matmul_notice) =
        crate::pretrain::matmul_path((opts.precision, opts.bf16_kernel, opts.kernels), &device, recorded)?;
    if let Some(n) = matmul_notice.filter(|_| comm.rank() == 0) {
        eprintln!("{n}");
    }
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
        // A resumed run on a path with the recorded bits (AVX512-BF16 → portable) stays the same run.
        matmul: recorded.filter(|r| r.same_bits(matmul)).unwrap_or(matmul),
        device: device_kind(&opts.device).to_string(),
        tokenizer_sha256: tokenizer.sha256().to_string(),
        base_checkpoint: base.dir.display().to_string(),
        base_weights_sha256: base_sha.clone(),
        data: opts.data.display().to_string(),
        data_sha256: data_sha,
        // Absent for one replica, so runs recorded before the setting existed still resume.
        replicas: (dp.replicas > 1).then_some(dp.replicas),
        template_fraction: has_templates.then_some(opts.template_fraction),
        mix: mix_config,
        foreign_base,
    })?;

    let ledger = Ledger::at(&opts.ledger.clone().unwrap_or_else(|| opts.out.join(LEDGER_FILE)));
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
            mix_sampler: mix_set.as_ref().map(|_| mix_start),
            matmul,
        };
        (base.model, optim, state, None)
    };
    model.set_kernels(opts.kernels);
    model.set_compute_dtype(compute_dtype);
    model.set_matmul(matmul);
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
            template_val_conversations: has_templates.then_some(data.val_template.conversations),
            held_out_templates: data.held_out_templates.clone(),
            mix_sampler: state.mix_sampler,
        })?,
    };
    let mut banner = vec![format!(
        "sft: {} train / {} held-out / {} held-out-template conversations, {windows} windows of {} tokens; \
         {total_steps} steps ({epochs:.2} epochs), evaluation and checkpoint every {eval_every} steps{}{}",
        data.train.conversations,
        data.val.conversations,
        data.val_template.conversations,
        opts.seq_len,
        match (select, opts.patience) {
            (true, Some(p)) => format!(", early stop after {p} without improvement"),
            _ => String::new(),
        },
        if rows > 0 {
            format!("; {rows} of {} windows per batch are pretraining text", opts.batch_size)
        } else {
            String::new()
        },
    )];
    if matmul.is_bf16() {
        banner.push(format!("matmul: {} — {}", matmul.name(), matmul.describe()));
    }
    banner.extend(warnings);
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
        eval_every,
        checkpoint_every: eval_every,
        keep_checkpoints: opts.keep_checkpoints,
        step_delay_ms: opts.step_delay_ms,
        progress: opts.progress,
        banner,
        select: select.then_some(crate::driver::Select { patience: opts.patience }),
        reserve_steps: 0,
    };
    let mix = match (&mix_set, state.mix_sampler) {
        (Some((_, set)), Some(at)) => Some(BatchSampler::resume(set, opts.seq_len, rows, at)?),
        (None, None) => None,
        _ => bail!("the checkpoint's pretraining-text cursor does not match the --mix-data setting"),
    };
    let mut stage = FineTuning {
        data: &data,
        sampler: state.sampler,
        mix,
        batch_size: opts.batch_size,
        replicas: dp.replicas,
        device,
        token_bytes: token_byte_lengths(&tokenizer),
        base_weights_sha256: base_sha.clone(),
    };
    let leader = dp.is_leader();
    let done = run.train(&mut stage, &model, &mut optim, state, resumed_from, start)?;
    let last = done.last_checkpoint.clone().context("fine-tuning wrote no checkpoint")?;
    let (selected_step, selected_dir, selected_sha, rule, reason) = if select {
        let best = crate::driver::best_eval(&done.evals).context("no held-out evaluation was recorded")?;
        let (dir, sha) = if best.step == 0 {
            (base.dir.clone(), base_sha.clone())
        } else {
            let dir = crate::checkpoint::checkpoint_dir(&opts.out, best.step);
            let sha = jarip_ledger::Manifest::read(&dir)
                .ok()
                .and_then(|_| std::fs::read_to_string(dir.join(jarip_interop::model_dir::TRAINER_FILE)).ok())
                .and_then(|t| serde_json::from_str::<TrainerState>(&t).ok())
                .map(|t| t.weights_sha256)
                .with_context(|| format!("the selected checkpoint {} cannot be read", dir.display()))?;
            (dir, sha)
        };
        let base_loss = done.evals.iter().find(|e| e.step == 0).map(|e| e.val_loss);
        let reason = match (best.step, base_loss) {
            (0, _) => format!(
                "no fine-tuning step lowered the held-out loss below the base model's {:.4}: the base is the run's model",
                best.val_loss
            ),
            (s, Some(b)) => format!("lowest held-out loss {:.4} at step {s} (base {b:.4})", best.val_loss),
            (s, None) => format!("lowest held-out loss {:.4} at step {s}", best.val_loss),
        };
        (best.step, dir, sha, "val_loss", reason)
    } else {
        (
            done.state.step,
            last.clone(),
            model.weights_sha256()?,
            "last",
            "too few held-out conversations to choose on: the last checkpoint".to_string(),
        )
    };
    if leader {
        let selected = jarip_ledger::run_dir::Selected {
            checkpoint: jarip_ledger::run_dir::relative_to_run(&opts.out, &selected_dir),
            step: selected_step,
            weights_sha256: selected_sha.clone(),
            metric: rule.to_string(),
            value: done.evals.iter().find(|e| e.step == selected_step).map(|e| e.val_loss),
            reason: reason.clone(),
        };
        jarip_ledger::run_dir::write_selected(&opts.out, &selected)?;
        let mut e = jarip_ledger::Entry::new("sft-select");
        e.set_details(&SftSelection {
            rule: rule.to_string(),
            reason: reason.clone(),
            selected_step,
            selected_checkpoint: selected_dir.display().to_string(),
            weights_sha256: selected_sha,
            evaluations: done.evals.clone(),
            patience: select.then_some(opts.patience).flatten(),
            stopped_early_at: done.stopped_early_at,
            val_conversations: data.val.conversations,
        })?;
        run.ledger.append(e)?;
        if opts.progress {
            eprintln!("sft: selected {} ({reason})", selected_dir.display());
        }
    }
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
        template_val_conversations: data.val_template.conversations,
        selected_checkpoint: selected_dir,
        selected_step,
        evals: done.evals,
        stopped_early_at: done.stopped_early_at,
        elapsed_s: t_start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_sets_the_epochs_and_the_evaluation_cadence() {
        assert_eq!(auto_epochs(2_000_000), 1.0);
        assert_eq!(auto_epochs(250_000), 2.0);
        assert_eq!(auto_epochs(100_000), 3.0);
        assert_eq!(auto_epochs(1_000), 4.0);
        // 354 windows, 6 conversation rows a step: 59 steps an epoch.
        assert_eq!(planned_steps(354, 50_000, 6, None, None), (236, 4.0));
        assert_eq!(planned_steps(354, 50_000, 6, None, Some(1.5)), (89, 1.5));
        assert_eq!(planned_steps(354, 50_000, 6, Some(10), None).0, 10);
        assert_eq!(auto_eval_every(354, 6), 15);
        assert_eq!(auto_eval_every(1, 6), 1);
    }

    #[test]
    fn mixed_rows_are_spread_and_count_every_token() {
        assert_eq!(mix_rows(8, 0.25).unwrap(), 2);
        assert!(mix_rows(8, 0.01).unwrap_err().to_string().contains("room for both"));
        assert!(mix_rows(8, 1.0).is_err());
        let l = 3;
        let conv = Batch {
            batch_size: 6,
            seq_len: l,
            inputs: (0..18).collect(),
            targets: (100..118).collect(),
            mask: Some((0..18).map(|i| i % 2 == 0).collect()),
        };
        let mix = Batch { batch_size: 2, seq_len: l, inputs: vec![7; 6], targets: vec![9; 6], mask: None };
        let b = interleave(&conv, &mix);
        assert_eq!(b.batch_size, 8);
        let kinds: Vec<bool> = (0..8).map(|r| b.rows(r, 1).inputs[0] == 7).collect();
        // One pretraining row in each half, so two replicas get one each.
        assert_eq!(kinds, [false, false, false, true, false, false, false, true]);
        let mask = b.mask.as_ref().unwrap();
        assert!(mask[3 * l..4 * l].iter().all(|&m| m), "pretraining rows count every token");
        assert_eq!(&mask[..l], &conv.mask.as_ref().unwrap()[..l]);
        assert_eq!(b.rows(4, 1).inputs, conv.rows(3, 1).inputs, "conversation rows keep their order");
        assert_eq!(b.counted_targets(), conv.counted_targets() + 6);
    }
}
