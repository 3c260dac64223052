//! A jarip model as one GGUF file: llama.cpp's tensor names and metadata conventions
//! (`general.*`, `<arch>.*` hyperparameters, `tokenizer.ggml.*` vocabulary and merges, the chat
//! template), architecture `jarip`, the exact jarip config and tokenizer.json embedded, and the
//! provenance (source weight hash, hash of the stored weights) under `jarip.provenance.*`.
//!
//! Weight matrices may be stored as `Q8_0` (8-bit blocks, 3.8× smaller than f32): norms stay f32.
//! Loading checks the stored weights and tokenizer against the hashes recorded at export, so an
//! accidental or careless edit is refused (a forger who rewrites the recorded hashes too is
//! caught by `jarip lineage` and the run's ledger, not by the file alone).
//!
//! llama.cpp has no graph for architecture `jarip` (ReLU² MLP with QK-norm and a logit soft-cap).
//! A model with a SwiGLU MLP is, apart from the soft-cap, llama.cpp's `qwen3` (pre-norm RMSNorm,
//! per-head RMSNorm on queries and keys, rotary on the two halves, GQA, untied head, no biases):
//! [`GgufArch::Qwen3`] writes it under that architecture, which llama.cpp runs (without the cap),
//! and jarip still loads exactly (the jarip config travels along).
//!
//! The `--arch` presets are llama.cpp's own graphs exactly: a qwen3-shaped model (SwiGLU,
//! QK-norm, no soft-cap) is `qwen3`; a llama-shaped one (no QK-norm) is `llama`, whose rotary
//! embedding pairs neighbouring dimensions where jarip (and HF) rotate the two halves, so the
//! `q`/`k` rows of each head are permuted on export as llama.cpp's converter does
//! ([`halves_to_pairs`]) and back on load. [`GgufArch::for_config`] picks the architecture.

use crate::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use crate::hf::CHAT_TEMPLATE;
pub use crate::WeightType;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use jarip_model::{Gpt, MlpKind, ModelConfig};
use jarip_tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::Path;

pub const ARCH: &str = "jarip";

/// The `general.architecture` a file declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArch {
    Jarip,
    /// For SwiGLU models: llama.cpp's `qwen3` graph computes them, except the logit soft-cap.
    Qwen3,
    /// For SwiGLU models without QK-norm: llama.cpp's `llama` graph (exact without a soft-cap).
    Llama,
}

impl GgufArch {
    pub fn name(self) -> &'static str {
        match self {
            GgufArch::Jarip => ARCH,
            GgufArch::Qwen3 => "qwen3",
            GgufArch::Llama => "llama",
        }
    }

    /// The architecture llama.cpp runs a model of this shape as exactly: `qwen3` or `llama` for
    /// the `--arch` presets' shapes, else `jarip`.
    pub fn for_config(cfg: &ModelConfig) -> Self {
        match crate::hf::native_family(cfg) {
            Some(("qwen3", _)) => GgufArch::Qwen3,
            Some(_) => GgufArch::Llama,
            None => GgufArch::Jarip,
        }
    }
}

/// One head-major block of rows (`heads × head_dim` rows of `cols`) from jarip's rotary layout
/// (dimension `i` rotates with `i + D/2`) to llama.cpp's `llama` layout (`2i` with `2i + 1`):
/// row `h·D + 2i + j` of the result is row `h·D + j·D/2 + i` of the input. `inverse` undoes it.
pub fn halves_to_pairs(values: &[f32], heads: usize, head_dim: usize, cols: usize, inverse: bool) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (paired, halved) = (h * head_dim + 2 * i + j, h * head_dim + j * half + i);
                let (dst, src) = if inverse { (halved, paired) } else { (paired, halved) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// For the `llama` layout: the heads of a q or k projection (`None` for other tensors).
pub(crate) fn rotary_heads(cfg: &ModelConfig, name: &str) -> Option<usize> {
    if name.ends_with("self_attn.q_proj.weight") {
        Some(cfg.n_head)
    } else if name.ends_with("self_attn.k_proj.weight") {
        Some(cfg.n_kv_head)
    } else {
        None
    }
}

impl std::str::FromStr for GgufArch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "jarip" => Ok(GgufArch::Jarip),
            "qwen3" => Ok(GgufArch::Qwen3),
            "llama" => Ok(GgufArch::Llama),
            _ => bail!("unknown GGUF architecture {s:?}: use jarip, qwen3 or llama"),
        }
    }
}

