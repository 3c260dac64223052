//! Lineage verdicts on real (tiny) trained models: independent seeds are unrelated even though
//! their norm gains have raw cosine ≈ 1; a fine-tuned, a permuted and a rescaled copy of A are
//! all derived. The permuted and rescaled copies are checked to compute the same function as A,
//! so they are disguises an adversary could really use.

use candle_core::{Device, Tensor};
use jarip_model::{Gpt, ModelConfig};
use jarip_provenance::calibrate::{lineage_paths, LineageOptions, LineageReport, Verdict};
use jarip_train::optim::Optimizer;
use jarip_train::step::train_step;
use jarip_train::OptimizerOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const VOCAB: usize = 128;
const SEQ: usize = 32;

/// One layer, width 64, four heads of 16 (no grouped KV, so heads permute simply).
fn config() -> ModelConfig {
    ModelConfig { n_layer: 1, n_kv_head: 4, ..ModelConfig::tiny(VOCAB) }
}

/// A learnable token stream: each token is an affine function of the one before, plus a
/// little noise; `seed` picks the noise (different seeds = different data).
fn batch(rng: &mut ChaCha8Rng) -> (Tensor, Tensor) {
    let mut ids = Vec::with_capacity(4 * (SEQ + 1));
    for _ in 0..4 {
        let mut t = rng.gen_range(0..VOCAB as u32);
        for _ in 0..=SEQ {
            ids.push(t);
            t = (t * 5 + 3 + rng.gen_range(0..3)) % VOCAB as u32;
        }
    }
    let rows: Vec<&[u32]> = ids.chunks(SEQ + 1).collect();
    let x: Vec<u32> = rows.iter().flat_map(|r| r[..SEQ].iter().copied()).collect();
    let y: Vec<u32> = rows.iter().flat_map(|r| r[1..].iter().copied()).collect();
    (Tensor::from_vec(x, (4, SEQ), &Device::Cpu).unwrap(), Tensor::from_vec(y, (4, SEQ), &Device::Cpu).unwrap())
}

fn train(model: &Gpt, steps: usize, data_seed: u64) -> f64 {
    let mut optim = Optimizer::new(model.params(), &OptimizerOptions::default(), true).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(data_seed);
    let mut loss = f64::NAN;
    for _ in 0..steps {
        loss = train_step(model, &mut optim, &[batch(&mut rng)], 1.0).unwrap().loss;
    }
    loss
}

fn trained(seed: u64, steps: usize) -> Gpt {
    let m = Gpt::new(&config(), seed, &Device::Cpu).unwrap();
    train(&m, steps, 100);
    m
}

fn save(m: &Gpt, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    m.save(&p).unwrap();
    p
}

fn eval_loss(m: &Gpt) -> f32 {
    let (x, y) = batch(&mut ChaCha8Rng::seed_from_u64(999));
    m.loss(&x, &y).unwrap().to_scalar::<f32>().unwrap()
}

fn lineage(a: &Path, b: &Path) -> LineageReport {
    lineage_paths(a, b, &LineageOptions::default()).unwrap()
}

type Weights = HashMap<String, Vec<f32>>;

fn weights(m: &Gpt) -> Weights {
    m.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

fn rebuild(w: Weights) -> Gpt {
    let cfg = config();
    let shapes: HashMap<String, Vec<usize>> = jarip_model::param_shapes(&cfg).into_iter().collect();
    let t = w.into_iter().map(|(n, v)| {
        let s = shapes[&n].clone();
        (n, Tensor::from_vec(v, s, &Device::Cpu).unwrap())
    });
    Gpt::from_tensors(&cfg, t.collect(), &Device::Cpu).unwrap()
}

/// Moves entry (r, c) of a rows×cols matrix to (pr[r], pc[c]).
fn permute(v: &[f32], rows: usize, cols: usize, pr: &[usize], pc: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[pr[r] * cols + pc[c]] = v[r * cols + c];
        }
    }
    out
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.gen_range(0..=i));
    }
    p
}

