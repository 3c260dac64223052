//! Encoding throughput for bench/tokenizer: encodes the documents of a JSONL file
//! (`{"text": ...}` per line) with `encode_batch` on a rayon pool of N threads, once cold
//! (fresh piece caches) and then best of `--repeat` warm runs, and prints one JSON line.
//! `--stats FILE` (repeatable) adds bytes/token of each file.
//!
//!   encode_bench --tokenizer DIR --docs FILE.jsonl [--threads 2] [--repeat 3] [--stats FILE]...

use anyhow::{Context, Result};
use jarip_tokenizer::Tokenizer;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut tok_dir, mut docs_path, mut threads, mut repeat, mut stats) = (None, None, 2usize, 3usize, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--tokenizer" => tok_dir = Some(PathBuf::from(val()?)),
            "--docs" => docs_path = Some(PathBuf::from(val()?)),
            "--threads" => threads = val()?.parse()?,
            "--repeat" => repeat = val()?.parse()?,
            "--stats" => stats.push(PathBuf::from(val()?)),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let tok = Tokenizer::load(&tok_dir.context("--tokenizer DIR is required")?)?;
    let mut result = serde_json::json!({ "threads": threads });
    if let Some(path) = docs_path {
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut docs = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            docs.push(v["text"].as_str().context("line without text")?.to_string());
        }
        let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
        let bytes: usize = refs.iter().map(|s| s.len()).sum();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let run = || {
            let t = Instant::now();
            let ids = pool.install(|| tok.encode_batch(&refs));
            (t.elapsed().as_secs_f64(), ids.iter().map(|v| v.len()).sum::<usize>())
        };
        let (cold, tokens) = run();
        let best = (0..repeat).map(|_| run().0).fold(f64::INFINITY, f64::min);
        let mb = bytes as f64 / 1e6;
        result["docs"] = docs.len().into();
        result["bytes"] = bytes.into();
        result["tokens"] = tokens.into();
        result["cold_mb_s"] = (mb / cold).into();
        result["mb_s"] = (mb / best).into();
    }
    let mut per_file = serde_json::Map::new();
    for p in stats {
        let text = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        per_file.insert(p.display().to_string(), serde_json::to_value(tok.stats(&text))?);
    }
    result["stats"] = per_file.into();
    println!("{result}");
    Ok(())
}
