//! `provenance data-order`: were these weights trained on this run's recorded data order?
//!
//! A model fits the batches it saw last best, with a fading trace back to the first (the
//! "palimpsest" of Kuditipudi et al. 2025, *Blackbox model provenance via palimpsestic
//! membership inference*). jarip's ledger fixes the order exactly: the sampler's seed and its
//! cursor at every checkpoint. The test scores recorded training batches under a model and asks
//! whether their loss falls with the step at which the run visited them.
//!
//! # The units
//! The flat position `f` of a window in the run's stream is `epoch·W + position` (W windows an
//! epoch); step `t` (from 1) consumed positions `(t−1)·K .. t·K`, K = `batch_tokens / seq_len`
//! windows a step (every micro-batch and data-parallel replica of the step draws from the one
//! cursor). The recorded cursors must agree with that at every checkpoint. A window visited in
//! several epochs counts at its **last** visit (the visit the weights remember best): a step's
//! windows visited again later are not scored at that step. The test draws `batches` steps evenly
//! across the steps that keep at least `r` last-visit windows, and scores each step's first `r`
//! of them (`r` = `windows_per_batch`, at most K): a unit is the mean loss (nats per token) of
//! `r` windows, and its step is the step.
//!
//! # The statistic and its null
//! H0: the model is independent of this order (an independent model, or one trained on the same
//! data in another order). Each epoch's order is a uniform shuffle, so relabelling the windows
//! leaves the law of the order unchanged; the units' structure (which slots are last visits)
//! does not depend on the labels, so under H0 the windows in the chosen slots are assigned to
//! them uniformly at random, and the units' losses are exchangeable across steps. The statistic
//! is Spearman's ρ between loss and step (one-sided: trained on this order ⇒ ρ < 0). Its
//! p-value is the Monte Carlo permutation p, `(1 + #{ρ_π ≤ ρ}) / (1 + M)` — exact under H0 —
//! when at least [`MC_RESOLVED`] permutations reach ρ; beyond the permutations' reach it is the
//! asymptotic law of the permutation distribution, ρ·√(n−1) ~ N(0, 1) (its variance 1/(n−1) is
//! exact for any data; the normal shape is asymptotic, its calibration checked by simulation in
//! the tests). Kendall's τ-b is reported beside it with its own asymptotic p (the exact null
//! variance of Kendall's S with ties in the losses).
//!
//! Comparisons of permuted ρ are exact: ranks are doubled into integers (midranks become odd
//! integers), so `Σ a_i b_π(i)` is an integer sum.

use crate::pvalue::ln_norm_sf;
use crate::record::{Pretraining, RunRecord};
use anyhow::{bail, ensure, Context, Result};
use jarip_data::{BatchSampler, SamplerState, ShardSet};
use jarip_interop::model_dir::LoadedModel;
use jarip_tokenizer::Tokenizer;
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The permutation p-value is used once this many permutations reach the observed statistic
/// (its relative standard error is then at most about 30 %).
pub const MC_RESOLVED: u64 = 10;

#[derive(Debug, Clone)]
pub struct DataOrderOptions {
    /// Steps sampled across the run.
    pub batches: usize,
    /// Windows scored per sampled step.
    pub windows_per_batch: usize,
    /// False-positive rate of `trained-on-this-order`.
    pub alpha: f64,
    /// Monte Carlo permutations.
    pub permutations: usize,
    /// Seed of the permutations.
    pub seed: u64,
}

impl Default for DataOrderOptions {
    fn default() -> Self {
        Self { batches: 2560, windows_per_batch: 1, alpha: 1e-6, permutations: 1_000_000, seed: 0 }
    }
}

/// One unit of the test: a training step and the windows it visited for the last time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unit {
    pub step: u64,
    pub windows: Vec<u64>,
}

/// The recorded order of a run, read from its ledger, and the units drawn from it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderPlan {
    /// The shard directory (verified against the recorded Merkle root).
    pub shards: PathBuf,
    pub tokenizer_sha256: String,
    pub seq_len: usize,
    pub data_seed: u64,
    /// Windows per step (K).
    pub windows_per_step: u64,
    /// Windows per epoch (W).
    pub windows_per_epoch: u64,
    /// The last recorded step.
    pub steps: u64,
    /// Epochs the run read (fractional).
    pub epochs: f64,
    /// Whether some windows were visited more than once (then each counts at its last visit).
    pub revisited: bool,
    pub units: Vec<Unit>,
}

