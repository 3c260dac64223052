//! Reading training text from files: raw `.txt` files (streamed in pieces of about 1 MiB, cut
//! only where the split pattern would cut anyway) and `.jsonl` files of `{"text": ...}` lines,
//! given directly or found under a directory.

use crate::{Tokenizer, TrainConfig, Trainer};
use anyhow::{bail, Context, Result};
use jarip_ledger::FileRef;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

const PIECE: usize = 1 << 20;

/// The training files named by `inputs`: files as given, directories searched recursively for
/// `.txt` and `.jsonl` files (sorted, so the order is reproducible).
pub fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("txt" | "jsonl")) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("training input {} does not exist", p.display());
        }
    }
    if out.is_empty() {
        bail!("no .txt or .jsonl training files found in {:?}", inputs);
    }
    Ok(out)
}

/// Where a `.txt` buffer may be cut without changing the pieces: just after a line break that
/// is followed by a non-whitespace character (no split pattern joins a line break to one).
fn safe_cut(buf: &[u8]) -> Option<usize> {
    (1..buf.len()).rev().find(|&i| {
        buf[i - 1] == b'\n' && {
            let end = (i + 4).min(buf.len());
            let next = match std::str::from_utf8(&buf[i..end]) {
                Ok(s) => s.chars().next(),
                Err(e) => std::str::from_utf8(&buf[i..i + e.valid_up_to()]).ok().and_then(|s| s.chars().next()),
            };
            next.is_some_and(|c| !c.is_whitespace())
        }
    })
}

/// Calls `f` with each document of `path`.
pub fn for_each_doc(path: &Path, mut f: impl FnMut(String)) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path.extension().and_then(|x| x.to_str()) == Some("jsonl") {
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{} line {} is not JSON", path.display(), n + 1))?;
            let text = v.get("text").and_then(|t| t.as_str());
            f(text.with_context(|| format!("{} line {} has no \"text\"", path.display(), n + 1))?.to_string());
        }
        return Ok(());
    }
    let mut reader = BufReader::with_capacity(PIECE, file);
    let mut buf: Vec<u8> = Vec::with_capacity(2 * PIECE);
    loop {
        let start = buf.len();
        buf.resize(start + PIECE, 0);
        let n = reader.read(&mut buf[start..]).with_context(|| format!("cannot read {}", path.display()))?;
        buf.truncate(start + n);
        if n == 0 {
            if !buf.is_empty() {
                f(String::from_utf8_lossy(&buf).into_owned());
            }
            return Ok(());
        }
        if buf.len() >= PIECE {
            // With no safe cut in a long stretch, cut at a char boundary rather than grow forever.
            let cut = safe_cut(&buf).or_else(|| {
                (buf.len() >= 8 * PIECE).then(|| (1..buf.len()).rev().find(|&i| buf[i] & 0xC0 != 0x80).unwrap_or(0))
            });
            if let Some(cut) = cut.filter(|&c| c > 0) {
                f(String::from_utf8_lossy(&buf[..cut]).into_owned());
                buf.drain(..cut);
            }
        }
    }
}

/// Trains on `inputs` (files or directories), recording each file's SHA-256 in the manifest.
pub fn train_files(inputs: &[PathBuf], cfg: &TrainConfig) -> Result<Tokenizer> {
    let files = input_files(inputs)?;
    let mut cfg = cfg.clone();
    cfg.inputs = files.iter().map(|p| FileRef::of_file(p)).collect::<Result<_>>()?;
    let mut trainer = Trainer::new(&cfg)?;
    for p in &files {
        for_each_doc(p, |d| trainer.push(d))?;
    }
    trainer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_pieces_concatenate_to_the_file() {
        let d = tempfile::tempdir().unwrap();
        let line = "첫 줄입니다. Hello world!\n  indented\n\n";
        let text = line.repeat(PIECE / line.len() * 3);
        let p = d.path().join("a.txt");
        std::fs::write(&p, &text).unwrap();
        let mut docs = Vec::new();
        for_each_doc(&p, |s| docs.push(s)).unwrap();
        assert!(docs.len() >= 2, "{}", docs.len());
        assert_eq!(docs.concat(), text);
        for d in &docs[1..] {
            assert!(d.starts_with('첫'), "{:?}", &d[..10]);
        }
    }

    #[test]
    fn jsonl_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b.jsonl"), "{\"text\":\"하나\"}\n\n{\"text\":\"둘\"}\n").unwrap();
        std::fs::write(d.path().join("a.txt"), "셋").unwrap();
        std::fs::write(d.path().join("skip.bin"), "x").unwrap();
        let files = input_files(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(files.len(), 2);
        let mut docs = Vec::new();
        for f in &files {
            for_each_doc(f, |s| docs.push(s)).unwrap();
        }
        assert_eq!(docs, vec!["셋", "하나", "둘"]);
        let err = input_files(&[d.path().join("nope")]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
