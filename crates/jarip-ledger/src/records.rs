//! The records every stage writes, in one place: the `config` and `details` of each stage's
//! ledger [`Entry`], and the per-step line of `metrics.jsonl`. Writers build these structs and
//! readers (verify, card, replay, the server's provenance panel, the report) deserialize them,
//! so a key can only be misspelt here.
//!
//! The bytes are the contract: field order is the key order written, `Option` fields without
//! `skip_serializing_if` write `null`, fields with it are absent when `None`. Records are turned
//! into [`serde_json::Value`] before they are written (as `json!` did), which is what fixes the
//! number formatting; [`Entry`] keeps `config` and `details` as values, so its hash chain is
//! computed as it always was.
//!
//! Readers are lenient where older ledgers (or hand-written ones) may lack a key: an `Option`
//! field reads a missing key as `None` (serde's rule for `Option`), other such fields carry
//! `#[serde(default)]`. A record embeds types of crates this one does not depend on (the
//! model config, optimizer, schedule, kernels, the data cursor); they are a [`Domain`]'s
//! associated types, read as plain JSON values with [`Opaque`] or as the trainer's own types
//! with `jarip_train::records::Trained`.

use crate::Entry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::fmt::Debug;

/// Bounds every embedded type meets.
pub trait Embedded: Serialize + DeserializeOwned + Clone + Debug + PartialEq {}
impl<T: Serialize + DeserializeOwned + Clone + Debug + PartialEq> Embedded for T {}

/// The types a record embeds from other crates.
pub trait Domain {
    /// The model configuration (`jarip_model::ModelConfig`).
    type Model: Embedded;
    /// `jarip_train::OptimizerOptions`.
    type Optimizer: Embedded;
    /// `jarip_train::Schedule`.
    type Schedule: Embedded;
    /// `jarip_model::Kernels` (its default is what records without the key ran).
    type Kernels: Embedded + Default;
    /// Where the data sampler stands (`jarip_data::SamplerState`).
    type Cursor: Embedded;
    /// How matrices were multiplied (`jarip_model::MatmulPath`; its default, fp32, is what
    /// records without the key ran).
    type Matmul: Embedded + Default;
}

/// Whether `t` is its type's default (such fields are left out, so older records read the same).
fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// Every embedded type read as a JSON value: for readers that only pass them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opaque;

impl Domain for Opaque {
    type Model = Value;
    type Optimizer = Value;
    type Schedule = Value;
    type Kernels = Value;
    type Cursor = Value;
    type Matmul = Value;
}

fn cpu() -> String {
    "cpu".into()
}

fn one() -> usize {
    1
}

fn nan() -> f64 {
    f64::NAN
}

/// A float that was not finite was written as `null` (serde_json has no NaN); it reads back as NaN.
fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

// ---------------------------------------------------------------------------------------------
// Pretraining

/// `config` of `pretrain-start` and `pretrain-resume`; also the `settings` of a pretraining
/// checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PretrainConfig<D: Domain> {
    pub model: D::Model,
    pub seed: u64,
    /// The seed of the data order (`--data-seed`); runs that predate the field used `seed`
    /// (read it with [`PretrainConfig::order_seed`]); the trainer always writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    pub seq_len: usize,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub optimizer: D::Optimizer,
    pub schedule: D::Schedule,
    pub tokenizer_sha256: String,
    pub shards_merkle_root: Option<String>,
    #[serde(default)]
    pub kernels: D::Kernels,
    /// The matrix products' precision and kernel path (`fp32`, `bf16_portable`, `bf16_avx512`,
    /// `bf16_amx`); absent for fp32. A replay needs a path with the same bits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub matmul: D::Matmul,
    /// The device kind (`cpu`, `cuda`); `cpu` for runs that predate the field.
    #[serde(default = "cpu")]
    pub device: String,
    /// Data-parallel replicas sharing each step (1 for runs that predate the field).
    #[serde(default = "one")]
    pub replicas: usize,
}

impl<D: Domain> PretrainConfig<D> {
    /// The seed the sampler shuffled the data with.
    pub fn order_seed(&self) -> u64 {
        self.data_seed.unwrap_or(self.seed)
    }

