//! jarip-kernels: every piece of jarip that needs `unsafe`, each behind a safe API.
//!
//! All other crates of the workspace declare `#![forbid(unsafe_code)]`; code that needs raw
//! pointers, SIMD intrinsics, memory maps or foreign calls lands here, with a `SAFETY:` comment on
//! every `unsafe` block and a `# Safety` section on every `unsafe fn` (both enforced by the lints
//! below). It owns:
//! - [`ops`]: the model's building blocks for training, each as composed candle ops and as a
//!   fused multithreaded CPU kernel with a hand-written backward, tested against each other;
//!   [`ops::fastmath`]: vectorised `exp`/`tanh`;
//! - [`ops::matmul_bf16`]: bf16 matrix products with fp32 accumulation for `--precision bf16`
//!   (portable, AVX512-BF16 and AMX paths; the first two give the same bits);
//! - [`decode_matmul`]: the register-blocked `x · wᵀ` of CPU decoding (f32 and Q8_0 weights),
//!   with one stated reduction order on every instruction set;
//! - [`kv_cache`]: the decode path's per-sequence KV cache (f32 or f16) and the attention that
//!   reads it;
//! - [`quant`]: ggml's Q8_0 block quantization, byte-compatible with GGUF files;
//! - [`mmap`]: read-only memory maps of files;
//! - [`alloc`]: keeping freed memory for reuse in training processes (no page faults per step);
//! - [`peak`]: the machine's measured fp32 FMA and bf16 dot-product peaks, for MFU;
//! - [`pool`]: running a step's work on rayon's threads rather than handing each loop over;
//! - `cuda` (feature `cuda`): the fused CUDA training kernels of `cuda/train.cu` (attention,
//!   RMSNorm, RoPE, the head's cross-entropy, multi-tensor AdamW) as candle ops;
//! - `nccl` (feature `nccl`): the NCCL all-reduce as a candle op.
//!
//! Kernels are chosen at run time from the CPU's features, never at build time.

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

pub mod alloc;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode_matmul;
pub mod kv_cache;
pub mod mmap;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ops;
pub mod peak;
pub mod pool;
pub mod quant;

pub use kv_cache::{KvFormat, SeqCache};
pub use ops::Kernels;
