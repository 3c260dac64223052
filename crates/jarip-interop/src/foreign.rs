//! Models jarip did not build, read-only: an HF-layout directory of the Llama, Mistral or Qwen3
//! family (`config.json`, `model.safetensors` or shards named by `model.safetensors.index.json`,
//! and `tokenizer.json`), or a GGUF file of llama.cpp's `llama` or `qwen3` architecture with
//! F32, F16, BF16 or Q8_0 tensors and a BPE vocabulary (`tokenizer.ggml.model` `gpt2`).
//! Safetensors only — pickled weights (`*.bin`, `*.pt`) are never opened.
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

/// Whether `dir` looks like an HF model directory that jarip did not write: a `config.json` that
/// names a `model_type` (a jarip checkpoint's config.json is jarip's own config, without one),
/// and no jarip checkpoint or export marks.
pub fn is_foreign_hf(dir: &Path) -> bool {
    let names_model_type = std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").is_some());
    names_model_type && !crate::hf::is_hf_export(dir) && !dir.join(crate::model_dir::TRAINER_FILE).exists()
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
    let mut hf = v.clone();
    if family == "mistral" {
        hf["model_type"] = "llama".into();
    }
    if hf.get("num_key_value_heads").is_none_or(Value::is_null) {
        hf["num_key_value_heads"] = hf.get("num_attention_heads").cloned().unwrap_or(Value::Null);
    }
    // transformers 5 writes RoPE settings as `rope_parameters` {rope_type, rope_theta, …}.
    if let Some(theta) = v.pointer("/rope_parameters/rope_theta").filter(|t| t.is_number()) {
        hf["rope_theta"] = theta.clone();
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
/// map one shard at a time; with a tied head (`tie_word_embeddings`) the embedding is the head.
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
    if tied {
        // Some tied checkpoints store the head as well (a copy of the embedding): jarip uses the
        // embedding, as transformers does.
        out.remove(jarip_model::layout::LM_HEAD);
    } else if !out.contains_key(jarip_model::layout::LM_HEAD) {
        bail!("the weights have no {} and config.json does not tie it to the embedding", jarip_model::layout::LM_HEAD);
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
    let tensors = read_tensors(&files, cfg.tie_embeddings)?;
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

/// A foreign GGUF file read: the model, its tokenizer, and the family.
pub struct ForeignGguf {
    pub model: Gpt,
    pub tokenizer: jarip_tokenizer::Tokenizer,
    pub family: String,
}

/// The GGUF architectures jarip's blocks compute exactly (Mistral files are `llama`).
pub const GGUF_FAMILIES: [&str; 2] = ["llama", "qwen3"];

/// Reads a GGUF file that jarip did not write (no `jarip.config`): hyperparameters from the
/// `ARCH.*` keys, the vocabulary from `tokenizer.ggml.*` (rebuilt as a tokenizer.json), the
/// `llama` architecture's paired rotary rows put back into halves.
pub fn load_foreign_gguf(f: &crate::gguf::GgufFile, path: &Path, device: &Device) -> Result<ForeignGguf> {
    use crate::gguf::Value as G;
    let what = path.display();
    let arch = f.get("general.architecture").and_then(G::as_str).unwrap_or("(none)").to_string();
    if !GGUF_FAMILIES.contains(&arch.as_str()) {
        bail!(
            "{what}: GGUF architecture {arch:?}; jarip runs {} (and the GGUF files it exports)",
            GGUF_FAMILIES.join(", ")
        );
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<usize> {
        f.get(&key(k))
            .and_then(G::as_u64)
            .map(|x| x as usize)
            .with_context(|| format!("{what}: metadata {} missing", key(k)))
    };
    if let Some(t) = f.get(&key("rope.scaling.type")).and_then(G::as_str).filter(|t| *t != "none") {
        bail!("{what}: {} is {t:?}; jarip runs plain RoPE", key("rope.scaling.type"));
    }
    if f.tensor("rope_freqs.weight").is_some() {
        bail!("{what}: holds rope_freqs.weight (Llama 3.1-style RoPE scaling); jarip runs plain RoPE");
    }
    let model_kind = f.get("tokenizer.ggml.model").and_then(G::as_str).unwrap_or("(none)");
    if model_kind != "gpt2" {
        bail!(
            "{what}: tokenizer.ggml.model is {model_kind:?} (SentencePiece is \"llama\"); jarip reads byte-level BPE (\"gpt2\") vocabularies"
        );
    }
    let tokens: Vec<&str> = f
        .get("tokenizer.ggml.tokens")
        .and_then(G::as_array)
        .context("no tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.as_str().context("a token is not a string"))
        .collect::<Result<_>>()
        .with_context(|| format!("in {what}"))?;
    let embed = f.tensor("token_embd.weight").with_context(|| format!("{what}: tensor token_embd.weight missing"))?;
    let n_embd = int("embedding_length")?;
    let n_head = int("attention.head_count")?;
    // llama.cpp's key_length: the head width, when it is not embedding_length / head_count.
    let head_dim = f
        .get(&key("attention.key_length"))
        .and_then(G::as_u64)
        .map(|k| k as usize)
        .filter(|&k| n_head == 0 || !n_embd.is_multiple_of(n_head) || k != n_embd / n_head);
    let cfg = ModelConfig {
        vocab_size: embed.shape()[0],
        n_layer: int("block_count")?,
        n_embd,
        n_head,
        n_kv_head: f.get(&key("attention.head_count_kv")).and_then(G::as_u64).map_or(n_head, |x| x as usize),
        mlp_hidden: int("feed_forward_length")?,
        mlp: jarip_model::MlpKind::SwiGlu,
        max_seq_len: int("context_length")?.min(MAX_CONTEXT),
        rope_base: f.get(&key("rope.freq_base")).and_then(G::as_f64).unwrap_or(10_000.0),
        logit_softcap: 0.0,
        norm_eps: f.get(&key("attention.layer_norm_rms_epsilon")).and_then(G::as_f64).unwrap_or(1e-5),
        qk_norm: arch == "qwen3",
        // llama.cpp's converter leaves `output.weight` out of a tied model.
        tie_embeddings: f.tensor("output.weight").is_none(),
        rope_scaling: None, // a file with rope_freqs.weight was refused above
        head_dim_override: head_dim,
    };
    cfg.validate().with_context(|| format!("in {what}"))?;
    let mut tensors = HashMap::new();
    for (name, _) in jarip_model::param_shapes(&cfg) {
        let g = crate::gguf_model::gguf_name(&name)?;
        let info = f.tensor(&g).with_context(|| format!("{what}: tensor {g} ({name}) missing"))?;
        let mut values = f.tensor_f32(&g)?;
        if let Some(heads) = crate::gguf_model::rotary_heads(&cfg, &name).filter(|_| arch == "llama") {
            values = crate::gguf_model::halves_to_pairs(&values, heads, cfg.head_dim(), info.shape()[1], true);
        }
        tensors.insert(name, Tensor::from_vec(values, info.shape().as_slice(), &Device::Cpu)?);
    }
    let model = Gpt::from_tensors(&cfg, tensors, device).with_context(|| format!("in {what}"))?;
    let tokenizer = gguf_tokenizer(f, &tokens, &arch).with_context(|| format!("{what}: its vocabulary"))?;
    Ok(ForeignGguf { model, tokenizer, family: arch })
}

/// tokenizer.json (+ its config) rebuilt from a GGUF vocabulary: control and user-defined tokens
/// (`token_type` 3, 4) become added tokens, the rest the BPE vocabulary; the split from
/// `tokenizer.ggml.pre`; BOS only where the file adds one.
fn gguf_tokenizer(f: &crate::gguf::GgufFile, tokens: &[&str], arch: &str) -> Result<jarip_tokenizer::Tokenizer> {
    use crate::gguf::Value as G;
    use serde_json::json;
    let pre = f.get("tokenizer.ggml.pre").and_then(G::as_str).unwrap_or("default");
    let Some(pattern) = jarip_tokenizer::llama_cpp_pattern(pre) else {
        bail!("tokenizer.ggml.pre {pre:?} is a split jarip does not know (it reads llama-bpe, qwen2, gpt-2)");
    };
    let types: Vec<u64> = f
        .get("tokenizer.ggml.token_type")
        .and_then(G::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<&str> = f
        .get("tokenizer.ggml.merges")
        .and_then(G::as_array)
        .context("no tokenizer.ggml.merges")?
        .iter()
        .map(|v| v.as_str().context("a merge is not a string"))
        .collect::<Result<_>>()?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        match types.get(id).copied().unwrap_or(1) {
            3 | 4 => added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                                      "rstrip": false, "normalized": false, "special": true})),
            _ => {
                vocab.insert(t.to_string(), json!(id));
            }
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false}, byte_level]},
        "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": pre == "llama-bpe", "vocab": vocab, "merges": merges},
    });
    let name = |k: &str| -> Option<String> {
        let id = f.get(k).and_then(G::as_u64)? as usize;
        tokens.get(id).map(|t| t.to_string())
    };
    let add_bos = f.get("tokenizer.ggml.add_bos_token").and_then(G::as_bool).unwrap_or(arch == "llama");
    let mut eos_ids: Vec<u64> = Vec::new();
    for k in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        eos_ids.extend(f.get(k).and_then(G::as_u64));
    }
    let config = json!({
        "bos_token": if add_bos { name("tokenizer.ggml.bos_token_id") } else { None },
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "chat_template": f.get("tokenizer.chat_template").and_then(G::as_str),
    });
    let text = serde_json::to_string(&doc)?;
    jarip_tokenizer::Tokenizer::from_foreign_json(text, &config, &json!({"eos_token_id": eos_ids}), None)
}
