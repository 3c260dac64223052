//! The inference network against the training network: one grid over
//! {ReLU², SwiGLU} × {GQA, MHA} × {f32, Q8_0 weights} × {f32, f16 KV cache}.
//!
//! For each cell a seeded model's training forward (`Gpt::forward`, fused kernels, and the composed
//! candle reference) gives every position's logits; the decode path (`DecodeModel`) computes the
//! same positions as a prefill followed by one token at a time through its KV cache. With Q8_0
//! weights the reference is the training forward on the Q8_0-rounded weights, so what remains is
//! the decode path's own rounding of activations. Each tolerance is a few times what the cell
//! measures; a wrong name, norm, rotation, head grouping or MLP would be off by whole units.

use candle_core::{Device, Tensor};
use jarip_infer::{DecodeModel, KvFormat, SeqCache, SeqInput, WeightFormat};
use jarip_kernels::quant::{dequantize_q8_0, quantize_q8_0, QK8_0};
use jarip_model::{Gpt, Kernels, MlpKind, ModelConfig, ParamRole};
use std::collections::HashMap;

fn config(mlp: MlpKind, kv_heads: usize) -> ModelConfig {
    let mut cfg = ModelConfig::tiny(97);
    cfg.mlp = mlp;
    cfg.n_kv_head = kv_heads;
    cfg.mlp_hidden = 96;
    cfg.max_seq_len = 48;
    cfg
}

/// A seeded model whose norm gains vary around 1 and whose head is large enough for logits of a
/// few units (at initialisation the gains are all 1 and the logits near 0, which would hide a
/// swapped gain or a wrong rotation).
fn varied(cfg: &ModelConfig) -> Gpt {
    let base = Gpt::new(cfg, 3, &Device::Cpu).unwrap();
    let mut tensors = HashMap::new();
    for (name, t) in base.tensors() {
        let salt = name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let t = match ParamRole::of(&name) {
            ParamRole::Norm => {
                let n = t.elem_count();
                let v: Vec<f32> =
                    (0..n).map(|j| 1.0 + 0.5 * (((j * 7919 + salt) % 1000) as f32 / 500.0 - 1.0)).collect();
                Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
            }
            ParamRole::Head => (t * 300.0).unwrap(),
            _ => t,
        };
        tensors.insert(name, t);
    }
    Gpt::from_tensors(cfg, tensors, &Device::Cpu).unwrap()
}

/// The model with every matrix the decode path would quantize replaced by its Q8_0 rounding.
/// The model with every matrix that decoding holds as bf16 rounded to bf16 (embeddings stay f32).
fn bf16_rounded(model: &Gpt) -> Gpt {
    let mut tensors = HashMap::new();
    for (name, t) in model.tensors() {
        let t = if t.dims().len() == 2 && ParamRole::of(&name) != ParamRole::Embedding {
            t.to_dtype(candle_core::DType::BF16).unwrap().to_dtype(candle_core::DType::F32).unwrap()
        } else {
            t
        };
        tensors.insert(name, t);
    }
    Gpt::from_tensors(model.config(), tensors, &Device::Cpu).unwrap()
}

fn q8_rounded(model: &Gpt) -> Gpt {
    let mut tensors = HashMap::new();
    for (name, t) in model.tensors() {
        let k = *t.dims().last().unwrap();
        let quantized = t.dims().len() == 2 && ParamRole::of(&name) != ParamRole::Embedding && k % QK8_0 == 0;
        let t = if quantized {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut back = vec![0f32; v.len()];
            dequantize_q8_0(&quantize_q8_0(&v), &mut back);
            Tensor::from_vec(back, t.dims(), &Device::Cpu).unwrap()
        } else {
            t
        };
        tensors.insert(name, t);
    }
    Gpt::from_tensors(model.config(), tensors, &Device::Cpu).unwrap()
}

