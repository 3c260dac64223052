//! `provenance verify`: re-checks a run's record against the files on disk and against the
//! trainer itself. Each check is reported PASS or FAIL with what it found:
//!
//! - **ledger chain**: every line parses, every entry's hash matches its content and links to
//!   the entry before (an edited, deleted or reordered line breaks it at a named line);
//! - **outputs / inputs of #N stage**: every file an entry recorded still has the recorded
//!   SHA-256 (a changed byte in a checkpoint, a swapped shard, an edited config); a file that a
//!   later entry recorded again is judged by that later entry;
//! - **manifest DIR**: each artifact directory's `manifest.json` still matches its files;
//! - **no imported weights**: no stage read a weight file that this ledger did not produce, and
//!   pretraining began from freshly initialised weights;
//! - **tokenizer**, **shards merkle root**: the pretraining read the tokenizer and shards the
//!   record names (the Merkle root is recomputed from the shard files);
//! - **initial weights**: the model re-initialised from the recorded seed hashes to the
//!   recorded step-0 hash;
//! - **checkpoint NAME**: its weights, config and trainer state say what the ledger says;
//! - **training record continuity**: each checkpoint starts where the one before ended (step,
//!   data cursor, tokens), each resumption starts from the checkpoint before it;
//! - **replay K** (on request, [`crate::replay`]): training re-run from checkpoint K reproduces
//!   checkpoint K+1's weights bit for bit.
//!
//! Every file is hashed once, in parallel, however many checks refer to it.

use crate::record::{cursor_text, CheckpointRec, Pretraining, RunRecord};
use anyhow::Result;
use jarip_ledger::records::{CheckpointDetails, Opaque, PretrainStart, SftStart};
use jarip_ledger::{sha256_file, Entry, Ledger, Manifest};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    fn from(name: impl Into<String>, problems: Vec<String>, ok: impl Into<String>) -> Self {
        if problems.is_empty() {
            Self::pass(name, ok)
        } else {
            Self::fail(name, problems.join("; "))
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Checkpoint intervals to replay: K replays from checkpoint K (0 = the seeded
    /// initialisation) to checkpoint K+1, numbered in ledger order from 1.
    pub replay: Vec<usize>,
    /// Fine-tuning intervals to replay: K from SFT checkpoint K (0 = the base) to K+1.
    pub replay_sft: Vec<usize>,
    /// Replay every interval, pretraining and fine-tuning.
    pub replay_all: bool,
    /// Accept checkpoint directories removed as a whole (by `--keep-checkpoints`), except the
    /// last; their record stays in the chain but their files cannot be re-hashed.
    pub allow_pruned: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub entries: usize,
    pub checks: Vec<Check>,
    /// Bytes read to hash files.
    pub bytes_hashed: u64,
    pub seconds: f64,
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
    pub fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.pass).collect()
    }
}

/// SHA-256 of files, each computed once; failures are kept as messages.
#[derive(Default)]
pub struct Hashes {
    map: Mutex<HashMap<PathBuf, Result<String, String>>>,
    bytes: AtomicU64,
}

impl Hashes {
    fn compute(&self, p: &Path) -> Result<String, String> {
        if !p.exists() {
            return Err(format!("{} is missing", p.display()));
        }
        let r = sha256_file(p).map_err(|e| format!("{}: {e:#}", p.display()));
        if r.is_ok() {
            self.bytes.fetch_add(std::fs::metadata(p).map_or(0, |m| m.len()), Ordering::Relaxed);
        }
        r
    }

