//! `jarip report RUN`: a Markdown report card (`RUN/report.md`) with PNG charts beside it —
//! loss and bits per byte against tokens seen, learning rate, throughput and MFU, evaluation
//! scores per checkpoint — a summary table per stage (base, SFT), the provenance summary, and
//! the contamination checks the ledger records.
//!
//! It reads what the run left: `RUN/metrics.jsonl` (pretraining), `RUN/sft/metrics.jsonl`,
//! `RUN/ledger.jsonl` and `RUN/evals/*.json` (from `jarip eval --json`). Anything absent is
//! said so in the report; nothing absent is an error except the run directory itself.

pub mod charts;
pub mod data;

use crate::metrics::PRIMARY_METRICS;
use crate::table::format_value;
use anyhow::{bail, Result};
use charts::{plain, si, Chart, Series};
use data::{read_evals, read_ledger, read_stage, EvalDoc, LedgerView, Stage, StepLog};
use jarip_ledger::records::{CheckpointDetails, ContaminationDetails, LineageDetails, Opaque, PretrainStart};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const REPORT_FILE: &str = "report.md";
/// Every chart the report can hold, in order; a chart without data is left out (and an old
/// copy removed), never drawn empty.
pub const CHART_FILES: [&str; 7] = [
    "report_loss.png",
    "report_bpb.png",
    "report_lr.png",
    "report_throughput.png",
    "report_mfu.png",
    "report_evals.png",
    "report_eval_bpb.png",
];

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or("—".into(), f)
}

fn short(h: &str) -> String {
    if h.len() > 16 {
        format!("`{}…`", &h[..16])
    } else {
        format!("`{h}`")
    }
}

fn series(
    stage: &Stage,
    x: impl Fn(&StepLog) -> Option<f64>,
    y: impl Fn(&StepLog) -> Option<f64>,
    name: &str,
) -> Series {
    Series { name: name.to_string(), points: stage.steps.iter().filter_map(|s| Some((x(s)?, y(s)?))).collect() }
}

fn tokens_x(s: &StepLog) -> Option<f64> {
    s.tokens.or(Some(s.step as f64))
}

/// `next` with its steps and tokens counted on from the end of `prev`.
fn continued(prev: &Stage, next: &Stage) -> Stage {
    let step0 = prev.last(|l| Some(l.step)).unwrap_or(0);
    let tokens0 = prev.last(|l| l.tokens).unwrap_or(0.0);
    let mut s = next.clone();
    for l in &mut s.steps {
        l.step += step0;
        l.tokens = l.tokens.map(|t| t + tokens0);
    }
    s
}

