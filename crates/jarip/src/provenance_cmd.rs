//! `jarip provenance verify|card` and `jarip lineage`: flags onto [`jarip_provenance`], and the
//! way their results are printed. A failed check is an error, so the process exits non-zero.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use jarip_ledger::records::{LineageConfig, LineageDetails, LineageModel};
use jarip_provenance::calibrate::{lineage_paths, LineageOptions, LineageReport};
use jarip_provenance::independence::{self, fmt_p, TestOptions, TestReport};
use jarip_provenance::verify::{Report, VerifyOptions};
use jarip_provenance::weights::WeightSource;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ProvenanceCommand {
    /// Check a run's ledger chain, every recorded file hash, the shards' Merkle root, the
    /// re-initialisation from the recorded seed, the continuity of training, and (with
    /// --replay) that re-running training reproduces a checkpoint bit for bit. Prints PASS or
    /// FAIL per check; exits non-zero if any check fails.
    Verify(VerifyArgs),
    /// Write MODEL_CARD.md and model_card.json: what was built from scratch, with the evidence
    /// from the ledger and the command that re-checks it.
    Card(CardArgs),
    /// Test whether a model's weights carry the trace of this run's recorded data order:
    /// recorded training batches are scored under the model and Spearman's ρ of their loss
    /// against the step is tested (a permutation test, exact under the null). Verdict
    /// `trained-on-this-order` when p < --alpha, else `not-shown`.
    DataOrder(crate::data_order_cmd::DataOrderArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Run directory (holding ledger.jsonl) or the ledger file.
    pub run: PathBuf,
    /// Replay checkpoint interval K: from checkpoint K to K+1, checkpoints numbered from 1 in
    /// ledger order, 0 meaning the seeded initialisation. Repeatable.
    #[arg(long = "replay", value_name = "K")]
    pub replay: Vec<usize>,
    /// Replay fine-tuning interval K: from SFT checkpoint K to K+1, 0 meaning the base
    /// checkpoint. Repeatable.
    #[arg(long = "replay-sft", value_name = "K")]
    pub replay_sft: Vec<usize>,
    /// Replay every recorded checkpoint interval, pretraining and fine-tuning.
    #[arg(long)]
    pub replay_all: bool,
    /// Accept checkpoint directories removed whole by --keep-checkpoints (all but the last).
    #[arg(long)]
    pub allow_pruned: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CardArgs {
    /// Run directory (holding ledger.jsonl).
    pub run: PathBuf,
    /// Where to write the card (default: the run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the card's JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LineageArgs {
    /// Model A: a jarip checkpoint or run directory, an HF-layout model directory (sharded
    /// safetensors with model.safetensors.index.json, or single files), or a .safetensors file.
    pub a: PathBuf,
    /// Model B, in any of the same forms.
    pub b: PathBuf,
    /// Print the full report as JSON (`verdict`: derived, unrelated or inconclusive, with
    /// `p_value`, `log10_p`, `alpha`, `power`, `rho_min`, per-layer and per-group entries).
    #[arg(long)]
    pub json: bool,
    /// False-positive rate of `derived`: the verdict is derived when the combined p < alpha.
    #[arg(long, default_value_t = 1e-6)]
    pub alpha: f64,
    /// Units of A tested per group (a fixed stride over each layer's units).
    #[arg(long, default_value_t = 512)]
    pub units: usize,
    /// Shared tokens in each half (alignment, test) of the residual-channel group.
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Seed of the Monte Carlo permutations (groups of fewer than 256 units).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Also compute the descriptive scores of earlier versions (mean-centred Pearson, CKA,
    /// token-space invariants) and their references (independent seeds, a fine-tuned copy):
    /// context only, never the verdict. Loads both models as f32: small models only.
    #[arg(long)]
    pub references: bool,
    /// AdamW steps of the fine-tuned reference (with --references, jarip models).
    #[arg(long, default_value_t = 10)]
    pub ref_steps: usize,
    /// Learning rate of the fine-tuned reference (with --references).
    #[arg(long, default_value_t = 1e-4)]
    pub ref_lr: f64,
    /// Append the result to this run's ledger (RUN/ledger.jsonl), with the JSON report and the
    /// per-layer plot written to RUN/lineage/, so `provenance card RUN` shows it.
    #[arg(long, value_name = "RUN")]
    pub record: Option<PathBuf>,
    /// Write the per-layer evidence plot (PNG) here.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn print_report(r: &Report) {
    for c in &r.checks {
        println!("{}  {}: {}", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    println!(
        "{} of {} checks passed; {} entries; {:.1} MB hashed in {:.2} s",
        r.checks.iter().filter(|c| c.pass).count(),
        r.checks.len(),
        r.entries,
        r.bytes_hashed as f64 / 1e6,
        r.seconds
    );
}

pub fn verify(a: &VerifyArgs) -> Result<()> {
    let opts = VerifyOptions {
        replay: a.replay.clone(),
        replay_sft: a.replay_sft.clone(),
        replay_all: a.replay_all,
        allow_pruned: a.allow_pruned,
    };
    let r = jarip_provenance::verify::verify(&a.run, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    let failed = r.failed();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
        bail!("{}: {} of {} checks failed: {}", a.run.display(), failed.len(), r.checks.len(), names.join(", "));
    }
    Ok(())
}

pub fn card(a: &CardArgs) -> Result<()> {
    let (md, js, c) = jarip_provenance::card::write_card(&a.run, a.out.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c.json)?);
    }
    eprintln!("model card → {} and {}", md.display(), js.display());
    if !c.verified {
        bail!("the card was written, but some checks fail (listed in the card): its claims are not verified");
    }
    Ok(())
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:.3}"))
}

fn print_references(r: &LineageReport) {
    let c = &r.comparison;
    println!("\ncontext (descriptive scores, not the decision; --references):");
    println!("{:<8} {:>7} {:>10} {:>8} {:>8} {:>10}", "layer", "tensors", "similarity", "pearson", "cka", "invariant");
    for l in &c.layers {
        let name = l.layer.map_or("outer".to_string(), |i| i.to_string());
        println!(
            "{:<8} {:>7} {:>10.3} {:>8} {:>8} {:>10}",
            name,
            l.tensors,
            l.similarity,
            fmt(l.pearson),
            fmt(l.invariant.and(l.cka)),
            fmt(l.invariant)
        );
    }
    println!("score {:.3}; references computed now, at A's shapes:", r.score);
    for x in &r.references {
        println!("  {:<9} {:.3}  {}", x.kind, x.score, x.how);
    }
    for w in &r.warnings {
        println!("note: {w}");
    }
}

fn print_test(r: &TestReport) {
    println!("A: {}\nB: {}", r.a, r.b);
    if let Some(res) = &r.residual {
        println!(
            "residual channels: {} of A, {} of B; {}; {:.0}% matched to the same index, mean |r| {:.3}",
            res.channels_a,
            res.channels_b,
            res.how,
            res.same_index * 100.0,
            res.mean_match_corr
        );
    }
    println!("\n{:<7} {:>6} {:>11} {:>12}", "layer", "groups", "similarity", "log10 p");
    for l in &r.layers {
        let name = l.layer.map_or("outer".to_string(), |i| i.to_string());
        println!("{:<7} {:>6} {:>11.4} {:>12.2}", name, l.groups, l.similarity, l.log10_p);
    }
    println!(
        "\n{:<36} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "group (tensor of A)", "units", "tested", "matched", "null", "z", "log10 p"
    );
    for g in &r.groups {
        let name = format!("{}{}", g.layer.map_or(String::new(), |l| format!("{l}.")), g.kind);
        println!(
            "{:<36} {:>7} {:>7} {:>8.4} {:>8.4} {:>8.2} {:>9.2}",
            name, g.units_a, g.tested_units, g.matched_corr, g.null_corr, g.z, g.log10_p
        );
    }
    for (who, list) in [("A", &r.unmatched_a), ("B", &r.unmatched_b)] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(8).map(String::as_str).collect();
            println!(
                "\nnot tested in {who} ({}): {}{}",
                list.len(),
                shown.join(", "),
                if list.len() > 8 { ", …" } else { "" }
            );
        }
    }
    for w in &r.warnings {
        println!("\nwarning: {w}");
    }
    println!();
    for reason in &r.reasons {
        println!("- {reason}");
    }
    println!(
        "\nverdict: {} (α = {:e}, p = {}, log10 p = {:.2}; {:.1} GB read in {:.1} s)",
        r.verdict,
        r.alpha,
        fmt_p(r.log10_p),
        r.log10_p,
        r.bytes_read as f64 / 1e9,
        r.seconds
    );
}