    /// Hashes `paths` in parallel (the larger files first, so the cores finish together).
    pub fn prefetch(&self, paths: impl IntoIterator<Item = PathBuf>) {
        let known: HashSet<PathBuf> = self.map.lock().unwrap().keys().cloned().collect();
        let mut todo: Vec<(u64, PathBuf)> = paths
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|p| !known.contains(p))
            .map(|p| (std::fs::metadata(&p).map_or(0, |m| m.len()), p))
            .collect();
        todo.sort_by_key(|t| std::cmp::Reverse(t.0));
        let done: Vec<(PathBuf, Result<String, String>)> =
            todo.into_par_iter().with_max_len(1).map(|(_, p)| (p.clone(), self.compute(&p))).collect();
        self.map.lock().unwrap().extend(done);
    }

    pub fn get(&self, p: &Path) -> Result<String, String> {
        if let Some(r) = self.map.lock().unwrap().get(p) {
            return r.clone();
        }
        let r = self.compute(p);
        self.map.lock().unwrap().insert(p.to_path_buf(), r.clone());
        r
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Artifact directories of the run (direct subdirectories holding a manifest).
fn manifest_dirs(run: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.join(jarip_ledger::manifest::MANIFEST_FILE).is_file()
        })
        .collect();
    out.sort();
    out
}

fn dir_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().to_string())
}

/// Files a weight-importing stage would read.
fn looks_like_weights(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    [".safetensors", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".h5", ".msgpack", ".npz", ".onnx"]
        .iter()
        .any(|x| p.ends_with(x))
        || (p.ends_with(".bin")
            && !Path::new(&p).file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("train-") || n.starts_with("val-")
            }))
}

/// Checkpoint directories removed as a whole, when the caller accepts pruning: in pretraining
/// and in fine-tuning, every one recorded before the stage's last checkpoint whose directory no
/// longer exists.
fn pruned_dirs(rec: &RunRecord, p: Option<&Pretraining>, allow: bool) -> HashSet<String> {
    if !allow {
        return HashSet::new();
    }
    let sft: Vec<CheckpointRec> = rec.sft_checkpoints().into_iter().flatten().collect();
    let series = [p.map_or(&[][..], |p| &p.checkpoints[..]), &sft[..]];
    series
        .iter()
        .flat_map(|cs| cs[..cs.len().saturating_sub(1)].iter())
        .filter_map(|c| c.recorded_dir.clone())
        .filter(|d| !rec.paths.locate(d).exists())
        .collect()
}

