//! `RUN/metrics.jsonl`: one JSON object per optimizer step (`step`, `loss`, `lr`, `tokens`,
//! `tokens_per_s`, `mfu`, ...; on evaluation steps also `val_loss` and `val_bpb`).

use anyhow::{Context, Result};
use jarip_ledger::records::StepMetrics;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub fn at(run: &Path) -> Self {
        Self { path: run.join(METRICS_FILE) }
    }

    pub fn append(&self, line: &StepMetrics) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(f, "{}", jarip_ledger::records::metrics_line(line)?)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Empties the log (a new run).
    pub fn clear(&self) -> Result<()> {
        if self.path.exists() {
            std::fs::remove_file(&self.path).with_context(|| format!("cannot remove {}", self.path.display()))?;
        }
        Ok(())
    }

    /// Drops lines after `step` (and any torn last line): a resumed run rewrites what the
    /// interrupted one logged past its last checkpoint.
    pub fn truncate_after(&self, step: u64) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)?;
        let mut kept = String::new();
        for line in text.lines() {
            let Ok(m) = serde_json::from_str::<StepMetrics>(line) else { continue };
            if m.step <= step {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        jarip_ledger::atomic_write(&self.path, kept.as_bytes())
    }

    /// Every logged line, typed.
    pub fn steps(path: &Path) -> Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    /// Every logged line.
    pub fn read(path: &Path) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }
}
