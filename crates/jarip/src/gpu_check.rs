//! `jarip gpu-check`: the GPU side of `scripts/gpu-check`, run on a machine with a GPU from a
//! binary built elsewhere (`--features cuda,nccl`).
//!
//! - `parity`: a small model on the GPU against the same model on the CPU (fp32 reference):
//!   logits, every parameter's gradient, one optimizer step and KV-cache decoding, for the
//!   composed ops in f32 and bf16 and for the fused CUDA kernels (each op alone against the
//!   composed ops too, and run twice for identical bits). Tolerances are relative L2 errors,
//!   `‖gpu − ref‖ / ‖ref‖`, stated per row: f32 paths 1e-4 for values and 1e-3 for gradients
//!   (cuBLAS and candle sum in other orders than the CPU), bf16 paths 2e-2 and 5e-2 (bf16 keeps
//!   8 bits of mantissa: one rounding is 2⁻⁹ relative, and a dozen chained ones compound).
//! - `throughput`: training steps on random tokens (bf16 compute, fp32 master weights), printing
//!   one JSON line: tokens/s, MFU against the GPU's bf16 dense peak and against cuBLAS's
//!   measured peak, and the GPU memory in use at its highest.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::{Args, Subcommand};
use jarip_model::{Gpt, Kernels, KvCache, ModelConfig};
use jarip_train::dist::DataParallel;
use jarip_train::optim::{Optimizer, OptimizerOptions};
use jarip_train::step::train_step_with;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum GpuCheckCommand {
    /// GPU against CPU on a small model: logits, gradients, an optimizer step, cached decoding,
    /// and each fused CUDA op against the composed ops. Exits non-zero when a row fails.
    Parity(ParityArgs),
    /// Training throughput on random tokens: one JSON line (tokens/s, MFU, GPU memory).
    Throughput(ThroughputArgs),
}

#[derive(Args)]
pub struct ParityArgs {
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The CUDA device.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[arg(long, default_value_t = 12)]
    pub depth: usize,
    #[arg(long, default_value_t = 32768)]
    pub vocab: usize,
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// fused (the CUDA kernels) or composed (candle ops).
    #[arg(long, default_value = "composed")]
    pub kernels: String,
    /// The GPU's dense bf16 peak in TFLOP/s for MFU (H100/H200 SXM: 989.4).
    #[arg(long, default_value_t = 989.4)]
    pub peak_tflops: f64,
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

pub fn run(cmd: &GpuCheckCommand) -> Result<()> {
    match cmd {
        GpuCheckCommand::Parity(a) => parity(a),
        GpuCheckCommand::Throughput(a) => throughput(a),
    }
}

fn cuda(gpu: usize) -> Result<Device> {
    Device::new_cuda(gpu)
        .with_context(|| format!("cannot open CUDA device {gpu} (is this jarip built with --features cuda?)"))
}

/// GPU memory in use on the device, as the driver sees it (candle's pool included).
fn gpu_mem_used() -> Option<u64> {
    #[cfg(feature = "cuda")]
    {
        let (free, total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
        Some((total - free) as u64)
    }
    #[cfg(not(feature = "cuda"))]
    None
}

// ---------------------------------------------------------------------------------------------
// parity
// ---------------------------------------------------------------------------------------------

struct Row {
    check: String,
    rel_err: f64,
    max_abs: f64,
    tol: f64,
    pass: bool,
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// `‖a − b‖ / ‖b‖` (both brought to the CPU in f32) against `tol`.
    fn compare(&mut self, check: &str, a: &Tensor, b: &Tensor, tol: f64) -> Result<()> {
        let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if a.len() != b.len() {
            bail!("{check}: {} values against {}", a.len(), b.len());
        }
        let (mut num, mut den, mut max_abs) = (0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            let d = (*x as f64) - (*y as f64);
            num += d * d;
            den += (*y as f64) * (*y as f64);
            max_abs = max_abs.max(d.abs());
        }
        let rel_err = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
        let pass = rel_err <= tol && rel_err.is_finite();
        println!("| {check} | {rel_err:.2e} | {max_abs:.2e} | {tol:.0e} | {} |", if pass { "pass" } else { "FAIL" });
        self.rows.push(Row { check: check.into(), rel_err, max_abs, tol, pass });
        Ok(())
    }

    fn same_bits(&mut self, check: &str, a: &Tensor, b: &Tensor) -> Result<()> {
        let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        let pass = differ == 0 && a.len() == b.len();
        println!(
            "| {check} | {differ} of {} values differ | | identical | {} |",
            a.len(),
            if pass { "pass" } else { "FAIL" }
        );
        self.rows.push(Row { check: check.into(), rel_err: differ as f64, max_abs: 0.0, tol: 0.0, pass });
        Ok(())
    }
}

/// The parity model: two layers, 4 query heads sharing 2 KV heads of 32 (the fused attention
/// takes head sizes 32, 64 and 128), ReLU² and QK-norm as jarip's default.
fn parity_config() -> ModelConfig {
    let mut cfg = ModelConfig::tiny(512);
    cfg.n_embd = 128;
    cfg.n_head = 4;
    cfg.n_kv_head = 2;
    cfg.mlp_hidden = 512;
    cfg.max_seq_len = 96;
    cfg
}

fn batch(b: usize, t: usize, vocab: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let ids: Vec<u32> = (0..b * (t + 1))
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect();
    let all = Tensor::from_vec(ids, (b, t + 1), device)?;
    Ok((all.narrow(1, 0, t)?.contiguous()?, all.narrow(1, 1, t)?.contiguous()?))
}

/// Loss and every parameter's gradient (in parameter order).
fn loss_and_grads(m: &Gpt, x: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
    let loss = m.loss(x, y)?;
    let grads = loss.backward()?;
    let gs = m
        .params()
        .iter()
        .map(|(n, v)| grads.get(v).cloned().with_context(|| format!("no gradient reached {n}")))
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, gs))
}

