//! `jarip eval` as a library call: check the output path, read every task file, load each model,
//! score, write the JSON (atomically, only when everything succeeded), append the ledger entry.
//! The CLI and `jarip speedrun` both go through [`run_eval`].
//!
//! With a contamination report (`jarip data contamination --out`), each task is also scored on
//! its clean examples alone ([`apply_contamination`]): examples are matched by their index in the
//! task file, and the report must name the task file's SHA-256, so a changed file is refused.

use crate::evaluate::{evaluate, EvalOptions, TaskResult};
use crate::layouts::load_tasks;
use crate::lm::GptLm;
use crate::task::{Task, TaskSpec};
use anyhow::{bail, Context, Result};
use jarip_infer::LoadedModel;
use jarip_ledger::records::{CheckpointSettings, ContaminationReport, EvalDetails, EvalModel};
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
        origin: (!m.is_own()).then(|| m.origin_label()),
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
    /// The contamination report whose clean subsets were scored too.
    pub contamination: Option<FileRef>,
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
        if let Some(clean) = self.clean_results() {
            out["clean_results"] = clean;
        }
        if let Some(c) = &self.contamination {
            out["contamination"] = json!({"report": c.path, "sha256": c.sha256});
        }
        out
    }

    /// `{TASK: {metric: value, …, "n": N, "n_contaminated": K}}` over each task's clean examples,
    /// when a contamination report was given.
    pub fn clean_results(&self) -> Option<Value> {
        let mut clean = Map::new();
        for r in &self.results {
            if let Some(c) = &r.clean {
                let mut m: Map<String, Value> = c.metrics.iter().map(|(k, v)| (k.clone(), finite(*v))).collect();
                m.insert("n".into(), c.n.into());
                m.insert("n_contaminated".into(), c.excluded.into());
                clean.insert(r.name.clone(), Value::Object(m));
            }
        }
        (!clean.is_empty()).then_some(Value::Object(clean))
    }
}

/// The first 16 characters of a hash, for messages.
fn short(h: &str) -> String {
    h.chars().take(16).collect()
}

