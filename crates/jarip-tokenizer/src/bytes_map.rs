//! The GPT-2 byte ↔ unicode mapping that HF's ByteLevel uses to store byte tokens as printable
//! strings in tokenizer.json: printable Latin-1 bytes map to themselves, the other 68 bytes to
//! U+0100 onwards, in byte order.

use std::sync::OnceLock;

struct Maps {
    to_char: [char; 256],
    to_byte: rustc_hash::FxHashMap<char, u8>,
}

fn maps() -> &'static Maps {
    static MAPS: OnceLock<Maps> = OnceLock::new();
    MAPS.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut to_char = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            to_char[b as usize] = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).expect("U+0100.. are chars");
                next += 1;
                c
            };
        }
        let to_byte = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        Maps { to_char, to_byte }
    })
}

/// Bytes as the unicode string HF's ByteLevel stores them as.
pub fn bytes_to_unicode(bytes: &[u8]) -> String {
    let m = maps();
    bytes.iter().map(|&b| m.to_char[b as usize]).collect()
}

/// The inverse of [`bytes_to_unicode`]; `None` if a char is outside the byte alphabet.
pub fn unicode_to_bytes(s: &str) -> Option<Vec<u8>> {
    let m = maps();
    s.chars().map(|c| m.to_byte.get(&c).copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_bytes_round_trip_and_space_is_g_dot() {
        let all: Vec<u8> = (0..=255).collect();
        let s = bytes_to_unicode(&all);
        assert_eq!(s.chars().count(), 256);
        assert_eq!(unicode_to_bytes(&s).unwrap(), all);
        assert_eq!(bytes_to_unicode(b" a\n"), "\u{120}a\u{10a}");
        assert_eq!(unicode_to_bytes("<|bos|>").unwrap(), b"<|bos|>");
        assert!(unicode_to_bytes("한").is_none());
    }
}
