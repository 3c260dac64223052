//! The little that shard writing needs from a tokenizer, as a trait, so shards can be written and
//! tested with any encoder (the tests use a byte-level one) and with [`jarip_tokenizer::Tokenizer`].

/// What [`crate::write_shards`] needs from a tokenizer.
pub trait TokenEncoder: Sync {
    /// Encodes texts (in parallel where the implementation can), preserving order.
    fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>>;
    /// Encodes one text (for callers that are already parallel over documents).
    fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_batch(&[text]).pop().unwrap_or_default()
    }
    /// Id of `<|bos|>`, written before every document.
    fn bos_id(&self) -> u32;
    /// Number of ids (every id is below it); decides u16 versus u32 shards.
    fn vocab_size(&self) -> usize;
    /// Lower-case hex SHA-256 of the tokenizer file: the identity stamped into every shard.
    fn sha256(&self) -> String;
}

impl TokenEncoder for jarip_tokenizer::Tokenizer {
    fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        jarip_tokenizer::Tokenizer::encode_batch(self, texts)
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        jarip_tokenizer::Tokenizer::encode(self, text)
    }
    fn bos_id(&self) -> u32 {
        jarip_tokenizer::Tokenizer::bos_id(self)
    }
    fn vocab_size(&self) -> usize {
        jarip_tokenizer::Tokenizer::vocab_size(self)
    }
    fn sha256(&self) -> String {
        jarip_tokenizer::Tokenizer::sha256(self).to_string()
    }
}
