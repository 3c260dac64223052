//! Write one synthetic Hugging-Face-layout model (or a derivative of one) for the lineage tests and
//! benchmarks; see `jarip_provenance::synth`.
//!
//! ```text
//! synth_model OUT_DIR [--spec 7b|tiny|small] [--seed N] [--noise X] [--permute-units]
//!     [--permute-heads] [--permute-channels] [--permute-experts] [--rescale] [--prune F]
//!     [--extend-vocab F] [--derive-seed N] [--layers N] [--hidden N] [--intermediate N]
//!     [--heads N] [--kv-heads N] [--head-dim N] [--vocab N] [--experts N] [--shared-expert]
//!     [--tied] [--shard-mb N]
//! ```
//!
//! Any derivation flag makes the output a derivative of the model `--seed` would give (regenerated,
//! not read); without one it is that model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use jarip_provenance::synth::{write_model, Derive, Spec};

const USAGE: &str = "usage: synth_model OUT_DIR [--spec 7b|tiny|small] [--seed N] [--noise X] [--permute-units] \
[--permute-heads] [--permute-channels] [--permute-experts] [--rescale] [--prune F] [--extend-vocab F] \
[--derive-seed N] [--layers N] [--hidden N] [--intermediate N] [--heads N] [--kv-heads N] [--head-dim N] \
[--vocab N] [--experts N] [--shared-expert] [--tied] [--shard-mb N]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut spec = Spec::tiny();
    let mut seed = 0u64;
    let mut d = Derive::default();
    let mut derived = false;
    let mut sizes: Vec<(String, usize)> = vec![];
    let (mut shared, mut tied, mut shard_mb) = (false, false, None::<u64>);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{a} needs {what}\n{USAGE}"));
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--spec" => {
                spec = match value("7b, tiny or small")?.as_str() {
                    "7b" => Spec::llama7b(),
                    "tiny" => Spec::tiny(),
                    "small" => Spec::small(),
                    other => bail!("unknown spec {other:?} (7b, tiny or small)"),
                }
            }
            "--seed" => seed = value("a number")?.parse().context("--seed")?,
            "--derive-seed" => {
                d.seed = value("a number")?.parse().context("--derive-seed")?;
                derived = true;
            }
            "--noise" => {
                d.noise = value("a number")?.parse().context("--noise")?;
                derived = true;
            }
            "--prune" => {
                d.prune_units = value("a fraction")?.parse().context("--prune")?;
                derived = true;
            }
            "--extend-vocab" => {
                d.extend_vocab = value("a fraction")?.parse().context("--extend-vocab")?;
                derived = true;
            }
            "--permute-units" => (d.permute_units, derived) = (true, true),
            "--permute-heads" => (d.permute_heads, derived) = (true, true),
            "--permute-channels" => (d.permute_channels, derived) = (true, true),
            "--permute-experts" => (d.permute_experts, derived) = (true, true),
            "--rescale" => (d.rescale, derived) = (true, true),
            "--shared-expert" => shared = true,
            "--tied" => tied = true,
            "--shard-mb" => shard_mb = Some(value("a number")?.parse().context("--shard-mb")?),
            "--layers" | "--hidden" | "--intermediate" | "--heads" | "--kv-heads" | "--head-dim" | "--vocab"
            | "--experts" => {
                let n = value("a number")?.parse().with_context(|| a.clone())?;
                sizes.push((a.clone(), n));
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => {
                if out.replace(PathBuf::from(s)).is_some() {
                    bail!("more than one output directory\n{USAGE}");
                }
            }
        }
    }
    let out = out.with_context(|| format!("no output directory\n{USAGE}"))?;
    // Shape options apply to the chosen spec, whatever their order on the command line.
    for (k, n) in sizes {
        match k.as_str() {
            "--layers" => spec.layers = n,
            "--hidden" => spec.hidden = n,
            "--intermediate" => spec.intermediate = n,
            "--heads" => spec.heads = n,
            "--kv-heads" => spec.kv_heads = n,
            "--head-dim" => spec.head_dim = n,
            "--vocab" => spec.vocab = n,
            _ => spec.experts = n,
        }
    }
    spec.shared_expert |= shared;
    spec.tied |= tied;
    if let Some(mb) = shard_mb {
        spec.shard_bytes = mb * 1_000_000;
    }

    let t = Instant::now();
    write_model(&out, &spec, seed, derived.then_some(&d))?;
    let secs = t.elapsed().as_secs_f64();
    let gb = dir_bytes(&out)? as f64 / 1e9;
    println!(
        "{}: {}{} parameters, {gb:.3} GB in {secs:.1} s ({:.3} GB/s)",
        out.display(),
        if derived { format!("derivative ({d:?}) of a model of ") } else { String::new() },
        spec.num_params(),
        gb / secs.max(1e-9)
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}
