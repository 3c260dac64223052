//! The model's shape. One dial (`depth`) gives a sensible default for every other size;
//! a TOML or JSON file can set each field. [`ModelConfig::validate`] rejects shapes that
//! cannot work, with a message that names the field.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Width of one attention head. Fixed by the depth dial so depth 6 gives 6 heads of 64.
pub const HEAD_DIM: usize = 64;

/// Which feed-forward block each layer uses.
///
/// ReLU² is the default, chosen by measurement: at equal parameter count (hidden 4·C for
/// ReLU², 8/3·C for SwiGLU) it runs two matmuls instead of three and one cheap element-wise
/// op instead of a sigmoid and a product. On the 2-core CPU benchmark shape (depth 6,
/// vocab 8192, batch 8 × 256) a full training step took 3.27–3.44 s with ReLU² against
/// 3.37–3.71 s with SwiGLU, at 766 MB against 885 MB peak RSS (`bench_train --mlp`), and
/// nanochat and modded-nanogpt report no loss-per-step penalty for ReLU² at these scales.
/// (Measured before SwiGLU's gating had a fused kernel; with it, SwiGLU steps ran 1,222 ms
/// against ReLU²'s 1,272 on the same machine: `bench/train/README.md`, presets.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `down(relu(up(x))²)`
    Relu2,
    /// `down(silu(gate(x)) * up(x))`
    SwiGlu,
}

/// An architecture preset: the family a model's blocks follow. The weights are always the
/// team's own (drawn from the seed); the preset only picks the shape, so that engines which know
/// the family can run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// ReLU² MLP, QK-norm, logit soft-cap 15 (the default).
    #[default]
    Jarip,
    /// Llama 3 style: SwiGLU, no QK-norm, no soft-cap, RoPE θ 500,000.
    Llama,
    /// Qwen3 dense style: SwiGLU, QK-norm with gains, no soft-cap, RoPE θ 1,000,000.
    Qwen3,
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "jarip" => Ok(Arch::Jarip),
            "llama" => Ok(Arch::Llama),
            "qwen3" => Ok(Arch::Qwen3),
            other => bail!("unknown architecture {other:?}: jarip, llama or qwen3"),
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Residual stream width C.
    pub n_embd: usize,
    /// Query heads; head width is `n_embd / n_head` unless `head_dim` says otherwise.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); must divide `n_head`.
    pub n_kv_head: usize,
    /// Hidden width of the MLP.
    pub mlp_hidden: usize,
    pub mlp: MlpKind,
    /// Longest context the rotary tables cover.
    pub max_seq_len: usize,
    pub rope_base: f64,
    /// Logits are `cap · tanh(z / cap)`, computed in fp32; 0 = no soft-cap (Llama, Qwen).
    pub logit_softcap: f32,
    pub norm_eps: f64,
    /// RMSNorm (with gains) on each head's queries and keys before the rotary embedding. Written
    /// only when off, so configs from before the field read and write unchanged.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub qk_norm: bool,
    /// The output head is the embedding matrix (`logits = h · Eᵀ`; Llama 3.2 1B/3B, Qwen3 small,
    /// Gemma): one V×C matrix fewer. Written only when on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tie_embeddings: bool,
    /// Llama 3.1's rotary frequency scaling (`rope_scaling` of type `llama3`), for reading such
    /// models; absent (plain RoPE) unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// The width of a head when it is not `n_embd / n_head` (Qwen3 0.6B: 16 heads of 128 over a
    /// width of 1,024); the projections are then `n_head·head_dim` wide. Written only when set.
    #[serde(default, rename = "head_dim", skip_serializing_if = "Option::is_none")]
    pub head_dim_override: Option<usize>,
}