/// The per-layer evidence as a PNG: −log10 p of each block next to −log10 α, on a log axis
/// (log10 of 1 + −log10 p), so blocks at 10⁻⁴⁰⁰⁰⁰ and blocks at 0.3 both read.
fn plot(r: &TestReport, path: &std::path::Path) -> Result<()> {
    use jarip_eval::report::charts::{plain, write, Chart, Series};
    let y = |log10_p: f64| (1.0 - log10_p.min(0.0)).log10();
    let pts: Vec<(f64, f64)> = r.layers.iter().filter_map(|l| l.layer.map(|i| (i as f64, y(l.log10_p)))).collect();
    let pts = if pts.is_empty() { r.layers.iter().map(|l| (0.0, y(l.log10_p))).collect() } else { pts };
    let x0 = pts.first().map_or(0.0, |p| p.0);
    let x1 = pts.last().map_or(1.0, |p| p.0).max(x0 + 1.0);
    let chart = Chart {
        title: format!("lineage: {} (log10 p = {:.1})", r.verdict, r.log10_p),
        x_label: "block".into(),
        y_label: "log10(1 + (−log10 p))".into(),
        series: vec![
            Series { name: "block (Fisher over its groups)".into(), points: pts },
            Series {
                name: format!("α = {:e}", r.alpha),
                points: vec![(x0, y(r.alpha.log10())), (x1, y(r.alpha.log10()))],
            },
        ],
        x_format: plain,
        y_format: plain,
    };
    write(path, &chart)
}

