//! Model formats other tools read, so a jarip model can leave jarip without losing its record:
//!
//! - [`hf`]: the Hugging Face layout (`config.json`, `model.safetensors`, tokenizer files with the
//!   chat template), exported from a checkpoint and loaded back;
//! - [`gguf`]: the GGUF container (llama.cpp's format), read and written, with `F32`, `F16`,
//!   `BF16` and `Q8_0` tensors.
//!
//! Every export carries the source checkpoint's weight hash and a manifest, so `jarip lineage`
//! and `jarip provenance` can tie it back to the training run.

pub mod gguf;
pub mod gguf_model;
pub mod hf;
