//! Reading shard directories: validation, token access, and batch sampling.
//!
//! [`ShardSet::open`] memory-maps every `train-*.bin` / `val-*.bin` and checks each header (size,
//! magic, version, checksum, split and index against the name, one dtype and tokenizer for all,
//! optionally the expected tokenizer hash); shard indexes must run 0, 1, 2, ... with no gap, and
//! when a `manifest.json` is present every shard it lists must be there.
//!
//! # Training windows
//! Each train shard of `n` tokens is cut into `⌊(n−1)/seq_len⌋` windows of `seq_len + 1` tokens
//! with stride `seq_len`: window `i` starts at `i·seq_len`; inputs are its first `seq_len` tokens and
//! targets the last `seq_len`, so each token is a target at most once per epoch. Windows never
//! cross shards. [`BatchSampler`] visits all windows of all train shards once per epoch in an
//! order shuffled (Fisher–Yates, ChaCha8 seeded by `seed`, stream = epoch), and its position is
//! a [`SamplerState`] that can be saved and restored to resume exactly.
//!
//! # Validation windows
//! [`ShardSet::val_batches`] walks the val shards in order with the same windows, then adds one
//! window per shard for the tail: aligned to the shard's end, with [`Batch::mask`] set only on
//! targets not yet covered (or, for a shard shorter than `seq_len + 1`, the whole shard padded
//! with zeros). Every val token except each shard's first (a BOS, never a target) is thus a
//! counted target exactly once, which bits-per-byte needs. The last batch may have fewer rows.

use crate::shard::{Dtype, ShardHeader, Split, HEADER_LEN, SHARDS_KIND};
use anyhow::{bail, ensure, Context, Result};
use jarip_kernels::mmap::Mmap;
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One shard as described by its header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardInfo {
    pub path: PathBuf,
    pub split: Split,
    pub index: u32,
    pub tokens: u64,
    pub documents: u64,
    pub text_bytes: u64,
}

/// Totals of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SplitInfo {
    pub shards: usize,
    pub tokens: u64,
    pub documents: u64,
    /// UTF-8 bytes of the split's text (for bits per byte).
    pub text_bytes: u64,
}

struct Shard {
    info: ShardInfo,
    map: Mmap,
}

impl Shard {
    fn token_bytes(&self, dtype: Dtype) -> &[u8] {
        &self.map[HEADER_LEN..HEADER_LEN + self.info.tokens as usize * dtype.bytes()]
    }
}

/// A validated, memory-mapped shard directory.
pub struct ShardSet {
    dir: PathBuf,
    dtype: Dtype,
    vocab_size: u64,
    tokenizer_sha256: String,
    train: Vec<Shard>,
    val: Vec<Shard>,
}

fn parse_shard_name(name: &str) -> Option<(Split, u32)> {
    let (split, rest) = if let Some(r) = name.strip_prefix("train-") {
        (Split::Train, r)
    } else {
        (Split::Val, name.strip_prefix("val-")?)
    };
    let digits = rest.strip_suffix(".bin")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((split, digits.parse().ok()?))
}

impl ShardSet {
    /// Opens and validates `dir`; with `expected_tokenizer_sha`, every shard must carry that hash.
    pub fn open(dir: &Path, expected_tokenizer_sha: Option<&str>) -> Result<Self> {
        let mut found: Vec<(Split, u32, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot list shard directory {}", dir.display()))? {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            if let Some((split, index)) = parse_shard_name(&e.file_name().to_string_lossy()) {
                found.push((split, index, e.path()));
            }
        }
        found.sort_by_key(|a| (a.0.code(), a.1));
        if !found.iter().any(|f| f.0 == Split::Train) {
            bail!("{}: no train shards (train-00000.bin, ...)", dir.display());
        }
        if dir.join(jarip_ledger::manifest::MANIFEST_FILE).exists() {
            let m = jarip_ledger::Manifest::read(dir)?;
            ensure!(m.kind == SHARDS_KIND, "{}: manifest kind is {:?}, not {SHARDS_KIND:?}", dir.display(), m.kind);
            let present: BTreeSet<String> =
                found.iter().map(|f| f.2.file_name().unwrap_or_default().to_string_lossy().to_string()).collect();
            for name in m.files.keys().filter(|n| parse_shard_name(n).is_some()) {
                ensure!(present.contains(name), "{}: shard {name} listed in the manifest is missing", dir.display());
            }
        }

