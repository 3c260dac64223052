//! A run's ledger read into what provenance needs: its entries (read line by line, so that one
//! damaged line does not hide the rest), where the files it names are now, and the pretraining
//! record (configuration, initial weights, checkpoints, resumptions).

use anyhow::{bail, Context, Result};
use jarip_ledger::{Entry, FileRef};
use jarip_train::records::Cursor as SamplerState;
use jarip_train::records::{CheckpointDetails, PretrainStart};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const LEDGER_FILE: &str = "ledger.jsonl";

/// The ledger of a run, as read from disk.
pub struct RunRecord {
    /// The run directory (the ledger's directory).
    pub run: PathBuf,
    pub ledger: PathBuf,
    /// Entries that parse, in file order, with their 1-based line numbers.
    pub entries: Vec<(usize, Entry)>,
    /// Lines that are not entries: "ledger.jsonl:LINE: reason".
    pub bad_lines: Vec<String>,
    pub paths: PathMap,
}

impl RunRecord {
    /// Reads `path`: a run directory holding `ledger.jsonl`, or the ledger file itself. A missing
    /// or unreadable ledger is an error; damaged lines are kept in `bad_lines`.
    pub fn open(path: &Path) -> Result<Self> {
        let (run, ledger) = if path.is_dir() {
            (path.to_path_buf(), path.join(LEDGER_FILE))
        } else if path.is_file() {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (dir.to_path_buf(), path.to_path_buf())
        } else {
            bail!("{}: no such run directory or ledger file", path.display());
        };
        if !ledger.is_file() {
            bail!(
                "{}: no ledger (a jarip run directory holds {LEDGER_FILE}, written by every stage)",
                ledger.display()
            );
        }
        let bytes = std::fs::read(&ledger).with_context(|| format!("cannot read ledger {}", ledger.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!("{}: not UTF-8 text (byte {})", ledger.display(), e.utf8_error().valid_up_to())
        })?;
        let (mut entries, mut bad_lines) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<Entry>(line) {
                Ok(e) => entries.push((i + 1, e)),
                Err(err) => bad_lines.push(format!("{}:{}: not a ledger entry ({err})", ledger.display(), i + 1)),
            }
        }
        let paths = PathMap::infer(&run, entries.iter().map(|(_, e)| e));
        Ok(Self { run, ledger, entries, bad_lines, paths })
    }

    pub fn entry_label(e: &Entry) -> String {
        format!("#{} {}", e.seq, e.stage)
    }
}

/// Maps paths as recorded (absolute, or relative to where the stage ran) onto the run as it is
/// now, so that a moved or copied run is checked against its own files — never against the
/// original's, which may still exist elsewhere and would make a tampered copy pass.
#[derive(Debug, Clone)]
pub struct PathMap {
    /// The run directory as the ledger's paths name it.
    pub recorded_root: Option<PathBuf>,
    pub run: PathBuf,
}

