//! `data prepare`: ingest → clean → dedup → a prepared-corpus directory.
//!
//! Output directory (built under a temporary name and renamed into place only when complete; an
//! existing directory is replaced only if it is empty or itself a prepared corpus):
//! - `documents.jsonl`: one `{"text": "..."}` per line, in input order. When the output exceeds
//!   `max_output_file_bytes` it is instead split into `documents-00000.jsonl`, `documents-00001.jsonl`,
//!   ... to be read in name order ([`crate::ingest::prepared_files`] does that);
//! - `summary.json`: [`PrepareSummary`];
//! - `manifest.json`: kind `prepared-corpus`, every input file with its SHA-256, the settings and
//!   the summary figures.
//!
//! Work is split three ways: a reader thread streams batches of documents (bounded channel, so
//! memory stays at a few batches), rayon cleans and signs each batch in parallel, and the calling
//! thread makes the dedup decisions in document order and writes, so output is deterministic.

use crate::clean::{clean_text, CleanOptions, Cleaned};
use crate::dedup::{DedupDecision, DedupOptions, Deduper, Signature};
use crate::ingest::{DocumentSource, IngestStats};
use crate::script::ScriptCounts;
use anyhow::{Context, Result};
use jarip_ledger::{atomic_write, AtomicDir, FileRef, Manifest};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

pub const SUMMARY_FILE: &str = "summary.json";
pub const PREPARED_KIND: &str = "prepared-corpus";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareOptions {
    pub clean: CleanOptions,
    pub dedup: DedupOptions,
    /// A documents file is closed once it holds this many bytes; the next one is started.
    pub max_output_file_bytes: u64,
    /// Documents are read and processed in batches of about this many bytes.
    pub batch_bytes: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            clean: CleanOptions::default(),
            dedup: DedupOptions::default(),
            max_output_file_bytes: 1 << 30,
            batch_bytes: 8 << 20,
        }
    }
}

/// Figures of one `prepare` run, written to `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub input_files: usize,
    /// Files inside input directories that were not read (unknown extension).
    pub skipped_files: Vec<String>,
    pub documents_in: u64,
    /// UTF-8 bytes of the documents as read, before cleaning.
    pub bytes_in: u64,
    pub documents_out: u64,
    /// UTF-8 bytes of the cleaned text written (not counting JSON syntax).
    pub bytes_out: u64,
    pub dropped_empty: u64,
    pub dropped_too_short: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub invalid_skipped: u64,
    /// Character counts of the output by script (see [`crate::script`]).
    pub chars: ScriptCounts,
    /// Shares among non-whitespace output characters.
    pub share_hangul: f64,
    pub share_latin: f64,
    pub share_other: f64,
    pub lsh_bands: usize,
    pub lsh_rows: usize,
    pub output_files: Vec<String>,
    pub elapsed_s: f64,
    /// Input megabytes (10^6 bytes) per second of wall time.
    pub mb_per_s: f64,
    /// The first warnings (invalid documents skipped).
    pub warnings: Vec<String>,
}

#[derive(Serialize)]
struct TextLine<'a> {
    text: &'a str,
}

/// Writes `{"text":...}` lines, starting a new numbered file past the size limit.
struct RollingWriter {
    dir: PathBuf,
    max_bytes: u64,
    current: Option<(BufWriter<File>, u64)>,
    names: Vec<String>,
}

impl RollingWriter {
    fn part_name(i: usize) -> String {
        format!("documents-{i:05}.jsonl")
    }

    fn write(&mut self, text: &str) -> Result<()> {
        if self.current.as_ref().is_some_and(|(_, n)| *n >= self.max_bytes) {
            self.close()?;
        }
        if self.current.is_none() {
            let name = Self::part_name(self.names.len());
            let path = self.dir.join(&name);
            let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            self.current = Some((BufWriter::with_capacity(1 << 20, f), 0));
            self.names.push(name);
        }
        let (w, n) = self.current.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(&TextLine { text })?;
        line.push(b'\n');
        w.write_all(&line).with_context(|| format!("cannot write to {}", self.dir.display()))?;
        *n += line.len() as u64;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((mut w, _)) = self.current.take() {
            w.flush().with_context(|| format!("cannot write to {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Closes the last file; a single part (or none) becomes plain `documents.jsonl`.
    fn finish(mut self) -> Result<Vec<String>> {
        self.close()?;
        if self.names.len() <= 1 {
            let single = self.dir.join("documents.jsonl");
            match self.names.first() {
                Some(n) => std::fs::rename(self.dir.join(n), &single)
                    .with_context(|| format!("cannot rename into {}", single.display()))?,
                None => {
                    File::create(&single).with_context(|| format!("cannot create {}", single.display()))?;
                }
            }
            return Ok(vec!["documents.jsonl".into()]);
        }
        Ok(self.names)
    }
}

/// One document after the parallel part of the work.
struct Processed {
    cleaned: Cleaned,
    signature: Option<Signature>,
    chars: ScriptCounts,
}

/// Streams documents of `source` through the reader thread in batches of about `batch_bytes`,
/// calling `each` on the calling thread. Returns the reader's statistics.
pub(crate) fn for_each_batch(
    source: &DocumentSource,
    batch_bytes: usize,
    mut each: impl FnMut(Vec<String>) -> Result<()>,
) -> Result<IngestStats> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<Vec<String>>>(2);
        let reader = scope.spawn(move || {
            let mut it = source.iter();
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            for doc in it.by_ref() {
                match doc {
                    Ok(d) => {
                        bytes += d.text.len();
                        batch.push(d.text);
                        if bytes >= batch_bytes || batch.len() >= 65536 {
                            if tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                                return it.stats().clone();
                            }
                            bytes = 0;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return it.stats().clone();
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch));
            }
            it.stats().clone()
        });
        for batch in rx {
            // Returning early drops the receiver, which stops the reader at its next send.
            each(batch?)?;
        }
        Ok(reader.join().expect("reader thread panicked"))
    })
}

/// Hashes the input files on a background thread while the caller works; `cancel` stops it
/// between files when the caller fails.
fn hash_inputs(paths: Vec<PathBuf>, cancel: &AtomicBool) -> Result<Vec<FileRef>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("cancelled");
        }
        out.push(FileRef::of_file(&p)?);
    }
    Ok(out)
}