impl WeightType {
    fn ggml(self) -> GgmlType {
        match self {
            WeightType::F32 => GgmlType::F32,
            WeightType::F16 => GgmlType::F16,
            WeightType::Bf16 => GgmlType::BF16,
            WeightType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q8_0 => 7,
            WeightType::Bf16 => 32,
        }
    }
}

pub use jarip_model::layout::gguf_name;

/// What an export wrote: the canonical hash of the stored weights (dequantized to f32).
#[derive(Debug, Clone)]
pub struct GgufExported {
    pub weights_sha256: String,
    pub bytes: u64,
}

/// Writes `model` and its tokenizer to the GGUF file `out` (atomically).
pub fn export_gguf(
    model: &Gpt,
    tokenizer_json: &Path,
    out: &Path,
    wt: WeightType,
    arch: GgufArch,
    name: &str,
    provenance: &serde_json::Value,
) -> Result<GgufExported> {
    let tok_text =
        std::fs::read_to_string(tokenizer_json).with_context(|| format!("cannot read {}", tokenizer_json.display()))?;
    let tok = Tokenizer::from_json(tok_text.clone())?;
    let cfg = model.config();
    if cfg.rope_scaling.is_some() {
        bail!("a model with RoPE scaling is not written as GGUF yet (llama.cpp's rope_freqs tensor); export the HF layout");
    }
    if tok.vocab_size() != cfg.vocab_size {
        bail!("tokenizer {} has {} tokens, the model {}", tokenizer_json.display(), tok.vocab_size(), cfg.vocab_size);
    }
    if arch != GgufArch::Jarip && cfg.mlp != MlpKind::SwiGlu {
        bail!(
            "the {} layout needs a SwiGLU MLP; this model's is ReLU², which llama.cpp's {} graph does not compute",
            arch.name(),
            arch.name()
        );
    }
    if arch == GgufArch::Qwen3 && !cfg.qk_norm {
        bail!("the qwen3 layout needs QK-norm; this model has none: export it as llama");
    }
    if arch == GgufArch::Llama && cfg.qk_norm {
        bail!("the llama layout has no QK-norm; this model has it: export it as qwen3");
    }
    // Tensors in a fixed order, each stored as asked (1-D norms in f32), and what a reader
    // will get back from them.
    let mut names: Vec<(String, Tensor)> = model.tensors().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = GgufWriter::new();
    let mut stored = Vec::with_capacity(names.len());
    for (n, t) in &names {
        let shape = t.dims().to_vec();
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        // Q8_0 covers the matrices a decode step multiplies by, not the embedding table (a lookup,
        // kept exact as `--weights q8_0` keeps it); 1-D norms stay f32 in every format.
        let quantizable = shape.len() == 2 && shape[1] % 32 == 0;
        let ty = match wt {
            WeightType::Q8_0 if quantizable && n != "model.embed_tokens.weight" => wt.ggml(),
            WeightType::F16 | WeightType::Bf16 if shape.len() == 2 => wt.ggml(),
            _ => GgmlType::F32,
        };
        // The llama layout permutes whole rows, which leaves each row's blocks (and so its Q8_0
        // rounding) as they are: what a reader gets back is computed on jarip's own order.
        let back = crate::gguf::decode_f32(&crate::gguf::encode_f32(&values, ty)?, ty)?;
        let values = match rotary_heads(cfg, n).filter(|_| arch == GgufArch::Llama) {
            Some(heads) => halves_to_pairs(&values, heads, cfg.head_dim(), shape[1], false),
            None => values,
        };
        let bytes = crate::gguf::encode_f32(&values, ty)?;
        stored.push((n.clone(), Tensor::from_vec(back, shape.as_slice(), &Device::Cpu)?));
        w.add_tensor(gguf_name(n)?, &shape, ty, bytes)?;
    }
    let weights_sha256 = jarip_model::hash_tensors(stored.iter().map(|(n, t)| (n.as_str(), t)))?;

    let kv = |w: &mut GgufWriter, k: &str, v: Value| w.add_metadata(k, v);
    kv(&mut w, "general.architecture", arch.name().into())?;
    kv(&mut w, "general.type", "model".into())?;
    kv(&mut w, "general.name", name.into())?;
    kv(&mut w, "general.file_type", wt.file_type().into())?;
    kv(&mut w, "general.quantization_version", 2u32.into())?;
    let a = |k: &str| format!("{}.{k}", arch.name());
    let own = |k: &str| format!("{ARCH}.{k}");
    kv(&mut w, &a("vocab_size"), (cfg.vocab_size as u32).into())?;
    kv(&mut w, &a("context_length"), (cfg.max_seq_len as u32).into())?;
    kv(&mut w, &a("embedding_length"), (cfg.n_embd as u32).into())?;
    kv(&mut w, &a("block_count"), (cfg.n_layer as u32).into())?;
    kv(&mut w, &a("feed_forward_length"), (cfg.mlp_hidden as u32).into())?;
    kv(&mut w, &a("attention.head_count"), (cfg.n_head as u32).into())?;
    kv(&mut w, &a("attention.head_count_kv"), (cfg.n_kv_head as u32).into())?;
    kv(&mut w, &a("attention.key_length"), (cfg.head_dim() as u32).into())?;
    kv(&mut w, &a("attention.value_length"), (cfg.head_dim() as u32).into())?;
    kv(&mut w, &a("attention.layer_norm_rms_epsilon"), (cfg.norm_eps as f32).into())?;
    kv(&mut w, &a("rope.freq_base"), (cfg.rope_base as f32).into())?;
    let mlp = match cfg.mlp {
        MlpKind::Relu2 => "relu2",
        MlpKind::SwiGlu => "swiglu",
    };
    kv(&mut w, &own("final_logit_softcapping"), cfg.logit_softcap.into())?;
    kv(&mut w, &own("mlp_type"), mlp.into())?;
    // The exact config: f64 fields (rope base, eps) survive without f32 rounding.
    kv(&mut w, &own("config"), cfg.to_json().into())?;

    let tokens: Vec<Value> = (0..tok.vocab_size() as u32).map(|id| Value::Str(token_text(&tok, id))).collect();
    let types: Vec<Value> =
        (0..tok.vocab_size() as u32).map(|id| Value::I32(if tok.is_special(id) { 3 } else { 1 })).collect();
    kv(&mut w, "tokenizer.ggml.model", "gpt2".into())?;
    // llama.cpp knows pre-tokenizers by name: a split it knows is written under its name (GPT-4's
    // = Llama 3's `llama-bpe`, GPT-2's); for jarip's own split, qwen2's is the closest (letters
    // kept whole; it cuts digits one by one where jarip groups three), so llama.cpp may split
    // text containing numbers or marks differently: token ids given directly agree.
    let pre = match (arch, tok.preset().and_then(|p| p.llama_cpp_name())) {
        (GgufArch::Jarip, _) => ARCH,
        (_, Some(name)) => name,
        (_, None) => "qwen2",
    };
    kv(&mut w, "tokenizer.ggml.pre", pre.into())?;
    kv(&mut w, "tokenizer.ggml.tokens", Value::Array(tokens))?;
    kv(&mut w, "tokenizer.ggml.token_type", Value::Array(types))?;
    kv(&mut w, "tokenizer.ggml.merges", Value::Array(merges(&tok_text)?))?;
    kv(&mut w, "tokenizer.ggml.bos_token_id", tok.bos_id().into())?;
    kv(&mut w, "tokenizer.ggml.eos_token_id", special(&tok, "<|end|>")?.into())?;
    kv(&mut w, "tokenizer.ggml.padding_token_id", special(&tok, "<|pad|>")?.into())?;
    kv(&mut w, "tokenizer.ggml.add_bos_token", false.into())?;
    kv(&mut w, "tokenizer.chat_template", CHAT_TEMPLATE.into())?;
    kv(&mut w, "tokenizer.huggingface.json", tok_text.into())?;

    kv(&mut w, &own("provenance.statement"), "trained from scratch with jarip".into())?;
    kv(&mut w, &own("provenance.weights_sha256"), weights_sha256.clone().into())?;
    kv(&mut w, &own("provenance.tokenizer_sha256"), tok.sha256().into())?;
    kv(&mut w, &own("provenance.source"), serde_json::to_string(provenance)?.into())?;
    w.write(out)?;
    #[cfg(unix)]
    {
        // Made to be shared: readable by all, whatever the temporary file's mode was.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644))?;
    }
    let bytes = std::fs::metadata(out)?.len();
    Ok(GgufExported { weights_sha256, bytes })
}

