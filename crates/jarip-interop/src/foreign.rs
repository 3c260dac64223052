//! Models jarip did not build, read-only: an HF-layout directory of the Llama, Mistral or Qwen3
//! family (`config.json`, `model.safetensors` or shards named by `model.safetensors.index.json`,
//! and `tokenizer.json`). Safetensors only — pickled weights (`*.bin`, `*.pt`) are never opened.
//! Such a model can be evaluated, served and compared with; nothing of it can become the start
//! of a jarip training run unless the user says so (`sft --allow-foreign-base`), and every output
//! that names it says it was not built by this run.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use jarip_model::{Gpt, ModelConfig, CONFIG_FILE};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The families whose tensors and arithmetic jarip's blocks reproduce exactly.
pub const FAMILIES: [&str; 3] = ["llama", "mistral", "qwen3"];

/// Longest context given to a foreign model's rotary tables and caches, unless its config asks
/// for less (Llama 3 declares 131,072 positions; evaluation and chat here need far fewer).
pub const MAX_CONTEXT: usize = 32_768;

/// Whether `dir` looks like an HF model directory that jarip did not export.
pub fn is_foreign_hf(dir: &Path) -> bool {
    dir.is_dir() && dir.join(CONFIG_FILE).is_file() && !crate::hf::is_hf_export(dir)
}

/// The weight files of an HF directory: the shards of `model.safetensors.index.json`, else
/// `model.safetensors`. Pickle files are refused by name.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(str::to_string).collect();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                if f.contains('/') || f.contains("..") || !f.ends_with(".safetensors") {
                    bail!("{}: weight_map names {f:?}, not a .safetensors file beside it", index.display());
                }
                Ok(dir.join(f))
            })
            .collect();
    }
    let single = dir.join(jarip_model::WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let pickles = ["pytorch_model.bin", "model.pt", "consolidated.00.pth", "pytorch_model.bin.index.json"];
    if let Some(p) = pickles.iter().find(|p| dir.join(p).exists()) {
        bail!(
            "{} holds {p}: pickled weights can run code when opened and jarip never reads them; \
             convert to safetensors first",
            dir.display()
        );
    }
    bail!("{} has no model.safetensors (nor model.safetensors.index.json)", dir.display())
}

/// jarip's config for an HF `config.json` of a family in [`FAMILIES`]; what jarip cannot run
/// exactly (biases, RoPE scaling, a head width other than hidden/heads) is refused by field.
pub fn config_of(v: &Value) -> Result<ModelConfig> {
    let family = v.get("model_type").and_then(Value::as_str).unwrap_or("(none)");
    if !FAMILIES.contains(&family) {
        bail!("config.json: model_type {family:?}; jarip runs {} models", FAMILIES.join(", "));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if v.get(key).and_then(Value::as_bool) == Some(true) {
            bail!("config.json: {key} is true; jarip's blocks have no biases");
        }
    }
    if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
        bail!("config.json: rope_scaling {s} is not supported (jarip runs plain RoPE)");
    }
    let mut hf = v.clone();
    if family == "mistral" {
        hf["model_type"] = "llama".into();
    }
    if hf.get("num_key_value_heads").is_none_or(Value::is_null) {
        hf["num_key_value_heads"] = hf.get("num_attention_heads").cloned().unwrap_or(Value::Null);
    }
    // transformers 5 writes RoPE settings as `rope_parameters` {rope_type, rope_theta, …}.
    if let Some(rp) = v.get("rope_parameters").filter(|r| !r.is_null()) {
        let kind = rp.get("rope_type").and_then(Value::as_str).unwrap_or("default");
        if kind != "default" {
            bail!("config.json: rope_parameters {rp} (rope_type {kind:?}) is not supported (jarip runs plain RoPE)");
        }
        if let Some(theta) = rp.get("rope_theta").filter(|t| t.is_number()) {
            hf["rope_theta"] = theta.clone();
        }
    }
    if hf.get("rope_theta").is_none_or(Value::is_null) {
        hf["rope_theta"] = 10_000.0.into();
    }
    let mut cfg = crate::hf::model_config_from_hf(&hf)?;
    if let Some(w) = v.get("sliding_window").and_then(Value::as_u64) {
        // Mistral's sliding window: within it, attention is exactly causal.
        cfg.max_seq_len = cfg.max_seq_len.min(w as usize);
    }
    cfg.max_seq_len = cfg.max_seq_len.min(MAX_CONTEXT);
    cfg.validate()?;
    Ok(cfg)
}

/// A foreign model's weights as f32 tensors under jarip's names (= HF's), read through a memory
/// map one shard at a time; a tied head (`tie_word_embeddings`, or no `lm_head.weight`) is
/// given the embedding.
fn read_tensors(files: &[PathBuf], tied: bool) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let map = jarip_kernels::mmap::map_readonly(&file, path)?;
        let st = safetensors::SafeTensors::deserialize(&map)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        for (name, view) in st.tensors() {
            if name.ends_with("rotary_emb.inv_freq") {
                continue; // a cached table some checkpoints carry; jarip computes its own
            }
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F16 => DType::F16,
                other => bail!("{}: tensor {name} is {other:?}; jarip reads f32, bf16 and f16", path.display()),
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            if out.insert(name.clone(), t).is_some() {
                bail!("tensor {name} appears in two weight files");
            }
        }
    }
    if !out.contains_key(jarip_model::layout::LM_HEAD) {
        if !tied {
            bail!(
                "the weights have no {} and config.json does not tie it to the embedding",
                jarip_model::layout::LM_HEAD
            );
        }
        let embed = out.get(jarip_model::layout::EMBED).context("the weights have no embedding")?.clone();
        out.insert(jarip_model::layout::LM_HEAD.to_string(), embed);
    }
    Ok(out)
}

/// What was read: the model, and every file it came from with its SHA-256 (the identity an
/// evaluation or a ledger records for it).
pub struct ForeignModel {
    pub model: Gpt,
    pub family: String,
    pub files: BTreeMap<String, jarip_ledger::manifest::FileHash>,
}

/// Loads an HF-layout model of a family in [`FAMILIES`] from `dir` onto `device`.
pub fn load_foreign_hf(dir: &Path, device: &Device) -> Result<ForeignModel> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let cfg = config_of(&v).with_context(|| format!("in {}", cfg_path.display()))?;
    let files = weight_files(dir)?;
    let tied = v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    let tensors = read_tensors(&files, tied)?;
    let model = Gpt::from_tensors(&cfg, tensors, device).with_context(|| format!("in {}", dir.display()))?;
    let mut hashes = BTreeMap::new();
    for p in files.iter().chain([&cfg_path, &dir.join(crate::hf::TOKENIZER_FILE)]) {
        if p.exists() {
            let name = p.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
            let bytes = std::fs::metadata(p)?.len();
            hashes.insert(name, jarip_ledger::manifest::FileHash { sha256: jarip_ledger::sha256_file(p)?, bytes });
        }
    }
    let family = v.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(ForeignModel { model, family, files: hashes })
}
