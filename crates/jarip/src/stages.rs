//! One function per pipeline stage: parse-free options in, the stage crate called, the
//! stage's entry appended to the run's hash-chained ledger.
//!
//! The ledger of a stage whose output is `DIR` is `DIR/../ledger.jsonl` unless `--ledger`
//! names another, so that every stage of one run (`RUN/prepared`, `RUN/tokenizer`,
//! `RUN/shards`, `RUN/ckpt-*`) chains into `RUN/ledger.jsonl`.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use jarip_data::{DocumentSource, IngestOptions, OnInvalid};
use jarip_ledger::{Entry, FileRef, Ledger, Manifest};
use jarip_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnInvalidArg {
    Skip,
    Fail,
}

/// How input documents are read (shared by prepare, tokenizer train and shard).
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Input files, directories or glob patterns (.txt, .jsonl, .parquet, optionally .gz/.zst,
    /// or a prepared directory).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// JSONL field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// What to do with a document that cannot be read (invalid UTF-8, malformed JSON line).
    #[arg(long, value_enum, default_value = "fail")]
    pub on_invalid: OnInvalidArg,
}

impl InputArgs {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        Self { inputs, text_field: "text".into(), on_invalid: OnInvalidArg::Fail }
    }

    fn source(&self) -> Result<DocumentSource> {
        let opts = IngestOptions {
            text_field: self.text_field.clone(),
            on_invalid: match self.on_invalid {
                OnInvalidArg::Skip => OnInvalid::Skip,
                OnInvalidArg::Fail => OnInvalid::Fail,
            },
            ..Default::default()
        };
        DocumentSource::new(&self.inputs, opts)
    }
}

/// Ledger file for a stage writing `out`, unless one was named.
pub(crate) fn ledger_for(out: &Path, named: &Option<PathBuf>) -> Ledger {
    let path = match named {
        Some(p) => p.clone(),
        None => match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join("ledger.jsonl"),
            _ => PathBuf::from("ledger.jsonl"),
        },
    };
    Ledger::at(&path)
}

/// Output references of an artifact directory, from its manifest.
fn outputs_of(dir: &Path) -> Result<Vec<FileRef>> {
    let m = Manifest::read(dir)?;
    Ok(m.files
        .iter()
        .map(|(name, f)| FileRef {
            path: dir.join(name).display().to_string(),
            sha256: f.sha256.clone(),
            bytes: Some(f.bytes),
        })
        .collect())
}

/// Every input file with its hash, size and stated licence (see [`jarip_data::licence`]).
fn data_sources(
    source: &DocumentSource,
    rules: &[jarip_data::licence::LicenceRule],
) -> Result<Vec<jarip_ledger::records::DataSource>> {
    let mut resolver = jarip_data::licence::Resolver::new(rules);
    source
        .files()
        .iter()
        .map(|f| {
            let r = FileRef::of_file(&f.path)?;
            let stated = resolver.resolve(&f.path)?;
            Ok(jarip_ledger::records::DataSource {
                path: r.path,
                sha256: r.sha256,
                bytes: r.bytes.unwrap_or(0),
                licence: stated.as_ref().map(|s| s.spdx.clone()),
                licence_from: stated.map(|s| s.from),
            })
        })
        .collect()
}

fn input_refs(source: &DocumentSource) -> Result<Vec<FileRef>> {
    source.files().iter().map(|f| FileRef::of_file(&f.path)).collect()
}

// ---------------------------------------------------------------------------------------------
// data prepare

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output directory (documents*.jsonl, summary.json, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Documents with fewer characters after cleaning are dropped.
    #[arg(long, default_value_t = 32)]
    pub min_chars: usize,
    /// Estimated Jaccard similarity at or above which a document is a near duplicate.
    #[arg(long, default_value_t = 0.8)]
    pub near_dup_threshold: f64,
    /// Keep near duplicates (exact duplicates are still removed).
    #[arg(long)]
    pub no_near_dedup: bool,
    /// The licence of matching inputs as PATH_OR_GLOB=SPDX (repeatable; the first match wins,
    /// then a licences.json beside the data): recorded per input file in the ledger and listed
    /// by `provenance card`.
    #[arg(long = "licence", value_name = "PATH_OR_GLOB=SPDX")]
    pub licences: Vec<jarip_data::licence::LicenceRule>,
    /// Ledger to append to (default: OUT/../ledger.jsonl).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
}