        let mut set = ShardSet {
            dir: dir.to_path_buf(),
            dtype: Dtype::U16,
            vocab_size: 0,
            tokenizer_sha256: String::new(),
            train: vec![],
            val: vec![],
        };
        let mut first: Option<(PathBuf, ShardHeader)> = None;
        for (split, index, path) in found {
            let shard = open_shard(&path, split, index)?;
            let header = shard.1;
            let sha = hex::encode(header.tokenizer_sha256);
            if let Some(want) = expected_tokenizer_sha {
                ensure!(
                    sha.eq_ignore_ascii_case(want),
                    "{} was made with tokenizer {sha}, not the expected tokenizer {want}",
                    path.display()
                );
            }
            match &first {
                None => {
                    set.dtype = header.dtype;
                    set.vocab_size = header.vocab_size;
                    set.tokenizer_sha256 = sha;
                    first = Some((path.clone(), header.clone()));
                }
                Some((p0, h0)) => ensure!(
                    h0.dtype == header.dtype
                        && h0.tokenizer_sha256 == header.tokenizer_sha256
                        && h0.vocab_size == header.vocab_size,
                    "{}: dtype/tokenizer differ from {}",
                    path.display(),
                    p0.display()
                ),
            }
            let list = if split == Split::Train { &mut set.train } else { &mut set.val };
            ensure!(
                list.len() as u32 == index,
                "{}: shard {} of the {} split is missing",
                dir.display(),
                split.file_name(list.len() as u32),
                split.name()
            );
            list.push(shard.0);
        }
        Ok(set)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    pub fn vocab_size(&self) -> u64 {
        self.vocab_size
    }
    pub fn tokenizer_sha256(&self) -> &str {
        &self.tokenizer_sha256
    }

    fn shards_of(&self, split: Split) -> &[Shard] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    pub fn shards(&self, split: Split) -> Vec<ShardInfo> {
        self.shards_of(split).iter().map(|s| s.info.clone()).collect()
    }

    pub fn split_info(&self, split: Split) -> SplitInfo {
        let shards = self.shards_of(split);
        SplitInfo {
            shards: shards.len(),
            tokens: shards.iter().map(|s| s.info.tokens).sum(),
            documents: shards.iter().map(|s| s.info.documents).sum(),
            text_bytes: shards.iter().map(|s| s.info.text_bytes).sum(),
        }
    }

    pub fn train_tokens(&self) -> u64 {
        self.split_info(Split::Train).tokens
    }
    pub fn val_tokens(&self) -> u64 {
        self.split_info(Split::Val).tokens
    }

    /// Appends tokens `start..start+len` of one shard to `out` (panics when out of range).
    pub fn read_tokens(&self, split: Split, shard: usize, start: u64, len: usize, out: &mut Vec<u32>) {
        let s = &self.shards_of(split)[shard];
        let w = self.dtype.bytes();
        let bytes = &s.token_bytes(self.dtype)[start as usize * w..(start as usize + len) * w];
        match self.dtype {
            Dtype::U16 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            Dtype::U32 => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
    }

    /// All tokens of one shard.
    pub fn shard_tokens(&self, split: Split, shard: usize) -> Vec<u32> {
        let n = self.shards_of(split)[shard].info.tokens;
        let mut out = Vec::with_capacity(n as usize);
        self.read_tokens(split, shard, 0, n as usize, &mut out);
        out
    }

    /// Token positions at which the documents of one shard start.
    pub fn doc_starts(&self, split: Split, shard: usize) -> Vec<u64> {
        let s = &self.shards_of(split)[shard];
        let from = HEADER_LEN + s.info.tokens as usize * self.dtype.bytes();
        s.map[from..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    }

    /// A training sampler starting at epoch 0.
    pub fn sampler(&self, seq_len: usize, batch_size: usize, seed: u64) -> Result<BatchSampler<'_>> {
        BatchSampler::resume(self, seq_len, batch_size, SamplerState { seed, epoch: 0, position: 0 })
    }

    /// Validation batches in order (see the module doc).
    pub fn val_batches(&self, seq_len: usize, batch_size: usize) -> ValBatches<'_> {
        let mut windows = Vec::new();
        for (i, s) in self.val.iter().enumerate() {
            let n = s.info.tokens;
            let l = seq_len as u64;
            if n < 2 || seq_len == 0 {
                continue;
            }
            let full = (n - 1) / l;
            for w in 0..full {
                windows.push(ValWindow { shard: i, start: w * l, count_from: 0 });
            }
            let covered = full * l; // targets 1..=covered are counted
            if covered < n - 1 {
                let start = (n - 1).saturating_sub(l);
                // Row position j targets token start+j+1; count those past `covered`.
                windows.push(ValWindow { shard: i, start, count_from: (covered - start) as usize });
            }
        }
        ValBatches { set: self, seq_len, batch_size: batch_size.max(1), windows, next: 0 }
    }
}

