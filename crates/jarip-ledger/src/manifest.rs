//! `manifest.json`: what an artifact directory holds, what it was made from and how.

use crate::{atomic_write, sha256_file, FileRef};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// What the directory is: "prepared-corpus", "tokenizer", "shards", "checkpoint", ...
    pub kind: String,
    pub jarip_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    pub created: String,
    /// Every file of the directory except the manifest itself, with its SHA-256 and size.
    pub files: BTreeMap<String, FileHash>,
    /// What the artifact was made from.
    #[serde(default)]
    pub inputs: Vec<FileRef>,
    /// Settings, seeds and figures of the stage that made it.
    #[serde(default)]
    pub settings: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileHash {
    pub sha256: String,
    pub bytes: u64,
}

impl Manifest {
    /// Hashes every regular file in `dir` (not recursing, skipping the manifest and dot files).
    pub fn for_dir(kind: &str, dir: &Path, inputs: Vec<FileRef>, settings: serde_json::Value) -> Result<Self> {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if name == MANIFEST_FILE || name.starts_with('.') || !e.file_type()?.is_file() {
                continue;
            }
            let path = e.path();
            files.insert(name, FileHash { sha256: sha256_file(&path)?, bytes: e.metadata()?.len() });
        }
        Ok(Self {
            kind: kind.to_string(),
            jarip_version: crate::JARIP_VERSION.to_string(),
            git_commit: crate::git_commit(),
            created: crate::now_rfc3339(),
            files,
            inputs,
            settings,
        })
    }

    /// Like [`Manifest::for_dir`] but recursing; names are relative paths with `/`.
    pub fn for_tree(kind: &str, dir: &Path, inputs: Vec<FileRef>, settings: serde_json::Value) -> Result<Self> {
        fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, FileHash>) -> Result<()> {
            for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || (dir == root && name == MANIFEST_FILE) {
                    continue;
                }
                let path = e.path();
                if e.file_type()?.is_dir() {
                    walk(root, &path, files)?;
                } else if e.file_type()?.is_file() {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    files.insert(rel, FileHash { sha256: sha256_file(&path)?, bytes: e.metadata()?.len() });
                }
            }
            Ok(())
        }
        let mut m = Self::for_dir(kind, dir, inputs, settings)?;
        m.files.clear();
        walk(dir, dir, &mut m.files)?;
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        atomic_write(&dir.join(MANIFEST_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a jarip manifest", p.display()))
    }

    /// Hash of the manifest's file table: one digest that names the whole artifact.
    pub fn content_hash(&self) -> String {
        let leaves: Vec<String> =
            self.files.iter().map(|(n, f)| crate::sha256_bytes(format!("{n}:{}", f.sha256).as_bytes())).collect();
        crate::merkle_root(&leaves)
    }

    /// Re-hashes each listed file and names every one that is missing or differs.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        let mut bad = Vec::new();
        for (name, want) in &self.files {
            let p = dir.join(name);
            match sha256_file(&p) {
                Ok(h) if h == want.sha256 => {}
                Ok(_) => bad.push(format!("{} (hash differs from manifest)", p.display())),
                Err(_) => bad.push(format!("{} (missing or unreadable)", p.display())),
            }
        }
        if !bad.is_empty() {
            bail!("{} does not match its manifest: {}", dir.display(), bad.join(", "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_names_changed_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"aaa").unwrap();
        std::fs::write(d.path().join("b.bin"), b"bbb").unwrap();
        let m = Manifest::for_dir("test", d.path(), vec![], serde_json::json!({"seed": 1})).unwrap();
        m.write(d.path()).unwrap();
        let back = Manifest::read(d.path()).unwrap();
        assert_eq!(back, m);
        back.verify(d.path()).unwrap();
        std::fs::write(d.path().join("b.bin"), b"bbX").unwrap();
        let err = back.verify(d.path()).unwrap_err().to_string();
        assert!(err.contains("b.bin"), "{err}");
        assert!(!err.contains("a.bin"), "{err}");
    }
}
