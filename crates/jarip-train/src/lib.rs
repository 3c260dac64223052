//! jarip-train: pretraining a [`jarip_model::Gpt`] on token shards, and fine-tuning it on conversations.
//!
//! It owns the training loop and everything a run leaves behind:
//! - [`optim`]: AdamW with decoupled weight decay (fused on CPU: [`adamw`]) and optional Muon,
//!   gradient clipping;
//! - [`schedule`]: warmup then cosine or warmup-stable-decay;
//! - [`step`]: one optimizer step over accumulated micro-batches;
//! - `driver`: the training loop pretraining and fine-tuning share (device, ledger entries,
//!   progress, bookkeeping, checkpoints, data-parallel agreement);
//! - [`dist`]: data-parallel replicas over MPI (or one process standing in for them);
//! - [`eval`]: validation loss and bits per byte; [`sample`]: generations during training;
//! - [`checkpoint`]: atomic `ckpt-STEP/` directories with manifests, keep-last-K, exact resume;
//! - [`records`]: the ledger records and metrics lines training writes, with its own types inside;
//! - [`metrics`]: `metrics.jsonl`; [`pretrain`](mod@pretrain): the run itself, with its ledger entries;
//! - [`sft`](mod@sft): supervised fine-tuning with assistant-only loss, from a base checkpoint.
//!
//! The CLI calls [`pretrain()`] with [`PretrainOptions`] and [`sft()`] with [`SftOptions`].

#![forbid(unsafe_code)]

pub mod adamw;
pub mod checkpoint;
pub mod dist;
pub(crate) mod driver;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod options;
pub mod pretrain;
pub mod records;
pub mod sample;
pub mod schedule;
pub mod sft;
pub mod step;

pub use optim::OptimizerOptions;
pub use options::{PretrainOptions, PretrainSummary};
pub use pretrain::{newest_checkpoint, pretrain, pretrain_parallel};
pub use schedule::{Schedule, ScheduleKind};
pub use sft::{sft, sft_parallel, SftOptions, SftSummary};
