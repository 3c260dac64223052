//! The Hugging Face layout: a directory that `transformers` (with `trust_remote_code`, through the
//! `modeling_jarip.py` written beside the weights), the `tokenizers` library, `safetensors` readers
//! and `jarip` itself all load.
//!
//! ```text
//! OUT/config.json             HF field names (hidden_size, num_hidden_layers, …) + the jarip config verbatim
//! OUT/model.safetensors       HF tensor names (the same names jarip trains with), f32 | bf16 | f16
//! OUT/generation_config.json  bos/eos/pad ids: an assistant turn ends with <|end|>
//! OUT/tokenizer.json          the tokenizer the model was trained with, byte for byte
//! OUT/tokenizer_config.json   special tokens and the chat template (Jinja, = Tokenizer::render_chat)
//! OUT/special_tokens_map.json
//! OUT/configuration_jarip.py, OUT/modeling_jarip.py   the architecture in PyTorch
//! OUT/manifest.json           hashes of every file, the source checkpoint and its weight hash
//! ```

use crate::WeightType;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use jarip_ledger::{AtomicDir, Manifest};
use jarip_model::{Gpt, MlpKind, ModelConfig, CONFIG_FILE, WEIGHTS_FILE};
use jarip_tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// `model_type` of an exported config; also what marks a directory as a jarip HF export.
pub const MODEL_TYPE: &str = "jarip";
/// The manifest `kind` of an export.
pub const EXPORT_KIND: &str = "export-hf";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

const MODELING_PY: &str = include_str!("../python/modeling_jarip.py");
const CONFIGURATION_PY: &str = include_str!("../python/configuration_jarip.py");

/// The chat template of [`Tokenizer::render_chat`] in Jinja, for `tokenizer.apply_chat_template`.
/// Message content is plain text: HF tokenizers match special-token strings inside it where
/// jarip does not, the one difference (and only for text that spells a special token).
pub const CHAT_TEMPLATE: &str = "{{ '<|bos|>' }}{% for message in messages %}\
{% if message['role'] not in ['system', 'user', 'assistant'] %}\
{{ raise_exception('jarip knows the roles system, user and assistant, not ' + message['role']) }}{% endif %}\
{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

fn special(tok: &Tokenizer, name: &str) -> Result<u32> {
    tok.special_id(name).with_context(|| format!("the tokenizer has no {name} token"))
}

/// The transformers family a model's shape belongs to exactly, if any: SwiGLU, no soft-cap, and
/// QK-norm (Qwen3) or not (Llama) — the `--arch llama|qwen3` presets. Such a model is exported
/// with the family's own `architectures`/`model_type` and no modeling code: transformers, vLLM
/// and SGLang load it with their own classes. Tensor names and the rotary convention (halves
/// rotated, HF's `rotate_half`) are already the same.
pub fn native_family(cfg: &ModelConfig) -> Option<(&'static str, &'static str)> {
    if cfg.mlp != MlpKind::SwiGlu || cfg.logit_softcap != 0.0 {
        return None;
    }
    Some(if cfg.qk_norm { ("qwen3", "Qwen3ForCausalLM") } else { ("llama", "LlamaForCausalLM") })
}

/// `config.json` in HF terms; `jarip` holds the native config so import is exact.
pub fn hf_config(cfg: &ModelConfig, tok: &Tokenizer, dtype: WeightType) -> Result<Value> {
    let torch_dtype = float_type(dtype)?.1;
    // What every family states the same way.
    let mut v = json!({
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.norm_eps,
        "attention_bias": false,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": tok.bos_id(),
        "eos_token_id": special(tok, "<|end|>")?,
        "pad_token_id": special(tok, "<|pad|>")?,
        "torch_dtype": torch_dtype,
        "jarip": cfg,
    });
    let family = match native_family(cfg) {
        Some((model_type, class)) => json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_act": "silu",
            "rope_scaling": cfg.rope_scaling.as_ref().map(|r| json!({
                "rope_type": "llama3",
                "factor": r.factor,
                "low_freq_factor": r.low_freq_factor,
                "high_freq_factor": r.high_freq_factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
            })),
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "use_sliding_window": false,
            "sliding_window": null,
            "use_cache": true,
        }),
        None => {
            let (act, mlp) = match cfg.mlp {
                MlpKind::Relu2 => ("relu2", "relu2"),
                MlpKind::SwiGlu => ("silu", "swiglu"),
            };
            json!({
                "architectures": ["JaripForCausalLM"],
                "model_type": MODEL_TYPE,
                "auto_map": {
                    "AutoConfig": "configuration_jarip.JaripConfig",
                    "AutoModelForCausalLM": "modeling_jarip.JaripForCausalLM"
                },
                "hidden_act": act,
                "mlp_type": mlp,
                "qk_norm": cfg.qk_norm,
                // HF's convention: null = no soft-cap.
                "final_logit_softcapping": (cfg.logit_softcap > 0.0).then_some(cfg.logit_softcap),
            })
        }
    };
    if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), family) {
        map.extend(extra);
    }
    Ok(v)
}

