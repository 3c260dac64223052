//! jarip-tokenizer: byte-level BPE trained on the user's own corpus (placeholder API; being written).

use anyhow::Result;
use std::path::Path;

/// Special tokens, in id order after the learned vocabulary.
pub const SPECIAL_TOKENS: [&str; 7] =
    ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"];

pub struct Tokenizer {}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` (or a path to the file itself).
    pub fn load(_path: &Path) -> Result<Self> {
        todo!()
    }
    /// Ordinary text to ids; special-token strings in the text are encoded as plain text.
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        todo!()
    }
    /// Encodes many texts in parallel (rayon), preserving order.
    pub fn encode_batch(&self, _texts: &[&str]) -> Vec<Vec<u32>> {
        todo!()
    }
    pub fn decode_bytes(&self, _ids: &[u32]) -> Vec<u8> {
        todo!()
    }
    pub fn vocab_size(&self) -> usize {
        todo!()
    }
    pub fn special_id(&self, _token: &str) -> Option<u32> {
        todo!()
    }
    pub fn bos_id(&self) -> u32 {
        todo!()
    }
    /// SHA-256 of the tokenizer.json bytes: the identity recorded in shards and checkpoints.
    pub fn sha256(&self) -> &str {
        todo!()
    }
}
