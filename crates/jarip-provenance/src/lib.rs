//! jarip-provenance: evidence that a model is what its makers say it is.
//!
//! - [`tensors`]: loading every tensor of a model directory (a jarip checkpoint or run, or any
//!   HF-layout safetensors model) as f32, with its tokenizer when there is one;
//! - [`stats`]: similarity statistics that do not fall into the raw-cosine trap: mean-centred
//!   Pearson correlation, debiased linear CKA (invariant to permuting hidden units), singular
//!   value spectra;
//! - [`lineage`]: tensor matching, the layer-by-layer comparison of two models, tokenizer
//!   overlap, and a verdict calibrated against reference pairs computed in the same run.

pub mod lineage;
pub mod stats;
pub mod tensors;
pub mod verify;