impl PrepareArgs {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf, ledger: Option<PathBuf>) -> Self {
        Self {
            input: InputArgs::new(inputs),
            out,
            min_chars: 32,
            near_dup_threshold: 0.8,
            no_near_dedup: false,
            licences: vec![],
            ledger,
        }
    }
}

pub fn prepare(a: &PrepareArgs) -> Result<jarip_data::PrepareSummary> {
    if !(0.0..=1.0).contains(&a.near_dup_threshold) {
        bail!("--near-dup-threshold must be between 0 and 1, got {}", a.near_dup_threshold);
    }
    let source = a.input.source()?;
    let sources = data_sources(&source, &a.licences)?;
    let mut opts = jarip_data::PrepareOptions::default();
    opts.clean.min_chars = a.min_chars;
    opts.dedup.threshold = a.near_dup_threshold;
    opts.dedup.near = !a.no_near_dedup;
    let s = jarip_data::prepare(&source, &a.out, &opts)?;
    println!(
        "prepared {} → {} documents ({:.1} → {:.1} MB): {} exact and {} near duplicates, {} too short, {} invalid; \
         Hangul {:.1}%, Latin {:.1}%, other {:.1}%; {:.1} MB/s",
        s.documents_in,
        s.documents_out,
        s.bytes_in as f64 / 1e6,
        s.bytes_out as f64 / 1e6,
        s.exact_duplicates,
        s.near_duplicates,
        s.dropped_too_short + s.dropped_empty,
        s.invalid_skipped,
        100.0 * s.share_hangul,
        100.0 * s.share_latin,
        100.0 * s.share_other,
        s.mb_per_s
    );
    let unstated = sources.iter().filter(|s| s.licence.is_none()).count();
    let mut by_licence: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for src in &sources {
        let e = by_licence.entry(src.licence.as_deref().unwrap_or("not stated")).or_default();
        e.0 += 1;
        e.1 += src.bytes;
    }
    let listed: Vec<String> =
        by_licence.iter().map(|(l, (n, b))| format!("{l}: {n} files, {:.1} MB", *b as f64 / 1e6)).collect();
    println!("licences: {}", listed.join("; "));
    if unstated > 0 {
        eprintln!(
            "warning: {unstated} of {} input files have no stated licence (give --licence PATH_OR_GLOB=SPDX, or a {} beside the data)",
            sources.len(),
            jarip_data::licence::LICENCES_FILE
        );
    }
    let mut e = Entry::new("prepare");
    e.inputs = sources
        .iter()
        .map(|s| FileRef { path: s.path.clone(), sha256: s.sha256.clone(), bytes: Some(s.bytes) })
        .collect();
    e.outputs = outputs_of(&a.out)?;
    e.config = serde_json::to_value(&opts)?;
    e.details = serde_json::to_value(&s)?;
    if let Some(d) = e.details.as_object_mut() {
        d.insert("sources".into(), serde_json::to_value(&sources)?);
    }
    ledger_for(&a.out, &a.ledger).append(e)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// tokenizer train

#[derive(Args, Debug, Clone)]
pub struct TokenizerTrainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output directory (tokenizer.json, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Vocabulary size, including the 256 byte tokens and the special tokens.
    #[arg(long, default_value_t = 32768)]
    pub vocab_size: usize,
    /// Pre-tokenization split: jarip (Hangul runs as letters, digits in groups of up to 3), gpt2,
    /// gpt4 (= llama3: llama.cpp knows it as llama-bpe, so a GGUF export tokenizes text there
    /// exactly as jarip does; llama.cpp has no name for jarip's own split).
    #[arg(long, default_value = "jarip")]
    pub preset: String,
    /// Ledger to append to (default: OUT/../ledger.jsonl).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
}

impl TokenizerTrainArgs {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf, vocab_size: usize, ledger: Option<PathBuf>) -> Self {
        Self { input: InputArgs::new(inputs), out, vocab_size, preset: "jarip".into(), ledger }
    }
}

