//! jarip-model: the transformer itself, and nothing about data, training or serving.
//!
//! It owns:
//! - [`config`]: the model's shape ([`ModelConfig`]), the `depth` dial, validation, TOML/JSON files;
//! - [`init`]: seeded, documented initialisation (same seed → same weights, bit for bit);
//! - [`model`]: [`Gpt`] — forward (with an optional [`KvCache`] for decoding), loss, parameters;
//! - [`decode`]: the same network for CPU inference on ragged batches with per-sequence KV
//!   caches (continuous batching), batch-invariant; [`kv_cache`]: those caches (f32 or f16) and
//!   the attention that reads them;
//! - [`weights`]: `model.safetensors` + `config.json` I/O and [`Gpt::weights_sha256`];
//! - [`ops`]: each building block as composed candle ops and as a fused CPU kernel with an
//!   explicit backward pass, tested against each other;
//! - [`quant`]: ggml's `Q8_0` block quantization, byte-compatible with GGUF files.

pub mod config;
pub mod decode;
pub mod decode_matmul;
pub mod init;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod quant;
pub mod weights;

pub use config::{MlpKind, ModelConfig};
pub use decode::{DecodeModel, SeqInput, WeightFormat};
pub use kv_cache::{KvFormat, SeqCache};
pub use model::{param_shapes, Gpt, KvCache, ParamRole};
pub use ops::Kernels;
pub use weights::{hash_tensors, CONFIG_FILE, WEIGHTS_FILE};