/// Short fingerprint of a model on disk: SHA-256 over its safetensors headers (names, dtypes,
/// shapes, offsets) and sizes, cheap at any size.
fn header_fingerprint(src: &WeightSource) -> Result<String> {
    use std::io::Read;
    let mut h = jarip_ledger::Sha256Writer::new(std::io::sink());
    for f in &src.files {
        let mut file = std::fs::File::open(f)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)?;
        let n = u64::from_le_bytes(len).min(100 << 20);
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)?;
        std::io::Write::write_all(&mut h, &header)?;
        std::io::Write::write_all(&mut h, &file.metadata()?.len().to_le_bytes())?;
    }
    Ok(h.finish().1)
}

/// Appends the result to RUN's ledger, with the report and plot in RUN/lineage/.
fn record(run: &std::path::Path, r: &TestReport, a: &WeightSource, b: &WeightSource, args: &LineageArgs) -> Result<()> {
    use jarip_ledger::{Entry, FileRef, Ledger};
    // Absolute paths in the entry: a copy of the run is then checked against its own files.
    let run = &std::fs::canonicalize(run).with_context(|| format!("--record {}: no such run", run.display()))?;
    let ledger_path = if run.is_file() { run.to_path_buf() } else { run.join("ledger.jsonl") };
    if !ledger_path.is_file() {
        bail!("{}: no ledger to record the lineage result in (give the run directory)", ledger_path.display());
    }
    let dir = ledger_path.parent().unwrap_or(std::path::Path::new(".")).join("lineage");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ledger = Ledger::at(&ledger_path);
    let seq = ledger.entries()?.len();
    let stem = format!("lineage-{seq:04}");
    let json_path = dir.join(format!("{stem}.json"));
    jarip_ledger::atomic_write(&json_path, serde_json::to_string_pretty(r)?.as_bytes())?;
    let png_path = dir.join(format!("{stem}.png"));
    plot(r, &png_path)?;
    let mut e = Entry::new("lineage");
    e.outputs = vec![FileRef::of_file(&json_path)?, FileRef::of_file(&png_path)?];
    e.set_config(&LineageConfig { alpha: args.alpha, units: args.units, tokens: args.tokens, seed: args.seed })?;
    let model = |s: &WeightSource| -> Result<LineageModel> {
        Ok(LineageModel {
            path: s.dir.display().to_string(),
            parameters: Some(s.num_params()),
            weight_bytes: Some(s.weight_bytes()),
            header_sha256: Some(header_fingerprint(s)?),
        })
    };
    e.set_details(&LineageDetails {
        a: model(a)?,
        b: model(b)?,
        verdict: r.verdict.to_string(),
        p_value: r.p_value,
        log10_p: r.log10_p,
        alpha: r.alpha,
        power: r.power,
        power_rho: r.power_rho,
        rho_min: r.rho_min,
        groups: Some(r.groups.len()),
        method: Some(r.method.clone()),
        report: Some(json_path.display().to_string()),
        plot: Some(png_path.display().to_string()),
    })?;
    ledger.append(e)?;
    eprintln!("lineage recorded in {} ({} and {})", ledger_path.display(), json_path.display(), png_path.display());
    Ok(())
}