/// Llama 3.1's RoPE scaling: wavelengths longer than `original_max_position_embeddings /
/// low_freq_factor` are stretched by `factor`, those shorter than `… / high_freq_factor` kept, the
/// band between interpolated smoothly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl ModelConfig {
    /// The depth dial: width = 64·depth, heads of 64 (so `depth` heads), no GQA,
    /// ReLU² MLP of 4·width, context 1024. Depth 6 is the benchmark shape (384 wide, 6 heads).
    pub fn from_depth(depth: usize, vocab_size: usize) -> Self {
        let n_embd = depth * HEAD_DIM;
        Self {
            vocab_size,
            n_layer: depth,
            n_embd,
            n_head: depth,
            n_kv_head: depth,
            mlp_hidden: 4 * n_embd,
            mlp: MlpKind::Relu2,
            max_seq_len: 1024,
            rope_base: 10_000.0,
            logit_softcap: 15.0,
            norm_eps: 1e-5,
            qk_norm: true,
            tie_embeddings: false,
            rope_scaling: None,
            head_dim_override: None,
        }
    }

    /// The depth dial's shape in the family `arch`: Llama and Qwen3 take a SwiGLU MLP of the
    /// same parameter count as ReLU²'s 4·C (8/3·C, rounded up to a multiple of 64), no soft-cap,
    /// and their RoPE θ; Llama drops QK-norm.
    pub fn from_depth_arch(depth: usize, vocab_size: usize, arch: Arch) -> Self {
        let mut c = Self::from_depth(depth, vocab_size);
        c.set_arch(arch);
        c
    }

    /// Turns this shape into the family `arch` (width, depth, heads and context kept).
    pub fn set_arch(&mut self, arch: Arch) {
        if arch == Arch::Jarip {
            return;
        }
        self.mlp = MlpKind::SwiGlu;
        self.mlp_hidden = (8 * self.n_embd).div_ceil(3).div_ceil(64) * 64;
        self.logit_softcap = 0.0;
        (self.qk_norm, self.rope_base) = match arch {
            Arch::Llama => (false, 500_000.0),
            _ => (true, 1_000_000.0),
        };
    }

    /// A small shape for tests: 2 layers, width 64, 4 heads of 16 (2 KV heads), context 32.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_kv_head: 2,
            mlp_hidden: 256,
            mlp: MlpKind::Relu2,
            max_seq_len: 32,
            rope_base: 10_000.0,
            logit_softcap: 15.0,
            norm_eps: 1e-5,
            qk_norm: true,
            tie_embeddings: false,
            rope_scaling: None,
            head_dim_override: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim_override.unwrap_or(self.n_embd / self.n_head)
    }

    /// Width of all query heads together (`n_embd` unless `head_dim` is set otherwise).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }

    /// Checks every constraint the model relies on; the error names the offending fields.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head),
            ("mlp_hidden", self.mlp_hidden),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("model config: {name} must be positive");
            }
        }
        if self.head_dim_override == Some(0) {
            bail!("model config: head_dim must be positive");
        }
        if self.head_dim_override.is_none() && !self.n_embd.is_multiple_of(self.n_head) {
            bail!("model config: n_head {} does not divide n_embd {}", self.n_head, self.n_embd);
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) {
            bail!("model config: n_head {} is not a multiple of n_kv_head {}", self.n_head, self.n_kv_head);
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("model config: head width (head_dim) {} must be even for rotary embeddings", self.head_dim());
        }
        if self.vocab_size > u32::MAX as usize {
            bail!("model config: vocab_size {} does not fit token ids (u32)", self.vocab_size);
        }
        if !(self.logit_softcap >= 0.0 && self.logit_softcap.is_finite()) {
            bail!("model config: logit_softcap must be finite and ≥ 0 (0 = no soft-cap)");
        }
        if !(self.rope_base > 1.0 && self.norm_eps > 0.0) {
            bail!("model config: rope_base must exceed 1 and norm_eps be positive");
        }
        if let Some(r) = &self.rope_scaling {
            let ok = r.factor >= 1.0
                && r.low_freq_factor > 0.0
                && r.high_freq_factor > r.low_freq_factor
                && r.original_max_position_embeddings > 0
                && r.factor.is_finite()
                && r.high_freq_factor.is_finite();
            if !ok {
                bail!("model config: rope_scaling needs factor ≥ 1, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0");
            }
        }
        Ok(())
    }

    /// The rotary frequencies, `rope_base^(−2i/D)` for `i < D/2`, scaled as [`RopeScaling`] says
    /// where the config has one (the computation of HF's `_compute_llama3_parameters`, in f64).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let base = jarip_kernels::ops::rope::rope_inv_freq(self.head_dim(), self.rope_base);
        let Some(s) = &self.rope_scaling else { return base };
        let old = s.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }

    /// A context of `seq_len` tokens must fit the rotary tables.
    pub fn check_seq_len(&self, seq_len: usize) -> Result<()> {
        if seq_len == 0 || seq_len > self.max_seq_len {
            bail!(
                "sequence length {seq_len} is outside the model's context: the rotary tables cover 1..={} \
                 (raise max_seq_len in the model config)",
                self.max_seq_len
            );
        }
        Ok(())
    }

    /// Reads a `.toml` or `.json` config (by extension; other names are tried as JSON then TOML).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read model config {}", path.display()))?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let cfg: Self = if is_toml {
            toml::from_str(&text).with_context(|| format!("{} is not a valid model config", path.display()))?
        } else {
            match serde_json::from_str(&text) {
                Ok(c) => c,
                Err(json_err) => toml::from_str(&text)
                    .map_err(|_| json_err)
                    .with_context(|| format!("{} is not a valid model config", path.display()))?,
            }
        };
        cfg.validate().with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Parameter count (every tensor is trainable).
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let d = self.head_dim();
        let mlp_mats = match self.mlp {
            MlpKind::Relu2 => 2,
            MlpKind::SwiGlu => 3,
        };
        let qk_gains = if self.qk_norm { 2 * d } else { 0 };
        let per_layer =
            c * self.q_dim() * 2 + c * self.kv_dim() * 2 + mlp_mats * c * self.mlp_hidden + 2 * c + qk_gains;
        let matrices_v = if self.tie_embeddings { 1 } else { 2 };
        matrices_v * self.vocab_size * c + self.n_layer * per_layer + c
    }

    /// Matmul FLOPs per token of a training step (forward + backward = 6 per weight use,
    /// excluding the embedding lookup) plus causal attention (12·L·C·T/2 per token, half
    /// the scores being masked), as in the PaLM/nanochat estimate.
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let matmul_params = (self.num_params() - self.vocab_size * self.n_embd) as f64;
        let attn = 12.0 * self.n_layer as f64 * self.q_dim() as f64 * seq_len as f64 / 2.0;
        6.0 * matmul_params + attn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_shape_the_dial_and_old_configs_read_and_write_unchanged() {
        let j = ModelConfig::from_depth_arch(6, 8192, Arch::Jarip);
        assert_eq!(j, ModelConfig::from_depth(6, 8192));
        let text = serde_json::to_string(&j).unwrap();
        assert!(!text.contains("qk_norm"), "the default is left out: {text}");
        let back: ModelConfig = serde_json::from_str(&text).unwrap();
        assert!(back.qk_norm && back == j);
        let l = ModelConfig::from_depth_arch(6, 8192, Arch::Llama);
        assert_eq!(
            (l.mlp, l.mlp_hidden, l.qk_norm, l.logit_softcap, l.rope_base),
            (MlpKind::SwiGlu, 1024, false, 0.0, 5e5)
        );
        assert!(serde_json::to_string(&l).unwrap().contains("\"qk_norm\":false"));
        let q = ModelConfig::from_depth_arch(6, 8192, Arch::Qwen3);
        assert_eq!((q.mlp, q.qk_norm, q.logit_softcap, q.rope_base), (MlpKind::SwiGlu, true, 0.0, 1e6));
        for c in [&l, &q] {
            c.validate().unwrap();
            assert_eq!((c.n_layer, c.n_embd, c.n_head), (j.n_layer, j.n_embd, j.n_head));
            let p_swiglu = 3 * c.n_embd * c.mlp_hidden;
            let p_relu2 = 2 * j.n_embd * j.mlp_hidden;
            assert!(p_swiglu.abs_diff(p_relu2) * 50 < p_relu2, "SwiGLU keeps ReLU²'s MLP size");
        }
        assert_eq!("qwen3".parse::<Arch>().unwrap(), Arch::Qwen3);
        assert!("gpt5".parse::<Arch>().unwrap_err().to_string().contains("jarip, llama or qwen3"));
        let mut bad = l.clone();
        bad.logit_softcap = -1.0;
        assert!(bad.validate().unwrap_err().to_string().contains("logit_softcap"));
    }

    #[test]
    fn depth_six_is_the_benchmark_shape() {
        let c = ModelConfig::from_depth(6, 8192);
        assert_eq!((c.n_embd, c.n_head, c.head_dim(), c.mlp_hidden), (384, 6, 64, 1536));
        c.validate().unwrap();
        // 16.9M parameters, as in the PyTorch reference.
        assert!((16_800_000..17_000_000).contains(&c.num_params()), "{}", c.num_params());
    }

    #[test]
    fn bad_shapes_are_named() {
        let mut c = ModelConfig::tiny(300);
        c.n_head = 3;
        assert!(c.validate().unwrap_err().to_string().contains("does not divide n_embd"));
        let mut c = ModelConfig::tiny(300);
        c.n_kv_head = 3;
        assert!(c.validate().unwrap_err().to_string().contains("multiple of n_kv_head"));
        let c = ModelConfig::tiny(300);
        assert!(c.check_seq_len(64).unwrap_err().to_string().contains("rotary"));
    }

    #[test]
    fn config_files_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = ModelConfig::tiny(300);
        let j = d.path().join("c.json");
        std::fs::write(&j, c.to_json()).unwrap();
        assert_eq!(ModelConfig::from_file(&j).unwrap(), c);
        let t = d.path().join("c.toml");
        std::fs::write(&t, toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(ModelConfig::from_file(&t).unwrap(), c);
        std::fs::write(&t, toml::to_string(&c).unwrap().replace("n_head = 4", "n_head = 5")).unwrap();
        assert!(ModelConfig::from_file(&t).is_err());
    }
}
