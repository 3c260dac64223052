//! Writes that complete or leave nothing: content goes to a temporary name in the target's
//! directory, is synced, then renamed over the target. A crash or error at any point leaves
//! the previous version (or nothing) in place, never a half-written file.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file being written under a temporary name; [`AtomicFile::commit`] moves it into place.
/// Dropped without commit, the temporary file is removed.
pub struct AtomicFile {
    target: PathBuf,
    tmp: Option<tempfile::NamedTempFile>,
    buf: std::io::BufWriter<std::fs::File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = parent_of(path);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        let file = tmp.reopen().with_context(|| format!("cannot open temporary file for {}", path.display()))?;
        Ok(Self { target: path.to_path_buf(), tmp: Some(tmp), buf: std::io::BufWriter::with_capacity(1 << 20, file) })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    pub fn commit(mut self) -> Result<()> {
        let target = self.target.clone();
        self.buf.flush().with_context(|| format!("cannot write {}", target.display()))?;
        self.buf.get_ref().sync_all().with_context(|| format!("cannot sync {}", target.display()))?;
        let tmp = self.tmp.take().expect("committed twice");
        tmp.persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot rename into {}", target.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.buf.flush()
    }
}

/// A directory built under a temporary name beside its target and renamed into place when
/// complete. An existing target is replaced only at commit (moved aside, then removed).
pub struct AtomicDir {
    target: PathBuf,
    tmp: Option<PathBuf>,
}

impl AtomicDir {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = parent_of(path);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempdir_in(&dir)
            .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?
            .keep();
        Ok(Self { target: path.to_path_buf(), tmp: Some(tmp) })
    }

    /// Where to write the directory's files before commit.
    pub fn path(&self) -> &Path {
        self.tmp.as_deref().expect("already committed")
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("committed twice");
        // Make the contents durable before they become visible.
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    let _ = f.sync_all();
                }
            }
        }
        if self.target.exists() {
            let old = self.target.with_extension(format!("old-{}", std::process::id()));
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("cannot move aside {}", self.target.display()))?;
            std::fs::rename(&tmp, &self.target)
                .with_context(|| format!("cannot rename into {}", self.target.display()))?;
            std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        } else {
            std::fs::rename(&tmp, &self.target)
                .with_context(|| format!("cannot rename into {}", self.target.display()))?;
        }
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_replaces_previous_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dir_is_invisible_until_commit() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("ckpt");
        let a = AtomicDir::create(&target).unwrap();
        std::fs::write(a.path().join("w"), b"x").unwrap();
        assert!(!target.exists());
        a.commit().unwrap();
        assert_eq!(std::fs::read(target.join("w")).unwrap(), b"x");
        let b = AtomicDir::create(&target).unwrap();
        std::fs::write(b.path().join("w"), b"y").unwrap();
        drop(b);
        assert_eq!(std::fs::read(target.join("w")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