fn training_logits(model: &mut Gpt, ids: &[u32], kernels: Kernels) -> Vec<f32> {
    model.set_kernels(kernels);
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    model.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Every position's logits: a prefill of `split` tokens, then one token at a time.
fn decode_logits(dm: &DecodeModel, ids: &[u32], split: usize) -> Vec<f32> {
    let mut cache = SeqCache::new();
    let mut rows = dm.forward(&mut [SeqInput { tokens: &ids[..split], cache: &mut cache }], true).unwrap();
    for p in split..ids.len() {
        rows.extend(dm.forward(&mut [SeqInput { tokens: &ids[p..p + 1], cache: &mut cache }], false).unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    rows.concat()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn decode_path_matches_training_forward_on_the_whole_grid() {
    let ids: Vec<u32> = (0..40).map(|i| ((i * 37 + 11) % 97) as u32).collect();
    let mut report = Vec::new();
    for mlp in [MlpKind::Relu2, MlpKind::SwiGlu] {
        for kv_heads in [4, 2] {
            let cfg = config(mlp, kv_heads);
            let model = varied(&cfg);
            let spread = training_logits(&mut varied(&cfg), &ids, Kernels::Composed);
            let top = spread.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(top > 2.0, "logits too small to test with: {top}");
            for weights in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Q8_0] {
                let mut reference = match weights {
                    WeightFormat::F32 => varied(&cfg),
                    WeightFormat::Bf16 => bf16_rounded(&model),
                    WeightFormat::Q8_0 => q8_rounded(&model),
                };
                let fused = training_logits(&mut reference, &ids, Kernels::Fused);
                let composed = training_logits(&mut reference, &ids, Kernels::Composed);
                assert!(max_diff(&fused, &composed) < 1e-4, "fused vs composed training forward");
                for kv in [KvFormat::F32, KvFormat::F16] {
                    let dm = DecodeModel::with_format(&model, weights).unwrap().with_kv_cache(kv);
                    let got = decode_logits(&dm, &ids, 7);
                    let d = max_diff(&got, &fused);
                    let tol = match (weights, kv) {
                        (WeightFormat::F32 | WeightFormat::Bf16, KvFormat::F32) => 2e-5,
                        (WeightFormat::F32 | WeightFormat::Bf16, KvFormat::F16) => 5e-3,
                        (WeightFormat::Q8_0, KvFormat::F32) => 0.25,
                        (WeightFormat::Q8_0, KvFormat::F16) => 0.25,
                    };
                    let cell = format!("{mlp:?} kv_heads {kv_heads} weights {weights:?} cache {kv:?}");
                    report.push(format!("{cell}: max |Δlogit| {d:.2e} (tolerance {tol:.0e})"));
                    assert!(d < tol, "{cell}: decode differs from the training forward by {d}");
                    // A prefill of any length gives the same rows (the cache is position-exact).
                    assert_eq!(decode_logits(&dm, &ids, 1), decode_logits(&dm, &ids, 1), "{cell}: not deterministic");
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_grid_would_see_a_swapped_gain() {
    // The same comparison with layer 0's q_norm and k_norm gains swapped in the decode copy only
    // moves the logits by more than any tolerance of the grid (2e-5 for f32 weights and cache,
    // 0.25 at most), so the grid cannot hide such a mistake.
    let cfg = config(MlpKind::SwiGlu, 2);
    let ids: Vec<u32> = (0..40).map(|i| ((i * 37 + 11) % 97) as u32).collect();
    let reference = training_logits(&mut varied(&cfg), &ids, Kernels::Fused);
    let mut tensors = varied(&cfg).tensors();
    let q = tensors.remove("model.layers.0.self_attn.q_norm.weight").unwrap();
    let k = tensors.insert("model.layers.0.self_attn.k_norm.weight".into(), q).unwrap();
    tensors.insert("model.layers.0.self_attn.q_norm.weight".into(), k);
    let wrong = Gpt::from_tensors(&cfg, tensors, &Device::Cpu).unwrap();
    let dm = DecodeModel::new(&wrong).unwrap();
    let d = max_diff(&decode_logits(&dm, &ids, 7), &reference);
    assert!(d > 0.25, "a swapped gain moved the logits by only {d}");
}

#[test]
fn llama_and_qwen3_shapes_decode_as_they_train() {
    // logit_softcap 0 (Llama- and Qwen-style heads), with QK-norm (Qwen3) and without (Llama):
    // both training paths and the decode path give the raw logits, which here reach beyond ±15
    // (a cap of 15 would have bent them).
    for qk_norm in [true, false] {
        let mut cfg = config(MlpKind::SwiGlu, 2);
        cfg.logit_softcap = 0.0;
        cfg.qk_norm = qk_norm;
        uncapped_cell(&cfg);
    }
}

#[test]
fn wide_heads_and_scaled_rope_decode_as_they_train() {
    // Heads wider than n_embd / n_head (Qwen3 0.6B's shape: here 4 heads of 24 over a width of
    // 64) and Llama 3.1's RoPE scaling: both training paths and the decode path agree.
    let mut cfg = config(MlpKind::SwiGlu, 2);
    cfg.logit_softcap = 0.0;
    cfg.head_dim_override = Some(24);
    uncapped_cell(&cfg);
    cfg.head_dim_override = None;
    cfg.qk_norm = false;
    cfg.rope_scaling = Some(jarip_model::RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    assert_ne!(cfg.rope_inv_freq(), jarip_model::ops::rope::rope_inv_freq(cfg.head_dim(), cfg.rope_base));
    uncapped_cell(&cfg);
}

fn uncapped_cell(cfg: &ModelConfig) {
    let cfg = cfg.clone();
    let ids: Vec<u32> = (0..40).map(|i| ((i * 37 + 11) % 97) as u32).collect();
    let mut tensors = varied(&cfg).tensors();
    let head = tensors.remove("lm_head.weight").unwrap();
    tensors.insert("lm_head.weight".into(), (head * 10.0).unwrap());
    let build = || Gpt::from_tensors(&cfg, tensors.clone(), &Device::Cpu).unwrap();
    let fused = training_logits(&mut build(), &ids, Kernels::Fused);
    let composed = training_logits(&mut build(), &ids, Kernels::Composed);
    let top = fused.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(top > 20.0, "logits should pass the old cap of 15: {top}");
    assert!(max_diff(&fused, &composed) < 1e-3, "fused vs composed: {}", max_diff(&fused, &composed));
    let dm = DecodeModel::new(&build()).unwrap();
    let d = max_diff(&decode_logits(&dm, &ids, 7), &fused);
    assert!(d < 2e-4, "qk_norm {}: decode differs from the training forward by {d}", cfg.qk_norm);
}
