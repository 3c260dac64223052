//! The lineage hypothesis test: were A and B initialised independently?
//!
//! **H0**: B's weights were initialised independently of A's, and B's training treats the
//! hidden units of a layer alike (every optimizer in use is permutation-equivariant), so under
//! H0 nothing ties B's unit j to A's unit i. **H1**: B is A after any mix of further training,
//! noise, permutation of hidden units, heads, experts or residual channels, rescaling that
//! preserves the function, pruning or growing widths, extending the vocabulary.
//!
//! The test, streamed tensor by tensor (never a whole model in memory):
//!
//! 1. **Residual channels** are anchored on tokens, which a copier cannot permute: each A channel
//!    is the vector of its embedding entries over one half of the tokens both tokenizers share,
//!    less the model's top [`SHARED_COMPONENTS`] token-space components (features every language
//!    model learns, which would pair channels of independent models), and is matched to the B
//!    channel with the largest |correlation| (sign kept: flipping a channel and its norm gain is a
//!    symmetry). Every B tensor is then read in A's channel order,
//!    with norm gains folded into the matrices that read after them (undoing gain rescaling).
//! 2. **Each group** of tensors that share a unit axis is tested on its own, aligning on one
//!    tensor and testing on another: an MLP's units are matched on the gate (or up) rows and
//!    tested on the up rows and down columns; attention, router and other matrices are matched and
//!    tested on the same tensor. Alignment and test always read disjoint halves of the residual
//!    channels (split by the B channel each A channel maps to, so no stored value of B enters
//!    both). Residual channels are matched on one half of the tokens and tested on the other (and
//!    the head, on the test tokens). Each of A's
//!    sampled units is matched to the B unit of largest |correlation| (so pruned, grown and
//!    permuted widths need nothing special), and the statistic is `T = Σᵢ |r(i, π(i))|` on the
//!    test entries.
//! 3. **The p-value** is exact for that statistic's null: under H0 the pairing found on the
//!    alignment tensor says nothing about the test tensor, so `T` is one draw of
//!    `Σᵢ |r(i, σ(π(i)))|` over random re-pairings σ. Whatever structure both models share —
//!    unit norms, hub units, outlier channels, what the same data teaches — is in every
//!    re-pairing too. The permutation distribution's mean and variance are exact (Hoeffding);
//!    groups of ≥ 256 units use its normal limit (with a Cornish–Fisher step for the skew of |r|),
//!    smaller ones Monte Carlo or all permutations.
//!    Layer and model p-values combine the groups by Fisher's method (independent under H0).
//! 4. **Power**: for a derivative whose matched weights correlate with A's at ρ, each group's
//!    expected z follows from its shapes (how often the matching finds the true partner, and the
//!    shift of |r| on the test entries), and Fisher's statistic's power at α from those.
//!    `rho_min` is the smallest ρ detected with probability ≥ 0.99.
//!
//! The assumption that carries the p-value for *trained* models is that independently
//! initialised models do not grow unit-to-unit correspondences that show on one tensor *and* on
//! another: a shared structure of all units is absorbed by the re-pairing null, a coincidence
//! of a particular pair is not. For models drawn from their initialisation the p-values are
//! exactly uniform (tested over 100 pairs); for jarip models trained from different seeds on the
//! same shards they are unremarkable (tested).
//!
//! Verdicts: `derived` when the combined p < α; `unrelated` when p ≥ 0.01 and `rho_min` ≤
//! `max_rho_min`; `inconclusive` otherwise.

