//! A stand-in for the two `jarip tokenizer` commands whose interface is fixed, so the HF
//! compatibility test and the benchmark can run before the real CLI exists:
//!
//!   tokenizer_cli tokenizer train INPUT... --vocab-size N --out DIR [--preset P] [--min-frequency F]
//!   tokenizer_cli tokenizer encode --tokenizer DIR --input FILE --json

use anyhow::{bail, Context, Result};
use jarip_tokenizer::{corpus, Preset, Tokenizer, TrainConfig};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.as_slice() {
        [t, cmd, rest @ ..] if t == "tokenizer" => (cmd.as_str(), rest),
        _ => bail!("usage: tokenizer_cli tokenizer (train|encode) ..."),
    };
    let mut flags = std::collections::HashMap::new();
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => {
                flags.insert("json", String::new());
            }
            f @ ("--vocab-size" | "--out" | "--preset" | "--min-frequency" | "--tokenizer" | "--input") => {
                flags.insert(&f[2..], it.next().with_context(|| format!("{f} needs a value"))?.clone());
            }
            f if f.starts_with("--") => bail!("unknown flag {f}"),
            p => positional.push(PathBuf::from(p)),
        }
    }
    match cmd {
        "train" => {
            let mut cfg = TrainConfig::default();
            if let Some(v) = flags.get("vocab-size") {
                cfg.vocab_size = v.parse().context("--vocab-size")?;
            }
            if let Some(v) = flags.get("min-frequency") {
                cfg.min_frequency = v.parse().context("--min-frequency")?;
            }
            if let Some(v) = flags.get("preset") {
                cfg.preset = Preset::from_name(v)?;
            }
            let out = PathBuf::from(flags.get("out").context("--out DIR is required")?);
            let tok = corpus::train_files(&positional, &cfg)?;
            tok.save(&out, Vec::new())?;
            eprintln!("tokenizer: vocab {} sha256 {} -> {}", tok.vocab_size(), tok.sha256(), out.display());
        }
        "encode" => {
            let tok = Tokenizer::load(&PathBuf::from(flags.get("tokenizer").context("--tokenizer DIR is required")?))?;
            let input = PathBuf::from(flags.get("input").context("--input FILE is required")?);
            let bytes = std::fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let ids = tok.encode_bytes(&bytes);
            if flags.contains_key("json") {
                println!("{}", serde_json::json!({ "ids": ids }));
            } else {
                println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
            }
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}
