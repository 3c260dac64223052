//! The network's tensors, named once: every part of a block, its Hugging Face name (jarip's own
//! checkpoint names) and llama.cpp's GGUF name, its shape for a [`ModelConfig`], its role for the
//! optimizer and initialisation, and [`Block`], which gathers one block's tensors in whatever form
//! a user holds them (trainable `Var`s for training, plain rows or quantized matrices for
//! decoding). Training ([`crate::Gpt`]), decoding (jarip-infer), the HF and GGUF exports and
//! every loader go through this table.

use crate::config::{MlpKind, ModelConfig};
use anyhow::{bail, Context, Result};

/// Token embedding `[V, C]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Final RMSNorm gain `[C]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Output head `[V, C]` (untied).
pub const LM_HEAD: &str = "lm_head.weight";

/// One tensor of a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    AttnNorm,
    Q,
    K,
    V,
    QNorm,
    KNorm,
    O,
    MlpNorm,
    /// SwiGLU only.
    Gate,
    Up,
    Down,
}

impl Part {
    pub const ALL: [Part; 11] = [
        Part::AttnNorm,
        Part::Q,
        Part::K,
        Part::V,
        Part::QNorm,
        Part::KNorm,
        Part::O,
        Part::MlpNorm,
        Part::Gate,
        Part::Up,
        Part::Down,
    ];

    /// The name inside `model.layers.{i}.` (Hugging Face Llama/Qwen3 naming).
    pub fn hf(self) -> &'static str {
        match self {
            Part::AttnNorm => "input_layernorm.weight",
            Part::Q => "self_attn.q_proj.weight",
            Part::K => "self_attn.k_proj.weight",
            Part::V => "self_attn.v_proj.weight",
            Part::QNorm => "self_attn.q_norm.weight",
            Part::KNorm => "self_attn.k_norm.weight",
            Part::O => "self_attn.o_proj.weight",
            Part::MlpNorm => "post_attention_layernorm.weight",
            Part::Gate => "mlp.gate_proj.weight",
            Part::Up => "mlp.up_proj.weight",
            Part::Down => "mlp.down_proj.weight",
        }
    }

    /// The name inside `blk.{i}.` (llama.cpp's GGUF naming).
    pub fn gguf(self) -> &'static str {
        match self {
            Part::AttnNorm => "attn_norm.weight",
            Part::Q => "attn_q.weight",
            Part::K => "attn_k.weight",
            Part::V => "attn_v.weight",
            Part::QNorm => "attn_q_norm.weight",
            Part::KNorm => "attn_k_norm.weight",
            Part::O => "attn_output.weight",
            Part::MlpNorm => "ffn_norm.weight",
            Part::Gate => "ffn_gate.weight",
            Part::Up => "ffn_up.weight",
            Part::Down => "ffn_down.weight",
        }
    }

    /// Whether a model with `cfg` has this part.
    pub fn present(self, cfg: &ModelConfig) -> bool {
        match self {
            Part::Gate => cfg.mlp == MlpKind::SwiGlu,
            Part::QNorm | Part::KNorm => cfg.qk_norm,
            _ => true,
        }
    }

    /// `[rows, cols]` of a matrix (`out × in`, the layout every matrix is stored and read in), or
    /// `[len]` of a norm gain.
    pub fn shape(self, cfg: &ModelConfig) -> Vec<usize> {
        let (c, d, kv, hid) = (cfg.n_embd, cfg.head_dim(), cfg.kv_dim(), cfg.mlp_hidden);
        match self {
            Part::AttnNorm | Part::MlpNorm => vec![c],
            Part::QNorm | Part::KNorm => vec![d],
            Part::Q => vec![cfg.q_dim(), c],
            Part::O => vec![c, cfg.q_dim()],
            Part::K | Part::V => vec![kv, c],
            Part::Gate | Part::Up => vec![hid, c],
            Part::Down => vec![c, hid],
        }
    }

    /// The full name of this part of block `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.hf())
    }
}

/// What a parameter is, for the optimizer's groups (weight decay, Muon vs AdamW) and its
/// initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    Embedding,
    /// A 2-D weight inside a block (attention or MLP projection).
    Matrix,
    /// RMSNorm gains.
    Norm,
    /// The output head.
    Head,
}

impl ParamRole {
    pub fn of(name: &str) -> Self {
        if name.contains("embed_tokens") {
            ParamRole::Embedding
        } else if name.starts_with("lm_head") {
            ParamRole::Head
        } else if name.contains("norm") {
            ParamRole::Norm
        } else {
            ParamRole::Matrix
        }
    }
}

