//! Model tensors from disk, as f32, whatever their stored dtype.
//!
//! A model is named by a jarip checkpoint directory, a jarip run directory (its newest
//! checkpoint), an HF-layout directory (`model.safetensors` or `model-0000N-of-0000M.safetensors`
//! shards), or one `.safetensors` file. Only safetensors are read: pickled PyTorch files can run
//! code when loaded, and a provenance tool must never do that.

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
    /// A weight matrix worth matrix statistics (not a vector, not a sliver).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() >= 2 && self.rows() >= 4 && self.cols() >= 4
    }
    pub fn row(&self, i: usize) -> &[f32] {
        let c = self.cols();
        &self.data[i * c..(i + 1) * c]
    }
}

/// A model's tensors by name, and the files that describe it when they were found.
pub struct ModelTensors {
    /// Directory holding the weights (or a description, for models built in memory).
    pub dir: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// `tokenizer.json` that goes with the weights, if one was found.
    pub tokenizer: Option<PathBuf>,
    /// `config.json` beside the weights, if any (a jarip config when jarip wrote it).
    pub config: Option<PathBuf>,
}

impl ModelTensors {
    /// Wraps tensors made in memory (references, tests).
    pub fn from_map(label: &str, tensors: BTreeMap<String, Tensor>, tokenizer: Option<PathBuf>) -> Self {
        Self { dir: PathBuf::from(label), tensors, tokenizer, config: None }
    }

    /// Tensors of a candle model (e.g. [`jarip_model::Gpt::tensors`]).
    pub fn from_candle(
        label: &str,
        tensors: &std::collections::HashMap<String, candle_core::Tensor>,
        tokenizer: Option<PathBuf>,
    ) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (name, t) in tensors {
            let data = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            out.insert(name.clone(), Tensor { shape: t.dims().to_vec(), data });
        }
        Ok(Self::from_map(label, out, tokenizer))
    }

    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// One line naming the model and its size.
    pub fn describe(&self) -> String {
        format!("{} ({} tensors, {} parameters)", self.dir.display(), self.tensors.len(), self.num_params())
    }
}

fn is_weights_file(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "safetensors")
        // optimizer moments live beside the weights in a jarip checkpoint
        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("optim"))
}

/// The safetensors files of a model directory: `model.safetensors`, HF shards
/// (`model-00001-of-00002.safetensors`…), or a jarip run directory's newest `ckpt-*`.
fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if path.is_file() {
        if path.extension().is_none_or(|x| x != "safetensors") {
            bail!("{} is not a .safetensors file (only safetensors weights are read)", path.display());
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        return Ok((dir, vec![path.to_path_buf()]));
    }
    if !path.is_dir() {
        bail!("{}: no such model directory or file", path.display());
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut files: Vec<PathBuf> = entries.iter().filter(|p| p.is_file() && is_weights_file(p)).cloned().collect();
    files.sort();
    if !files.is_empty() {
        return Ok((path.to_path_buf(), files));
    }
    // A run directory: its newest checkpoint (by step, not by name length).
    let newest = entries
        .iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let step = p.file_name()?.to_string_lossy().strip_prefix("ckpt-")?.parse::<u64>().ok()?;
            Some((step, p.clone()))
        })
        .max();
    if let Some((_, c)) = newest {
        return resolve(&c);
    }
    let other: Vec<String> = entries
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "bin" || x == "pt" || x == "pth" || x == "gguf"))
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string())
        .collect();
    if other.is_empty() {
        bail!("{}: no .safetensors files and no ckpt-* checkpoints", path.display());
    }
    bail!(
        "{}: no .safetensors files (found {}; convert them to safetensors: only safetensors are read)",
        path.display(),
        other.join(", ")
    )
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

/// Looks for `name` beside the weights, then in the run's `tokenizer/` folder (tokenizer only).
pub(crate) fn find_near(dir: &Path, name: &str, levels: usize) -> Option<PathBuf> {
    let mut d = Some(dir);
    for _ in 0..levels {
        let here = d?;
        for cand in [here.join(name), here.join("tokenizer").join(name)] {
            if cand.is_file() {
                return Some(cand);
            }
        }
        d = here.parent();
    }
    None
}

/// The weight hash of a safetensors file, computed as [`jarip_model::hash_tensors`] does (names
/// sorted; per tensor its name, a zero byte, its dims as little-endian u64, its values as f32
/// little-endian) but straight from the file's bytes: f32 tensors are hashed as stored, without
/// building a model, so checking a checkpoint costs one more read of its weights and no more.
pub fn weights_sha256_of(file: &Path) -> Result<String> {
    use std::io::Write;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let st =
        SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a safetensors file", file.display()))?;
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = jarip_ledger::Sha256Writer::new(std::io::sink());
    for (name, view) in views {
        h.write_all(name.as_bytes())?;
        h.write_all(&[0])?;
        for &d in view.shape() {
            h.write_all(&(d as u64).to_le_bytes())?;
        }
        if view.dtype() == Dtype::F32 {
            h.write_all(view.data())?;
        } else {
            let v = to_f32(view.dtype(), view.data(), &name, file)?;
            h.write_all(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
        }
    }
    Ok(h.finish().1)
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
            if tensors.insert(name.clone(), Tensor { shape: view.shape().to_vec(), data }).is_some() {
                bail!("{}: tensor {name} appears in more than one weights file", dir.display());
            }
        }
    }
    if tensors.is_empty() {
        bail!("{}: no floating-point tensors", dir.display());
    }
    let tokenizer = find_near(&dir, "tokenizer.json", 3);
    let config = Some(dir.join("config.json")).filter(|p| p.is_file());
    Ok(ModelTensors { dir, tensors, tokenizer, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_weight_hash_is_the_models() {
        let d = tempfile::tempdir().unwrap();
        let m = jarip_model::Gpt::new(&jarip_model::ModelConfig::tiny(300), 9, &candle_core::Device::Cpu).unwrap();
        m.save(d.path()).unwrap();
        let got = weights_sha256_of(&d.path().join(jarip_model::WEIGHTS_FILE)).unwrap();
        assert_eq!(got, m.weights_sha256().unwrap());
    }

    #[test]
    fn refuses_what_is_not_safetensors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("model.safetensors");
        std::fs::write(&f, b"this is not a safetensors file").unwrap();
        let err = format!("{:#}", load(&f).err().unwrap());
        assert!(err.contains("not a safetensors file"), "{err}");
        let bin = d.path().join("pytorch_model.bin");
        std::fs::write(&bin, b"pickle").unwrap();
        let err = format!("{:#}", load(&bin).err().unwrap());
        assert!(err.contains("not a .safetensors file"), "{err}");
        std::fs::remove_file(&f).unwrap();
        let err = format!("{:#}", load(d.path()).err().unwrap());
        assert!(err.contains("pytorch_model.bin"), "{err}");
        let err = format!("{:#}", load(&d.path().join("nowhere")).err().unwrap());
        assert!(err.contains("no such model"), "{err}");
    }
}
