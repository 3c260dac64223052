//! What `jarip pretrain` takes (clap-free; the CLI maps its flags onto this) and returns.

use crate::optim::OptimizerOptions;
use crate::schedule::{Schedule, ScheduleKind};
use jarip_model::{Kernels, MatmulPath, Precision};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainOptions {
    /// Shard directory (`train-*.bin`, `val-*.bin`).
    pub data: PathBuf,
    /// Run directory: checkpoints, metrics.jsonl, ledger.jsonl.
    pub out: PathBuf,
    /// Tokenizer directory or file; default: `tokenizer/` beside the shard directory.
    pub tokenizer: Option<PathBuf>,
    /// Model size dial (default 6 when neither `depth` nor `config` is given).
    pub depth: Option<usize>,
    /// Model config file (TOML or JSON); its vocab_size must match the tokenizer's.
    pub config: Option<PathBuf>,
    /// Stop after this many optimizer steps ...
    pub max_steps: Option<u64>,
    /// ... or after this many training tokens ...
    pub tokens: Option<u64>,
    /// ... or after this many minutes of training.
    pub minutes: Option<f64>,
    /// Stop (and checkpoint) after this step without changing the schedule: replays a segment.
    pub stop_at_step: Option<u64>,
    /// Continue the run in `out` from its newest checkpoint.
    pub resume: bool,
    /// The architecture family of the depth dial's shape (ignored with a config file, which sets
    /// every field itself).
    pub arch: jarip_model::Arch,
    /// The head is the embedding matrix (with `depth`/`arch`; a config file says it itself).
    pub tie_embeddings: bool,
    /// Seeds the weights at step 0 and the sampling RNG.
    pub seed: u64,
    /// Seeds the data order (the sampler's shuffle); `None` = `seed`. Apart from `seed` so that two
    /// runs can share an initialisation and differ only in the order they saw the data.
    pub data_seed: Option<u64>,
    pub seq_len: usize,
    /// Sequences per micro-batch (one forward/backward).
    pub batch_size: usize,
    /// Tokens per optimizer step, reached by gradient accumulation (default: one micro-batch).
    pub batch_tokens: Option<usize>,
    /// Data-parallel replicas that share each step (default: the number of processes). One
    /// process can stand in for all of them and reach the same weights.
    pub replicas: Option<usize>,
    pub checkpoint_every: u64,
    /// Checkpoints to keep (0 = all).
    pub keep_checkpoints: usize,
    /// Evaluate on the val split every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Val targets per evaluation (0 = the whole split).
    pub eval_tokens: usize,
    /// Print a sample generation every N steps (0 = never).
    pub sample_every: u64,
    pub sample_tokens: usize,
    pub sample_temperature: f32,
    pub optimizer: OptimizerOptions,
    pub schedule: Schedule,
    /// Fused CPU kernels (default) or plain candle ops.
    pub kernels: Kernels,
    /// The matrix products' precision on the CPU: fp32, or bf16 with fp32 accumulation (fp32
    /// master weights, optimizer, norms and loss). `None`: fp32 for a new run; a resumed run
    /// keeps what it used.
    pub precision: Option<Precision>,
    /// The bf16 kernel path (implies bf16): `bf16_portable`, `bf16_avx512`, or the opt-in
    /// `bf16_amx`. `None`: AVX512-BF16 where the CPU has it, else fp32 with a notice.
    pub bf16_kernel: Option<MatmulPath>,
    /// "cpu" or "cuda" (needs the `cuda` feature; bf16 compute, fp32 master weights).
    pub device: String,
    /// Peak FLOP/s of the device, for MFU; `None`: on the CPU, its fp32 FMA peak measured once
    /// and cached per CPU model ([`jarip_kernels::peak`]); on a GPU, no MFU.
    pub peak_flops: Option<f64>,
    /// Show a progress bar.
    pub progress: bool,
    /// Sleep this long after each step. Only for tests that interrupt a run; 0 otherwise.
    pub step_delay_ms: u64,
    /// With `minutes`: steps' worth of the budget left for a later stage (the speedrun's
    /// fine-tuning); the plan gives pretraining the rest.
    pub reserve_steps: u64,
}

impl PretrainOptions {
    /// The seed of the data order: `--data-seed`, else `--seed`.
    pub fn order_seed(&self) -> u64 {
        self.data_seed.unwrap_or(self.seed)
    }
}

impl Default for PretrainOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::new(),
            tokenizer: None,
            depth: None,
            config: None,
            max_steps: None,
            tokens: None,
            minutes: None,
            stop_at_step: None,
            resume: false,
            arch: jarip_model::Arch::Jarip,
            tie_embeddings: false,
            seed: 42,
            data_seed: None,
            seq_len: 256,
            batch_size: 8,
            batch_tokens: None,
            replicas: None,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            eval_every: 250,
            eval_tokens: 65_536,
            sample_every: 500,
            sample_tokens: 32,
            sample_temperature: 0.0,
            optimizer: OptimizerOptions::default(),
            schedule: Schedule { kind: ScheduleKind::Cosine, warmup_steps: 50, min_lr_frac: 0.1, decay_frac: 0.2 },
            kernels: Kernels::Fused,
            precision: None,
            bf16_kernel: None,
            device: "cpu".into(),
            peak_flops: None,
            progress: true,
            step_delay_ms: 0,
            reserve_steps: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub out: PathBuf,
    pub steps: u64,
    pub tokens_seen: u64,
    pub final_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub last_checkpoint: Option<PathBuf>,
    pub weights_sha256: String,
    pub num_params: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}