    /// What must not change when a run is resumed (kernels and device may: they do not change
    /// the arithmetic's definition, only where it runs).
    pub fn same_run_as(&self, other: &Self) -> bool {
        self.model == other.model
            && self.seed == other.seed
            && self.order_seed() == other.order_seed()
            && self.seq_len == other.seq_len
            && self.batch_size == other.batch_size
            && self.batch_tokens == other.batch_tokens
            && self.optimizer == other.optimizer
            && self.schedule == other.schedule
            && self.tokenizer_sha256 == other.tokenizer_sha256
            && self.shards_merkle_root == other.shards_merkle_root
            && self.replicas == other.replicas
    }
}

/// The processes a training stage ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processes {
    /// `solo`, `mpi`, `nccl`.
    pub backend: String,
    pub world_size: usize,
}

/// `details` of `pretrain-start` and `pretrain-resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PretrainStart<D: Domain> {
    pub step: u64,
    pub weights_sha256: String,
    /// Whether the weights were drawn from the seed (step 0) rather than loaded.
    pub initial_weights: Option<bool>,
    pub num_params: Option<u64>,
    pub tokenizer_sha256: Option<String>,
    pub shards_merkle_root: Option<String>,
    pub sampler: Option<D::Cursor>,
    /// The checkpoint a resumption continues (`null` at the start).
    pub resumed_from: Option<String>,
    pub processes: Option<Processes>,
}

/// The data a checkpoint interval consumed: the cursor before and after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct DataRange<D: Domain> {
    pub sampler_before: D::Cursor,
    pub sampler_after: D::Cursor,
}

/// `details` of `checkpoint` (pretraining) and `sft-checkpoint` (fine-tuning) entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CheckpointDetails<D: Domain> {
    pub step: u64,
    pub weights_sha256: String,
    pub tokens_seen: Option<u64>,
    /// The run's length in steps (`null` in a time-limited run not yet planned).
    pub total_steps: Option<u64>,
    /// Fine-tuning only: the weights fine-tuning started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_weights_sha256: Option<String>,
    pub data: Option<DataRange<D>>,
    /// Training loss of the step that ended the interval.
    pub loss: Option<f64>,
    /// The last evaluation's results (`null` before the first).
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    /// Data-parallel runs only: the number of ranks whose weights were found equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_agree: Option<usize>,
    /// Fine-tuning that mixes in pretraining text only: where that text's sampler stood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix_data: Option<DataRange<D>>,
}

// ---------------------------------------------------------------------------------------------
// Fine-tuning

/// `config` of `sft-start` and `sft-resume`; also the `settings` of a fine-tuning checkpoint's
/// manifest, which `--resume` compares with the settings asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SftConfig<D: Domain> {
    /// Always `sft`.
    pub stage: String,
    pub model: D::Model,
    pub seed: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub optimizer: D::Optimizer,
    pub schedule: D::Schedule,
    pub total_steps: u64,
    pub val_fraction: f64,
    #[serde(default)]
    pub kernels: D::Kernels,
    /// As in [`PretrainConfig::matmul`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub matmul: D::Matmul,
    #[serde(default = "cpu")]
    pub device: String,
    pub tokenizer_sha256: String,
    pub base_checkpoint: String,
    pub base_weights_sha256: String,
    /// The conversations file.
    pub data: String,
    pub data_sha256: String,
    /// Absent for one replica, so runs recorded before the setting existed still resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Share of each kind's template variants held out whole; absent when the conversations
    /// name no templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_fraction: Option<f64>,
    /// Pretraining text mixed into every batch; absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<MixConfig<D>>,
    /// Set when the base was not built by a jarip run (`sft --allow-foreign-base`), or descends
    /// from one: what it was. Such a model is **not from scratch**; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_base: Option<String>,
}

/// Pretraining text in fine-tuning batches (as mid-training does), so the model keeps what
/// pretraining taught: `rows` of every batch's windows are read from `shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct MixConfig<D: Domain> {
    /// The shard directory and the Merkle root of its manifest.
    pub shards: String,
    pub shards_merkle_root: String,
    /// Windows per batch taken from the shards (the rest are conversations).
    pub rows: usize,
    /// Where the shards' sampler starts.
    pub start: D::Cursor,
}

