//! The pretraining run: resolve inputs, build or restore model and optimizer, then the shared
//! training loop ([`crate::driver`]) over batches of token shards with the plain loss.

use crate::checkpoint::{latest_checkpoint, load_checkpoint, TrainerState, OPTIMIZER_FILE};
use crate::dist::{Collective, DataParallel, Solo};
use crate::driver::{device_for, device_kind, Run, Stage, StartEntry};
use crate::eval::{evaluate, token_byte_lengths, EvalResult};
use crate::optim::Optimizer;
use crate::options::{PretrainOptions, PretrainSummary};
use crate::records::{PretrainConfig, PretrainStart, Processes, StepMetrics};
use crate::sample::{generate, whole_text};
use crate::step::{train_step_with, StepOutcome};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use jarip_data::{Batch, BatchSampler, SamplerState, ShardSet};
use jarip_ledger::{FileRef, Ledger, Manifest};
use jarip_model::{Gpt, Kernels, MatmulPath, ModelConfig, Precision};
use jarip_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const LEDGER_FILE: &str = "ledger.jsonl";

fn tokenizer_path(opts: &PretrainOptions) -> Result<PathBuf> {
    if let Some(t) = &opts.tokenizer {
        return Ok(t.clone());
    }
    let beside = opts.data.parent().map(|p| p.join("tokenizer")).unwrap_or_else(|| PathBuf::from("tokenizer"));
    if beside.join("tokenizer.json").exists() {
        return Ok(beside);
    }
    bail!(
        "no tokenizer given and none found at {}: pass --tokenizer DIR (the tokenizer the shards were made with)",
        beside.display()
    )
}