fn special(tok: &Tokenizer, name: &str) -> Result<u32> {
    tok.special_id(name).with_context(|| format!("the tokenizer has no {name} token"))
}

/// A token as GPT-2 byte-level text (the form `tokenizer.json` and llama.cpp's `gpt2` model
/// use), specials as themselves.
fn token_text(tok: &Tokenizer, id: u32) -> String {
    if let Some(s) = jarip_tokenizer::SPECIAL_TOKENS.iter().find(|s| tok.special_id(s) == Some(id)) {
        return s.to_string();
    }
    tok.id_bytes(id).unwrap_or_default().iter().map(|&b| byte_char(b)).collect()
}

/// GPT-2's byte → printable character table.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let shift = (0..=b).filter(|&x| !printable(x)).count() as u32 - 1;
    char::from_u32(256 + shift).expect("valid char")
}

/// `tokenizer.json`'s merges as `"a b"` strings (either of the two layouts it may use).
fn merges(tok_text: &str) -> Result<Vec<Value>> {
    let v: serde_json::Value = serde_json::from_str(tok_text)?;
    let list = v["model"]["merges"].as_array().context("tokenizer.json has no model.merges")?;
    list.iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::Str(s.clone())),
            serde_json::Value::Array(p) if p.len() == 2 => {
                Ok(Value::Str(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))))
            }
            other => bail!("tokenizer.json: unexpected merge {other}"),
        })
        .collect()
}

