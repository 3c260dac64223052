//! SHA-256 helpers. Hex digests, lower case, everywhere.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Streams the file through the hasher: memory stays constant for any file size.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Merkle root over a list of hex leaf hashes (pairs hashed as the concatenated hex strings;
/// an odd last node is carried up unchanged). One changed, removed or reordered leaf changes
/// the root, which is what the ledger needs for a set of shards.
pub fn merkle_root(leaves: &[String]) -> String {
    if leaves.is_empty() {
        return sha256_bytes(b"");
    }
    let mut level: Vec<String> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|c| match c {
                [a, b] => sha256_bytes(format!("{a}{b}").as_bytes()),
                [a] => a.clone(),
                _ => unreachable!(),
            })
            .collect();
    }
    level.pop().unwrap()
}

/// A writer that hashes what passes through it, so a file's digest is known when it is written.
pub struct Sha256Writer<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }
    /// Returns the inner writer, the hex digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn merkle_detects_reorder_and_removal() {
        let l: Vec<String> = ["a", "b", "c"].iter().map(|s| sha256_bytes(s.as_bytes())).collect();
        let root = merkle_root(&l);
        let mut swapped = l.clone();
        swapped.swap(0, 1);
        assert_ne!(root, merkle_root(&swapped));
        assert_ne!(root, merkle_root(&l[..2]));
        assert_eq!(root, merkle_root(&l));
    }

    #[test]
    fn writer_hash_matches_file_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let mut w = Sha256Writer::new(std::fs::File::create(&p).unwrap());
        w.write_all(b"hello world").unwrap();
        let (_, h, n) = w.finish();
        assert_eq!(n, 11);
        assert_eq!(h, sha256_file(&p).unwrap());
    }
}
