//! Decode steps where attention over the KV cache dominates: 8 sequences of a long context through
//! a model with small matrices (640 wide, 10 layers of 10 heads, MLP of 64, vocabulary 256: 69 MB
//! of weights against ~400 MB of f32 cache at 1,000 tokens), f32 against f16 cache, alternating
//! rounds so that a noisy host affects both alike. Prints the best ms per step of each and the
//! cache bytes a step reads.
//!
//! cargo run --release -p jarip-infer --example attention_bench -- [--context 1000] [--batch 8]

use candle_core::Device;
use jarip_infer::{DecodeModel, KvFormat, SeqCache, SeqInput};
use jarip_model::{Gpt, ModelConfig};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let (context, batch, steps, rounds) = (arg("--context", 1000), arg("--batch", 8), 8, 4);
    let mut cfg = ModelConfig::from_depth(10, 256);
    cfg.mlp_hidden = 64;
    cfg.max_seq_len = context + steps * rounds + 1;
    let gpt = Gpt::new(&cfg, 1, &Device::Cpu)?;
    let kinds = [KvFormat::F32, KvFormat::F16];
    let models: Vec<DecodeModel> =
        kinds.iter().map(|&kv| Ok(DecodeModel::new(&gpt)?.with_kv_cache(kv))).collect::<anyhow::Result<_>>()?;
    println!(
        "threads {}, weights {:.1} MB, batch {batch}, context {context}",
        rayon::current_num_threads(),
        models[0].weight_bytes() as f64 / 1e6
    );
    let prompt: Vec<u32> = (0..context).map(|j| (j * 7 % 255) as u32 + 1).collect();
    let mut caches: Vec<Vec<SeqCache>> = Vec::new();
    for m in &models {
        let mut cs = vec![SeqCache::new(); batch];
        for c in cs.iter_mut() {
            for chunk in prompt.chunks(256) {
                m.forward(&mut [SeqInput { tokens: chunk, cache: c }], false)?;
            }
        }
        caches.push(cs);
    }
    let mut best = [f64::MAX; 2];
    for _ in 0..rounds {
        for (i, m) in models.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..steps {
                let tokens = [5u32];
                let mut inputs: Vec<SeqInput> =
                    caches[i].iter_mut().map(|c| SeqInput { tokens: &tokens, cache: c }).collect();
                m.forward(&mut inputs, false)?;
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64() / steps as f64);
        }
    }
    for (i, kv) in kinds.iter().enumerate() {
        let bytes: usize = caches[i].iter().map(SeqCache::bytes).sum();
        println!(
            "kv {kv:?}: {:.1} ms/step, cache {:.0} MB read per step ({:.1} GB/s), {:.0} tok/s",
            best[i] * 1e3,
            bytes as f64 / 1e6,
            bytes as f64 / best[i] / 1e9,
            batch as f64 / best[i]
        );
    }
    println!("f16 / f32 step time: {:.2}", best[1] / best[0]);
    Ok(())
}