/// A flat stream position: `epoch · W + position`.
fn flat(c: &SamplerState, w: u64) -> u64 {
    c.epoch * w + c.position
}

/// Reads the run's recorded order and draws the units (see the module doc). Fails on a run
/// without pretraining, with changed or missing shards (named), or whose checkpoints do not
/// record the data cursors.
pub fn plan(rec: &RunRecord, opts: &DataOrderOptions) -> Result<OrderPlan> {
    ensure!(opts.batches >= 3, "--batches must be at least 3");
    ensure!(opts.windows_per_batch >= 1, "--windows-per-batch must be at least 1");
    let p =
        rec.pretraining()?.with_context(|| format!("{}: the ledger records no pretraining", rec.ledger.display()))?;
    ensure!(!p.checkpoints.is_empty(), "{}: the pretraining wrote no checkpoint entry", rec.ledger.display());
    if let Some(ck) = p.checkpoints.iter().find(|c| c.sampler_before.is_none() || c.sampler_after.is_none()) {
        bail!(
            "entry #{} ({}) records no data cursor: this ledger cannot tell the order the run read",
            ck.seq,
            ck.name()
        );
    }
    let check = crate::verify::merkle_check(rec, &p, &crate::verify::Hashes::default());
    if !check.pass {
        bail!("the run's shards cannot be used: {}", check.detail);
    }
    let shards = shard_dir(rec, &p)?;
    let set = ShardSet::open(&shards, Some(&p.config.tokenizer_sha256))?;
    let c = &p.config;
    ensure!(
        c.seq_len > 0 && c.batch_tokens > 0 && c.batch_tokens.is_multiple_of(c.seq_len),
        "pretrain-start records batch_tokens {} and seq_len {}: not a whole number of windows a step",
        c.batch_tokens,
        c.seq_len
    );
    let k = (c.batch_tokens / c.seq_len) as u64;
    let data_seed = c.order_seed();
    let start = SamplerState { seed: data_seed, epoch: 0, position: 0 };
    let sampler = BatchSampler::resume(&set, c.seq_len, c.batch_size, start)?;
    let w = sampler.windows_per_epoch();

    // The cursors must tell one stream: K windows a step, from position 0.
    let mut last = (0u64, 0u64); // (step, flat position)
    for ck in &p.checkpoints {
        let (Some(before), Some(after)) = (ck.sampler_before, ck.sampler_after) else {
            bail!(
                "entry #{} ({}) records no data cursor: this ledger cannot tell the order the run read",
                ck.seq,
                ck.name()
            );
        };
        if before.seed != data_seed || after.seed != data_seed {
            bail!("entry #{} ({}): its cursor's seed differs from the run's data seed {data_seed}", ck.seq, ck.name());
        }
        let (b, a) = (flat(&before, w), flat(&after, w));
        if b != last.1 || a != ck.step * k {
            bail!(
                "entry #{} ({}): the cursor runs {b}..{a}, but {} windows a step from the start put step {} at {}..{}",
                ck.seq,
                ck.name(),
                k,
                ck.step,
                last.1,
                ck.step * k
            );
        }
        last = (ck.step, a);
    }
    let (steps, end) = last;
    ensure!(end > 0, "the run recorded no training step");
    let units = draw_units(w, data_seed, end, k, opts.batches, opts.windows_per_batch.min(k as usize));
    ensure!(
        units.len() >= 3,
        "the run has {} steps that keep {} last-visit windows; too few to test (lower --windows-per-batch)",
        units.len(),
        opts.windows_per_batch.min(k as usize)
    );
    Ok(OrderPlan {
        shards,
        tokenizer_sha256: c.tokenizer_sha256.clone(),
        seq_len: c.seq_len,
        data_seed,
        windows_per_step: k,
        windows_per_epoch: w,
        steps,
        epochs: end as f64 / w as f64,
        revisited: end > w,
        units,
    })
}

fn shard_dir(rec: &RunRecord, p: &Pretraining) -> Result<PathBuf> {
    let m = p.shard_manifest.as_ref().context("pretrain-start records no shard manifest input")?;
    Ok(rec.paths.locate(m).parent().map(PathBuf::from).unwrap_or_default())
}