fn file_checks(rec: &RunRecord, hashes: &Hashes, pruned: &HashSet<String>) -> Vec<Check> {
    let mut checks = Vec::new();
    // The last entry that recorded each path as an output: earlier records of it are superseded.
    let mut last_output: HashMap<&str, usize> = HashMap::new();
    for (i, (_, e)) in rec.entries.iter().enumerate() {
        for f in &e.outputs {
            last_output.insert(f.path.as_str(), i);
        }
    }
    for (i, (_, e)) in rec.entries.iter().enumerate() {
        for (what, files) in [("inputs", &e.inputs), ("outputs", &e.outputs)] {
            if files.is_empty() {
                continue;
            }
            let (mut ok, mut superseded, mut gone, mut bad) = (0usize, 0usize, 0usize, Vec::new());
            for f in files {
                if last_output.get(f.path.as_str()).is_some_and(|&j| j > i) {
                    superseded += 1;
                    continue;
                }
                if Path::new(&f.path).parent().is_some_and(|d| pruned.contains(&d.display().to_string())) {
                    gone += 1;
                    continue;
                }
                let p = rec.paths.locate(&f.path);
                match hashes.get(&p) {
                    Ok(h) if h == f.sha256 => ok += 1,
                    Ok(h) => bad.push(format!(
                        "{} changed (sha256 {}…, recorded {}…)",
                        p.display(),
                        short(&h),
                        short(&f.sha256)
                    )),
                    Err(msg) if what == "inputs" && !rec.paths.inside_run(&f.path) => bad.push(format!(
                        "{msg} (an input outside the run directory: verify from the directory the run was made in)"
                    )),
                    Err(msg) => bad.push(msg),
                }
            }
            let mut detail = format!("{ok} files match their recorded SHA-256");
            if superseded > 0 {
                detail.push_str(&format!(", {superseded} recorded again by a later entry"));
            }
            if gone > 0 {
                detail.push_str(&format!(", {gone} in pruned checkpoints (not re-hashed)"));
            }
            checks.push(Check::from(format!("{what} of {}", RunRecord::entry_label(e)), bad, detail));
        }
    }
    checks
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn manifest_checks(rec: &RunRecord, hashes: &Hashes) -> Vec<Check> {
    manifest_dirs(&rec.run)
        .into_iter()
        .map(|dir| {
            let name = format!("manifest {}", dir_name(&dir));
            match Manifest::read(&dir) {
                Err(e) => Check::fail(name, format!("{e:#}")),
                Ok(m) => {
                    let bad: Vec<String> = m
                        .files
                        .iter()
                        .filter_map(|(f, want)| match hashes.get(&dir.join(f)) {
                            Ok(h) if h == want.sha256 => None,
                            Ok(_) => Some(format!("{} differs from its manifest", dir.join(f).display())),
                            Err(msg) => Some(msg),
                        })
                        .collect();
                    Check::from(name, bad, format!("{} files match", m.files.len()))
                }
            }
        })
        .collect()
}

/// Whether the ledger of the run holding checkpoint `manifest`'s directory records a
/// checkpoint with these weights (fine-tuning may live in its own run directory).
fn made_by_sibling_run(rec: &RunRecord, manifest: &str, weights: &str) -> Option<PathBuf> {
    let ckpt = rec.paths.locate(manifest).parent()?.to_path_buf();
    let other = RunRecord::open(ckpt.parent()?).ok()?;
    other
        .entries
        .iter()
        .any(|(_, e)| e.stage.ends_with("checkpoint") && weights_of(e).as_deref() == Some(weights))
        .then_some(ckpt)
}

/// The weights a checkpoint (or a pretraining start) entry records.
fn weights_of(e: &Entry) -> Option<String> {
    if e.stage == "pretrain-start" {
        e.details_as::<PretrainStart<Opaque>>().ok().map(|d| d.weights_sha256)
    } else {
        e.details_as::<CheckpointDetails<Opaque>>().ok().map(|d| d.weights_sha256)
    }
}

/// A fine-tuning that started from a base no jarip ledger proves (`sft --allow-foreign-base`)
/// makes every later model of the record not from scratch: said as its own failed check.
fn foreign_bases(rec: &RunRecord) -> Option<Check> {
    let found = foreign_base_list(rec);
    (!found.is_empty()).then(|| {
        Check::fail(
            "from scratch",
            format!(
                "NOT FROM SCRATCH: the model was fine-tuned from weights no jarip run built (--allow-foreign-base): {}",
                found.join("; ")
            ),
        )
    })
}

/// Each `sft-start` of the record that began from a foreign base: "entry #N sft-start fine-tuned BASE".
pub(crate) fn foreign_base_list(rec: &RunRecord) -> Vec<String> {
    rec.entries
        .iter()
        .filter(|(_, e)| e.stage == "sft-start")
        .filter_map(|(_, e)| {
            let c: jarip_ledger::records::SftConfig<Opaque> = e.config_as().ok()?;
            Some(format!("{} fine-tuned {}", RunRecord::entry_label(e), c.foreign_base?))
        })
        .collect()
}

fn no_imported_weights(rec: &RunRecord, p: Option<&Pretraining>) -> Check {
    let mut produced: HashSet<&str> = HashSet::new();
    // By content too: a run directory may have been moved since a later stage read its files.
    let mut produced_sha: HashSet<&str> = HashSet::new();
    let mut weights_made: HashSet<String> = HashSet::new();
    let (mut bad, mut inputs, mut elsewhere) = (Vec::new(), 0usize, Vec::new());
    let mut compared = 0usize;
    for (_, e) in &rec.entries {
        // Another team's model scored beside ours (`jarip eval --model OURS --model OTHER`):
        // read to be compared, never trained from; the entry says so.
        if e.stage == "eval"
            && e.details_as::<jarip_ledger::records::EvalDetails>().is_ok_and(|d| d.model.origin.is_some())
        {
            compared += 1;
            continue;
        }
        for f in &e.inputs {
            inputs += 1;
            if looks_like_weights(&f.path)
                && !produced.contains(f.path.as_str())
                && !produced_sha.contains(f.sha256.as_str())
            {
                bad.push(format!("{} read weights this ledger did not produce: {}", RunRecord::entry_label(e), f.path));
            }
        }
        if e.stage == "sft-start" {
            // Fine-tuning must begin from weights this record (or its base run's) shows being made.
            let base = e.details_as::<SftStart<Opaque>>().map(|d| d.base_weights_sha256).unwrap_or_default();
            let base = base.as_str();
            let manifest = e.inputs.iter().find(|f| f.path.ends_with(jarip_ledger::manifest::MANIFEST_FILE));
            if !weights_made.contains(base) {
                match manifest.and_then(|m| made_by_sibling_run(rec, &m.path, base)) {
                    Some(dir) => elsewhere.push(format!(
                        "{} fine-tunes {} (verify that run too)",
                        RunRecord::entry_label(e),
                        dir.display()
                    )),
                    None => bad.push(format!(
                        "{} fine-tuned weights {}… that no checkpoint of this ledger (or of the base's run) records",
                        RunRecord::entry_label(e),
                        short(base)
                    )),
                }
            }
        }
        if e.stage.ends_with("checkpoint") || e.stage == "pretrain-start" {
            if let Some(w) = weights_of(e) {
                weights_made.insert(w);
            }
        }
        produced.extend(e.outputs.iter().map(|f| f.path.as_str()));
        produced_sha.extend(e.outputs.iter().map(|f| f.sha256.as_str()));
    }
    if let Some(p) = p {
        let d = &p.start_details;
        if d.step != 0 || d.initial_weights == Some(false) {
            bad.push("pretrain-start did not begin from freshly initialised weights at step 0".into());
        }
    }
    let mut ok = format!(
        "{inputs} recorded inputs across {} entries: text, tokenizers, shard manifests and this run's own outputs; \
         no weights from elsewhere",
        rec.entries.len()
    );
    if !elsewhere.is_empty() {
        ok.push_str(&format!("; {}", elsewhere.join("; ")));
    }
    if compared > 0 {
        ok.push_str(&format!("; {compared} evaluation(s) of models not built by this run, read only to compare"));
    }
    Check::from("no imported weights", bad, ok)
}

fn tokenizer_check(rec: &RunRecord, p: &Pretraining, hashes: &Hashes) -> Check {
    let name = "tokenizer";
    let Some(recorded) = &p.tokenizer_file else {
        return Check::fail(name, "pretrain-start records no tokenizer.json input");
    };
    let path = rec.paths.locate(recorded);
    let on_disk = match hashes.get(&path) {
        Ok(h) => h,
        Err(msg) => return Check::fail(name, msg),
    };
    if on_disk != p.config.tokenizer_sha256 {
        return Check::fail(
            name,
            format!(
                "{} hashes to {}…, the run was configured with {}…",
                path.display(),
                short(&on_disk),
                short(&p.config.tokenizer_sha256)
            ),
        );
    }
    let trained = rec.entries.iter().find(|(_, e)| {
        e.stage == "tokenizer-train"
            && e.outputs.iter().any(|f| f.sha256 == on_disk && f.path.ends_with("tokenizer.json"))
    });
    let whence = match trained {
        Some((_, e)) => format!("trained by entry #{} tokenizer-train on {} input files", e.seq, e.inputs.len()),
        None => "its training is not recorded in this ledger".to_string(),
    };
    Check::pass(
        name,
        format!("{} ({}…) is the tokenizer the run was configured with; {whence}", path.display(), short(&on_disk)),
    )
}

/// Recomputes the shards' Merkle root (train shards then val shards, in the writer's order).
pub(crate) fn merkle_check(rec: &RunRecord, p: &Pretraining, hashes: &Hashes) -> Check {
    let name = "shards merkle root";
    let Some(recorded) = &p.shard_manifest else {
        return Check::fail(name, "pretrain-start records no shard manifest input");
    };
    let manifest_path = rec.paths.locate(recorded);
    let dir = manifest_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let m = match Manifest::read(&dir) {
        Ok(m) => m,
        Err(e) => return Check::fail(name, format!("{e:#}")),
    };
    let listed = |split: &str| -> Vec<String> {
        m.settings[split]["shards"].as_array().map_or_else(
            || {
                let mut v: Vec<String> =
                    m.files.keys().filter(|n| n.starts_with(&format!("{split}-"))).cloned().collect();
                v.sort();
                v
            },
            |a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        )
    };
    let names: Vec<String> = listed("train").into_iter().chain(listed("val")).collect();
    let mut leaves = Vec::new();
    for n in &names {
        match hashes.get(&dir.join(n)) {
            Ok(h) => leaves.push(h),
            Err(msg) => return Check::fail(name, msg),
        }
    }
    let root = jarip_ledger::merkle_root(&leaves);
    let want = p.config.shards_merkle_root.clone();
    match want {
        Some(w) if w == root => Check::pass(
            name,
            format!("{} shards in {} hash to the recorded root {}…", names.len(), dir.display(), short(&root)),
        ),
        Some(w) => {
            // Name the shards that differ from what the shard manifest recorded.
            let changed: Vec<&str> = names
                .iter()
                .zip(&leaves)
                .filter(|(n, h)| m.files.get(*n).is_none_or(|f| &f.sha256 != *h))
                .map(|(n, _)| n.as_str())
                .collect();
            Check::fail(
                name,
                format!(
                    "the shards in {} hash to {}…, pretraining recorded {}…{}",
                    dir.display(),
                    short(&root),
                    short(&w),
                    if changed.is_empty() { String::new() } else { format!(" (changed: {})", changed.join(", ")) }
                ),
            )
        }
        None => Check::fail(name, "pretrain-start records no shards_merkle_root"),
    }
}

fn init_check(p: &Pretraining) -> Check {
    let name = format!("initial weights (seed {})", p.config.seed);
    let got = jarip_model::Gpt::new(&p.config.model, p.config.seed, &candle_core::Device::Cpu)
        .and_then(|m| m.weights_sha256());
    match got {
        Ok(h) if h == p.initial_weights => Check::pass(
            name,
            format!("the model re-initialised from the seed hashes to the recorded step-0 hash {}…", short(&h)),
        ),
        Ok(h) => Check::fail(
            name,
            format!(
                "re-initialised from the seed the weights hash to {}…, the ledger records {}…",
                short(&h),
                short(&p.initial_weights)
            ),
        ),
        Err(e) => Check::fail(name, format!("cannot build the recorded model: {e:#}")),
    }
}

/// What a checkpoint's own files must agree with besides the ledger entry.
struct Expect<'a> {
    model: Option<&'a jarip_model::ModelConfig>,
    seed: Option<u64>,
}

