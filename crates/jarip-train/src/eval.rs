//! Validation loss and bits per byte.
//!
//! `bpb = Σ nats over counted val targets / (ln 2 · Σ UTF-8 bytes those targets decode to)`,
//! with each token's byte length taken from the tokenizer. Special tokens decode to no text,
//! so they are left out of both sums (as nanochat does); bpb then compares across tokenizers.

use anyhow::Result;
use candle_core::{Device, Tensor};
use jarip_data::ShardSet;
use jarip_model::Gpt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub bpb: f64,
    pub tokens: u64,
    pub bytes: u64,
}

/// UTF-8 byte length of every token id (0 for special tokens).
pub fn token_byte_lengths(tok: &jarip_tokenizer::Tokenizer) -> Vec<u32> {
    (0..tok.vocab_size() as u32)
        .map(|id| if tok.is_special(id) { 0 } else { tok.id_bytes(id).map_or(0, |b| b.len() as u32) })
        .collect()
}

/// Evaluates on the val split, stopping after about `max_tokens` counted targets (0 = all).
pub fn evaluate(
    model: &Gpt,
    set: &ShardSet,
    seq_len: usize,
    batch_size: usize,
    max_tokens: usize,
    token_bytes: &[u32],
) -> Result<EvalResult> {
    evaluate_batches(model, set.val_batches(seq_len, batch_size), max_tokens, token_bytes)
}

/// Loss and bits per byte over `batches`, counting only masked-in targets that stand for text.
pub fn evaluate_batches(
    model: &Gpt,
    batches: impl IntoIterator<Item = jarip_data::Batch>,
    max_tokens: usize,
    token_bytes: &[u32],
) -> Result<EvalResult> {
    let device = model.device().clone();
    let (mut nats, mut tokens, mut bytes) = (0f64, 0u64, 0u64);
    for batch in batches {
        let (b, l) = (batch.batch_size, batch.seq_len);
        let x = Tensor::from_vec(batch.inputs.clone(), (b, l), &device)?;
        let y = Tensor::from_vec(batch.targets.clone(), (b, l), &device)?;
        let losses = model.token_losses(&x, &y)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        for (i, (&loss, &t)) in losses.iter().zip(&batch.targets).enumerate() {
            let counted = batch.mask.as_ref().is_none_or(|m| m[i]);
            let nb = token_bytes.get(t as usize).copied().unwrap_or(0);
            if counted && nb > 0 {
                nats += loss as f64;
                tokens += 1;
                bytes += nb as u64;
            }
        }
        if max_tokens > 0 && tokens as usize >= max_tokens {
            break;
        }
    }
    if tokens == 0 {
        anyhow::bail!("the validation split has no tokens to evaluate on");
    }
    Ok(EvalResult { loss: nats / tokens as f64, bpb: nats / (std::f64::consts::LN_2 * bytes as f64), tokens, bytes })
}