fn open_shard(path: &Path, split: Split, index: u32) -> Result<(Shard, ShardHeader)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Shard files are written once into a temporary directory and never modified after the
    // directory is renamed into place; nothing in jarip writes to them while mapped.
    let map = jarip_kernels::mmap::map_readonly(&file, path)?;
    let header = ShardHeader::parse(&map, path)?;
    let len = map.len() as u64;
    ensure!(
        len == header.file_len(),
        "{}: size mismatch: the header describes {} bytes ({} tokens, {} documents), the file has {len} (truncated or corrupt)",
        path.display(),
        header.file_len(),
        header.tokens,
        header.documents
    );
    ensure!(
        header.split == split && header.index == index,
        "{}: header says {} shard {}, which does not match the file name",
        path.display(),
        header.split.name(),
        header.index
    );
    let info = ShardInfo {
        path: path.to_path_buf(),
        split,
        index,
        tokens: header.tokens,
        documents: header.documents,
        text_bytes: header.text_bytes,
    };
    Ok((Shard { info, map }, header))
}

/// `batch_size × seq_len` inputs and targets, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// Which targets count toward the loss; `None` means all of them.
    pub mask: Option<Vec<bool>>,
}

impl Batch {
    /// Sequences `start..start + n` as a batch of their own.
    pub fn rows(&self, start: usize, n: usize) -> Batch {
        let (a, b) = (start * self.seq_len, (start + n) * self.seq_len);
        Batch {
            batch_size: n,
            seq_len: self.seq_len,
            inputs: self.inputs[a..b].to_vec(),
            targets: self.targets[a..b].to_vec(),
            mask: self.mask.as_ref().map(|m| m[a..b].to_vec()),
        }
    }

    /// Number of targets that count toward the loss.
    pub fn counted_targets(&self) -> usize {
        self.mask.as_ref().map_or(self.targets.len(), |m| m.iter().filter(|&&b| b).count())
    }
}

/// Where a training sampler is: enough to resume exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Index of the next window in this epoch's order.
    pub position: u64,
}

/// Deterministic, resumable sampler over the train windows (see the module doc).
pub struct BatchSampler<'a> {
    set: &'a ShardSet,
    seq_len: usize,
    batch_size: usize,
    /// `prefix[i]` = number of windows in train shards before shard `i`; last entry = total.
    prefix: Vec<u64>,
    state: SamplerState,
    order: Vec<u64>,
}

/// Fisher–Yates with ChaCha8 (stream = epoch). Written out rather than `SliceRandom::shuffle`
/// so that the order depends only on ChaCha's output, not on a `rand` version's algorithm.
/// Public so that provenance can rebuild a recorded order (window indexes, as
/// [`BatchSampler::read_window`] numbers them).
pub fn epoch_order(windows: u64, seed: u64, epoch: u64) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<u64> = (0..windows).collect();
    for i in (1..order.len()).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

