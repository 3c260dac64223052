//! Fine-tuning data: conversations rendered with the chat template, packed into windows,
//! with a mask so that only assistant tokens count toward the loss.
//!
//! Conversations are concatenated (each opens with `<|bos|>`) into one stream of ids and
//! target flags, cut into windows of `seq_len + 1` with stride `seq_len` exactly as pretraining
//! windows are, so nothing is padded and nothing is dropped; windows with no assistant token
//! are skipped. Validation conversations are held out whole, chosen from a seeded hash.

use crate::conversations::Conversation;
use crate::reader::{epoch_order, Batch, SamplerState};
use anyhow::{bail, Result};
use jarip_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftOptions {
    pub seq_len: usize,
    pub val_fraction: f64,
    pub seed: u64,
}

/// Packed windows of one split: `tokens[w*seq_len ..= w*seq_len + seq_len]` is window `w`.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    pub seq_len: usize,
    pub windows: Vec<(Vec<u32>, Vec<bool>)>,
    pub conversations: usize,
    /// Tokens that count toward the loss.
    pub target_tokens: usize,
}

impl Packed {
    fn build(tok: &Tokenizer, convs: &[&Conversation], seq_len: usize) -> Result<Self> {
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for c in convs {
            let r = tok.render_chat(&c.messages, false)?;
            ids.extend(r.ids);
            mask.extend(r.mask);
        }
        let mut p = Packed { seq_len, conversations: convs.len(), ..Default::default() };
        let mut start = 0;
        while start + 1 < ids.len() {
            let end = (start + seq_len + 1).min(ids.len());
            let (w, m) = (ids[start..end].to_vec(), mask[start..end].to_vec());
            let counted = m[1..].iter().filter(|&&b| b).count();
            if counted > 0 {
                p.target_tokens += counted;
                p.windows.push((w, m));
            }
            start += seq_len;
        }
        Ok(p)
    }

    /// Window `w` as a batch row: inputs, targets and the targets' mask (padded with `pad`
    /// and `false` when the last window is short).
    fn row(&self, w: usize, pad: u32) -> (Vec<u32>, Vec<u32>, Vec<bool>) {
        let (ids, m) = &self.windows[w];
        let mut inputs = ids[..ids.len() - 1].to_vec();
        let mut targets = ids[1..].to_vec();
        let mut mask = m[1..].to_vec();
        inputs.resize(self.seq_len, pad);
        targets.resize(self.seq_len, pad);
        mask.resize(self.seq_len, false);
        (inputs, targets, mask)
    }

    fn batch(&self, windows: &[usize], pad: u32) -> Batch {
        let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for &w in windows {
            let (i, t, m) = self.row(w, pad);
            inputs.extend(i);
            targets.extend(t);
            mask.extend(m);
        }
        Batch { batch_size: windows.len(), seq_len: self.seq_len, inputs, targets, mask: Some(mask) }
    }
}

pub struct SftData {
    pub train: Packed,
    pub val: Packed,
    pad: u32,
}

fn held_out(i: usize, c: &Conversation, seed: u64, fraction: f64) -> bool {
    let text: String = c.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\u{1}");
    let h = jarip_ledger::sha256_bytes(format!("{seed}:{i}:{text}").as_bytes());
    let x = u64::from_str_radix(&h[..16], 16).unwrap() as f64 / u64::MAX as f64;
    x < fraction
}

impl SftData {
    pub fn new(tok: &Tokenizer, convs: &[Conversation], opts: &SftOptions) -> Result<Self> {
        if opts.seq_len < 2 {
            bail!("seq_len must be at least 2");
        }
        let (mut train, mut val): (Vec<&Conversation>, Vec<&Conversation>) = (vec![], vec![]);
        for (i, c) in convs.iter().enumerate() {
            if held_out(i, c, opts.seed, opts.val_fraction) {
                val.push(c);
            } else {
                train.push(c);
            }
        }
        if val.is_empty() && opts.val_fraction > 0.0 && train.len() > 1 {
            val.push(train.pop().unwrap());
        }
        let train = Packed::build(tok, &train, opts.seq_len)?;
        if train.windows.is_empty() {
            bail!("no training conversation has an assistant token");
        }
        Ok(Self { train, val: Packed::build(tok, &val, opts.seq_len)?, pad: tok.pad_id() })
    }

