//! Comparing two models: which tensors correspond, how similar each pair is, and what that
//! says about whether one was derived from the other.
//!
//! Tensors are matched by name and shape, else by role (layer index + kind + shape) so that
//! differently named checkpoints still line up. Each 2-D pair gets Pearson and debiased CKA;
//! each 1-D pair Pearson (raw cosine too, flagged: it is near 1 for any two sets of norm
//! gains). A pair's similarity is the larger of |Pearson| and CKA, so a permutation of hidden
//! units (which hides from Pearson) is still seen. The model score is the mean over pairs; the
//! verdict compares it with reference scores from an unrelated and a derived pair computed in
//! the same run, never with a fixed threshold alone.

use crate::stats;
use crate::tensors::ModelTensors;
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Serialize)]
pub struct PairStats {
    pub a: String,
    pub b: String,
    pub shape: Vec<usize>,
    pub layer: Option<usize>,
    pub kind: String,
    pub pearson: f64,
    /// Debiased linear CKA (2-D tensors only).
    pub cka: Option<f64>,
    /// Pearson correlation of the log top singular values (2-D only): a permutation-invariant
    /// fingerprint, reported for context.
    pub spectrum_corr: Option<f64>,
    /// Raw cosine, reported for norm gains only, beside the warning that it is not evidence.
    pub raw_cosine: Option<f64>,
    pub similarity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenizerOverlap {
    pub vocab_a: usize,
    pub vocab_b: usize,
    pub shared: usize,
    /// shared / min(vocab_a, vocab_b)
    pub overlap: f64,
    /// Pearson correlation of embedding rows over shared tokens, when the widths agree.
    pub shared_embedding_corr: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Calibration {
    pub unrelated: f64,
    pub derived: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub pairs: Vec<PairStats>,
    pub unmatched_a: Vec<String>,
    pub unmatched_b: Vec<String>,
    pub score: f64,
    pub tokenizer: Option<TokenizerOverlap>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Derived,
    Unrelated,
    Inconclusive,
}

/// Layer index (first number in the name) and kind of a tensor, from common naming schemes.
pub fn role(name: &str) -> (Option<usize>, &'static str) {
    let n = name.to_ascii_lowercase();
    let layer = n.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).and_then(|s| s.parse().ok());
    let has = |keys: &[&str]| keys.iter().any(|k| n.contains(k));
    let kind = if has(&["embed", "wte", "tok_embeddings"]) {
        "embed"
    } else if has(&["lm_head", "output.weight"]) {
        "head"
    } else if has(&["q_norm", "query_norm"]) {
        "q_norm"
    } else if has(&["k_norm", "key_norm"]) {
        "k_norm"
    } else if has(&["post_attention_layernorm", "mlp_norm", "ffn_norm", "ln_2"]) {
        "mlp_norm"
    } else if has(&["input_layernorm", "attn_norm", "attention_norm", "ln_1"]) {
        "attn_norm"
    } else if has(&["norm", "ln_f"]) {
        "norm"
    } else if has(&["q_proj", "wq", "query"]) {
        "q"
    } else if has(&["k_proj", "wk", ".key"]) {
        "k"
    } else if has(&["v_proj", "wv", "value"]) {
        "v"
    } else if has(&["o_proj", "wo", "attn.c_proj", "out_proj"]) {
        "o"
    } else if has(&["gate", "w3"]) {
        "gate"
    } else if has(&["up", "w1", "c_fc", "fc1"]) {
        "up"
    } else if has(&["down", "w2", "mlp.c_proj", "fc2"]) {
        "down"
    } else {
        "other"
    };
    (if matches!(kind, "embed" | "head" | "norm") { None } else { layer }, kind)
}

fn pair_stats(a: &str, b: &str, ta: &crate::tensors::Tensor, tb: &crate::tensors::Tensor) -> Result<PairStats> {
    let (layer, kind) = role(a);
    let pearson = stats::pearson(&ta.data, &tb.data);
    let is_matrix = ta.shape.len() >= 2 && ta.rows() >= 4 && ta.cols() >= 4;
    let (cka, spectrum_corr) = if is_matrix {
        let (r, c) = (ta.rows(), ta.cols());
        let cka = stats::cka_both(&ta.data, &tb.data, r, c)?;
        let k = 16.min(r.min(c));
        let sa = stats::top_singular_values(&ta.data, r, c, k)?;
        let sb = stats::top_singular_values(&tb.data, r, c, k)?;
        let log = |v: &[f32]| v.iter().map(|x| x.max(1e-12).ln()).collect::<Vec<f32>>();
        (Some(cka), Some(stats::pearson(&log(&sa), &log(&sb))))
    } else {
        (None, None)
    };
    let raw_cosine = kind.ends_with("norm").then(|| stats::cosine(&ta.data, &tb.data));
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    let similarity = finite(pearson.abs()).max(cka.map(finite).unwrap_or(0.0));
    Ok(PairStats {
        a: a.to_string(),
        b: b.to_string(),
        shape: ta.shape.clone(),
        layer,
        kind: kind.to_string(),
        pearson,
        cka,
        spectrum_corr,
        raw_cosine,
        similarity,
    })
}

fn vocab(path: &std::path::Path) -> Result<BTreeMap<String, usize>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let map = v["model"]["vocab"].as_object().ok_or_else(|| anyhow::anyhow!("{}: no model.vocab", path.display()))?;
    Ok(map.iter().filter_map(|(k, id)| id.as_u64().map(|id| (k.clone(), id as usize))).collect())
}