impl PathMap {
    /// The recorded run directory is the ancestor of the recorded outputs under which the most
    /// of them are found again in `run` (a few tampered or deleted files cannot outvote the rest).
    /// When none is found at all, stages' habit decides: they write artifact directories directly
    /// under the run (`RUN/shards/…`, `RUN/ckpt-N/…`), so the most common grandparent is taken.
    fn infer<'a>(run: &Path, entries: impl Iterator<Item = &'a Entry>) -> Self {
        let outputs: Vec<&Path> = entries.flat_map(|e| e.outputs.iter().map(|f| Path::new(&f.path))).collect();
        let mut found: HashMap<&Path, usize> = HashMap::new();
        let mut grandparents: HashMap<&Path, usize> = HashMap::new();
        for p in &outputs {
            for root in p.ancestors().skip(1) {
                if let Ok(rel) = p.strip_prefix(root) {
                    if run.join(rel).exists() {
                        *found.entry(root).or_default() += 1;
                    }
                }
            }
            if let Some(gp) = p.parent().and_then(Path::parent) {
                *grandparents.entry(gp).or_default() += 1;
            }
        }
        // Most votes; among equals the longest root (deterministic whatever the map's order).
        let best = |votes: HashMap<&Path, usize>| {
            votes.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0))).map(|v| v.0.to_path_buf())
        };
        // A run that has not moved is its own root, whatever else its outputs' names match (a
        // fine-tuning written beside the run has checkpoints named like the run's own).
        let here = [run.to_path_buf(), std::fs::canonicalize(run).unwrap_or_default()];
        let unmoved = here.iter().find(|r| found.contains_key(r.as_path())).cloned();
        let recorded_root = unmoved.or_else(|| best(found)).or_else(|| best(grandparents));
        Self { recorded_root, run: run.to_path_buf() }
    }

    /// Where a recorded path is now: inside the run when it was recorded inside the run, else as
    /// recorded (raw inputs outside the run), else found by its trailing components in the run.
    pub fn locate(&self, recorded: &str) -> PathBuf {
        let p = Path::new(recorded);
        if let Some(root) = &self.recorded_root {
            if let Ok(rel) = p.strip_prefix(root) {
                return self.run.join(rel);
            }
        }
        if p.exists() {
            return p.to_path_buf();
        }
        let comps: Vec<_> = p.components().collect();
        for i in 1..comps.len() {
            let cand: PathBuf = self.run.join(comps[i..].iter().collect::<PathBuf>());
            if cand.exists() {
                return cand;
            }
        }
        p.to_path_buf()
    }

    pub fn inside_run(&self, recorded: &str) -> bool {
        self.recorded_root.as_ref().is_some_and(|r| Path::new(recorded).starts_with(r))
    }
}

/// The `config` of a `pretrain-start` entry (defined with every other record in
/// [`jarip_ledger::records`]).
pub type TrainConfig = jarip_train::records::PretrainConfig;

/// A `checkpoint` entry.
#[derive(Debug, Clone)]
pub struct CheckpointRec {
    /// Index into [`RunRecord::entries`].
    pub entry: usize,
    pub seq: u64,
    pub step: u64,
    pub weights_sha256: String,
    pub tokens_seen: Option<u64>,
    pub total_steps: Option<u64>,
    /// The data cursor before and after the interval (`None` when the entry records none).
    pub sampler_before: Option<SamplerState>,
    pub sampler_after: Option<SamplerState>,
    /// The checkpoint directory as recorded (parent of its files).
    pub recorded_dir: Option<String>,
    pub files: Vec<FileRef>,
    pub loss: Option<f64>,
    pub val_bpb: Option<f64>,
}

/// The last pretraining in the ledger: its start, checkpoints and resumptions.
#[derive(Debug, Clone)]
pub struct Pretraining {
    /// Index into [`RunRecord::entries`] of the `pretrain-start` entry.
    pub start: usize,
    pub config: TrainConfig,
    /// Weight hash recorded at step 0.
    pub initial_weights: String,
    pub start_details: PretrainStart,
    /// Recorded paths of the tokenizer.json and shard manifest the run read.
    pub tokenizer_file: Option<String>,
    pub shard_manifest: Option<String>,
    pub checkpoints: Vec<CheckpointRec>,
    /// Indices into [`RunRecord::entries`] of `pretrain-resume` entries.
    pub resumes: Vec<usize>,
}

/// A data cursor as the messages show it: its JSON, or `null`.
pub fn cursor_text(c: &Option<SamplerState>) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

