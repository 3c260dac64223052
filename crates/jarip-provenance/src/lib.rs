//! jarip-provenance: evidence that a model is what its makers say it is.
//!
//! It owns three commands' logic and depends on the trainer only to re-run it:
//! - `provenance verify` — [`record`] reads a run's ledger into typed stages, [`verify`] checks
//!   the hash chain, every recorded file hash, the shards' Merkle root, the continuity of the
//!   training record, and [`replay`] re-initialises the model from the recorded seed and re-runs
//!   recorded checkpoint intervals bit for bit;
//! - `provenance data-order` — [`data_order`]: scores training batches drawn from the run's
//!   recorded order under any model jarip loads and tests whether their loss falls with the step
//!   at which the run read them (a permutation test, exact under the null);
//! - `provenance card` — [`card`]: a model card (Markdown and JSON) stating what was built from
//!   scratch, with the evidence and the command that re-checks it;
//! - `lineage` — [`weights`] streams safetensors models (sharded with an index; f32, bf16, f16,
//!   FP8 with scales) tensor by tensor with bounds checked against the file, [`independence`]
//!   tests H0 "A and B were initialised independently" by aligning units on one tensor and
//!   testing the pairing on another, [`pvalue`] turns that into p-values (exact permutation
//!   moments, Fisher's combination, power) in log space; [`synth`] writes HF-layout models and
//!   their disguised derivatives for the tests and `bench/lineage`. The descriptive scores of
//!   earlier versions stay as context (`--references`): [`tensors`] loads a model as f32,
//!   [`stats`] (mean-centred Pearson, debiased CKA, spectra), [`invariants`] (token-space
//!   readings), [`lineage`](mod@lineage) and [`calibrate`] (references computed in the run).

#![forbid(unsafe_code)]

pub mod calibrate;
pub mod card;
pub mod data_order;
pub mod independence;
pub mod invariants;
pub mod lineage;
pub mod pvalue;
pub mod record;
pub mod replay;
pub mod stats;
pub mod synth;
pub mod tensors;
pub mod verify;
pub mod weights;
