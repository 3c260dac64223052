//! `jarip pretrain`: flags onto [`jarip_train::PretrainOptions`].

use anyhow::Result;
use clap::{Args, ValueEnum};
use jarip_train::dist::{Collective, Solo};
use jarip_train::{PretrainOptions, PretrainSummary};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Wsd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KernelsArg {
    Fused,
    Composed,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum DistArg {
    /// This process alone.
    #[default]
    None,
    /// One MPI rank per process, started by `mpirun -n N jarip pretrain --dist mpi …`.
    Mpi,
    /// Gradients summed on the GPUs by NCCL (`--device cuda`; a build with `--features nccl`):
    /// one process on one GPU, or one MPI rank per GPU under `mpirun` (`--features nccl,mpi`).
    Nccl,
}

#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// Shard directory (from `jarip data shard`).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: checkpoints, metrics.jsonl, ledger.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokenizer directory (default: `tokenizer/` beside the shard directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Model size dial: width 64·depth, depth heads of 64, MLP 4·width (default 6).
    #[arg(long, conflicts_with = "config")]
    pub depth: Option<usize>,
    /// Model config file (TOML or JSON) setting every field.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many training tokens.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Stop after this many minutes.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Architecture family of the --depth shape: jarip (ReLU², QK-norm, soft-cap 15), llama
    /// (SwiGLU, no QK-norm, no soft-cap, RoPE θ 500k) or qwen3 (SwiGLU, QK-norm, no soft-cap,
    /// RoPE θ 1M). Every weight is still drawn from --seed.
    #[arg(long, default_value = "jarip")]
    pub arch: jarip_model::Arch,
    /// Tie the output head to the embedding matrix (one V×C matrix fewer, as Llama 3.2 1B/3B and
    /// small Qwen3 models do); exports say `tie_word_embeddings`, GGUF leaves `output.weight` out.
    #[arg(long)]
    pub tie_embeddings: bool,
    /// Seeds the weights at step 0, the data order (unless --data-seed) and the samples.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seeds the data order apart from the initialisation (default: --seed); recorded in the
    /// ledger, which `provenance data-order` reads.
    #[arg(long)]
    pub data_seed: Option<u64>,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per optimizer step, reached by gradient accumulation.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep (0 = all).
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Evaluate validation loss and bits per byte every N steps.
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Validation tokens per evaluation (0 = the whole split).
    #[arg(long, default_value_t = 65536)]
    pub eval_tokens: usize,
    /// Print a sample generation every N steps (0 = never).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    /// Peak AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Muon for block matrices (AdamW for the rest).
    #[arg(long)]
    pub muon: bool,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    #[arg(long, default_value_t = 50)]
    pub warmup_steps: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// With --minutes: steps' worth of the budget left for a later stage (set by the speedrun).
    #[arg(skip)]
    pub reserve_steps: u64,
}

/// Where and how a training stage runs: the flags `pretrain` and `sft` share.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Fused kernels (hand-written forward and backward: CPU, or CUDA for norms, RoPE, attention,
    /// the head's cross-entropy and AdamW) or plain candle ops. Default: fused on the CPU,
    /// composed on CUDA (until `scripts/gpu-check` has shown the CUDA kernels right and faster).
    #[arg(long, value_enum)]
    pub kernels: Option<KernelsArg>,
    /// Matrix products on the CPU: fp32, or bf16 with fp32 accumulation (master weights,
    /// optimizer, norms and loss stay fp32; AVX512-BF16 where the CPU has it, else fp32 with a
    /// notice). Default: fp32 for a new run; a resumed run keeps its own.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Force a bf16 kernel path (implies bf16): bf16_portable (any CPU, the same bits as
    /// bf16_avx512), bf16_avx512, or bf16_amx (fastest on AMX CPUs; such a run replays only there).
    #[arg(long, value_parser = parse_matmul_path)]
    pub bf16_kernel: Option<jarip_model::MatmulPath>,
    /// cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub no_progress: bool,
    /// Data-parallel engine: none, or mpi (a build with --features mpi, started by mpirun).
    #[arg(long, value_enum, default_value = "none")]
    pub dist: DistArg,
    /// Data-parallel replicas sharing each step (default: the number of ranks). A single process
    /// given --replicas N trains exactly as N ranks do: resume or replay a data-parallel run anywhere.
    #[arg(long)]
    pub replicas: Option<usize>,
}

