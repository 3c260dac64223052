//! The decoder-only transformer.
//!
//! ```text
//! x = embed[ids]                                          [B, T, C]
//! for each block:
//!     h = rmsnorm(x)
//!     q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ                       q: H heads, k/v: Hkv heads of D
//!     q, k = rope(rmsnorm(q)), rope(rmsnorm(k))           QK-norm per head (if on), rotary
//!     x = x + causal_attention(q, k, v)·Woᵀ
//!     x = x + mlp(rmsnorm(x))                             ReLU² or SwiGLU
//! logits = cap · tanh((rmsnorm(x)·W_headᵀ) / cap)          fp32, untied head (cap 0: none)
//! ```
//! No biases anywhere. Weights are fp32 master copies (candle `Var`s); with a bf16 compute
//! dtype (CUDA) each forward casts them, and the gradient flows back to the fp32 copy.

use crate::config::ModelConfig;
use crate::init::{normal, tensor_rng};
use crate::layout::{param_shapes, Block, ParamRole, EMBED, FINAL_NORM, LM_HEAD};
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor, Var};
use jarip_kernels::ops::{self, matmul_bf16::Path as MatmulPath, rope::RopeTables, Kernels};
use std::collections::HashMap;

pub struct Gpt {
    cfg: ModelConfig,
    device: Device,
    compute_dtype: DType,
    kernels: Kernels,
    matmul: MatmulPath,
    embed: Var,
    blocks: Vec<Block<Var, Var>>,
    final_norm: Var,
    lm_head: Var,
    rope: RopeTables,
    /// Every parameter, sorted by name (the canonical order for hashing and saving).
    params: Vec<(String, Var)>,
}

/// The initial values of tensor `name` (see [`crate::init`] for the scheme).
fn init_values(cfg: &ModelConfig, seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in = *shape.last().unwrap_or(&1) as f64;
    let std = match ParamRole::of(name) {
        ParamRole::Norm => return vec![1.0; n],
        // A tied embedding is the head too: 1/√C keeps the first logits at unit scale.
        ParamRole::Embedding if cfg.tie_embeddings => 1.0 / (cfg.n_embd as f64).sqrt(),
        ParamRole::Embedding => 1.0,
        ParamRole::Head => 0.001,
        ParamRole::Matrix if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") => {
            1.0 / fan_in.sqrt() / (2.0 * cfg.n_layer as f64).sqrt()
        }
        ParamRole::Matrix => 1.0 / fan_in.sqrt(),
    };
    normal(&mut tensor_rng(seed, name), n, std)
}

