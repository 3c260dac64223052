//! `ledger.jsonl`: one JSON entry per stage run, each carrying `prev`, the hash of the entry
//! before it, and `hash`, the SHA-256 of its own canonical JSON without the `hash` field.
//! Editing, deleting or reordering any line breaks the chain at a point `verify` names.

use crate::{atomic_write, sha256_bytes};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRef {
    pub path: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl FileRef {
    pub fn of_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?.len();
        Ok(Self { path: path.display().to_string(), sha256: crate::sha256_file(path)?, bytes: Some(bytes) })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub stage: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub inputs: Vec<FileRef>,
    #[serde(default)]
    pub outputs: Vec<FileRef>,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub jarip_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Stage-specific facts (weight hashes, data ranges, figures).
    #[serde(default)]
    pub details: serde_json::Value,
    pub prev: String,
    #[serde(default)]
    pub hash: String,
}

impl Entry {
    /// A new entry for `stage`, stamped with time, version and the process's command line.
    pub fn new(stage: &str) -> Self {
        Self {
            seq: 0,
            time: crate::now_rfc3339(),
            stage: stage.to_string(),
            command: std::env::args().collect(),
            inputs: vec![],
            outputs: vec![],
            config: serde_json::Value::Null,
            seed: None,
            jarip_version: crate::JARIP_VERSION.to_string(),
            git_commit: crate::git_commit(),
            details: serde_json::Value::Null,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// SHA-256 over the entry's JSON with `hash` emptied. serde_json keeps field order as
    /// declared (and object keys in insertion order), so the bytes are reproducible.
    pub fn compute_hash(&self) -> String {
        let mut e = self.clone();
        e.hash = String::new();
        sha256_bytes(serde_json::to_string(&e).expect("entry serialises").as_bytes())
    }
}

pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn at(path: &Path) -> Self {
        Self { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every entry; a line that is not an entry is an error naming file and line.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        if !self.path.exists() {
            return Ok(vec![]);
        }
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read ledger {}", self.path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not a ledger entry", self.path.display(), i + 1))
            })
            .collect()
    }

    /// Chains `entry` after the last one and appends it. The whole file is rewritten
    /// atomically, so a crash never leaves a torn last line.
    pub fn append(&self, mut entry: Entry) -> Result<Entry> {
        let entries = self.entries()?;
        let (seq, prev) = match entries.last() {
            Some(last) => (last.seq + 1, last.hash.clone()),
            None => (0, GENESIS.to_string()),
        };
        entry.seq = seq;
        entry.prev = prev;
        entry.hash = entry.compute_hash();
        let mut text = if self.path.exists() { std::fs::read_to_string(&self.path)? } else { String::new() };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&serde_json::to_string(&entry)?);
        text.push('\n');
        atomic_write(&self.path, text.as_bytes())?;
        Ok(entry)
    }

    /// Checks every link of the chain; the error names the first broken line.
    pub fn verify_chain(&self) -> Result<Vec<Entry>> {
        if !self.path.exists() {
            bail!("ledger {} does not exist", self.path.display());
        }
        let entries = self.entries()?;
        if entries.is_empty() {
            bail!("ledger {} is empty", self.path.display());
        }
        let mut prev = GENESIS.to_string();
        for (i, e) in entries.iter().enumerate() {
            let line = i + 1;
            if e.compute_hash() != e.hash {
                bail!(
                    "{}:{line}: entry '{}' was altered (its hash does not match its content)",
                    self.path.display(),
                    e.stage
                );
            }
            if e.prev != prev {
                bail!(
                    "{}:{line}: entry '{}' does not follow the entry before it (lines deleted or reordered)",
                    self.path.display(),
                    e.stage
                );
            }
            if e.seq != i as u64 {
                bail!(
                    "{}:{line}: entry '{}' has sequence number {} (lines deleted or reordered)",
                    self.path.display(),
                    e.stage,
                    e.seq
                );
            }
            prev = e.hash.clone();
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with(n: usize) -> (tempfile::TempDir, Ledger) {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::at(&d.path().join("ledger.jsonl"));
        for i in 0..n {
            let mut e = Entry::new(&format!("stage{i}"));
            e.seed = Some(i as u64);
            l.append(e).unwrap();
        }
        (d, l)
    }

    #[test]
    fn honest_chain_verifies() {
        let (_d, l) = ledger_with(4);
        let es = l.verify_chain().unwrap();
        assert_eq!(es.len(), 4);
        assert_eq!(es[0].prev, GENESIS);
        assert_eq!(es[3].prev, es[2].hash);
    }

    #[test]
    fn float_details_survive_the_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::at(&d.path().join("ledger.jsonl"));
        for i in 0..50 {
            let mut e = Entry::new("figures");
            let x = (i as f64 + 0.1) / 3.0;
            e.details = serde_json::json!({"mb_per_s": x, "loss": x.sin() * 1e-7, "big": x * 1e300});
            l.append(e).unwrap();
        }
        l.verify_chain().unwrap();
    }

    #[test]
    fn edits_deletions_and_reorders_are_named() {
        let (_d, l) = ledger_with(4);
        let text = std::fs::read_to_string(l.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replace("\"seed\":2", "\"seed\":7");
        std::fs::write(l.path(), &edited).unwrap();
        let err = l.verify_chain().unwrap_err().to_string();
        assert!(err.contains(":3:") && err.contains("altered"), "{err}");

        let deleted = [lines[0], lines[2], lines[3]].join("\n");
        std::fs::write(l.path(), deleted).unwrap();
        let err = l.verify_chain().unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("does not follow"), "{err}");

        let reordered = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        std::fs::write(l.path(), reordered).unwrap();
        assert!(l.verify_chain().is_err());
    }
}