pub fn tokenizer_train(a: &TokenizerTrainArgs) -> Result<()> {
    let source = a.input.source()?;
    let inputs = input_refs(&source)?;
    let cfg = jarip_tokenizer::TrainConfig {
        vocab_size: a.vocab_size,
        preset: jarip_tokenizer::Preset::from_name(&a.preset)?,
        ..Default::default()
    };
    // A read error ends the document stream and is reported, never silently truncates it.
    let mut read_error = None;
    let docs = source.iter().map_while(|d| match d {
        Ok(d) => Some(d.text),
        Err(e) => {
            read_error = Some(e);
            None
        }
    });
    let t0 = std::time::Instant::now();
    let trained = jarip_tokenizer::train(docs, &cfg);
    if let Some(e) = read_error {
        return Err(e);
    }
    let trained = trained?;
    trained.save(&a.out, inputs.clone())?;
    println!(
        "trained tokenizer: vocab {} in {:.1}s → {}",
        trained.vocab_size(),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    let mut e = Entry::new("tokenizer-train");
    e.inputs = inputs;
    e.outputs = outputs_of(&a.out)?;
    e.set_config(&jarip_ledger::records::TokenizerTrainConfig { vocab_size: a.vocab_size, preset: a.preset.clone() })?;
    ledger_for(&a.out, &a.ledger).append(e)?;
    Ok(())
}

pub fn encode(tokenizer: &Path, input: &Path, json: bool) -> Result<()> {
    let tok = Tokenizer::load_any(tokenizer)?;
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let ids = tok.encode_bytes(&bytes);
    if json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

pub fn stats(tokenizer: &Path, input: &Path, json: bool) -> Result<()> {
    let tok = Tokenizer::load_any(tokenizer)?;
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let s = tok.stats(&bytes);
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("{} bytes, {} tokens, {:.3} bytes/token", s.bytes, s.tokens, s.bytes_per_token);
    }
    Ok(())
}

/// Compression of `tokenizer` over every file under `dir` together.
pub fn stats_of_dir(tokenizer: &Path, dir: &Path) -> Result<jarip_tokenizer::Stats> {
    let tok = Tokenizer::load(tokenizer)?;
    let source = DocumentSource::new(&[dir], IngestOptions::default())?;
    let (mut bytes, mut tokens) = (0u64, 0u64);
    for d in source.iter() {
        let d = d?;
        bytes += d.text.len() as u64;
        tokens += tok.encode(&d.text).len() as u64;
    }
    Ok(jarip_tokenizer::Stats { bytes, tokens, bytes_per_token: bytes as f64 / tokens.max(1) as f64 })
}

// ---------------------------------------------------------------------------------------------
// data shard

#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// Tokenizer directory.
    #[arg(long)]
    pub tokenizer: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Output directory (train-*.bin, val-*.bin, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Share of documents held out for validation.
    #[arg(long, default_value_t = 0.01)]
    pub val_fraction: f64,
    /// Seed of the train/validation assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    pub tokens_per_shard: u64,
    /// Write training documents that are mostly Hangul this many times (upweights scarce Korean).
    #[arg(long, default_value_t = 1)]
    pub hangul_repeat: u32,
    /// Ledger to append to (default: OUT/../ledger.jsonl).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
}

impl ShardArgs {
    pub fn new(tokenizer: PathBuf, inputs: Vec<PathBuf>, out: PathBuf, ledger: Option<PathBuf>) -> Self {
        Self {
            tokenizer,
            input: InputArgs::new(inputs),
            out,
            val_fraction: 0.01,
            seed: 0,
            tokens_per_shard: 100_000_000,
            hangul_repeat: 1,
            ledger,
        }
    }
}

pub fn shard(a: &ShardArgs) -> Result<jarip_data::ShardSummary> {
    let tok = Tokenizer::load(&a.tokenizer)?;
    let source = a.input.source()?;
    let opts = jarip_data::ShardOptions {
        val_fraction: a.val_fraction,
        seed: a.seed,
        tokens_per_shard: a.tokens_per_shard,
        hangul_repeat: a.hangul_repeat.max(1),
        ..Default::default()
    };
    let s = jarip_data::write_shards(&tok, &source, &a.out, &opts)?;
    println!(
        "sharded: train {} tokens in {} documents, val {} tokens in {} documents ({:?}); {:.0} tokens/s → {}",
        s.train.tokens,
        s.train.documents,
        s.val.tokens,
        s.val.documents,
        s.dtype,
        s.tokens_per_s,
        a.out.display()
    );
    let mut e = Entry::new("shard");
    e.inputs = input_refs(&source)?;
    e.inputs.push(FileRef::of_file(&a.tokenizer.join("tokenizer.json"))?);
    e.outputs = outputs_of(&a.out)?;
    e.config = serde_json::to_value(&opts)?;
    e.seed = Some(a.seed);
    e.details = serde_json::to_value(&s)?;
    ledger_for(&a.out, &a.ledger).append(e)?;
    Ok(s)
}