impl CheckpointRec {
    fn parse(entry: usize, e: &Entry) -> Result<Self> {
        let d: CheckpointDetails = e
            .details_as()
            .with_context(|| format!("entry #{} {}: its details are not a checkpoint record", e.seq, e.stage))?;
        let recorded_dir = e
            .outputs
            .iter()
            .find(|f| f.path.ends_with(jarip_model::WEIGHTS_FILE))
            .or(e.outputs.first())
            .and_then(|f| Path::new(&f.path).parent().map(|p| p.display().to_string()));
        Ok(Self {
            entry,
            seq: e.seq,
            step: d.step,
            weights_sha256: d.weights_sha256,
            tokens_seen: d.tokens_seen,
            total_steps: d.total_steps,
            sampler_before: d.data.as_ref().map(|r| r.sampler_before),
            sampler_after: d.data.as_ref().map(|r| r.sampler_after),
            recorded_dir,
            files: e.outputs.clone(),
            loss: d.loss,
            val_bpb: d.val_bpb,
        })
    }

    /// The directory's name, e.g. `ckpt-000200`.
    pub fn name(&self) -> String {
        self.recorded_dir
            .as_deref()
            .and_then(|d| Path::new(d).file_name())
            .map_or_else(|| format!("step {}", self.step), |n| n.to_string_lossy().to_string())
    }
}

impl RunRecord {
    /// The last `pretrain-start` and the `checkpoint` / `pretrain-resume` entries after it, up to
    /// the first stage that is not pretraining's (fine-tuning writes its own checkpoints).
    pub fn pretraining(&self) -> Result<Option<Pretraining>> {
        let Some(start) = self.entries.iter().rposition(|(_, e)| e.stage == "pretrain-start") else {
            return Ok(None);
        };
        let e = &self.entries[start].1;
        let config: TrainConfig = e
            .config_as()
            .with_context(|| format!("entry #{} pretrain-start: its config is not a pretraining config", e.seq))?;
        let start_details: PretrainStart = e
            .details_as()
            .with_context(|| format!("entry #{} pretrain-start: its details are not a pretraining start", e.seq))?;
        let find_input = |suffix: &str| e.inputs.iter().find(|f| f.path.ends_with(suffix)).map(|f| f.path.clone());
        let mut p = Pretraining {
            start,
            config,
            initial_weights: start_details.weights_sha256.clone(),
            start_details,
            tokenizer_file: find_input("tokenizer.json"),
            shard_manifest: find_input(jarip_ledger::manifest::MANIFEST_FILE),
            checkpoints: vec![],
            resumes: vec![],
        };
        for (i, (_, e)) in self.entries.iter().enumerate().skip(start + 1) {
            match e.stage.as_str() {
                "checkpoint" => p.checkpoints.push(CheckpointRec::parse(i, e)?),
                "pretrain-resume" => p.resumes.push(i),
                // A lineage test recorded while the run goes on annotates it; training continues.
                "lineage" | "data-order" => continue,
                _ => break,
            }
        }
        Ok(Some(p))
    }
}

impl RunRecord {
    /// Every `sft-checkpoint` entry (fine-tuning writes them with the same details as pretraining).
    pub fn sft_checkpoints(&self) -> Vec<Result<CheckpointRec>> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.stage == "sft-checkpoint")
            .map(|(i, (_, e))| CheckpointRec::parse(i, e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_run_maps_onto_itself_not_the_original() {
        let d = tempfile::tempdir().unwrap();
        let orig = d.path().join("run");
        std::fs::create_dir_all(orig.join("shards")).unwrap();
        std::fs::write(orig.join("shards/a.bin"), b"x").unwrap();
        let mut e = Entry::new("shard");
        e.outputs = vec![FileRef::of_file(&orig.join("shards/a.bin")).unwrap()];
        let copy = d.path().join("copy");
        let map = PathMap::infer(&copy, [e].iter());
        assert_eq!(map.recorded_root.as_deref(), Some(orig.as_path()));
        // The copy lacks the file; the original still has it: the copy's (missing) path is used.
        assert_eq!(map.locate(&orig.join("shards/a.bin").display().to_string()), copy.join("shards/a.bin"));
        assert!(map.inside_run(&orig.join("x").display().to_string()));
        assert!(!map.inside_run("/elsewhere/corpus.txt"));
    }
}
