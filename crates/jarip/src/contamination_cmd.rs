//! `jarip data contamination`: which evaluation items a training corpus holds.
//!
//! The rules, their exactness and their memory bound are [`jarip_data::contamination`]'s; this
//! file is the glue: it reads the `--task` files as `jarip eval` does (`jarip_eval::load_tasks`),
//! turns each example into the text checked — the prompt as the harness renders it (context,
//! or prompt) joined by its delimiter to the correct answer; a bits-per-byte document as it
//! is — NFC-normalised as `data prepare` normalises the corpus, and tokenised with the run's
//! tokenizer; it streams the `--corpus` documents past the index, prints a table per task (or
//! the report as JSON), writes the report with `--out`, and appends a `contamination` entry to
//! the ledger (the per-task figures, the report's SHA-256 when written).
//!
//! `jarip eval --contamination REPORT` then scores each task on its clean items as well
//! (`jarip_eval::apply_contamination`).

use anyhow::{bail, Context, Result};
use clap::Args;
use jarip_data::contamination::{ItemResult, NgramIndex, Rules, ScanStats};
use jarip_data::{DocumentSource, IngestOptions};
use jarip_eval::{Examples, Layout, Task, TaskSpec};
use jarip_ledger::manifest::MANIFEST_FILE;
use jarip_ledger::records::{
    ContaminationClass, ContaminationConfig, ContaminationCorpus, ContaminationDetails, ContaminationReport,
    ContaminationScan, ContaminationSpan, ContaminationTaskFile, ItemContamination, TaskContamination,
};
use jarip_ledger::{Entry, FileRef, Manifest};
use jarip_tokenizer::Tokenizer;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn layouts_help() -> String {
    format!("Evaluation task file as LAYOUT=PATH, as `jarip eval` takes it (repeatable). Layouts: {}", Layout::known())
}

#[derive(Args, Debug, Clone)]
pub struct ContaminationArgs {
    /// Training corpus: a prepared directory (`jarip data prepare`), or .txt/.jsonl/.parquet files
    /// or directories (repeatable).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    #[arg(long, required = true, num_args = 1.., value_name = "LAYOUT=PATH", help = layouts_help())]
    pub task: Vec<TaskSpec>,
    /// The run's tokenizer: tokenizer.json, a directory holding one, or a checkpoint or run
    /// directory.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Print the full report (every item) as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the full report here (what `jarip eval --contamination` reads).
    #[arg(long, value_name = "REPORT.json")]
    pub out: Option<PathBuf>,
    /// Ledger to append to (default: the first corpus's parent directory's ledger.jsonl, so
    /// RUN/ledger.jsonl for RUN/prepared).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// JSONL field or Parquet column holding the text of plain corpus files.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Matched spans listed per item in the report (all are counted).
    #[arg(long, default_value_t = 4)]
    pub max_spans: usize,
    /// Corpus text read and tokenised per batch, in MB.
    #[arg(long, default_value_t = 8)]
    pub batch_mb: usize,
    /// No progress line on stderr (the closing throughput line is always printed).
    #[arg(long)]
    pub quiet: bool,
}

/// `--tokenizer`: a tokenizer.json, a directory holding one (or `tokenizer/tokenizer.json`, as a
/// run does), else a checkpoint or run directory's model.
fn load_tokenizer(path: &Path) -> Result<(Tokenizer, PathBuf)> {
    if !path.exists() {
        bail!("tokenizer {} does not exist", path.display());
    }
    let file = if path.is_file() {
        path.to_path_buf()
    } else if path.join(jarip_tokenizer::TOKENIZER_FILE).is_file() {
        path.join(jarip_tokenizer::TOKENIZER_FILE)
    } else if path.join("tokenizer").join(jarip_tokenizer::TOKENIZER_FILE).is_file() {
        path.join("tokenizer").join(jarip_tokenizer::TOKENIZER_FILE)
    } else {
        let ckpt = jarip_interop::model_dir::resolve_checkpoint(path)
            .with_context(|| format!("{} holds no tokenizer.json", path.display()))?;
        ckpt.join(jarip_tokenizer::TOKENIZER_FILE)
    };
    Ok((Tokenizer::load(&file)?, file))
}

/// What is checked for each example: the rendered prompt joined to the correct answer.
fn item_texts(examples: &Examples) -> Vec<String> {
    match examples {
        Examples::MultipleChoice(v) => v
            .iter()
            .map(|e| format!("{}{}{}", e.context, e.delimiter, e.choices.get(e.gold).map_or("", String::as_str)))
            .collect(),
        Examples::Generative(v) => v
            .iter()
            .map(|e| match e.answers.first() {
                Some(a) => format!("{}{}{a}", e.prompt, e.delimiter),
                None => e.prompt.clone(),
            })
            .collect(),
        Examples::Text(v) => v.clone(),
    }
}

