//! Token-space fingerprints: what each weight matrix does to one fixed set of tokens.
//!
//! The hidden units of a transformer can be permuted (MLP units, attention heads, even the
//! channels of the residual stream) and rescaled (a norm gain against the columns of the matrix
//! after it) without changing what the model computes, and each such change hides a derivative
//! from per-tensor Pearson correlation. Tokens cannot be permuted: they are the model's interface.
//! So every matrix is read through the embedding rows of the same tokens in both models:
//!
//! - a matrix that reads the residual stream (q, k, v, up, gate): `X = E[T] · diag(g) · Wᵀ`,
//!   `g` the gain of the norm in front of it;
//! - a matrix that writes it (o, down): `X = E[T] · W`;
//! - the embedding itself: `E[T]`; the head: `H[T] · diag(g_final)`.
//!
//! The residual basis cancels in each product (E and W share it), the hidden basis becomes X's
//! feature axis, which linear CKA ignores up to an orthogonal transform, and folding the gain in
//! undoes gain/column rescaling. The two models' X are compared with debiased CKA over the tokens:
//! the weight-product invariants of HuRef, read with the representation similarity of REEF.
//! When the vocabularies differ, T is drawn from the tokens both tokenizers share.

use crate::lineage::role;
use crate::stats;
use crate::tensors::{ModelTensors, Tensor};
use anyhow::Result;
use candle_core::{Device, Tensor as CTensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// At most this many tokens probe each matrix (a fixed stride over the shared tokens).
pub const MAX_PROBE_TOKENS: usize = 512;

/// Token ids of A and B that stand for the same token, in A's id order.
#[derive(Debug, Clone, Serialize)]
pub struct TokenAlignment {
    #[serde(skip)]
    pub a: Vec<usize>,
    #[serde(skip)]
    pub b: Vec<usize>,
    pub tokens: usize,
    /// How the tokens were matched.
    pub how: String,
}

/// Token string → id of a tokenizer.json: the model vocabulary and the added (special) tokens.
pub fn vocab(path: &Path) -> Result<BTreeMap<String, usize>> {
    // An untrusted file: refuse sizes no tokenizer has before reading it whole.
    let len = std::fs::metadata(path)?.len();
    if len > 1 << 30 {
        anyhow::bail!("{}: {len} bytes is too large for a tokenizer.json", path.display());
    }
    let text = std::fs::read_to_string(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let map = v["model"]["vocab"].as_object().ok_or_else(|| anyhow::anyhow!("{}: no model.vocab", path.display()))?;
    let mut out: BTreeMap<String, usize> =
        map.iter().filter_map(|(k, id)| id.as_u64().map(|id| (k.clone(), id as usize))).collect();
    for t in v["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
            out.insert(c.to_string(), id as usize);
        }
    }
    Ok(out)
}

/// The embedding matrix of a model (the 2-D tensor whose role is `embed`).
pub fn embedding(m: &ModelTensors) -> Option<(&str, &Tensor)> {
    m.tensors.iter().find(|(n, t)| role(n).1 == "embed" && t.shape.len() == 2).map(|(n, t)| (n.as_str(), t))
}

/// Matches the two models' tokens: by string through their tokenizers when both have one,
/// else by id when the embeddings have the same number of rows (the same vocabulary assumed).
/// Ids (in A, in B) of the tokens two tokenizer.json files share, within the embeddings' `ea`
/// and `eb` rows, in A's id order, and how they were matched. None when either file cannot be read.
pub fn shared_token_ids(ta: &Path, tb: &Path, ea: usize, eb: usize) -> Option<(Vec<(usize, usize)>, &'static str)> {
    let (va, vb) = (vocab(ta).ok()?, vocab(tb).ok()?);
    let mut pairs: Vec<(usize, usize)> =
        va.iter().filter_map(|(k, &ia)| vb.get(k).map(|&ib| (ia, ib))).filter(|&(x, y)| x < ea && y < eb).collect();
    pairs.sort_unstable();
    Some((pairs, if va == vb { "identical tokenizers" } else { "tokens shared by the two tokenizers" }))
}

pub fn align_tokens(a: &ModelTensors, b: &ModelTensors) -> Option<TokenAlignment> {
    let (ea, eb) = (embedding(a)?.1.rows(), embedding(b)?.1.rows());
    if let (Some(ta), Some(tb)) = (&a.tokenizer, &b.tokenizer) {
        if let Some((pairs, how)) = shared_token_ids(ta, tb, ea, eb) {
            return Some(TokenAlignment {
                tokens: pairs.len(),
                a: pairs.iter().map(|p| p.0).collect(),
                b: pairs.iter().map(|p| p.1).collect(),
                how: how.to_string(),
            });
        }
    }
    (ea == eb).then(|| TokenAlignment {
        a: (0..ea).collect(),
        b: (0..eb).collect(),
        tokens: ea,
        how: "token ids (no tokenizer on both sides; equal vocabulary sizes)".to_string(),
    })
}

/// One model seen through a fixed list of its tokens.
pub struct Probe<'m> {
    model: &'m ModelTensors,
    tokens: Vec<usize>,
    /// `E[T]`, tokens × width.
    emb: Vec<f32>,
    width: usize,
}

