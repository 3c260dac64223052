//! Sample generations during training: a few tokens from a prompt, drawn by the one sampler
//! ([`jarip_model::Sampler`]) from the training network's logits, greedy (temperature 0) or
//! seeded, constrained like every jarip generator to valid UTF-8. Each token re-runs the
//! forward over the whole text so far (a sample is tens of tokens; the KV-cached decode path is
//! jarip-infer's).

use anyhow::Result;
use candle_core::{Device, Tensor};
use jarip_model::{Gpt, Sampler, SamplingParams, Utf8Constraint};
use jarip_tokenizer::Tokenizer;
use std::sync::Arc;

/// Continues `prompt` by `n` tokens (stopping at the context limit), drawing with `seed`;
/// returns the new tokens.
pub fn generate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    n: usize,
    temperature: f32,
    seed: u64,
) -> Result<Vec<u32>> {
    let device = model.device().clone();
    let max = model.config().max_seq_len;
    let params = SamplingParams { temperature: temperature.max(0.0), seed: Some(seed), ..SamplingParams::default() };
    let utf8 = Arc::new(Utf8Constraint::new(tokenizer.vocab_size(), |t| tokenizer.id_bytes(t)));
    let mut sampler = Sampler::new(params, prompt).with_utf8(utf8);
    let mut text = prompt.to_vec();
    while text.len() - prompt.len() < n && text.len() < max {
        let x = Tensor::new(text.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward(&x)?.squeeze(0)?.get(text.len() - 1)?.to_device(&Device::Cpu)?;
        text.push(sampler.sample(&logits.to_vec1::<f32>()?).token);
    }
    Ok(text.split_off(prompt.len()))
}

/// The text of generated tokens: their bytes up to the last whole character (the sampler keeps
/// them valid UTF-8; an unfinished last character is dropped).
pub fn whole_text(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let bytes = tokenizer.decode_bytes(ids);
    match std::str::from_utf8(&bytes) {
        Ok(s) => s.to_string(),
        Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
    }
}
