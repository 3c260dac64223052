//! jarip-provenance: evidence that a model is what its makers say it is.
//!
//! It owns three commands' logic and depends on the trainer only to re-run it:
//! - `provenance verify` — [`record`] reads a run's ledger into typed stages, [`verify`] checks
//!   the hash chain, every recorded file hash, the shards' Merkle root, the continuity of the
//!   training record, and [`replay`] re-initialises the model from the recorded seed and re-runs
//!   recorded checkpoint intervals bit for bit;
//! - `provenance card` — [`card`]: a model card (Markdown and JSON) stating what was built from
//!   scratch, with the evidence and the command that re-checks it;
//! - `lineage` — [`tensors`] loads any safetensors model as f32, [`stats`] holds statistics that
//!   avoid the raw-cosine trap (mean-centred Pearson, debiased CKA, spectra), [`invariants`]
//!   reads weight matrices through shared tokens so permuted or rescaled hidden units are still
//!   recognised, [`lineage`](mod@lineage) matches and compares two models, and [`calibrate`]
//!   turns a score into a verdict against references computed in the same run.

pub mod calibrate;
pub mod card;
pub mod invariants;
pub mod lineage;
pub mod record;
pub mod replay;
pub mod stats;
pub mod tensors;
pub mod verify;
