//! Token shards: documents tokenized into flat binary files for pretraining.
//!
//! # Directory
//! `train-00000.bin`, `train-00001.bin`, ..., `val-00000.bin`, ..., and `manifest.json`
//! (kind `shards`; settings hold the format version, dtype, vocabulary size, BOS id, tokenizer
//! SHA-256, split seed and fraction, per-split documents/tokens/text bytes/shard names, and
//! `merkle_root`: the Merkle root of the shard files' SHA-256, train shards then val shards, in
//! name order). Written as an [`AtomicDir`]: on error nothing is left behind; an existing directory
//! is replaced only if it is empty or itself a shard directory.
//!
//! # Shard file (all integers little-endian)
//! ```text
//! offset size  field
//!      0    8  magic b"JARIPTOK"
//!      8    4  format version (u32) = 1
//!     12    4  dtype code (u32): 2 = u16 tokens, 4 = u32 tokens (bytes per token)
//!     16    8  token count (u64)
//!     24    8  document count (u64)
//!     32   32  SHA-256 of the tokenizer.json, raw bytes
//!     64    8  UTF-8 bytes of the documents' text in this shard (u64; for bits per byte)
//!     72    8  vocabulary size (u64)
//!     80    4  split (u32): 0 = train, 1 = val
//!     84    4  shard index within its split (u32)
//!     88   32  reserved, zero
//!    120    8  header checksum: first 8 bytes of SHA-256 of bytes 0..120
//!    128       tokens: token count × dtype bytes
//!      …       document index: document count × u64, the token position (within this shard) at
//!              which each document starts; every document starts with `<|bos|>`
//! ```
//! File size is therefore exactly `128 + tokens × dtype + documents × 8`.
//!
//! # Rules
//! - u16 tokens when every id fits (`vocab_size ≤ 65536`), else u32.
//! - Each document is written as `<|bos|>` followed by its tokens; documents never span shards.
//!   A shard is closed once it holds at least `tokens_per_shard` tokens.
//! - Validation is held out by document: a document goes to `val` when a seeded hash of its text,
//!   as a fraction of 2^64, is below `val_fraction` (so identical documents share a split).
//!   When `val_fraction > 0` and no document was drawn, the train document with the lowest hash
//!   is moved to val (provided at least one other document remains for train); it is held back
//!   while reading and written last, so small corpora always get a validation split.
//! - Empty documents are skipped.

use crate::encoder::TokenEncoder;
use crate::ingest::DocumentSource;
use crate::prepare::for_each_batch;
use anyhow::{bail, ensure, Context, Result};
use jarip_ledger::{merkle_root, AtomicDir, FileRef, Manifest};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const SHARD_MAGIC: &[u8; 8] = b"JARIPTOK";
pub const SHARD_FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 128;
pub const SHARDS_KIND: &str = "shards";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// u16 when every id of a vocabulary this size fits.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
    pub fn code(self) -> u32 {
        self.bytes() as u32
    }
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(Dtype::U16),
            4 => Some(Dtype::U32),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
    pub fn code(self) -> u32 {
        match self {
            Split::Train => 0,
            Split::Val => 1,
        }
    }
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Split::Train),
            1 => Some(Split::Val),
            _ => None,
        }
    }
    pub fn file_name(self, index: u32) -> String {
        format!("{}-{index:05}.bin", self.name())
    }
}

/// The fixed 128-byte header at the start of every shard file (layout in the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub dtype: Dtype,
    pub tokens: u64,
    pub documents: u64,
    pub tokenizer_sha256: [u8; 32],
    pub text_bytes: u64,
    pub vocab_size: u64,
    pub split: Split,
    pub index: u32,
}

fn header_checksum(bytes: &[u8]) -> [u8; 8] {
    Sha256::digest(&bytes[..120])[..8].try_into().expect("8 bytes")
}