/// A checkpoint manifest's `settings` read leniently, whichever stage wrote them (and however
/// old or hand-made): the keys of [`PretrainConfig`] and [`SftConfig`] that describe where the
/// weights came from, each optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CheckpointSettings {
    /// `sft` for fine-tuning checkpoints ([`SftConfig::stage`]); absent for pretraining.
    pub stage: Option<String>,
    pub seed: Option<u64>,
    pub tokenizer_sha256: Option<String>,
    /// Pretraining only.
    pub shards_merkle_root: Option<String>,
    /// Fine-tuning only.
    pub base_checkpoint: Option<String>,
    pub base_weights_sha256: Option<String>,
    pub data_sha256: Option<String>,
    /// Fine-tuned from a base no jarip ledger proves: not from scratch ([`SftConfig::foreign_base`]).
    pub foreign_base: Option<String>,
}

impl CheckpointSettings {
    /// Reads `settings` (anything that is not such an object reads as nothing recorded).
    pub fn of(settings: &Value) -> Self {
        Self::deserialize(settings).unwrap_or_default()
    }

    pub fn is_sft(&self) -> bool {
        self.stage.as_deref() == Some("sft")
    }
}

/// `details` of `sft-start` and `sft-resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SftStart<D: Domain> {
    pub step: u64,
    pub base_weights_sha256: String,
    pub weights_sha256: String,
    pub train_conversations: usize,
    pub val_conversations: usize,
    pub train_windows: u64,
    pub sampler: D::Cursor,
    pub resumed_from: Option<String>,
    pub processes: Option<Processes>,
    /// Conversations held out by template, and those templates (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_val_conversations: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_out_templates: Vec<String>,
    /// Where the mixed-in pretraining text's sampler stands (absent without mixing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix_sampler: Option<D::Cursor>,
}

/// One held-out evaluation of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutEval {
    pub step: u64,
    /// Held out by item: the selection metric.
    pub val_loss: f64,
    pub val_bpb: f64,
    /// Held out by template (absent when no template is held out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_loss: Option<f64>,
}

/// `details` of `sft-select`: which checkpoint of a fine-tuning run is its model, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSelection {
    /// `val_loss` (the lowest held-out loss; step 0 is the base model) or `last` (too few
    /// held-out conversations to choose on).
    pub rule: String,
    pub reason: String,
    pub selected_step: u64,
    pub selected_checkpoint: String,
    pub weights_sha256: String,
    /// Every evaluation, step 0 (the base) first.
    pub evaluations: Vec<HeldOutEval>,
    pub patience: Option<u32>,
    /// The step at which early stopping ended the run, if it did.
    pub stopped_early_at: Option<u64>,
    pub val_conversations: usize,
}

// ---------------------------------------------------------------------------------------------
// metrics.jsonl

/// One line of `metrics.jsonl`, pretraining's or fine-tuning's. Trainers always write `loss`,
/// `lr`, `grad_norm`, `tokens` and `elapsed_s`; pretraining adds `tokens_per_s`, `mfu`,
/// `step_ms` (and `exchange_ms` when data-parallel), fine-tuning `epoch`; evaluation steps add
/// `val_loss` and `val_bpb`, sample steps `sample`. Every key but `step` may be absent when read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens trained on so far (fine-tuning: counted targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// The peak `mfu` divides by (GFLOP/s): given, or the CPU's measured fp32 peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
    /// Fine-tuning: loss on the conversations held out by template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_template_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Other stages

/// `config` of `tokenizer-train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerTrainConfig {
    pub vocab_size: usize,
    pub preset: String,
}

/// `config` of `export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConfig {
    /// `hf` or `gguf`.
    pub format: String,
    pub dtype: String,
}

/// `details` of `export`: the exported files are recorded as facts, not outputs (an export may
/// move or be deleted later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportDetails {
    pub out: String,
    pub source_weights_sha256: String,
    pub weights_sha256: String,
    /// The export's file table (name → hash and size).
    pub files: Value,
}

/// `config` of `lineage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageConfig {
    pub alpha: f64,
    pub units: usize,
    pub tokens: usize,
    pub seed: u64,
}