    /// The next training batch from `state` (advanced), in a seeded per-epoch order.
    pub fn next_batch(&self, state: &mut SamplerState, batch_size: usize) -> Batch {
        let n = self.train.windows.len() as u64;
        let mut picks = Vec::with_capacity(batch_size);
        while picks.len() < batch_size {
            if state.position >= n {
                state.epoch += 1;
                state.position = 0;
            }
            let order = epoch_order(n, state.seed, state.epoch);
            while picks.len() < batch_size && state.position < n {
                picks.push(order[state.position as usize] as usize);
                state.position += 1;
            }
        }
        self.train.batch(&picks, self.pad)
    }

    /// The validation windows in order, `batch_size` at a time.
    pub fn val_batches(&self, batch_size: usize) -> Vec<Batch> {
        let idx: Vec<usize> = (0..self.val.windows.len()).collect();
        idx.chunks(batch_size.max(1)).map(|c| self.val.batch(c, self.pad)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jarip_tokenizer::{Message, Role};

    fn setup() -> (Tokenizer, Vec<Conversation>) {
        let docs = (0..50).map(|i| format!("질문 {i}: 대한민국은 민주공화국이다. answer number {i} is here."));
        let tok = jarip_tokenizer::train(docs, &jarip_tokenizer::TrainConfig { vocab_size: 400, ..Default::default() })
            .unwrap();
        let convs = (0..40)
            .map(|i| Conversation {
                messages: vec![
                    Message::new(Role::User, format!("질문 {i}")),
                    Message::new(Role::Assistant, format!("answer number {i}")),
                ],
            })
            .collect();
        (tok, convs)
    }

    #[test]
    fn only_assistant_tokens_are_counted() {
        let (tok, convs) = setup();
        let data = SftData::new(&tok, &convs, &SftOptions { seq_len: 16, val_fraction: 0.1, seed: 1 }).unwrap();
        assert!(!data.val.windows.is_empty());
        assert_eq!(data.train.conversations + data.val.conversations, convs.len());
        let end = tok.special_id("<|end|>").unwrap();
        let mut state = SamplerState { seed: 5, epoch: 0, position: 0 };
        let b = data.next_batch(&mut state, 4);
        let mask = b.mask.as_ref().unwrap();
        let counted: Vec<u32> = b.targets.iter().zip(mask).filter(|(_, &m)| m).map(|(&t, _)| t).collect();
        let text = String::from_utf8_lossy(&tok.decode_bytes(&counted)).to_string();
        assert!(!text.contains("질문") && !text.contains("<|user|>") && !text.contains("<|assistant|>"), "{text}");
        assert!(counted.contains(&end), "the closing <|end|> is a target");
        // Every assistant token of the training conversations is counted exactly once per epoch.
        let assistant_tokens: usize = convs
            .iter()
            .map(|c| tok.render_chat(&c.messages, false).unwrap().mask.iter().filter(|&&m| m).count())
            .sum();
        assert_eq!(data.train.target_tokens + data.val.target_tokens, assistant_tokens);
    }

    #[test]
    fn batches_are_deterministic_and_resumable() {
        let (tok, convs) = setup();
        let data = SftData::new(&tok, &convs, &SftOptions { seq_len: 16, val_fraction: 0.1, seed: 1 }).unwrap();
        let mut a = SamplerState { seed: 9, epoch: 0, position: 0 };
        let first: Vec<Vec<u32>> = (0..5).map(|_| data.next_batch(&mut a, 3).inputs).collect();
        let saved = a;
        let more: Vec<Vec<u32>> = (0..5).map(|_| data.next_batch(&mut a, 3).inputs).collect();
        let mut b = SamplerState { seed: 9, epoch: 0, position: 0 };
        let again: Vec<Vec<u32>> = (0..5).map(|_| data.next_batch(&mut b, 3).inputs).collect();
        assert_eq!(first, again);
        let mut resumed = saved;
        let more2: Vec<Vec<u32>> = (0..5).map(|_| data.next_batch(&mut resumed, 3).inputs).collect();
        assert_eq!(more, more2);
    }
}