/// The config asked for on the command line, if any.
fn requested_config(opts: &PretrainOptions, vocab: usize) -> Result<Option<ModelConfig>> {
    let cfg = match (&opts.config, opts.depth) {
        (Some(_), Some(_)) => bail!("give either --depth or --config, not both"),
        (Some(_), None) if opts.arch != jarip_model::Arch::Jarip || opts.tie_embeddings => {
            bail!("--arch and --tie-embeddings shape the --depth dial; a --config file sets every field itself (mlp, qk_norm, logit_softcap, rope_base, tie_embeddings)")
        }
        (Some(path), None) => ModelConfig::from_file(path)?,
        (None, Some(d)) => {
            let mut c = ModelConfig::from_depth_arch(d, vocab, opts.arch);
            c.max_seq_len = c.max_seq_len.max(opts.seq_len);
            c.tie_embeddings = opts.tie_embeddings;
            c
        }
        (None, None) if (opts.arch != jarip_model::Arch::Jarip || opts.tie_embeddings) && !opts.resume => {
            let mut c = ModelConfig::from_depth_arch(6, vocab, opts.arch);
            c.max_seq_len = c.max_seq_len.max(opts.seq_len);
            c.tie_embeddings = opts.tie_embeddings;
            c
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(cfg))
}

fn to_tensors(b: &Batch, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_vec(b.inputs.clone(), (b.batch_size, b.seq_len), device)?;
    let y = Tensor::from_vec(b.targets.clone(), (b.batch_size, b.seq_len), device)?;
    Ok((x, y))
}

/// The identity of a shard set: the Merkle root of its shard files, which the shard writer
/// records in its manifest, or the manifest's own content hash for shard sets that lack it.
pub(crate) fn shards_merkle_root(dir: &Path) -> Result<String> {
    let m = Manifest::read(dir)?;
    Ok(m.settings.get("merkle_root").and_then(|r| r.as_str()).map_or_else(|| m.content_hash(), str::to_string))
}

/// The model a run trains: drawn from the seed, or restored from the run's newest checkpoint
/// (with its trainer state and directory) when resuming, after checking that the invocation
/// asks for the same run.
/// The CPU matmul path of this invocation (see [`jarip_model::ops::matmul_bf16::resolve`]);
/// `recorded`: what the resumed run used. Other devices keep their own compute dtype.
pub(crate) fn matmul_path(
    (precision, bf16_kernel, kernels): (Option<Precision>, Option<MatmulPath>, Kernels),
    device: &Device,
    recorded: Option<MatmulPath>,
) -> Result<(MatmulPath, Option<String>)> {
    if !device.is_cpu() {
        if bf16_kernel.is_some() {
            bail!("--bf16-kernel selects a CPU kernel; on a GPU the compute dtype is bf16 already");
        }
        return Ok((MatmulPath::Fp32, None));
    }
    let (path, notice) =
        jarip_model::ops::matmul_bf16::resolve(precision, bf16_kernel, recorded).map_err(anyhow::Error::msg)?;
    if path.is_bf16() && kernels == Kernels::Composed {
        bail!("bf16 matmuls run in the fused kernels; drop --kernels composed or train in fp32");
    }
    Ok((path, notice))
}

fn restore_or_init(
    opts: &PretrainOptions,
    requested: Option<ModelConfig>,
    tokenizer: &Tokenizer,
    batch_tokens: usize,
    replicas: usize,
    device: &Device,
) -> Result<(Gpt, Option<(TrainerState, PathBuf)>)> {
    let latest = latest_checkpoint(&opts.out)?;
    let vocab = tokenizer.vocab_size();
    if !opts.resume {
        if latest.is_some() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue it, or choose a new --out",
                opts.out.display()
            );
        }
        let cfg = requested.unwrap_or_else(|| {
            let mut c = ModelConfig::from_depth(6, vocab);
            c.max_seq_len = c.max_seq_len.max(opts.seq_len);
            c
        });
        return Ok((Gpt::new(&cfg, opts.seed, device)?, None));
    }
    let (_, dir) =
        latest.with_context(|| format!("--resume: {} has no checkpoint to resume from", opts.out.display()))?;
    let loaded = load_checkpoint(&dir, device)?;
    if let Some(req) = &requested {
        if req != &loaded.config {
            bail!(
                "--resume: the requested model config differs from the run's ({}):\nrequested {}\nrun       {}",
                dir.display(),
                serde_json::to_string(req)?,
                serde_json::to_string(&loaded.config)?
            );
        }
    }
    let s = &loaded.state;
    if s.sampler.seed != opts.order_seed() {
        bail!(
            "--resume: the run's data order was drawn with --data-seed {}; this invocation asks for {}",
            s.sampler.seed,
            opts.order_seed()
        );
    }
    if (s.seq_len, s.batch_size, s.batch_tokens, s.seed, s.replicas)
        != (opts.seq_len, opts.batch_size, batch_tokens, opts.seed, replicas)
    {
        bail!(
            "--resume: the run used seq_len {} batch_size {} batch_tokens {} seed {} replicas {}; this invocation asks for {} {} {} {} {}",
            s.seq_len, s.batch_size, s.batch_tokens, s.seed, s.replicas,
            opts.seq_len, opts.batch_size, batch_tokens, opts.seed, replicas
        );
    }
    if s.tokenizer_sha256 != tokenizer.sha256() {
        bail!("--resume: the run was trained with tokenizer {}, not {}", s.tokenizer_sha256, tokenizer.sha256());
    }
    Ok((loaded.model, Some((loaded.state, dir))))
}

/// Pretraining's part of the loop: batches of token shards, the plain loss (the fused head and
/// cross-entropy of [`Gpt::loss`]), throughput in the metrics, samples.
struct Pretraining<'a> {
    opts: &'a PretrainOptions,
    shards: &'a ShardSet,
    sampler: BatchSampler<'a>,
    tokenizer: &'a Tokenizer,
    token_bytes: Vec<u32>,
    device: Device,
    /// Micro-batches per step.
    accum: usize,
    batch_tokens: usize,
    flops_per_token: f64,
    /// FLOP/s the MFU figures divide by, if known.
    peak_flops: Option<f64>,
    world_size: usize,
    tps_ema: f64,
}

