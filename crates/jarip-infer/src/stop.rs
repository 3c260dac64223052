//! Stop strings over a stream of text pieces.
//!
//! A stop string can arrive split across tokens ("<|e" then "nd|>"), so text that could still be
//! the start of a stop string is held back until it is known either way. Text handed out never
//! contains a stop string, and nothing after one is handed out.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (possibly empty: the rest is held back).
    Continue(String),
    /// A stop string was found: emit this text, then finish.
    Stopped(String),
}

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> StopOutcome {
        self.pending.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// What is still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn split_stop_string_is_caught_and_not_returned() {
        assert_eq!(run(&["<|end|>"], &["안녕", "하세요<|e", "nd|>", "more"]), ("안녕하세요".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "b"]), ("a\nb".into(), false));
        assert_eq!(run(&["STOP", "ST"], &["xxST", "OP"]), ("xx".into(), true));
    }

    proptest! {
        #[test]
        fn output_is_the_text_before_the_first_stop(text in "[a-c가 ]{0,40}", cuts in proptest::collection::vec(0usize..40, 0..6)) {
            let stop = "ab가";
            let chars: Vec<char> = text.chars().collect();
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c <= chars.len()).collect();
            bounds.push(0);
            bounds.push(chars.len());
            bounds.sort();
            bounds.dedup();
            let pieces: Vec<String> = bounds.windows(2).map(|w| chars[w[0]..w[1]].iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
            let (out, stopped) = run(&[stop], &refs);
            match text.find(stop) {
                Some(i) => { prop_assert!(stopped); prop_assert_eq!(out, text[..i].to_string()); }
                None => { prop_assert!(!stopped); prop_assert_eq!(out, text); }
            }
        }
    }
}
