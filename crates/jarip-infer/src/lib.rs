//! jarip-infer: turning a model's logits into text, shared by `jarip generate`, `jarip chat`
//! and the server.
//!
//! - [`engine`]: requests → streamed text; a [`Batcher`] decodes many sequences per forward pass
//!   and admits or cancels them between steps (continuous batching);
//! - [`decode`]: the network for CPU inference on ragged batches with per-sequence KV caches
//!   (continuous batching), batch-invariant, with f32 or Q8_0 weights and an f32 or f16 cache;
//! - [`model_dir`] (from jarip-interop, re-exported): a checkpoint, run, HF export or GGUF file →
//!   model + tokenizer, checked against each other;
//! - [`sampling`] (jarip-model's, re-exported): temperature, top-k, top-p, min-p,
//!   repetition/presence/frequency penalties, seeded draws and log-probabilities;
//! - [`stop`]: stop strings that end generation without ever being returned, even when they
//!   arrive split across tokens.

#![forbid(unsafe_code)]

pub mod decode;
pub mod engine;
pub mod prefix_cache;
pub mod stop;

pub use decode::{DecodeModel, KvFormat, SeqCache, SeqInput, WeightFormat};
pub use engine::{utf8_constraint, Batcher, Completion, Delta, Engine, Event, FinishReason, Request};
pub use jarip_interop::model_dir::{self, load_model, load_model_cpu, resolve_checkpoint, LoadedModel};
pub use jarip_model::sampling::{self, Sampler, SamplingParams, TokenLogprob};
pub use stop::{StopMatcher, StopOutcome};