impl Stage for Pretraining<'_> {
    const CHECKPOINT: &'static str = "checkpoint";

    fn train(
        &mut self,
        model: &Gpt,
        optim: &mut Optimizer,
        lr_factor: f64,
        dp: DataParallel,
    ) -> Result<(StepOutcome, u64)> {
        // Every rank draws the whole step's batches, so the data cursor stays one and the same.
        let batches: Vec<Batch> = (0..self.accum).map(|_| self.sampler.next_batch()).collect();
        let device = &self.device;
        let loss_of = |i: usize| {
            let (x, y) = to_tensors(&batches[i], device)?;
            model.loss(&x, &y)
        };
        Ok((train_step_with(optim, self.accum, lr_factor, loss_of, dp)?, self.batch_tokens as u64))
    }

    fn cursor(&self) -> SamplerState {
        self.sampler.state()
    }

    fn annotate(&mut self, line: &mut StepMetrics, out: &StepOutcome, step_s: f64) -> String {
        let tps = self.batch_tokens as f64 / step_s;
        self.tps_ema = if self.tps_ema == 0.0 { tps } else { 0.9 * self.tps_ema + 0.1 * tps };
        let mfu = self.peak_flops.map(|p| self.flops_per_token * tps / p);
        line.tokens_per_s = Some(tps);
        line.mfu = mfu;
        line.peak_gflops = self.peak_flops.map(|p| p / 1e9);
        line.step_ms = Some(step_s * 1e3);
        line.exchange_ms = (self.world_size > 1).then_some(out.exchange_s * 1e3);
        match mfu {
            Some(m) => format!("loss {:.4}  {:.0} tok/s  MFU {:.1}%", out.loss, self.tps_ema, m * 100.0),
            None => format!("loss {:.4}  {:.0} tok/s", out.loss, self.tps_ema),
        }
    }

    fn evaluate(&self, model: &Gpt) -> Result<Option<EvalResult>> {
        let o = self.opts;
        Ok(Some(evaluate(model, self.shards, o.seq_len, o.batch_size, o.eval_tokens, &self.token_bytes)?))
    }

    fn step_label(&self) -> &'static str {
        "step"
    }

    fn sample(&self, model: &Gpt, step: u64) -> Result<Option<String>> {
        let o = self.opts;
        if o.sample_every == 0 || !step.is_multiple_of(o.sample_every) {
            return Ok(None);
        }
        let seed = o.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let tok = self.tokenizer;
        let ids = generate(model, tok, &[tok.bos_id()], o.sample_tokens, o.sample_temperature, seed)?;
        Ok(Some(whole_text(tok, &ids)))
    }

    fn stopped(&self, step: u64, err: anyhow::Error, last_checkpoint: Option<&Path>) -> anyhow::Error {
        let keep = match last_checkpoint {
            Some(d) => format!("the last good checkpoint is {}", d.display()),
            None => "no checkpoint was written yet".into(),
        };
        anyhow!("training stopped at step {step}: {err:#}; {keep}")
    }
}

/// Runs (or resumes) pretraining as `opts` describe, in this process alone.
pub fn pretrain(opts: &PretrainOptions) -> Result<PretrainSummary> {
    pretrain_parallel(opts, &Solo)
}