impl<'a> BatchSampler<'a> {
    /// A sampler positioned at `state` (use [`ShardSet::sampler`] to start from the beginning).
    pub fn resume(set: &'a ShardSet, seq_len: usize, batch_size: usize, state: SamplerState) -> Result<Self> {
        ensure!(seq_len > 0 && batch_size > 0, "seq_len and batch_size must be positive");
        let mut prefix = vec![0u64];
        for s in &set.train {
            let n = s.info.tokens;
            let w = if n > seq_len as u64 { (n - 1) / seq_len as u64 } else { 0 };
            prefix.push(prefix.last().expect("non-empty") + w);
        }
        let total = *prefix.last().expect("non-empty");
        ensure!(
            total > 0,
            "{}: the train split ({} tokens) has no window of seq_len + 1 = {} tokens within one shard",
            set.dir.display(),
            set.train_tokens(),
            seq_len + 1
        );
        ensure!(state.position <= total, "sampler position {} is past the {total} windows of an epoch", state.position);
        let order = epoch_order(total, state.seed, state.epoch);
        Ok(Self { set, seq_len, batch_size, prefix, state, order })
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn windows_per_epoch(&self) -> u64 {
        *self.prefix.last().expect("non-empty")
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Window `w`'s `seq_len + 1` tokens (windows numbered across train shards in shard order,
    /// as [`epoch_order`] permutes them) into `out`.
    pub fn read_window(&self, w: u64, out: &mut Vec<u32>) {
        let l = self.seq_len;
        let shard = self.prefix.partition_point(|&p| p <= w) - 1;
        let start = (w - self.prefix[shard]) * l as u64;
        out.clear();
        self.set.read_tokens(Split::Train, shard, start, l + 1, out);
    }

    /// The next batch; moves into the next epoch (reshuffled) when this one runs out.
    pub fn next_batch(&mut self) -> Batch {
        let (b, l) = (self.batch_size, self.seq_len);
        let mut inputs = Vec::with_capacity(b * l);
        let mut targets = Vec::with_capacity(b * l);
        let mut window = Vec::with_capacity(l + 1);
        for _ in 0..b {
            if self.state.position >= self.windows_per_epoch() {
                self.state.epoch += 1;
                self.state.position = 0;
                self.order = epoch_order(self.windows_per_epoch(), self.state.seed, self.state.epoch);
            }
            let w = self.order[self.state.position as usize];
            self.state.position += 1;
            self.read_window(w, &mut window);
            inputs.extend_from_slice(&window[..l]);
            targets.extend_from_slice(&window[1..]);
        }
        Batch { batch_size: b, seq_len: l, inputs, targets, mask: None }
    }
}

impl Iterator for BatchSampler<'_> {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

struct ValWindow {
    shard: usize,
    start: u64,
    /// Row positions before this one repeat targets already counted.
    count_from: usize,
}

/// Iterator over validation batches; see [`ShardSet::val_batches`].
pub struct ValBatches<'a> {
    set: &'a ShardSet,
    seq_len: usize,
    batch_size: usize,
    windows: Vec<ValWindow>,
    next: usize,
}

impl ValBatches<'_> {
    /// Number of windows (rows) over all batches.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }
}

impl Iterator for ValBatches<'_> {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.windows.len() {
            return None;
        }
        let l = self.seq_len;
        let rows = &self.windows[self.next..(self.next + self.batch_size).min(self.windows.len())];
        self.next += rows.len();
        let mut inputs = Vec::with_capacity(rows.len() * l);
        let mut targets = Vec::with_capacity(rows.len() * l);
        let mut mask = Vec::with_capacity(rows.len() * l);
        let mut window = Vec::with_capacity(l + 1);
        for r in rows {
            let n = self.set.val[r.shard].info.tokens;
            let len = (l as u64 + 1).min(n - r.start) as usize;
            window.clear();
            self.set.read_tokens(Split::Val, r.shard, r.start, len, &mut window);
            window.resize(l + 1, 0);
            inputs.extend_from_slice(&window[..l]);
            targets.extend_from_slice(&window[1..]);
            mask.extend((0..l).map(|j| j >= r.count_from && j + 1 < len));
        }
        Some(Batch { batch_size: rows.len(), seq_len: l, inputs, targets, mask: Some(mask) })
    }
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn row_shares_cover_the_batch_in_order() {
        let (b, l) = (6, 3);
        let batch = Batch {
            batch_size: b,
            seq_len: l,
            inputs: (0..18).collect(),
            targets: (100..118).collect(),
            mask: Some((0..18).map(|i| i % 4 != 0).collect()),
        };
        let parts: Vec<Batch> = (0..3).map(|r| batch.rows(r * 2, 2)).collect();
        assert_eq!(parts[1].inputs, vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(parts.iter().flat_map(|p| p.inputs.clone()).collect::<Vec<_>>(), batch.inputs);
        assert_eq!(parts.iter().flat_map(|p| p.targets.clone()).collect::<Vec<_>>(), batch.targets);
        let masks: Vec<bool> = parts.iter().flat_map(|p| p.mask.clone().unwrap()).collect();
        assert_eq!(Some(masks), batch.mask);
        assert_eq!(parts.iter().map(Batch::counted_targets).sum::<usize>(), batch.counted_targets());
        assert!(parts.iter().all(|p| (p.batch_size, p.seq_len) == (2, l)));
    }
}