pub fn lineage(a: &LineageArgs) -> Result<()> {
    let opts = TestOptions { alpha: a.alpha, units: a.units, tokens: a.tokens, seed: a.seed, ..Default::default() };
    if !(a.alpha > 0.0 && a.alpha < 1.0) {
        bail!("--alpha {} must lie strictly between 0 and 1", a.alpha);
    }
    if a.units < 2 || a.tokens < 8 {
        bail!("--units must be at least 2 and --tokens at least 8");
    }
    let sa = WeightSource::open(&a.a).with_context(|| format!("model A ({})", a.a.display()))?;
    let sb = WeightSource::open(&a.b).with_context(|| format!("model B ({})", a.b.display()))?;
    let bar = (!a.quiet && !a.json).then(|| progress(&sa, &sb));
    let result = independence::test(&sa, &sb, &opts);
    if let Some((bar, stop, handle)) = bar {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = handle.join();
        bar.finish_and_clear();
    }
    let r = result?;
    let context = if a.references {
        let o = LineageOptions { ref_steps: a.ref_steps, ref_lr: a.ref_lr, seed: a.seed, ..Default::default() };
        Some(lineage_paths(&a.a, &a.b, &o)?)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(c) = &context {
            v["references"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_test(&r);
        if let Some(c) = &context {
            print_references(c);
        }
    }
    if let Some(p) = &a.plot {
        plot(&r, p)?;
        eprintln!("plot → {}", p.display());
    }
    if let Some(run) = &a.record {
        record(run, &r, &sa, &sb, a)?;
    }
    Ok(())
}

type Ticker = (indicatif::ProgressBar, std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>);

/// A progress bar over the bytes read from both models, ticking from their counters.
fn progress(a: &WeightSource, b: &WeightSource) -> Ticker {
    use std::sync::atomic::{AtomicBool, Ordering};
    let total = a.weight_bytes() + b.weight_bytes();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} read ({bytes_per_sec})  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (ca, cb) = (a.progress_counter(), b.progress_counter());
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (bar2, stop2) = (bar.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            bar2.set_position((ca.load(Ordering::Relaxed) + cb.load(Ordering::Relaxed)).min(total));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    (bar, stop, handle)
}
