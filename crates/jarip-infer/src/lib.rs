//! jarip-infer: turning a model's logits into text, shared by `jarip generate`, `jarip chat`
//! and the server.
//!
//! - [`engine`]: requests → streamed text; a [`Batcher`] decodes many sequences per forward pass
//!   and admits or cancels them between steps (continuous batching);
//! - [`model_dir`]: a checkpoint or run directory → model + tokenizer, checked against each other;
//! - [`sampling`]: temperature, top-k, top-p, min-p, repetition/presence/frequency penalties,
//!   seeded draws and log-probabilities;
//! - [`stop`]: stop strings that end generation without ever being returned, even when they
//!   arrive split across tokens.

pub mod engine;
pub mod model_dir;
pub mod prefix_cache;
pub mod sampling;
pub mod stop;

pub use engine::{Batcher, Completion, Delta, Engine, Event, FinishReason, Request};
pub use jarip_model::{KvFormat, WeightFormat};
pub use model_dir::{load_model, resolve_checkpoint, LoadedModel};
pub use sampling::{Sampler, SamplingParams, TokenLogprob};
pub use stop::{StopMatcher, StopOutcome};