fn tokenizer_overlap(a: &ModelTensors, b: &ModelTensors) -> Option<TokenizerOverlap> {
    let (va, vb) = (vocab(a.tokenizer.as_ref()?).ok()?, vocab(b.tokenizer.as_ref()?).ok()?);
    let shared: Vec<(&usize, &usize)> = va.iter().filter_map(|(k, ia)| vb.get(k).map(|ib| (ia, ib))).collect();
    let emb = |m: &ModelTensors| {
        m.tensors.iter().find(|(n, t)| role(n).1 == "embed" && t.shape.len() == 2).map(|(_, t)| t.clone())
    };
    let shared_embedding_corr = match (emb(a), emb(b)) {
        (Some(ea), Some(eb)) if ea.cols() == eb.cols() && !shared.is_empty() => {
            let d = ea.cols();
            let (mut xa, mut xb) = (Vec::new(), Vec::new());
            for (&ia, &ib) in &shared {
                if ia < ea.rows() && ib < eb.rows() {
                    xa.extend_from_slice(&ea.data[ia * d..(ia + 1) * d]);
                    xb.extend_from_slice(&eb.data[ib * d..(ib + 1) * d]);
                }
            }
            (!xa.is_empty()).then(|| stats::pearson(&xa, &xb))
        }
        _ => None,
    };
    Some(TokenizerOverlap {
        vocab_a: va.len(),
        vocab_b: vb.len(),
        shared: shared.len(),
        overlap: shared.len() as f64 / va.len().min(vb.len()).max(1) as f64,
        shared_embedding_corr,
    })
}

/// Matches tensors and computes every statistic. Fails when nothing can be matched.
pub fn compare(a: &ModelTensors, b: &ModelTensors) -> Result<Comparison> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut used_b: HashSet<String> = HashSet::new();
    for (name, t) in &a.tensors {
        if b.tensors.get(name).is_some_and(|u| u.shape == t.shape) {
            pairs.push((name.clone(), name.clone()));
            used_b.insert(name.clone());
        }
    }
    let used_a: HashSet<String> = pairs.iter().map(|p| p.0.clone()).collect();
    for (name, t) in a.tensors.iter().filter(|(n, _)| !used_a.contains(*n)) {
        let r = role(name);
        if r.1 == "other" {
            continue;
        }
        if let Some((bn, _)) =
            b.tensors.iter().find(|(bn, bt)| !used_b.contains(*bn) && role(bn) == r && bt.shape == t.shape)
        {
            used_b.insert(bn.clone());
            pairs.push((name.clone(), bn.clone()));
        }
    }
    if pairs.is_empty() {
        bail!(
            "no tensors of {} and {} can be matched (different names and shapes, no mapping by role)",
            a.dir.display(),
            b.dir.display()
        );
    }
    let matched_a: HashSet<&String> = pairs.iter().map(|p| &p.0).collect();
    let unmatched_a = a.tensors.keys().filter(|n| !matched_a.contains(n)).cloned().collect();
    let unmatched_b = b.tensors.keys().filter(|n| !used_b.contains(*n)).cloned().collect();
    let mut stats: Vec<PairStats> =
        pairs.par_iter().map(|(na, nb)| pair_stats(na, nb, &a.tensors[na], &b.tensors[nb])).collect::<Result<_>>()?;
    stats.sort_by(|x, y| (x.layer, &x.a).cmp(&(y.layer, &y.a)));
    let score = stats.iter().map(|p| p.similarity).sum::<f64>() / stats.len() as f64;
    let mut warnings = Vec::new();
    if stats.iter().any(|p| p.raw_cosine.is_some_and(|c| c > 0.9) && p.pearson.abs() < 0.5) {
        warnings.push(
            "raw cosine of norm gains is near 1 while their Pearson correlation is low: gains cluster around 1 in \
             every model, so raw cosine is not evidence of derivation"
                .to_string(),
        );
    }
    Ok(Comparison { pairs: stats, unmatched_a, unmatched_b, score, tokenizer: tokenizer_overlap(a, b), warnings })
}

/// Places `score` between the unrelated and derived reference scores: derived above their
/// midpoint, unrelated below a quarter of the way, inconclusive between (or when the
/// references do not separate).
pub fn verdict(score: f64, cal: Calibration) -> Verdict {
    let gap = cal.derived - cal.unrelated;
    if !gap.is_finite() || gap < 0.2 {
        return Verdict::Inconclusive;
    }
    if score >= cal.unrelated + 0.5 * gap {
        Verdict::Derived
    } else if score <= cal.unrelated + 0.25 * gap {
        Verdict::Unrelated
    } else {
        Verdict::Inconclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_line_up_across_naming_schemes() {
        assert_eq!(role("model.layers.3.self_attn.q_proj.weight"), (Some(3), "q"));
        assert_eq!(role("blocks.3.attn.wq"), (Some(3), "q"));
        assert_eq!(role("model.layers.0.mlp.down_proj.weight"), (Some(0), "down"));
        assert_eq!(role("model.layers.2.input_layernorm.weight"), (Some(2), "attn_norm"));
        assert_eq!(role("model.embed_tokens.weight"), (None, "embed"));
        assert_eq!(role("lm_head.weight"), (None, "head"));
    }

    #[test]
    fn verdict_follows_the_references() {
        let cal = Calibration { unrelated: 0.05, derived: 0.95 };
        assert_eq!(verdict(0.9, cal), Verdict::Derived);
        assert_eq!(verdict(0.1, cal), Verdict::Unrelated);
        assert_eq!(verdict(0.4, cal), Verdict::Inconclusive);
        assert_eq!(verdict(0.9, Calibration { unrelated: 0.5, derived: 0.55 }), Verdict::Inconclusive);
    }
}