impl Default for EngineArgs {
    /// One CPU process with the fused kernels and a progress bar (the command-line defaults).
    fn default() -> Self {
        Self {
            kernels: None,
            precision: None,
            bf16_kernel: None,
            device: "cpu".into(),
            no_progress: false,
            dist: DistArg::None,
            replicas: None,
        }
    }
}

impl EngineArgs {
    /// The kernels to run: as asked, else fused on the CPU and composed on CUDA.
    pub fn kernels(&self) -> jarip_model::Kernels {
        match self.kernels {
            Some(k) => k.into(),
            None if self.device.starts_with("cuda") => jarip_model::Kernels::Composed,
            None => jarip_model::Kernels::Fused,
        }
    }
}

impl PretrainArgs {
    pub fn options(&self) -> PretrainOptions {
        let mut o = PretrainOptions {
            data: self.data.clone(),
            out: self.out.clone(),
            tokenizer: self.tokenizer.clone(),
            depth: self.depth,
            config: self.config.clone(),
            max_steps: self.max_steps,
            tokens: self.tokens,
            minutes: self.minutes,
            resume: self.resume,
            arch: self.arch,
            tie_embeddings: self.tie_embeddings,
            seed: self.seed,
            data_seed: self.data_seed,
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            batch_tokens: self.batch_tokens,
            replicas: self.engine.replicas,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            eval_every: self.eval_every,
            eval_tokens: self.eval_tokens,
            sample_every: self.sample_every,
            device: self.engine.device.clone(),
            progress: !self.engine.no_progress,
            reserve_steps: self.reserve_steps,
            ..Default::default()
        };
        o.optimizer.lr = self.lr;
        o.optimizer.weight_decay = self.weight_decay;
        o.optimizer.grad_clip = self.grad_clip;
        o.optimizer.muon = self.muon;
        o.schedule.kind = match self.schedule {
            ScheduleArg::Cosine => jarip_train::schedule::ScheduleKind::Cosine,
            ScheduleArg::Wsd => jarip_train::schedule::ScheduleKind::Wsd,
        };
        o.schedule.warmup_steps = self.warmup_steps;
        o.kernels = self.engine.kernels();
        o.precision = self.engine.precision.map(Into::into);
        o.bf16_kernel = self.engine.bf16_kernel;
        o
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    Fp32,
    Bf16,
}

impl From<PrecisionArg> for jarip_model::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Fp32 => jarip_model::Precision::Fp32,
            PrecisionArg::Bf16 => jarip_model::Precision::Bf16,
        }
    }
}

pub(crate) fn parse_matmul_path(s: &str) -> Result<jarip_model::MatmulPath, String> {
    s.parse()
}

impl From<KernelsArg> for jarip_model::Kernels {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Fused => jarip_model::Kernels::Fused,
            KernelsArg::Composed => jarip_model::Kernels::Composed,
        }
    }
}

pub fn run(a: &PretrainArgs) -> Result<PretrainSummary> {
    let (s, leader) = on_ranks(a.engine.dist, &a.engine.device, |comm, device| {
        let mut o = a.options();
        o.device = device.to_string();
        jarip_train::pretrain_parallel(&o, comm)
    })?;
    if !leader {
        return Ok(s);
    }
    println!(
        "pretrained {} parameters for {} steps ({} tokens, {:.0} tokens/s): loss {}, val bpb {}; weights {}",
        s.num_params,
        s.steps,
        s.tokens_seen,
        s.tokens_per_s,
        s.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.val_bpb.map_or("-".into(), |b| format!("{b:.4}")),
        &s.weights_sha256[..16.min(s.weights_sha256.len())]
    );
    Ok(s)
}