impl Gpt {
    /// A freshly initialised model; `seed` determines every weight.
    pub fn new(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut tensors = HashMap::new();
        for (name, shape) in param_shapes(cfg) {
            let values = init_values(cfg, seed, &name, &shape);
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(cfg, tensors, device)
    }

    /// A model from named tensors; every expected name must be present with its shape, and
    /// nothing else.
    pub fn from_tensors(cfg: &ModelConfig, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut params = Vec::new();
        for (name, shape) in param_shapes(cfg) {
            let t = tensors.remove(&name).with_context(|| format!("weights lack tensor {name}"))?;
            if t.dims() != shape.as_slice() {
                bail!("tensor {name} has shape {:?}, the config needs {:?}", t.dims(), shape);
            }
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("weights hold tensor {extra}, which this config does not have");
        }
        let get = |n: &str| -> Var {
            let i = params.binary_search_by(|(k, _)| k.as_str().cmp(n)).expect("name listed by param_shapes");
            params[i].1.clone()
        };
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, i, |n| Ok(get(n)), |n, _, _| Ok(get(n))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            compute_dtype: DType::F32,
            kernels: if device.is_cpu() { Kernels::Fused } else { Kernels::Composed },
            matmul: MatmulPath::Fp32,
            embed: get(EMBED),
            final_norm: get(FINAL_NORM),
            // Tied: the same variable, so its gradient sums both uses.
            lm_head: get(if cfg.tie_embeddings { EMBED } else { LM_HEAD }),
            blocks,
            rope: RopeTables::with_freqs(cfg.max_seq_len, &cfg.rope_inv_freq(), device)?,
            params,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Chooses composed or fused building blocks (fused silently falls back where unsupported).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// How the fused CPU kernels multiply: fp32, or bf16 with fp32 accumulation on one of the
    /// bf16 paths (linear layers and the head; attention, norms and the loss stay fp32).
    pub fn set_matmul(&mut self, path: MatmulPath) {
        self.matmul = path;
    }

    pub fn matmul(&self) -> MatmulPath {
        self.matmul
    }

    /// The dtype matmuls and activations use (f32, or bf16 on CUDA); master weights stay f32.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute_dtype = dtype;
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Every parameter with its name, sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A weight in the compute dtype.
    fn w(&self, v: &Var) -> candle_core::Result<Tensor> {
        if v.dtype() == self.compute_dtype {
            Ok(v.as_tensor().clone())
        } else {
            v.to_dtype(self.compute_dtype)
        }
    }

    /// `x: [..., in]` times `wᵀ` (`w: [out, in]`), shaped as `out_shape`.
    fn linear(&self, x: &Tensor, w: &Var, out_shape: impl Into<candle_core::Shape>) -> candle_core::Result<Tensor> {
        ops::linear::linear(x, &self.w(w)?, out_shape, self.kernels, self.matmul)
    }

    fn norm(&self, x: &Tensor, w: &Var) -> candle_core::Result<Tensor> {
        ops::rms_norm::rms_norm(x, &self.w(w)?, self.cfg.norm_eps, self.kernels)
    }

    /// Final hidden states `[B·T, C]` of `ids: [B, T]` (u32), positions `0..T` — or, with a
    /// cache, positions `cache.len()..` after the cached ones, whose keys and values it extends.
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        self.cfg.check_seq_len(offset + t)?;
        let cfg = &self.cfg;
        let (h, hkv, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim());
        let n = b * t;
        let k_ops = self.kernels;
        let mut x = self.w(&self.embed)?.embedding(&ids.flatten_all()?)?; // [N, C]
        for (layer, blk) in self.blocks.iter().enumerate() {
            let hn = self.norm(&x, &blk.attn_norm)?;
            let q = self.linear(&hn, &blk.wq, (b, t, h, d))?;
            let k = self.linear(&hn, &blk.wk, (b, t, hkv, d))?;
            let v = self.linear(&hn, &blk.wv, (b, t, hkv, d))?;
            let (q, k) = match (&blk.q_norm, &blk.k_norm) {
                (Some(qn), Some(kn)) => (self.norm(&q, qn)?, self.norm(&k, kn)?),
                _ => (q, k),
            };
            let q = ops::rope::rope(&q, &self.rope, offset, k_ops)?;
            let k = ops::rope::rope(&k, &self.rope, offset, k_ops)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(layer, k, v)?,
                None => (k, v),
            };
            let y = ops::attention::causal_attention(&q, &k, &v, k_ops)?;
            x = (x + self.linear(&y, &blk.wo, (n, cfg.n_embd))?)?;

            let hn = self.norm(&x, &blk.mlp_norm)?;
            let up = self.linear(&hn, &blk.w_up, (n, cfg.mlp_hidden))?;
            let act = match &blk.w_gate {
                None => ops::relu2::relu2(&up, k_ops)?,
                Some(g) => ops::swiglu::swiglu(&self.linear(&hn, g, (n, cfg.mlp_hidden))?, &up, k_ops)?,
            };
            x = (x + self.linear(&act, &blk.w_down, (n, cfg.n_embd))?)?;
        }
        Ok(self.norm(&x, &self.final_norm)?)
    }

