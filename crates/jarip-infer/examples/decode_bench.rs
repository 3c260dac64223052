//! Decode throughput at batch 1 and batch 8, next to this machine's memory-bandwidth bound
//! measured in the same run. Run with `bench/decode/run.sh` (see bench/decode/README.md).
//!
//! The bound: a decode step streams every weight once, so tokens/s at batch 1 cannot exceed
//! (bytes/s a large parallel copy moves) / (bytes of weights).

use anyhow::Result;
use jarip_infer::{Batcher, Request, SamplingParams};
use jarip_infer::{DecodeModel, KvFormat, WeightFormat};
use jarip_model::{Gpt, ModelConfig};
use jarip_tokenizer::Tokenizer;
use rayon::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// Bytes per second moved (read + written) by a parallel copy of `mib` MiB, best of 5.
fn copy_bandwidth(mib: usize) -> f64 {
    let n = mib << 18; // f32s
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(1 << 20).zip(src.par_chunks(1 << 20)).for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * n * 4) as f64 / best
}

/// Aggregate decode tokens/s of `batch` sequences after prompts of `context` tokens, prefill
/// excluded: the best of three consecutive segments of `steps` steps (a shared 2-core VM is noisy;
/// the context grows by `steps` tokens from one segment to the next).
fn decode_tps(
    model: &Arc<DecodeModel>,
    tok: &Arc<Tokenizer>,
    batch: usize,
    context: usize,
    steps: usize,
) -> Result<f64> {
    const SEGMENTS: usize = 3;
    let mut b = Batcher::new(model.clone(), tok.clone(), batch);
    for i in 0..batch {
        let prompt: Vec<u32> = (0..context).map(|j| ((i * 31 + j * 7) % 200) as u32 + 1).collect();
        let sampling = SamplingParams { temperature: 1.0, seed: Some(i as u64), ..Default::default() };
        b.admit(i as u64, Request::new(prompt, SEGMENTS * steps + 1, sampling))?;
    }
    // Prefill (in chunks of 256 tokens), ending with the first token of each sequence.
    for _ in 0..context.div_ceil(256) {
        b.step()?;
    }
    let mut best = 0f64;
    for _ in 0..SEGMENTS {
        let t = Instant::now();
        let mut tokens = 0;
        for _ in 0..steps {
            tokens += b.step()?.len();
        }
        best = best.max(tokens as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Prompt-processing tokens/s: one sequence's prompt of `n` tokens through the batcher (prefill in
/// its chunks, up to the first sampled token), best of 3.
fn prefill_tps(model: &Arc<DecodeModel>, tok: &Arc<Tokenizer>, n: usize) -> Result<f64> {
    let mut best = 0f64;
    // PREFILL_REPEATS (default 3): more repeats, for profiling the prefill alone.
    let repeats = std::env::var("PREFILL_REPEATS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    for r in 0..repeats {
        let mut b = Batcher::new(model.clone(), tok.clone(), 1);
        let prompt: Vec<u32> = (0..n).map(|j| ((j * 7 + r) % 200) as u32 + 1).collect();
        let sampling = SamplingParams { temperature: 1.0, seed: Some(r as u64), ..Default::default() };
        b.admit(0, Request::new(prompt, 1, sampling))?;
        let t = Instant::now();
        while b.step()?.is_empty() {}
        best = best.max(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn report(
    name: &str,
    model: Arc<DecodeModel>,
    tok: Arc<Tokenizer>,
    bw: f64,
    steps: usize,
    contexts: &[usize],
) -> Result<()> {
    let wb = model.weight_bytes() as f64;
    let bound = bw / wb;
    for &context in contexts {
        let context = context.min(model.config().max_seq_len.saturating_sub(3 * steps + 2)).max(1);
        let t1 = decode_tps(&model, &tok, 1, context, steps)?;
        // `--batch1-only` (for profiling the batch-1 path alone) skips batch 8.
        let t8 = if std::env::args().any(|a| a == "--batch1-only") {
            f64::NAN
        } else {
            decode_tps(&model, &tok, 8, context, steps)?
        };
        println!(
            "{name:<44} weights {:>7.1} MB  bound {:>6.1} tok/s | context {context:>4} | batch 1 {:>6.1} tok/s ({:>3.0}% of bound) | batch 8 {:>6.1} tok/s ({:.1}× batch 1)",
            wb / 1e6,
            bound,
            t1,
            100.0 * t1 / bound,
            t8,
            t8 / t1
        );
    }
    Ok(())
}

/// GGUF files of `cfg` at random initialisation (seed 1) under `arch`, f32, bf16 and Q8_0, named
/// `jarip-STEM-TYPE.gguf` in `dir`.
fn write_ggufs(
    cfg: &ModelConfig,
    arch: jarip_interop::gguf_model::GgufArch,
    stem: &str,
    dir: &std::path::Path,
    tok_file: &std::path::Path,
) -> Result<()> {
    use jarip_interop::gguf_model::{export_gguf, WeightType};
    let gpt = Gpt::new(cfg, 1, &candle_core::Device::Cpu)?;
    std::fs::create_dir_all(dir)?;
    for wt in [WeightType::F32, WeightType::Bf16, WeightType::Q8_0] {
        let out = dir.join(format!("jarip-{stem}-{}.gguf", wt.name()));
        let e = export_gguf(&gpt, tok_file, &out, wt, arch, "jarip-bench", &serde_json::Value::Null)?;
        let (params, mb) = (gpt.num_params() as f64 / 1e6, e.bytes as f64 / 1e6);
        println!("{} ({params:.1}M parameters, {mb:.1} MB)", out.display());
    }
    Ok(())
}

/// For the side-by-side with llama.cpp per architecture preset (`bench/decode/presets_vs_llamacpp.sh`):
/// the depth-12 shape of `--arch ARCH` (768 wide, 12 layers, SwiGLU 2048; ~100M parameters with an
/// 8k vocabulary) as GGUF of llama.cpp's own architecture for that preset (`llama` or `qwen3`).
fn write_preset(arch: jarip_model::Arch, dir: &std::path::Path, tok_dir: &std::path::Path) -> Result<()> {
    let tok_file = tok_dir.join("tokenizer.json");
    let cfg = ModelConfig::from_depth_arch(12, Tokenizer::load(&tok_file)?.vocab_size(), arch);
    let stem = format!("{arch:?}").to_lowercase();
    write_ggufs(&cfg, jarip_interop::gguf_model::GgufArch::for_config(&cfg), &stem, dir, &tok_file)
}

/// For the side-by-side with llama.cpp (`bench/decode/vs_llamacpp.sh`): a ~100M SwiGLU model at
/// random initialisation (depth 12: 768 wide, 12 layers) with the given tokenizer's vocabulary,
/// written as GGUF files of llama.cpp's `qwen3` architecture, f32 and Q8_0.
fn write_qwen3(dir: &std::path::Path, tok_dir: &std::path::Path) -> Result<()> {
    let tok_file = tok_dir.join("tokenizer.json");
    let mut cfg = ModelConfig::from_depth(12, Tokenizer::load(&tok_file)?.vocab_size());
    cfg.mlp = jarip_model::MlpKind::SwiGlu;
    cfg.mlp_hidden = 2048; // 8/3 of the width: the parameters of a ReLU² MLP of 4×
    write_ggufs(&cfg, jarip_interop::gguf_model::GgufArch::Qwen3, "qwen3", dir, &tok_file)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let steps: usize = flag("--steps").and_then(|s| s.parse().ok()).unwrap_or(32);
    // Prompt lengths before decoding: attention reads the whole cache each step, so a long
    // context costs memory traffic on top of the weights.
    let contexts: Vec<usize> = flag("--contexts")
        .unwrap_or_else(|| "16,512".into())
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;
    // KV cache formats to run each model with.
    let kvs: Vec<KvFormat> = flag("--kv-cache")
        .unwrap_or_else(|| "f32,f16".into())
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_>>()?;
    if let (Some(dir), Some(tok)) = (flag("--write-qwen3"), flag("--tokenizer")) {
        return write_qwen3(std::path::Path::new(&dir), std::path::Path::new(&tok));
    }
    if let (Some(arch), Some(dir), Some(tok)) = (flag("--write-preset"), flag("--out"), flag("--tokenizer")) {
        return write_preset(arch.parse()?, std::path::Path::new(&dir), std::path::Path::new(&tok));
    }
    let prefill: Option<usize> = flag("--prefill").map(|p| p.parse()).transpose()?;
    println!(
        "cpu: {}; threads: {}; matrix kernel: {}",
        jarip_kernels::peak::cpu_model(),
        rayon::current_num_threads(),
        jarip_kernels::decode_matmul::Kernel::detect().name()
    );
    let bw = copy_bandwidth(1024);
    println!("memory bandwidth (1 GiB parallel copy, read + write): {:.2} GB/s", bw / 1e9);
    if let Some(dir) = flag("--model") {
        let loaded = jarip_infer::load_model(std::path::Path::new(&dir), &candle_core::Device::Cpu)?;
        let n = loaded.model.num_params();
        // As stored: a Q8_0 GGUF decodes with Q8_0 weights.
        let tok = Arc::new(loaded.tokenizer);
        for &kv in &kvs {
            let model = Arc::new(DecodeModel::with_format(&loaded.model, loaded.stored_format)?.with_kv_cache(kv));
            report(
                &format!("{dir} ({:.1}M) kv {kv:?}", n as f64 / 1e6),
                model.clone(),
                tok.clone(),
                bw,
                steps,
                &contexts,
            )?;
            if let Some(p) = prefill {
                println!("{dir} kv {kv:?} | prefill {p} {:.1} tok/s", prefill_tps(&model, &tok, p)?);
            }
        }
    }
    if args.iter().any(|a| a == "--skip-random") {
        return Ok(());
    }
    // ~100M parameters: depth 10 (640 wide, 10 layers), vocabulary 40960.
    let cfg = ModelConfig::from_depth(10, 40960);
    let gpt = Gpt::new(&cfg, 1, &candle_core::Device::Cpu)?;
    let n = gpt.num_params();
    // Text is not the point here: a small tokenizer renders ids beyond its vocabulary as U+FFFD.
    let docs = ["jarip decode benchmark 자립 디코드 벤치마크".to_string()];
    let tok = jarip_tokenizer::train(
        docs.into_iter(),
        &jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() },
    )?;
    let tok = Arc::new(tok);
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Q8_0] {
        for &kv in &kvs {
            let model = Arc::new(DecodeModel::with_format(&gpt, format)?.with_kv_cache(kv));
            let name = format!("random init ({:.1}M) {format:?} kv {kv:?}", n as f64 / 1e6);
            report(&name, model, tok.clone(), bw, steps, &contexts)?;
        }
    }
    Ok(())
}
