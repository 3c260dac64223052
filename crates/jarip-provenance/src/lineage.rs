//! Comparing two models: which tensors correspond, and how similar each pair is.
//!
//! Tensors are matched by name and shape, else by role (layer index + kind + shape) so that
//! differently named checkpoints still line up; embeddings and heads of different vocabularies
//! are matched through the tokens their tokenizers share. Each pair gets:
//!
//! - mean-centred Pearson correlation (direct alignment, blind to permutations);
//! - debiased linear CKA in both orientations (2-D): invariant to permuting or rotating one
//!   axis of hidden units;
//! - the token-space invariant of [`crate::invariants`]: invariant to permuting every hidden
//!   axis at once and to gain/column rescaling;
//! - the distance between singular-value spectra (2-D), a permutation-invariant fingerprint
//!   reported for context;
//! - raw cosine for norm gains only, always beside the warning that it is near 1 for any two
//!   models and is not used.
//!
//! A pair's similarity is the largest of |Pearson|, CKA and the invariant, so a derivative is
//! seen through whichever disguise it wears; the model score is the mean over weight matrices
//! (vectors such as norm gains have no permutation-invariant reading and few values, and enter
//! through the gains folded into the invariants instead). What a score means is decided in
//! [`crate::calibrate`] against references computed in the same run, never by a fixed threshold.

use crate::invariants::{align_tokens, invariant_cka, vocab, Probe, TokenAlignment};
use crate::stats;
use crate::tensors::{ModelTensors, Tensor};
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Serialize)]
pub struct PairStats {
    pub a: String,
    pub b: String,
    pub shape_a: Vec<usize>,
    pub shape_b: Vec<usize>,
    pub layer: Option<usize>,
    pub kind: String,
    pub pearson: Option<f64>,
    /// Debiased linear CKA, the larger of rows-as-examples and columns-as-examples (2-D only).
    pub cka: Option<f64>,
    /// Debiased CKA of the token-space readings (see [`crate::invariants`]).
    pub invariant: Option<f64>,
    /// Distance of the normalised log singular-value spectra (2-D only; 0 = identical).
    pub spectrum_distance: Option<f64>,
    /// Raw cosine, for norm gains only, beside the warning that it is not evidence.
    pub raw_cosine: Option<f64>,
    /// max(|Pearson|, CKA, invariant), clamped to [0, 1].
    pub similarity: f64,
    /// Whether the pair enters the model score (weight matrices do; vectors do not).
    pub in_score: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    /// None: tensors outside the blocks (embedding, head, final norm).
    pub layer: Option<usize>,
    pub tensors: usize,
    pub similarity: f64,
    pub pearson: Option<f64>,
    pub cka: Option<f64>,
    pub invariant: Option<f64>,
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

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub pairs: Vec<PairStats>,
    pub layers: Vec<LayerSummary>,
    pub unmatched_a: Vec<String>,
    pub unmatched_b: Vec<String>,
    /// Share of A's parameters that found a partner in B.
    pub matched_fraction: f64,
    /// Mean similarity over the pairs in the score.
    pub score: f64,
    pub mean_pearson: Option<f64>,
    pub mean_cka: Option<f64>,
    pub mean_invariant: Option<f64>,
    pub mean_spectrum_distance: Option<f64>,
    pub token_alignment: Option<TokenAlignment>,
    pub tokenizer: Option<TokenizerOverlap>,
    pub warnings: Vec<String>,
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

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Rows `ids` of a 2-D tensor, concatenated.
fn gather_rows(t: &Tensor, ids: &[usize]) -> Vec<f32> {
    ids.iter().flat_map(|&i| t.row(i).iter().copied()).collect()
}

struct Matched<'a> {
    na: &'a str,
    nb: &'a str,
    ta: &'a Tensor,
    tb: &'a Tensor,
}

fn pair_stats(m: &Matched, probes: Option<&(Probe, Probe)>, align: Option<&TokenAlignment>) -> Result<PairStats> {
    let (layer, kind) = role(m.na);
    let (ta, tb) = (m.ta, m.tb);
    let same_shape = ta.shape == tb.shape;
    let pearson = if same_shape {
        finite(stats::pearson(&ta.data, &tb.data))
    } else if let Some(al) = align {
        // Embedding or head of different vocabularies: rows of the shared tokens.
        finite(stats::pearson(&gather_rows(ta, &al.a), &gather_rows(tb, &al.b)))
    } else {
        None
    };
    let matrix = same_shape && ta.is_matrix();
    let (cka, spectrum_distance) = if matrix {
        let (r, c) = (ta.rows(), ta.cols());
        let k = 16.min(r.min(c));
        let sa = stats::top_singular_values(&ta.data, r, c, k)?;
        let sb = stats::top_singular_values(&tb.data, r, c, k)?;
        (finite(stats::cka_both(&ta.data, &tb.data, r, c)?), finite(stats::spectrum_distance(&sa, &sb)))
    } else {
        (None, None)
    };
    let invariant = match probes {
        Some((pa, pb)) => invariant_cka(pa, m.na, ta, pb, m.nb, tb)?,
        None => None,
    };
    let raw_cosine = (kind.ends_with("norm") && same_shape).then(|| stats::cosine(&ta.data, &tb.data));
    let similarity = [pearson.map(f64::abs), cka, invariant].into_iter().flatten().fold(0f64, f64::max).clamp(0.0, 1.0);
    Ok(PairStats {
        a: m.na.to_string(),
        b: m.nb.to_string(),
        shape_a: ta.shape.clone(),
        shape_b: tb.shape.clone(),
        layer,
        kind: kind.to_string(),
        pearson,
        cka,
        invariant,
        spectrum_distance,
        raw_cosine,
        similarity,
        in_score: ta.is_matrix(),
    })
}

