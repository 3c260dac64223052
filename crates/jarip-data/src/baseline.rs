//! The unigram baseline: bits per byte of the validation split under token frequencies
//! counted on the training split. A trained model must land clearly below it; a model that
//! only learned which tokens are common lands on it.

use crate::reader::ShardSet;
use crate::shard::Split;
use anyhow::{bail, Result};

/// `token_bytes[id]` is the UTF-8 length of token `id` (0 for special tokens, which are left
/// out of both sums exactly as in the model's evaluation).
pub fn unigram_bpb(set: &ShardSet, token_bytes: &[u32]) -> Result<f64> {
    let v = token_bytes.len();
    let mut counts = vec![0u64; v];
    for s in 0..set.split_info(Split::Train).shards {
        for t in set.shard_tokens(Split::Train, s) {
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1;
            }
        }
    }
    let total: u64 = counts.iter().sum();
    // Add-one smoothing: a token never seen in training still has a finite cost.
    let denom = (total + v as u64) as f64;
    let (mut bits, mut bytes) = (0f64, 0u64);
    for s in 0..set.split_info(Split::Val).shards {
        for t in set.shard_tokens(Split::Val, s) {
            let nb = token_bytes.get(t as usize).copied().unwrap_or(0);
            if nb > 0 {
                bits -= ((counts[t as usize] + 1) as f64 / denom).log2();
                bytes += nb as u64;
            }
        }
    }
    if bytes == 0 {
        bail!("the validation split has no text to score");
    }
    Ok(bits / bytes as f64)
}