fn checkpoint_check(
    rec: &RunRecord,
    c: &CheckpointRec,
    expect: Expect,
    pruned: &HashSet<String>,
    label: &str,
) -> Check {
    let name = format!("{label} {}", c.name());
    let Some(recorded) = &c.recorded_dir else {
        return Check::fail(name, "the checkpoint entry records no files");
    };
    if pruned.contains(recorded) {
        return Check::pass(
            name,
            "pruned (directory removed; allowed by --allow-pruned): its hashes stay in the chain",
        );
    }
    let dir = rec.paths.locate(recorded);
    if !dir.is_dir() {
        return Check::fail(
            name,
            format!(
                "{} is not on disk (removed by --keep-checkpoints? keep every checkpoint to verify a whole run, \
                 or pass --allow-pruned)",
                dir.display()
            ),
        );
    }
    let mut bad = Vec::new();
    match crate::tensors::weights_sha256_of(&dir.join(jarip_model::WEIGHTS_FILE)) {
        Ok(h) if h != c.weights_sha256 => {
            bad.push(format!("its weights hash to {}…, the ledger records {}…", short(&h), short(&c.weights_sha256)))
        }
        Ok(_) => {}
        Err(e) => bad.push(format!("cannot read its weights: {e:#}")),
    }
    if let Some(want) = expect.model {
        match jarip_model::ModelConfig::from_file(&dir.join(jarip_model::CONFIG_FILE)) {
            Ok(cfg) if &cfg == want => {}
            Ok(_) => {
                bad.push(format!("{} differs from the model config pretraining recorded", jarip_model::CONFIG_FILE))
            }
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    let trainer = dir.join(jarip_train::checkpoint::TRAINER_FILE);
    match std::fs::read_to_string(&trainer)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str::<jarip_train::checkpoint::TrainerState>(&t)?))
    {
        Ok(s) => {
            if s.step != c.step {
                bad.push(format!("trainer.json says step {}, the ledger {}", s.step, c.step));
            }
            if s.weights_sha256 != c.weights_sha256 {
                bad.push("trainer.json's weights hash differs from the ledger's".into());
            }
            if Some(s.sampler) != c.sampler_after {
                bad.push("trainer.json's data cursor differs from the ledger's".into());
            }
            if expect.seed.is_some_and(|seed| seed != s.seed) {
                bad.push("trainer.json's seed differs from the run's".into());
            }
        }
        Err(e) => bad.push(format!("{}: {e:#}", trainer.display())),
    }
    Check::from(
        name,
        bad,
        format!("weights {}…, config and trainer state match the ledger (step {})", short(&c.weights_sha256), c.step),
    )
}

