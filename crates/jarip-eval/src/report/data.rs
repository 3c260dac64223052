//! What a report is made from, read leniently: a run may have no SFT stage, no evaluation
//! results or no ledger, and a torn last line of a log is skipped, not fatal.

use anyhow::{Context, Result};
use jarip_ledger::records::StepMetrics;
use jarip_ledger::{Entry, Ledger};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepLog {
    pub step: u64,
    pub tokens: Option<f64>,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub mfu: Option<f64>,
    /// What `mfu` divides by (GFLOP/s).
    pub peak_gflops: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub elapsed_s: Option<f64>,
}

/// A training stage's log.
#[derive(Debug, Clone)]
pub struct Stage {
    /// "base" or "sft".
    pub name: &'static str,
    pub metrics_file: PathBuf,
    pub steps: Vec<StepLog>,
    /// Lines that could not be read (a torn last line after a crash).
    pub skipped_lines: usize,
}

impl Stage {
    pub fn last<T>(&self, f: impl Fn(&StepLog) -> Option<T>) -> Option<T> {
        self.steps.iter().rev().find_map(f)
    }

    /// Median over the logged steps (throughput figures are noisy at the start).
    pub fn median(&self, f: impl Fn(&StepLog) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self.steps.iter().filter_map(f).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

pub fn read_stage(name: &'static str, file: &Path) -> Result<Option<Stage>> {
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut steps = Vec::new();
    let mut skipped_lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(m) = serde_json::from_str::<StepMetrics>(line) else {
            skipped_lines += 1;
            continue;
        };
        steps.push(StepLog {
            step: m.step,
            tokens: m.tokens.map(|t| t as f64),
            loss: m.loss,
            lr: m.lr,
            tokens_per_s: m.tokens_per_s,
            mfu: m.mfu,
            peak_gflops: m.peak_gflops,
            val_loss: m.val_loss,
            val_bpb: m.val_bpb,
            elapsed_s: m.elapsed_s,
        });
    }
    Ok(Some(Stage { name, metrics_file: file.to_path_buf(), steps, skipped_lines }))
}

/// One model's scores from `RUN/evals/*.json`.
#[derive(Debug, Clone)]
pub struct EvalDoc {
    pub file: PathBuf,
    pub model_dir: String,
    pub step: Option<u64>,
    pub stage: String,
    /// "not built by this run (FAMILY)" for another team's model scored beside ours.
    pub origin: Option<String>,
    /// Task → metrics (as written, including `n`); a task scored with a contamination report
    /// is followed by `TASK (clean)`, its scores over its clean examples.
    pub results: Vec<(String, Vec<(String, f64)>)>,
}

impl EvalDoc {
    fn from_json(file: &Path, v: &Value) -> Option<Self> {
        let results = v.get("results")?.as_object()?;
        let clean = v.get("clean_results").and_then(Value::as_object);
        let model = v.get("model");
        let get = |k: &str| model.and_then(|m| m.get(k));
        let metrics = |m: &Value| -> Vec<(String, f64)> {
            m.as_object()
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                .unwrap_or_default()
        };
        let mut rows = Vec::new();
        for (task, m) in results {
            rows.push((task.clone(), metrics(m)));
            if let Some(c) = clean.and_then(|c| c.get(task)) {
                rows.push((format!("{task} (clean)"), metrics(c)));
            }
        }
        Some(Self {
            file: file.to_path_buf(),
            model_dir: get("dir").and_then(Value::as_str).unwrap_or("?").to_string(),
            step: get("step").and_then(Value::as_u64),
            stage: get("stage").and_then(Value::as_str).unwrap_or("base").to_string(),
            origin: get("origin").and_then(Value::as_str).map(str::to_string),
            results: rows,
        })
    }

    pub fn metric(&self, task: &str, name: &str) -> Option<f64> {
        let (_, m) = self.results.iter().find(|(t, _)| t == task)?;
        m.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// Every result document in `dir` (`{"results": …}` or `{"runs": [...]}`), in file-name order,
/// and the files that could not be read with the reason.
pub fn read_evals(dir: &Path) -> Result<(Vec<EvalDoc>, Vec<String>)> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    if !dir.is_dir() {
        return Ok((docs, problems));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let parsed = std::fs::read_to_string(&f).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let Some(v) = parsed else {
            problems.push(format!("{}: not readable JSON", f.display()));
            continue;
        };
        let runs: Vec<&Value> = match v.get("runs").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![&v],
        };
        let before = docs.len();
        docs.extend(runs.into_iter().filter_map(|r| EvalDoc::from_json(&f, r)));
        if docs.len() == before {
            problems.push(format!("{}: no \"results\" object", f.display()));
        }
    }
    Ok((docs, problems))
}

/// The run's ledger and whether its chain holds.
#[derive(Debug, Clone)]
pub struct LedgerView {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// `Err(reason)` when the chain is broken.
    pub chain: std::result::Result<(), String>,
}

impl LedgerView {
    pub fn first(&self, stage: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.stage == stage)
    }
}

pub fn read_ledger(path: &Path) -> Option<LedgerView> {
    if !path.is_file() {
        return None;
    }
    let ledger = Ledger::at(path);
    let chain = ledger.verify_chain().map(|_| ()).map_err(|e| format!("{e:#}"));
    let entries = ledger.entries().unwrap_or_default();
    Some(LedgerView { path: path.to_path_buf(), entries, chain })
}
