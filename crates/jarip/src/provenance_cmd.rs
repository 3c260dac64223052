//! `jarip provenance verify|card` and `jarip lineage`: flags onto [`jarip_provenance`], and the
//! way their results are printed. A failed check is an error, so the process exits non-zero.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use jarip_provenance::calibrate::{lineage_paths, LineageOptions, LineageReport};
use jarip_provenance::verify::{Report, VerifyOptions};
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
    /// Model A: a jarip checkpoint or run directory, an HF-layout model directory, or a
    /// .safetensors file. References are computed at A's shapes.
    pub a: PathBuf,
    /// Model B, in any of the same forms.
    pub b: PathBuf,
    /// Print the full report as JSON (with `verdict`: derived, unrelated or inconclusive).
    #[arg(long)]
    pub json: bool,
    /// AdamW steps of the fine-tuned reference (jarip models).
    #[arg(long, default_value_t = 10)]
    pub ref_steps: usize,
    /// Learning rate of the fine-tuned reference.
    #[arg(long, default_value_t = 1e-4)]
    pub ref_lr: f64,
    /// Seed of the reference models.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
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

fn print_lineage(r: &LineageReport) {
    let c = &r.comparison;
    println!("A: {}\nB: {}", c.a, c.b);
    println!(
        "\n{:<8} {:>7} {:>10} {:>8} {:>8} {:>10}",
        "layer", "tensors", "similarity", "pearson", "cka", "invariant"
    );
    for l in &c.layers {
        let name = l.layer.map_or("outer".to_string(), |i| i.to_string());
        println!(
            "{:<8} {:>7} {:>10.3} {:>8} {:>8} {:>10}",
            name,
            l.tensors,
            l.similarity,
            fmt(l.pearson),
            fmt(l.cka),
            fmt(l.invariant)
        );
    }
    println!(
        "\nmatched {:.0}% of A's parameters; means over weight matrices: |pearson| {}, cka {}, invariant {}, spectrum distance {}",
        c.matched_fraction * 100.0,
        fmt(c.mean_pearson),
        fmt(c.mean_cka),
        fmt(c.mean_invariant),
        fmt(c.mean_spectrum_distance)
    );
    if let Some(t) = &c.token_alignment {
        println!("tokens aligned by {} ({} tokens)", t.how, t.tokens);
    }
    println!("\nreferences (computed now, at A's shapes):");
    for x in &r.references {
        println!("  {:<9} {:.3}  {}", x.kind, x.score, x.how);
    }
    for w in &r.warnings {
        println!("\nwarning: {w}");
    }
    println!();
    for reason in &r.reasons {
        println!("- {reason}");
    }
    println!("\nverdict: {}", r.verdict);
}

pub fn lineage(a: &LineageArgs) -> Result<()> {
    let opts = LineageOptions { ref_steps: a.ref_steps, ref_lr: a.ref_lr, seed: a.seed, ..Default::default() };
    let r = lineage_paths(&a.a, &a.b, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_lineage(&r);
    }
    Ok(())
}