impl<'m> Probe<'m> {
    /// Probes of A and B over at most [`MAX_PROBE_TOKENS`] aligned tokens (a fixed stride).
    pub fn pair(a: &'m ModelTensors, b: &'m ModelTensors, al: &TokenAlignment) -> Option<(Self, Self)> {
        if al.a.len() < 8 {
            return None;
        }
        let stride = al.a.len().div_ceil(MAX_PROBE_TOKENS);
        let pick = |ids: &[usize]| ids.iter().step_by(stride).copied().collect::<Vec<_>>();
        Some((Self::new(a, pick(&al.a))?, Self::new(b, pick(&al.b))?))
    }

    fn new(model: &'m ModelTensors, tokens: Vec<usize>) -> Option<Self> {
        let (_, e) = embedding(model)?;
        let width = e.cols();
        let mut emb = Vec::with_capacity(tokens.len() * width);
        for &t in &tokens {
            emb.extend_from_slice(e.row(t));
        }
        Some(Self { model, tokens, emb, width })
    }

    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The gain of the norm with this role, if it has the residual width.
    fn gain(&self, layer: Option<usize>, kind: &str) -> Option<&[f32]> {
        self.model
            .tensors
            .iter()
            .find(|(n, t)| role(n) == (layer, kind) && t.shape == [self.width])
            .map(|(_, t)| t.data.as_slice())
    }

    fn emb_times_gain(&self, gain: Option<&[f32]>) -> Vec<f32> {
        match gain {
            None => self.emb.clone(),
            Some(g) => {
                self.emb.chunks_exact(self.width).flat_map(|row| row.iter().zip(g).map(|(x, y)| x * y)).collect()
            }
        }
    }

    /// `X` of the module doc for tensor `name` (`t`): tokens × features, and the feature count.
    /// None for tensors that do not touch the residual stream (norm gains, q/k norms).
    pub fn features(&self, name: &str, t: &Tensor) -> Result<Option<(Vec<f32>, usize)>> {
        if t.shape.len() != 2 {
            return Ok(None);
        }
        let (layer, kind) = role(name);
        let (rows, cols, c) = (t.rows(), t.cols(), self.width);
        let n = self.tokens.len();
        let reads = matches!(kind, "q" | "k" | "v" | "up" | "gate");
        let writes = matches!(kind, "o" | "down");
        let dev = Device::Cpu;
        Ok(match kind {
            "embed" => Some((self.emb.clone(), c)),
            "head" if cols == c => {
                if self.tokens.iter().any(|&i| i >= rows) {
                    return Ok(None);
                }
                let g = self.gain(None, "norm");
                let mut x = Vec::with_capacity(n * c);
                for &i in &self.tokens {
                    match g {
                        Some(g) => x.extend(t.row(i).iter().zip(g).map(|(a, b)| a * b)),
                        None => x.extend_from_slice(t.row(i)),
                    }
                }
                Some((x, c))
            }
            _ if (reads || !writes) && cols == c => {
                let gain = match kind {
                    "q" | "k" | "v" => self.gain(layer, "attn_norm"),
                    "up" | "gate" => self.gain(layer, "mlp_norm"),
                    _ => None,
                };
                let e = CTensor::from_vec(self.emb_times_gain(gain), (n, c), &dev)?;
                let w = CTensor::from_slice(&t.data, (rows, cols), &dev)?;
                let x = e.matmul(&w.t()?)?;
                Some((x.flatten_all()?.to_vec1::<f32>()?, rows))
            }
            _ if rows == c => {
                let e = CTensor::from_vec(self.emb.clone(), (n, c), &dev)?;
                let w = CTensor::from_slice(&t.data, (rows, cols), &dev)?;
                let x = e.matmul(&w)?;
                Some((x.flatten_all()?.to_vec1::<f32>()?, cols))
            }
            _ => None,
        })
    }
}

/// Debiased CKA of the token-space features of `ta` in A and `tb` in B; None when either
/// tensor has no token-space reading.
pub fn invariant_cka(pa: &Probe, na: &str, ta: &Tensor, pb: &Probe, nb: &str, tb: &Tensor) -> Result<Option<f64>> {
    let (Some((xa, ca)), Some((xb, cb))) = (pa.features(na, ta)?, pb.features(nb, tb)?) else {
        return Ok(None);
    };
    let v = stats::cka_features(&xa, ca, &xb, cb, pa.tokens())?;
    Ok(v.is_finite().then_some(v))
}
