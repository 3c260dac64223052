//! jarip: the thin layer that wires the stage crates into commands.
//!
//! - [`demo`]: obtains the openly licensed demo corpus through PyPI;
//! - [`pretrain_cmd`]: `jarip pretrain` flags onto the trainer's options;
//! - [`stages`]: one function per CLI stage, each calling its crate and appending its
//!   entry to the run's hash-chained ledger;
//! - [`speedrun`]: every stage in order on the demo corpus.

pub mod demo;
pub mod pretrain_cmd;
pub mod speedrun;
pub mod stages;
