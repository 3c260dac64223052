//! The ledger records of training (see [`jarip_ledger::records`]) with the trainer's own types
//! inside: the model config, optimizer and schedule options, kernels and the data cursor.

use crate::optim::OptimizerOptions;
use crate::schedule::Schedule;
use jarip_data::SamplerState;
use jarip_ledger::records as rec;
use jarip_model::{Kernels, MatmulPath, ModelConfig};

pub use jarip_data::SamplerState as Cursor;
pub use jarip_ledger::records::{Processes, StepMetrics};

/// The trainer's types, as [`jarip_ledger::records::Domain`] asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trained;

impl rec::Domain for Trained {
    type Model = ModelConfig;
    type Optimizer = OptimizerOptions;
    type Schedule = Schedule;
    type Kernels = Kernels;
    type Cursor = SamplerState;
    type Matmul = MatmulPath;
}

/// `config` of `pretrain-start`/`pretrain-resume`, settings of a pretraining checkpoint.
pub type PretrainConfig = rec::PretrainConfig<Trained>;
/// `details` of `pretrain-start`/`pretrain-resume`.
pub type PretrainStart = rec::PretrainStart<Trained>;
/// `details` of `checkpoint` and `sft-checkpoint`.
pub type CheckpointDetails = rec::CheckpointDetails<Trained>;
/// `details.data` of a checkpoint entry.
pub type DataRange = rec::DataRange<Trained>;
/// `config` of `sft-start`/`sft-resume`, settings of a fine-tuning checkpoint.
pub type SftConfig = rec::SftConfig<Trained>;
/// `details` of `sft-start`/`sft-resume`.
pub type SftStart = rec::SftStart<Trained>;
/// `config.mix` of a fine-tuning run that mixes in pretraining text.
pub type MixConfig = rec::MixConfig<Trained>;
pub use jarip_ledger::records::{HeldOutEval, SftSelection};