/// Each checkpoint starts where the one before ended; each resumption from the checkpoint before.
fn continuity_check(rec: &RunRecord, p: &Pretraining) -> Check {
    let mut bad = Vec::new();
    let mut prev_step = 0u64;
    let mut prev_weights = p.initial_weights.clone();
    let mut prev_cursor = p.start_details.sampler;
    let mut events: Vec<(usize, bool)> = p.checkpoints.iter().map(|c| (c.entry, true)).collect();
    events.extend(p.resumes.iter().map(|&r| (r, false)));
    events.sort();
    let mut ckpts = p.checkpoints.iter();
    for (idx, is_ckpt) in events {
        let e = &rec.entries[idx].1;
        if is_ckpt {
            let c = ckpts.next().expect("one checkpoint per event");
            if c.step <= prev_step {
                bad.push(format!("{} is at step {}, not after step {prev_step}", c.name(), c.step));
            }
            if c.sampler_before != prev_cursor {
                bad.push(format!(
                    "{}'s data starts at {}, the record before ended at {}",
                    c.name(),
                    cursor_text(&c.sampler_before),
                    cursor_text(&prev_cursor)
                ));
            }
            if let Some(t) = c.tokens_seen {
                if t != c.step * p.config.batch_tokens as u64 {
                    bad.push(format!(
                        "{} counts {t} tokens for {} steps of {}",
                        c.name(),
                        c.step,
                        p.config.batch_tokens
                    ));
                }
            }
            (prev_step, prev_weights, prev_cursor) = (c.step, c.weights_sha256.clone(), c.sampler_after);
        } else {
            match e.details_as::<jarip_train::records::PretrainStart>() {
                Ok(d) => {
                    if d.step != prev_step || d.weights_sha256 != prev_weights {
                        bad.push(format!(
                            "entry #{} resumed at step {} with weights {}…, not from the checkpoint before it (step {prev_step})",
                            e.seq,
                            d.step,
                            short(&d.weights_sha256)
                        ));
                    }
                    if d.sampler != prev_cursor {
                        bad.push(format!(
                            "entry #{} resumed its data at {}, not at {}",
                            e.seq,
                            cursor_text(&d.sampler),
                            cursor_text(&prev_cursor)
                        ));
                    }
                }
                Err(err) => bad.push(format!("entry #{}: its details are not a pretraining resumption ({err})", e.seq)),
            }
            match e.config_as::<crate::record::TrainConfig>() {
                Ok(cfg) if cfg.same_run_as(&p.config) => {}
                _ => bad.push(format!("entry #{} resumed with a different configuration", e.seq)),
            }
        }
    }
    let totals: HashSet<u64> = p.checkpoints.iter().filter_map(|c| c.total_steps).collect();
    if totals.len() > 1 {
        bad.push(format!("checkpoints disagree on the run's length: {totals:?}"));
    }
    Check::from(
        "training record continuity",
        bad,
        format!(
            "step 0 → {} in {} checkpoints and {} resumptions, each starting where the record before ended",
            prev_step,
            p.checkpoints.len(),
            p.resumes.len()
        ),
    )
}