/// The last-visit slots of a stream of `end` positions over `w` windows shuffled per epoch with
/// `seed`, grouped by step (`k` positions a step), and `batches` steps drawn evenly among those
/// keeping at least `r` windows, each with its first `r`.
pub fn draw_units(w: u64, seed: u64, end: u64, k: u64, batches: usize, r: usize) -> Vec<Unit> {
    let last_epoch = (end - 1) / w;
    let in_last = end - last_epoch * w; // positions 0..in_last of the last epoch were read
    let order = jarip_data::reader::epoch_order(w, seed, last_epoch);
    let mut by_step: Vec<Unit> = Vec::new();
    let mut push = |flat: u64, window: u64| {
        let step = flat / k + 1;
        match by_step.last_mut() {
            Some(u) if u.step == step => u.windows.push(window),
            _ => by_step.push(Unit { step, windows: vec![window] }),
        }
    };
    if last_epoch > 0 {
        // The epoch before the last is complete: its windows not read again count there.
        let mut seen_again = vec![false; w as usize];
        for &win in &order[..in_last as usize] {
            seen_again[win as usize] = true;
        }
        let before = jarip_data::reader::epoch_order(w, seed, last_epoch - 1);
        for (q, &win) in before.iter().enumerate() {
            if !seen_again[win as usize] {
                push((last_epoch - 1) * w + q as u64, win);
            }
        }
    }
    for (q, &win) in order[..in_last as usize].iter().enumerate() {
        push(last_epoch * w + q as u64, win);
    }
    let eligible: Vec<Unit> = by_step.into_iter().filter(|u| u.windows.len() >= r).collect();
    let n = eligible.len();
    let picks: Vec<usize> = if n <= batches {
        (0..n).collect()
    } else {
        let mut v: Vec<usize> =
            (0..batches).map(|i| (i as u128 * (n as u128 - 1) / (batches as u128 - 1)) as usize).collect();
        v.dedup();
        v
    };
    picks.into_iter().map(|i| Unit { step: eligible[i].step, windows: eligible[i].windows[..r].to_vec() }).collect()
}

/// How the model sees the run's text.
pub struct Scorer<'a> {
    pub model: &'a LoadedModel,
    /// The run's tokenizer; when it differs from the model's, text is re-tokenised.
    pub run_tokenizer: &'a Tokenizer,
}

impl Scorer<'_> {
    pub fn retokenises(&self) -> bool {
        self.model.tokenizer.sha256() != self.run_tokenizer.sha256()
    }

    /// The token sequence the model scores for one window of the run's tokens.
    fn sequence(&self, window: &[u32]) -> Result<Vec<u32>> {
        let max = self.model.model.config().max_seq_len + 1;
        let mut ids = if self.retokenises() {
            let bytes = self.run_tokenizer.decode_bytes(window);
            let ids = self.model.tokenizer.encode_bytes(&bytes);
            if self.model.tokenizer.decode_bytes(&ids) != bytes {
                bail!(
                    "the model's tokenizer ({}) cannot encode the run's text (tokenizer {}) byte for byte; the test needs the same text under both",
                    self.model.tokenizer.sha256(),
                    self.run_tokenizer.sha256()
                );
            }
            ids
        } else {
            window.to_vec()
        };
        let vocab = self.model.model.config().vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            bail!("token {bad} is outside the model's vocabulary of {vocab}");
        }
        ids.truncate(max);
        Ok(ids)
    }

    /// Mean loss (nats per token) of the model over the windows' targets.
    pub fn unit_loss(&self, windows: &[Vec<u32>]) -> Result<f64> {
        use candle_core::{Device, Tensor};
        let seqs: Vec<Vec<u32>> = windows.iter().map(|w| self.sequence(w)).collect::<Result<_>>()?;
        let t = seqs.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        ensure!(t > 0, "a window holds fewer than two tokens");
        let (mut x, mut y) = (Vec::with_capacity(seqs.len() * t), Vec::with_capacity(seqs.len() * t));
        for s in &seqs {
            let n = s.len() - 1;
            x.extend_from_slice(&s[..n]);
            y.extend_from_slice(&s[1..]);
            // Padding sits after each sequence's end, so causal attention keeps it out of the
            // scored positions; it is dropped below.
            x.extend(std::iter::repeat_n(0, t - n));
            y.extend(std::iter::repeat_n(0, t - n));
        }
        let b = seqs.len();
        let xs = Tensor::from_vec(x, (b, t), &Device::Cpu)?;
        let ys = Tensor::from_vec(y, (b, t), &Device::Cpu)?;
        let losses: Vec<f32> = self.model.model.token_losses(&xs, &ys)?.to_vec1()?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (i, s) in seqs.iter().enumerate() {
            let n = s.len() - 1;
            sum += losses[i * t..i * t + n].iter().map(|&l| l as f64).sum::<f64>();
            count += n;
        }
        Ok(sum / count as f64)
    }
}

