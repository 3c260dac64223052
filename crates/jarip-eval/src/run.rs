//! `jarip eval` as a library call: check the output path, read every task file, load each model,
//! score, write the JSON (atomically, only when everything succeeded), append the ledger entry.
//! The CLI and `jarip speedrun` both go through [`run_eval`].

use crate::evaluate::{evaluate, EvalOptions, TaskResult};
use crate::layouts::load_tasks;
use crate::lm::GptLm;
use crate::task::{Task, TaskSpec};
use anyhow::{bail, Context, Result};
use jarip_infer::LoadedModel;
use jarip_ledger::records::{CheckpointSettings, EvalDetails, EvalModel};
use jarip_ledger::{Entry, FileRef, Ledger};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which checkpoint was scored: the record the ledger's `eval` entry and `jarip eval --json` hold.
pub type ModelInfo = EvalModel;

/// What `m` is: its directory, step, stage (`base` or `sft`), hashes and size.
pub fn model_info(m: &LoadedModel) -> ModelInfo {
    let trainer = std::fs::read_to_string(m.dir.join(jarip_infer::model_dir::TRAINER_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let settings_stage = CheckpointSettings::of(&m.manifest.settings).stage.unwrap_or_default();
    let in_sft_dir = m.dir.parent().and_then(Path::file_name).is_some_and(|n| n == "sft");
    EvalModel {
        dir: m.dir.display().to_string(),
        step: m.step(),
        stage: if in_sft_dir || settings_stage.starts_with("sft") { "sft" } else { "base" }.to_string(),
        weights_sha256: trainer.and_then(|t| t.get("weights_sha256")?.as_str().map(str::to_string)),
        safetensors_sha256: m.manifest.files.get(jarip_model::WEIGHTS_FILE).map(|f| f.sha256.clone()),
        tokenizer_sha256: m.tokenizer.sha256().to_string(),
        params: m.model.num_params(),
        max_seq_len: m.model.config().max_seq_len,
    }
}

/// All scores of one model.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub model: ModelInfo,
    pub options: EvalOptions,
    pub results: Vec<TaskResult>,
    pub time: String,
    pub elapsed_s: f64,
}

fn finite(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

impl EvalReport {
    /// `{"results": {TASK: {metric: value, …, "n": N}}, "tasks": {…}, "model": {…}, "config": {…}, …}`
    pub fn to_json(&self) -> Value {
        let mut results = Map::new();
        let mut tasks = Map::new();
        for r in &self.results {
            let mut m: Map<String, Value> = r.metrics.iter().map(|(k, v)| (k.clone(), finite(*v))).collect();
            m.insert("n".into(), r.n.into());
            results.insert(r.name.clone(), Value::Object(m));
            let mut t = json!({
                "layout": r.layout.name(),
                "kind": r.kind,
                "path": r.path.display().to_string(),
                "sha256": r.sha256,
                "seconds": finite(r.seconds),
                "examples_per_s": finite(r.n as f64 / r.seconds.max(1e-9)),
            });
            if r.text_bytes > 0 {
                t["mb_per_s"] = finite(r.text_bytes as f64 / 1e6 / r.seconds.max(1e-9));
            }
            tasks.insert(r.name.clone(), t);
        }
        let mut out = json!({
            "results": results,
            "tasks": tasks,
            "model": serde_json::to_value(&self.model).expect("model info serialises"),
            "config": serde_json::to_value(&self.options).expect("options serialise"),
            "jarip_version": jarip_ledger::JARIP_VERSION,
            "time": self.time,
            "elapsed_s": finite(self.elapsed_s),
        });
        if let Some(c) = jarip_ledger::git_commit() {
            out["git_commit"] = c.into();
        }
        out
    }
}

/// Scores `tasks` on a loaded model.
pub fn evaluate_model(loaded: &LoadedModel, tasks: &[Task], opts: &EvalOptions) -> Result<EvalReport> {
    let t0 = Instant::now();
    let time = jarip_ledger::now_rfc3339();
    let lm = GptLm::new(&loaded.model, &loaded.tokenizer, opts.batch_size).with_weights(opts.weights);
    let results = evaluate(&lm, &loaded.tokenizer, tasks, opts)?;
    Ok(EvalReport {
        model: model_info(loaded),
        options: opts.clone(),
        results,
        time,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

/// Loads a checkpoint (or a run's selected checkpoint, else its newest) on the CPU and scores `tasks`.
pub fn evaluate_checkpoint(model: &Path, tasks: &[Task], opts: &EvalOptions) -> Result<EvalReport> {
    let loaded = jarip_infer::load_model(model, &candle_core::Device::Cpu)?;
    evaluate_model(&loaded, tasks, opts)
}

/// The JSON document for one model, or `{"runs": [...]}` for several.
pub fn reports_json(reports: &[EvalReport]) -> Value {
    match reports {
        [one] => one.to_json(),
        many => json!({ "runs": many.iter().map(EvalReport::to_json).collect::<Vec<_>>() }),
    }
}

/// Fails now, before minutes of scoring, if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("cannot write results to {}: it is a directory", path.display());
    }
    let probe = jarip_ledger::AtomicFile::create(path)
        .with_context(|| format!("cannot write results to {}", path.display()))?;
    drop(probe); // uncommitted: leaves nothing behind
    Ok(())
}

pub fn write_json(path: &Path, reports: &[EvalReport]) -> Result<()> {
    let text = serde_json::to_string_pretty(&reports_json(reports))? + "\n";
    jarip_ledger::atomic_write(path, text.as_bytes())
        .with_context(|| format!("cannot write results to {}", path.display()))
}

/// Where an eval entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerChoice {
    /// The ledger of the run the checkpoint belongs to (`RUN/ledger.jsonl` beside
    /// `RUN/ckpt-*` or above `RUN/sft/ckpt-*`), if there is one.
    Auto,
    Off,
    File(PathBuf),
}

/// `RUN/ledger.jsonl` for a checkpoint inside `RUN/` or `RUN/sft/`.
pub fn run_ledger_of(checkpoint: &Path) -> Option<PathBuf> {
    checkpoint.ancestors().skip(1).take(2).map(|d| d.join("ledger.jsonl")).find(|p| p.is_file())
}

fn ledger_entry(report: &EvalReport, tasks: &[Task], json_out: Option<&Path>) -> Result<Entry> {
    let mut e = Entry::new("eval");
    for t in tasks {
        let bytes = std::fs::metadata(&t.path).ok().map(|m| m.len());
        e.inputs.push(FileRef { path: t.path.display().to_string(), sha256: t.sha256.clone(), bytes });
    }
    let weights = Path::new(&report.model.dir).join(jarip_model::WEIGHTS_FILE);
    if let Some(sha) = &report.model.safetensors_sha256 {
        let bytes = std::fs::metadata(&weights).ok().map(|m| m.len());
        e.inputs.push(FileRef { path: weights.display().to_string(), sha256: sha.clone(), bytes });
    }
    if let Some(out) = json_out {
        e.outputs.push(FileRef::of_file(out)?);
    }
    e.config = serde_json::to_value(&report.options)?;
    e.seed = Some(report.options.seed);
    let doc = report.to_json();
    e.set_details(&EvalDetails { model: report.model.clone(), results: doc["results"].clone() })?;
    Ok(e)
}

/// Everything `jarip eval` does, for the CLI and for `jarip speedrun`.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Checkpoint or run directories, scored in turn.
    pub models: Vec<PathBuf>,
    pub tasks: Vec<TaskSpec>,
    pub options: EvalOptions,
    /// Where to write the JSON results.
    pub json: Option<PathBuf>,
    pub ledger: LedgerChoice,
}

/// Checks the output path, reads and checks every task, scores each model, then writes the
/// JSON and the ledger entries. Any failure returns an error before anything is written.
pub fn run_eval(req: &EvalRequest) -> Result<Vec<EvalReport>> {
    if req.models.is_empty() {
        bail!("no model to evaluate (--model DIR)");
    }
    if req.tasks.is_empty() {
        bail!("no task to run (--task LAYOUT=PATH)");
    }
    if let Some(out) = &req.json {
        check_writable(out)?;
    }
    let tasks = load_tasks(&req.tasks)?;
    let mut reports = Vec::new();
    for m in &req.models {
        if req.options.progress {
            eprintln!("evaluating {} on {} task(s)", m.display(), tasks.len());
        }
        reports.push(evaluate_checkpoint(m, &tasks, &req.options).with_context(|| format!("model {}", m.display()))?);
    }
    if let Some(out) = &req.json {
        write_json(out, &reports)?;
    }
    for r in &reports {
        let ledger = match &req.ledger {
            LedgerChoice::Off => None,
            LedgerChoice::File(p) => Some(p.clone()),
            LedgerChoice::Auto => run_ledger_of(Path::new(&r.model.dir)),
        };
        if let Some(l) = ledger {
            Ledger::at(&l).append(ledger_entry(r, &tasks, req.json.as_deref())?)?;
        }
    }
    Ok(reports)
}
