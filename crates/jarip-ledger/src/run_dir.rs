//! Run directories: the checkpoints a run keeps (`ckpt-STEP/`), and which one is the run's
//! model. A trainer that selects (fine-tuning keeps the checkpoint with the best held-out loss)
//! writes `selected.json` naming it; without that file the newest checkpoint is the model.
//! Every command that takes a model (chat, serve, generate, eval, export, lineage, `sft --base`)
//! resolves a run directory through [`model_of_run`], so they all use the same weights.

use crate::atomic::atomic_write;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file in a run directory that names the selected checkpoint.
pub const SELECTED_FILE: &str = "selected.json";

/// `selected.json`: which checkpoint is the run's model, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selected {
    /// The checkpoint directory, relative to the run directory (or absolute when outside it,
    /// such as the base model when fine-tuning never improved on it).
    pub checkpoint: String,
    pub step: u64,
    pub weights_sha256: String,
    /// What the choice was made on (`val_loss`: held-out loss) and its value there.
    pub metric: String,
    pub value: Option<f64>,
    /// One line a person can read: how the checkpoint was chosen.
    pub reason: String,
}

/// The `ckpt-*` directories of a run, oldest first.
pub fn checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(run).with_context(|| format!("cannot list {}", run.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("ckpt-").and_then(|s| s.parse::<u64>().ok()) {
            if e.file_type()?.is_dir() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest `ckpt-*` directory of a run, if any.
pub fn newest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoints(run)?.pop().map(|(_, p)| p))
}

/// The run's `selected.json` and the checkpoint directory it names, if the file exists. A file
/// that cannot be read, or that names a directory no longer there, is an error (never a silent
/// fall back to another checkpoint).
pub fn read_selected(run: &Path) -> Result<Option<(PathBuf, Selected)>> {
    let path = run.join(SELECTED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let s: Selected =
        serde_json::from_str(&text).with_context(|| format!("{}: not a selection record", path.display()))?;
    let dir = run.join(&s.checkpoint);
    if !dir.is_dir() {
        bail!(
            "{} selects {} (step {}), which is not on disk; restore it or name a checkpoint directly",
            path.display(),
            dir.display(),
            s.step
        );
    }
    Ok(Some((dir, s)))
}

/// Writes `selected.json` atomically.
pub fn write_selected(run: &Path, s: &Selected) -> Result<()> {
    atomic_write(&run.join(SELECTED_FILE), format!("{}\n", serde_json::to_string_pretty(s)?).as_bytes())
}

/// The path to record for `checkpoint` in `run`'s selection: relative when inside the run.
pub fn relative_to_run(run: &Path, checkpoint: &Path) -> String {
    match checkpoint.strip_prefix(run) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => std::path::absolute(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf()).display().to_string(),
    }
}

/// The model of a run directory: its selected checkpoint, else its newest, else `None`.
pub fn model_of_run(run: &Path) -> Result<Option<PathBuf>> {
    if let Some((dir, _)) = read_selected(run)? {
        return Ok(Some(dir));
    }
    newest_checkpoint(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_wins_over_the_newest_checkpoint_and_a_missing_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path();
        assert_eq!(model_of_run(run).unwrap(), None);
        for s in ["ckpt-000010", "ckpt-000002", "ckpt-000030"] {
            std::fs::create_dir_all(run.join(s)).unwrap();
        }
        std::fs::write(run.join("ckpt-000040"), b"a file, not a checkpoint").unwrap();
        assert_eq!(model_of_run(run).unwrap(), Some(run.join("ckpt-000030")));
        let sel = Selected {
            checkpoint: relative_to_run(run, &run.join("ckpt-000010")),
            step: 10,
            weights_sha256: "ab".into(),
            metric: "val_loss".into(),
            value: Some(1.5),
            reason: "lowest held-out loss".into(),
        };
        assert_eq!(sel.checkpoint, "ckpt-000010");
        write_selected(run, &sel).unwrap();
        assert_eq!(model_of_run(run).unwrap(), Some(run.join("ckpt-000010")));
        assert_eq!(read_selected(run).unwrap().unwrap().1, sel);
        std::fs::remove_dir(run.join("ckpt-000010")).unwrap();
        let err = format!("{:#}", model_of_run(run).unwrap_err());
        assert!(err.contains("selected.json") && err.contains("not on disk"), "{err}");
        std::fs::write(run.join(SELECTED_FILE), b"{").unwrap();
        assert!(format!("{:#}", model_of_run(run).unwrap_err()).contains("not a selection record"));
    }

    #[test]
    fn a_checkpoint_outside_the_run_is_recorded_absolute() {
        let d = tempfile::tempdir().unwrap();
        let (run, base) = (d.path().join("sft"), d.path().join("ckpt-000100"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let rel = relative_to_run(&run, &base);
        assert!(Path::new(&rel).is_absolute());
        assert_eq!(run.join(&rel), base);
    }
}