/// Refuses to replace `dir` unless it is absent, empty, or an artifact of `kind` (so a mistyped
/// output path never deletes unrelated files when the new directory is renamed into place).
pub(crate) fn check_replaceable(dir: &Path, kind: &str) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?.next().is_none();
    if empty || Manifest::read(dir).is_ok_and(|m| m.kind == kind) {
        return Ok(());
    }
    anyhow::bail!("{} exists and is not a {kind} directory; refusing to replace it", dir.display())
}

/// Runs the whole stage; see the module doc for what `out_dir` will hold.
pub fn prepare(source: &DocumentSource, out_dir: &Path, opts: &PrepareOptions) -> Result<PrepareSummary> {
    let start = Instant::now();
    check_replaceable(out_dir, PREPARED_KIND)?;
    let dir = AtomicDir::create(out_dir)?;
    let mut deduper = Deduper::new(&opts.dedup)?;
    let hasher = deduper.hasher();
    let mut writer = RollingWriter {
        dir: dir.path().to_path_buf(),
        max_bytes: opts.max_output_file_bytes.max(1),
        current: None,
        names: vec![],
    };
    let mut s = PrepareSummary { input_files: source.files().len(), ..Default::default() };
    (s.lsh_bands, s.lsh_rows) = if opts.dedup.near { deduper.banding() } else { (0, 0) };
    s.skipped_files = source.skipped().iter().map(|p| p.display().to_string()).collect();

    let cancel = AtomicBool::new(false);
    let (ingest, inputs) = std::thread::scope(|scope| -> Result<_> {
        let paths: Vec<PathBuf> = source.files().iter().map(|f| f.path.clone()).collect();
        let hashing = scope.spawn(|| hash_inputs(paths, &cancel));
        let result = for_each_batch(source, opts.batch_bytes, |batch| {
            let processed: Vec<Processed> = batch
                .par_iter()
                .map(|text| match clean_text(text, &opts.clean) {
                    Cleaned::Kept(t) => Processed {
                        signature: Some(hasher.signature(&t)),
                        chars: ScriptCounts::of(&t),
                        cleaned: Cleaned::Kept(t),
                    },
                    other => Processed { cleaned: other, signature: None, chars: ScriptCounts::default() },
                })
                .collect();
            drop(batch);
            for p in processed {
                match p.cleaned {
                    Cleaned::Empty => s.dropped_empty += 1,
                    Cleaned::TooShort => s.dropped_too_short += 1,
                    Cleaned::Kept(text) => match deduper.decide(p.signature.as_ref().expect("kept has signature")) {
                        DedupDecision::ExactDuplicate => s.exact_duplicates += 1,
                        DedupDecision::NearDuplicate => s.near_duplicates += 1,
                        DedupDecision::Keep => {
                            writer.write(&text)?;
                            s.documents_out += 1;
                            s.bytes_out += text.len() as u64;
                            s.chars.add(&p.chars);
                        }
                    },
                }
            }
            Ok(())
        });
        if result.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let inputs = hashing.join().expect("hashing thread panicked");
        let ingest = result?;
        Ok((ingest, inputs?))
    })?;
    s.output_files = writer.finish()?;
    s.documents_in = ingest.documents;
    s.bytes_in = ingest.bytes;
    s.invalid_skipped = ingest.invalid_skipped;
    s.warnings = ingest.warnings;
    (s.share_hangul, s.share_latin, s.share_other) = s.chars.shares();
    s.elapsed_s = start.elapsed().as_secs_f64();
    s.mb_per_s = if s.elapsed_s > 0.0 { s.bytes_in as f64 / 1e6 / s.elapsed_s } else { 0.0 };

    atomic_write(&dir.path().join(SUMMARY_FILE), serde_json::to_string_pretty(&s)?.as_bytes())?;
    let settings = serde_json::json!({
        "ingest": source.options(),
        "prepare": opts,
        "summary": {
            "documents_in": s.documents_in,
            "bytes_in": s.bytes_in,
            "documents_out": s.documents_out,
            "bytes_out": s.bytes_out,
            "dropped_empty": s.dropped_empty,
            "dropped_too_short": s.dropped_too_short,
            "exact_duplicates": s.exact_duplicates,
            "near_duplicates": s.near_duplicates,
            "invalid_skipped": s.invalid_skipped,
            "lsh_bands": s.lsh_bands,
            "lsh_rows": s.lsh_rows,
        },
    });
    Manifest::for_dir(PREPARED_KIND, dir.path(), inputs, settings)?.write(dir.path())?;
    dir.commit()?;
    Ok(s)
}
