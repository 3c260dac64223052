//! The byte-level BPE trainer.
//!
//! 1. Documents stream in; each batch is split into pre-token chunks in parallel (rayon) and
//!    only the chunk → count table is kept, never the text.
//! 2. Each distinct chunk becomes a word of byte ids with its count; an index maps every
//!    adjacent pair to its total count and the words that contain it.
//! 3. Merges: a max-heap of (count, pair) gives the best pair; entries are checked against the
//!    index when popped (lazy deletion), since counts change as merges happen. A merge touches
//!    only the words listed for its pair and updates the counts of the neighbouring pairs.
//!    Ties go to the smaller (left id, right id), so training is reproducible bit for bit.

use crate::{PreTokenizer, Preset, Tokenizer, TrainRecord, SPECIAL_TOKENS};
use anyhow::{bail, Result};
use jarip_ledger::FileRef;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Documents are counted in batches of about this many bytes.
const BATCH_BYTES: usize = 32 << 20;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Total vocabulary: 256 bytes + merges + the 7 special tokens.
    pub vocab_size: usize,
    pub preset: Preset,
    /// A pair seen fewer times than this is never merged (training may then stop early, with a
    /// smaller vocabulary than asked for).
    pub min_frequency: u64,
    /// The files the documents come from, recorded in the manifest.
    pub inputs: Vec<FileRef>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { vocab_size: 32768, preset: Preset::Jarip, min_frequency: 2, inputs: Vec::new() }
    }
}

/// Trains on `docs` (see [`Trainer`] to feed documents incrementally).
pub fn train(docs: impl Iterator<Item = String>, cfg: &TrainConfig) -> Result<Tokenizer> {
    let mut t = Trainer::new(cfg)?;
    for d in docs {
        t.push(d);
    }
    t.finish()
}

/// A trainer that takes documents one at a time and keeps only chunk counts.
pub struct Trainer {
    cfg: TrainConfig,
    pretok: PreTokenizer,
    counts: FxHashMap<Box<[u8]>, u64>,
    pending: Vec<String>,
    pending_bytes: usize,
    docs: u64,
    bytes: u64,
    started: Instant,
}

impl Trainer {
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        let min = 256 + SPECIAL_TOKENS.len();
        if cfg.vocab_size < min {
            bail!(
                "vocab size {} is too small: it must hold the 256 byte tokens and {} special tokens (at least {min})",
                cfg.vocab_size,
                SPECIAL_TOKENS.len()
            );
        }
        if cfg.vocab_size > u32::MAX as usize / 2 {
            bail!("vocab size {} is too large", cfg.vocab_size);
        }
        Ok(Self {
            cfg: cfg.clone(),
            pretok: PreTokenizer::from_preset(cfg.preset),
            counts: FxHashMap::default(),
            pending: Vec::new(),
            pending_bytes: 0,
            docs: 0,
            bytes: 0,
            started: Instant::now(),
        })
    }

    /// Adds one document.
    pub fn push(&mut self, doc: String) {
        self.docs += 1;
        self.bytes += doc.len() as u64;
        self.pending_bytes += doc.len();
        self.pending.push(doc);
        if self.pending_bytes >= BATCH_BYTES {
            self.count_pending();
        }
    }

    fn count_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let per = pending.len().div_ceil(rayon::current_num_threads() * 4).max(1);
        let pretok = &self.pretok;
        let partials: Vec<FxHashMap<&str, u64>> = pending
            .par_chunks(per)
            .map(|docs| {
                let mut m: FxHashMap<&str, u64> = FxHashMap::default();
                for d in docs {
                    pretok.for_each_piece(d, |p| *m.entry(p).or_insert(0) += 1);
                }
                m
            })
            .collect();
        for m in partials {
            for (k, v) in m {
                match self.counts.get_mut(k.as_bytes()) {
                    Some(c) => *c += v,
                    None => {
                        self.counts.insert(k.as_bytes().into(), v);
                    }
                }
            }
        }
    }

    /// Learns the merges and builds the tokenizer.
    pub fn finish(mut self) -> Result<Tokenizer> {
        self.count_pending();
        if self.counts.is_empty() {
            bail!("empty corpus: no text to train the tokenizer on ({} documents, all empty)", self.docs);
        }
        let unique_chunks = self.counts.len();
        let mut chunks: Vec<(Box<[u8]>, u64)> = std::mem::take(&mut self.counts).into_iter().collect();
        chunks.par_sort_unstable();
        let target = self.cfg.vocab_size - SPECIAL_TOKENS.len();
        let learned = learn_merges(chunks, target, self.cfg.min_frequency.max(1));
        let stopped_early = learned.tokens.len() < target;
        let settings = serde_json::json!({
            "vocab_size_requested": self.cfg.vocab_size,
            "min_frequency": self.cfg.min_frequency,
            "stopped_early": stopped_early,
            "training": {
                "bytes": self.bytes,
                "docs": self.docs,
                "unique_chunks": unique_chunks,
                "seconds": (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            },
        });
        let record = TrainRecord { inputs: self.cfg.inputs.clone(), settings };
        Tokenizer::build(self.cfg.preset.pattern(), learned.tokens, learned.merges, Some(record))
    }
}