/// One of the two models a `lineage` entry compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageModel {
    pub path: String,
    pub parameters: Option<u64>,
    pub weight_bytes: Option<u64>,
    pub header_sha256: Option<String>,
}

/// `details` of `lineage`: the test's verdict and figures (floats that were not finite read
/// back as NaN; figures an older entry lacks read as NaN too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageDetails {
    pub a: LineageModel,
    pub b: LineageModel,
    /// `derived`, `unrelated` or `inconclusive`.
    pub verdict: String,
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub p_value: f64,
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub log10_p: f64,
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub alpha: f64,
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub power: f64,
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub power_rho: f64,
    pub rho_min: Option<f64>,
    pub groups: Option<usize>,
    pub method: Option<String>,
    /// The JSON report and the per-block plot the entry's outputs hold.
    pub report: Option<String>,
    pub plot: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Data sources

/// One input file of `data prepare` (the `sources` of its entry's details): what it was, and
/// the licence it was given under, as stated by `--licence` or a `licences.json` beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// SPDX licence expression; `None` when none was stated.
    pub licence: Option<String>,
    /// Where it was stated (`--licence PATTERN` or the licences file).
    pub licence_from: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Data order

/// `config` of `data-order`: how the run's recorded order was sampled and tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataOrderConfig {
    /// Training steps sampled across the run (one unit of the test each).
    pub batches: usize,
    /// Windows scored per sampled step.
    pub windows_per_batch: usize,
    pub alpha: f64,
    /// Monte Carlo permutations of the rank statistic.
    pub permutations: usize,
    /// Seed of the permutations.
    pub seed: u64,
}

/// `details` of `data-order`: the model tested against the run's order, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataOrderDetails {
    /// The model as named on the command line.
    pub model: String,
    /// Hash of its weights' tensors as loaded.
    pub model_weights_sha256: String,
    pub model_tokenizer_sha256: String,
    pub run_tokenizer_sha256: String,
    /// Whether the run's text was re-tokenised with the model's own tokenizer.
    pub retokenised: bool,
    /// The seed the recorded order was drawn with.
    pub data_seed: u64,
    /// `trained-on-this-order` or `not-shown`.
    pub verdict: String,
    pub batches: usize,
    pub spearman: f64,
    pub kendall: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub p_value: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub log10_p: f64,
    /// How the p-value was obtained (permutations, or the asymptotic law beyond their reach).
    pub method: String,
    /// The JSON report and plot the entry's outputs hold.
    pub report: Option<String>,
    pub plot: Option<String>,
}

/// The model an `eval` entry scored (also the `model` object of `jarip eval --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalModel {
    /// The checkpoint directory.
    pub dir: String,
    pub step: Option<u64>,
    /// `base` or `sft`.
    pub stage: String,
    /// Hash of the weights' tensors, as the trainer recorded it.
    pub weights_sha256: Option<String>,
    /// SHA-256 of `model.safetensors`, from the checkpoint's manifest.
    pub safetensors_sha256: Option<String>,
    pub tokenizer_sha256: String,
    pub params: usize,
    pub max_seq_len: usize,
    /// Set for a model no jarip ledger proves (another team's, loaded read-only): "not built by
    /// this run (FAMILY)". Absent for the run's own models, so older entries read unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `details` of `eval` (its `config` is `jarip_eval::EvalOptions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalDetails {
    pub model: EvalModel,
    /// Task → metric → value (and `n`).
    pub results: Value,
    /// With `--contamination`: task → the same metrics over the task's clean items only (and
    /// `n`, `n_contaminated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_results: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// Contamination

/// An evaluation item's class under Llama 2's rule (Touvron et al. 2023, sec. A.6), from the
/// share of its tokens that matched spans of the corpus cover: `dirty` above 80 %, `clean`
/// below 20 %, `not-clean` in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContaminationClass {
    Clean,
    NotClean,
    Dirty,
}

impl ContaminationClass {
    /// The class of an item whose matched spans cover `fraction` of its tokens.
    pub fn of(fraction: f64, clean_below: f64, dirty_above: f64) -> Self {
        if fraction > dirty_above {
            Self::Dirty
        } else if fraction < clean_below {
            Self::Clean
        } else {
            Self::NotClean
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::NotClean => "not-clean",
            Self::Dirty => "dirty",
        }
    }
}

