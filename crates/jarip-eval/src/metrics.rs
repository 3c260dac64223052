//! Metrics, computed as lm-evaluation-harness computes them.
//!
//! Multiple choice: `acc` picks the choice of highest log-likelihood; `acc_norm` divides each
//! log-likelihood by the choice's length in characters (the harness's `len(choice)`), and
//! `acc_bytes` by its length in UTF-8 bytes (the harness's `acc_bytes`; for Hangul, three bytes
//! a syllable). Ties go to the first choice (`np.argmax`). Standard errors are the sample
//! standard deviation over √n, as the harness reports them. Macro-F1 follows scikit-learn
//! (labels seen in gold or prediction; an undefined F1 counts as 0).

use unicode_normalization::UnicodeNormalization;

/// The headline metric of a task, by kind: the first of these a result holds.
pub const PRIMARY_METRICS: [&str; 3] = ["acc", "exact_match", "bits_per_byte"];

/// Index of the first maximum.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Predictions for one multiple-choice question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McOutcome {
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
    pub pred_bytes: usize,
}

pub fn mc_outcome(logliks: &[f64], choices: &[String], gold: usize) -> McOutcome {
    let per = |len: fn(&str) -> usize| -> Vec<f64> {
        logliks.iter().zip(choices).map(|(ll, c)| ll / len(c) as f64).collect()
    };
    McOutcome {
        gold,
        pred: argmax(logliks),
        pred_norm: argmax(&per(|c| c.chars().count())),
        pred_bytes: argmax(&per(str::len)),
    }
}

/// Mean and its standard error (sample standard deviation / √n; 0 for n < 2).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Macro-averaged F1 over the labels that occur in `golds` or `preds`.
pub fn macro_f1(golds: &[usize], preds: &[usize]) -> f64 {
    let mut labels: Vec<usize> = golds.iter().chain(preds).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() {
        return 0.0;
    }
    let f1s = labels.iter().map(|&l| {
        let tp = golds.iter().zip(preds).filter(|(g, p)| **g == l && **p == l).count() as f64;
        let fp = golds.iter().zip(preds).filter(|(g, p)| **g != l && **p == l).count() as f64;
        let fneg = golds.iter().zip(preds).filter(|(g, p)| **g == l && **p != l).count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        }
    });
    f1s.sum::<f64>() / labels.len() as f64
}

/// Multiple-choice metrics over all questions, in report order.
pub fn mc_metrics(outcomes: &[McOutcome], with_f1: bool) -> Vec<(String, f64)> {
    let hits = |f: fn(&McOutcome) -> usize| -> Vec<f64> {
        outcomes.iter().map(|o| if f(o) == o.gold { 1.0 } else { 0.0 }).collect()
    };
    let mut out = Vec::new();
    for (name, v) in
        [("acc", hits(|o| o.pred)), ("acc_norm", hits(|o| o.pred_norm)), ("acc_bytes", hits(|o| o.pred_bytes))]
    {
        let (m, se) = mean_stderr(&v);
        out.push((name.to_string(), m));
        out.push((format!("{name}_stderr"), se));
    }
    if with_f1 {
        let golds: Vec<usize> = outcomes.iter().map(|o| o.gold).collect();
        let preds: Vec<usize> = outcomes.iter().map(|o| o.pred).collect();
        out.push(("f1".into(), macro_f1(&golds, &preds)));
    }
    out
}

/// SQuAD-style answer normalisation, extended to Korean: NFC, lower case, punctuation and
/// symbols removed, English articles dropped, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let cleaned: String = s
        .nfc()
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' })
        .collect();
    cleaned.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// Generative metrics: `exact_match` compares trimmed texts, `normalized_match` normalised ones.
