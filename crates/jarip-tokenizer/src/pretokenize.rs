//! Pre-tokenization: the regex split that cuts text into pieces before BPE (merges never cross
//! a piece boundary). Pieces follow HF's `Split{behavior: Isolated}`: every match is a piece and
//! so is any unmatched gap between matches, so the pieces always concatenate back to the text.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Named split patterns. `jarip` is the default: Hangul (and any letter with its combining
/// marks) stays in one run, digits go in groups of up to 3, and it needs no look-around, so the
/// fast `regex` crate runs it and HF's onig regex gives identical pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Jarip,
    /// `jarip` with single-digit number pieces (for the digit-grouping measurement).
    JaripDigits1,
    /// GPT-2's split (look-ahead; `fancy-regex`).
    Gpt2,
    /// cl100k-style split (look-ahead; `fancy-regex`).
    Gpt4,
}

pub const JARIP_PATTERN: &str =
    r"'(?:[sdtm]|ll|ve|re)| ?[\p{L}\p{M}]+| ?\p{N}{1,3}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
const JARIP_D1_PATTERN: &str =
    r"'(?:[sdtm]|ll|ve|re)| ?[\p{L}\p{M}]+| ?\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const GPT4_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (also Qwen3's): cl100k's with single-digit number pieces.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split a GGUF file's `tokenizer.ggml.pre` names, for the llama.cpp names jarip reads.
pub fn llama_cpp_pattern(pre: &str) -> Option<&'static str> {
    match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" => Some(GPT4_PATTERN),
        "qwen2" => Some(QWEN2_PATTERN),
        "gpt-2" | "gpt2" | "default" => Some(GPT2_PATTERN),
        _ => None,
    }
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Jarip, Preset::JaripDigits1, Preset::Gpt2, Preset::Gpt4];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Jarip => "jarip",
            Preset::JaripDigits1 => "jarip-digits1",
            Preset::Gpt2 => "gpt2",
            Preset::Gpt4 => "gpt4",
        }
    }

    pub fn pattern(self) -> &'static str {
        match self {
            Preset::Jarip => JARIP_PATTERN,
            Preset::JaripDigits1 => JARIP_D1_PATTERN,
            Preset::Gpt2 => GPT2_PATTERN,
            Preset::Gpt4 => GPT4_PATTERN,
        }
    }

    /// The name llama.cpp gives the same split (`tokenizer.ggml.pre`), where it has one: GPT-4's
    /// cl100k split is Llama 3's (`llama-bpe`), GPT-2's is `gpt-2`. jarip's own split has none.
    pub fn llama_cpp_name(self) -> Option<&'static str> {
        match self {
            Preset::Gpt2 => Some("gpt-2"),
            Preset::Gpt4 => Some("llama-bpe"),
            Preset::Jarip | Preset::JaripDigits1 => None,
        }
    }

    /// A preset by its name; `llama3` also names GPT-4's split (the same pattern).
    pub fn from_name(name: &str) -> Result<Self> {
        if name == "llama3" {
            return Ok(Preset::Gpt4);
        }
        match Self::ALL.iter().find(|p| p.name() == name) {
            Some(p) => Ok(*p),
            None => bail!(
                "unknown pre-tokenizer preset {name:?}; known: {}, llama3 (= gpt4)",
                Self::ALL.map(|p| p.name()).join(", ")
            ),
        }
    }

    pub fn from_pattern(pattern: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.pattern() == pattern)
    }
}

#[derive(Clone)]
enum Engine {
    /// The default preset: a hand-written scanner, checked against the regex by a proptest.
    Jarip,
    Plain(regex::Regex),
    Fancy(fancy_regex::Regex),
}

/// A compiled split pattern.
#[derive(Clone)]
pub struct PreTokenizer {
    pattern: String,
    engine: Engine,
}