/// Marks each task's clean examples from a contamination report (`clean[i]` = item `i` is not
/// `contaminated`). A task is found in the report by its file's SHA-256 and layout; a report
/// naming the same file with another hash means the file changed since, and is refused, as is
/// a task the report does not cover. Returns the report file's reference for the record.
pub fn apply_contamination(tasks: &mut [Task], report_path: &Path) -> Result<FileRef> {
    let text = std::fs::read_to_string(report_path)
        .with_context(|| format!("cannot read the contamination report {}", report_path.display()))?;
    let report: ContaminationReport = serde_json::from_str(&text).with_context(|| {
        format!("{} is not a contamination report (written by `jarip data contamination --out`)", report_path.display())
    })?;
    for task in tasks.iter_mut() {
        let layout = task.layout.name();
        let path = task.path.display().to_string();
        let Some(rt) = report.tasks.iter().find(|t| t.sha256 == task.sha256 && t.layout == layout) else {
            let same_file = report.tasks.iter().find(|t| t.path == path || t.name == task.name);
            match same_file {
                Some(t) if t.sha256 != task.sha256 => bail!(
                    "task file {path} changed since the contamination report {} was made (sha256 {}…, the report \
                     has {}…): run `jarip data contamination` again",
                    report_path.display(),
                    short(&task.sha256),
                    short(&t.sha256)
                ),
                Some(t) => bail!(
                    "the contamination report {} read {path} as layout {}, this evaluation as {layout}",
                    report_path.display(),
                    t.layout
                ),
                None => bail!(
                    "the contamination report {} does not cover task {} ({path}, sha256 {}…)",
                    report_path.display(),
                    task.name,
                    short(&task.sha256)
                ),
            }
        };
        let n = task.examples.len();
        if rt.n_items != n || rt.items.len() != n {
            bail!(
                "the contamination report {} lists {} items for {path}, which holds {n}",
                report_path.display(),
                rt.items.len()
            );
        }
        let mut clean = vec![false; n];
        for it in &rt.items {
            match clean.get_mut(it.index) {
                Some(c) => *c = !it.contaminated,
                None => bail!(
                    "the contamination report {} names item {} of {path}, which holds {n}",
                    report_path.display(),
                    it.index
                ),
            }
        }
        task.clean = Some(clean);
    }
    let bytes = std::fs::metadata(report_path).ok().map(|m| m.len());
    Ok(FileRef { path: report_path.display().to_string(), sha256: jarip_ledger::sha256_bytes(text.as_bytes()), bytes })
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
        contamination: None,
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
    if let Some(c) = &report.contamination {
        e.inputs.push(c.clone());
    }
    if let Some(out) = json_out {
        e.outputs.push(FileRef::of_file(out)?);
    }
    e.config = serde_json::to_value(&report.options)?;
    e.seed = Some(report.options.seed);
    let doc = report.to_json();
    e.set_details(&EvalDetails {
        model: report.model.clone(),
        results: doc["results"].clone(),
        clean_results: report.clean_results(),
    })?;
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
    /// A `jarip data contamination` report: also score each task's clean examples.
    pub contamination: Option<PathBuf>,
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
    let mut tasks = load_tasks(&req.tasks)?;
    let contamination = match &req.contamination {
        Some(p) => Some(apply_contamination(&mut tasks, p)?),
        None => None,
    };
    let mut reports = Vec::new();
    for m in &req.models {
        if req.options.progress {
            eprintln!("evaluating {} on {} task(s)", m.display(), tasks.len());
        }
        let mut r = evaluate_checkpoint(m, &tasks, &req.options).with_context(|| format!("model {}", m.display()))?;
        r.contamination = contamination.clone();
        reports.push(r);
    }
    if let Some(out) = &req.json {
        write_json(out, &reports)?;
    }
    // Other models scored beside the run's own are recorded in its ledger too (marked not built
    // by this run), so its report and card can show the comparison.
    let foreign = |r: &EvalReport| {
        r.model.origin.as_deref().is_some_and(|o| o.starts_with(jarip_infer::model_dir::NOT_BUILT_HERE))
    };
    let own_ledger = reports.iter().filter(|r| !foreign(r)).find_map(|r| run_ledger_of(Path::new(&r.model.dir)));
    for r in &reports {
        let ledger = match &req.ledger {
            LedgerChoice::Off => None,
            LedgerChoice::File(p) => Some(p.clone()),
            LedgerChoice::Auto if foreign(r) => own_ledger.clone(),
            LedgerChoice::Auto => run_ledger_of(Path::new(&r.model.dir)),
        };
        if let Some(l) = ledger {
            Ledger::at(&l).append(ledger_entry(r, &tasks, req.json.as_deref())?)?;
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use crate::task::Layout;
    use jarip_ledger::records::{ContaminationClass, ContaminationConfig, ItemContamination, TaskContamination};

    fn report_for(task: &Task, contaminated: &[bool]) -> ContaminationReport {
        let items: Vec<ItemContamination> = contaminated
            .iter()
            .enumerate()
            .map(|(index, &c)| ItemContamination {
                index,
                tokens: 20,
                contaminated: c,
                ngram13: c,
                fraction: if c { 1.0 } else { 0.0 },
                class: if c { ContaminationClass::Dirty } else { ContaminationClass::Clean },
                spans: vec![],
                n_spans: 0,
            })
            .collect();
        let n = |c: bool| contaminated.iter().filter(|x| **x == c).count();
        ContaminationReport {
            config: ContaminationConfig {
                ngram: 13,
                span: 10,
                dirty_above: 0.8,
                clean_below: 0.2,
                contaminated_rule: String::new(),
                item_text: String::new(),
                tokenizer_sha256: String::new(),
                corpus: vec![],
                tasks: vec![],
            },
            scan: Default::default(),
            tasks: vec![TaskContamination {
                name: task.name.clone(),
                layout: task.layout.name().into(),
                path: task.path.display().to_string(),
                sha256: task.sha256.clone(),
                n_items: items.len(),
                n_contaminated: n(true),
                n_ngram13: n(true),
                n_dirty: n(true),
                n_not_clean: 0,
                n_clean: n(false),
                items,
            }],
            jarip_version: String::new(),
            time: String::new(),
        }
    }

    #[test]
    fn reports_mark_clean_items_and_refuse_what_they_do_not_match() {
        let d = tempfile::tempdir().unwrap();
        let rows = [
            serde_json::json!({"context": "a", "choices": ["x", "y"], "gold": 0}),
            serde_json::json!({"context": "b", "choices": ["x", "y"], "gold": 1}),
        ];
        let p = test_files::jsonl(d.path(), "t.jsonl", &rows);
        let task = crate::load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap();
        let write = |r: &ContaminationReport| {
            let f = d.path().join("report.json");
            std::fs::write(&f, serde_json::to_string(r).unwrap()).unwrap();
            f
        };
        let f = write(&report_for(&task, &[true, false]));
        let mut tasks = vec![task.clone()];
        let r = apply_contamination(&mut tasks, &f).unwrap();
        assert_eq!(tasks[0].clean, Some(vec![false, true]));
        assert_eq!(r.sha256, jarip_ledger::sha256_file(&f).unwrap());

        // Another layout, another item count, another task, a file that is no report.
        let mut other = report_for(&task, &[true, false]);
        other.tasks[0].layout = "kobest_boolq".into();
        let e = apply_contamination(&mut [task.clone()], &write(&other)).unwrap_err().to_string();
        assert!(e.contains("as layout kobest_boolq"), "{e}");
        let e = apply_contamination(&mut [task.clone()], &write(&report_for(&task, &[true]))).unwrap_err();
        assert!(e.to_string().contains("lists 1 items"), "{e}");
        let mut other = report_for(&task, &[true, false]);
        other.tasks[0].sha256 = "00".repeat(32);
        other.tasks[0].name = "elsewhere".into();
        other.tasks[0].path = "elsewhere.jsonl".into();
        let e = apply_contamination(&mut [task.clone()], &write(&other)).unwrap_err();
        assert!(e.to_string().contains("does not cover task t"), "{e}");
        std::fs::write(&f, "{\"results\": {}}").unwrap();
        let e = apply_contamination(&mut [task], &f).unwrap_err();
        assert!(format!("{e:#}").contains("is not a contamination report"), "{e:#}");
    }
}
