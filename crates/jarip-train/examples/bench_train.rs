//! Training-step benchmark on random tokens (no shards needed), the jarip side of
//! `bench/train/run.sh`. Prints one JSON line: ms/step (median), tokens/s, MFU, peak RSS.
//!
//! cargo run --release -p jarip-train --example bench_train -- [--depth 6] [--vocab 8192]
//!     [--seq-len 256] [--batch 8] [--steps 10] [--warmup 2] [--kernels fused|composed]
//!     [--arch jarip|llama|qwen3] [--mlp relu2|swiglu] [--peak-gflops G (default: measured)] [--breakdown] [--accum 1]
//!     [--precision fp32|bf16] [--bf16-kernel bf16_portable|bf16_avx512|bf16_amx]
//!
//! Data-parallel (build with `--features mpi`): `mpirun -n N bench_train --dist mpi --accum A`
//! splits each step's A micro-batches among the N ranks; rank 0 prints, with the time spent
//! adding gradients across ranks.

use candle_core::{Device, Tensor};
use jarip_model::{Gpt, Kernels, ModelConfig};
use jarip_train::dist::{Collective, DataParallel, Solo};
use jarip_train::optim::{Optimizer, OptimizerOptions};
use jarip_train::step::train_step_with;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match arg(&args, "--dist", "none".to_string()).as_str() {
        #[cfg(feature = "mpi")]
        "mpi" => run(&args, &jarip_train::dist::Mpi::init()?),
        "none" => run(&args, &Solo),
        other => anyhow::bail!("--dist {other}: not available in this build"),
    }
}

