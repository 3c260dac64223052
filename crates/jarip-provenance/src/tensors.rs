//! Model tensors from disk, as f32, whatever their stored dtype.

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    pub fn cols(&self) -> usize {
        self.shape[1..].iter().product::<usize>().max(1)
    }
}

/// A model's tensors by name, and the tokenizer.json that goes with it when one was found.
pub struct ModelTensors {
    pub dir: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    pub tokenizer: Option<PathBuf>,
}

/// The safetensors files of a model directory: `model.safetensors`, HF shards
/// (`model-00001-of-00002.safetensors`…), or a jarip run directory's newest `ckpt-*`.
fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((dir, vec![path.to_path_buf()]));
    }
    if !path.is_dir() {
        bail!("{}: no such model directory or file", path.display());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("optim"))
        .collect();
    files.sort();
    if !files.is_empty() {
        return Ok((path.to_path_buf(), files));
    }
    // A run directory: its newest checkpoint.
    let mut ckpts: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .collect();
    ckpts.sort();
    match ckpts.pop() {
        Some(c) => resolve(&c),
        None => bail!("{}: no .safetensors files and no ckpt-* checkpoints", path.display()),
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8], name: &str, file: &Path) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => bail!("{}: tensor {name} has dtype {other:?}, not a floating-point weight", file.display()),
    })
}

/// Looks for tokenizer.json beside the weights, then in the run's `tokenizer/` folder.
fn find_tokenizer(dir: &Path) -> Option<PathBuf> {
    let mut d = Some(dir);
    for _ in 0..3 {
        let here = d?;
        for cand in [here.join("tokenizer.json"), here.join("tokenizer/tokenizer.json")] {
            if cand.is_file() {
                return Some(cand);
            }
        }
        d = here.parent();
    }
    None
}

pub fn load(path: &Path) -> Result<ModelTensors> {
    let (dir, files) = resolve(path)?;
    let mut tensors = BTreeMap::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let st =
            SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a safetensors file", f.display()))?;
        for (name, view) in st.tensors() {
            if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
                continue; // integer buffers (e.g. position ids) are not weights
            }
            let data = to_f32(view.dtype(), view.data(), &name, f)?;
            tensors.insert(name, Tensor { shape: view.shape().to_vec(), data });
        }
    }
    if tensors.is_empty() {
        bail!("{}: no floating-point tensors", dir.display());
    }
    let tokenizer = find_tokenizer(&dir);
    Ok(ModelTensors { dir, tensors, tokenizer })
}