impl ShardHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(SHARD_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.dtype.code().to_le_bytes());
        b[16..24].copy_from_slice(&self.tokens.to_le_bytes());
        b[24..32].copy_from_slice(&self.documents.to_le_bytes());
        b[32..64].copy_from_slice(&self.tokenizer_sha256);
        b[64..72].copy_from_slice(&self.text_bytes.to_le_bytes());
        b[72..80].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[80..84].copy_from_slice(&self.split.code().to_le_bytes());
        b[84..88].copy_from_slice(&self.index.to_le_bytes());
        let sum = header_checksum(&b);
        b[120..128].copy_from_slice(&sum);
        b
    }

    /// Parses and checks a header; errors name `file`.
    pub fn parse(b: &[u8], file: &Path) -> Result<Self> {
        let f = file.display();
        if b.len() < HEADER_LEN {
            bail!("{f}: truncated: {} bytes, shorter than the {HEADER_LEN}-byte shard header", b.len());
        }
        if &b[0..8] != SHARD_MAGIC {
            bail!("{f} is not a jarip shard (bad magic)");
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != SHARD_FORMAT_VERSION {
            bail!("{f}: unknown shard format version {version} (this build reads version {SHARD_FORMAT_VERSION})");
        }
        if b[120..128] != header_checksum(b) {
            bail!("{f}: shard header checksum mismatch (corrupt header)");
        }
        let dtype = Dtype::from_code(u32_at(12)).with_context(|| format!("{f}: unknown dtype code {}", u32_at(12)))?;
        let split = Split::from_code(u32_at(80)).with_context(|| format!("{f}: unknown split code {}", u32_at(80)))?;
        Ok(Self {
            version,
            dtype,
            tokens: u64_at(16),
            documents: u64_at(24),
            tokenizer_sha256: b[32..64].try_into().expect("32 bytes"),
            text_bytes: u64_at(64),
            vocab_size: u64_at(72),
            split,
            index: u32_at(84),
        })
    }

    /// The exact file size this header implies.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.tokens * self.dtype.bytes() as u64 + self.documents * 8
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardOptions {
    /// A shard is closed once it holds at least this many tokens.
    pub tokens_per_shard: u64,
    /// Share of documents held out for validation.
    pub val_fraction: f64,
    /// Seed of the train/val assignment.
    pub seed: u64,
    /// Documents are read and encoded in batches of about this many bytes.
    pub batch_bytes: usize,
    /// Training documents written mostly in Hangul go into the train split this many times, so
    /// a corpus where Korean is scarce (1.5 % of the demo's tokens) still teaches it; validation is not
    /// repeated. 1: no repetition.
    #[serde(default = "one")]
    pub hangul_repeat: u32,
}

fn one() -> u32 {
    1
}

/// Whether at least 30 % of a document's letters are Hangul (syllables or jamo).
pub fn mostly_hangul(text: &str) -> bool {
    let (mut letters, mut hangul) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        hangul += usize::from(crate::script::is_hangul(c));
    }
    letters > 0 && hangul * 10 >= letters * 3
}

