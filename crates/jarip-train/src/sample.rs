//! Sample generations during training: a few tokens from a prompt with the KV cache,
//! greedy (temperature 0) or sampled with a seeded RNG.

use anyhow::Result;
use candle_core::{Device, Tensor};
use jarip_model::{Gpt, KvCache};
use rand::Rng;

/// Continues `prompt` by `n` tokens (stopping at the context limit).
pub fn generate(model: &Gpt, prompt: &[u32], n: usize, temperature: f32, rng: &mut impl Rng) -> Result<Vec<u32>> {
    let device = model.device().clone();
    let max = model.config().max_seq_len;
    let mut cache = KvCache::new();
    let mut out = Vec::with_capacity(n);
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for _ in 0..n {
        if pos + input.len() > max {
            break;
        }
        let x = Tensor::new(input.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward(&x, pos, Some(&mut cache))?;
        pos += input.len();
        let last = logits.squeeze(0)?.get(input.len() - 1)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let next = pick(&last, temperature, rng);
        out.push(next);
        input = vec![next];
    }
    Ok(out)
}

fn pick(logits: &[f32], temperature: f32, rng: &mut impl Rng) -> u32 {
    let argmax =
        || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
    if temperature <= 0.0 {
        return argmax() as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits.iter().map(|&l| (((l - max) / temperature) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.gen::<f64>() * total;
    for (i, wi) in w.iter().enumerate() {
        r -= wi;
        if r <= 0.0 {
            return i as u32;
        }
    }
    argmax() as u32
}