/// The model config of an HF `config.json`: the verbatim `jarip` block when present, otherwise
/// mapped from the HF fields (each missing or unusable field named).
pub fn model_config_from_hf(v: &Value) -> Result<ModelConfig> {
    if let Some(native) = v.get("jarip") {
        let cfg: ModelConfig =
            serde_json::from_value(native.clone()).context("field \"jarip\" is not a jarip model config")?;
        cfg.validate()?;
        return Ok(cfg);
    }
    let int = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .with_context(|| format!("config.json: field {k:?} missing or not an integer"))
    };
    let float = |k: &str| -> Result<f64> {
        v.get(k).and_then(Value::as_f64).with_context(|| format!("config.json: field {k:?} missing or not a number"))
    };
    let family = v.get("model_type").and_then(Value::as_str).unwrap_or(MODEL_TYPE);
    let native = matches!(family, "llama" | "qwen3");
    let mlp = if native {
        match v.get("hidden_act").and_then(Value::as_str) {
            Some("silu") => MlpKind::SwiGlu,
            other => bail!("config.json: a {family} model with hidden_act {other:?}; jarip runs silu (SwiGLU)"),
        }
    } else {
        match v.get("mlp_type").and_then(Value::as_str).unwrap_or("relu2") {
            "relu2" => MlpKind::Relu2,
            "swiglu" => MlpKind::SwiGlu,
            other => bail!("config.json: mlp_type {other:?} is neither relu2 nor swiglu"),
        }
    };
    let cfg = ModelConfig {
        vocab_size: int("vocab_size")?,
        n_layer: int("num_hidden_layers")?,
        n_embd: int("hidden_size")?,
        n_head: int("num_attention_heads")?,
        n_kv_head: int("num_key_value_heads")?,
        mlp_hidden: int("intermediate_size")?,
        mlp,
        max_seq_len: int("max_position_embeddings")?,
        rope_base: float("rope_theta")?,
        // Absent or null: no soft-cap (Llama, Qwen, Mistral write none).
        logit_softcap: v.get("final_logit_softcapping").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        norm_eps: float("rms_norm_eps")?,
        // Qwen3 has QK-norm, Llama none; jarip exports say (those from before the field had it).
        qk_norm: match family {
            "qwen3" => true,
            "llama" => false,
            _ => v.get("qk_norm").and_then(Value::as_bool).unwrap_or(true),
        },
        // transformers' default is untied.
        tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
        rope_scaling: rope_scaling_of(v)?,
        head_dim_override: None,
    };
    let mut cfg = cfg;
    // A head width other than hidden/heads (Qwen3 0.6B, 4B, 32B) is kept as such.
    if let Some(hd) = v.get("head_dim").and_then(Value::as_u64).map(|h| h as usize) {
        let heads = cfg.n_head.max(1);
        if !cfg.n_embd.is_multiple_of(heads) || hd != cfg.n_embd / heads {
            cfg.head_dim_override = Some(hd);
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// RoPE scaling from `rope_scaling` (transformers 4) or `rope_parameters` (5): none for absent,
/// null or `default`; Llama 3.1's `llama3`; any other kind (YaRN, linear, dynamic …) refused by name.
fn rope_scaling_of(v: &Value) -> Result<Option<jarip_model::RopeScaling>> {
    let Some(r) = v.get("rope_scaling").filter(|r| !r.is_null()).or_else(|| v.get("rope_parameters")) else {
        return Ok(None);
    };
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                r.get(k).and_then(Value::as_f64).with_context(|| format!("config.json: llama3 rope scaling without {k}"))
            };
            Ok(Some(jarip_model::RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => bail!("config.json: RoPE scaling of type {other:?} is not supported (jarip computes plain RoPE and Llama 3.1's llama3 scaling)"),
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Canonical hash ([`jarip_model::hash_tensors`]) of the exported weights read back as f32:
    /// equal to the source's for an f32 export.
    pub weights_sha256: String,
    pub manifest: Manifest,
}

/// Writes `model` with its tokenizer (`tokenizer_json`, copied byte for byte) to `out` in the HF
/// layout, atomically. `provenance` (source checkpoint, its weight hash, …) goes into the manifest.
/// The candle and torch names of a float weight type; the HF layout has no Q8_0.
fn float_type(wt: WeightType) -> Result<(DType, &'static str)> {
    match (wt.candle(), wt.torch_name()) {
        (Some(c), Some(t)) => Ok((c, t)),
        _ => bail!("weight type {} is not a tensor type of the HF layout: use f32, bf16 or f16", wt.name()),
    }
}

pub fn export_hf(
    model: &Gpt,
    tokenizer_json: &Path,
    out: &Path,
    dtype: WeightType,
    provenance: Value,
) -> Result<Exported> {
    let (candle_dtype, torch_dtype) = float_type(dtype)?;
    let tok = Tokenizer::load(tokenizer_json).with_context(|| format!("cannot load {}", tokenizer_json.display()))?;
    let cfg = model.config();
    if tok.vocab_size() != cfg.vocab_size {
        bail!("tokenizer {} has {} tokens, the model {}", tokenizer_json.display(), tok.vocab_size(), cfg.vocab_size);
    }
    let tensors: HashMap<String, Tensor> =
        model.tensors().into_iter().map(|(n, t)| Ok((n, t.to_dtype(candle_dtype)?))).collect::<Result<_>>()?;
    let as_f32: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    let weights_sha256 = jarip_model::hash_tensors(as_f32.iter().map(|(n, t)| (n.as_str(), t)))?;

    let dir = AtomicDir::create(out)?;
    let p = dir.path();
    candle_core::safetensors::save(&tensors, p.join(WEIGHTS_FILE))?;
    let write_json = |name: &str, v: &Value| -> Result<()> {
        std::fs::write(p.join(name), serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("cannot write {name}"))
    };
    write_json(CONFIG_FILE, &hf_config(cfg, &tok, dtype)?)?;
    let (bos, end, pad, eos) = (tok.bos_id(), special(&tok, "<|end|>")?, special(&tok, "<|pad|>")?, tok.eos_id());
    write_json(
        "generation_config.json",
        &json!({ "bos_token_id": bos, "eos_token_id": [end, eos], "pad_token_id": pad, "max_length": cfg.max_seq_len }),
    )?;
    std::fs::copy(tokenizer_json, p.join(TOKENIZER_FILE))
        .with_context(|| format!("cannot copy {}", tokenizer_json.display()))?;
    let added: serde_json::Map<String, Value> = jarip_tokenizer::SPECIAL_TOKENS
        .iter()
        .map(|s| {
            let id = special(&tok, s)?;
            Ok((
                id.to_string(),
                json!({"content": s, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false, "special": true}),
            ))
        })
        .collect::<Result<_>>()?;
    write_json(
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|bos|>",
            "eos_token": "<|end|>",
            "pad_token": "<|pad|>",
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": cfg.max_seq_len,
            "added_tokens_decoder": added,
            "chat_template": CHAT_TEMPLATE,
        }),
    )?;
    write_json(
        "special_tokens_map.json",
        &json!({ "bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>" }),
    )?;
    if native_family(cfg).is_none() {
        std::fs::write(p.join("modeling_jarip.py"), MODELING_PY)?;
        std::fs::write(p.join("configuration_jarip.py"), CONFIGURATION_PY)?;
    }
    let settings = json!({
        "format": "hf",
        "dtype": torch_dtype,
        "model": cfg,
        "tokenizer_sha256": tok.sha256(),
        "weights_sha256": weights_sha256,
        "provenance": provenance,
    });
    let manifest = Manifest::for_dir(EXPORT_KIND, p, vec![], settings)?;
    manifest.write(p)?;
    share_readable(p)?;
    dir.commit()?;
    Ok(Exported { weights_sha256, manifest })
}

/// An export is made to be shared: world-readable files, whatever the source's modes were.
fn share_readable(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    for e in std::fs::read_dir(dir)? {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(e?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Whether `dir` holds a jarip HF export: a `config.json` whose `model_type` is jarip, or a
/// native-family export (Llama, Qwen3) that carries jarip's own config beside the HF fields.
pub fn is_hf_export(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").and_then(Value::as_str) == Some(MODEL_TYPE) || v.get("jarip").is_some())
}

/// Loads the weights of an HF-layout directory as an f32 model.
pub fn load_hf(dir: &Path, device: &Device) -> Result<Gpt> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let cfg = model_config_from_hf(&v).with_context(|| format!("in {}", cfg_path.display()))?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    let tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    Gpt::from_tensors(&cfg, tensors, device).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(dir: &Path) -> std::path::PathBuf {
        let docs = ["대한민국은 민주공화국이다. All the world's a stage.".repeat(20)];
        let tok = jarip_tokenizer::train(
            docs.into_iter(),
            &jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() },
        )
        .unwrap();
        tok.save(dir, vec![]).unwrap();
        dir.join(TOKENIZER_FILE)
    }

    #[test]
    fn export_then_load_gives_the_same_weights_and_config() {
        let tmp = tempfile::tempdir().unwrap();
        let tok = tokenizer(tmp.path());
        // Both MLPs; with and without a soft-cap (0 is written as HF's null); the llama and qwen3
        // shapes as their native families, without modeling code.
        let cases = [
            (MlpKind::Relu2, 15.0, true, "jarip"),
            (MlpKind::SwiGlu, 15.0, true, "jarip"),
            (MlpKind::SwiGlu, 0.0, false, "llama"),
            (MlpKind::SwiGlu, 0.0, true, "qwen3"),
        ];
        for (mlp, cap, qk_norm, family) in cases {
            let mut cfg = ModelConfig::tiny(300);
            cfg.mlp = mlp;
            cfg.logit_softcap = cap;
            cfg.qk_norm = qk_norm;
            let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
            let out = tmp.path().join(format!("hf-{mlp:?}-{cap}-{qk_norm}"));
            let e = export_hf(&model, &tok, &out, WeightType::F32, json!({"source": "test"})).unwrap();
            assert_eq!(e.weights_sha256, model.weights_sha256().unwrap(), "f32 export keeps the weights");
            assert!(is_hf_export(&out));
            Manifest::read(&out).unwrap().verify(&out).unwrap();
            let back = load_hf(&out, &Device::Cpu).unwrap();
            assert_eq!(back.config(), model.config());
            assert_eq!(back.weights_sha256().unwrap(), model.weights_sha256().unwrap());
            // The HF fields alone map back to the same config.
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_FILE)).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("jarip");
            assert_eq!(v["model_type"], family);
            assert_eq!(out.join("modeling_jarip.py").exists(), family == "jarip", "{family}: modeling code");
            assert_eq!(v["final_logit_softcapping"].is_null(), cap == 0.0);
            assert_eq!(&model_config_from_hf(&v).unwrap(), model.config());
        }
    }

    #[test]
    fn bf16_export_rounds_each_weight_once() {
        let tmp = tempfile::tempdir().unwrap();
        let tok = tokenizer(tmp.path());
        let model = Gpt::new(&ModelConfig::tiny(300), 5, &Device::Cpu).unwrap();
        let out = tmp.path().join("hf");
        let e = export_hf(&model, &tok, &out, WeightType::Bf16, Value::Null).unwrap();
        assert_ne!(e.weights_sha256, model.weights_sha256().unwrap());
        let back = load_hf(&out, &Device::Cpu).unwrap();
        assert_eq!(back.weights_sha256().unwrap(), e.weights_sha256);
        for (name, t) in model.tensors() {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = back.tensors()[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= x.abs() / 128.0, "{name}: {x} → {y}");
            }
        }
        let bytes = std::fs::metadata(out.join(WEIGHTS_FILE)).unwrap().len();
        assert!(bytes < (model.num_params() * 2 + 4096) as u64, "bf16 file of {bytes} bytes");
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let tok_dir = tempfile::tempdir().unwrap();
        let tok = Tokenizer::load(&tokenizer(tok_dir.path())).unwrap();
        let cfg = ModelConfig::tiny(300);
        let mut v = hf_config(&cfg, &tok, WeightType::F32).unwrap();
        v.as_object_mut().unwrap().remove("jarip");
        v["num_hidden_layers"] = json!("four");
        assert!(model_config_from_hf(&v).unwrap_err().to_string().contains("num_hidden_layers"));
        v["num_hidden_layers"] = json!(2);
        v["head_dim"] = json!(7);
        assert!(model_config_from_hf(&v).unwrap_err().to_string().contains("head_dim"));
        v["head_dim"] = json!(32); // wider than hidden / heads = 16: kept (Qwen3 0.6B's case)
        assert_eq!(model_config_from_hf(&v).unwrap().head_dim(), 32);
        v["head_dim"] = json!(16);
        v["mlp_type"] = json!("gelu");
        assert!(model_config_from_hf(&v).unwrap_err().to_string().contains("mlp_type"));
    }
}