/// The charts that have data, as (file, alt text, chart).
fn charts_for(stages: &[&Stage], evals: &[EvalDoc]) -> Vec<(&'static str, String, Chart)> {
    let mut out = Vec::new();
    let mut add =
        |file: &'static str, alt: &str, title: &str, x: &str, y: &str, series: Vec<Series>, xf: fn(f64) -> String| {
            let series: Vec<Series> = series.into_iter().filter(|s| !s.points.is_empty()).collect();
            if !series.is_empty() {
                let chart = Chart {
                    title: title.into(),
                    x_label: x.into(),
                    y_label: y.into(),
                    series,
                    x_format: xf,
                    y_format: plain,
                };
                out.push((file, alt.to_string(), chart));
            }
        };
    let per_stage = |f: &dyn Fn(&Stage) -> Vec<Series>| stages.iter().flat_map(|s| f(s)).collect::<Vec<_>>();
    add(
        "report_loss.png",
        "training and validation loss",
        "Loss",
        "tokens seen",
        "loss (nats/token)",
        per_stage(&|s| {
            vec![
                series(s, tokens_x, |l| l.loss, &format!("{} train", s.name)),
                series(s, tokens_x, |l| l.val_loss, &format!("{} validation", s.name)),
            ]
        }),
        si,
    );
    add(
        "report_bpb.png",
        "validation bits per byte",
        "Validation bits per byte",
        "tokens seen",
        "bits/byte",
        per_stage(&|s| vec![series(s, tokens_x, |l| l.val_bpb, s.name)]),
        si,
    );
    add(
        "report_lr.png",
        "learning rate",
        "Learning rate",
        "step",
        "lr",
        per_stage(&|s| vec![series(s, |l| Some(l.step as f64), |l| l.lr, s.name)]),
        plain,
    );
    add(
        "report_throughput.png",
        "tokens per second",
        "Throughput",
        "step",
        "tokens/s",
        per_stage(&|s| vec![series(s, |l| Some(l.step as f64), |l| l.tokens_per_s, s.name)]),
        plain,
    );
    add(
        "report_mfu.png",
        "model FLOPs utilisation",
        "MFU",
        "step",
        "MFU (%)",
        per_stage(&|s| vec![series(s, |l| Some(l.step as f64), |l| l.mfu.map(|m| m * 100.0), s.name)]),
        plain,
    );
    let eval_series = |metrics: &[&str]| -> Vec<Series> {
        let mut keys: Vec<(String, String)> = Vec::new(); // (stage, task)
        for d in evals {
            for (task, _) in &d.results {
                let k = (d.stage.clone(), task.clone());
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys.iter()
            .filter_map(|(stage, task)| {
                let metric = *metrics.iter().find(|m| evals.iter().any(|d| d.metric(task, m).is_some()))?;
                let mut pts: Vec<(f64, f64)> = evals
                    .iter()
                    .filter(|d| d.stage == *stage)
                    .filter_map(|d| Some((d.step? as f64, d.metric(task, metric)?)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Some(Series { name: format!("{stage}: {task} ({metric})"), points: pts })
            })
            .collect()
    };
    add(
        "report_evals.png",
        "evaluation scores per checkpoint",
        "Evaluation scores per checkpoint",
        "checkpoint step",
        "score",
        eval_series(&["acc", "exact_match"]),
        plain,
    );
    add(
        "report_eval_bpb.png",
        "evaluation bits per byte per checkpoint",
        "Evaluation bits per byte per checkpoint",
        "checkpoint step",
        "bits/byte",
        eval_series(&["bits_per_byte"]),
        plain,
    );
    out
}

fn stage_summary(md: &mut String, stages: &[Option<&Stage>; 2], evals: &[EvalDoc]) {
    let col = |f: &dyn Fn(&Stage) -> String| -> [String; 2] {
        [stages[0].map_or("—".into(), f), stages[1].map_or("—".into(), f)]
    };
    let mut rows: Vec<(String, [String; 2])> = vec![
        ("optimizer steps".into(), col(&|s| fmt_opt(s.last(|l| Some(l.step as f64)), |v| format!("{v:.0}")))),
        ("tokens seen".into(), col(&|s| fmt_opt(s.last(|l| l.tokens), si))),
        ("final train loss".into(), col(&|s| fmt_opt(s.last(|l| l.loss), |v| format!("{v:.4}")))),
        ("final validation loss".into(), col(&|s| fmt_opt(s.last(|l| l.val_loss), |v| format!("{v:.4}")))),
        ("final validation bits/byte".into(), col(&|s| fmt_opt(s.last(|l| l.val_bpb), |v| format!("{v:.4}")))),
        ("training time".into(), col(&|s| fmt_opt(s.last(|l| l.elapsed_s), |v| format!("{:.1} min", v / 60.0)))),
        ("median tokens/s".into(), col(&|s| fmt_opt(s.median(|l| l.tokens_per_s), |v| format!("{v:.0}")))),
        (
            "median MFU".into(),
            col(&|s| {
                let peak = s.last(|l| l.peak_gflops).map_or(String::new(), |p| format!(" of {p:.0} GFLOP/s"));
                fmt_opt(s.median(|l| l.mfu), |v| format!("{:.1} %{peak}", v * 100.0))
            }),
        ),
    ];
    // Evaluation scores of each stage's latest evaluated checkpoint.
    let latest = |stage: &str| -> Option<&EvalDoc> {
        evals.iter().filter(|d| d.stage == stage).max_by_key(|d| d.step.unwrap_or(0))
    };
    let (base, sft) = (latest("base"), latest("sft"));
    let mut tasks: Vec<String> = Vec::new();
    for d in [base, sft].into_iter().flatten() {
        for (t, _) in &d.results {
            if !tasks.contains(t) {
                tasks.push(t.clone());
            }
        }
    }
    for t in tasks {
        let metric = PRIMARY_METRICS
            .into_iter()
            .find(|m| [base, sft].into_iter().flatten().any(|d| d.metric(&t, m).is_some()))
            .unwrap_or("score");
        let pick =
            |d: Option<&EvalDoc>| d.and_then(|d| d.metric(&t, metric)).map_or("—".into(), |v| format!("{v:.4}"));
        rows.push((format!("{t} ({metric})"), [pick(base), pick(sft)]));
    }
    md.push_str("| | base | SFT |\n|---|---|---|\n");
    for (name, [a, b]) in rows {
        let _ = writeln!(md, "| {name} | {a} | {b} |");
    }
    md.push('\n');
}

/// Which fine-tuning checkpoint is the model, and whether fine-tuning beat the base on the
/// held-out conversations (the ledger's last `sft-select` entry).
fn selection_summary(md: &mut String, ledger: Option<&LedgerView>) {
    let Some(sel) = ledger
        .and_then(|l| l.entries.iter().rev().find(|e| e.stage == "sft-select"))
        .and_then(|e| serde_json::from_value::<jarip_ledger::records::SftSelection>(e.details.clone()).ok())
    else {
        return;
    };
    let at = |step: u64| sel.evaluations.iter().find(|e| e.step == step);
    let f = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{v:.4}"));
    let (base, chosen) = (at(0), at(sel.selected_step));
    let _ = writeln!(
        md,
        "Fine-tuning's model is step {} (`{}`), chosen by `{}`: {}. Held-out conversations: loss {} at the start \
         (the base) → {}; held out by template: {} → {}.{}\n",
        sel.selected_step,
        sel.selected_checkpoint,
        sel.rule,
        sel.reason,
        f(base.map(|e| e.val_loss)),
        f(chosen.map(|e| e.val_loss)),
        f(base.and_then(|e| e.template_loss)),
        f(chosen.and_then(|e| e.template_loss)),
        sel.stopped_early_at.map_or(String::new(), |s| format!(" Early stopping ended the run at step {s}."))
    );
}

fn provenance(md: &mut String, ledger: Option<&LedgerView>) {
    md.push_str("## Provenance\n\n");
    let Some(l) = ledger else {
        md.push_str("No `ledger.jsonl` in this run: no provenance record to summarise.\n\n");
        return;
    };
    match &l.chain {
        Ok(()) => {
            let _ = writeln!(md, "- ledger: `{}`, {} entries, hash chain verified", l.path.display(), l.entries.len());
        }
        Err(e) => {
            let _ = writeln!(
                md,
                "- ledger: `{}`, {} entries, **hash chain broken**: {e}",
                l.path.display(),
                l.entries.len()
            );
        }
    }
    let start = l.first("pretrain-start");
    let details = start.and_then(|e| e.details_as::<PretrainStart<Opaque>>().ok());
    let detail = |h: Option<&String>| h.map_or("—".into(), |h| short(h));
    let seed = start.and_then(|e| e.seed).or_else(|| l.entries.iter().find_map(|e| e.seed));
    let _ = writeln!(md, "- seed: {}", seed.map_or("—".into(), |s| s.to_string()));
    let _ = writeln!(md, "- initial weights (step 0) sha256: {}", detail(details.as_ref().map(|d| &d.weights_sha256)));
    let _ = writeln!(md, "- tokenizer sha256: {}", detail(details.as_ref().and_then(|d| d.tokenizer_sha256.as_ref())));
    let _ =
        writeln!(md, "- shards Merkle root: {}", detail(details.as_ref().and_then(|d| d.shards_merkle_root.as_ref())));
    if let Some(n) = details.as_ref().and_then(|d| d.num_params) {
        let _ = writeln!(md, "- parameters: {n} ({})", si(n as f64));
    }
    let mut stages: Vec<(String, usize)> = Vec::new();
    for e in &l.entries {
        match stages.iter_mut().find(|(s, _)| *s == e.stage) {
            Some((_, n)) => *n += 1,
            None => stages.push((e.stage.clone(), 1)),
        }
    }
    let list: Vec<String> = stages.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
    let _ = writeln!(md, "- stages recorded: {}", list.join(", "));
    let checkpoints: Vec<_> =
        l.entries.iter().filter(|e| e.stage == "checkpoint" || e.stage == "sft-checkpoint").collect();
    if !checkpoints.is_empty() {
        md.push_str("\n| checkpoint | step | tokens seen | weights sha256 |\n|---|---|---|---|\n");
        for e in checkpoints {
            let d = e.details_as::<CheckpointDetails<Opaque>>().ok();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                e.stage,
                d.as_ref().map_or("—".into(), |d| d.step.to_string()),
                d.as_ref().and_then(|d| d.tokens_seen).map_or("—".into(), |t| si(t as f64)),
                d.as_ref().map_or("—".into(), |d| short(&d.weights_sha256))
            );
        }
    }
    md.push('\n');
}

fn evaluation_section(md: &mut String, evals: &[EvalDoc], problems: &[String], chart_refs: &[(&str, String)]) {
    md.push_str("## Evaluation\n\n");
    for p in problems {
        let _ = writeln!(md, "- skipped {p}");
    }
    if evals.is_empty() {
        md.push_str(
            "No evaluation results: `RUN/evals/` holds no results. Score a checkpoint with \
             `jarip eval --model RUN --task LAYOUT=FILE --json RUN/evals/NAME.json`.\n\n",
        );
        return;
    }
    for (file, alt) in chart_refs.iter().filter(|(f, _)| f.starts_with("report_eval")) {
        let _ = writeln!(md, "![{alt}]({file})\n");
    }
    side_by_side(md, evals);
    for d in evals {
        let _ = writeln!(
            md,
            "### {} — `{}` ({})\n",
            d.file.file_name().map_or("?".into(), |n| n.to_string_lossy().into_owned()),
            d.model_dir,
            match &d.origin {
                Some(o) => format!("**{o}**"),
                None => format!("step {}, {}", d.step.map_or("?".into(), |s| s.to_string()), d.stage),
            }
        );
        md.push_str("| task | n | metric | value |\n|---|---|---|---|\n");
        for (task, metrics) in &d.results {
            let n = metrics.iter().find(|(k, _)| k == "n").map_or("—".into(), |(_, v)| format!("{v:.0}"));
            let mut first = true;
            for (k, v) in metrics.iter().filter(|(k, _)| k != "n" && !k.ends_with("_stderr")) {
                let se = metrics.iter().find(|(s, _)| *s == format!("{k}_stderr")).map(|(_, s)| *s);
                let value = match se {
                    Some(se) => format!("{} ± {}", format_value(k, *v), format_value(k, se)),
                    None => format_value(k, *v),
                };
                let (t, nn) = if first { (task.as_str(), n.as_str()) } else { ("", "") };
                first = false;
                let _ = writeln!(md, "| {t} | {nn} | {k} | {value} |");
            }
        }
        md.push('\n');
    }
}

/// Each results file that scored several models (`jarip eval --model OURS --model OTHER …`) as
/// one table, a column per model, with whose weights each column holds.
fn side_by_side(md: &mut String, evals: &[EvalDoc]) {
    let mut files: Vec<&std::path::Path> = evals.iter().map(|d| d.file.as_path()).collect();
    files.dedup();
    for f in files {
        let docs: Vec<&EvalDoc> = evals.iter().filter(|d| d.file == f).collect();
        if docs.len() < 2 {
            continue;
        }
        let name = f.file_name().map_or("?".into(), |n| n.to_string_lossy().into_owned());
        let _ = writeln!(md, "### Side by side — {name}\n");
        let mut header = "| task | metric |".to_string();
        let mut rule = "|---|---|".to_string();
        let mut whose = "| weights | |".to_string();
        for d in &docs {
            let _ = write!(header, " `{}` |", d.model_dir);
            rule.push_str("---|");
            let _ = write!(whose, " {} |", d.origin.as_deref().unwrap_or("built by this run"));
        }
        let _ = writeln!(md, "{header}\n{rule}\n{whose}");
        for (task, metrics) in &docs[0].results {
            for (k, _) in metrics.iter().filter(|(k, _)| !k.ends_with("_stderr")) {
                let mut row = format!("| {task} | {k} |");
                for d in &docs {
                    let cell = match (d.metric(task, k), d.metric(task, &format!("{k}_stderr"))) {
                        (Some(v), Some(se)) => format!("{} ± {}", format_value(k, v), format_value(k, se)),
                        (Some(v), None) if k == "n" => format!("{v:.0}"),
                        (Some(v), None) => format_value(k, v),
                        (None, _) => "—".into(),
                    };
                    let _ = write!(row, " {cell} |");
                }
                let _ = writeln!(md, "{row}");
            }
        }
        md.push('\n');
    }
}

/// Lineage tests recorded in the ledger (`jarip lineage … --record RUN`), each with its verdict,
/// p-value and per-block plot (written by the test into `RUN/lineage/`).
fn lineage_section(md: &mut String, ledger: Option<&LedgerView>) {
    let Some(l) = ledger else { return };
    let tests: Vec<&jarip_ledger::Entry> = l.entries.iter().filter(|e| e.stage == "lineage").collect();
    if tests.is_empty() {
        return;
    }
    md.push_str("## Lineage\n\n");
    for e in tests {
        let Ok(d) = e.details_as::<LineageDetails>() else {
            let _ = writeln!(md, "- #{}: its details are not a lineage record\n", e.seq);
            continue;
        };
        let finite = |v: f64| Some(v).filter(|v| v.is_finite());
        let _ = writeln!(
            md,
            "- #{} A `{}` vs B `{}`: **{}** (log10 p = {}, α = {}, ρ_min = {})\n",
            e.seq,
            d.a.path,
            d.b.path,
            d.verdict,
            finite(d.log10_p).map_or("—".into(), |v| format!("{v:.1}")),
            finite(d.alpha).map_or("null".into(), |v| serde_json::Value::from(v).to_string()),
            d.rho_min.map_or("—".into(), |v| format!("{v:.4}"))
        );
        if let Some(name) = d.plot.as_deref().and_then(|p| Path::new(p).file_name()) {
            let _ = writeln!(md, "  ![per-block evidence](lineage/{})\n", name.to_string_lossy());
        }
    }
}

/// Contamination checks recorded in the ledger (`jarip data contamination`): per task, how many
/// items the corpus holds by GPT-3's 13-gram rule or Llama 2's ≥ 10-token spans.
fn contamination_section(md: &mut String, ledger: Option<&LedgerView>) {
    let Some(l) = ledger else { return };
    let checks: Vec<&jarip_ledger::Entry> = l.entries.iter().filter(|e| e.stage == "contamination").collect();
    if checks.is_empty() {
        return;
    }
    md.push_str("## Contamination\n\n");
    md.push_str(
        "Evaluation items found in the training corpus by exact token overlap: `contaminated` = a 13-gram of the \
         item occurs in the corpus (GPT-3) or matched spans of ≥ 10 tokens cover more than 80 % of it (Llama 2 \
         `dirty`); `clean` = under 20 % covered. Paraphrases and translations are not caught.\n\n",
    );
    for e in checks {
        let Ok(d) = e.details_as::<ContaminationDetails>() else {
            let _ = writeln!(md, "- #{}: its details are not a contamination record\n", e.seq);
            continue;
        };
        let _ = writeln!(
            md,
            "Entry #{} ({}): {} corpus documents, {:.1} MB, {} tokens{}.\n",
            e.seq,
            e.time,
            d.scan.documents,
            d.scan.bytes as f64 / 1e6,
            d.scan.tokens,
            d.report.as_deref().map_or(String::new(), |r| format!("; report `{r}`"))
        );
        md.push_str("| task | items | contaminated | % | 13-gram | dirty | not clean | clean |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        for t in &d.tasks {
            let pct = if t.n_items == 0 { 0.0 } else { 100.0 * t.n_contaminated as f64 / t.n_items as f64 };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {pct:.1} | {} | {} | {} | {} |",
                t.name, t.n_items, t.n_contaminated, t.n_ngram13, t.n_dirty, t.n_not_clean, t.n_clean
            );
        }
        md.push('\n');
    }
}

/// Writes `RUN/report.md` and its charts; returns the report's path.
pub fn write_report(run: &Path) -> Result<PathBuf> {
    if !run.is_dir() {
        bail!("{} is not a run directory", run.display());
    }
    let base = read_stage("base", &run.join("metrics.jsonl"))?;
    let sft = read_stage("sft", &run.join("sft").join("metrics.jsonl"))?;
    let ledger = read_ledger(&run.join("ledger.jsonl"));
    let (evals, problems) = read_evals(&run.join("evals"))?;
    // On the charts SFT continues where pretraining ended: one axis of tokens (and steps) seen.
    let sft_after = sft.as_ref().map(|s| match &base {
        Some(b) => continued(b, s),
        None => s.clone(),
    });
    let stages: Vec<&Stage> = [base.as_ref(), sft.as_ref()].into_iter().flatten().collect();
    let placed: Vec<&Stage> = [base.as_ref(), sft_after.as_ref()].into_iter().flatten().collect();

    let charts = charts_for(&placed, &evals);
    for (file, _, chart) in &charts {
        charts::write(&run.join(file), chart)?;
    }
    for stale in CHART_FILES.iter().filter(|f| !charts.iter().any(|(c, _, _)| c == *f)) {
        let p = run.join(stale);
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let refs: Vec<(&str, String)> = charts.iter().map(|(f, alt, _)| (*f, alt.clone())).collect();

    let mut md = String::new();
    let _ = writeln!(md, "# jarip report card: `{}`\n", run.display());
    let _ = writeln!(
        md,
        "Generated {} by jarip {}{}.\n",
        jarip_ledger::now_rfc3339(),
        jarip_ledger::JARIP_VERSION,
        jarip_ledger::git_commit().map_or(String::new(), |c| format!(" (commit {})", &c[..c.len().min(12)]))
    );
    md.push_str("## Summary\n\n");
    stage_summary(&mut md, &[base.as_ref(), sft.as_ref()], &evals);
    selection_summary(&mut md, ledger.as_ref());
    if base.is_none() {
        md.push_str("No pretraining log (`metrics.jsonl`) in this run.\n\n");
    }
    if sft.is_none() {
        md.push_str("No SFT stage in this run (`sft/metrics.jsonl` is absent).\n\n");
    }
    for s in &stages {
        if s.skipped_lines > 0 {
            let _ = writeln!(
                md,
                "{} unreadable line(s) of `{}` were skipped.\n",
                s.skipped_lines,
                s.metrics_file.display()
            );
        }
    }

    md.push_str("## Training\n\n");
    let training: Vec<_> = refs.iter().filter(|(f, _)| !f.starts_with("report_eval")).collect();
    if training.is_empty() {
        md.push_str("No training metrics to chart.\n\n");
    }
    for (file, alt) in training {
        let _ = writeln!(md, "![{alt}]({file})\n");
    }

    evaluation_section(&mut md, &evals, &problems, &refs);
    provenance(&mut md, ledger.as_ref());
    lineage_section(&mut md, ledger.as_ref());
    contamination_section(&mut md, ledger.as_ref());

    let path = run.join(REPORT_FILE);
    jarip_ledger::atomic_write(&path, md.as_bytes())?;
    Ok(path)
}