struct Learned {
    tokens: Vec<Vec<u8>>,
    merges: Vec<(u32, u32, u32)>,
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[derive(Default)]
struct PairStat {
    count: i64,
    /// Words that contain (or once contained) the pair; checked again when merging.
    words: Vec<u32>,
}

/// Replaces every (a, b) in `word` (left to right, non-overlapping) by `z`, reporting the
/// count change of each neighbouring pair to `delta`. For a neighbour that was itself just
/// merged the transient pair cancels out, so the totals are exact.
fn merge_word(word: &mut Vec<u32>, scratch: &mut Vec<u32>, a: u32, b: u32, z: u32, mut delta: impl FnMut(u64, bool)) {
    scratch.clear();
    let w = &word[..];
    let mut i = 0;
    while i < w.len() {
        if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
            if let Some(&p) = scratch.last() {
                delta(key(p, a), false);
                delta(key(p, z), true);
            }
            if let Some(&n) = w.get(i + 2) {
                delta(key(b, n), false);
                delta(key(z, n), true);
            }
            scratch.push(z);
            i += 2;
        } else {
            scratch.push(w[i]);
            i += 1;
        }
    }
    std::mem::swap(word, scratch);
}

fn learn_merges(chunks: Vec<(Box<[u8]>, u64)>, target: usize, min_frequency: u64) -> Learned {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut token_ids: FxHashMap<Vec<u8>, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let counts: Vec<i64> = chunks.iter().map(|c| c.1 as i64).collect();
    let mut words: Vec<Vec<u32>> = chunks.into_iter().map(|(c, _)| c.iter().map(|&b| b as u32).collect()).collect();

    let mut pairs: FxHashMap<u64, PairStat> = FxHashMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let s = pairs.entry(key(p[0], p[1])).or_default();
            s.count += counts[w];
            if s.words.last() != Some(&(w as u32)) {
                s.words.push(w as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = pairs.iter().map(|(&k, s)| (s.count, Reverse(k))).collect();
    let mut merges = Vec::new();
    let mut scratch = Vec::new();
    let mut touched: Vec<u64> = Vec::new();
    while tokens.len() < target {
        let Some((c, Reverse(k))) = heap.pop() else { break };
        let current = pairs.get(&k).map_or(0, |s| s.count);
        if current <= 0 {
            continue;
        }
        if current != c {
            heap.push((current, Reverse(k)));
            continue;
        }
        if (c as u64) < min_frequency {
            break;
        }
        let (a, b) = ((k >> 32) as u32, k as u32);
        let mut bytes = tokens[a as usize].clone();
        bytes.extend_from_slice(&tokens[b as usize]);
        // Two different pairs can spell the same bytes; they share one id, as in HF.
        let z = *token_ids.entry(bytes).or_insert_with_key(|bytes| {
            tokens.push(bytes.clone());
            tokens.len() as u32 - 1
        });
        merges.push((a, b, z));
        let mut list = pairs.remove(&k).expect("popped pair is indexed").words;
        list.sort_unstable();
        list.dedup();
        touched.clear();
        for w in list {
            let n = counts[w as usize];
            let pairs = &mut pairs;
            let touched = &mut touched;
            merge_word(&mut words[w as usize], &mut scratch, a, b, z, |pk, add| {
                if pk == k {
                    return;
                }
                let s = pairs.entry(pk).or_default();
                if add {
                    s.count += n;
                    if s.words.last() != Some(&w) {
                        s.words.push(w);
                    }
                    touched.push(pk);
                } else {
                    s.count -= n;
                }
            });
        }
        touched.sort_unstable();
        touched.dedup();
        for &pk in &touched {
            if let Some(s) = pairs.get(&pk) {
                if s.count > 0 {
                    heap.push((s.count, Reverse(pk)));
                }
            }
        }
    }
    Learned { tokens, merges }
}
