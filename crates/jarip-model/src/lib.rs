//! jarip-model: the transformer itself, and nothing about data, training or serving.
//!
//! It owns:
//! - [`config`]: the model's shape ([`ModelConfig`]), the `depth` dial, validation, TOML/JSON files;
//! - [`layout`]: the network's tensors named once (HF and GGUF names, shapes, roles, one block's
//!   tensors), used by training, decoding, exports and loaders;
//! - [`init`]: seeded, documented initialisation (same seed → same weights, bit for bit);
//! - [`model`]: [`Gpt`] — the training forward, loss, parameters (decoding is jarip-infer's);
//! - [`sampling`]: the one sampler turning a row of logits into a token (temperature, top-k/p,
//!   min-p, penalties, seeded draws, log-probabilities), for inference and training samples alike;
//! - [`weights`]: `model.safetensors` + `config.json` I/O and [`Gpt::weights_sha256`];
//! - the building blocks it composes come from [`jarip_kernels::ops`] (composed candle ops, or
//!   fused CPU kernels with explicit backward passes).

#![forbid(unsafe_code)]

pub mod config;
pub mod init;
pub mod layout;
pub mod model;
pub mod sampling;
pub mod utf8_mask;
pub mod weights;

/// The device a model lives on (candle's), so callers need not name the tensor library.
pub use candle_core::Device;
pub use config::{Arch, MlpKind, ModelConfig, RopeScaling};
/// The fused CUDA kernels (feature `cuda`).
#[cfg(feature = "cuda")]
pub use jarip_kernels::cuda;
pub use jarip_kernels::ops::matmul_bf16::{Path as MatmulPath, Precision};
pub use jarip_kernels::{ops, Kernels};
pub use layout::{param_shapes, ParamRole};
pub use model::{Gpt, KvCache};
pub use sampling::{Sampler, SamplingParams, TokenLogprob};
pub use utf8_mask::{Utf8Constraint, Utf8State};
pub use weights::{hash_tensors, CONFIG_FILE, WEIGHTS_FILE};