    /// Raw (not yet capped) logits `[N, V]` in fp32.
    fn raw_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let n = hidden.dim(0)?;
        Ok(self.linear(hidden, &self.lm_head, (n, self.cfg.vocab_size))?.to_dtype(DType::F32)?)
    }

    /// Soft-capped fp32 logits `[B, T, V]` for `ids: [B, T]` (u32) at positions `0..T`.
    /// (Decoding one token at a time with a KV cache is jarip-infer's `DecodeModel`, which the
    /// parity grid there checks against this forward.)
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let logits = self.raw_logits(&self.hidden(ids, None)?)?;
        Ok(ops::cross_entropy::softcap(&logits, self.cfg.logit_softcap)?.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// As [`Gpt::forward`] for `ids` at the positions after those in `cache`, whose keys and
    /// values it appends: decoding on any device (CUDA too) with candle ops. (The CPU's decode
    /// engine, with its own kernels and cache, is jarip-infer's `DecodeModel`.)
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let logits = self.raw_logits(&self.hidden(ids, Some(cache))?)?;
        Ok(ops::cross_entropy::softcap(&logits, self.cfg.logit_softcap)?.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// Per-token cross-entropy (nats, fp32) `[B·T]` of predicting `targets: [B, T]` from `ids`.
    pub fn token_losses(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let hidden = self.hidden(ids, None)?;
        let targets = targets.flatten_all()?;
        let cap = self.cfg.logit_softcap;
        Ok(ops::head_ce::head_cross_entropy(
            &hidden,
            &self.w(&self.lm_head)?,
            &targets,
            cap,
            self.kernels,
            self.matmul,
        )?)
    }

    /// Mean cross-entropy (nats) over all target tokens: the training loss.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(self.token_losses(ids, targets)?.mean_all()?)
    }

    /// All weights by name, as fp32 tensors.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }
}