/// The result of [`order_test`].
#[derive(Debug, Clone, Serialize)]
pub struct OrderTest {
    pub n: usize,
    pub spearman: f64,
    pub kendall: f64,
    pub p_value: f64,
    pub log10_p: f64,
    /// The permutations run and how many reached the observed ρ.
    pub permutations: usize,
    pub as_extreme: u64,
    pub method: String,
    /// Kendall's one-sided asymptotic p.
    pub kendall_log10_p: f64,
}

/// Midranks from 1, doubled: odd or even integers, exact under ties.
fn doubled_ranks(x: &[f64]) -> Vec<i64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0i64; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share the midrank (i + j)/2 + 1; doubled: i + j + 2.
        for &k in &idx[i..=j] {
            r[k] = (i + j + 2) as i64;
        }
        i = j + 1;
    }
    r
}

/// Pearson's correlation.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Spearman's ρ (Pearson's correlation of midranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let rx: Vec<f64> = doubled_ranks(x).iter().map(|&r| r as f64).collect();
    let ry: Vec<f64> = doubled_ranks(y).iter().map(|&r| r as f64).collect();
    pearson(&rx, &ry)
}

/// −1, 0 or 1 (`f64::signum` gives 1 for 0).
fn sign(d: f64) -> i64 {
    i64::from(d > 0.0) - i64::from(d < 0.0)
}

/// Kendall's τ-b, and the one-sided (lower-tail) asymptotic p of its S as `ln p`, under the
/// exact null variance with ties in either variable (Kendall 1970, eq. 4.4).
pub fn kendall(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len();
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += sign(x[j] - x[i]) * sign(y[j] - y[i]);
        }
    }
    let ties = |v: &[f64]| -> Vec<f64> {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut out = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let j = sorted[i..].iter().take_while(|&&z| z == sorted[i]).count();
            if j > 1 {
                out.push(j as f64);
            }
            i += j;
        }
        out
    };
    let (tx, ty) = (ties(x), ties(y));
    let nf = n as f64;
    let n0 = nf * (nf - 1.0) / 2.0;
    let pairs = |t: &[f64]| t.iter().map(|t| t * (t - 1.0) / 2.0).sum::<f64>();
    let tau = s as f64 / ((n0 - pairs(&tx)) * (n0 - pairs(&ty))).sqrt();
    let v0 = nf * (nf - 1.0) * (2.0 * nf + 5.0);
    let vt = |t: &[f64]| t.iter().map(|t| t * (t - 1.0) * (2.0 * t + 5.0)).sum::<f64>();
    let t1 = |t: &[f64]| t.iter().map(|t| t * (t - 1.0)).sum::<f64>();
    let t2 = |t: &[f64]| t.iter().map(|t| t * (t - 1.0) * (t - 2.0)).sum::<f64>();
    let var = (v0 - vt(&tx) - vt(&ty)) / 18.0
        + t2(&tx) * t2(&ty) / (9.0 * nf * (nf - 1.0) * (nf - 2.0))
        + t1(&tx) * t1(&ty) / (2.0 * nf * (nf - 1.0));
    let ln_p = if var > 0.0 { ln_norm_sf(-(s as f64) / var.sqrt()) } else { 0.0 };
    (if tau.is_finite() { tau } else { 0.0 }, ln_p)
}

/// Permutations of `a` (fixed `b`) whose `Σ a_π(i) b_i` is at most `observed`, over `m`
/// permutations drawn in fixed chunks (each its own ChaCha8 stream), so the count does not
/// depend on the number of threads.
fn permutation_count(a: &[i64], b: &[i64], observed: i64, m: usize, seed: u64) -> u64 {
    const CHUNK: usize = 1 << 14;
    let chunks = m.div_ceil(CHUNK);
    (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(c as u64);
            let mut p = a.to_vec();
            let todo = CHUNK.min(m - c * CHUNK);
            let mut count = 0u64;
            for _ in 0..todo {
                for i in (1..p.len()).rev() {
                    let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
                    p.swap(i, j);
                }
                let s: i64 = p.iter().zip(b).map(|(x, y)| x * y).sum();
                count += u64::from(s <= observed);
            }
            count
        })
        .sum()
}