impl Default for ShardOptions {
    fn default() -> Self {
        Self { tokens_per_shard: 100_000_000, val_fraction: 0.005, seed: 0, batch_bytes: 8 << 20, hangul_repeat: 1 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub documents: u64,
    /// Tokens written, BOS included.
    pub tokens: u64,
    /// UTF-8 bytes of the documents' text.
    pub text_bytes: u64,
    pub shards: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub dtype: Dtype,
    pub vocab_size: usize,
    pub bos_id: u32,
    pub tokenizer_sha256: String,
    pub train: SplitSummary,
    pub val: SplitSummary,
    pub empty_skipped: u64,
    pub merkle_root: String,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
}

struct OpenShard {
    path: PathBuf,
    file: BufWriter<File>,
    tokens: u64,
    text_bytes: u64,
    doc_starts: Vec<u64>,
}

/// Writes the shards of one split, rolling to a new file past `tokens_per_shard`.
struct SplitWriter {
    dir: PathBuf,
    split: Split,
    dtype: Dtype,
    vocab_size: u64,
    tokenizer_sha256: [u8; 32],
    tokens_per_shard: u64,
    current: Option<OpenShard>,
    summary: SplitSummary,
    buf: Vec<u8>,
}

impl SplitWriter {
    fn write_doc(&mut self, bos: u32, tokens: &[u32], text_bytes: u64) -> Result<()> {
        if self.current.as_ref().is_some_and(|s| s.tokens >= self.tokens_per_shard) {
            self.close()?;
        }
        if self.current.is_none() {
            let name = self.split.file_name(self.summary.shards.len() as u32);
            let path = self.dir.join(&name);
            let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut file = BufWriter::with_capacity(1 << 20, f);
            file.write_all(&[0u8; HEADER_LEN]).with_context(|| format!("cannot write {}", path.display()))?;
            self.current = Some(OpenShard { path, file, tokens: 0, text_bytes: 0, doc_starts: vec![] });
            self.summary.shards.push(name);
        }
        let shard = self.current.as_mut().expect("opened above");
        self.buf.clear();
        for &t in std::iter::once(&bos).chain(tokens) {
            match self.dtype {
                Dtype::U16 => {
                    let t =
                        u16::try_from(t).with_context(|| format!("token id {t} does not fit the u16 shard dtype"))?;
                    self.buf.extend_from_slice(&t.to_le_bytes());
                }
                Dtype::U32 => self.buf.extend_from_slice(&t.to_le_bytes()),
            }
        }
        shard.file.write_all(&self.buf).with_context(|| format!("cannot write {}", shard.path.display()))?;
        shard.doc_starts.push(shard.tokens);
        let n = tokens.len() as u64 + 1;
        shard.tokens += n;
        shard.text_bytes += text_bytes;
        self.summary.documents += 1;
        self.summary.tokens += n;
        self.summary.text_bytes += text_bytes;
        Ok(())
    }

    /// Appends the document index and fills in the header.
    fn close(&mut self) -> Result<()> {
        let Some(mut s) = self.current.take() else { return Ok(()) };
        let ctx = || format!("cannot write {}", s.path.display());
        let mut index = Vec::with_capacity(s.doc_starts.len() * 8);
        for d in &s.doc_starts {
            index.extend_from_slice(&d.to_le_bytes());
        }
        s.file.write_all(&index).with_context(ctx)?;
        let header = ShardHeader {
            version: SHARD_FORMAT_VERSION,
            dtype: self.dtype,
            tokens: s.tokens,
            documents: s.doc_starts.len() as u64,
            tokenizer_sha256: self.tokenizer_sha256,
            text_bytes: s.text_bytes,
            vocab_size: self.vocab_size,
            split: self.split,
            index: self.summary.shards.len() as u32 - 1,
        };
        s.file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        s.file.write_all(&header.to_bytes()).with_context(ctx)?;
        s.file.flush().with_context(ctx)?;
        Ok(())
    }
}

/// Seeded 64-bit hash of a document's text: decides its split.
fn split_hash(seed: u64, text: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(text.as_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// A train document kept out of the writers until we know whether val got any document.
struct HeldBack {
    hash: u64,
    tokens: Vec<u32>,
    text_bytes: u64,
    /// Times the document goes to train.
    copies: u32,
}

/// Tokenizes every document of `source` into `out_dir` (format in the module doc).
pub fn write_shards<E: TokenEncoder + ?Sized>(
    tokenizer: &E,
    source: &DocumentSource,
    out_dir: &Path,
    opts: &ShardOptions,
) -> Result<ShardSummary> {
    let start = Instant::now();
    ensure!((0.0..1.0).contains(&opts.val_fraction), "val_fraction must be in [0, 1), got {}", opts.val_fraction);
    ensure!(opts.tokens_per_shard > 0, "tokens_per_shard must be positive");
    let sha_hex = tokenizer.sha256();
    let sha: [u8; 32] = hex::decode(&sha_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("tokenizer sha256 {sha_hex:?} is not 64 hex digits"))?;
    let vocab_size = tokenizer.vocab_size();
    let dtype = Dtype::for_vocab(vocab_size);
    let bos = tokenizer.bos_id();
    crate::prepare::check_replaceable(out_dir, SHARDS_KIND)?;
    let dir = AtomicDir::create(out_dir)?;
    let writer = |split| SplitWriter {
        dir: dir.path().to_path_buf(),
        split,
        dtype,
        vocab_size: vocab_size as u64,
        tokenizer_sha256: sha,
        tokens_per_shard: opts.tokens_per_shard,
        current: None,
        summary: SplitSummary::default(),
        buf: Vec::new(),
    };
    let (mut train, mut val) = (writer(Split::Train), writer(Split::Val));
    // Hash below this is val; computed in u128 so that fractions near 1 do not overflow.
    let val_cut = (opts.val_fraction * 2f64.powi(64)) as u128;
    let mut held: Option<HeldBack> = None;
    let mut empty_skipped = 0u64;

    for_each_batch(source, opts.batch_bytes, |batch| {
        let texts: Vec<&str> = batch.iter().map(String::as_str).filter(|t| !t.is_empty()).collect();
        empty_skipped += (batch.len() - texts.len()) as u64;
        let hashes: Vec<u64> = texts.par_iter().map(|t| split_hash(opts.seed, t)).collect();
        let encoded = tokenizer.encode_batch(&texts);
        ensure!(
            encoded.len() == texts.len(),
            "tokenizer returned {} encodings for {} texts",
            encoded.len(),
            texts.len()
        );
        for ((text, hash), tokens) in texts.iter().zip(hashes).zip(encoded) {
            let text_bytes = text.len() as u64;
            let copies = if opts.hangul_repeat > 1 && mostly_hangul(text) { opts.hangul_repeat } else { 1 };
            let to_train = |w: &mut SplitWriter, tokens: &[u32], text_bytes: u64, copies: u32| -> Result<()> {
                for _ in 0..copies {
                    w.write_doc(bos, tokens, text_bytes)?;
                }
                Ok(())
            };
            if (hash as u128) < val_cut {
                val.write_doc(bos, &tokens, text_bytes)?;
                if let Some(h) = held.take() {
                    to_train(&mut train, &h.tokens, h.text_bytes, h.copies)?;
                }
            } else if opts.val_fraction > 0.0 && val.summary.documents == 0 {
                match &held {
                    Some(h) if h.hash <= hash => to_train(&mut train, &tokens, text_bytes, copies)?,
                    _ => {
                        if let Some(h) = held.replace(HeldBack { hash, tokens, text_bytes, copies }) {
                            to_train(&mut train, &h.tokens, h.text_bytes, h.copies)?;
                        }
                    }
                }
            } else {
                to_train(&mut train, &tokens, text_bytes, copies)?;
            }
        }
        Ok(())
    })?;
    if let Some(h) = held.take() {
        if val.summary.documents == 0 && train.summary.documents > 0 {
            val.write_doc(bos, &h.tokens, h.text_bytes)?;
        } else {
            for _ in 0..h.copies {
                train.write_doc(bos, &h.tokens, h.text_bytes)?;
            }
        }
    }
    train.close()?;
    val.close()?;
    ensure!(
        train.summary.documents > 0,
        "no training documents from {} ({} went to val, {} empty)",
        source_names(source),
        val.summary.documents,
        empty_skipped
    );

    let inputs = source.files().iter().map(|f| FileRef::of_file(&f.path)).collect::<Result<Vec<_>>>()?;
    let mut manifest = Manifest::for_dir(SHARDS_KIND, dir.path(), inputs, serde_json::Value::Null)?;
    let leaves: Vec<String> = train
        .summary
        .shards
        .iter()
        .chain(&val.summary.shards)
        .map(|n| manifest.files.get(n).map(|f| f.sha256.clone()).with_context(|| format!("{n} missing from manifest")))
        .collect::<Result<_>>()?;
    let root = merkle_root(&leaves);
    let elapsed_s = start.elapsed().as_secs_f64();
    let total_tokens = (train.summary.tokens + val.summary.tokens) as f64;
    let summary = ShardSummary {
        dtype,
        vocab_size,
        bos_id: bos,
        tokenizer_sha256: sha_hex,
        train: train.summary,
        val: val.summary,
        empty_skipped,
        merkle_root: root,
        elapsed_s,
        tokens_per_s: if elapsed_s > 0.0 { total_tokens / elapsed_s } else { 0.0 },
    };
    manifest.settings = serde_json::json!({
        "format_version": SHARD_FORMAT_VERSION,
        "dtype": summary.dtype,
        "vocab_size": summary.vocab_size,
        "bos_id": summary.bos_id,
        "tokenizer_sha256": summary.tokenizer_sha256,
        "val_fraction": opts.val_fraction,
        "seed": opts.seed,
        "tokens_per_shard": opts.tokens_per_shard,
        "train": summary.train,
        "val": summary.val,
        "empty_skipped": summary.empty_skipped,
        "merkle_root": summary.merkle_root,
    });
    manifest.write(dir.path())?;
    dir.commit()?;
    Ok(summary)
}

fn source_names(source: &DocumentSource) -> String {
    source.files().iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
}