fn run(args: &[String], comm: &dyn Collective) -> anyhow::Result<()> {
    let args = args.to_vec();
    // As `jarip pretrain` does: freed buffers are reused, not faulted in again every step.
    jarip_kernels::alloc::retain_freed_memory();
    let accum: usize = arg(&args, "--accum", 1);
    let dp = DataParallel::new(comm, comm.world_size())?;
    let depth: usize = arg(&args, "--depth", 6);
    let vocab: usize = arg(&args, "--vocab", 8192);
    let seq_len: usize = arg(&args, "--seq-len", 256);
    let batch: usize = arg(&args, "--batch", 8);
    let steps: usize = arg(&args, "--steps", 10);
    let warmup: usize = arg(&args, "--warmup", 2);
    // MFU against this CPU's measured fp32 FMA peak (cached per CPU model), unless given.
    let peak_gflops: f64 = arg(&args, "--peak-gflops", 0.0);
    let peak_gflops = if peak_gflops > 0.0 { peak_gflops } else { jarip_kernels::peak::peak().fp32_gflops };
    let kernels = match arg(&args, "--kernels", "fused".to_string()).as_str() {
        "composed" => Kernels::Composed,
        _ => Kernels::Fused,
    };

    let arch: jarip_model::Arch = arg(&args, "--arch", jarip_model::Arch::Jarip);
    let mut cfg = ModelConfig::from_depth_arch(depth, vocab, arch);
    if arg(&args, "--mlp", "relu2".to_string()) == "swiglu" {
        // Same parameter count: 3 matrices of 8/3·C instead of 2 of 4·C.
        cfg.mlp = jarip_model::MlpKind::SwiGlu;
        cfg.mlp_hidden = 8 * cfg.n_embd / 3;
    }
    cfg.max_seq_len = cfg.max_seq_len.max(seq_len);
    let mut model = Gpt::new(&cfg, 0, &Device::Cpu)?;
    model.set_kernels(kernels);
    // The same resolution as `jarip pretrain --precision/--bf16-kernel`.
    let precision = match arg(&args, "--precision", String::new()).as_str() {
        "bf16" => Some(jarip_model::Precision::Bf16),
        "fp32" => Some(jarip_model::Precision::Fp32),
        _ => None,
    };
    let kernel = match arg(&args, "--bf16-kernel", String::new()) {
        k if k.is_empty() => None,
        k => Some(k.parse::<jarip_model::MatmulPath>().map_err(anyhow::Error::msg)?),
    };
    let (matmul, notice) =
        jarip_model::ops::matmul_bf16::resolve(precision, kernel, None).map_err(anyhow::Error::msg)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    model.set_matmul(matmul);
    let opts = OptimizerOptions::default();
    let mut optim = Optimizer::new(model.params(), &opts, kernels == Kernels::Fused)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let tokens = batch * seq_len * accum;
    let (mut times, mut exchange) = (Vec::new(), Vec::new());
    let mut last_loss = 0.0;
    for i in 0..warmup + steps {
        let ids: Vec<u32> = (0..accum * batch * (seq_len + 1)).map(|_| rng.gen_range(0..vocab as u32)).collect();
        let all = Tensor::from_vec(ids, (accum * batch, seq_len + 1), &Device::Cpu)?;
        let micro = |j: usize| -> anyhow::Result<(Tensor, Tensor)> {
            let rows = all.narrow(0, j * batch, batch)?;
            Ok((rows.narrow(1, 0, seq_len)?.contiguous()?, rows.narrow(1, 1, seq_len)?.contiguous()?))
        };
        if args.iter().any(|a| a == "--breakdown") {
            // Forward, backward and update timed separately (one extra step's worth of work).
            let t = Instant::now();
            let (x, y) = micro(0)?;
            let loss = model.loss(&x, &y)?;
            let _ = loss.to_scalar::<f32>()?;
            let fwd = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let grads = optim.collect_grads(&loss.backward()?)?;
            let bwd = t.elapsed().as_secs_f64();
            let t = Instant::now();
            optim.step(&grads, 1, 0.0)?;
            let upd = t.elapsed().as_secs_f64();
            eprintln!("  forward {:.0} ms, backward {:.0} ms, update {:.0} ms", fwd * 1e3, bwd * 1e3, upd * 1e3);
        }
        let t0 = Instant::now();
        let loss_of = |i: usize| {
            let (x, y) = micro(i)?;
            model.loss(&x, &y)
        };
        let out = train_step_with(&mut optim, accum, 1.0, loss_of, dp)?;
        let dt = t0.elapsed().as_secs_f64();
        last_loss = out.loss;
        if i >= warmup {
            times.push(dt);
            exchange.push(out.exchange_s);
        }
        if dp.is_leader() {
            eprintln!("step {i}: {:.0} ms, loss {:.4}", dt * 1e3, out.loss);
        }
    }
    if !dp.is_leader() {
        return Ok(());
    }
    exchange.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let median = times[times.len() / 2];
    // FLOPs per token: 6 per non-embedding parameter plus causal attention (same formula as train_ref.py).
    let flops = cfg.train_flops_per_token(seq_len) * tokens as f64;
    let line = serde_json::json!({
        "impl": format!(
            "jarip {} ({}, {arch:?}: {:?}, {} rank{} × {} threads)",
            if matmul.is_bf16() { format!("bf16 {}", matmul.name().trim_start_matches("bf16_")) } else { "fp32".into() },
            if kernels == Kernels::Fused { "fused" } else { "composed" },
            cfg.mlp,
            comm.world_size(),
            if comm.world_size() == 1 { "" } else { "s" },
            rayon::current_num_threads()
        ),
        "params": model.num_params(),
        "ms_per_step": median * 1e3,
        "tokens_per_s": tokens as f64 / median,
        "gflops_per_step": flops / 1e9,
        "mfu": flops / median / (peak_gflops * 1e9),
        "peak_gflops": peak_gflops,
        "matmul": matmul.name(),
        "peak_rss_mb": peak_rss_bytes() as f64 / 1e6,
        "final_loss": last_loss,
        "exchange_ms": exchange[exchange.len() / 2] * 1e3,
    });
    println!("{line}");
    Ok(())
}
