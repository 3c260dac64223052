//! The pretraining run: resolve inputs, build or restore model and optimizer, loop over steps
//! (schedule, accumulation, clipping, metrics, evaluation, samples, checkpoints, ledger).

use crate::checkpoint::{latest_checkpoint, load_checkpoint, save_checkpoint, TrainerState};
use crate::dist::{agree_ok, agree_u64, check_replicas_agree, Collective, DataParallel, Solo};
use crate::eval::{evaluate, token_byte_lengths, EvalResult};
use crate::metrics::MetricsLog;
use crate::optim::Optimizer;
use crate::options::{PretrainOptions, PretrainSummary};
use crate::records::{CheckpointDetails, DataRange, PretrainConfig, PretrainStart, Processes, StepMetrics};
use crate::sample::generate;
use crate::step::train_step_parallel;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use jarip_data::{Batch, BatchSampler, SamplerState, ShardSet};
use jarip_ledger::{Entry, FileRef, Ledger, Manifest};
use jarip_model::{Gpt, ModelConfig};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const LEDGER_FILE: &str = "ledger.jsonl";

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
        (Some(path), None) => ModelConfig::from_file(path)?,
        (None, Some(d)) => {
            let mut c = ModelConfig::from_depth(d, vocab);
            c.max_seq_len = c.max_seq_len.max(opts.seq_len);
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

/// Runs (or resumes) pretraining as `opts` describe, in this process alone.
pub fn pretrain(opts: &PretrainOptions) -> Result<PretrainSummary> {
    pretrain_parallel(opts, &Solo)
}

/// Runs (or resumes) pretraining as `opts` describe, as one rank of `comm`: every rank runs this
/// with the same options; rank 0 writes the run's files.
pub fn pretrain_parallel(opts: &PretrainOptions, comm: &dyn Collective) -> Result<PretrainSummary> {
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
    let leader = dp.is_leader();
    let mut total_steps = match (opts.max_steps, opts.tokens, opts.minutes) {
        (Some(s), _, _) => Some(s),
        (None, Some(t), _) => Some(t.div_ceil(batch_tokens as u64)),
        (None, None, Some(_)) => None,
        (None, None, None) => bail!("give a limit: --max-steps, --tokens or --minutes"),
    };
    let (device, compute_dtype) = device_for(&opts.device)?;

    let tok_path = tokenizer_path(opts)?;
    let tokenizer = jarip_tokenizer::Tokenizer::load(&tok_path)
        .with_context(|| format!("cannot load tokenizer {}", tok_path.display()))?;
    let shards = ShardSet::open(&opts.data, Some(tokenizer.sha256()))?;
    let vocab = tokenizer.vocab_size();
    let token_bytes = token_byte_lengths(&tokenizer);
    // The shard writer records the Merkle root of its shard files in its manifest; fall back
    // to the manifest's own content hash for shard sets that lack it.
    let shards_root = if opts.data.join(jarip_ledger::manifest::MANIFEST_FILE).exists() {
        let m = Manifest::read(&opts.data)?;
        Some(m.settings.get("merkle_root").and_then(|r| r.as_str()).map_or_else(|| m.content_hash(), str::to_string))
    } else {
        None
    };

    // Model, optimizer and position: fresh, or from the newest checkpoint.
    let requested = requested_config(opts, vocab)?;
    let latest = latest_checkpoint(&opts.out)?;
    let ledger = Ledger::at(&opts.out.join(LEDGER_FILE));
    let metrics = MetricsLog::at(&opts.out);
    let (mut model, state) = if opts.resume {
        let (_, dir) =
            latest.with_context(|| format!("--resume: {} has no checkpoint to resume from", opts.out.display()))?;
        let loaded = load_checkpoint(&dir, &device)?;
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
        if (s.seq_len, s.batch_size, s.batch_tokens, s.seed, s.replicas)
            != (opts.seq_len, opts.batch_size, batch_tokens, opts.seed, dp.replicas)
        {
            bail!(
                "--resume: the run used seq_len {} batch_size {} batch_tokens {} seed {} replicas {}; this invocation asks for {} {} {} {} {}",
                s.seq_len, s.batch_size, s.batch_tokens, s.seed, s.replicas,
                opts.seq_len, opts.batch_size, batch_tokens, opts.seed, dp.replicas
            );
        }
        if s.tokenizer_sha256 != tokenizer.sha256() {
            bail!("--resume: the run was trained with tokenizer {}, not {}", s.tokenizer_sha256, tokenizer.sha256());
        }
        (loaded.model, Some((loaded.state, dir)))
    } else {
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
        (Gpt::new(&cfg, opts.seed, &device)?, None)
    };
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
    let mut optim = Optimizer::new(model.params(), &opts.optimizer, true)?;
    let (mut step, mut tokens_seen, elapsed_before, mut sampler) = match &state {
        Some((s, dir)) => {
            if total_steps.is_none() {
                // A time-limited run fixed its length once; resuming keeps that plan.
                total_steps = s.total_steps;
            }
            optim.load(&dir.join(crate::checkpoint::OPTIMIZER_FILE))?;
            if leader {
                metrics.truncate_after(s.step)?;
            }
            (
                s.step,
                s.tokens_seen,
                s.elapsed_s,
                BatchSampler::resume(&shards, opts.seq_len, opts.batch_size, s.sampler)?,
            )
        }
        None => {
            // Lines left by an earlier attempt that died before its first checkpoint.
            if leader {
                metrics.truncate_after(0)?;
            }
            (0, 0, 0.0, shards.sampler(opts.seq_len, opts.batch_size, opts.seed)?)
        }
    };
    if leader {
        std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    }

    let num_params = model.num_params();
    let flops_per_token = cfg.train_flops_per_token(opts.seq_len);
    let settings = serde_json::to_value(PretrainConfig {
        model: cfg.clone(),
        seed: opts.seed,
        seq_len: opts.seq_len,
        batch_size: opts.batch_size,
        batch_tokens,
        optimizer: opts.optimizer.clone(),
        schedule: opts.schedule,
        tokenizer_sha256: tokenizer.sha256().to_string(),
        shards_merkle_root: shards_root.clone(),
        kernels: opts.kernels,
        device: device_kind(&opts.device).to_string(),
        replicas: dp.replicas,
    })?;
    let tok_file = if tok_path.is_dir() { tok_path.join("tokenizer.json") } else { tok_path.clone() };
    let inputs = {
        let mut v = Vec::new();
        if let Ok(f) = FileRef::of_file(&tok_file) {
            v.push(f);
        }
        let shard_manifest = opts.data.join(jarip_ledger::manifest::MANIFEST_FILE);
        if let Ok(f) = FileRef::of_file(&shard_manifest) {
            v.push(f);
        }
        v
    };
    let mut last_ckpt: Option<PathBuf> = state.as_ref().map(|(_, d)| d.clone());
    let mut cursor_at_ckpt: SamplerState = sampler.state();
    {
        let mut e = Entry::new(if state.is_some() { "pretrain-resume" } else { "pretrain-start" });
        e.inputs = inputs.clone();
        e.config = settings.clone();
        e.seed = Some(opts.seed);
        e.set_details(&PretrainStart {
            step,
            weights_sha256: model.weights_sha256()?,
            initial_weights: Some(step == 0),
            num_params: Some(num_params as u64),
            tokenizer_sha256: Some(tokenizer.sha256().to_string()),
            shards_merkle_root: shards_root.clone(),
            sampler: Some(sampler.state()),
            resumed_from: last_ckpt.as_ref().map(|d| d.display().to_string()),
            processes: Some(Processes { backend: comm.backend().into(), world_size: comm.world_size() }),
        })?;
        if leader {
            ledger.append(e)?;
        }
    }

    let budget_s = opts.minutes.map(|m| m * 60.0);
    let eprint = |pb: &indicatif::ProgressBar, s: String| {
        if pb.is_hidden() {
            eprintln!("{s}");
        } else {
            pb.println(s)
        }
    };
    let pb = progress_bar(total_steps, opts.progress && leader);
    pb.set_position(step);
    if leader {
        eprint(
            &pb,
            format!(
                "model: {num_params} parameters ({} layers, width {}, {} heads)",
                cfg.n_layer, cfg.n_embd, cfg.n_head
            ),
        );
        if comm.world_size() > 1 {
            eprint(
                &pb,
                format!("data-parallel: {} replicas on {} ranks ({})", dp.replicas, comm.world_size(), comm.backend()),
            );
        }
    }

    let run_start = Instant::now();
    // A time budget becomes a step count after a few measured steps, so that the schedule (and
    // hence every weight) is a function of the step alone: resumable and replayable bit for bit.
    // Steps before the plan are at most the first step past warmup, whose rate does not depend
    // on the total.
    let plan_after = opts.schedule.warmup_steps.clamp(1, 3);
    let (first_step, mut timed_s) = (step, 0f64);
    let (mut last_loss, mut last_eval): (Option<f64>, Option<EvalResult>) = (None, None);
    let mut tps_ema = 0f64;
    loop {
        if total_steps.is_some_and(|t| step >= t) || opts.stop_at_step.is_some_and(|s| step >= s) {
            break;
        }
        let lr_factor = opts.schedule.factor(step, total_steps.unwrap_or(u64::MAX));
        let t0 = Instant::now();
        // Every rank draws the whole step's batches, so the data cursor stays one and the same.
        let batches: Vec<Batch> = (0..accum).map(|_| sampler.next_batch()).collect();
        let micro = |i: usize| to_tensors(&batches[i], &device);
        let out = match train_step_parallel(&model, &mut optim, accum, micro, lr_factor, dp) {
            Ok(o) => o,
            Err(e) => {
                pb.abandon();
                let keep = match &last_ckpt {
                    Some(d) => format!("the last good checkpoint is {}", d.display()),
                    None => "no checkpoint was written yet".into(),
                };
                bail!("training stopped at step {}: {e:#}; {keep}", step + 1);
            }
        };
        step += 1;
        tokens_seen += batch_tokens as u64;
        let dt = t0.elapsed().as_secs_f64();
        timed_s += dt;
        if let (Some(b), None) = (budget_s, total_steps) {
            if step - first_step >= plan_after {
                let per_step = timed_s / (step - first_step) as f64;
                let planned = ((b - run_start.elapsed().as_secs_f64()).max(0.0) / per_step) as u64 + step;
                // Rank 0's clock decides for every rank.
                let planned = agree_u64(comm, planned)?;
                total_steps = Some(planned.max(step));
                if leader {
                    eprint(
                        &pb,
                        format!("time budget {:.1} min → {} steps at {:.0} ms/step", b / 60.0, planned, per_step * 1e3),
                    );
                }
                pb.set_length(planned);
            }
        }
        let tps = batch_tokens as f64 / dt;
        tps_ema = if tps_ema == 0.0 { tps } else { 0.9 * tps_ema + 0.1 * tps };
        let mfu = flops_per_token * tps / opts.peak_flops;
        last_loss = Some(out.loss);
        let mut line = StepMetrics {
            step,
            loss: Some(out.loss),
            lr: Some(opts.optimizer.lr * lr_factor),
            grad_norm: Some(out.grad_norm),
            tokens: Some(tokens_seen),
            tokens_per_s: Some(tps),
            mfu: Some(mfu),
            step_ms: Some(dt * 1e3),
            elapsed_s: Some(elapsed_before + run_start.elapsed().as_secs_f64()),
            exchange_ms: (comm.world_size() > 1).then_some(out.exchange_s * 1e3),
            ..Default::default()
        };
        let last_step = total_steps == Some(step) || opts.stop_at_step == Some(step);
        // Evaluation, samples and metrics are rank 0's; the other ranks learn whether they failed.
        let mut bookkeeping = || -> Result<()> {
            if !leader {
                return Ok(());
            }
            if (opts.eval_every > 0 && step % opts.eval_every == 0) || last_step {
                let ev = evaluate(&model, &shards, opts.seq_len, opts.batch_size, opts.eval_tokens, &token_bytes)?;
                line.val_loss = Some(ev.loss);
                line.val_bpb = Some(ev.bpb);
                eprint(&pb, format!("step {step}: val loss {:.4}, val bpb {:.4}", ev.loss, ev.bpb));
                last_eval = Some(ev);
            }
            if opts.sample_every > 0 && step % opts.sample_every == 0 {
                let mut rng =
                    rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let ids =
                    generate(&model, &[tokenizer.bos_id()], opts.sample_tokens, opts.sample_temperature, &mut rng)?;
                let text = String::from_utf8_lossy(&tokenizer.decode_bytes(&ids)).to_string();
                eprint(&pb, format!("step {step} sample: {text:?}"));
                line.sample = Some(text);
            }
            metrics.append(&line)
        };
        let done = bookkeeping();
        agree_ok(comm, done)?;
        pb.set_position(step);
        pb.set_message(format!("loss {:.4}  {:.0} tok/s  MFU {:.1}%", out.loss, tps_ema, mfu * 100.0));

        if (opts.checkpoint_every > 0 && step % opts.checkpoint_every == 0) || last_step {
            let ts = TrainerState {
                step,
                tokens_seen,
                sampler: sampler.state(),
                seed: opts.seed,
                seq_len: opts.seq_len,
                batch_size: opts.batch_size,
                batch_tokens,
                replicas: dp.replicas,
                elapsed_s: elapsed_before + run_start.elapsed().as_secs_f64(),
                weights_sha256: model.weights_sha256()?,
                tokenizer_sha256: tokenizer.sha256().to_string(),
                total_steps,
            };
            check_replicas_agree(comm, &ts.weights_sha256)?;
            let saved = if leader {
                save_checkpoint(&opts.out, &model, &optim, &ts, &tok_file, settings.clone(), opts.keep_checkpoints)
                    .and_then(|dir| {
                        let mut e = crate::checkpoint::checkpoint_entry("checkpoint", &dir, opts.seed)?;
                        e.set_details(&CheckpointDetails {
                            step,
                            weights_sha256: ts.weights_sha256.clone(),
                            tokens_seen: Some(tokens_seen),
                            total_steps,
                            base_weights_sha256: None,
                            data: Some(DataRange { sampler_before: cursor_at_ckpt, sampler_after: ts.sampler }),
                            loss: Some(out.loss),
                            val_loss: last_eval.map(|e| e.loss),
                            val_bpb: last_eval.map(|e| e.bpb),
                            replicas_agree: (comm.world_size() > 1).then_some(comm.world_size()),
                        })?;
                        ledger.append(e)?;
                        Ok(dir)
                    })
            } else {
                Ok(crate::checkpoint::checkpoint_dir(&opts.out, step))
            };
            // Other ranks wait for the checkpoint, so a failed write stops them all.
            let dir = agree_ok(comm, saved)?;
            cursor_at_ckpt = ts.sampler;
            last_ckpt = Some(dir);
        }
        if opts.step_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(opts.step_delay_ms));
        }
    }
    pb.finish_and_clear();
    let trained_s = run_start.elapsed().as_secs_f64();
    let trained_tokens = tokens_seen - state.as_ref().map_or(0, |(s, _)| s.tokens_seen);
    Ok(PretrainSummary {
        out: opts.out.clone(),
        steps: step,
        tokens_seen,
        final_loss: last_loss,
        val_loss: last_eval.map(|e| e.loss),
        val_bpb: last_eval.map(|e| e.bpb),
        last_checkpoint: last_ckpt,
        weights_sha256: model.weights_sha256()?,
        num_params,
        tokens_per_s: trained_tokens as f64 / trained_s.max(1e-9),
        elapsed_s: t_start.elapsed().as_secs_f64(),
    })
}

/// Path helper for callers: the newest checkpoint directory of a run, if any.
pub fn newest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    Ok(latest_checkpoint(run)?.map(|(_, d)| d))
}