pub fn gen_metrics(generations: &[String], answers: &[Vec<String>]) -> Vec<(String, f64)> {
    let exact: Vec<f64> = generations
        .iter()
        .zip(answers)
        .map(|(g, a)| if a.iter().any(|a| a.trim() == g.trim()) { 1.0 } else { 0.0 })
        .collect();
    let norm: Vec<f64> = generations
        .iter()
        .zip(answers)
        .map(|(g, a)| {
            let g = normalize_answer(g);
            if a.iter().any(|a| normalize_answer(a) == g) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let (em, em_se) = mean_stderr(&exact);
    let (nm, nm_se) = mean_stderr(&norm);
    vec![
        ("exact_match".into(), em),
        ("exact_match_stderr".into(), em_se),
        ("normalized_match".into(), nm),
        ("normalized_match_stderr".into(), nm_se),
    ]
}

/// Totals of a bits-per-byte measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextTotals {
    pub nats: f64,
    pub tokens: u64,
    pub bytes: u64,
    pub words: u64,
}

impl TextTotals {
    /// `bits_per_byte` = Σ nats / (ln 2 · UTF-8 bytes); the perplexities per byte, per word
    /// (whitespace-separated) and per token.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let bpb = self.nats / (std::f64::consts::LN_2 * self.bytes as f64);
        vec![
            ("bits_per_byte".into(), bpb),
            ("byte_perplexity".into(), bpb.exp2()),
            ("word_perplexity".into(), (self.nats / self.words.max(1) as f64).exp()),
            ("token_perplexity".into(), (self.nats / self.tokens as f64).exp()),
            ("tokens".into(), self.tokens as f64),
            ("bytes".into(), self.bytes as f64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn acc_norm_divides_by_characters_and_acc_bytes_by_bytes() {
        // "예" is one character and three bytes; "아니오" three characters and nine bytes.
        let choices = s(&["아니오", "예", "yes"]);
        let ll = [-3.3, -1.2, -3.0];
        let o = mc_outcome(&ll, &choices, 0);
        assert_eq!(o.pred, 1); // -1.2 is the largest
        assert_eq!(o.pred_norm, 2); // -1.1, -1.2, -1.0 per character
        assert_eq!(o.pred_bytes, 0); // -0.367, -0.4, -1.0 per byte
    }

    #[test]
    fn argmax_ties_go_first_and_stderr_matches_numpy() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert!((m - 0.75).abs() < 1e-12);
        // numpy: np.std([1,0,1,1], ddof=1) / 2 = 0.25
        assert!((se - 0.25).abs() < 1e-12);
    }

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // f1_score([0,0,1,1,2], [0,1,1,1,0], average="macro") = (0.5 + 0.8 + 0) / 3
        let f = macro_f1(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0]);
        assert!((f - 1.3 / 3.0).abs() < 1e-12, "{f}");
        assert_eq!(macro_f1(&[1, 1], &[1, 1]), 1.0);
    }

    #[test]
    fn normalisation_and_generation_metrics() {
        assert_eq!(normalize_answer("  The Republic, of KOREA! "), "republic of korea");
        assert_eq!(normalize_answer("민주공화국이다."), "민주공화국이다");
        let m = gen_metrics(&s(&[" Seoul", "부산이다.", "x"]), &[s(&["Seoul"]), s(&["부산이다"]), s(&["y", "z"])]);
        assert_eq!(m[0], ("exact_match".to_string(), 1.0 / 3.0));
        assert_eq!(m[2], ("normalized_match".to_string(), 2.0 / 3.0));
    }

    #[test]
    fn bits_per_byte_of_known_totals() {
        let t = TextTotals { nats: 8.0 * std::f64::consts::LN_2, tokens: 4, bytes: 4, words: 2 };
        let m = t.metrics();
        assert_eq!(m[0], ("bits_per_byte".to_string(), 2.0));
        assert!((m[1].1 - 4.0).abs() < 1e-12);
        assert!((m[3].1 - 4.0).abs() < 1e-12); // e^(8 ln2 / 4) = 4
    }
}
