//! Models on disk: jarip's own checkpoints and the formats other tools read, so a jarip model can
//! leave jarip without losing its record:
//!
//! - [`model_dir`]: a checkpoint or run directory, an HF export or a GGUF file → model +
//!   tokenizer, every file checked against its manifest and the tokenizer against the model;
//! - [`hf`]: the Hugging Face layout (`config.json`, `model.safetensors`, tokenizer files with the
//!   chat template), exported from a checkpoint and loaded back;
//! - [`foreign`]: models jarip did not build (HF-layout Llama, Mistral, Qwen3), read-only, for
//!   evaluation and serving side by side — always named as not built by this run;
//! - [`gguf`]: the GGUF container (llama.cpp's format), read and written, with `F32`, `F16`,
//!   `BF16` and `Q8_0` tensors.
//!
//! Every export carries the source checkpoint's weight hash and a manifest, so `jarip lineage`
//! and `jarip provenance` can tie it back to the training run.

#![forbid(unsafe_code)]

pub mod foreign;
pub mod gguf;
pub mod gguf_model;
pub mod hf;
pub mod model_dir;

/// How exported weight matrices are stored: the float types both formats take, and Q8_0 blocks
/// (GGUF only). Norm weights are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl WeightType {
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Bf16 => "bf16",
            WeightType::Q8_0 => "q8_0",
        }
    }

    /// The name `torch_dtype` uses; none for Q8_0, which is not a tensor type there.
    pub fn torch_name(self) -> Option<&'static str> {
        match self {
            WeightType::F32 => Some("float32"),
            WeightType::Bf16 => Some("bfloat16"),
            WeightType::F16 => Some("float16"),
            WeightType::Q8_0 => None,
        }
    }

    /// The candle dtype of a float type; none for Q8_0.
    pub fn candle(self) -> Option<candle_core::DType> {
        match self {
            WeightType::F32 => Some(candle_core::DType::F32),
            WeightType::Bf16 => Some(candle_core::DType::BF16),
            WeightType::F16 => Some(candle_core::DType::F16),
            WeightType::Q8_0 => None,
        }
    }
}

impl std::str::FromStr for WeightType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "f32" | "float32" => WeightType::F32,
            "f16" | "float16" => WeightType::F16,
            "bf16" | "bfloat16" => WeightType::Bf16,
            "q8_0" => WeightType::Q8_0,
            _ => anyhow::bail!("unknown weight type {s:?}: use f32, f16, bf16 or q8_0"),
        })
    }
}
