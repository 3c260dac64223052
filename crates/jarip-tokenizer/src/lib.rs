//! jarip-tokenizer: the byte-level BPE tokenizer that jarip trains on the user's own corpus.
//!
//! This crate owns: the pre-tokenization split (named presets, `jarip` by default, with a
//! hand-written scanner for speed), the BPE trainer (parallel chunk counting, incremental pair
//! index with a lazy max-heap, deterministic ties), encoding (per-thread piece cache, rayon over
//! documents, any byte sequence round-trips), decoding (including a streaming UTF-8-safe
//! decoder), and the on-disk form: an HF-`tokenizers`-compatible `tokenizer.json` plus a
//! `manifest.json` recording what it was trained on. Ids: 0–255 are the bytes, then merges in
//! rank order, then the [`SPECIAL_TOKENS`] as the last ids.

#![forbid(unsafe_code)]

mod bytes_map;
pub mod chat;
pub mod corpus;
mod decode;
mod encode;
mod foreign;
mod hf_json;
mod jarip_scan;
mod pretokenize;
mod train;

pub use bytes_map::{bytes_to_unicode, unicode_to_bytes};
pub use chat::{Message, Rendered, Role};
pub use decode::StreamDecoder;
pub use pretokenize::{llama_cpp_pattern, PreTokenizer, Preset, JARIP_PATTERN};
pub use train::{train, TrainConfig, Trainer};

use anyhow::{bail, Context, Result};
use encode::MergeTable;
use jarip_ledger::FileRef;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Special tokens, in id order after the learned vocabulary.
pub const SPECIAL_TOKENS: [&str; 7] =
    ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"];

/// The file name of the HF-compatible tokenizer inside a tokenizer directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Compression of a text: how many bytes each token carries on average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub bytes: u64,
    pub tokens: u64,
    pub bytes_per_token: f64,
}

/// How a tokenizer was trained, for its manifest.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrainRecord {
    pub inputs: Vec<FileRef>,
    pub settings: serde_json::Value,
}

/// Cloning is cheap enough for an engine's copy and keeps every part, a foreign tokenizer's
/// specials and template included.
#[derive(Clone)]
pub struct Tokenizer {
    pretok: PreTokenizer,
    /// id → bytes (a special token's bytes are its text).
    tokens: Vec<Vec<u8>>,
    byte_ids: [u32; 256],
    merges: Vec<(u32, u32, u32)>,
    table: MergeTable,
    specials: Vec<(String, u32)>,
    json: String,
    sha256: String,
    /// Distinguishes tokenizers in the per-thread piece caches.
    instance: u64,
    record: Option<TrainRecord>,
    /// NFC before splitting (a foreign tokenizer's declared normalizer).
    nfc: bool,
    /// Pieces that are whole vocabulary entries (HF `ignore_merges`), if the tokenizer asks.
    whole: Option<rustc_hash::FxHashMap<Vec<u8>, u32>>,
    /// Set for a tokenizer jarip did not train (another model's): its own special tokens and
    /// chat template, in place of jarip's.
    foreign: Option<Box<foreign::Foreign>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pattern", &self.pretok.pattern())
            .field("sha256", &self.sha256)
            .finish()
    }
}

fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Tokenizer {
    fn from_parts(parts: hf_json::Parts, json: String, record: Option<TrainRecord>) -> Result<Self> {
        if parts.nfc || parts.ignore_merges {
            bail!("a normalizer or ignore_merges: not a tokenizer jarip trained (load another model's with Tokenizer::load_foreign)");
        }
        for sp in SPECIAL_TOKENS {
            if !parts.specials.iter().any(|(s, _)| s == sp) {
                bail!("special token {sp} is missing");
            }
        }
        Self::from_parts_any(parts, json, record, None)
    }

    fn from_parts_any(
        parts: hf_json::Parts,
        json: String,
        record: Option<TrainRecord>,
        foreign: Option<foreign::Foreign>,
    ) -> Result<Self> {
        let pretok = PreTokenizer::new(&parts.pattern)?;
        let mut byte_ids = [u32::MAX; 256];
        for (id, t) in parts.tokens.iter().enumerate() {
            if t.len() == 1 && !parts.specials.iter().any(|s| s.1 as usize == id) {
                byte_ids[t[0] as usize] = id as u32;
            }
        }
        if let Some(b) = byte_ids.iter().position(|&id| id == u32::MAX) {
            bail!("the vocabulary has no token for byte 0x{b:02x}: not a byte-level BPE");
        }
        let table = MergeTable::new(&parts.merges);
        let whole = parts.ignore_merges.then(|| {
            let mut m = rustc_hash::FxHashMap::default();
            for (id, t) in parts.tokens.iter().enumerate() {
                if !parts.specials.iter().any(|s| s.1 as usize == id) {
                    m.insert(t.clone(), id as u32);
                }
            }
            m
        });
        Ok(Self {
            pretok,
            tokens: parts.tokens,
            byte_ids,
            table,
            merges: parts.merges,
            specials: parts.specials,
            sha256: jarip_ledger::sha256_bytes(json.as_bytes()),
            json,
            instance: next_instance(),
            record,
            nfc: parts.nfc,
            whole,
            foreign: foreign.map(Box::new),
        })
    }

    /// Builds a tokenizer from learned tokens (ids 0–255 must be the bytes) and merges; the
    /// specials are appended as the last ids.
    pub(crate) fn build(
        pattern: &str,
        mut tokens: Vec<Vec<u8>>,
        merges: Vec<(u32, u32, u32)>,
        record: Option<TrainRecord>,
    ) -> Result<Self> {
        let mut specials = Vec::new();
        for sp in SPECIAL_TOKENS {
            if tokens.iter().any(|t| t == sp.as_bytes()) {
                bail!("the learned vocabulary already has a token {sp:?}");
            }
            specials.push((sp.to_string(), tokens.len() as u32));
            tokens.push(sp.as_bytes().to_vec());
        }
        let parts =
            hf_json::Parts { pattern: pattern.to_string(), tokens, merges, specials, nfc: false, ignore_merges: false };
        let json = hf_json::write(&parts);
        Self::from_parts(parts, json, record)
    }

    /// Loads `dir/tokenizer.json` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<Self> {
        let file: PathBuf = if path.is_dir() { path.join(TOKENIZER_FILE) } else { path.to_path_buf() };
        let json = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        Self::from_json(json).with_context(|| format!("{} is not a usable tokenizer", file.display()))
    }

    /// Parses tokenizer.json text.
    pub fn from_json(json: String) -> Result<Self> {
        let parts = hf_json::read(&json)?;
        Self::from_parts(parts, json, None)
    }

    /// The exact tokenizer.json text (what [`Tokenizer::sha256`] hashes).
    pub fn to_json(&self) -> &str {
        &self.json
    }

    /// Writes `dir/tokenizer.json` and `dir/manifest.json`, atomically as a directory: the
    /// directory appears complete or not at all. An existing tokenizer directory is replaced;
    /// any other non-empty directory is refused. The manifest records `inputs` (the files the
    /// training text came from, with their SHA-256) or, if empty, [`TrainConfig::inputs`].
    pub fn save(&self, dir: &Path, inputs: Vec<FileRef>) -> Result<()> {
        if dir.is_dir() && !dir.join(TOKENIZER_FILE).exists() {
            let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            if entries.next().is_some() {
                bail!("{} exists and is not a tokenizer directory; refusing to replace it", dir.display());
            }
            std::fs::remove_dir(dir).with_context(|| format!("cannot replace empty {}", dir.display()))?;
        }
        let out = jarip_ledger::AtomicDir::create(dir)?;
        jarip_ledger::atomic_write(&out.path().join(TOKENIZER_FILE), self.json.as_bytes())?;
        let (recorded, mut settings) = match &self.record {
            Some(r) => (r.inputs.clone(), r.settings.clone()),
            None => (Vec::new(), serde_json::json!({})),
        };
        let inputs = if inputs.is_empty() { recorded } else { inputs };
        let obj = settings.as_object_mut().expect("settings are an object");
        obj.insert("vocab_size".into(), self.vocab_size().into());
        obj.insert("merges".into(), self.merges.len().into());
        obj.insert("pattern".into(), self.pretok.pattern().into());
        obj.insert("preset".into(), self.preset().map(|p| p.name()).into());
        obj.insert("special_tokens".into(), serde_json::json!(self.specials));
        obj.insert("tokenizer_sha256".into(), self.sha256.clone().into());
        let manifest = jarip_ledger::Manifest::for_dir("tokenizer", out.path(), inputs, settings)?;
        manifest.write(out.path())?;
        out.commit().with_context(|| format!("cannot write tokenizer directory {}", dir.display()))
    }

    /// Ordinary text to ids; special-token strings in the text are encoded as plain text.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out);
        out
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        if self.nfc {
            use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
            if is_nfc_quick(text.chars()) != IsNormalized::Yes {
                let normal: String = text.nfc().collect();
                return self.encode_pieces(&normal, out);
            }
        }
        self.encode_pieces(text, out)
    }

    fn encode_pieces(&self, text: &str, out: &mut Vec<u32>) {
        encode::with_cache(self.instance, |cache| {
            self.pretok.for_each_piece(text, |piece| match self.whole.as_ref().and_then(|w| w.get(piece.as_bytes())) {
                Some(&id) => out.push(id),
                None => cache.encode(&self.table, &self.byte_ids, piece.as_bytes(), out),
            })
        })
    }

    /// NFC-normalises `text` first (for user input; prepared corpora are already NFC).
    pub fn encode_nfc(&self, text: &str) -> Vec<u32> {
        use unicode_normalization::UnicodeNormalization;
        self.encode(&text.nfc().collect::<String>())
    }

    /// Any bytes to ids: valid UTF-8 runs are encoded as text, each invalid byte becomes its
    /// byte token, so `decode_bytes(encode_bytes(b)) == b` for every `b`.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        for chunk in bytes.utf8_chunks() {
            self.encode_into(chunk.valid(), &mut out);
            out.extend(chunk.invalid().iter().map(|&b| self.byte_ids[b as usize]));
        }
        out
    }

    /// Like [`Tokenizer::encode`] but special-token strings in the text become their special
    /// ids (leftmost, longest first), as HF does with added tokens. For chat templates.
    pub fn encode_with_specials(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, std::cmp::Reverse(s.len()), *id)))
                .min();
            match hit {
                Some((at, std::cmp::Reverse(len), id)) => {
                    self.encode_into(&rest[..at], &mut out);
                    out.push(id);
                    pos += at + len;
                }
                None => {
                    self.encode_into(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// Encodes many texts in parallel (rayon), preserving order.
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Ids to bytes. An id outside the vocabulary decodes to U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.id_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
        }
        out
    }

    /// Ids to text; bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// The bytes of one token (a special token's bytes are its text).
    pub fn id_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(|t| t.as_slice())
    }

    /// The id of a single-token byte string (not a special).
    pub fn byte_id(&self, byte: u8) -> u32 {
        self.byte_ids[byte as usize]
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Number of merges (ranks).
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().find(|(s, _)| s == token).map(|(_, id)| *id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|(_, i)| *i == id)
    }

    /// The token a document starts after: `<|bos|>`; for another model's tokenizer its BOS, or,
    /// where it has none (Qwen), its end-of-text token (lm-evaluation-harness's prefix token).
    pub fn bos_id(&self) -> u32 {
        match &self.foreign {
            Some(f) => f.bos.unwrap_or(f.eos[0]),
            None => self.special_id("<|bos|>").expect("load checks that every special token is present"),
        }
    }

    /// End of text: `<|eos|>`; another model's tokenizer: the first of its EOS tokens.
    pub fn eos_id(&self) -> u32 {
        match &self.foreign {
            Some(f) => f.eos[0],
            None => self.special_id("<|eos|>").expect("load checks that every special token is present"),
        }
    }

    pub fn pad_id(&self) -> u32 {
        match &self.foreign {
            Some(f) => f.pad.unwrap_or(f.eos[0]),
            None => self.special_id("<|pad|>").expect("load checks that every special token is present"),
        }
    }

    /// Tokens that end an assistant's turn: `<|end|>`, `<|eos|>` and the start of another turn;
    /// for another model's tokenizer, every EOS id its config lists.
    pub fn chat_stop_ids(&self) -> Vec<u32> {
        match &self.foreign {
            Some(f) => f.eos.clone(),
            None => ["<|end|>", "<|eos|>", "<|user|>", "<|system|>", "<|assistant|>", "<|bos|>"]
                .iter()
                .filter_map(|s| self.special_id(s))
                .collect(),
        }
    }

    /// Whether this is another model's tokenizer ([`Tokenizer::load_foreign`]), not one jarip trained.
    pub fn is_foreign(&self) -> bool {
        self.foreign.is_some()
    }

    /// A vocabulary size a model may have for this tokenizer: equal for jarip's; at least as
    /// large for another model's (Qwen pads its embedding past the tokenizer's ids).
    pub fn fits_vocab(&self, model_vocab: usize) -> bool {
        match self.foreign {
            Some(_) => model_vocab >= self.vocab_size(),
            None => model_vocab == self.vocab_size(),
        }
    }

    /// The split pattern, and its preset if it is one of ours.
    pub fn pattern(&self) -> &str {
        self.pretok.pattern()
    }

    pub fn preset(&self) -> Option<Preset> {
        Preset::from_pattern(self.pretok.pattern())
    }

    /// SHA-256 of the tokenizer.json bytes: the identity recorded in shards and checkpoints.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Bytes per token of `text` (encoded with [`Tokenizer::encode_bytes`]).
    pub fn stats(&self, text: &[u8]) -> Stats {
        let tokens = self.encode_bytes(text).len() as u64;
        let bytes = text.len() as u64;
        Stats { bytes, tokens, bytes_per_token: if tokens == 0 { 0.0 } else { bytes as f64 / tokens as f64 } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's rule written the slow, obvious way: merge the lowest-rank adjacent pair, leftmost
    /// on ties, until none has a rank.
    fn reference_bpe(tok: &Tokenizer, piece: &[u8]) -> Vec<u32> {
        let rank: rustc_hash::FxHashMap<(u32, u32), (usize, u32)> =
            tok.merges.iter().enumerate().map(|(r, &(a, b, m))| ((a, b), (r, m))).collect();
        let mut ids: Vec<u32> = piece.iter().map(|&b| tok.byte_id(b)).collect();
        loop {
            let best = (0..ids.len().saturating_sub(1))
                .filter_map(|i| rank.get(&(ids[i], ids[i + 1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, m)) = best else { return ids };
            ids.splice(i..i + 2, [m]);
        }
    }

    #[test]
    fn encoder_follows_hf_merge_rule_on_trained_merges() {
        let line = "대한민국은 민주공화국이다. aaaa bbbb abab 1234567890 it's     spaces!!!??\n\n";
        let docs = (0..200).map(|i| format!("{line}{} {}", i, "ㅋ".repeat(i % 13)));
        let tok = train(docs, &TrainConfig { vocab_size: 400, ..TrainConfig::default() }).unwrap();
        let long = " ".repeat(300) + &"ab".repeat(100) + &"가".repeat(70);
        for text in [line, long.as_str(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
            let mut pieces = Vec::new();
            tok.pretok.for_each_piece(text, |p| pieces.push(p));
            for p in pieces {
                let mut fast = Vec::new();
                encode::bpe(&tok.table, &tok.byte_ids, p.as_bytes(), &mut fast);
                assert_eq!(fast, reference_bpe(&tok, p.as_bytes()), "piece {p:?}");
            }
        }
    }
}