/// Every check of the run at `path` (a run directory or its ledger file). Errors only when
/// there is no ledger to read; every other problem is a failed check.
pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<Report> {
    let t0 = Instant::now();
    let rec = RunRecord::open(path)?;
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    match Ledger::at(&rec.ledger).verify_chain() {
        Ok(e) => {
            checks.push(Check::pass("ledger chain", format!("{} entries, each linked to the one before", e.len())))
        }
        Err(err) => checks.push(Check::fail("ledger chain", format!("{err:#}"))),
    }
    for b in &rec.bad_lines {
        checks.push(Check::fail("ledger line", b.clone()));
    }
    let pretraining = match rec.pretraining() {
        Ok(p) => p,
        Err(e) => {
            checks.push(Check::fail("pretraining record", format!("{e:#}")));
            None
        }
    };
    let pruned = pruned_dirs(&rec, pretraining.as_ref(), opts.allow_pruned);
    let hashes = Hashes::default();
    // Re-initialising draws every weight again, tensor after tensor on one core: it runs on its
    // own thread beside the hashing rather than after it.
    std::thread::scope(|scope| {
        let mut init = pretraining.as_ref().map(|p| scope.spawn(move || init_check(p)));
        // Hash every file any check will read, once, in parallel.
        let mut wanted: Vec<PathBuf> = Vec::new();
        for (_, e) in &rec.entries {
            wanted.extend(e.inputs.iter().chain(&e.outputs).map(|f| rec.paths.locate(&f.path)));
        }
        for dir in manifest_dirs(&rec.run) {
            if let Ok(m) = Manifest::read(&dir) {
                wanted.extend(m.files.keys().map(|f| dir.join(f)));
            }
        }
        hashes.prefetch(wanted.into_iter().filter(|p| p.is_file()));

        checks.extend(file_checks(&rec, &hashes, &pruned));
        checks.extend(manifest_checks(&rec, &hashes));
        checks.extend(foreign_bases(&rec));
        checks.push(no_imported_weights(&rec, pretraining.as_ref()));
        if let Some(p) = &pretraining {
            checks.push(tokenizer_check(&rec, p, &hashes));
            checks.push(merkle_check(&rec, p, &hashes));
            let expect = || Expect { model: Some(&p.config.model), seed: Some(p.config.seed) };
            let ck = |c| checkpoint_check(&rec, c, expect(), &pruned, "checkpoint");
            let ckpts: Vec<Check> = p.checkpoints.par_iter().map(ck).collect();
            checks.push(match init.take() {
                Some(h) => {
                    h.join().unwrap_or_else(|_| Check::fail("initial weights", "the re-initialisation panicked"))
                }
                None => init_check(p),
            });
            checks.extend(ckpts);
            checks.push(continuity_check(&rec, p));
            let mut ks: Vec<usize> =
                if opts.replay_all { (0..p.checkpoints.len()).collect() } else { opts.replay.clone() };
            ks.sort_unstable();
            ks.dedup();
            for k in ks {
                checks.push(crate::replay::replay(&rec, p, k));
            }
        } else {
            notes.push("the ledger records no pretraining: no initialisation or checkpoints to check".into());
            if opts.replay_all || !opts.replay.is_empty() {
                checks.push(Check::fail("replay", "nothing to replay: the ledger records no pretraining"));
            }
        }
        let sft = rec.sft_checkpoints();
        let sft_count = sft.len();
        for c in sft {
            match c {
                Ok(c) => {
                    let expect = Expect { model: pretraining.as_ref().map(|p| &p.config.model), seed: None };
                    checks.push(checkpoint_check(&rec, &c, expect, &pruned, "sft checkpoint"));
                }
                Err(e) => checks.push(Check::fail("sft checkpoint", format!("{e:#}"))),
            }
        }
        let mut ks: Vec<usize> = if opts.replay_all { (0..sft_count).collect() } else { opts.replay_sft.clone() };
        ks.sort_unstable();
        ks.dedup();
        for k in ks {
            checks.push(crate::replay::replay_sft(&rec, k));
        }
    });
    let later: Vec<String> = rec
        .entries
        .iter()
        .skip(pretraining.as_ref().map_or(0, |p| p.start + 1 + p.checkpoints.len() + p.resumes.len()))
        .map(|(_, e)| e.stage.clone())
        .filter(|s| !matches!(s.as_str(), "prepare" | "tokenizer-train" | "shard"))
        .collect();
    if !later.is_empty() {
        notes.push(format!(
            "stages after pretraining ({}) are checked by chain and file hashes; fine-tuning intervals are replayed with --replay-sft K or --replay-all",
            later.join(", ")
        ));
    }
    Ok(Report {
        run: rec.run.display().to_string(),
        entries: rec.entries.len(),
        checks,
        bytes_hashed: hashes.bytes(),
        seconds: t0.elapsed().as_secs_f64(),
        notes,
    })
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
        l.append(Entry::new("eval")).unwrap();
        d
    }

    fn failed(d: &Path) -> Vec<Check> {
        verify(d, &VerifyOptions::default()).unwrap().checks.into_iter().filter(|c| !c.pass).collect()
    }

    #[test]
    fn honest_run_passes_and_tampering_is_named() {
        let d = run_with_artifact();
        assert!(failed(d.path()).is_empty(), "{:?}", failed(d.path()));

        std::fs::write(d.path().join("shards/config.json"), b"{\"a\":2}").unwrap();
        let f = failed(d.path());
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|c| c.detail.contains("config.json")), "{f:?}");

        let d = run_with_artifact();
        let text = std::fs::read_to_string(d.path().join("ledger.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(d.path().join("ledger.jsonl"), format!("{}\n{}\n", lines[1], lines[0])).unwrap();
        assert!(failed(d.path()).iter().any(|c| c.name == "ledger chain"));

        std::fs::write(d.path().join("ledger.jsonl"), format!("{}\nnot json\n", lines[0])).unwrap();
        let f = failed(d.path());
        assert!(f.iter().any(|c| c.name == "ledger line" && c.detail.contains("ledger.jsonl:2")), "{f:?}");
    }

    #[test]
    fn a_missing_ledger_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let err = format!("{:#}", verify(d.path(), &VerifyOptions::default()).unwrap_err());
        assert!(err.contains("no ledger"), "{err}");
    }

    #[test]
    fn weights_are_told_from_shards() {
        assert!(looks_like_weights("/x/pytorch_model.bin"));
        assert!(looks_like_weights("a/model.safetensors"));
        assert!(!looks_like_weights("/run/shards/train-00003.bin"));
        assert!(!looks_like_weights("/run/tokenizer/tokenizer.json"));
    }
}