/// Runs (or resumes) pretraining as `opts` describe, as one rank of `comm`: every rank runs this
/// with the same options; rank 0 writes the run's files.
pub fn pretrain_parallel(opts: &PretrainOptions, comm: &dyn Collective) -> Result<PretrainSummary> {
    // Freed activation and gradient buffers are reused, not faulted in again every step.
    jarip_kernels::alloc::retain_freed_memory();
    let t_start = Instant::now();
    if opts.seq_len == 0 || opts.batch_size == 0 {
        bail!("--seq-len and --batch-size must be positive");
    }
    let micro_tokens = opts.seq_len * opts.batch_size;
    let batch_tokens = opts.batch_tokens.unwrap_or(micro_tokens);
    if batch_tokens == 0 || !batch_tokens.is_multiple_of(micro_tokens) {
        bail!("batch size in tokens ({batch_tokens}) must be a positive multiple of seq_len × batch_size ({micro_tokens})");
    }
    let accum = batch_tokens / micro_tokens;
    let dp = DataParallel::new(comm, opts.replicas.unwrap_or(comm.world_size()))?;
    dp.blocks(accum)?;
    let mut total_steps = match (opts.max_steps, opts.tokens, opts.minutes) {
        (Some(s), _, _) => Some(s),
        (None, Some(t), _) => Some(t.div_ceil(batch_tokens as u64)),
        (None, None, Some(_)) => None,
        (None, None, None) => bail!("give a limit: --max-steps, --tokens or --minutes"),
    };
    let (device, compute_dtype) = device_for(&opts.device)?;

    let tok_path = tokenizer_path(opts)?;
    let tokenizer =
        Tokenizer::load(&tok_path).with_context(|| format!("cannot load tokenizer {}", tok_path.display()))?;
    let shards = ShardSet::open(&opts.data, Some(tokenizer.sha256()))?;
    let vocab = tokenizer.vocab_size();
    let shards_root = if opts.data.join(jarip_ledger::manifest::MANIFEST_FILE).exists() {
        Some(shards_merkle_root(&opts.data)?)
    } else {
        None
    };

    // Model, optimizer and position: fresh, or from the newest checkpoint.
    let requested = requested_config(opts, vocab)?;
    let (mut model, resumed) = restore_or_init(opts, requested, &tokenizer, batch_tokens, dp.replicas, &device)?;
    let cfg = model.config().clone();
    if cfg.vocab_size != vocab {
        bail!("model vocab_size {} differs from the tokenizer's {vocab}", cfg.vocab_size);
    }
    if (shards.vocab_size() as usize) > cfg.vocab_size {
        bail!("shards use a vocabulary of {}, larger than the model's {}", shards.vocab_size(), cfg.vocab_size);
    }
    cfg.check_seq_len(opts.seq_len)?;
    model.set_kernels(opts.kernels);
    model.set_compute_dtype(compute_dtype);
    let (matmul, matmul_notice) = matmul_path(
        (opts.precision, opts.bf16_kernel, opts.kernels),
        &device,
        resumed.as_ref().map(|(s, _)| s.matmul),
    )?;
    model.set_matmul(matmul);
    let mut optim = Optimizer::new(model.params(), &opts.optimizer, true)?;
    let (state, sampler) = match &resumed {
        Some((s, dir)) => {
            if total_steps.is_none() {
                // A time-limited run fixed its length once; resuming keeps that plan.
                total_steps = s.total_steps;
            }
            optim.load(&dir.join(OPTIMIZER_FILE))?;
            let sampler = BatchSampler::resume(&shards, opts.seq_len, opts.batch_size, s.sampler)?;
            (TrainerState { total_steps, matmul, ..s.clone() }, sampler)
        }
        None => {
            let sampler = shards.sampler(opts.seq_len, opts.batch_size, opts.order_seed())?;
            let state = TrainerState {
                step: 0,
                tokens_seen: 0,
                sampler: sampler.state(),
                seed: opts.seed,
                seq_len: opts.seq_len,
                batch_size: opts.batch_size,
                batch_tokens,
                replicas: dp.replicas,
                elapsed_s: 0.0,
                weights_sha256: String::new(),
                tokenizer_sha256: tokenizer.sha256().to_string(),
                total_steps,
                mix_sampler: None,
                matmul,
            };
            (state, sampler)
        }
    };

    let num_params = model.num_params();
    let settings = serde_json::to_value(PretrainConfig {
        model: cfg.clone(),
        seed: opts.seed,
        data_seed: Some(opts.order_seed()),
        seq_len: opts.seq_len,
        batch_size: opts.batch_size,
        batch_tokens,
        optimizer: opts.optimizer.clone(),
        schedule: opts.schedule,
        tokenizer_sha256: tokenizer.sha256().to_string(),
        shards_merkle_root: shards_root.clone(),
        kernels: opts.kernels,
        matmul,
        device: device_kind(&opts.device).to_string(),
        replicas: dp.replicas,
    })?;
    let tok_file = if tok_path.is_dir() { tok_path.join("tokenizer.json") } else { tok_path.clone() };
    let shard_manifest = opts.data.join(jarip_ledger::manifest::MANIFEST_FILE);
    let inputs: Vec<FileRef> =
        [FileRef::of_file(&tok_file), FileRef::of_file(&shard_manifest)].into_iter().flatten().collect();
    let resumed_dir = resumed.map(|(_, d)| d);
    let start = StartEntry {
        stage: if resumed_dir.is_some() { "pretrain-resume" } else { "pretrain-start" },
        inputs,
        details: serde_json::to_value(PretrainStart {
            step: state.step,
            weights_sha256: model.weights_sha256()?,
            initial_weights: Some(state.step == 0),
            num_params: Some(num_params as u64),
            tokenizer_sha256: Some(tokenizer.sha256().to_string()),
            shards_merkle_root: shards_root,
            sampler: Some(state.sampler),
            resumed_from: resumed_dir.as_ref().map(|d| d.display().to_string()),
            processes: Some(Processes { backend: comm.backend().into(), world_size: comm.world_size() }),
        })?,
    };
    let mut banner = vec![format!(
        "model: {num_params} parameters ({} layers, width {}, {} heads)",
        cfg.n_layer, cfg.n_embd, cfg.n_head
    )];
    if device.is_cpu() {
        banner.push(format!("matmul: {} — {}", matmul.name(), matmul.describe()));
    }
    if let Some(n) = matmul_notice {
        if comm.rank() == 0 {
            eprintln!("{n}");
        }
    }
    // What MFU divides by: given, or this CPU's fp32 peak measured (once per CPU model, cached).
    let peak_flops = match (opts.peak_flops, device.is_cpu()) {
        (Some(p), _) => {
            banner.push(format!("MFU against the given peak of {:.1} GFLOP/s", p / 1e9));
            Some(p)
        }
        (None, true) => {
            let p = jarip_kernels::peak::peak();
            // Against the peak of the instructions the matrix products run on.
            let (gflops, which) = p.for_matmul(matmul);
            banner.push(format!(
                "MFU against this CPU's measured {which} peak: {gflops:.1} GFLOP/s ({}, {} threads; fp32 FMA {:.1}{}{})",
                p.cpu,
                p.threads,
                p.fp32_gflops,
                p.bf16_gflops.map_or(String::new(), |b| format!(", bf16 dot-product {b:.1}")),
                p.amx_bf16_gflops.map_or(String::new(), |b| format!(", AMX bf16 {b:.1}")),
            ));
            Some(gflops * 1e9)
        }
        (None, false) => None,
    };
    if comm.world_size() > 1 {
        banner.push(format!(
            "data-parallel: {} replicas on {} ranks ({})",
            dp.replicas,
            comm.world_size(),
            comm.backend()
        ));
    }
    let run = Run {
        comm,
        dp,
        out: &opts.out,
        ledger: Ledger::at(&opts.out.join(LEDGER_FILE)),
        settings,
        tokenizer_json: tok_file,
        seed: opts.seed,
        lr: opts.optimizer.lr,
        schedule: opts.schedule,
        total_steps,
        budget_s: opts.minutes.map(|m| m * 60.0),
        stop_at_step: opts.stop_at_step,
        eval_every: opts.eval_every,
        checkpoint_every: opts.checkpoint_every,
        keep_checkpoints: opts.keep_checkpoints,
        step_delay_ms: opts.step_delay_ms,
        progress: opts.progress,
        banner,
        select: None,
        reserve_steps: opts.reserve_steps,
    };
    let mut stage = Pretraining {
        opts,
        shards: &shards,
        sampler,
        tokenizer: &tokenizer,
        token_bytes: token_byte_lengths(&tokenizer),
        device,
        accum,
        batch_tokens,
        flops_per_token: cfg.train_flops_per_token(opts.seq_len),
        peak_flops,
        world_size: comm.world_size(),
        tps_ema: 0.0,
    };
    let tokens_before = state.tokens_seen;
    let done = run.train(&mut stage, &model, &mut optim, state, resumed_dir, start)?;
    Ok(PretrainSummary {
        out: opts.out.clone(),
        steps: done.state.step,
        tokens_seen: done.state.tokens_seen,
        final_loss: done.final_loss,
        val_loss: done.last_eval.map(|e| e.loss),
        val_bpb: done.last_eval.map(|e| e.bpb),
        last_checkpoint: done.last_checkpoint,
        weights_sha256: model.weights_sha256()?,
        num_params,
        tokens_per_s: (done.state.tokens_seen - tokens_before) as f64 / done.trained_s.max(1e-9),
        elapsed_s: t_start.elapsed().as_secs_f64(),
    })
}

/// Path helper for callers: the newest checkpoint directory of a run, if any.
pub fn newest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    Ok(latest_checkpoint(run)?.map(|(_, d)| d))
}