fn model_on(cfg: &ModelConfig, device: &Device, dtype: DType, kernels: Kernels) -> Result<Gpt> {
    let mut m = Gpt::new(cfg, 11, device)?;
    m.set_compute_dtype(dtype);
    m.set_kernels(kernels);
    Ok(m)
}

fn parity(a: &ParityArgs) -> Result<()> {
    let gpu = cuda(a.gpu)?;
    let mut r = Report { rows: Vec::new() };
    println!("| check | rel. L2 error | max abs | tolerance | |\n|---|---|---|---|---|");
    let cfg = parity_config();
    let (x, y) = batch(2, 80, cfg.vocab_size, 1, &Device::Cpu)?;
    let (xg, yg) = (x.to_device(&gpu)?, y.to_device(&gpu)?);

    // The reference: fp32 on the CPU (its fused kernels are tested against composed there).
    let cpu = model_on(&cfg, &Device::Cpu, DType::F32, Kernels::Fused)?;
    let ref_logits = cpu.forward(&x)?;
    let (ref_loss, ref_grads) = loss_and_grads(&cpu, &x, &y)?;

    let paths = [
        ("f32 composed", DType::F32, Kernels::Composed, 1e-4, 1e-3),
        ("bf16 composed", DType::BF16, Kernels::Composed, 2e-2, 5e-2),
        ("f32 fused", DType::F32, Kernels::Fused, 1e-4, 1e-3),
        ("bf16 fused", DType::BF16, Kernels::Fused, 2e-2, 5e-2),
    ];
    for (name, dtype, kernels, tol_v, tol_g) in paths {
        let m = model_on(&cfg, &gpu, dtype, kernels)?;
        r.compare(&format!("{name}: logits"), &m.forward(&xg)?, &ref_logits, tol_v)?;
        let (loss, grads) = loss_and_grads(&m, &xg, &yg)?;
        r.compare(&format!("{name}: loss"), &loss, &ref_loss, tol_v)?;
        for ((n, _), (g, g_ref)) in m.params().iter().zip(grads.iter().zip(&ref_grads)) {
            r.compare(&format!("{name}: grad {n}"), g, g_ref, tol_g)?;
        }
        if kernels == Kernels::Fused {
            let (loss2, grads2) = loss_and_grads(&m, &xg, &yg)?;
            r.same_bits(&format!("{name}: loss, run twice"), &loss2, &loss)?;
            let flat = |gs: &[Tensor]| -> Result<Tensor> {
                Ok(Tensor::cat(&gs.iter().map(|g| g.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?, 0)?)
            };
            r.same_bits(&format!("{name}: gradients, run twice"), &flat(&grads2)?, &flat(&grads)?)?;
        }
        // KV-cache decoding: a prompt of 60, then 20 tokens one at a time, against the CPU's
        // full forward at those positions.
        let mut cache = KvCache::new();
        let mut parts = vec![m.forward_cached(&xg.narrow(1, 0, 60)?, &mut cache)?];
        for t in 60..80 {
            parts.push(m.forward_cached(&xg.narrow(1, t, 1)?, &mut cache)?);
        }
        r.compare(&format!("{name}: KV-cache decode logits"), &Tensor::cat(&parts, 1)?, &ref_logits, tol_v)?;
        // One optimizer step from the CPU's gradients: the GPU's AdamW (multi-tensor when fused)
        // against the CPU's.
        if dtype == DType::F32 {
            optimizer_step(&mut r, name, &cfg, &gpu, kernels, &ref_grads)?;
        }
    }
    fused_ops(&mut r, &gpu)?;

    let failed: Vec<&str> = r.rows.iter().filter(|x| !x.pass).map(|x| x.check.as_str()).collect();
    if let Some(p) = &a.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&serde_json::json!({ "rows": r.rows.iter().map(|x| serde_json::json!({
            "check": x.check, "rel_err": x.rel_err, "max_abs": x.max_abs, "tol": x.tol, "pass": x.pass,
        })).collect::<Vec<_>>() }))?,
        )
        .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("\n{} of {} checks pass", r.rows.len() - failed.len(), r.rows.len());
    if !failed.is_empty() {
        bail!("parity failed: {}", failed.join(", "));
    }
    Ok(())
}

