//! Fine-tuning data: conversations rendered with the chat template, packed into windows,
//! with a mask so that only assistant tokens count toward the loss.
//!
//! Conversations are concatenated (each opens with `<|bos|>`) into one stream of ids and
//! target flags, cut into windows of `seq_len + 1` with stride `seq_len` exactly as pretraining
//! windows are, so nothing is padded and nothing is dropped; windows with no assistant token
//! are skipped. Two held-out sets measure different things: conversations held out by item
//! (a seeded hash, `val_fraction`) are new items of forms the model trained on; conversations
//! held out by template (every conversation of some `kind/variant` forms, `template_fraction`
//! of each kind's variants when it has at least three) are question forms it never saw.

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
    /// Share of each kind's template variants held out whole (kinds with ≥ 3 variants).
    pub template_fraction: f64,
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
    /// Held out by item.
    pub val: Packed,
    /// Held out by template (empty when the conversations name no templates).
    pub val_template: Packed,
    /// The templates held out whole, sorted.
    pub held_out_templates: Vec<String>,
    pad: u32,
}

/// Which split a validation batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValSplit {
    Item,
    Template,
}

/// A seeded uniform number in [0, 1) from `key`.
fn unit_hash(key: &str) -> f64 {
    let h = jarip_ledger::sha256_bytes(key.as_bytes());
    u64::from_str_radix(&h[..16], 16).expect("hex") as f64 / u64::MAX as f64
}

/// The templates held out whole: per kind with at least three variants, the
/// `max(1, ⌊fraction · variants⌋)` variants that come first in a seeded order.
pub fn held_out_templates(convs: &[Conversation], seed: u64, fraction: f64) -> Vec<String> {
    let mut kinds: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
    for c in convs {
        if let (Some(t), Some(k)) = (c.template.as_deref(), c.kind()) {
            kinds.entry(k).or_default().insert(t);
        }
    }
    let mut out = Vec::new();
    if fraction <= 0.0 {
        return out;
    }
    for variants in kinds.values() {
        if variants.len() < 3 {
            continue;
        }
        let mut v: Vec<&str> = variants.iter().copied().collect();
        v.sort_by(|a, b| unit_hash(&format!("{seed}:{a}")).total_cmp(&unit_hash(&format!("{seed}:{b}"))));
        let n = ((fraction * v.len() as f64).floor() as usize).clamp(1, v.len() - 2);
        out.extend(v[..n].iter().map(|t| t.to_string()));
    }
    out.sort();
    out
}

fn held_out(i: usize, c: &Conversation, seed: u64, fraction: f64) -> bool {
    let text: String = c.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\u{1}");
    unit_hash(&format!("{seed}:{i}:{text}")) < fraction
}

impl SftData {
    pub fn new(tok: &Tokenizer, convs: &[Conversation], opts: &SftOptions) -> Result<Self> {
        if opts.seq_len < 2 {
            bail!("seq_len must be at least 2");
        }
        let held_templates = held_out_templates(convs, opts.seed, opts.template_fraction);
        let (mut train, mut val, mut val_t): (Vec<&Conversation>, Vec<&Conversation>, Vec<&Conversation>) =
            (vec![], vec![], vec![]);
        for (i, c) in convs.iter().enumerate() {
            if c.template.as_ref().is_some_and(|t| held_templates.binary_search(t).is_ok()) {
                val_t.push(c);
            } else if held_out(i, c, opts.seed, opts.val_fraction) {
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
        Ok(Self {
            train,
            val: Packed::build(tok, &val, opts.seq_len)?,
            val_template: Packed::build(tok, &val_t, opts.seq_len)?,
            held_out_templates: held_templates,
            pad: tok.pad_id(),
        })
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

    /// The windows of a held-out split in order, `batch_size` at a time.
    pub fn val_batches(&self, split: ValSplit, batch_size: usize) -> Vec<Batch> {
        let packed = match split {
            ValSplit::Item => &self.val,
            ValSplit::Template => &self.val_template,
        };
        let idx: Vec<usize> = (0..packed.windows.len()).collect();
        idx.chunks(batch_size.max(1)).map(|c| packed.batch(c, self.pad)).collect()
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
            .map(|i| {
                Conversation::new(vec![
                    Message::new(Role::User, format!("질문 {i}")),
                    Message::new(Role::Assistant, format!("answer number {i}")),
                ])
            })
            .collect();
        (tok, convs)
    }

    #[test]
    fn only_assistant_tokens_are_counted() {
        let (tok, convs) = setup();
        let data =
            SftData::new(&tok, &convs, &SftOptions { seq_len: 16, val_fraction: 0.1, seed: 1, template_fraction: 0.0 })
                .unwrap();
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
    fn whole_templates_are_held_out_and_never_trained_on() {
        let (tok, mut convs) = setup();
        // Kind `a` has five variants, kind `b` two (too few to hold one out), the rest none.
        for (i, c) in convs.iter_mut().enumerate().take(30) {
            c.template = Some(if i < 20 { format!("a/v{}", i % 5) } else { format!("b/v{}", i % 2) });
        }
        let opts = SftOptions { seq_len: 16, val_fraction: 0.1, seed: 3, template_fraction: 0.2 };
        let data = SftData::new(&tok, &convs, &opts).unwrap();
        assert_eq!(data.held_out_templates.len(), 1);
        assert!(data.held_out_templates[0].starts_with("a/"));
        assert_eq!(data.val_template.conversations, 4);
        assert_eq!(data.train.conversations + data.val.conversations + 4, convs.len());
        // Same seed, same choice; the training windows hold none of the held-out questions.
        assert_eq!(held_out_templates(&convs, 3, 0.2), data.held_out_templates);
        let v: usize = data.held_out_templates[0][3..].parse().unwrap();
        let held_q: Vec<String> = (0..20).filter(|i| i % 5 == v).map(|i| format!("질문 {i}")).collect();
        for (w, _) in &data.train.windows {
            let text = tok.decode(w);
            for q in &held_q {
                assert!(!text.contains(&format!("{q}<")), "{q} was trained on: {text}");
            }
        }
        assert!(!data.val_batches(ValSplit::Template, 4).is_empty());
        // No templates held out at fraction 0.
        let none = SftData::new(&tok, &convs, &SftOptions { template_fraction: 0.0, ..opts }).unwrap();
        assert!(none.held_out_templates.is_empty() && none.val_template.windows.is_empty());
    }

    #[test]
    fn batches_are_deterministic_and_resumable() {
        let (tok, convs) = setup();
        let data =
            SftData::new(&tok, &convs, &SftOptions { seq_len: 16, val_fraction: 0.1, seed: 1, template_fraction: 0.0 })
                .unwrap();
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