/// Permutes the residual channels, the MLP units and the attention heads together.
fn permuted(m: &Gpt) -> Gpt {
    let cfg = config();
    let (c, hid, d, h) = (cfg.n_embd, cfg.mlp_hidden, cfg.head_dim(), cfg.n_head);
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let pc = shuffled(c, &mut rng);
    let ph = shuffled(hid, &mut rng);
    let heads = shuffled(h, &mut rng);
    let pq: Vec<usize> = (0..c).map(|i| heads[i / d] * d + i % d).collect();
    let id = |n: usize| (0..n).collect::<Vec<_>>();
    let mut w = weights(m);
    let l = |s: &str| format!("model.layers.0.{s}.weight");
    let mut apply = |name: String, rows: usize, cols: usize, pr: &[usize], pcol: &[usize]| {
        let v = w.remove(&name).unwrap();
        w.insert(name, permute(&v, rows, cols, pr, pcol));
    };
    apply("model.embed_tokens.weight".into(), VOCAB, c, &id(VOCAB), &pc);
    apply("lm_head.weight".into(), VOCAB, c, &id(VOCAB), &pc);
    for norm in ["model.norm.weight".to_string(), l("input_layernorm"), l("post_attention_layernorm")] {
        apply(norm, 1, c, &[0], &pc);
    }
    for qkv in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] {
        apply(l(qkv), c, c, &pq, &pc);
    }
    apply(l("self_attn.o_proj"), c, c, &pc, &pq);
    apply(l("mlp.up_proj"), hid, c, &ph, &pc);
    apply(l("mlp.down_proj"), c, hid, &pc, &ph);
    rebuild(w)
}

/// Rescales without changing the function: norm gains against the next matrix's columns,
/// MLP units (ReLU² is homogeneous of degree 2), query/key heads (QK-norm absorbs a scale),
/// value heads against the output projection, and the whole head against the final norm.
fn rescaled(m: &Gpt) -> Gpt {
    let cfg = config();
    let (c, hid, d) = (cfg.n_embd, cfg.mlp_hidden, cfg.head_dim());
    let mut rng = ChaCha8Rng::seed_from_u64(78);
    let mut scales = |n: usize| (0..n).map(|_| rng.gen_range(0.5f32..2.0)).collect::<Vec<f32>>();
    let (s_attn, s_mlp, s_final, s_unit, s_q, s_k, s_v) =
        (scales(c), scales(c), scales(c), scales(hid), scales(4), scales(4), scales(4));
    let mut w = weights(m);
    let l = |s: &str| format!("model.layers.0.{s}.weight");
    let mut each = |name: String, cols: usize, f: &dyn Fn(usize, usize) -> f32| {
        let v = w.get_mut(&name).unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            *x *= f(i / cols, i % cols);
        }
    };
    each(l("input_layernorm"), c, &|_, j| s_attn[j]);
    each(l("self_attn.q_proj"), c, &|r, j| s_q[r / d] / s_attn[j]);
    each(l("self_attn.k_proj"), c, &|r, j| s_k[r / d] / s_attn[j]);
    each(l("self_attn.v_proj"), c, &|r, j| s_v[r / d] / s_attn[j]);
    each(l("self_attn.o_proj"), c, &|_, j| 1.0 / s_v[j / d]);
    each(l("post_attention_layernorm"), c, &|_, j| s_mlp[j]);
    each(l("mlp.up_proj"), c, &|r, j| s_unit[r] / s_mlp[j]);
    each(l("mlp.down_proj"), hid, &|_, j| 1.0 / (s_unit[j] * s_unit[j]));
    each("model.norm.weight".into(), c, &|_, j| s_final[j]);
    each("lm_head.weight".into(), c, &|_, j| 1.0 / s_final[j]);
    rebuild(w)
}

/// The hypothesis test's verdict on the same pair (see `independence`), printed with its p.
fn test_verdict(a: &Path, b: &Path) -> Verdict {
    let r = jarip_provenance::independence::test_paths(a, b, &Default::default()).unwrap();
    eprintln!("test: {} log10 p {:.2} rho_min {:?}", r.verdict, r.log10_p, r.rho_min);
    for g in &r.groups {
        eprintln!("  {:?} {} z {:.2} log10 p {:.2}", g.layer, g.kind, g.z, g.log10_p);
    }
    r.verdict
}

