//! Character counts by script, for the corpus summary.
//!
//! Whitespace is counted apart and excluded from the shares. "Hangul" is syllables and all jamo
//! blocks; "Latin" is letters of the Latin blocks (ASCII letters, Latin-1 letters, Latin Extended
//! A/B and Additional); "other" is everything else that is not whitespace: digits, punctuation,
//! symbols, Han, kana, emoji, ...

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptCounts {
    pub hangul: u64,
    pub latin: u64,
    pub other: u64,
    pub whitespace: u64,
}

pub(crate) fn is_hangul(c: char) -> bool {
    matches!(c as u32,
        0xAC00..=0xD7A3 | 0x1100..=0x11FF | 0x3130..=0x318F | 0xA960..=0xA97F | 0xD7B0..=0xD7FF)
}

fn is_latin_letter(c: char) -> bool {
    (matches!(c as u32, 0x00C0..=0x024F | 0x1E00..=0x1EFF) && c.is_alphabetic()) || c == 'ª' || c == 'º'
}

impl ScriptCounts {
    pub fn of(text: &str) -> Self {
        let mut n = Self::default();
        n.add_text(text);
        n
    }

    pub fn add_text(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_ascii() {
                if c.is_ascii_alphabetic() {
                    self.latin += 1;
                } else if c.is_ascii_whitespace() {
                    self.whitespace += 1;
                } else {
                    self.other += 1;
                }
            } else if is_hangul(c) {
                self.hangul += 1;
            } else if is_latin_letter(c) {
                self.latin += 1;
            } else if c.is_whitespace() {
                self.whitespace += 1;
            } else {
                self.other += 1;
            }
        }
    }

    pub fn add(&mut self, o: &ScriptCounts) {
        self.hangul += o.hangul;
        self.latin += o.latin;
        self.other += o.other;
        self.whitespace += o.whitespace;
    }

    /// Shares of (hangul, latin, other) among non-whitespace characters; zeros when there are none.
    pub fn shares(&self) -> (f64, f64, f64) {
        let total = (self.hangul + self.latin + self.other) as f64;
        if total == 0.0 {
            return (0.0, 0.0, 0.0);
        }
        (self.hangul as f64 / total, self.latin as f64 / total, self.other as f64 / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let n = ScriptCounts::of("한국어 abc é 1!\n漢");
        assert_eq!(n, ScriptCounts { hangul: 3, latin: 4, other: 3, whitespace: 4 });
    }
}
