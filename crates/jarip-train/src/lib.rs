//! jarip-train: pretraining a [`jarip_model::Gpt`] on token shards.
//!
//! It owns the training loop and everything a run leaves behind:
//! - [`optim`]: AdamW with decoupled weight decay (fused on CPU) and optional Muon, gradient clipping;
//! - [`schedule`]: warmup then cosine or warmup-stable-decay;
//! - [`step`]: one optimizer step over accumulated micro-batches;
//! - [`eval`]: validation loss and bits per byte; [`sample`]: generations during training;
//! - [`checkpoint`]: atomic `ckpt-STEP/` directories with manifests, keep-last-K, exact resume;
//! - [`metrics`]: `metrics.jsonl`; [`pretrain`](mod@pretrain): the run itself, with its ledger entries.
//!
//! The CLI calls [`pretrain()`] with [`PretrainOptions`].

pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod options;
pub mod pretrain;
pub mod sample;
pub mod schedule;
pub mod step;

pub use optim::OptimizerOptions;
pub use options::{PretrainOptions, PretrainSummary};
pub use pretrain::{newest_checkpoint, pretrain};
pub use schedule::{Schedule, ScheduleKind};
