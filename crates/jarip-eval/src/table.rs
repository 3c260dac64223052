//! The readable form of results: one row per task and metric, one column per model, so
//! `--model A --model B` compares them side by side.

use crate::run::EvalReport;

/// A metric's value as printed in tables (the CLI's and the report's).
pub(crate) fn format_value(metric: &str, v: f64) -> String {
    if !v.is_finite() {
        return "nan".into();
    }
    match metric {
        "n" | "tokens" | "bytes" => format!("{v:.0}"),
        _ if v.abs() >= 1e6 => format!("{v:.3e}"),
        m if m.ends_with("perplexity") => format!("{v:.2}"),
        _ => format!("{v:.4}"),
    }
}

/// A label per model: its checkpoint directory, numbered if the same one appears twice.
fn labels(reports: &[EvalReport]) -> Vec<String> {
    let names: Vec<String> = reports.iter().map(|r| r.model.dir.clone()).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| if names.iter().filter(|m| *m == n).count() > 1 { format!("{n} #{}", i + 1) } else { n.clone() })
        .collect()
}

/// One task's scores in a table: its full set, or its clean subset.
struct Scores<'a> {
    n: usize,
    metrics: &'a [(String, f64)],
}

/// A task's scores in `r`: over all its examples, or over its clean ones (`clean`).
fn scores<'a>(r: &'a EvalReport, task: &str, clean: bool) -> Option<Scores<'a>> {
    let t = r.results.iter().find(|t| t.name == task)?;
    if clean {
        let c = t.clean.as_ref()?;
        Some(Scores { n: c.n, metrics: &c.metrics })
    } else {
        Some(Scores { n: t.n, metrics: &t.metrics })
    }
}

fn cell(s: Option<Scores>, metric: &str) -> String {
    let Some(s) = s else { return "-".into() };
    if metric == "n" {
        return s.n.to_string();
    }
    let get = |name: &str| s.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    match (get(metric), get(&format!("{metric}_stderr"))) {
        (Some(v), Some(se)) => format!("{} ± {}", format_value(metric, v), format_value(metric, se)),
        (Some(v), None) => format_value(metric, v),
        (None, _) => "-".into(),
    }
}

/// Rows per task and metric; a task scored with a contamination report gets a second block,
/// `TASK (clean)`, over its clean examples.
pub fn render_table(reports: &[EvalReport]) -> String {
    let mut header = vec!["task".to_string(), "metric".to_string()];
    header.extend(labels(reports));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let Some(first) = reports.first() else { return String::new() };
    if reports.iter().any(|r| r.model.origin.is_some()) {
        let mut row = vec!["weights".to_string(), String::new()];
        row.extend(reports.iter().map(|r| r.model.origin.clone().unwrap_or_else(|| "built by this run".into())));
        rows.push(row);
    }
    for task in &first.results {
        let mut metric_names: Vec<&str> = vec!["n"];
        metric_names.extend(task.metrics.iter().map(|(m, _)| m.as_str()).filter(|m| !m.ends_with("_stderr")));
        let mut blocks = vec![(task.name.clone(), false)];
        if reports.iter().any(|r| scores(r, &task.name, true).is_some()) {
            blocks.push((format!("{} (clean)", task.name), true));
        }
        for (label, clean) in blocks {
            for (i, metric) in metric_names.iter().enumerate() {
                let mut row = vec![if i == 0 { label.clone() } else { String::new() }, metric.to_string()];
                row.extend(reports.iter().map(|r| cell(scores(r, &task.name, clean), metric)));
                rows.push(row);
            }
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().chain(std::iter::once(&header)).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    out.push_str(&(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n"));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}
