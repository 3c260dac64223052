//! `provenance verify`: re-checks a run's record against the files on disk.
//!
//! Checks, each reported PASS or FAIL with what it found:
//! - the ledger's hash chain (an edited, deleted or reordered entry breaks it);
//! - every file each entry recorded as an output still has the recorded SHA-256 (a changed
//!   byte in a checkpoint, a swapped shard, an edited config);
//! - every artifact directory's `manifest.json` still matches its files.
//!
//! Checks that need the model (re-initialisation from the seed, replay of a checkpoint
//! interval) are added by the caller, which owns the model and trainer.

use anyhow::Result;
use jarip_ledger::{sha256_file, Entry, Ledger, Manifest};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), pass: true, detail: detail.into() }
    }
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), pass: false, detail: detail.into() }
    }
}

/// Resolves a path recorded in the ledger: as written, else relative to the run directory
/// (runs may be moved or verified from another working directory).
fn locate(run: &Path, recorded: &str) -> PathBuf {
    let p = PathBuf::from(recorded);
    if p.exists() {
        return p;
    }
    // Try successively shorter suffixes of the recorded path under the run directory.
    let comps: Vec<_> = p.components().collect();
    for i in 0..comps.len() {
        let cand: PathBuf = run.join(comps[i..].iter().collect::<PathBuf>());
        if cand.exists() {
            return cand;
        }
    }
    p
}

fn manifest_dirs(run: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(run) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && p.join(jarip_ledger::manifest::MANIFEST_FILE).exists() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Chain, recorded output hashes and manifests of the run at `run` (holding `ledger.jsonl`).
pub fn verify_records(run: &Path) -> Result<(Vec<Entry>, Vec<Check>)> {
    let ledger = Ledger::at(&run.join("ledger.jsonl"));
    let mut checks = Vec::new();
    let entries = match ledger.verify_chain() {
        Ok(e) => {
            checks.push(Check::pass("ledger chain", format!("{} entries, each linked to the one before", e.len())));
            e
        }
        Err(err) => {
            checks.push(Check::fail("ledger chain", format!("{err:#}")));
            // Go on with whatever parses, so the other failures are named too.
            ledger.entries().unwrap_or_default()
        }
    };
    for e in &entries {
        let (mut ok, mut bad) = (0usize, Vec::new());
        for f in &e.outputs {
            let p = locate(run, &f.path);
            match sha256_file(&p) {
                Ok(h) if h == f.sha256 => ok += 1,
                Ok(_) => bad.push(format!("{} changed", p.display())),
                Err(_) => bad.push(format!("{} missing", p.display())),
            }
        }
        let name = format!("outputs of #{} {}", e.seq, e.stage);
        if bad.is_empty() {
            checks.push(Check::pass(name, format!("{ok} files match their recorded SHA-256")));
        } else {
            checks.push(Check::fail(name, bad.join("; ")));
        }
    }
    for dir in manifest_dirs(run) {
        let name = format!("manifest of {}", dir.display());
        match Manifest::read(&dir).and_then(|m| m.verify(&dir).map(|_| m)) {
            Ok(m) => checks.push(Check::pass(name, format!("{} files match", m.files.len()))),
            Err(err) => checks.push(Check::fail(name, format!("{err:#}"))),
        }
    }
    Ok((entries, checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jarip_ledger::FileRef;

    fn run_with_artifact() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let art = d.path().join("shards");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join("train-00000.bin"), b"tokens").unwrap();
        std::fs::write(art.join("config.json"), b"{\"a\":1}").unwrap();
        let m = Manifest::for_dir("shards", &art, vec![], serde_json::Value::Null).unwrap();
        m.write(&art).unwrap();
        let mut e = Entry::new("shard");
        e.outputs = vec![
            FileRef::of_file(&art.join("train-00000.bin")).unwrap(),
            FileRef::of_file(&art.join("config.json")).unwrap(),
        ];
        let l = Ledger::at(&d.path().join("ledger.jsonl"));
        l.append(e).unwrap();
        l.append(Entry::new("pretrain")).unwrap();
        d
    }

    #[test]
    fn honest_run_passes_and_tampering_is_named() {
        let d = run_with_artifact();
        let (_, checks) = verify_records(d.path()).unwrap();
        assert!(checks.iter().all(|c| c.pass), "{checks:?}");

        std::fs::write(d.path().join("shards/config.json"), b"{\"a\":2}").unwrap();
        let (_, checks) = verify_records(d.path()).unwrap();
        let failed: Vec<&Check> = checks.iter().filter(|c| !c.pass).collect();
        assert_eq!(failed.len(), 2, "{checks:?}");
        assert!(failed.iter().all(|c| c.detail.contains("config.json")), "{failed:?}");

        let d = run_with_artifact();
        let text = std::fs::read_to_string(d.path().join("ledger.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(d.path().join("ledger.jsonl"), format!("{}\n{}\n", lines[1], lines[0])).unwrap();
        let (_, checks) = verify_records(d.path()).unwrap();
        assert!(checks.iter().any(|c| c.name == "ledger chain" && !c.pass));
    }
}
