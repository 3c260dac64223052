//! Read-only memory maps: token shards and GGUF files are read in place instead of copied.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

pub use memmap2::Mmap;

/// Maps `file` (opened from `path`, which only names it in errors) read-only.
///
/// The map is valid as long as the file is not truncated or rewritten while it is mapped. jarip
/// never writes a file it maps (every output is written under a temporary name and renamed), so
/// the remaining risk is another process changing the file in place, which every mmap-based
/// reader (llama.cpp's, safetensors') accepts; readers here check lengths against the map
/// itself, never against a header alone.
pub fn map_readonly(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the mapping is read-only and we never create a mutable view of it; the contract
    // above (the file is not modified in place while mapped) is the caller's documented
    // assumption, as for any memory-mapped reader.
    unsafe { Mmap::map(file) }.with_context(|| format!("cannot map {}", path.display()))
}