/// Tests H0 "`loss` is exchangeable across `step`" against "loss falls with step" (see the
/// module doc).
pub fn order_test(loss: &[f64], step: &[f64], permutations: usize, seed: u64) -> OrderTest {
    let n = loss.len();
    let rho = spearman(loss, step);
    let (tau, kendall_ln_p) = kendall(loss, step);
    let (a, b) = (doubled_ranks(loss), doubled_ranks(step));
    let observed: i64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let count = if permutations > 0 { permutation_count(&a, &b, observed, permutations, seed) } else { 0 };
    let ln10 = std::f64::consts::LN_10;
    let (p, log10_p, method) = if count >= MC_RESOLVED {
        let p = (count + 1) as f64 / (permutations + 1) as f64;
        (p, p.log10(), format!("Monte Carlo permutation ({count} of {permutations} permutations as extreme)"))
    } else {
        let ln_p = ln_norm_sf(-rho * ((n as f64) - 1.0).sqrt());
        (
            ln_p.exp(),
            ln_p / ln10,
            format!(
                "asymptotic, ρ·√(n−1) ~ N(0,1) ({count} of {permutations} permutations as extreme: beyond their reach)"
            ),
        )
    };
    OrderTest {
        n,
        spearman: rho,
        kendall: tau,
        p_value: p,
        log10_p,
        permutations,
        as_extreme: count,
        method,
        kendall_log10_p: kendall_ln_p / ln10,
    }
}

pub const TRAINED: &str = "trained-on-this-order";
pub const NOT_SHOWN: &str = "not-shown";

/// The full result of `provenance data-order`.
#[derive(Debug, Clone, Serialize)]
pub struct DataOrderReport {
    pub run: String,
    pub model: String,
    pub model_weights_sha256: String,
    pub model_tokenizer_sha256: String,
    pub run_tokenizer_sha256: String,
    pub retokenised: bool,
    /// `trained-on-this-order` when `p_value < alpha`, else `not-shown`.
    pub verdict: String,
    pub alpha: f64,
    pub p_value: f64,
    pub log10_p: f64,
    pub spearman: f64,
    pub kendall: f64,
    pub kendall_log10_p: f64,
    pub method: String,
    pub permutations: usize,
    /// Units tested (sampled steps).
    pub batches: usize,
    pub windows_per_batch: usize,
    pub data_seed: u64,
    pub steps: u64,
    pub epochs: f64,
    /// A sentence when windows were read more than once.
    pub revisits: Option<String>,
    pub seconds: f64,
    /// `(step, loss)` of every unit, in step order.
    pub points: Vec<(u64, f64)>,
}

