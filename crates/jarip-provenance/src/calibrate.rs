//! What a similarity score means: references computed in the same run. Since the hypothesis
//! test of [`crate::independence`] this is context only (`jarip lineage --references`): its
//! verdict places a score between references by fixed fractions, which cannot state a
//! false-positive rate, and it holds both models as f32.
//!
//! A score alone says little: its level depends on the shapes, on the statistics, on how far
//! training moved the weights. So every `lineage` run computes, at A's shapes:
//!
//! - the **unrelated** reference: two independently seeded models with A's tensor shapes, means
//!   and standard deviations;
//! - the **derived** reference: A briefly fine-tuned — real AdamW steps on text when A is a jarip
//!   model, else (an architecture jarip cannot run) A with a little weight noise, said so.
//!
//! The verdict places A–B's score between the two: `derived` from the midpoint up, `unrelated`
//! up to a quarter of the way, `inconclusive` between, or when the references do not separate.

use crate::lineage::{compare, Comparison};
use crate::tensors::{self, ModelTensors, Tensor};
use anyhow::{Context, Result};
use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Calibration {
    pub unrelated: f64,
    pub derived: f64,
}

pub use crate::independence::Verdict;

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

#[derive(Debug, Clone)]
pub struct LineageOptions {
    /// AdamW steps of the derived reference's fine-tune (jarip models).
    pub ref_steps: usize,
    pub ref_lr: f64,
    /// Relative weight noise of the derived reference for models jarip cannot run.
    pub ref_noise: f64,
    /// Seed of the reference models.
    pub seed: u64,
}