fn optimizer_step(
    r: &mut Report,
    name: &str,
    cfg: &ModelConfig,
    gpu: &Device,
    kernels: Kernels,
    grads: &[Tensor],
) -> Result<()> {
    let opts = OptimizerOptions::default();
    let cpu = model_on(cfg, &Device::Cpu, DType::F32, Kernels::Fused)?;
    let mut o_cpu = Optimizer::new(cpu.params(), &opts, true)?;
    o_cpu.step(grads, 1, 1.0)?;
    let m = model_on(cfg, gpu, DType::F32, kernels)?;
    let mut o_gpu = Optimizer::new(m.params(), &opts, kernels == Kernels::Fused)?;
    let g_gpu = grads.iter().map(|g| g.to_device(gpu)).collect::<candle_core::Result<Vec<_>>>()?;
    o_gpu.step(&g_gpu, 1, 1.0)?;
    for ((n, v), (_, v_ref)) in m.params().iter().zip(cpu.params()) {
        r.compare(&format!("{name}: AdamW step {n}"), v.as_tensor(), v_ref.as_tensor(), 1e-6)?;
    }
    Ok(())
}

fn set_tensor_cores(on: bool) {
    #[cfg(feature = "cuda")]
    jarip_model::cuda::use_tensor_cores(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

fn randn(shape: &[usize], seed: u64, scale: f32, device: &Device, dtype: DType) -> Result<Tensor> {
    Ok(jarip_model::ops::testing::randn(shape, seed, scale).to_device(device)?.to_dtype(dtype)?)
}

/// Each fused CUDA op against the composed ops on the GPU, values and gradients.
fn fused_ops(r: &mut Report, gpu: &Device) -> Result<()> {
    use jarip_model::ops::{attention, head_ce, matmul_bf16::Path, rms_norm, rope};
    for (dtype, tol, tol_g) in [(DType::F32, 1e-4, 1e-3), (DType::BF16, 2e-2, 5e-2)] {
        let dn = if dtype == DType::F32 { "f32" } else { "bf16" };
        let (b, t, h, hkv) = (2, 200, 4, 2);
        // bf16 runs on tensor cores by default; the CUDA-core kernels are checked too.
        let cores: &[bool] = if dtype == DType::BF16 { &[true, false] } else { &[false] };
        for (&tc, d) in cores.iter().flat_map(|c| [64usize, 128].map(|d| (c, d))) {
            set_tensor_cores(tc);
            let dn = format!("{dn}{}", if tc { " tensor cores" } else { "" });
            // The same (dtype-rounded) inputs in `dtype` and in f32; the reference is the composed
            // attention in f32 on them, so a bf16 kernel is judged against exact-ish math rather
            // than against composed bf16 ops (whose softmax is itself in bf16).
            let inputs = |dt: DType| -> Result<[Var; 3]> {
                let mk = |shape: &[usize], seed| -> Result<Var> {
                    Ok(Var::from_tensor(&randn(shape, seed, 1.0, gpu, dtype)?.to_dtype(dt)?)?)
                };
                Ok([mk(&[b, t, h, d], 1)?, mk(&[b, t, hkv, d], 2)?, mk(&[b, t, hkv, d], 3)?])
            };
            let go = randn(&[b, t, h, d], 4, 1.0, gpu, dtype)?.to_dtype(DType::F32)?;
            let run = |kernels, dt: DType| -> Result<(Tensor, Vec<Tensor>)> {
                let [q, k, v] = inputs(dt)?;
                let o = attention::causal_attention(&q, &k, &v, kernels)?;
                let g = (o.to_dtype(DType::F32)? * &go)?.sum_all()?.backward()?;
                Ok((o, [&q, &k, &v].iter().map(|x| g.get(x).cloned().context("no gradient")).collect::<Result<_>>()?))
            };
            let (of, gf) = run(Kernels::Fused, dtype)?;
            let (oc, gc) = run(Kernels::Composed, DType::F32)?;
            r.compare(&format!("op attention {dn} D={d}: output"), &of, &oc, tol)?;
            for (n, (a, c)) in ["dq", "dk", "dv"].iter().zip(gf.iter().zip(&gc)) {
                r.compare(&format!("op attention {dn} D={d}: {n}"), a, c, tol_g)?;
            }
            let (of2, gf2) = run(Kernels::Fused, dtype)?;
            r.same_bits(&format!("op attention {dn} D={d}: output, run twice"), &of2, &of)?;
            r.same_bits(&format!("op attention {dn} D={d}: dk, run twice"), &gf2[1], &gf[1])?;
        }
        set_tensor_cores(true);
        let x = Var::from_tensor(&randn(&[300, 768], 5, 2.0, gpu, dtype)?)?;
        let w = Var::from_tensor(&(randn(&[768], 6, 0.5, gpu, DType::F32)? + 1.0)?.to_dtype(dtype)?)?;
        let gy = randn(&[300, 768], 7, 1.0, gpu, DType::F32)?;
        let run = |kernels| -> Result<Vec<Tensor>> {
            let y = rms_norm::rms_norm(&x, &w, 1e-5, kernels)?;
            let g = (y.to_dtype(DType::F32)? * &gy)?.sum_all()?.backward()?;
            Ok(vec![y, g.get(&x).cloned().context("dx")?, g.get(&w).cloned().context("dw")?])
        };
        let (f, c) = (run(Kernels::Fused)?, run(Kernels::Composed)?);
        for (n, (a, b)) in ["y", "dx", "dw"].iter().zip(f.iter().zip(&c)) {
            r.compare(&format!("op rms_norm {dn}: {n}"), a, b, tol)?;
        }
        let tables = rope::RopeTables::new(256, 64, 10_000.0, gpu)?;
        let xr = Var::from_tensor(&randn(&[2, 100, 3, 64], 8, 1.0, gpu, dtype)?)?;
        let gr = randn(&[2, 100, 3, 64], 9, 1.0, gpu, DType::F32)?;
        let run = |kernels| -> Result<Vec<Tensor>> {
            let y = rope::rope(&xr, &tables, 7, kernels)?;
            let g = (y.to_dtype(DType::F32)? * &gr)?.sum_all()?.backward()?;
            Ok(vec![y, g.get(&xr).cloned().context("dx")?])
        };
        let (f, c) = (run(Kernels::Fused)?, run(Kernels::Composed)?);
        for (n, (a, b)) in ["y", "dx"].iter().zip(f.iter().zip(&c)) {
            r.compare(&format!("op rope {dn}: {n}"), a, b, tol)?;
        }
        let hh = Var::from_tensor(&randn(&[600, 256], 10, 1.0, gpu, dtype)?)?;
        let wh = Var::from_tensor(&randn(&[5000, 256], 11, 0.1, gpu, dtype)?)?;
        let tg: Vec<u32> = (0..600u32).map(|i| (i * 7919) % 5000).collect();
        let tg = Tensor::new(tg.as_slice(), gpu)?;
        for cap in [15.0f32, 0.0] {
            let run = |kernels| -> Result<Vec<Tensor>> {
                let l = head_ce::head_cross_entropy(&hh, &wh, &tg, cap, kernels, Path::Fp32)?;
                let g = l.sum_all()?.backward()?;
                Ok(vec![l, g.get(&hh).cloned().context("dh")?, g.get(&wh).cloned().context("dw")?])
            };
            let (f, c) = (run(Kernels::Fused)?, run(Kernels::Composed)?);
            for (n, (a, b)) in ["losses", "dh", "dw"].iter().zip(f.iter().zip(&c)) {
                r.compare(&format!("op head+CE {dn} cap {cap}: {n}"), a, b, tol)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// throughput
// ---------------------------------------------------------------------------------------------

/// cuBLAS's bf16 rate on an 8192³ product (TFLOP/s), the achievable ceiling beside the spec sheet.
fn measured_peak(gpu: &Device) -> Result<f64> {
    let n = 8192;
    let a = Tensor::ones((n, n), DType::BF16, gpu)?;
    let b = Tensor::ones((n, n), DType::BF16, gpu)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    gpu.synchronize()?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?;
    }
    gpu.synchronize()?;
    Ok(2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e12)
}

fn throughput(a: &ThroughputArgs) -> Result<()> {
    let gpu = cuda(a.gpu)?;
    let kernels = match a.kernels.as_str() {
        "fused" => Kernels::Fused,
        "composed" => Kernels::Composed,
        k => bail!("--kernels {k}: use fused or composed"),
    };
    let mut cfg = ModelConfig::from_depth(a.depth, a.vocab);
    cfg.max_seq_len = cfg.max_seq_len.max(a.seq_len);
    let mut model = Gpt::new(&cfg, 0, &gpu)?;
    model.set_compute_dtype(DType::BF16);
    model.set_kernels(kernels);
    let mut optim = Optimizer::new(model.params(), &OptimizerOptions::default(), kernels == Kernels::Fused)?;
    let peak_measured = measured_peak(&gpu)?;
    let tokens = a.batch * a.seq_len;
    let mut times = Vec::new();
    let mut mem_peak = 0u64;
    let mut last_loss = 0.0;
    for i in 0..a.warmup + a.steps {
        let (x, y) = batch(a.batch, a.seq_len, a.vocab, i as u64, &gpu)?;
        gpu.synchronize()?;
        let t0 = Instant::now();
        let loss_of = |_: usize| -> Result<Tensor> {
            let l = model.loss(&x, &y)?;
            Ok(l)
        };
        let out = train_step_with(&mut optim, 1, 1.0, loss_of, DataParallel::solo())?;
        gpu.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        mem_peak = mem_peak.max(gpu_mem_used().unwrap_or(0));
        last_loss = out.loss;
        if i >= a.warmup {
            times.push(dt);
        }
        eprintln!("step {i}: {:.1} ms, loss {:.4}", dt * 1e3, out.loss);
    }
    times.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    let median = times[times.len() / 2];
    let flops = cfg.train_flops_per_token(a.seq_len) * tokens as f64;
    let line = serde_json::json!({
        "impl": format!("jarip bf16 {}", a.kernels),
        "depth": a.depth,
        "params": model.num_params(),
        "batch": a.batch,
        "seq_len": a.seq_len,
        "ms_per_step": median * 1e3,
        "tokens_per_s": tokens as f64 / median,
        "mfu": flops / median / (a.peak_tflops * 1e12),
        "mfu_vs_measured_cublas": flops / median / (peak_measured * 1e12),
        "peak_tflops": a.peak_tflops,
        "cublas_bf16_tflops": peak_measured,
        "gpu_mem_mb": mem_peak as f64 / 1e6,
        "final_loss": last_loss,
    });
    println!("{line}");
    Ok(())
}
