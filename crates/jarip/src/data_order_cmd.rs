//! `jarip provenance data-order`: flags onto [`jarip_provenance::data_order`], the printed
//! verdict, the plot of loss against step, and the ledger entry.

use anyhow::{Context, Result};
use clap::Args;
use jarip_ledger::records::{DataOrderConfig, DataOrderDetails};
use jarip_provenance::data_order::{self, DataOrderOptions, DataOrderReport};
use jarip_provenance::record::RunRecord;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DataOrderArgs {
    /// The run whose recorded data order is tested (directory holding ledger.jsonl and, where
    /// the ledger names them, its shards).
    pub run: PathBuf,
    /// The model tested: a jarip checkpoint or run directory, an HF-layout export, or a GGUF
    /// file. A model with another tokenizer scores the same text re-tokenised with its own.
    #[arg(long)]
    pub model: PathBuf,
    /// Training batches (steps) sampled evenly across the run: the test's units. The cost is
    /// batches × windows-per-batch windows of seq_len tokens through the model (the default
    /// scores a 2,840-step speedrun's depth-3 model in under a minute on 2 cores).
    #[arg(long, default_value_t = 2560)]
    pub batches: usize,
    /// Windows of each sampled batch scored (at most the batch's windows; only windows the run
    /// did not read again later count, so a multi-epoch run leaves fewer per early batch).
    #[arg(long, default_value_t = 1)]
    pub windows_per_batch: usize,
    /// False-positive rate of `trained-on-this-order`: the verdict when p < alpha.
    #[arg(long, default_value_t = 1e-6)]
    pub alpha: f64,
    /// Monte Carlo permutations of Spearman's ρ.
    #[arg(long, default_value_t = 1_000_000)]
    pub permutations: usize,
    /// Seed of the permutations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON (`verdict`, `p_value`, `log10_p`, `spearman`, `kendall`,
    /// `batches`, and the scored points).
    #[arg(long)]
    pub json: bool,
    /// Do not record the result in RUN's ledger (by default: an entry `data-order`, with the
    /// report and plot in RUN/data-order/).
    #[arg(long)]
    pub no_ledger: bool,
}

fn print_report(r: &DataOrderReport) {
    println!("data-order test: {} against the recorded order of {}", r.model, r.run);
    println!(
        "  run: {} steps, {:.2} epochs, data seed {}; model tokenizer {}…{}",
        r.steps,
        r.epochs,
        r.data_seed,
        &r.model_tokenizer_sha256[..12.min(r.model_tokenizer_sha256.len())],
        if r.retokenised { " (differs from the run's: the text was re-tokenised)" } else { " (the run's)" }
    );
    println!("  units: {} sampled steps × {} windows, scored in {:.1} s", r.batches, r.windows_per_batch, r.seconds);
    if let Some(note) = &r.revisits {
        println!("  note: {note}");
    }
    println!(
        "  Spearman ρ(loss, step) = {:+.4}; Kendall τ-b = {:+.4} (log10 p {:.2})",
        r.spearman, r.kendall, r.kendall_log10_p
    );
    println!("  p = {:.3e} (log10 p = {:.2}); {}", r.p_value, r.log10_p, r.method);
    let meaning = if r.verdict == data_order::TRAINED {
        format!("p < α = {:e}: these weights carry the trace of this run's data order", r.alpha)
    } else {
        format!(
            "p ≥ α = {:e}: the test does not show that these weights were trained on this order (nor that they were not)",
            r.alpha
        )
    };
    println!("verdict: {} ({meaning})", r.verdict);
}

/// Loss of every unit against its step, with a running mean over a twentieth of the units.
fn plot(r: &DataOrderReport, path: &Path) -> Result<()> {
    use jarip_eval::report::charts::{plain, write, Chart, Series};
    let pts: Vec<(f64, f64)> = r.points.iter().map(|&(s, l)| (s as f64, l)).collect();
    let k = (pts.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> =
        pts.windows(k).map(|w| (w[w.len() / 2].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)).collect();
    let chart = Chart {
        title: format!("data order: {} (ρ = {:+.3}, log10 p = {:.1})", r.verdict, r.spearman, r.log10_p),
        x_label: "training step of the batch (last visit)".into(),
        y_label: "loss under the model (nats/token)".into(),
        series: vec![
            Series { name: "sampled batch".into(), points: pts },
            Series { name: format!("running mean of {k}"), points: smooth },
        ],
        x_format: plain,
        y_format: plain,
    };
    write(path, &chart)
}

/// Appends the result to the run's ledger, with the report and plot in RUN/data-order/.
fn record(rec: &RunRecord, r: &DataOrderReport, a: &DataOrderArgs) -> Result<()> {
    use jarip_ledger::{Entry, FileRef, Ledger};
    let dir = rec.run.join("data-order");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ledger = Ledger::at(&rec.ledger);
    let stem = format!("data-order-{:04}", ledger.entries()?.len());
    let json_path = dir.join(format!("{stem}.json"));
    jarip_ledger::atomic_write(&json_path, serde_json::to_string_pretty(r)?.as_bytes())?;
    let png_path = dir.join(format!("{stem}.png"));
    plot(r, &png_path)?;
    let mut e = Entry::new("data-order");
    e.outputs = vec![FileRef::of_file(&json_path)?, FileRef::of_file(&png_path)?];
    e.set_config(&DataOrderConfig {
        batches: a.batches,
        windows_per_batch: a.windows_per_batch,
        alpha: a.alpha,
        permutations: a.permutations,
        seed: a.seed,
    })?;
    e.set_details(&DataOrderDetails {
        model: a.model.display().to_string(),
        model_weights_sha256: r.model_weights_sha256.clone(),
        model_tokenizer_sha256: r.model_tokenizer_sha256.clone(),
        run_tokenizer_sha256: r.run_tokenizer_sha256.clone(),
        retokenised: r.retokenised,
        data_seed: r.data_seed,
        verdict: r.verdict.clone(),
        batches: r.batches,
        spearman: r.spearman,
        kendall: r.kendall,
        p_value: r.p_value,
        log10_p: r.log10_p,
        method: r.method.clone(),
        report: Some(json_path.display().to_string()),
        plot: Some(png_path.display().to_string()),
    })?;
    ledger.append(e)?;
    eprintln!(
        "data-order result recorded in {} ({} and {})",
        rec.ledger.display(),
        json_path.display(),
        png_path.display()
    );
    Ok(())
}

pub fn run(a: &DataOrderArgs) -> Result<DataOrderReport> {
    let rec = RunRecord::open(&a.run)?;
    let model = jarip_interop::model_dir::load_model_cpu(&a.model)
        .with_context(|| format!("--model {}: cannot load it", a.model.display()))?;
    let opts = DataOrderOptions {
        batches: a.batches,
        windows_per_batch: a.windows_per_batch,
        alpha: a.alpha,
        permutations: a.permutations,
        seed: a.seed,
    };
    let r = data_order::run_test(&rec, &model, &a.model.display().to_string(), &opts, !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    if !a.no_ledger {
        record(&rec, &r, a)?;
    }
    Ok(r)
}
