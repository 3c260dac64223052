//! jarip-ledger: the provenance layer every stage writes through.
//!
//! It owns these, and depends on no other jarip crate:
//! - [`hash`]: SHA-256 of bytes, files and directories (Merkle root over a file list);
//! - [`atomic`]: writes that either complete or leave nothing behind (temp file + rename);
//! - [`manifest`]: the `manifest.json` that describes an artifact directory;
//! - [`chain`]: `ledger.jsonl`, an append-only hash chain of stage entries;
//! - [`records`]: the typed `config` and `details` of each stage's entry, and `metrics.jsonl` lines;
//! - [`run_dir`]: a run directory's checkpoints and which one is the run's model (`selected.json`).

#![forbid(unsafe_code)]

pub mod atomic;
pub mod chain;
pub mod hash;
pub mod manifest;
pub mod records;
pub mod run_dir;

pub use atomic::{atomic_write, AtomicDir, AtomicFile};
pub use chain::{Entry, FileRef, Ledger};
pub use hash::{merkle_root, sha256_bytes, sha256_file, Sha256Writer};
pub use manifest::Manifest;

/// Version of jarip recorded in every manifest and ledger entry.
pub const JARIP_VERSION: &str = env!("CARGO_PKG_VERSION");

static GIT_COMMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the git commit of the source the running binary was built from (the binary knows
/// it at build time; library crates do not, so it is handed down once at start-up).
pub fn set_git_commit(commit: &str) {
    let _ = GIT_COMMIT.set(commit.to_string());
}

/// Git commit recorded by [`set_git_commit`], if any.
pub fn git_commit() -> Option<String> {
    GIT_COMMIT.get().cloned()
}

/// Current UTC time as RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
