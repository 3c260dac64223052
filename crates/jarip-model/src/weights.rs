//! Weights on disk: `model.safetensors` (HF-style names, fp32) beside `config.json`, and the
//! weight hash recorded in the provenance ledger.

use crate::config::ModelConfig;
use crate::model::Gpt;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// SHA-256 over every tensor in canonical (sorted-name) order: for each, its name, a zero
/// byte, its shape as little-endian u64s, then its fp32 values little-endian. Independent of
/// the file format, so the same weights hash the same however they were stored.
pub fn hash_tensors<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<String> {
    let mut sorted: Vec<(&str, &Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in sorted {
        h.update(name.as_bytes());
        h.update([0u8]);
        for &d in t.dims() {
            h.update((d as u64).to_le_bytes());
        }
        let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

impl Gpt {
    /// The provenance hash of the current weights (see [`hash_tensors`]).
    pub fn weights_sha256(&self) -> Result<String> {
        hash_tensors(self.params().iter().map(|(n, v)| (n.as_str(), v.as_tensor())))
    }

    /// Writes `dir/model.safetensors` and `dir/config.json` (plain writes: callers that need
    /// atomicity write into an `AtomicDir`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&self.tensors(), &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::write(dir.join(CONFIG_FILE), self.config().to_json())
            .with_context(|| format!("cannot write {}", dir.join(CONFIG_FILE).display()))?;
        Ok(())
    }

    /// Loads a model saved by [`Gpt::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        Self::load_weights(&cfg, &dir.join(WEIGHTS_FILE), device)
    }

    /// Loads `model.safetensors` for a known config.
    pub fn load_weights(cfg: &ModelConfig, path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read weights {}", path.display()))?;
        Self::from_tensors(cfg, tensors, device).with_context(|| format!("in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_bit_for_bit() {
        let cfg = ModelConfig::tiny(300);
        let a = Gpt::new(&cfg, 42, &Device::Cpu).unwrap();
        let b = Gpt::new(&cfg, 42, &Device::Cpu).unwrap();
        let c = Gpt::new(&cfg, 43, &Device::Cpu).unwrap();
        assert_eq!(a.weights_sha256().unwrap(), b.weights_sha256().unwrap());
        assert_ne!(a.weights_sha256().unwrap(), c.weights_sha256().unwrap());
    }

    #[test]
    fn save_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::tiny(300);
        let a = Gpt::new(&cfg, 5, &Device::Cpu).unwrap();
        a.save(d.path()).unwrap();
        let b = Gpt::load(d.path(), &Device::Cpu).unwrap();
        assert_eq!(b.config(), &cfg);
        assert_eq!(a.weights_sha256().unwrap(), b.weights_sha256().unwrap());
        let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
        let la = a.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let lb = b.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(la, lb);
        // A config that does not match the weights is refused with the tensor's name.
        let mut other = cfg.clone();
        other.n_embd = 128;
        let err = Gpt::load_weights(&other, &d.path().join(WEIGHTS_FILE), &Device::Cpu)
            .err()
            .expect("mismatched config must fail");
        assert!(format!("{err:#}").contains("shape"), "{err:#}");
    }
}