/// Runs the test of `model` (named `model_name`) against the run in `rec`.
pub fn run_test(
    rec: &RunRecord,
    model: &LoadedModel,
    model_name: &str,
    opts: &DataOrderOptions,
    progress: bool,
) -> Result<DataOrderReport> {
    let t0 = Instant::now();
    ensure!(opts.alpha > 0.0 && opts.alpha < 1.0, "--alpha must be between 0 and 1, got {}", opts.alpha);
    let plan = plan(rec, opts)?;
    let p = rec.pretraining()?.context("no pretraining")?;
    let tok_file = p.tokenizer_file.as_ref().context("pretrain-start records no tokenizer input")?;
    let tok_path = rec.paths.locate(tok_file);
    let run_tokenizer = Tokenizer::load(&tok_path)
        .with_context(|| format!("cannot load the run's tokenizer {}", tok_path.display()))?;
    ensure!(
        run_tokenizer.sha256() == plan.tokenizer_sha256,
        "{} hashes to {}, the run recorded tokenizer {}",
        tok_path.display(),
        run_tokenizer.sha256(),
        plan.tokenizer_sha256
    );
    let set = ShardSet::open(&plan.shards, Some(&plan.tokenizer_sha256))?;
    let sampler =
        BatchSampler::resume(&set, plan.seq_len, 1, SamplerState { seed: plan.data_seed, epoch: 0, position: 0 })?;
    let scorer = Scorer { model, run_tokenizer: &run_tokenizer };
    let mut points = Vec::with_capacity(plan.units.len());
    let mut window = Vec::new();
    let mut last_print = Instant::now();
    for (i, u) in plan.units.iter().enumerate() {
        let windows: Vec<Vec<u32>> = u
            .windows
            .iter()
            .map(|&w| {
                sampler.read_window(w, &mut window);
                window.clone()
            })
            .collect();
        points.push((u.step, scorer.unit_loss(&windows)?));
        if progress && last_print.elapsed().as_secs_f64() > 5.0 {
            eprintln!("  scored {}/{} batches", i + 1, plan.units.len());
            last_print = Instant::now();
        }
    }
    let loss: Vec<f64> = points.iter().map(|p| p.1).collect();
    let steps: Vec<f64> = points.iter().map(|p| p.0 as f64).collect();
    let t = order_test(&loss, &steps, opts.permutations, opts.seed);
    let revisits = plan.revisited.then(|| {
        format!(
            "the run read {:.2} epochs: a window read more than once counts at its last visit (its earlier steps score only the windows not read again)",
            plan.epochs
        )
    });
    Ok(DataOrderReport {
        run: rec.run.display().to_string(),
        model: model_name.to_string(),
        model_weights_sha256: model.model.weights_sha256()?,
        model_tokenizer_sha256: model.tokenizer.sha256().to_string(),
        run_tokenizer_sha256: run_tokenizer.sha256().to_string(),
        retokenised: scorer.retokenises(),
        verdict: if t.p_value < opts.alpha { TRAINED } else { NOT_SHOWN }.to_string(),
        alpha: opts.alpha,
        p_value: t.p_value,
        log10_p: t.log10_p,
        spearman: t.spearman,
        kendall: t.kendall,
        kendall_log10_p: t.kendall_log10_p,
        method: t.method,
        permutations: t.permutations,
        batches: t.n,
        windows_per_batch: plan.units.first().map_or(0, |u| u.windows.len()),
        data_seed: plan.data_seed,
        steps: plan.steps,
        epochs: plan.epochs,
        revisits,
        seconds: t0.elapsed().as_secs_f64(),
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Which steps each window was visited at (for tests: the last-visit rule against a plain walk).
    fn visits(w: u64, seed: u64, end: u64) -> std::collections::HashMap<u64, Vec<u64>> {
        let mut out: std::collections::HashMap<u64, Vec<u64>> = std::collections::HashMap::new();
        let mut epoch = u64::MAX;
        let mut order = Vec::new();
        for f in 0..end {
            if f / w != epoch {
                epoch = f / w;
                order = jarip_data::reader::epoch_order(w, seed, epoch);
            }
            out.entry(order[(f % w) as usize]).or_default().push(f);
        }
        out
    }

    #[test]
    fn units_hold_each_window_at_its_last_visit() {
        for (w, end, k) in [(50u64, 30u64, 4u64), (50, 50, 5), (37, 100, 4), (40, 135, 5)] {
            let v = visits(w, 9, end);
            let units = draw_units(w, 9, end, k, 10_000, 1);
            let mut seen = std::collections::HashSet::new();
            for u in &units {
                for &win in &u.windows {
                    assert!(seen.insert(win), "window {win} in two units");
                    let last = *v[&win].last().unwrap();
                    assert_eq!(u.step, last / k + 1, "window {win}: unit step vs its last visit");
                }
            }
            // With r = 1 every step with a last visit is a unit; the windows are all visited ones.
            let steps_with_last: std::collections::BTreeSet<u64> =
                v.values().map(|f| f.last().unwrap() / k + 1).collect();
            assert_eq!(units.iter().map(|u| u.step).collect::<std::collections::BTreeSet<_>>(), steps_with_last);
        }
    }

    #[test]
    fn units_are_drawn_evenly_and_hold_r_windows() {
        let units = draw_units(1000, 3, 800, 8, 20, 8);
        assert_eq!(units.len(), 20);
        assert_eq!((units[0].step, units[19].step), (1, 100));
        assert!(units.iter().all(|u| u.windows.len() == 8));
        assert!(units.windows(2).all(|p| p[0].step < p[1].step));
    }

    #[test]
    fn statistics_match_plain_definitions() {
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        // Spearman with ties: Pearson of midranks (1,1 share rank 1.5).
        let rx = [4.0, 1.5, 5.0, 1.5, 6.0, 8.0, 3.0, 7.0];
        assert!((spearman(&x, &y) - pearson(&rx, &y)).abs() < 1e-12);
        // Kendall τ-b by counting pairs.
        let (mut c, mut d, mut tx) = (0.0, 0.0, 0.0);
        for i in 0..8 {
            for j in i + 1..8 {
                let s = (x[j] - x[i]) * (y[j] - y[i]);
                if x[i] == x[j] {
                    tx += 1.0;
                } else if s > 0.0 {
                    c += 1.0;
                } else {
                    d += 1.0;
                }
            }
        }
        let want = (c - d) / ((28.0 - tx) * 28.0f64).sqrt();
        assert!((kendall(&x, &y).0 - want).abs() < 1e-12);
        let rev: Vec<f64> = y.iter().rev().copied().collect();
        assert!((spearman(&rev, &y) + 1.0).abs() < 1e-12);
        assert!((kendall(&rev, &y).0 + 1.0).abs() < 1e-12);
    }

    /// Under H0 the p-value is uniform: P(p ≤ q) ≈ q, on both paths (permutation, and the
    /// asymptotic law where fewer than MC_RESOLVED permutations reach ρ).
    #[test]
    fn p_values_are_calibrated_under_exchangeability() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let trials = 3000;
        let n = 40;
        let step: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut ps = Vec::with_capacity(trials);
        let mut kps = Vec::with_capacity(trials);
        for t in 0..trials {
            // Heavy-tailed losses with ties, independent of the step.
            let loss: Vec<f64> = (0..n).map(|_| (rng.gen::<f64>().powi(3) * 20.0).round() / 4.0).collect();
            let r = order_test(&loss, &step, 400, t as u64);
            ps.push(r.p_value);
            kps.push(10f64.powf(r.kendall_log10_p));
        }
        for q in [0.005, 0.02, 0.05, 0.1, 0.3] {
            let share = |v: &[f64]| v.iter().filter(|&&p| p <= q).count() as f64 / trials as f64;
            let se = (q * (1.0 - q) / trials as f64).sqrt();
            let (s, k) = (share(&ps), share(&kps));
            assert!((s - q).abs() < 4.0 * se + 0.003, "Spearman: P(p ≤ {q}) = {s}");
            assert!((k - q).abs() < 4.0 * se + 0.003, "Kendall: P(p ≤ {q}) = {k}");
        }
    }

    #[test]
    fn a_falling_loss_is_found_and_the_asymptotic_tail_agrees_with_permutations() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = 200;
        let step: Vec<f64> = (0..n).map(|i| i as f64).collect();
        // A weak trend: permutations still resolve p, and the normal law must agree with them.
        let loss: Vec<f64> = (0..n).map(|i| 3.0 - 0.0008 * i as f64 + rng.gen::<f64>()).collect();
        let mc = order_test(&loss, &step, 200_000, 1);
        assert!(mc.as_extreme >= MC_RESOLVED && mc.method.starts_with("Monte Carlo"), "{}", mc.method);
        let asym = ln_norm_sf(-mc.spearman * ((n - 1) as f64).sqrt()).exp();
        assert!((asym / mc.p_value).ln().abs() < 0.35, "asymptotic {asym} vs permutation {}", mc.p_value);
        // A strong trend is beyond the permutations: the asymptotic p is used.
        let strong: Vec<f64> = (0..n).map(|i| 3.0 - 0.02 * i as f64 + rng.gen::<f64>()).collect();
        let r = order_test(&strong, &step, 10_000, 1);
        assert!(r.method.starts_with("asymptotic") && r.log10_p < -10.0, "{} {}", r.method, r.log10_p);
        assert!(r.spearman < -0.8 && r.kendall < -0.6);
    }

    #[test]
    fn permutation_counts_do_not_depend_on_threads() {
        let a: Vec<i64> = (0..30).map(|i| (i * 7 % 30) as i64).collect();
        let b: Vec<i64> = (0..30).collect();
        let obs: i64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let c1 = one.install(|| permutation_count(&a, &b, obs, 50_000, 3));
        assert_eq!(c1, permutation_count(&a, &b, obs, 50_000, 3));
    }
}