/// Keys and values of the positions decoded so far, per layer (`[B, T, Hkv, D]` each, after
/// RoPE), for [`Gpt::forward_cached`].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Layer `layer`'s keys and values with `k, v` appended along the positions.
    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let kv = match self.layers.get(layer) {
            Some((k0, v0)) => (Tensor::cat(&[k0, &k], 1)?, Tensor::cat(&[v0, &v], 1)?),
            None => (k, v),
        };
        if layer < self.layers.len() {
            self.layers[layer] = kv.clone();
        } else {
            self.layers.push(kv.clone());
        }
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MlpKind;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn batch(b: usize, t: usize, vocab: u32, salt: u32) -> (Tensor, Tensor) {
        let toks: Vec<u32> =
            (0..b * (t + 1)).map(|i| ((i as u32).wrapping_mul(2654435761u32) ^ salt) % vocab).collect();
        let all = Tensor::from_vec(toks, (b, t + 1), &Device::Cpu).unwrap();
        (all.narrow(1, 0, t).unwrap(), all.narrow(1, 1, t).unwrap())
    }

    #[test]
    fn cached_decoding_matches_the_full_forward() {
        let cfg = ModelConfig::tiny(300);
        for kernels in [Kernels::Composed, Kernels::Fused] {
            let mut m = Gpt::new(&cfg, 4, &Device::Cpu).unwrap();
            m.set_kernels(kernels);
            let (x, _) = batch(2, 12, 300, 6);
            let full = m.forward(&x).unwrap();
            let mut cache = KvCache::new();
            // A prompt of 5, then one token at a time.
            let mut parts = vec![m.forward_cached(&x.narrow(1, 0, 5).unwrap(), &mut cache).unwrap()];
            for t in 5..12 {
                parts.push(m.forward_cached(&x.narrow(1, t, 1).unwrap(), &mut cache).unwrap());
                assert_eq!(cache.len(), t + 1);
            }
            let stepped = Tensor::cat(&parts, 1).unwrap();
            let d = (full - stepped).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{kernels:?}: cached decoding differs from the full forward by {d}");
        }
        let m = Gpt::new(&cfg, 4, &Device::Cpu).unwrap();
        let mut cache = KvCache::new();
        let (x, _) = batch(1, 32, 300, 1);
        m.forward_cached(&x, &mut cache).unwrap();
        assert!(m.forward_cached(&x.narrow(1, 0, 1).unwrap(), &mut cache).is_err(), "past the context");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        for kernels in [Kernels::Composed, Kernels::Fused] {
            for mlp in [MlpKind::Relu2, MlpKind::SwiGlu] {
                let mut cfg = ModelConfig::tiny(300);
                cfg.mlp = mlp;
                let mut m = Gpt::new(&cfg, 1, &Device::Cpu).unwrap();
                m.set_kernels(kernels);
                assert_eq!(m.num_params(), cfg.num_params());
                let (x, y) = batch(2, 16, 300, 5);
                let loss = m.loss(&x, &y).unwrap();
                let l = loss.to_scalar::<f32>().unwrap();
                assert!((l - (300f32).ln()).abs() < 0.1, "initial loss {l} should be near ln(vocab)");
                let grads = loss.backward().unwrap();
                for (name, v) in m.params() {
                    let g = grads.get(v).unwrap_or_else(|| panic!("{kernels:?}: no gradient for {name}"));
                    let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(norm > 0.0 && norm.is_finite(), "{kernels:?} {mlp:?}: gradient of {name} is {norm}");
                }
            }
        }
    }

    /// The loss on `(x, y)` and every parameter's gradient, in parameter order.
    fn loss_and_grads(m: &Gpt, x: &Tensor, y: &Tensor) -> (f32, Vec<Tensor>) {
        let loss = m.loss(x, y).unwrap();
        let g = loss.backward().unwrap();
        let gs = m.params().iter().map(|(_, v)| g.get(v).unwrap().clone()).collect();
        (loss.to_scalar::<f32>().unwrap(), gs)
    }

    /// The whole model in bf16 (every available path) against fp32: loss and every gradient
    /// within bf16 rounding, and the bit-portable paths identical.
    #[test]
    fn bf16_model_tracks_fp32_model() {
        let cfg = ModelConfig::tiny(300);
        let mut m = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
        let (x, y) = batch(2, 32, 300, 9);
        let run = |m: &Gpt| {
            let (l, gs) = loss_and_grads(m, &x, &y);
            let flat = gs.iter().map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>();
            (l, flat)
        };
        let (l0, g0) = run(&m);
        let mut portable_bits = None;
        for path in [MatmulPath::Bf16Portable, MatmulPath::Bf16Avx512, MatmulPath::Bf16Amx] {
            if !path.available() {
                continue;
            }
            m.set_matmul(path);
            let (l1, g1) = run(&m);
            assert!((l0 - l1).abs() < 2e-2 && l0 != l1, "{path:?}: loss {l1} vs fp32 {l0}");
            for ((name, _), (a, b)) in m.params().iter().zip(g0.iter().zip(&g1)) {
                let scale = a.iter().fold(0f32, |s, x| s.max(x.abs())).max(1e-6);
                let d = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
                assert!(d <= 5e-2 * scale, "{path:?} {name}: grads differ by {d} (scale {scale})");
            }
            if path.same_bits(MatmulPath::Bf16Portable) {
                match &portable_bits {
                    None => portable_bits = Some((l1, g1)),
                    Some(p) => assert!(p == &(l1, g1), "{path:?} differs from the portable path"),
                }
            }
        }
    }

    #[test]
    fn fused_model_matches_composed_model() {
        let cfg = ModelConfig::tiny(300);
        let mut m = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
        let (x, y) = batch(2, 32, 300, 9);
        let run = |m: &Gpt| loss_and_grads(m, &x, &y);
        m.set_kernels(Kernels::Composed);
        let (l0, g0) = run(&m);
        m.set_kernels(Kernels::Fused);
        let (l1, g1) = run(&m);
        assert!((l0 - l1).abs() < 1e-5, "{l0} vs {l1}");
        for ((name, _), (a, b)) in m.params().iter().zip(g0.iter().zip(&g1)) {
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let d = max_abs_diff(a, b);
            assert!(d <= 1e-3 * scale, "{name}: grads differ by {d} (scale {scale})");
        }
    }

    #[test]
    fn context_longer_than_rotary_tables_is_an_error() {
        let cfg = ModelConfig::tiny(300);
        let m = Gpt::new(&cfg, 4, &Device::Cpu).unwrap();
        let (x, _) = batch(1, 40, 300, 1);
        let err = m.forward(&x).unwrap_err().to_string();
        assert!(err.contains("rotary"), "{err}");
    }
}