impl PreTokenizer {
    /// Compiles `pattern`: with the `regex` crate if it has no look-around, else `fancy-regex`.
    pub fn new(pattern: &str) -> Result<Self> {
        let engine = if pattern == JARIP_PATTERN {
            Engine::Jarip
        } else {
            match regex::Regex::new(pattern) {
                Ok(re) => Engine::Plain(re),
                Err(_) => Engine::Fancy(
                    fancy_regex::Regex::new(pattern)
                        .with_context(|| format!("invalid pre-tokenizer pattern {pattern:?}"))?,
                ),
            }
        };
        Ok(Self { pattern: pattern.to_string(), engine })
    }

    /// Like [`PreTokenizer::new`] but always through a regex engine (no hand-written scanner).
    pub fn new_regex_only(pattern: &str) -> Result<Self> {
        let engine = match regex::Regex::new(pattern) {
            Ok(re) => Engine::Plain(re),
            Err(_) => Engine::Fancy(fancy_regex::Regex::new(pattern)?),
        };
        Ok(Self { pattern: pattern.to_string(), engine })
    }

    pub fn from_preset(preset: Preset) -> Self {
        Self::new(preset.pattern()).expect("presets compile")
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Calls `f` with each piece of `text`, in order; the pieces concatenate to `text`.
    pub fn for_each_piece<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let mut last = 0;
        let mut emit = |start: usize, end: usize| {
            if start > last {
                f(&text[last..start]);
            }
            f(&text[start..end]);
            last = end;
        };
        match &self.engine {
            Engine::Jarip => crate::jarip_scan::scan(text, &mut emit),
            Engine::Plain(re) => re.find_iter(text).for_each(|m| emit(m.start(), m.end())),
            Engine::Fancy(re) => {
                for m in re.find_iter(text) {
                    // A backtracking limit hit: leave the rest as one gap piece.
                    let Ok(m) = m else { break };
                    emit(m.start(), m.end());
                }
            }
        }
        if last < text.len() {
            f(&text[last..]);
        }
    }

    pub fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut v = Vec::new();
        self.for_each_piece(text, |p| v.push(p));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_only_the_splits_it_has() {
        assert_eq!(Preset::from_name("llama3").unwrap(), Preset::Gpt4);
        assert_eq!(Preset::Gpt4.llama_cpp_name(), Some("llama-bpe"));
        assert_eq!(Preset::Gpt2.llama_cpp_name(), Some("gpt-2"));
        assert_eq!(Preset::Jarip.llama_cpp_name(), None);
        assert!(Preset::from_name("qwen9").unwrap_err().to_string().contains("llama3"));
    }

    #[test]
    fn jarip_split_keeps_hangul_and_groups_digits() {
        let p = PreTokenizer::from_preset(Preset::Jarip);
        assert_eq!(
            p.pieces("대한민국은 1234567 won't  stop!!\n\n끝"),
            vec!["대한민국은", " 123", "456", "7", " won", "'t", "  ", "stop", "!!\n\n", "끝"]
        );
        // Combining marks stay with their letters (NFD Hangul jamo are letters; U+0301 is a mark).
        assert_eq!(p.pieces("cafe\u{301} x"), vec!["cafe\u{301}", " x"]);
    }

    #[test]
    fn presets_cover_all_text() {
        let text = "Hello, 세계! 12345 it's  \t\n  🙂🙂 end\r\n";
        for preset in Preset::ALL {
            let p = PreTokenizer::from_preset(preset);
            assert_eq!(p.pieces(text).concat(), text, "{}", preset.name());
            assert_eq!(Preset::from_name(preset.name()).unwrap(), preset);
            assert_eq!(Preset::from_pattern(preset.pattern()), Some(preset));
        }
        assert!(Preset::from_name("nope").unwrap_err().to_string().contains("jarip"));
    }

    #[test]
    fn gpt2_leaves_last_space_to_word() {
        let p = PreTokenizer::from_preset(Preset::Gpt2);
        assert_eq!(p.pieces("a   b"), vec!["a", "  ", " b"]);
    }
}
