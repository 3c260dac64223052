//! jarip-eval: measuring a model, and the report card of a run.
//!
//! This crate owns:
//! - [`task`]: tasks (multiple choice, generative, bits per byte) and the `LAYOUT=PATH` spec;
//! - [`rows`], [`layouts`]: reading our JSONL format and the published layouts of KoBEST,
//!   KMMLU, HAE-RAE, CLIcK, ARC, HellaSwag and MMLU (CSV, TSV, JSON, JSONL, Parquet), rendered
//!   with lm-evaluation-harness's prompts;
//! - [`prompt`]: seeded few-shot contexts and the harness's context/continuation split;
//! - [`lm`]: the [`LanguageModel`] trait scoring needs, and [`GptLm`], its batched
//!   implementation for the jarip transformer;
//! - [`metrics`], [`evaluate`]: acc, acc_norm, acc_bytes, macro-F1, exact and normalised match,
//!   bits per byte, computed as the harness computes them;
//! - [`run`], [`table`]: `jarip eval` as a library call (JSON results, ledger entry) and the
//!   side-by-side table;
//! - [`sanity`]: built-in sanity tasks generated from the demo corpus;
//! - [`report`]: `jarip report RUN`, the Markdown report card with PNG charts.

#![forbid(unsafe_code)]

pub mod evaluate;
pub mod layouts;
pub mod lm;
pub mod metrics;
pub mod prompt;
pub mod report;
pub mod rows;
pub mod run;
pub mod sanity;
pub mod table;
pub mod task;

pub use evaluate::{evaluate, evaluate_task, EvalOptions, SubsetResult, TaskResult};
pub use layouts::{load_task, load_tasks};
pub use lm::{GptLm, LanguageModel, LlRequest, LlScore, SharedContext};
pub use report::write_report;
pub use run::{apply_contamination, evaluate_checkpoint, run_eval, EvalReport, EvalRequest, LedgerChoice, ModelInfo};
pub use table::render_table;
pub use task::{Examples, Layout, Task, TaskSpec};