fn assert_verdict(r: &LineageReport, want: Verdict) {
    eprintln!(
        "{want:?}? score {:.3} (pearson {:.3}, cka {:.3}, invariant {:.3}), references {:?}",
        r.score,
        r.comparison.mean_pearson.unwrap_or(f64::NAN),
        r.comparison.mean_cka.unwrap_or(f64::NAN),
        r.comparison.mean_invariant.unwrap_or(f64::NAN),
        r.references.iter().map(|x| (x.kind.as_str(), (x.score * 1000.0).round() / 1000.0)).collect::<Vec<_>>()
    );
    assert_eq!(
        r.verdict,
        want,
        "score {:.3}, calibration {:?}, pearson {:?} cka {:?} invariant {:?}\n{:#?}",
        r.score,
        r.calibration,
        r.comparison.mean_pearson,
        r.comparison.mean_cka,
        r.comparison.mean_invariant,
        r.reasons
    );
}

#[test]
fn independent_seeds_are_unrelated_even_though_norm_gains_have_cosine_near_one() {
    let d = tempfile::tempdir().unwrap();
    let a = save(&trained(1, 200), d.path(), "a");
    let b = save(&trained(2, 200), d.path(), "b");
    let r = lineage(&a, &b);
    assert_verdict(&r, Verdict::Unrelated);
    // Trained 200 steps on the same stream from different seeds: shared data is not shared weights.
    assert_eq!(test_verdict(&a, &b), Verdict::Unrelated);
    let gains: Vec<_> =
        r.comparison.pairs.iter().filter(|p| p.kind.ends_with("norm") && p.raw_cosine.is_some()).collect();
    assert!(!gains.is_empty());
    for g in &gains {
        assert!(g.raw_cosine.unwrap() > 0.98, "{}: raw cosine {:?}", g.a, g.raw_cosine);
        // Residual-stream gains are uncorrelated across seeds. (Q/K-norm gains are not: their
        // channels are tied to rotary frequencies, which every model shares, so even their
        // Pearson is not evidence; vectors stay out of the score.)
        if !matches!(g.kind.as_str(), "q_norm" | "k_norm") {
            assert!(g.pearson.unwrap_or(0.0).abs() < 0.5, "{}: pearson {:?}", g.a, g.pearson);
        }
    }
    assert!(r.warnings.iter().any(|w| w.contains("raw cosine") && w.contains("not evidence")), "{:?}", r.warnings);
    assert!(r.score < 0.2, "{}", r.score);
}

#[test]
fn a_fine_tuned_copy_is_derived() {
    let d = tempfile::tempdir().unwrap();
    let m = trained(1, 100);
    let a = save(&m, d.path(), "a");
    let before = eval_loss(&m);
    train(&m, 300, 555); // a few hundred more steps on other data
    assert_ne!(before, eval_loss(&m));
    let b = save(&m, d.path(), "b");
    assert_verdict(&lineage(&a, &b), Verdict::Derived);
    assert_eq!(test_verdict(&a, &b), Verdict::Derived);
}

#[test]
fn a_permuted_copy_is_derived() {
    let d = tempfile::tempdir().unwrap();
    let m = trained(1, 100);
    let p = permuted(&m);
    assert!((eval_loss(&m) - eval_loss(&p)).abs() < 1e-4, "the permutation must preserve the function");
    let (pa, pp) = (save(&m, d.path(), "a"), save(&p, d.path(), "p"));
    assert_eq!(test_verdict(&pa, &pp), Verdict::Derived);
    let r = lineage(&pa, &pp);
    assert!(
        r.comparison.mean_pearson.unwrap() < 0.3,
        "permuting hides the model from Pearson: {:?}",
        r.comparison.mean_pearson
    );
    assert_verdict(&r, Verdict::Derived);
}

#[test]
fn a_rescaled_copy_is_derived() {
    let d = tempfile::tempdir().unwrap();
    let m = trained(1, 100);
    let s = rescaled(&m);
    let (la, ls) = (eval_loss(&m), eval_loss(&s));
    assert!((la - ls).abs() < 1e-3 * la.abs().max(1.0), "rescaling must preserve the function: {la} vs {ls}");
    let (pa, ps) = (save(&m, d.path(), "a"), save(&s, d.path(), "s"));
    assert_verdict(&lineage(&pa, &ps), Verdict::Derived);
    assert_eq!(test_verdict(&pa, &ps), Verdict::Derived);
}