use crate::pvalue::{self, GroupShape, PermMethod, LN10};
use crate::weights::WeightSource;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor as CTensor};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct TestOptions {
    /// False-positive rate of `derived`.
    pub alpha: f64,
    /// A's units tested per group (a fixed stride over the units).
    pub units: usize,
    /// Shared tokens per half (alignment / test) of the residual-channel group.
    pub tokens: usize,
    /// Monte Carlo permutations for groups of fewer than 256 units.
    pub permutations: usize,
    pub seed: u64,
    /// `unrelated` needs p at least this.
    pub unrelated_p: f64,
    /// Power demanded of `rho_min`.
    pub power_target: f64,
    /// `unrelated` needs `rho_min` at most this.
    pub max_rho_min: f64,
    /// The correlation at which `power` is reported.
    pub power_rho: f64,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            alpha: 1e-6,
            units: 512,
            tokens: 8192,
            permutations: 9999,
            seed: 0x5eed,
            unrelated_p: 0.01,
            power_target: 0.99,
            max_rho_min: 0.5,
            power_rho: 0.05,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Derived,
    Unrelated,
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Derived => "derived",
            Verdict::Unrelated => "unrelated",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// One tested group: a unit axis shared by the alignment and the test entries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupResult {
    /// None: outside the blocks (residual channels).
    pub layer: Option<usize>,
    /// B's block paired with it (the same index unless the depths differ).
    pub layer_b: Option<usize>,
    /// e.g. `mlp`, `mlp.expert3`, `attn.q`, `residual`.
    pub kind: String,
    pub tensors_a: Vec<String>,
    pub tensors_b: Vec<String>,
    pub units_a: usize,
    pub units_b: usize,
    pub tested_units: usize,
    pub align_on: String,
    pub test_on: String,
    pub align_entries: usize,
    pub test_entries: usize,
    /// Mean |r| of the matched pairs on the test entries.
    pub matched_corr: f64,
    /// Mean |r| of re-paired (non-matched) pairs: the null level.
    pub null_corr: f64,
    /// Share of tested units whose partner has the same index (1 when B is not permuted).
    pub same_index: f64,
    pub z: f64,
    pub log10_p: f64,
    pub method: String,
    #[serde(skip)]
    shape: Option<GroupShape>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    pub layer: Option<usize>,
    pub groups: usize,
    /// Mean over the layer's groups of matched − null |r|.
    pub similarity: f64,
    pub log10_p: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResidualAlignment {
    pub how: String,
    pub channels_a: usize,
    pub channels_b: usize,
    pub shared_tokens: usize,
    /// Share of A's channels matched to the B channel with the same index.
    pub same_index: f64,
    /// Mean |r| of each A channel with its match, on the alignment tokens.
    pub mean_match_corr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub a: String,
    pub b: String,
    pub verdict: Verdict,
    pub alpha: f64,
    /// Combined p (0.0 when it underflows: read `log10_p`).
    pub p_value: f64,
    pub log10_p: f64,
    pub method: String,
    /// Power to detect a derivative whose matched weights correlate with A's at `power_rho`.
    pub power: f64,
    pub power_rho: f64,
    /// Smallest correlation detected with probability ≥ `power_target` (None: none ≤ 1).
    pub rho_min: Option<f64>,
    pub power_target: f64,
    pub reasons: Vec<String>,
    pub residual: Option<ResidualAlignment>,
    pub layers: Vec<LayerResult>,
    pub groups: Vec<GroupResult>,
    pub unmatched_a: Vec<String>,
    pub unmatched_b: Vec<String>,
    pub warnings: Vec<String>,
    pub bytes_read: u64,
    pub seconds: f64,
}

// ---------------------------------------------------------------------------------------------
// Naming: which role each tensor plays, in the naming schemes of the common model families.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Role {
    Embed,
    Head,
    AttnNorm,
    MlpNorm,
    PreFfnNorm,
    FinalNorm,
    Q,
    K,
    V,
    O,
    Qkv,
    Gate,
    Up,
    GateUp,
    Down,
    Router,
    Matrix,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Scope {
    Dense,
    Shared,
    Expert(usize),
}

#[derive(Debug, Clone)]
struct Part {
    name: String,
    layer: Option<usize>,
    scope: Scope,
    role: Role,
    /// GPT-2's Conv1D stores [in, out].
    conv1d: bool,
    /// The last name segment, telling apart matrices of role `Matrix`.
    leaf: String,
}

fn classify(name: &str) -> Part {
    let lower = name.to_ascii_lowercase();
    let segs: Vec<&str> = lower.split('.').collect();
    let mut core: Vec<&str> = segs.clone();
    if matches!(core.last(), Some(&"weight")) {
        core.pop();
    }
    let leaf = core.last().copied().unwrap_or("").to_string();
    let parent = if core.len() >= 2 { core[core.len() - 2] } else { "" };
    let num = |s: &str| s.parse::<usize>().ok();
    let layer = segs.iter().position(|s| num(s).is_some()).and_then(|i| num(segs[i]));
    let expert = segs.windows(2).find(|w| w[0] == "experts" && num(w[1]).is_some()).and_then(|w| num(w[1]));
    let scope = if lower.contains("shared_expert.") || lower.contains("shared_experts.") {
        Scope::Shared
    } else if let Some(e) = expert {
        Scope::Expert(e)
    } else {
        Scope::Dense
    };
    let conv1d = segs.iter().any(|s| matches!(*s, "c_attn" | "c_fc" | "c_proj"));
    let in_attn = parent.contains("attn") || parent.contains("attention");
    let l = leaf.as_str();
    let role = match l {
        "embed_tokens" | "wte" | "word_embeddings" | "embed_in" | "tok_embeddings" => Role::Embed,
        "lm_head" | "embed_out" | "output_layer" => Role::Head,
        "output" if layer.is_none() => Role::Head,
        "input_layernorm" | "ln_1" | "attention_norm" | "attn_norm" => Role::AttnNorm,
        "post_attention_layernorm" | "ln_2" | "ffn_norm" | "mlp_norm" => Role::MlpNorm,
        "pre_feedforward_layernorm" => Role::PreFfnNorm,
        "norm" | "ln_f" | "final_layernorm" | "final_layer_norm" if layer.is_none() => Role::FinalNorm,
        "q_proj" | "wq" | "query" => Role::Q,
        "k_proj" | "wk" | "key" => Role::K,
        "v_proj" | "wv" | "value" => Role::V,
        "o_proj" | "wo" | "out_proj" => Role::O,
        "dense" | "c_proj" if in_attn => Role::O,
        "c_attn" | "query_key_value" | "qkv_proj" | "wqkv" | "w_pack" => Role::Qkv,
        "gate_proj" | "w1" => Role::Gate,
        "up_proj" | "w3" | "c_fc" | "fc1" | "dense_h_to_4h" => Role::Up,
        "gate_up_proj" => Role::GateUp,
        "down_proj" | "w2" | "c_proj" | "fc2" | "dense_4h_to_h" => Role::Down,
        "gate" | "router" if expert.is_none() => Role::Router,
        _ => Role::Matrix,
    };
    Part {
        name: name.to_string(),
        layer: if role == Role::FinalNorm { None } else { layer },
        scope,
        role,
        conv1d,
        leaf,
    }
}

/// The tensors of one model, by role.
struct Layout {
    parts: Vec<Part>,
}

impl Layout {
    fn new(src: &WeightSource) -> Self {
        let mut parts: Vec<Part> = src.names().map(classify).collect();
        for p in parts.iter_mut() {
            let shape = &src.info(&p.name).map(|i| i.shape.clone()).unwrap_or_default();
            if shape.len() < 2 && !matches!(p.role, Role::AttnNorm | Role::MlpNorm | Role::PreFfnNorm | Role::FinalNorm)
            {
                p.role = Role::Other;
            }
            if shape.len() == 1 && p.leaf.contains("norm") && p.role == Role::Matrix {
                p.role = Role::Other;
            }
        }
        Self { parts }
    }

    fn find(&self, layer: Option<usize>, scope: &Scope, role: Role) -> Option<&Part> {
        self.parts.iter().find(|p| p.layer == layer && &p.scope == scope && p.role == role)
    }

    fn embed(&self) -> Option<&Part> {
        self.parts.iter().find(|p| p.role == Role::Embed)
    }

    fn head(&self) -> Option<&Part> {
        self.parts.iter().find(|p| p.role == Role::Head)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading units: the selected units of a tensor as rows over A's residual channels.

/// A channel c of A ↔ B channel `src[c]`, with sign `sign[c]`.
#[derive(Debug, Clone)]
struct ChannelMap {
    src: Vec<usize>,
    sign: Vec<f32>,
}

/// How a tensor's units lie.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Orient {
    /// Rows are units, columns residual channels (a Linear that reads the residual stream).
    Rows,
    /// Columns are units, rows residual channels (a Linear that writes it; Conv1D readers).
    Cols,
}

/// Orientation of a 2-D tensor of `role` in a model of residual width `d`; None when neither
/// axis is the residual one.
fn orient(part: &Part, rows: usize, cols: usize, d: usize) -> Option<Orient> {
    let writer = matches!(part.role, Role::O | Role::Down);
    let (r, c) = if part.conv1d { (cols, rows) } else { (rows, cols) };
    // (r, c) now reads as a Linear's [out, in].
    let o = if writer {
        if r == d {
            Orient::Cols
        } else if c == d {
            Orient::Rows
        } else {
            return None;
        }
    } else if c == d {
        Orient::Rows
    } else if r == d {
        Orient::Cols
    } else {
        return None;
    };
    Some(if part.conv1d {
        match o {
            Orient::Rows => Orient::Cols,
            Orient::Cols => Orient::Rows,
        }
    } else {
        o
    })
}

/// One model as the test reads it.
struct Side<'a> {
    src: &'a WeightSource,
    layout: Layout,
    d: usize,
    /// Gemma stores norm gains as offsets from 1.
    gain_offset: f32,
}

impl<'a> Side<'a> {
    fn shape2(&self, name: &str) -> Result<(usize, usize)> {
        let i = self.src.info(name).with_context(|| format!("tensor {name} vanished"))?;
        Ok((i.rows(), i.cols()))
    }

    fn gain(&self, part: Option<&Part>) -> Result<Option<Vec<f32>>> {
        let Some(p) = part else { return Ok(None) };
        let g = self.src.read(&p.name)?;
        if g.len() != self.d {
            return Ok(None);
        }
        Ok(Some(g.into_iter().map(|x| x + self.gain_offset).collect()))
    }

    /// The norm whose output `part` reads, if any.
    fn gain_for(&self, part: &Part) -> Result<Option<Vec<f32>>> {
        let find = |r| self.layout.find(part.layer, &Scope::Dense, r);
        let norm = match part.role {
            Role::Q | Role::K | Role::V | Role::Qkv => find(Role::AttnNorm),
            Role::Gate | Role::Up | Role::GateUp | Role::Router => {
                find(Role::PreFfnNorm).or_else(|| find(Role::MlpNorm))
            }
            Role::Head => self.layout.find(None, &Scope::Dense, Role::FinalNorm),
            _ => None,
        };
        self.gain(norm)
    }

    /// Units `units` (indices along the unit axis; None = all) of `part`, each a row of
    /// `d_out` = A's width values: residual channels in A's order (through `map`), gain folded.
    fn units(&self, part: &Part, units: Option<&[usize]>, map: Option<&ChannelMap>) -> Result<(Vec<f32>, usize)> {
        let (rows, cols) = self.shape2(&part.name)?;
        let o = orient(part, rows, cols, self.d).with_context(|| {
            format!("tensor {} [{rows}, {cols}] has no axis of the residual width {}", part.name, self.d)
        })?;
        let n_units = if o == Orient::Rows { rows } else { cols };
        if let Some(u) = units.and_then(|u| u.iter().copied().max()).filter(|&u| u >= n_units) {
            bail!("tensor {} [{rows}, {cols}] has {n_units} units; unit {u} was asked for", part.name);
        }
        let all: Vec<usize>;
        let sel = match units {
            Some(u) => u,
            None => {
                all = (0..n_units).collect();
                &all
            }
        };
        let d = self.d;
        let mut out = match o {
            Orient::Rows if units.is_none() => self.src.read(&part.name)?,
            Orient::Rows => self.src.read_row_list(&part.name, sel)?,
            Orient::Cols => {
                let mut out = vec![0f32; sel.len() * d];
                // Stream the rows (residual channels) in chunks, keeping the selected columns.
                let chunk = (64 << 20) / (4 * cols.max(1)) + 1;
                let mut r0 = 0;
                while r0 < rows {
                    let r1 = (r0 + chunk).min(rows);
                    let data = self.src.read_rows(&part.name, r0..r1)?;
                    for r in r0..r1 {
                        let row = &data[(r - r0) * cols..(r - r0 + 1) * cols];
                        for (k, &u) in sel.iter().enumerate() {
                            out[k * d + r] = row[u];
                        }
                    }
                    r0 = r1;
                }
                out
            }
        };
        if let Some(g) = self.gain_for(part)? {
            out.par_chunks_mut(d).for_each(|row| row.iter_mut().zip(&g).for_each(|(x, y)| *x *= y));
        }
        Ok((apply_map(out, d, map), n_units))
    }
}

/// Rows over B's channels → rows over A's channels.
fn apply_map(rows: Vec<f32>, d_b: usize, map: Option<&ChannelMap>) -> Vec<f32> {
    let Some(m) = map else { return rows };
    let d_a = m.src.len();
    if d_a == d_b {
        // In place, a row at a time (no second buffer the size of the tensor).
        let mut rows = rows;
        rows.par_chunks_mut(d_b).for_each_init(
            || vec![0f32; d_b],
            |tmp, r| {
                tmp.copy_from_slice(r);
                for c in 0..d_a {
                    r[c] = tmp[m.src[c]] * m.sign[c];
                }
            },
        );
        return rows;
    }
    let n = rows.len() / d_b.max(1);
    let mut out = vec![0f32; n * d_a];
    out.par_chunks_mut(d_a).zip(rows.par_chunks(d_b)).for_each(|(o, r)| {
        for c in 0..d_a {
            o[c] = r[m.src[c]] * m.sign[c];
        }
    });
    out
}

/// Centres each row and scales it to unit norm, so dot products are Pearson correlations.
fn standardize(rows: &mut [f32], d: usize) {
    rows.par_chunks_mut(d).for_each(|r| {
        let mean = r.iter().map(|&x| x as f64).sum::<f64>() / d as f64;
        let ss: f64 = r.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
        let inv = if ss > 0.0 { 1.0 / ss.sqrt() } else { 0.0 };
        r.iter_mut().for_each(|x| *x = ((*x as f64 - mean) * inv) as f32);
    });
}

/// Token-space directions removed from each model's channel vectors before they are matched
/// or tested: what every language model learns about tokens (frequency, length, digits, spaces)
/// loads on channels of independent models alike, and would otherwise pair them.
pub const SHARED_COMPONENTS: usize = 32;

/// Removes from the rows of `x` (rows × cols) their top `k` right singular directions (found by
/// randomized subspace iteration with a fixed start), in place.
fn remove_top_components(x: &mut [f32], rows: usize, cols: usize, k: usize) -> Result<()> {
    let k = k.min(rows / 4).min(cols / 4);
    if k == 0 {
        return Ok(());
    }
    let dev = Device::Cpu;
    let t = CTensor::from_slice(x, (rows, cols), &dev)?;
    let start: Vec<f32> =
        (0..cols * k).map(|i| (((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0) - 0.5).collect();
    let mut v = crate::stats::orthonormalize(&CTensor::from_vec(start, (cols, k), &dev)?)?;
    for _ in 0..4 {
        // v ← orth(Xᵀ X v)
        v = crate::stats::orthonormalize(&t.t()?.matmul(&t.matmul(&v)?)?)?;
    }
    let resid = (&t - t.matmul(&v)?.matmul(&v.t()?)?)?;
    x.copy_from_slice(&resid.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

/// Columns `keep` of each row.
fn columns(rows: &[f32], d: usize, keep: &[usize]) -> Vec<f32> {
    rows.chunks_exact(d).flat_map(|r| keep.iter().map(move |&c| r[c])).collect()
}

/// `a · bᵀ` for row-major a (m×d) and b (n×d).
fn cross(a: &[f32], m: usize, b: &[f32], n: usize, d: usize) -> Result<Vec<f32>> {
    if m == 0 || n == 0 || d == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let ta = CTensor::from_slice(a, (m, d), &Device::Cpu)?;
    let tb = CTensor::from_slice(b, (n, d), &Device::Cpu)?;
    Ok(ta.matmul(&tb.t()?)?.flatten_all()?.to_vec1::<f32>()?)
}

/// For each row of `sims` (m×n), the column of largest |value| and that value.
fn argmax_abs(sims: &[f32], n: usize) -> Vec<(usize, f32)> {
    sims.par_chunks(n)
        .map(|row| {
            let mut best = (0usize, row.first().copied().unwrap_or(0.0));
            for (j, &v) in row.iter().enumerate() {
                if v.abs() > best.1.abs() {
                    best = (j, v);
                }
            }
            best
        })
        .collect()
}

/// A's residual channels split in two halves whose B channels are disjoint: by the parity of the
/// B channel each maps to (of its own index without a map). The alignment reads one half and the
/// test the other, so no stored value enters both, even where several A channels share a B one.
fn halves(d: usize, map: Option<&ChannelMap>) -> (Vec<usize>, Vec<usize>) {
    (0..d).partition(|&c| map.map_or(c, |m| m.src[c]).is_multiple_of(2))
}

/// For each of A's tested units (`xa`, m rows standardised over `cols` of A's channels), the B
/// unit of `part` (unit indices `offset..offset + n`) of largest |r| over the same channels. B is
/// read in blocks of units where its units are rows, so memory stays bounded whatever its size;
/// where it is read whole in one pass (units are columns), that read is returned too, so the
/// partners' entries need not be read again.
#[allow(clippy::too_many_arguments)]
fn nearest(
    xa: &[f32],
    m: usize,
    b: &Side,
    part: &Part,
    offset: usize,
    n: usize,
    map: Option<&ChannelMap>,
    cols: &[usize],
    d_a: usize,
) -> Result<(Vec<usize>, Option<Vec<f32>>)> {
    if n == 0 {
        bail!("tensor {} of B has no units", part.name);
    }
    let (r, c) = b.shape2(&part.name)?;
    let block = match orient(part, r, c, b.d) {
        Some(Orient::Rows) => ((32usize << 20) / (4 * b.d.max(1))).max(1),
        _ => n,
    };
    let k = cols.len();
    let mut best = vec![(0usize, 0f32); m];
    let mut whole = None;
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        let idx: Vec<usize> = (start + offset..end + offset).collect();
        let (u, _) = b.units(part, Some(&idx), map)?;
        let mut x = columns(&u, d_a, cols);
        if block >= n && offset == 0 {
            whole = Some(u);
        }
        standardize(&mut x, k);
        let sims = cross(xa, m, &x, end - start, k)?;
        for (i, (bj, bv)) in best.iter_mut().enumerate() {
            for (j, &v) in sims[i * (end - start)..(i + 1) * (end - start)].iter().enumerate() {
                if v.abs() > bv.abs() || (start == 0 && j == 0) {
                    *bj = start + j;
                    *bv = v;
                }
            }
        }
        start = end;
    }
    Ok((best.into_iter().map(|x| x.0).collect(), whole))
}

/// A fixed stride of at most `m` indices out of `n`.
fn stride(n: usize, m: usize) -> Vec<usize> {
    if n <= m {
        return (0..n).collect();
    }
    (0..m).map(|k| k * n / m).collect()
}

/// Unit vectors made of several standardised parts, concatenated and scaled so each part
/// weighs the same (a per-part rescaling of a unit cannot move its correlation).
fn join_parts(parts: Vec<Vec<f32>>, widths: &[usize], n: usize) -> (Vec<f32>, usize) {
    let total: usize = widths.iter().sum();
    let mut out = vec![0f32; n * total];
    let k = (parts.len() as f32).sqrt().max(1.0);
    for (p, (part, &w)) in parts.into_iter().zip(widths).enumerate() {
        let off: usize = widths[..p].iter().sum();
        for i in 0..n {
            for (j, v) in part[i * w..(i + 1) * w].iter().enumerate() {
                out[i * total + off + j] = v / k;
            }
        }
    }
    (out, total)
}

/// What the matched-pair test needs: standardised rows.
struct Matched {
    /// A's tested units × test entries.
    ya: Vec<f32>,
    /// Their partners in B × test entries.
    yb: Vec<f32>,
    d: usize,
    m: usize,
    partners: Vec<usize>,
    tested: Vec<usize>,
}

fn run_test(mt: Matched, mut g: GroupResult, shape: GroupShape, opts: &TestOptions, seed: u64) -> Result<GroupResult> {
    let m = mt.m;
    let same = mt.tested.iter().zip(&mt.partners).filter(|(a, b)| a == b).count();
    let r32 = cross(&mt.ya, m, &mt.yb, m, mt.d)?;
    let r: Vec<f64> = r32.iter().map(|v| v.abs() as f64).collect();
    let (ln_p, z, method) = pvalue::permutation_test(&r, m, opts.permutations, seed);
    let diag: f64 = (0..m).map(|i| r[i * m + i]).sum::<f64>() / m.max(1) as f64;
    let off = if m > 1 { (r.iter().sum::<f64>() - diag * m as f64) / (m * (m - 1)) as f64 } else { 0.0 };
    g.tested_units = m;
    g.matched_corr = diag;
    g.null_corr = off;
    g.same_index = same as f64 / m.max(1) as f64;
    g.z = z;
    g.log10_p = ln_p / LN10;
    g.method = method.describe();
    let p_floor = match method {
        PermMethod::Clt => 0.0,
        PermMethod::Exact => 1.0 / (1..=m).map(|x| x as f64).product::<f64>(),
        PermMethod::MonteCarlo(k) => 1.0 / (k + 1) as f64,
    };
    g.shape = Some(GroupShape { p_floor, ..shape });
    Ok(g)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------------
// Tokens and residual channels.

/// Token ids of A and B that stand for the same token string (by id when neither tokenizer is
/// known and the vocabularies are the same size).
fn shared_tokens(a: &Side, b: &Side, ea: usize, eb: usize) -> (Vec<(usize, usize)>, String) {
    if let (Some(ta), Some(tb)) = (&a.src.tokenizer, &b.src.tokenizer) {
        if let Some((pairs, how)) = crate::invariants::shared_token_ids(ta, tb, ea, eb) {
            return (pairs, how.to_string());
        }
    }
    if ea == eb {
        return (
            (0..ea).map(|i| (i, i)).collect(),
            "token ids (no tokenizer on both sides; equal vocabularies)".into(),
        );
    }
    (vec![], "no shared tokens known (no tokenizer.json on both sides, vocabularies of different sizes)".into())
}

/// Channels of an embedding-like tensor (`rows` tokens × d) as rows over the given tokens.
fn channel_rows(side: &Side, part: &Part, tokens: &[usize]) -> Result<Vec<f32>> {
    let (rows, cols) = side.shape2(&part.name)?;
    let d = side.d;
    let data = if cols == d {
        side.src.read_row_list(&part.name, tokens)?
    } else if rows == d {
        // stored [d, vocab] (rare): read whole, pick columns
        if let Some(t) = tokens.iter().find(|&&t| t >= cols) {
            bail!("tensor {} [{rows}, {cols}] has no token {t}", part.name);
        }
        let all = side.src.read(&part.name)?;
        let mut t = vec![0f32; tokens.len() * d];
        for c in 0..d {
            for (k, &tok) in tokens.iter().enumerate() {
                t[k * d + c] = all[c * cols + tok];
            }
        }
        t
    } else {
        bail!("tensor {} [{rows}, {cols}] has no axis of the residual width {d}", part.name);
    };
    let mut data = data;
    if part.role == Role::Head {
        if let Some(g) = side.gain_for(part)? {
            data.par_chunks_mut(d).for_each(|row| row.iter_mut().zip(&g).for_each(|(x, y)| *x *= y));
        }
    }
    // tokens × d → d × tokens
    let t = tokens.len();
    let mut out = vec![0f32; d * t];
    for (k, row) in data.chunks_exact(d).enumerate() {
        for c in 0..d {
            out[c * t + k] = row[c];
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// Runs the test on two models given by path (any form [`WeightSource::open`] takes).
pub fn test_paths(a: &Path, b: &Path, opts: &TestOptions) -> Result<TestReport> {
    let sa = WeightSource::open(a).with_context(|| format!("model A ({})", a.display()))?;
    let sb = WeightSource::open(b).with_context(|| format!("model B ({})", b.display()))?;
    test(&sa, &sb, opts)
}

fn model_type(src: &WeightSource) -> String {
    src.config
        .as_ref()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 16 << 20))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["model_type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Residual width: the embedding's width, else the most common width of the norm gains.
fn residual_width(src: &WeightSource, layout: &Layout) -> Option<usize> {
    if let Some(e) = layout.embed() {
        return src.info(&e.name).map(|i| i.cols());
    }
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &layout.parts {
        if matches!(p.role, Role::AttnNorm | Role::MlpNorm | Role::FinalNorm) {
            if let Some(i) = src.info(&p.name) {
                *count.entry(i.numel()).or_default() += 1;
            }
        }
    }
    count.into_iter().max_by_key(|&(_, c)| c).map(|(w, _)| w)
}

fn side(src: &WeightSource) -> Result<Side<'_>> {
    let layout = Layout::new(src);
    let d = residual_width(src, &layout).with_context(|| {
        format!("{}: no embedding and no norm gains, so the residual width is unknown", src.dir.display())
    })?;
    if d < 8 {
        bail!("{}: residual width {d} is too small to test (at least 8)", src.dir.display());
    }
    let gain_offset = if model_type(src).starts_with("gemma") { 1.0 } else { 0.0 };
    Ok(Side { src, layout, d, gain_offset })
}

/// The test on two opened models.
pub fn test(sa: &WeightSource, sb: &WeightSource, opts: &TestOptions) -> Result<TestReport> {
    let t0 = std::time::Instant::now();
    let a = side(sa).with_context(|| format!("model A ({})", label(sa)))?;
    let b = side(sb).with_context(|| format!("model B ({})", label(sb)))?;
    let mut warnings = Vec::new();
    let mut groups: Vec<GroupResult> = Vec::new();
    let mut used_a: BTreeSet<String> = BTreeSet::new();
    let mut used_b: BTreeSet<String> = BTreeSet::new();

    // 1. Residual channels, anchored on shared tokens.
    let (map, residual) = residual_channels(&a, &b, opts, &mut groups, &mut used_a, &mut used_b, &mut warnings)?;
    let map = map.as_ref();

    // 2. Block groups, layer by layer.
    let layers_a: BTreeSet<usize> = a.layout.parts.iter().filter_map(|p| p.layer).collect();
    let layers_b: BTreeSet<usize> = b.layout.parts.iter().filter_map(|p| p.layer).collect();
    let pairs: Vec<(usize, usize)> = if layers_a == layers_b {
        layers_a.iter().map(|&l| (l, l)).collect()
    } else {
        let pairs = match_layers(&a, &b, &layers_a, &layers_b, map)?;
        warnings.push(format!(
            "the models have different depths ({} and {} blocks): each block of A is paired with the block of B \
             whose weights' channel covariance is most alike ({}); blocks of A with no true partner test as unrelated, \
             and the combined test sees the rest",
            layers_a.len(),
            layers_b.len(),
            pairs.iter().map(|(x, y)| format!("{x}→{y}")).collect::<Vec<_>>().join(" ")
        ));
        pairs
    };
    for &(la, lb) in &pairs {
        layer_groups(&a, &b, (la, lb), map, opts, &mut groups, &mut used_a, &mut used_b)?;
    }

    // Norm gains have no unit axis: they are folded into the matrices that read after them, and
    // counted as such rather than listed as untested.
    let mut folded_gains = 0;
    for (side, used) in [(&a, &mut used_a), (&b, &mut used_b)] {
        for p in &side.layout.parts {
            if matches!(p.role, Role::AttnNorm | Role::MlpNorm | Role::PreFfnNorm | Role::FinalNorm) {
                used.insert(p.name.clone());
                folded_gains += 1;
            }
        }
    }
    let unmatched = |s: &Side, used: &BTreeSet<String>| -> Vec<String> {
        s.layout.parts.iter().filter(|p| !used.contains(&p.name)).map(|p| p.name.clone()).collect()
    };
    let unmatched_a = unmatched(&a, &used_a);
    let unmatched_b = unmatched(&b, &used_b);
    let numel = |s: &WeightSource, names: &[String]| -> u64 {
        names.iter().filter_map(|n| s.info(n)).map(|i| i.numel() as u64).sum()
    };
    let untested = numel(sa, &unmatched_a) as f64 / sa.num_params().max(1) as f64;
    if untested > 0.2 {
        warnings.push(format!(
            "{:.0}% of A's parameters were not tested (listed below: no partner in B, or a layout the test does \
             not read, such as experts fused into one 3-D tensor); the verdict speaks for the rest",
            untested * 100.0
        ));
    }
    warnings.push(format!(
        "{folded_gains} norm gains of the two models are folded into the matrices that read after them, not tested on \
         their own (they have no unit axis; raw cosine of gains is no evidence)"
    ));
    if groups.is_empty() {
        bail!(
            "no tensor of {} could be paired with a tensor of {} (no shared roles such as embedding, attention or \
             MLP projections with a residual axis)\n  A: {}\n  B: {}",
            sa.dir.display(),
            sb.dir.display(),
            preview(sa),
            preview(sb)
        );
    }
    finish(sa, sb, groups, residual, unmatched_a, unmatched_b, warnings, opts, t0)
}

/// The model's file when it is one file, else its directory.
fn label(s: &WeightSource) -> String {
    match s.files.as_slice() {
        [one] => one.display().to_string(),
        _ => s.dir.display().to_string(),
    }
}

fn preview(s: &WeightSource) -> String {
    let mut v: Vec<String> = s
        .names()
        .take(4)
        .map(|n| format!("{n} {:?}", s.info(n).map(|i| i.shape.clone()).unwrap_or_default()))
        .collect();
    let total = s.names().count();
    if total > 4 {
        v.push(format!("… {} more", total - 4));
    }
    v.join(", ")
}

#[allow(clippy::too_many_arguments)]
fn residual_channels(
    a: &Side,
    b: &Side,
    opts: &TestOptions,
    groups: &mut Vec<GroupResult>,
    used_a: &mut BTreeSet<String>,
    used_b: &mut BTreeSet<String>,
    warnings: &mut Vec<String>,
) -> Result<(Option<ChannelMap>, Option<ResidualAlignment>)> {
    let (Some(ea), Some(eb)) = (a.layout.embed(), b.layout.embed()) else {
        if a.d != b.d {
            bail!("the models have different residual widths ({} and {}) and no embeddings to align them", a.d, b.d);
        }
        warnings.push(
            "no embedding on both sides: residual channels are taken in stored order (a permutation of \
                       them would hide a derivative)"
                .into(),
        );
        return Ok((None, None));
    };
    let rows = |s: &Side, p: &Part| {
        s.src.info(&p.name).map(|i| if i.cols() == s.d { i.rows() } else { i.cols() }).unwrap_or(0)
    };
    let (pairs, how) = shared_tokens(a, b, rows(a, ea), rows(b, eb));
    if pairs.len() < 16 {
        if a.d != b.d {
            bail!("{how}: fewer than 16 shared tokens, and the residual widths differ ({} and {})", a.d, b.d);
        }
        warnings.push(format!("{how}: residual channels are taken in stored order"));
        return Ok((None, None));
    }
    // Alternate shared tokens: even ones align, odd ones test.
    let half = |start: usize| -> Vec<(usize, usize)> {
        let v: Vec<(usize, usize)> = pairs.iter().skip(start).step_by(2).copied().collect();
        stride(v.len(), opts.tokens).into_iter().map(|i| v[i]).collect()
    };
    let (t1, t2) = (half(0), half(1));
    let ids = |v: &[(usize, usize)], b: bool| v.iter().map(|p| if b { p.1 } else { p.0 }).collect::<Vec<_>>();
    let mut xa = channel_rows(a, ea, &ids(&t1, false))?;
    let mut xb = channel_rows(b, eb, &ids(&t1, true))?;
    remove_top_components(&mut xa, a.d, t1.len(), SHARED_COMPONENTS)?;
    remove_top_components(&mut xb, b.d, t1.len(), SHARED_COMPONENTS)?;
    standardize(&mut xa, t1.len());
    standardize(&mut xb, t1.len());
    if a.d.saturating_mul(b.d) > 1 << 28 {
        bail!("residual widths {} and {} are beyond what the channel alignment handles (2^28 pairs)", a.d, b.d);
    }
    let sims = cross(&xa, a.d, &xb, b.d, t1.len())?;
    let best = argmax_abs(&sims, b.d);
    drop(sims);
    let map = ChannelMap {
        src: best.iter().map(|x| x.0).collect(),
        sign: best.iter().map(|x| if x.1 < 0.0 { -1.0 } else { 1.0 }).collect(),
    };
    let same = map.src.iter().enumerate().filter(|(i, &j)| *i == j).count() as f64 / a.d as f64;
    let mean_corr = best.iter().map(|x| x.1.abs() as f64).sum::<f64>() / a.d as f64;

    // Test: the sampled channels on the other tokens, and on the heads when both have one.
    let tested = stride(a.d, opts.units);
    let partners: Vec<usize> = tested.iter().map(|&c| map.src[c]).collect();
    let mut parts_a = vec![];
    let mut parts_b = vec![];
    let mut widths = vec![];
    let mut names_a = vec![ea.name.clone()];
    let mut names_b = vec![eb.name.clone()];
    let pick = |rows: Vec<f32>, w: usize, sel: &[usize]| -> Vec<f32> {
        sel.iter().flat_map(|&c| rows[c * w..(c + 1) * w].to_vec()).collect()
    };
    let test_rows = |side: &Side, part: &Part, tokens: &[usize]| -> Result<Vec<f32>> {
        let mut x = channel_rows(side, part, tokens)?;
        remove_top_components(&mut x, side.d, tokens.len(), SHARED_COMPONENTS)?;
        Ok(x)
    };
    let (ea_t2, eb_t2) = (test_rows(a, ea, &ids(&t2, false))?, test_rows(b, eb, &ids(&t2, true))?);
    let mut ya = pick(ea_t2.clone(), t2.len(), &tested);
    let mut yb = pick(eb_t2.clone(), t2.len(), &partners);
    standardize(&mut ya, t2.len());
    standardize(&mut yb, t2.len());
    parts_a.push(ya);
    parts_b.push(yb);
    widths.push(t2.len());
    // The head, on the test tokens only, when it is not the embedding stored twice.
    if let (Some(ha), Some(hb)) = (a.layout.head(), b.layout.head()) {
        let (all, allb) = (ids(&t2, false), ids(&t2, true));
        let ra = test_rows(a, ha, &all).ok().filter(|r| *r != ea_t2);
        let rb = test_rows(b, hb, &allb).ok().filter(|r| *r != eb_t2);
        if let (Some(ra), Some(rb)) = (ra, rb) {
            let w = all.len();
            let mut ha_rows = pick(ra, w, &tested);
            let mut hb_rows = pick(rb, w, &partners);
            standardize(&mut ha_rows, w);
            standardize(&mut hb_rows, w);
            parts_a.push(ha_rows);
            parts_b.push(hb_rows);
            widths.push(w);
            names_a.push(ha.name.clone());
            names_b.push(hb.name.clone());
        }
    }
    let m = tested.len();
    let (ya, dy) = join_parts(parts_a, &widths, m);
    let (yb, _) = join_parts(parts_b, &widths, m);
    used_a.extend(names_a.iter().cloned());
    used_b.extend(names_b.iter().cloned());
    let g = GroupResult {
        layer: None,
        layer_b: None,
        kind: "residual".into(),
        tensors_a: names_a,
        tensors_b: names_b,
        units_a: a.d,
        units_b: b.d,
        tested_units: m,
        align_on: format!("embedding entries of {} shared tokens", t1.len()),
        test_on: format!(
            "embedding entries of {} other shared tokens{}",
            t2.len(),
            if widths.len() > 1 { " and the head's rows" } else { "" }
        ),
        align_entries: t1.len(),
        test_entries: dy,
        ..Default::default()
    };
    let shape = GroupShape { m, n: b.d, d_align: t1.len(), d_test: dy, residual: false, p_floor: 0.0 };
    let mt = Matched { ya, yb, d: dy, m, partners, tested };
    groups.push(run_test(mt, g, shape, opts, opts.seed ^ fnv("residual"))?);
    let residual = ResidualAlignment {
        how: format!("{how}; each A channel matched to the B channel of largest |r| over {} tokens", t1.len()),
        channels_a: a.d,
        channels_b: b.d,
        shared_tokens: pairs.len(),
        same_index: same,
        mean_match_corr: mean_corr,
    };
    Ok((Some(map), Some(residual)))
}

/// A permutation-invariant sketch of a block: the covariance of a fixed set of (at most 256) of
/// A's residual channels over the units of its first MLP input (or its query projection).
fn sketch(side: &Side, layer: usize, map: Option<&ChannelMap>, d_a: usize) -> Result<Option<Vec<f32>>> {
    let find = |r| side.layout.find(Some(layer), &Scope::Dense, r);
    let Some(part) =
        find(Role::Gate).or_else(|| find(Role::GateUp)).or_else(|| find(Role::Up)).or_else(|| find(Role::Q))
    else {
        return Ok(None);
    };
    let (units, n) = side.units(part, None, map)?;
    let chans = stride(d_a, 256);
    let k = chans.len();
    let sub = columns(&units, d_a, &chans);
    drop(units);
    let t = CTensor::from_vec(sub, (n, k), &Device::Cpu)?;
    let g = t.t()?.matmul(&t)?.flatten_all()?.to_vec1::<f32>()?;
    // Off-diagonal entries only: the diagonal (channel variances) is alike in any two models.
    Ok(Some((0..k * k).filter(|i| i / k != i % k).map(|i| g[i]).collect()))
}

/// Pairs each block of A with the block of B whose sketch correlates most with its own (depths
/// differ: blocks were dropped, inserted or duplicated).
fn match_layers(
    a: &Side,
    b: &Side,
    layers_a: &BTreeSet<usize>,
    layers_b: &BTreeSet<usize>,
    map: Option<&ChannelMap>,
) -> Result<Vec<(usize, usize)>> {
    let mut sb = Vec::new();
    for &l in layers_b {
        if let Some(s) = sketch(b, l, map, a.d)? {
            sb.push((l, s));
        }
    }
    let mut pairs = Vec::new();
    for &l in layers_a {
        let Some(sa) = sketch(a, l, None, a.d)? else { continue };
        let best = sb
            .iter()
            .map(|(lb, s)| (*lb, crate::stats::pearson(&sa, s)))
            .filter(|(_, r)| r.is_finite())
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((lb, _)) = best {
            pairs.push((l, lb));
        }
    }
    Ok(pairs)
}

/// Scopes of a layer's MLPs in `side`: dense, shared expert, experts.
fn scopes(side: &Side, layer: usize) -> BTreeSet<Scope> {
    side.layout
        .parts
        .iter()
        .filter(|p| p.layer == Some(layer) && matches!(p.role, Role::Gate | Role::Up | Role::GateUp | Role::Down))
        .map(|p| p.scope.clone())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn layer_groups(
    a: &Side,
    b: &Side,
    (layer, layer_b): (usize, usize),
    map: Option<&ChannelMap>,
    opts: &TestOptions,
    groups: &mut Vec<GroupResult>,
    used_a: &mut BTreeSet<String>,
    used_b: &mut BTreeSet<String>,
) -> Result<()> {
    // Experts: A's expert e ↔ B's expert matched on the router rows (else by index).
    let expert_map = match_experts(a, b, (layer, layer_b), map)?;
    for scope in scopes(a, layer) {
        let scope_b = match &scope {
            Scope::Expert(e) => match expert_map.as_ref().and_then(|m| m.get(e)) {
                Some(&eb) => Scope::Expert(eb),
                None => scope.clone(),
            },
            s => s.clone(),
        };
        if let Some(g) = mlp_group(a, b, (layer, layer_b), &scope, &scope_b, map, opts)? {
            used_a.extend(g.tensors_a.iter().cloned());
            used_b.extend(g.tensors_b.iter().cloned());
            groups.push(g);
        }
    }
    // Everything else with a residual axis: split-channel groups, paired by role (or name).
    let others: Vec<&Part> = a
        .layout
        .parts
        .iter()
        .filter(|p| p.layer == Some(layer) && !used_a.contains(&p.name))
        .filter(|p| {
            matches!(
                p.role,
                Role::Q
                    | Role::K
                    | Role::V
                    | Role::O
                    | Role::Qkv
                    | Role::Router
                    | Role::Matrix
                    | Role::Gate
                    | Role::Up
                    | Role::GateUp
                    | Role::Down
            )
        })
        .collect();
    for pa in others {
        let pb = b.layout.parts.iter().find(|p| {
            p.layer == Some(layer_b)
                && p.scope == pa.scope
                && p.role == pa.role
                && (pa.role != Role::Matrix || p.leaf == pa.leaf)
                && !used_b.contains(&p.name)
        });
        let Some(pb) = pb else { continue };
        if let Some(g) = split_group(a, b, pa, pb, map, opts)? {
            used_a.insert(pa.name.clone());
            used_b.insert(pb.name.clone());
            groups.push(g);
        }
    }
    Ok(())
}

fn match_experts(
    a: &Side,
    b: &Side,
    (layer, layer_b): (usize, usize),
    map: Option<&ChannelMap>,
) -> Result<Option<BTreeMap<usize, usize>>> {
    let (Some(ra), Some(rb)) = (
        a.layout.find(Some(layer), &Scope::Dense, Role::Router),
        b.layout.find(Some(layer_b), &Scope::Dense, Role::Router),
    ) else {
        return Ok(None);
    };
    let (mut xa, na) = a.units(ra, None, None)?;
    let (mut xb, nb) = b.units(rb, None, map)?;
    standardize(&mut xa, a.d);
    standardize(&mut xb, a.d);
    if nb == 0 {
        return Ok(None);
    }
    let best = argmax_abs(&cross(&xa, na, &xb, nb, a.d)?, nb);
    Ok(Some(best.into_iter().enumerate().map(|(e, (j, _))| (e, j)).collect()))
}

/// The MLP group of one scope: units matched on the gate rows (the up rows when there is no
/// gate), tested on the up rows and the down columns.
fn mlp_group(
    a: &Side,
    b: &Side,
    (layer, layer_b): (usize, usize),
    sa: &Scope,
    sb: &Scope,
    map: Option<&ChannelMap>,
    opts: &TestOptions,
) -> Result<Option<GroupResult>> {
    let get = |s: &Side, l: usize, sc: &Scope, r| s.layout.find(Some(l), sc, r).cloned();
    let (gate_a, up_a, gu_a, down_a) = (
        get(a, layer, sa, Role::Gate),
        get(a, layer, sa, Role::Up),
        get(a, layer, sa, Role::GateUp),
        get(a, layer, sa, Role::Down),
    );
    let (gate_b, up_b, gu_b, down_b) = (
        get(b, layer_b, sb, Role::Gate),
        get(b, layer_b, sb, Role::Up),
        get(b, layer_b, sb, Role::GateUp),
        get(b, layer_b, sb, Role::Down),
    );
    let (Some(down_a), Some(down_b)) = (down_a, down_b) else { return Ok(None) };
    let units_of = |s: &Side, p: &Part| -> Result<usize> {
        let (r, c) = s.shape2(&p.name)?;
        Ok(match orient(p, r, c, s.d) {
            Some(Orient::Rows) => r,
            Some(Orient::Cols) => c,
            None => 0,
        })
    };
    let (n_a, n_b) = (units_of(a, &down_a)?, units_of(b, &down_b)?);
    if n_a == 0 || n_b == 0 {
        return Ok(None);
    }
    // The input projections: (alignment part, test part), as (part, row offset) pairs.
    type Input = (Part, usize);
    let inputs = |gate: Option<Part>,
                  up: Option<Part>,
                  gu: Option<Part>,
                  s: &Side,
                  n: usize|
     -> Result<Option<(Input, Option<Input>)>> {
        if let (Some(g), Some(u)) = (gate, up.clone()) {
            return Ok(Some(((g, 0), Some((u, 0)))));
        }
        let fused = gu.or(up);
        let Some(f) = fused else { return Ok(None) };
        let units = units_of(s, &f)?;
        if units == 2 * n {
            Ok(Some(((f.clone(), 0), Some((f, n)))))
        } else if units == n {
            Ok(Some(((f, 0), None)))
        } else {
            Ok(None)
        }
    };
    let (Some((al_a, te_a)), Some((al_b, te_b))) =
        (inputs(gate_a, up_a, gu_a, a, n_a)?, inputs(gate_b, up_b, gu_b, b, n_b)?)
    else {
        return Ok(None);
    };
    if te_a.is_some() != te_b.is_some() {
        return Ok(None);
    }
    // Every input must have the down projection's units (or twice them, fused gate|up).
    for (s, p, n) in [(a, &al_a, n_a), (b, &al_b, n_b)]
        .into_iter()
        .chain(te_a.iter().map(|t| (a, t, n_a)))
        .chain(te_b.iter().map(|t| (b, t, n_b)))
    {
        if units_of(s, &p.0)? < p.1 + n {
            return Ok(None);
        }
    }
    let d = a.d;
    // Aligned on one half of the residual channels, tested on the other: a unit's gate and up
    // rows (or its input and output) may point alike, so the same channels must not serve both.
    let (h1, h2) = halves(d, map);
    if h1.len() < 4 || h2.len() < 4 {
        return Ok(None);
    }
    let tested = stride(n_a, opts.units);
    let m = tested.len();
    let offset = |sel: &[usize], off: usize| sel.iter().map(|i| i + off).collect::<Vec<_>>();
    // Align.
    let (xa, _) = a.units(&al_a.0, Some(&offset(&tested, al_a.1)), None)?;
    let mut xa = columns(&xa, d, &h1);
    standardize(&mut xa, h1.len());
    let (partners, _) = nearest(&xa, m, b, &al_b.0, al_b.1, n_b, map, &h1, d)?;
    // Test.
    let mut pa = vec![];
    let mut pb = vec![];
    let mut widths = vec![];
    let mut names_a = vec![al_a.0.name.clone()];
    let mut names_b = vec![al_b.0.name.clone()];
    // A's tested units and their partners in B, on the test half of the channels (reads overlap).
    let test_part = |pa: &Part, sel_a: &[usize], pb: &Part, sel_b: &[usize]| -> Result<(Vec<f32>, Vec<f32>)> {
        let (ra, rb) = rayon::join(|| a.units(pa, Some(sel_a), None), || b.units(pb, Some(sel_b), map));
        let ((ya, _), (yb, _)) = (ra?, rb?);
        let (mut ya, mut yb) = (columns(&ya, d, &h2), columns(&yb, d, &h2));
        standardize(&mut ya, h2.len());
        standardize(&mut yb, h2.len());
        Ok((ya, yb))
    };
    if let (Some(ta), Some(tb)) = (&te_a, &te_b) {
        let (ya, yb) = test_part(&ta.0, &offset(&tested, ta.1), &tb.0, &offset(&partners, tb.1))?;
        pa.push(ya);
        pb.push(yb);
        widths.push(h2.len());
        if ta.0.name != al_a.0.name {
            names_a.push(ta.0.name.clone());
            names_b.push(tb.0.name.clone());
        }
    }
    let (ya, yb) = test_part(&down_a, &tested, &down_b, &partners)?;
    pa.push(ya);
    pb.push(yb);
    widths.push(h2.len());
    names_a.push(down_a.name.clone());
    names_b.push(down_b.name.clone());
    let (ya, dy) = join_parts(pa, &widths, m);
    let (yb, _) = join_parts(pb, &widths, m);
    let kind = match sa {
        Scope::Dense => "mlp".to_string(),
        Scope::Shared => "mlp.shared_expert".to_string(),
        Scope::Expert(e) => format!("mlp.expert{e}"),
    };
    let short = |p: &Part| p.leaf.clone();
    let test_on = if widths.len() > 1 {
        format!("{} rows and {} columns", short(&te_a.as_ref().unwrap().0), short(&down_a))
    } else {
        format!("{} columns", short(&down_a))
    };
    let g = GroupResult {
        layer: Some(layer),
        layer_b: Some(layer_b),
        kind,
        tensors_a: names_a,
        tensors_b: names_b,
        units_a: n_a,
        units_b: n_b,
        tested_units: m,
        align_on: format!("{} rows, one half of the residual channels", short(&al_a.0)),
        test_on: format!("{test_on}, the other half"),
        align_entries: h1.len(),
        test_entries: dy,
        ..Default::default()
    };
    let shape = GroupShape { m, n: n_b, d_align: h1.len(), d_test: dy, residual: map.is_some(), p_floor: 0.0 };
    let seed = opts.seed ^ fnv(&down_a.name);
    Ok(Some(run_test(Matched { ya, yb, d: dy, m, partners, tested }, g, shape, opts, seed)?))
}

/// A tensor on its own: units matched on one half of the residual channels (even ones), tested
/// on the other half.
fn split_group(
    a: &Side,
    b: &Side,
    pa: &Part,
    pb: &Part,
    map: Option<&ChannelMap>,
    opts: &TestOptions,
) -> Result<Option<GroupResult>> {
    let (ra, ca) = a.shape2(&pa.name)?;
    let (rb, cb) = b.shape2(&pb.name)?;
    let (Some(oa), Some(ob)) = (orient(pa, ra, ca, a.d), orient(pb, rb, cb, b.d)) else { return Ok(None) };
    let n_a = if oa == Orient::Rows { ra } else { ca };
    let n_b = if ob == Orient::Rows { rb } else { cb };
    let d = a.d;
    if d < 8 || n_a < 2 || n_b < 2 {
        return Ok(None);
    }
    let (h1, h2) = halves(d, map);
    if h1.len() < 4 || h2.len() < 4 {
        return Ok(None);
    }
    let tested = stride(n_a, opts.units);
    let m = tested.len();
    let (ua, _) = a.units(pa, Some(&tested), None)?;
    let mut xa = columns(&ua, d, &h1);
    standardize(&mut xa, h1.len());
    let (partners, whole) = nearest(&xa, m, b, pb, 0, n_b, map, &h1, d)?;
    let ub = match whole {
        Some(all) => partners.iter().flat_map(|&j| all[j * d..(j + 1) * d].iter().copied()).collect(),
        None => b.units(pb, Some(&partners), map)?.0,
    };
    let (mut ya, mut yb) = (columns(&ua, d, &h2), columns(&ub, d, &h2));
    standardize(&mut ya, h2.len());
    standardize(&mut yb, h2.len());
    let kind = match pa.role {
        Role::Q => "attn.q",
        Role::K => "attn.k",
        Role::V => "attn.v",
        Role::O => "attn.o",
        Role::Qkv => "attn.qkv",
        Role::Router => "router",
        _ => "matrix",
    };
    let kind = match &pa.scope {
        Scope::Expert(e) => format!("{kind}.expert{e}"),
        _ => kind.to_string(),
    };
    let g = GroupResult {
        layer: pa.layer,
        layer_b: pb.layer,
        kind,
        tensors_a: vec![pa.name.clone()],
        tensors_b: vec![pb.name.clone()],
        units_a: n_a,
        units_b: n_b,
        tested_units: m,
        align_on: "one half of the residual channels".into(),
        test_on: "the other half".into(),
        align_entries: h1.len(),
        test_entries: h2.len(),
        ..Default::default()
    };
    let shape = GroupShape { m, n: n_b, d_align: h1.len(), d_test: h2.len(), residual: map.is_some(), p_floor: 0.0 };
    let seed = opts.seed ^ fnv(&pa.name);
    Ok(Some(run_test(Matched { ya, yb, d: h2.len(), m, partners, tested }, g, shape, opts, seed)?))
}

// ---------------------------------------------------------------------------------------------
// Combination, power and verdict.

#[allow(clippy::too_many_arguments)]
fn finish(
    sa: &WeightSource,
    sb: &WeightSource,
    groups: Vec<GroupResult>,
    residual: Option<ResidualAlignment>,
    unmatched_a: Vec<String>,
    unmatched_b: Vec<String>,
    warnings: Vec<String>,
    opts: &TestOptions,
    t0: std::time::Instant,
) -> Result<TestReport> {
    let ln_ps: Vec<f64> = groups.iter().map(|g| g.log10_p * LN10).collect();
    let ln_p = pvalue::fisher_ln(&ln_ps);
    let mut by_layer: BTreeMap<Option<usize>, Vec<&GroupResult>> = BTreeMap::new();
    for g in &groups {
        by_layer.entry(g.layer).or_default().push(g);
    }
    let layers = by_layer
        .into_iter()
        .map(|(layer, gs)| LayerResult {
            layer,
            groups: gs.len(),
            similarity: gs.iter().map(|g| g.matched_corr - g.null_corr).sum::<f64>() / gs.len() as f64,
            log10_p: pvalue::fisher_ln(&gs.iter().map(|g| g.log10_p * LN10).collect::<Vec<_>>()) / LN10,
        })
        .collect();

    // Power: each group's expected z at ρ, the residual alignment's success at ρ.
    let res_shape = groups.iter().find(|g| g.kind == "residual").and_then(|g| g.shape);
    let shapes: Vec<GroupShape> = groups.iter().filter_map(|g| g.shape).collect();
    let power_at = |rho: f64| -> f64 {
        let share = res_shape.map_or(1.0, |r| pvalue::p_align(rho, r.d_align, r.n));
        let zs: Vec<(f64, f64)> = shapes.iter().map(|g| (pvalue::expected_z(g, rho, share), g.p_floor)).collect();
        pvalue::fisher_power(&zs, opts.alpha)
    };
    let power = power_at(opts.power_rho);
    let rho_min = if power_at(1.0) < opts.power_target {
        None
    } else {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..30 {
            let mid = 0.5 * (lo + hi);
            if power_at(mid) >= opts.power_target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    };

    let log10_p = ln_p / LN10;
    let p_value = ln_p.exp();
    let mut reasons = vec![format!(
        "combined p = {} (log10 p = {:.1}) by Fisher's method over {} tested groups; α = {:e}",
        fmt_p(log10_p),
        log10_p,
        groups.len(),
        opts.alpha
    )];
    let verdict = if ln_p < opts.alpha.ln() {
        reasons
            .push("p < α: B's weights carry A's unit pairings, which independent initialisation cannot produce".into());
        Verdict::Derived
    } else if p_value >= opts.unrelated_p && rho_min.is_some_and(|r| r <= opts.max_rho_min) {
        reasons.push(format!(
            "p ≥ {}: no sign of derivation, and the test had power ≥ {} to detect a derivative whose matched weights \
             correlate with A's at ρ ≥ {:.4}",
            opts.unrelated_p,
            opts.power_target,
            rho_min.unwrap_or(f64::NAN)
        ));
        Verdict::Unrelated
    } else {
        if p_value < opts.unrelated_p {
            reasons.push(format!("α ≤ p < {}: some evidence, not enough to call B derived at α", opts.unrelated_p));
        }
        match rho_min {
            None => reasons.push(format!("too little was compared to reach power {} even at ρ = 1", opts.power_target)),
            Some(r) if r > opts.max_rho_min => reasons.push(format!(
                "power {} is reached only from ρ = {r:.3} (more than {}): a derivative could hide",
                opts.power_target, opts.max_rho_min
            )),
            _ => {}
        }
        Verdict::Inconclusive
    };
    reasons.push(format!(
        "power to detect matched-weight correlation ρ = {}: {:.4}{}",
        opts.power_rho,
        power,
        rho_min.map_or(String::new(), |r| format!("; ρ_min (power {}) = {r:.4}", opts.power_target))
    ));
    Ok(TestReport {
        a: sa.dir.display().to_string(),
        b: sb.dir.display().to_string(),
        verdict,
        alpha: opts.alpha,
        p_value,
        log10_p,
        method: "Fisher's combination of per-group permutation tests of matched pairs (align on one tensor, test on another)".into(),
        power,
        power_rho: opts.power_rho,
        rho_min,
        power_target: opts.power_target,
        reasons,
        residual,
        layers,
        groups,
        unmatched_a,
        unmatched_b,
        warnings,
        bytes_read: sa.bytes_read() + sb.bytes_read(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A p-value for people: `3.2e-7`, or `10^-2174.3` below f64's range.
pub fn fmt_p(log10_p: f64) -> String {
    if log10_p > -300.0 {
        format!("{:.3e}", 10f64.powf(log10_p))
    } else {
        format!("10^{log10_p:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_across_naming_schemes() {
        let r = |n: &str| {
            let p = classify(n);
            (p.layer, p.scope, p.role)
        };
        assert_eq!(r("model.layers.3.self_attn.q_proj.weight"), (Some(3), Scope::Dense, Role::Q));
        assert_eq!(r("model.layers.3.mlp.gate_proj.weight"), (Some(3), Scope::Dense, Role::Gate));
        assert_eq!(r("model.layers.1.block_sparse_moe.experts.7.w2.weight"), (Some(1), Scope::Expert(7), Role::Down));
        assert_eq!(r("model.layers.1.block_sparse_moe.gate.weight"), (Some(1), Scope::Dense, Role::Router));
        assert_eq!(r("model.layers.2.mlp.shared_experts.up_proj.weight"), (Some(2), Scope::Shared, Role::Up));
        assert_eq!(r("model.layers.2.mlp.gate_up_proj.weight"), (Some(2), Scope::Dense, Role::GateUp));
        assert_eq!(r("h.4.attn.c_attn.weight"), (Some(4), Scope::Dense, Role::Qkv));
        assert_eq!(r("h.4.attn.c_proj.weight"), (Some(4), Scope::Dense, Role::O));
        assert_eq!(r("h.4.mlp.c_proj.weight"), (Some(4), Scope::Dense, Role::Down));
        assert!(classify("h.4.mlp.c_fc.weight").conv1d);
        assert_eq!(r("gpt_neox.layers.0.attention.dense.weight"), (Some(0), Scope::Dense, Role::O));
        assert_eq!(r("gpt_neox.layers.0.mlp.dense_4h_to_h.weight"), (Some(0), Scope::Dense, Role::Down));
        assert_eq!(r("model.embed_tokens.weight").2, Role::Embed);
        assert_eq!(r("lm_head.weight").2, Role::Head);
        assert_eq!(r("model.norm.weight"), (None, Scope::Dense, Role::FinalNorm));
        assert_eq!(r("model.layers.0.post_attention_layernorm.weight").2, Role::MlpNorm);
    }

    #[test]
    fn orientation_follows_the_residual_axis() {
        let p = |n: &str| classify(n);
        assert_eq!(orient(&p("l.0.mlp.down_proj.weight"), 64, 256, 64), Some(Orient::Cols));
        assert_eq!(orient(&p("l.0.mlp.up_proj.weight"), 256, 64, 64), Some(Orient::Rows));
        assert_eq!(orient(&p("h.0.mlp.c_fc.weight"), 64, 256, 64), Some(Orient::Cols));
        assert_eq!(orient(&p("h.0.mlp.c_proj.weight"), 256, 64, 64), Some(Orient::Rows));
        assert_eq!(orient(&p("h.0.attn.c_proj.weight"), 64, 64, 64), Some(Orient::Rows));
        assert_eq!(orient(&p("l.0.self_attn.o_proj.weight"), 64, 64, 64), Some(Orient::Cols));
        assert_eq!(orient(&p("l.0.self_attn.q_proj.weight"), 48, 32, 64), None);
    }
}