impl Default for LineageOptions {
    fn default() -> Self {
        Self { ref_steps: 10, ref_lr: 1e-4, ref_noise: 0.05, seed: 0x5eed }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// "unrelated" or "derived".
    pub kind: String,
    pub how: String,
    pub score: f64,
    pub mean_pearson: Option<f64>,
    pub mean_cka: Option<f64>,
    pub mean_invariant: Option<f64>,
    pub mean_spectrum_distance: Option<f64>,
}

impl Reference {
    fn of(kind: &str, how: String, c: &Comparison) -> Self {
        Self {
            kind: kind.to_string(),
            how,
            score: c.score,
            mean_pearson: c.mean_pearson,
            mean_cka: c.mean_cka,
            mean_invariant: c.mean_invariant,
            mean_spectrum_distance: c.mean_spectrum_distance,
        }
    }
}

/// Where the time went, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub load_s: f64,
    pub compare_s: f64,
    pub references_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineageReport {
    pub verdict: Verdict,
    pub score: f64,
    pub calibration: Calibration,
    pub reasons: Vec<String>,
    pub references: Vec<Reference>,
    pub comparison: Comparison,
    pub warnings: Vec<String>,
    pub timing: Timing,
}

/// `n` Gaussian samples (Box–Muller, both values of each pair used).
fn normals(rng: &mut ChaCha8Rng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2): (f64, f64) = (1.0 - rng.gen::<f64>(), rng.gen::<f64>());
        let (r, th) = ((-2.0 * u1.ln()).sqrt() * std, std::f64::consts::TAU * u2);
        out.push((mean + r * th.cos()) as f32);
        out.push((mean + r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

fn tensor_rng(seed: u64, name: &str) -> ChaCha8Rng {
    // FNV-1a of the name mixed into the seed: each tensor its own stream, order-independent.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

fn moments(x: &[f32]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

/// An independently seeded model with `a`'s tensor names and shapes, each tensor Gaussian with
/// the mean and standard deviation of `a`'s (norm gains near 1 stay near 1: the raw-cosine
/// trap is part of the reference too).
pub fn surrogate(a: &ModelTensors, seed: u64, label: &str) -> ModelTensors {
    let tensors: BTreeMap<String, Tensor> = a
        .tensors
        .par_iter()
        .map(|(name, t)| {
            let (m, s) = moments(&t.data);
            let data = normals(&mut tensor_rng(seed, name), t.data.len(), m, s);
            (name.clone(), Tensor { shape: t.shape.clone(), data })
        })
        .collect();
    ModelTensors::from_map(label, tensors, a.tokenizer.clone())
}

/// `a` with Gaussian noise of `rel` times each tensor's standard deviation.
fn noisy(a: &ModelTensors, rel: f64, seed: u64) -> ModelTensors {
    let tensors = a
        .tensors
        .par_iter()
        .map(|(name, t)| {
            let (_, s) = moments(&t.data);
            let noise = normals(&mut tensor_rng(seed ^ 0x006e_6f69_7365, name), t.data.len(), 0.0, rel * s);
            let data = t.data.iter().zip(noise).map(|(v, e)| v + e).collect();
            (name.clone(), Tensor { shape: t.shape.clone(), data })
        })
        .collect();
    ModelTensors::from_map("A with weight noise", tensors, a.tokenizer.clone())
}

/// Text the derived reference is fine-tuned on: written for this purpose, Korean and English.
const REFERENCE_TEXT: &str = "오늘은 맑은 날이다. 우리는 강가를 따라 걸으며 새로 배운 것들을 이야기했다. \
    작은 가게에서 따뜻한 차를 마시고, 저녁에는 도서관에 들러 오래된 지도를 보았다. \
    A short walk along the river turned into an afternoon of questions: why the water runs clear in spring, \
    how bridges carry their weight, and which birds return first after the winter. \
    내일은 산에 올라 해가 뜨는 것을 보기로 했다. The notes from that day fill three pages. ";

/// A as a runnable jarip model, when its directory holds a jarip `config.json` that fits.
fn as_jarip(a: &ModelTensors) -> Option<jarip_model::Gpt> {
    let cfg = jarip_model::ModelConfig::from_file(a.config.as_ref()?).ok()?;
    let mut map = std::collections::HashMap::new();
    for (name, t) in &a.tensors {
        map.insert(name.clone(), candle_core::Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu).ok()?);
    }
    jarip_model::Gpt::from_tensors(&cfg, map, &Device::Cpu).ok()
}

/// A briefly fine-tuned: `steps` AdamW steps on [`REFERENCE_TEXT`] (random tokens when A has no
/// tokenizer jarip can read). Returns None when A is not a jarip model.
fn fine_tune(a: &ModelTensors, opts: &LineageOptions) -> Result<Option<(ModelTensors, String)>> {
    let Some(model) = as_jarip(a) else { return Ok(None) };
    let cfg = model.config().clone();
    // One short sequence a step: the reference needs a few real updates, not a good fine-tune,
    // and a 100M-parameter model should take seconds, not minutes.
    let seq = 32.min(cfg.max_seq_len);
    let batch = 1;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let tokenizer = a.tokenizer.as_ref().and_then(|p| jarip_tokenizer::Tokenizer::load(p).ok());
    let (mut ids, data) = match &tokenizer {
        Some(t) => (t.encode(REFERENCE_TEXT), "a fixed Korean/English paragraph"),
        None => (vec![], "random tokens"),
    };
    ids.retain(|&i| (i as usize) < cfg.vocab_size);
    if ids.len() < 2 * (seq + 1) {
        let extra: Vec<u32> = (0..4 * (seq + 1)).map(|_| rng.gen_range(0..cfg.vocab_size as u32)).collect();
        ids = if ids.is_empty() { extra } else { ids.iter().cycle().take(4 * (seq + 1)).copied().collect() };
    }
    let o = jarip_train::OptimizerOptions { lr: opts.ref_lr, weight_decay: 0.0, ..Default::default() };
    let mut optim = jarip_train::optim::Optimizer::new(model.params(), &o, true)?;
    for _ in 0..opts.ref_steps {
        let (mut x, mut y) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        for _ in 0..batch {
            let s = rng.gen_range(0..ids.len() - seq);
            x.extend_from_slice(&ids[s..s + seq]);
            y.extend_from_slice(&ids[s + 1..s + seq + 1]);
        }
        let xt = candle_core::Tensor::from_vec(x, (batch, seq), &Device::Cpu)?;
        let yt = candle_core::Tensor::from_vec(y, (batch, seq), &Device::Cpu)?;
        jarip_train::step::train_step(&model, &mut optim, &[(xt, yt)], 1.0)
            .context("fine-tuning the derived reference")?;
    }
    let how = format!(
        "A fine-tuned: {} AdamW steps at lr {} on {data} ({batch}×{seq} tokens a step)",
        opts.ref_steps, opts.ref_lr
    );
    Ok(Some((ModelTensors::from_candle("A fine-tuned", &model.tensors(), a.tokenizer.clone())?, how)))
}

/// The references for model `a` (see the module doc).
pub fn references(a: &ModelTensors, opts: &LineageOptions) -> Result<Vec<Reference>> {
    let s1 = surrogate(a, opts.seed, "independent seed 1");
    let s2 = surrogate(a, opts.seed.wrapping_add(1), "independent seed 2");
    let u = compare(&s1, &s2)?;
    drop((s1, s2));
    let (derived, how) = match fine_tune(a, opts)? {
        Some(d) => d,
        None => (
            noisy(a, opts.ref_noise, opts.seed),
            format!(
                "A with Gaussian weight noise of {}% of each tensor's spread, a stand-in for a brief fine-tune \
                 (jarip cannot run this architecture)",
                opts.ref_noise * 100.0
            ),
        ),
    };
    let d = compare(a, &derived)?;
    Ok(vec![
        Reference::of("unrelated", "two independently seeded models with A's shapes, means and spreads".into(), &u),
        Reference::of("derived", how, &d),
    ])
}

/// Compares A and B, computes the references at A's shapes and gives the verdict.
pub fn lineage(a: &ModelTensors, b: &ModelTensors, opts: &LineageOptions) -> Result<LineageReport> {
    let t0 = std::time::Instant::now();
    let comparison = compare(a, b)?;
    let compare_s = t0.elapsed().as_secs_f64();
    let references = references(a, opts)?;
    let timing = Timing { load_s: 0.0, compare_s, references_s: t0.elapsed().as_secs_f64() - compare_s };
    let scores = |k: &'static str| references.iter().filter(move |r| r.kind == k).map(|r| r.score);
    let cal = Calibration {
        unrelated: scores("unrelated").fold(0f64, f64::max),
        derived: scores("derived").fold(1f64, f64::min),
    };
    let mut v = verdict(comparison.score, cal);
    let gap = cal.derived - cal.unrelated;
    let mut reasons = vec![format!(
        "score {:.3} (mean over {} matched weight matrices of the largest of |Pearson|, CKA and the token-space \
         invariant) against unrelated reference {:.3} and derived reference {:.3}: derived from {:.3} up, unrelated \
         up to {:.3}",
        comparison.score,
        comparison.pairs.iter().filter(|p| p.in_score).count(),
        cal.unrelated,
        cal.derived,
        cal.unrelated + 0.5 * gap,
        cal.unrelated + 0.25 * gap
    )];
    if gap < 0.2 {
        reasons.push("the references do not separate, so no score can be read".into());
    }
    if comparison.matched_fraction < 0.5 && v != Verdict::Inconclusive {
        reasons.push(format!(
            "only {:.0}% of A's parameters were compared: inconclusive whatever the score",
            comparison.matched_fraction * 100.0
        ));
        v = Verdict::Inconclusive;
    }
    if let Some(t) = &comparison.tokenizer {
        reasons.push(format!(
            "tokenizers share {} of {} / {} tokens ({:.0}% of the smaller){}",
            t.shared,
            t.vocab_a,
            t.vocab_b,
            t.overlap * 100.0,
            t.shared_embedding_corr.map_or(String::new(), |c| format!("; embedding rows of shared tokens r = {c:.3}"))
        ));
    }
    let warnings = comparison.warnings.clone();
    Ok(LineageReport {
        verdict: v,
        score: comparison.score,
        calibration: cal,
        reasons,
        references,
        comparison,
        warnings,
        timing,
    })
}

/// [`lineage`] for two paths (checkpoint, run or HF-layout directories, or .safetensors files).
pub fn lineage_paths(a: &Path, b: &Path, opts: &LineageOptions) -> Result<LineageReport> {
    let t0 = std::time::Instant::now();
    let ma = tensors::load(a).with_context(|| format!("model A ({})", a.display()))?;
    let mb = tensors::load(b).with_context(|| format!("model B ({})", b.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let mut r = lineage(&ma, &mb, opts)?;
    r.timing.load_s = load_s;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_references() {
        let cal = Calibration { unrelated: 0.05, derived: 0.95 };
        assert_eq!(verdict(0.9, cal), Verdict::Derived);
        assert_eq!(verdict(0.1, cal), Verdict::Unrelated);
        assert_eq!(verdict(0.4, cal), Verdict::Inconclusive);
        assert_eq!(verdict(0.9, Calibration { unrelated: 0.5, derived: 0.55 }), Verdict::Inconclusive);
    }
}