fn tokenizer_overlap(a: &ModelTensors, b: &ModelTensors, al: Option<&TokenAlignment>) -> Option<TokenizerOverlap> {
    let (va, vb) = (vocab(a.tokenizer.as_ref()?).ok()?, vocab(b.tokenizer.as_ref()?).ok()?);
    let shared = va.keys().filter(|k| vb.contains_key(*k)).count();
    let emb = |m: &ModelTensors| crate::invariants::embedding(m).map(|(_, t)| t.clone());
    let shared_embedding_corr = match (emb(a), emb(b), al) {
        (Some(ea), Some(eb), Some(al)) if ea.cols() == eb.cols() && !al.a.is_empty() => {
            finite(stats::pearson(&gather_rows(&ea, &al.a), &gather_rows(&eb, &al.b)))
        }
        _ => None,
    };
    Some(TokenizerOverlap {
        vocab_a: va.len(),
        vocab_b: vb.len(),
        shared,
        overlap: shared as f64 / va.len().min(vb.len()).max(1) as f64,
        shared_embedding_corr,
    })
}

/// Pairs of tensor names: same name and shape; else same role and shape; else (embedding and
/// head only) same role and width when the tokens can be aligned.
fn match_tensors<'a>(a: &'a ModelTensors, b: &'a ModelTensors, aligned: bool) -> Vec<Matched<'a>> {
    let mut pairs = Vec::new();
    let mut used_b: HashSet<&str> = HashSet::new();
    let mut used_a: HashSet<&str> = HashSet::new();
    for (name, t) in &a.tensors {
        if let Some((bn, bt)) = b.tensors.get_key_value(name).filter(|(_, u)| u.shape == t.shape) {
            pairs.push(Matched { na: name, nb: bn, ta: t, tb: bt });
            used_a.insert(name);
            used_b.insert(bn);
        }
    }
    for (name, t) in &a.tensors {
        if used_a.contains(name.as_str()) {
            continue;
        }
        let r = role(name);
        if r.1 == "other" {
            continue;
        }
        let vocab_axis = matches!(r.1, "embed" | "head");
        let fits = |bt: &Tensor| {
            bt.shape == t.shape
                || (vocab_axis && aligned && bt.shape.len() == 2 && t.shape.len() == 2 && bt.cols() == t.cols())
        };
        if let Some((bn, bt)) =
            b.tensors.iter().find(|(bn, bt)| !used_b.contains(bn.as_str()) && role(bn) == r && fits(bt))
        {
            used_a.insert(name);
            used_b.insert(bn);
            pairs.push(Matched { na: name, nb: bn, ta: t, tb: bt });
        }
    }
    pairs
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = xs.fold((0f64, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn shapes_preview(m: &ModelTensors) -> String {
    let mut v: Vec<String> = m.tensors.iter().take(4).map(|(n, t)| format!("{n} {:?}", t.shape)).collect();
    if m.tensors.len() > 4 {
        v.push(format!("… {} more", m.tensors.len() - 4));
    }
    v.join(", ")
}

/// Matches tensors and computes every statistic. Fails when nothing can be matched.
pub fn compare(a: &ModelTensors, b: &ModelTensors) -> Result<Comparison> {
    let align = align_tokens(a, b);
    let pairs = match_tensors(a, b, align.as_ref().is_some_and(|al| al.tokens >= 8));
    if pairs.is_empty() {
        bail!(
            "no tensor of {} matches a tensor of {} by name and shape, or by role and shape, and no mapping \
             between them is known\n  A: {}\n  B: {}",
            a.dir.display(),
            b.dir.display(),
            shapes_preview(a),
            shapes_preview(b)
        );
    }
    let probes = align.as_ref().and_then(|al| Probe::pair(a, b, al));
    let mut stats: Vec<PairStats> = pairs
        .par_iter()
        .map(|m| {
            let row_align = (m.ta.shape != m.tb.shape).then_some(align.as_ref()).flatten();
            pair_stats(m, probes.as_ref(), row_align)
        })
        .collect::<Result<_>>()?;
    stats.sort_by(|x, y| (x.layer, &x.a).cmp(&(y.layer, &y.a)));

    let matched_a: HashSet<&str> = pairs.iter().map(|p| p.na).collect();
    let matched_b: HashSet<&str> = pairs.iter().map(|p| p.nb).collect();
    let unmatched_a: Vec<String> = a.tensors.keys().filter(|n| !matched_a.contains(n.as_str())).cloned().collect();
    let unmatched_b = b.tensors.keys().filter(|n| !matched_b.contains(n.as_str())).cloned().collect();
    let matched_params: usize = pairs.iter().map(|p| p.ta.data.len()).sum();
    let matched_fraction = matched_params as f64 / a.num_params().max(1) as f64;

    let scored: Vec<&PairStats> = if stats.iter().any(|p| p.in_score) {
        stats.iter().filter(|p| p.in_score).collect()
    } else {
        stats.iter().collect()
    };
    let score = mean(scored.iter().map(|p| p.similarity)).unwrap_or(0.0);
    let mut layers: BTreeMap<Option<usize>, Vec<&PairStats>> = BTreeMap::new();
    for p in &stats {
        layers.entry(p.layer).or_default().push(p);
    }
    let layers = layers
        .into_iter()
        .map(|(layer, ps)| {
            let m: Vec<&&PairStats> = if ps.iter().any(|p| p.in_score) {
                ps.iter().filter(|p| p.in_score).collect()
            } else {
                ps.iter().collect()
            };
            LayerSummary {
                layer,
                tensors: ps.len(),
                similarity: mean(m.iter().map(|p| p.similarity)).unwrap_or(0.0),
                pearson: mean(m.iter().filter_map(|p| p.pearson)),
                cka: mean(m.iter().filter_map(|p| p.cka)),
                invariant: mean(m.iter().filter_map(|p| p.invariant)),
            }
        })
        .collect();

    let mut warnings = Vec::new();
    let cosines: Vec<&PairStats> = stats.iter().filter(|p| p.raw_cosine.is_some()).collect();
    if !cosines.is_empty() {
        let c = mean(cosines.iter().filter_map(|p| p.raw_cosine)).unwrap_or(f64::NAN);
        let r = mean(cosines.iter().filter_map(|p| p.pearson));
        warnings.push(format!(
            "raw cosine of norm gains (mean {c:.4} here) is reported only for comparison with published claims: \
             gains sit near 1 in every model, so any two models score close to 1; the mean-centred Pearson of the \
             same gains is {}. Raw cosine is not evidence of derivation and does not enter the verdict.",
            r.map_or("undefined (constant gains)".to_string(), |r| format!("{r:.4}"))
        ));
    }
    if matched_fraction < 0.5 {
        warnings.push(format!(
            "only {:.0}% of A's parameters found a partner in B: the models differ in shape, and the score covers \
             the matched part only",
            matched_fraction * 100.0
        ));
    }
    if align.is_none() {
        warnings.push(
            "tokens could not be aligned (no tokenizer.json on both sides and different vocabulary sizes): the \
             token-space invariants, which see through permuted hidden units, were not computed"
                .to_string(),
        );
    }
    let tokenizer = tokenizer_overlap(a, b, align.as_ref());
    Ok(Comparison {
        a: a.dir.display().to_string(),
        b: b.dir.display().to_string(),
        mean_pearson: mean(scored.iter().filter_map(|p| p.pearson.map(f64::abs))),
        mean_cka: mean(scored.iter().filter_map(|p| p.cka)),
        mean_invariant: mean(scored.iter().filter_map(|p| p.invariant)),
        mean_spectrum_distance: mean(scored.iter().filter_map(|p| p.spectrum_distance)),
        pairs: stats,
        layers,
        unmatched_a,
        unmatched_b,
        matched_fraction,
        score,
        token_alignment: align,
        tokenizer,
        warnings,
    })
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
        assert_eq!(role("model.layers.2.self_attn.k_norm.weight"), (Some(2), "k_norm"));
        assert_eq!(role("model.embed_tokens.weight"), (None, "embed"));
        assert_eq!(role("model.norm.weight"), (None, "norm"));
        assert_eq!(role("lm_head.weight"), (None, "head"));
    }

    #[test]
    fn unmatched_shapes_are_an_error_naming_both_models() {
        let t = |shape: Vec<usize>| Tensor { data: vec![0.5; shape.iter().product()], shape };
        let a = ModelTensors::from_map("A", [("x.weight".to_string(), t(vec![8, 4]))].into(), None);
        let b = ModelTensors::from_map("B", [("y.weight".to_string(), t(vec![5, 3]))].into(), None);
        let err = format!("{:#}", compare(&a, &b).err().unwrap());
        assert!(err.contains("x.weight [8, 4]") && err.contains("y.weight [5, 3]"), "{err}");
    }
}