/// One `--corpus`: its files with their hashes (a prepared directory's from its manifest).
fn corpus_record(path: &Path, opts: &IngestOptions) -> Result<ContaminationCorpus> {
    let source = DocumentSource::new(&[path], opts.clone())?;
    let manifest_file = path.join(MANIFEST_FILE);
    let (manifest, manifest_sha256) = if path.is_dir() && manifest_file.is_file() {
        (Manifest::read(path).ok(), Some(jarip_ledger::sha256_file(&manifest_file)?))
    } else {
        (None, None)
    };
    let files = source
        .files()
        .iter()
        .map(|f| {
            let recorded = manifest.as_ref().and_then(|m| {
                let rel = f.path.strip_prefix(path).ok()?.to_str()?.replace('\\', "/");
                m.files.get(&rel)
            });
            match recorded {
                Some(h) => {
                    Ok(FileRef { path: f.path.display().to_string(), sha256: h.sha256.clone(), bytes: Some(h.bytes) })
                }
                None => FileRef::of_file(&f.path),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ContaminationCorpus { path: path.display().to_string(), manifest_sha256, files })
}

fn item_record(index: usize, tokens: &[u32], r: &ItemResult, tok: &Tokenizer, max_spans: usize) -> ItemContamination {
    ItemContamination {
        index,
        tokens: r.tokens,
        contaminated: r.contaminated(),
        ngram13: r.ngram,
        fraction: r.fraction,
        class: r.class,
        spans: r
            .spans
            .iter()
            .take(max_spans)
            .map(|s| ContaminationSpan { start: s.start, end: s.end, text: tok.decode(&tokens[s.clone()]) })
            .collect(),
        n_spans: r.spans.len(),
    }
}

fn task_record(task: &Task, items: Vec<ItemContamination>) -> TaskContamination {
    let count = |f: &dyn Fn(&ItemContamination) -> bool| items.iter().filter(|i| f(i)).count();
    TaskContamination {
        name: task.name.clone(),
        layout: task.layout.name().to_string(),
        path: task.path.display().to_string(),
        sha256: task.sha256.clone(),
        n_items: items.len(),
        n_contaminated: count(&|i| i.contaminated),
        n_ngram13: count(&|i| i.ngram13),
        n_dirty: count(&|i| i.class == ContaminationClass::Dirty),
        n_not_clean: count(&|i| i.class == ContaminationClass::NotClean),
        n_clean: count(&|i| i.class == ContaminationClass::Clean),
        items,
    }
}

/// The per-task table printed on stdout.
pub fn render_summary(report: &ContaminationReport) -> String {
    let header = ["task", "layout", "items", "contaminated", "%", "13-gram", "dirty", "not-clean", "clean"];
    let rows: Vec<Vec<String>> = report
        .tasks
        .iter()
        .map(|t| {
            let pct = if t.n_items == 0 { 0.0 } else { 100.0 * t.n_contaminated as f64 / t.n_items as f64 };
            vec![
                t.name.clone(),
                t.layout.clone(),
                t.n_items.to_string(),
                t.n_contaminated.to_string(),
                format!("{pct:.1}"),
                t.n_ngram13.to_string(),
                t.n_dirty.to_string(),
                t.n_not_clean.to_string(),
                t.n_clean.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, w))| if i < 2 { format!("{s:<w$}") } else { format!("{s:>w$}") })
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n"));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Runs the check; returns the report.
pub fn run(a: &ContaminationArgs) -> Result<ContaminationReport> {
    let t0 = Instant::now();
    for c in &a.corpus {
        if !c.exists() {
            bail!("corpus {} does not exist", c.display());
        }
    }
    if a.batch_mb == 0 {
        bail!("--batch-mb must be at least 1");
    }
    let (tok, tok_file) = load_tokenizer(&a.tokenizer)?;
    let tasks = jarip_eval::load_tasks(&a.task)?;
    if let Some(out) = &a.out {
        jarip_eval::run::check_writable(out)?;
    }
    let opts = IngestOptions { text_field: a.text_field.clone(), ..Default::default() };
    let corpus: Vec<ContaminationCorpus> = a.corpus.iter().map(|p| corpus_record(p, &opts)).collect::<Result<_>>()?;
    let source = DocumentSource::new(&a.corpus, opts)?;

    // Every task's items in one index; `ranges[t]` are task t's items.
    let mut items: Vec<Vec<u32>> = Vec::new();
    let mut ranges = Vec::new();
    for t in &tasks {
        let start = items.len();
        items.extend(item_texts(&t.examples).iter().map(|s| tok.encode_nfc(s)));
        ranges.push(start..items.len());
    }
    let rules = Rules::default();
    let index = NgramIndex::new(items, rules);
    let progress = !a.quiet && std::io::stderr().is_terminal();
    if progress {
        eprintln!(
            "{} items of {} task(s): {} distinct n-grams; scanning {} corpus file(s)",
            index.len(),
            tasks.len(),
            index.grams(),
            source.files().len()
        );
    }
    let stats = index.scan_source(&tok, &source, a.batch_mb.saturating_mul(1 << 20), |s: &ScanStats| {
        if progress {
            let mut e = std::io::stderr();
            let _ = write!(
                e,
                "\r  {} documents, {:.1} MB, {:.1} MB/s\x1b[K",
                s.documents,
                s.bytes as f64 / 1e6,
                s.mb_per_s()
            );
            let _ = e.flush();
        }
    })?;
    if progress {
        eprint!("\r\x1b[K");
    }
    let results = index.results();

    let task_records: Vec<TaskContamination> = tasks
        .iter()
        .zip(&ranges)
        .map(|(t, r)| {
            let recs = r
                .clone()
                .enumerate()
                .map(|(i, g)| item_record(i, index.item(g), &results[g], &tok, a.max_spans))
                .collect();
            task_record(t, recs)
        })
        .collect();
    let scan = ContaminationScan {
        documents: stats.documents,
        bytes: stats.bytes,
        tokens: stats.tokens,
        seconds: stats.seconds,
        mb_per_s: stats.mb_per_s(),
    };
    let config = ContaminationConfig {
        ngram: rules.ngram,
        span: rules.span,
        dirty_above: rules.dirty_above,
        clean_below: rules.clean_below,
        contaminated_rule: format!(
            "a {}-gram of the item (the whole item if shorter) occurs in a corpus document, or matched spans of at \
             least {} tokens cover more than {} % of its tokens",
            rules.ngram,
            rules.span,
            rules.dirty_above * 100.0
        ),
        item_text: "the prompt as rendered for scoring, its delimiter and the correct answer (a bits-per-byte \
                    document as is), NFC-normalised"
            .into(),
        tokenizer_sha256: tok.sha256().to_string(),
        corpus,
        tasks: tasks
            .iter()
            .map(|t| ContaminationTaskFile {
                name: t.name.clone(),
                layout: t.layout.name().to_string(),
                path: t.path.display().to_string(),
                sha256: t.sha256.clone(),
            })
            .collect(),
    };
    let report = ContaminationReport {
        config,
        scan: scan.clone(),
        tasks: task_records,
        jarip_version: jarip_ledger::JARIP_VERSION.to_string(),
        time: jarip_ledger::now_rfc3339(),
    };
    let text = serde_json::to_string_pretty(&report)? + "\n";
    let written = match &a.out {
        Some(out) => {
            jarip_ledger::atomic_write(out, text.as_bytes())
                .with_context(|| format!("cannot write the report to {}", out.display()))?;
            Some(FileRef::of_file(out)?)
        }
        None => None,
    };

    let mut e = Entry::new("contamination");
    e.inputs = report.config.corpus.iter().flat_map(|c| c.files.clone()).collect();
    for t in &tasks {
        let bytes = std::fs::metadata(&t.path).ok().map(|m| m.len());
        e.inputs.push(FileRef { path: t.path.display().to_string(), sha256: t.sha256.clone(), bytes });
    }
    e.inputs.push(FileRef::of_file(&tok_file)?);
    e.outputs.extend(written.clone());
    e.set_config(&report.config)?;
    e.set_details(&ContaminationDetails {
        scan,
        tasks: report.tasks.iter().map(|t| TaskContamination { items: Vec::new(), ..t.clone() }).collect(),
        report: written.as_ref().map(|w| w.path.clone()),
        report_sha256: written.as_ref().map(|w| w.sha256.clone()),
    })?;
    crate::stages::ledger_for(&a.corpus[0], &a.ledger).append(e)?;

    if a.json {
        print!("{text}");
    } else {
        print!("{}", render_summary(&report));
        if let Some(w) = &written {
            println!("report → {}", w.path);
        }
    }
    eprintln!(
        "contamination: {} items against {} documents ({:.1} MB, {} tokens) in {:.1} s: {:.1} MB/s of corpus text \
         ({:.1} s in all)",
        index.len(),
        stats.documents,
        stats.bytes as f64 / 1e6,
        stats.tokens,
        stats.seconds,
        stats.mb_per_s(),
        t0.elapsed().as_secs_f64()
    );
    Ok(report)
}