/// Runs a training stage in this process alone or as one MPI rank (`train` gets the processes
/// and the device this rank uses); returns its result and whether this process reports it.
pub fn on_ranks<T>(
    dist: DistArg,
    device: &str,
    train: impl FnOnce(&dyn Collective, &str) -> Result<T>,
) -> Result<(T, bool)> {
    match dist {
        DistArg::None => {
            if let Some(n) = launcher_ranks().filter(|&n| n > 1) {
                anyhow::bail!(
                    "started as one of {n} MPI ranks without --dist mpi: every rank would train alone into the same \
                     --out; add --dist mpi"
                );
            }
            Ok((train(&Solo, device)?, true))
        }
        DistArg::Mpi => on_mpi(device, train),
        DistArg::Nccl => on_nccl(device, train),
    }
}

/// The number of ranks an MPI launcher started, from its environment.
fn launcher_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.parse().ok())
}

#[cfg(feature = "mpi")]
fn on_mpi<T>(device: &str, train: impl FnOnce(&dyn Collective, &str) -> Result<T>) -> Result<(T, bool)> {
    let comm = jarip_train::dist::Mpi::init()?;
    let rank = comm.rank();
    // One GPU per rank on each machine.
    let device = if device == "cuda" { format!("cuda:{}", comm.local_rank()) } else { device.to_string() };
    match train(&comm, &device) {
        Ok(t) => Ok((t, rank == 0)),
        // Ends every rank: one failing alone would leave the others waiting in a collective.
        Err(e) => {
            eprintln!("Error: rank {rank}: {e:#}");
            comm.abort(1)
        }
    }
}

#[cfg(feature = "nccl")]
fn on_nccl<T>(device: &str, train: impl FnOnce(&dyn Collective, &str) -> Result<T>) -> Result<(T, bool)> {
    if device != "cuda" {
        anyhow::bail!("--dist nccl sums gradients on GPUs: add --device cuda");
    }
    let comm = match launcher_ranks() {
        // One process (no launcher, or a launcher that started one): NCCL over one GPU, no MPI.
        None | Some(1) => jarip_train::dist::Nccl::single()?,
        #[cfg(feature = "mpi")]
        Some(_) => jarip_train::dist::Nccl::init(jarip_train::dist::Mpi::init()?)?,
        #[cfg(not(feature = "mpi"))]
        Some(n) => {
            anyhow::bail!("--dist nccl across {n} ranks needs MPI to start NCCL: build with `--features nccl,mpi`")
        }
    };
    let rank = comm.rank();
    let device = format!("cuda:{}", comm.local_rank());
    match train(&comm, &device) {
        Ok(t) => Ok((t, rank == 0)),
        Err(e) => {
            eprintln!("Error: rank {rank}: {e:#}");
            comm.abort(1)
        }
    }
}

#[cfg(not(feature = "nccl"))]
fn on_nccl<T>(_: &str, _: impl FnOnce(&dyn Collective, &str) -> Result<T>) -> Result<(T, bool)> {
    anyhow::bail!("--dist nccl: this jarip was built without NCCL; build it with `--features nccl` (CUDA; add mpi for several ranks)")
}

#[cfg(not(feature = "mpi"))]
fn on_mpi<T>(_: &str, _: impl FnOnce(&dyn Collective, &str) -> Result<T>) -> Result<(T, bool)> {
    anyhow::bail!(
        "--dist mpi: this jarip was built without MPI; build it with `cargo build --release --features mpi` \
         (needs an MPI library and libclang, e.g. Debian's libopenmpi-dev and libclang-dev)"
    )
}
