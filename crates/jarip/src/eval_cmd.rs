//! `jarip eval` and `jarip report`: flags onto [`jarip_eval::run_eval`] and
//! [`jarip_eval::write_report`].

use anyhow::Result;
use clap::Args;
use jarip_eval::{EvalOptions, EvalReport, EvalRequest, Layout, LedgerChoice, TaskSpec};
use std::path::PathBuf;

fn layouts_help() -> String {
    format!("Task file as LAYOUT=PATH (repeatable). Layouts: {}", Layout::known())
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint directory (RUN/ckpt-STEP) or run directory (its selected checkpoint, else its newest); repeat to
    /// compare models side by side.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    #[arg(long, required = true, num_args = 1.., value_name = "LAYOUT=PATH", help = layouts_help())]
    pub task: Vec<TaskSpec>,
    /// Score only the first N examples of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Solved examples placed before each question (drawn with --seed).
    #[arg(long, default_value_t = 0)]
    pub fewshot: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Longest generation, in tokens, for generative tasks.
    #[arg(long, default_value_t = 64)]
    pub max_gen_tokens: usize,
    /// Sampling temperature for generative tasks (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Write the results as JSON here (e.g. RUN/evals/NAME.json, which `jarip report` reads).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Append the eval entry to this ledger (default: the checkpoint's run ledger, if any).
    #[arg(long, conflicts_with = "no_ledger")]
    pub ledger: Option<PathBuf>,
    /// Do not append a ledger entry.
    #[arg(long)]
    pub no_ledger: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Score the model with its weight matrices as f32, bf16 or q8_0 (what `serve --weights` serves).
    #[arg(long, default_value = "f32")]
    pub weights: jarip_infer::WeightFormat,
    /// A report of `jarip data contamination --out`: also score each task on its clean items
    /// (rows `TASK (clean)`); refused if a task file changed since the report.
    #[arg(long, value_name = "REPORT.json")]
    pub contamination: Option<PathBuf>,
}

impl EvalArgs {
    pub fn request(&self) -> Result<EvalRequest> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            anyhow::bail!("--temperature must be ≥ 0");
        }
        Ok(EvalRequest {
            models: self.model.clone(),
            tasks: self.task.clone(),
            options: EvalOptions {
                limit: self.limit,
                fewshot: self.fewshot,
                seed: self.seed,
                batch_size: self.batch_size.max(1),
                max_gen_tokens: self.max_gen_tokens.max(1),
                temperature: self.temperature,
                progress: !self.quiet,
                weights: self.weights,
            },
            json: self.json.clone(),
            ledger: match (&self.ledger, self.no_ledger) {
                (_, true) => LedgerChoice::Off,
                (Some(p), false) => LedgerChoice::File(p.clone()),
                (None, false) => LedgerChoice::Auto,
            },
            contamination: self.contamination.clone(),
        })
    }
}

/// Scores every model on every task, prints the table (only once all succeeded) and writes
/// the JSON if asked.
pub fn run(a: &EvalArgs) -> Result<Vec<EvalReport>> {
    let reports = jarip_eval::run_eval(&a.request()?)?;
    print!("{}", jarip_eval::render_table(&reports));
    if let Some(p) = &a.json {
        println!("results → {}", p.display());
    }
    Ok(reports)
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Run directory (e.g. runs/speedrun): writes RUN/report.md and its PNG charts.
    pub run: PathBuf,
}

pub fn report(a: &ReportArgs) -> Result<PathBuf> {
    let path = jarip_eval::write_report(&a.run)?;
    println!("report → {}", path.display());
    Ok(path)
}
