//! jarip-infer: turning a model's logits into text, shared by `jarip generate`, `jarip chat`
//! and the server.
//!
//! - [`sampling`]: temperature, top-k, top-p, min-p, repetition/presence/frequency penalties,
//!   seeded draws and log-probabilities;
//! - [`stop`]: stop strings that end generation without ever being returned, even when they
//!   arrive split across tokens.

pub mod sampling;
pub mod stop;

pub use sampling::{Sampler, SamplingParams, TokenLogprob};
pub use stop::{StopMatcher, StopOutcome};
