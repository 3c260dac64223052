//! Decoding ids back to bytes and text, including a streaming decoder for generation that only
//! ever emits whole UTF-8 characters.

use crate::Tokenizer;

/// Turns ids into text one id at a time, holding back an incomplete UTF-8 sequence until the
/// ids that complete it arrive. Bytes that can never form a character come out as U+FFFD.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    buf: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, buf: Vec::new() }
    }

    /// Adds one id; returns the characters it completed (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.buf.extend_from_slice(self.tok.id_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
        let mut text = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.buf[start..]) {
                Ok(s) => {
                    text.push_str(s);
                    start = self.buf.len();
                    break;
                }
                Err(e) => {
                    let good = start + e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.buf[start..good]).expect("validated"));
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            start = good + bad;
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            start = good;
                            break;
                        }
                    }
                }
            }
        }
        self.buf.drain(..start);
        text
    }

    /// Emits whatever is still buffered (an unfinished character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        text
    }
}