/// One `--corpus` of a `contamination` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationCorpus {
    /// The path as given: a prepared-corpus directory or a file.
    pub path: String,
    /// SHA-256 of a prepared directory's `manifest.json` (`null` for a plain file).
    pub manifest_sha256: Option<String>,
    /// The files read, with their SHA-256 (a prepared directory's from its manifest).
    pub files: Vec<crate::FileRef>,
}

/// One `--task` of a `contamination` entry: which file, read in which layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationTaskFile {
    /// The task's name, as `jarip eval` keys its results.
    pub name: String,
    pub layout: String,
    pub path: String,
    pub sha256: String,
}

/// `config` of `contamination`, and the `config` of its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationConfig {
    /// GPT-3's rule: an item is contaminated when any of its `ngram`-token n-grams (13) occurs
    /// in the corpus; an item shorter than that is one n-gram of its own length.
    pub ngram: usize,
    /// Llama 2's rule: a token is contaminated when a corpus match of at least `span` tokens
    /// (10) covers it.
    pub span: usize,
    /// Llama 2's classes: `dirty` above this share of contaminated tokens (0.8) …
    pub dirty_above: f64,
    /// … `clean` below this one (0.2).
    pub clean_below: f64,
    /// What `contaminated` means in the report.
    pub contaminated_rule: String,
    /// The text checked for each item.
    pub item_text: String,
    pub tokenizer_sha256: String,
    pub corpus: Vec<ContaminationCorpus>,
    pub tasks: Vec<ContaminationTaskFile>,
}

/// A run of an item's tokens covered by corpus matches: tokens `start..end` of the item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContaminationSpan {
    pub start: usize,
    pub end: usize,
    /// The span's tokens decoded.
    pub text: String,
}

/// One evaluation item (its index in the task file, counting from 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemContamination {
    pub index: usize,
    /// Tokens of the text checked.
    pub tokens: usize,
    /// `ngram13 || class == dirty`: the item is left out of the clean subset `jarip eval
    /// --contamination` scores.
    pub contaminated: bool,
    /// GPT-3's rule fired.
    pub ngram13: bool,
    /// Llama 2's contaminated share of the item's tokens.
    pub fraction: f64,
    pub class: ContaminationClass,
    /// The covered runs (the first few; `n_spans` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<ContaminationSpan>,
    #[serde(default)]
    pub n_spans: usize,
}

/// One task's figures; `items` is absent in the ledger entry (the report file holds them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskContamination {
    pub name: String,
    pub layout: String,
    pub path: String,
    pub sha256: String,
    pub n_items: usize,
    pub n_contaminated: usize,
    pub n_ngram13: usize,
    pub n_dirty: usize,
    pub n_not_clean: usize,
    pub n_clean: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemContamination>,
}

/// What the corpus scan read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContaminationScan {
    pub documents: u64,
    /// UTF-8 bytes of the documents' text.
    pub bytes: u64,
    pub tokens: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// The file `jarip data contamination --out` writes (and `--json` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationReport {
    pub config: ContaminationConfig,
    pub scan: ContaminationScan,
    pub tasks: Vec<TaskContamination>,
    pub jarip_version: String,
    pub time: String,
}

/// `details` of `contamination`: the per-task figures, and the report file if one was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationDetails {
    pub scan: ContaminationScan,
    pub tasks: Vec<TaskContamination>,
    pub report: Option<String>,
    pub report_sha256: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Entries

impl Entry {
    /// The entry's `config` read as `T`.
    pub fn config_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        T::deserialize(&self.config)
    }

    /// The entry's `details` read as `T`.
    pub fn details_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        T::deserialize(&self.details)
    }

    /// Sets `config` to `c`, converted as `json!` converts.
    pub fn set_config<T: Serialize>(&mut self, c: &T) -> serde_json::Result<()> {
        self.config = serde_json::to_value(c)?;
        Ok(())
    }

    /// Sets `details` to `d`, converted as `json!` converts.
    pub fn set_details<T: Serialize>(&mut self, d: &T) -> serde_json::Result<()> {
        self.details = serde_json::to_value(d)?;
        Ok(())
    }
}