/// A GGUF file read back: the model (weights dequantized to f32), its tokenizer, and the
/// provenance recorded at export.
pub struct GgufModel {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub file_type: String,
    pub weights_sha256: String,
    pub source: serde_json::Value,
}

/// Reads a GGUF file written by [`export_gguf`], checking the stored weights against the hash
/// recorded in it.
pub fn load_gguf(path: &Path, device: &Device) -> Result<GgufModel> {
    let f = GgufFile::open(path)?;
    let what = path.display();
    let text = |k: &str| -> Result<&str> {
        f.get(k).and_then(Value::as_str).with_context(|| format!("{what}: metadata {k} missing or not a string"))
    };
    let arch = text("general.architecture")?;
    if f.get(&format!("{ARCH}.config")).is_none() {
        bail!("{what}: architecture {arch:?} without {ARCH}.config: jarip reads the GGUF files it exports");
    }
    let cfg: ModelConfig = serde_json::from_str(text(&format!("{ARCH}.config"))?)
        .with_context(|| format!("{what}: {ARCH}.config is not a jarip model config"))?;
    cfg.validate().with_context(|| format!("in {what}"))?;
    let tokenizer = Tokenizer::from_json(text("tokenizer.huggingface.json")?.to_string())
        .with_context(|| format!("{what}: tokenizer.huggingface.json"))?;
    let recorded_tok = text(&format!("{ARCH}.provenance.tokenizer_sha256"))?;
    if tokenizer.sha256() != recorded_tok {
        bail!(
            "{what}: the embedded tokenizer hashes to {}, not the {recorded_tok} recorded at export: the file was altered",
            tokenizer.sha256()
        );
    }
    let recorded = text(&format!("{ARCH}.provenance.weights_sha256"))?.to_string();
    let mut tensors = HashMap::new();
    for (name, _) in jarip_model::param_shapes(&cfg) {
        let g = gguf_name(&name)?;
        let info = f.tensor(&g).with_context(|| format!("{what}: tensor {g} ({name}) missing"))?;
        let mut values = f.tensor_f32(&g)?;
        if let Some(heads) = rotary_heads(&cfg, &name).filter(|_| arch == "llama") {
            values = halves_to_pairs(&values, heads, cfg.head_dim(), info.shape()[1], true);
        }
        tensors.insert(name, Tensor::from_vec(values, info.shape().as_slice(), &Device::Cpu)?);
    }
    let hash = jarip_model::hash_tensors(tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    if hash != recorded {
        bail!("{what}: the stored weights hash to {hash}, not the {recorded} recorded at export: the file was altered");
    }
    let model = Gpt::from_tensors(&cfg, tensors, device).with_context(|| format!("in {what}"))?;
    let file_type = f.get("general.file_type").and_then(Value::as_u64).unwrap_or(0);
    let source = f
        .get(&format!("{ARCH}.provenance.source"))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let file_type = match file_type {
        0 => "f32",
        1 => "f16",
        7 => "q8_0",
        32 => "bf16",
        _ => "other",
    }
    .to_string();
    Ok(GgufModel { model, tokenizer, file_type, weights_sha256: recorded, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    fn setup(dir: &Path) -> (Gpt, std::path::PathBuf) {
        let docs = ["대한민국은 민주공화국이다. All the world's a stage.".repeat(20)];
        let tok = jarip_tokenizer::train(
            docs.into_iter(),
            &jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() },
        )
        .unwrap();
        tok.save(dir, vec![]).unwrap();
        let model = Gpt::new(&ModelConfig::tiny(300), 9, &Device::Cpu).unwrap();
        (model, dir.join("tokenizer.json"))
    }

    #[test]
    fn presets_export_as_llama_cpp_graphs_and_load_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, tok) = setup(tmp.path());
        for (arch, want) in [(jarip_model::Arch::Llama, GgufArch::Llama), (jarip_model::Arch::Qwen3, GgufArch::Qwen3)] {
            let mut cfg = ModelConfig::tiny(300);
            cfg.set_arch(arch);
            assert_eq!(GgufArch::for_config(&cfg), want);
            let model = Gpt::new(&cfg, 9, &Device::Cpu).unwrap();
            for wt in [WeightType::F32, WeightType::Q8_0] {
                let out = tmp.path().join(format!("{}-{}.gguf", want.name(), wt.name()));
                let e = export_gguf(&model, &tok, &out, wt, want, "t", &serde_json::Value::Null).unwrap();
                let back = load_gguf(&out, &Device::Cpu).unwrap();
                assert_eq!(back.weights_sha256, e.weights_sha256);
                if wt == WeightType::F32 {
                    assert_eq!(e.weights_sha256, model.weights_sha256().unwrap(), "{want:?}: exact");
                }
                let f = GgufFile::open(&out).unwrap();
                assert_eq!(f.get("general.architecture").and_then(Value::as_str), Some(want.name()));
                // llama: each head's q rows interleaved (2i, 2i+1) from jarip's halves (i, i+D/2).
                let stored = f.tensor_f32("blk.1.attn_q.weight").unwrap();
                let q = model.tensors()["model.layers.1.self_attn.q_proj.weight"].flatten_all().unwrap();
                let q = q.to_vec1::<f32>().unwrap();
                let (d, c) = (cfg.head_dim(), cfg.n_embd);
                if wt == WeightType::F32 {
                    let row = |v: &[f32], r: usize| v[r * c..(r + 1) * c].to_vec();
                    let expect = if want == GgufArch::Llama { row(&q, d + d / 2 + 1) } else { row(&q, d + 3) };
                    assert_eq!(row(&stored, d + 3), expect, "{want:?}: row 3 of head 1");
                }
            }
        }
        let mut cfg = ModelConfig::tiny(300);
        cfg.set_arch(jarip_model::Arch::Llama);
        let model = Gpt::new(&cfg, 9, &Device::Cpu).unwrap();
        let err = export_gguf(
            &model,
            &tok,
            &tmp.path().join("x.gguf"),
            WeightType::F32,
            GgufArch::Qwen3,
            "t",
            &serde_json::Value::Null,
        )
        .unwrap_err();
        assert!(err.to_string().contains("QK-norm"), "{err}");
    }

    #[test]
    fn every_weight_type_round_trips_with_its_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, tok) = setup(tmp.path());
        for wt in [WeightType::F32, WeightType::F16, WeightType::Bf16, WeightType::Q8_0] {
            let out = tmp.path().join(format!("m-{}.gguf", wt.name()));
            let e = export_gguf(&model, &tok, &out, wt, GgufArch::Jarip, "tiny", &serde_json::json!({"k": 1})).unwrap();
            let back = load_gguf(&out, &Device::Cpu).unwrap();
            assert_eq!(back.model.config(), model.config());
            assert_eq!(back.model.weights_sha256().unwrap(), e.weights_sha256);
            assert_eq!(back.file_type, wt.name());
            assert_eq!(back.source["k"], 1);
            assert_eq!(back.tokenizer.sha256(), Tokenizer::load(&tok).unwrap().sha256());
            if wt == WeightType::F32 {
                assert_eq!(e.weights_sha256, model.weights_sha256().unwrap());
            }
            let f = GgufFile::open(&out).unwrap();
            let ty = |n: &str| f.tensor(n).unwrap().ty;
            assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32, "norms stay f32");
            assert_eq!(ty("blk.1.ffn_down.weight"), wt.ggml());
            let embed = if wt == WeightType::Q8_0 { GgmlType::F32 } else { wt.ggml() };
            assert_eq!(ty("token_embd.weight"), embed, "Q8_0 leaves the embedding lookup exact");
            let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
            assert_eq!(tokens.len(), 300);
        }
        // Q8_0 stores the matrices in about a quarter of the bytes.
        let size = |n: &str| std::fs::metadata(tmp.path().join(n)).unwrap().len() as f64;
        assert!(size("m-q8_0.gguf") < 0.4 * size("m-f32.gguf"));
    }

    #[test]
    fn tokens_use_the_byte_level_alphabet_of_tokenizer_json() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, tok_path) = setup(tmp.path());
        let tok = Tokenizer::load(&tok_path).unwrap();
        let v: serde_json::Value = serde_json::from_str(tok.to_json()).unwrap();
        for (text, id) in v["model"]["vocab"].as_object().unwrap() {
            assert_eq!(&token_text(&tok, id.as_u64().unwrap() as u32), text);
        }
    }

    #[test]
    fn an_altered_tensor_or_foreign_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, tok) = setup(tmp.path());
        let out = tmp.path().join("m.gguf");
        export_gguf(&model, &tok, &out, WeightType::F32, GgufArch::Jarip, "tiny", &serde_json::Value::Null).unwrap();
        let err = export_gguf(
            &model,
            &tok,
            &tmp.path().join("q.gguf"),
            WeightType::F32,
            GgufArch::Qwen3,
            "t",
            &serde_json::Value::Null,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SwiGLU"), "{err}");
        let f = GgufFile::open(&out).unwrap();
        let info = f.tensor("blk.0.attn_q.weight").unwrap();
        let at = (f.data_offset + info.offset) as usize;
        drop(f);
        let mut bytes = std::fs::read(&out).unwrap();
        bytes[at + 5] ^= 0x40;
        std::fs::write(&out, bytes).unwrap();
        let err = load_gguf(&out, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("altered"), "{err}");

        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama".into()).unwrap();
        let other = tmp.path().join("llama.gguf");
        w.write(&other).unwrap();
        let err = load_gguf(&other, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("\"llama\"") && err.contains("jarip.config"), "{err}");
    }
}