/// Names and shapes of every tensor of a model with config `cfg`, sorted by name (the canonical
/// order for hashing and saving).
pub fn param_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.n_embd, cfg.vocab_size);
    let mut out = vec![(EMBED.to_string(), vec![v, c]), (FINAL_NORM.to_string(), vec![c])];
    if !cfg.tie_embeddings {
        out.push((LM_HEAD.to_string(), vec![v, c]));
    }
    for i in 0..cfg.n_layer {
        for part in Part::ALL.into_iter().filter(|p| p.present(cfg)) {
            out.push((part.name(i), part.shape(cfg)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// jarip (HF-style) tensor name → llama.cpp name.
pub fn gguf_name(name: &str) -> Result<String> {
    let fixed = [(EMBED, "token_embd.weight"), (FINAL_NORM, "output_norm.weight"), (LM_HEAD, "output.weight")];
    if let Some((_, g)) = fixed.iter().find(|(n, _)| *n == name) {
        return Ok(g.to_string());
    }
    let none = || format!("no GGUF name for tensor {name}");
    let rest = name.strip_prefix("model.layers.").with_context(none)?;
    let (layer, hf) = rest.split_once('.').with_context(none)?;
    let Some(part) = Part::ALL.into_iter().find(|p| p.hf() == hf) else { bail!(none()) };
    Ok(format!("blk.{layer}.{}", part.gguf()))
}

/// llama.cpp tensor name → jarip's (HF's); `None` for a tensor jarip's blocks do not have.
pub fn hf_name_of_gguf(gguf: &str) -> Option<String> {
    let fixed = [(EMBED, "token_embd.weight"), (FINAL_NORM, "output_norm.weight"), (LM_HEAD, "output.weight")];
    if let Some((n, _)) = fixed.iter().find(|(_, g)| *g == gguf) {
        return Some(n.to_string());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = Part::ALL.into_iter().find(|p| p.gguf() == part)?;
    Some(format!("model.layers.{layer}.{}", part.hf()))
}

/// One block's tensors: norm gains as `N`, matrices as `M` (`[out, in]`).
pub struct Block<N, M> {
    pub attn_norm: N,
    pub wq: M,
    pub wk: M,
    pub wv: M,
    /// QK-norm's gains; `None` without QK-norm.
    pub q_norm: Option<N>,
    pub k_norm: Option<N>,
    pub wo: M,
    pub mlp_norm: N,
    /// SwiGLU's gate; `None` for ReLU².
    pub w_gate: Option<M>,
    pub w_up: M,
    pub w_down: M,
}

impl<N, M> Block<N, M> {
    /// Block `layer` of a model with `cfg`: `norm(name)` gives a gain, `matrix(name, rows, cols)`
    /// a matrix, each called once per tensor in the order of [`Part::ALL`].
    pub fn load(
        cfg: &ModelConfig,
        layer: usize,
        mut norm: impl FnMut(&str) -> Result<N>,
        mut matrix: impl FnMut(&str, usize, usize) -> Result<M>,
    ) -> Result<Self> {
        let mut mat = |p: Part| {
            let s = p.shape(cfg);
            matrix(&p.name(layer), s[0], s[1])
        };
        Ok(Self {
            attn_norm: norm(&Part::AttnNorm.name(layer))?,
            wq: mat(Part::Q)?,
            wk: mat(Part::K)?,
            wv: mat(Part::V)?,
            q_norm: if Part::QNorm.present(cfg) { Some(norm(&Part::QNorm.name(layer))?) } else { None },
            k_norm: if Part::KNorm.present(cfg) { Some(norm(&Part::KNorm.name(layer))?) } else { None },
            wo: mat(Part::O)?,
            mlp_norm: norm(&Part::MlpNorm.name(layer))?,
            w_gate: if Part::Gate.present(cfg) { Some(mat(Part::Gate)?) } else { None },
            w_up: mat(Part::Up)?,
            w_down: mat(Part::Down)?,
        })
    }

    /// The block's matrices (gate included where present).
    pub fn matrices(&self) -> impl Iterator<Item = &M> {
        [&self.wq, &self.wk, &self.wv, &self.wo]
            .into_iter()
            .chain(self.w_gate.as_ref())
            .chain([&self.w_up, &self.w_down])
    }

    /// The block's norm gains (QK-norm's where present).
    pub fn norms(&self) -> impl Iterator<Item = &N> {
        [&self.attn_norm].into_iter().chain(self.q_norm.as_ref()).chain(self.k_norm.as_ref()).chain([&self.mlp_norm])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tensor_has_one_gguf_name_and_the_table_round_trips() {
        let mut cfg = ModelConfig::tiny(50);
        cfg.mlp = MlpKind::SwiGlu;
        let names = param_shapes(&cfg);
        assert_eq!(names.len(), 3 + cfg.n_layer * 11);
        let gguf: std::collections::HashSet<String> = names.iter().map(|(n, _)| gguf_name(n).unwrap()).collect();
        assert_eq!(gguf.len(), names.len(), "two tensors share a GGUF name");
        assert_eq!(gguf_name("model.layers.1.mlp.gate_proj.weight").unwrap(), "blk.1.ffn_gate.weight");
        assert!(gguf_name("model.layers.0.mlp.experts.weight").is_err());
        cfg.mlp = MlpKind::Relu2;
        assert!(!param_shapes(&cfg).iter().any(|(n, _)| n.contains("gate_proj")));
    }
}