/// The line `metrics.jsonl` holds for `m` (without its newline).
pub fn metrics_line(m: &StepMetrics) -> serde_json::Result<String> {
    serde_json::to_string(&serde_json::to_value(m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_keys_are_kept_apart() {
        let d = CheckpointDetails::<Opaque> {
            step: 3,
            weights_sha256: "ab".into(),
            tokens_seen: Some(12),
            total_steps: None,
            base_weights_sha256: None,
            data: Some(DataRange { sampler_before: Value::from(1), sampler_after: Value::from(2) }),
            loss: Some(0.5),
            val_loss: None,
            val_bpb: None,
            replicas_agree: None,
            mix_data: None,
        };
        let text = serde_json::to_string(&serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"step":3,"weights_sha256":"ab","tokens_seen":12,"total_steps":null,"data":{"sampler_before":1,"sampler_after":2},"loss":0.5,"val_loss":null,"val_bpb":null}"#
        );
        let back: CheckpointDetails<Opaque> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn metrics_lines_write_only_what_they_hold() {
        let m = StepMetrics { step: 2, loss: Some(1.25), val_bpb: Some(0.5), ..Default::default() };
        assert_eq!(metrics_line(&m).unwrap(), r#"{"step":2,"loss":1.25,"val_bpb":0.5}"#);
        let old: StepMetrics = serde_json::from_str(r#"{"step":1,"loss":9.0,"tokens_per_s":800}"#).unwrap();
        assert_eq!(old.tokens_per_s, Some(800.0));
    }

    #[test]
    fn checkpoint_settings_read_what_either_stage_wrote() {
        let pre = PretrainConfig::<Opaque> {
            model: Value::Null,
            seed: 5,
            data_seed: Some(6),
            seq_len: 8,
            batch_size: 2,
            batch_tokens: 16,
            optimizer: Value::Null,
            schedule: Value::Null,
            tokenizer_sha256: "t".into(),
            shards_merkle_root: Some("m".into()),
            kernels: Value::Null,
            matmul: Value::Null,
            device: cpu(),
            replicas: 1,
        };
        let s = CheckpointSettings::of(&serde_json::to_value(&pre).unwrap());
        assert_eq!(
            (s.seed, s.tokenizer_sha256.as_deref(), s.shards_merkle_root.as_deref()),
            (Some(5), Some("t"), Some("m"))
        );
        assert!(!s.is_sft());
        let sft = SftConfig::<Opaque> {
            stage: "sft".into(),
            model: Value::Null,
            seed: 7,
            seq_len: 8,
            batch_size: 2,
            batch_tokens: 16,
            optimizer: Value::Null,
            schedule: Value::Null,
            total_steps: 3,
            val_fraction: 0.1,
            kernels: Value::Null,
            matmul: Value::Null,
            device: cpu(),
            tokenizer_sha256: "t".into(),
            base_checkpoint: "b".into(),
            base_weights_sha256: "w".into(),
            data: "d".into(),
            data_sha256: "ds".into(),
            replicas: None,
            template_fraction: None,
            mix: None,
            foreign_base: None,
        };
        let v = serde_json::to_value(&sft).unwrap();
        assert!(v.get("foreign_base").is_none(), "absent unless set: older settings compare equal");
        let s = CheckpointSettings::of(&v);
        assert!(s.is_sft() && s.foreign_base.is_none());
        assert_eq!(
            (s.seed, s.base_checkpoint.as_deref(), s.base_weights_sha256.as_deref(), s.data_sha256.as_deref()),
            (Some(7), Some("b"), Some("w"), Some("ds"))
        );
        assert_eq!(CheckpointSettings::of(&Value::Null), CheckpointSettings::default());
    }

    #[test]
    fn non_finite_lineage_figures_read_back_as_nan() {
        let text = r#"{"a":{"path":"x"},"b":{"path":"y"},"verdict":"unrelated","p_value":null,"log10_p":-3.0}"#;
        let d: LineageDetails = serde_json::from_str(text).unwrap();
        assert!(d.p_value.is_nan() && d.power.is_nan());
        assert_eq!(d.log10_p, -3.0);
        assert_eq!(serde_json::to_value(&d).unwrap()["p_value"], Value::Null);
    }
}
