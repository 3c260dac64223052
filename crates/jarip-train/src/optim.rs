//! Optimizers: AdamW with decoupled weight decay (none on norms and embeddings), and
//! optionally Muon for the matrices inside the blocks. Gradient clipping by global norm is
//! folded into the update as a gradient scale.
//!
//! On CPU fp32 the AdamW step is the fused in-place kernel of [`crate::adamw`];
//! elsewhere the composed tensor version. State (moments) is saved as safetensors so a
//! resumed run continues bit for bit.

use crate::adamw::{adamw_composed, adamw_inplace, AdamWStep};
use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use jarip_model::ParamRole;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerOptions {
    /// Peak AdamW learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay for matrices and the head (never norms or embeddings).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Use Muon (momentum + Newton–Schulz orthogonalisation) for block matrices.
    pub muon: bool,
    pub muon_lr: f64,
    pub muon_momentum: f64,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            muon: false,
            muon_lr: 0.02,
            muon_momentum: 0.95,
        }
    }
}

enum Moments {
    /// CPU fp32: plain vectors, updated in place by the fused kernel.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any device: tensors, updated by composed ops.
    Device { m: Tensor, v: Tensor },
    /// Muon momentum buffer.
    Muon { buf: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    role: ParamRole,
    state: Moments,
}

pub struct Optimizer {
    opts: OptimizerOptions,
    slots: Vec<Slot>,
    /// Every AdamW tensor on the GPU in one launch (`--kernels fused` on CUDA).
    multi_tensor: bool,
    /// Optimizer steps taken so far.
    pub t: u64,
}

/// AdamW's decoupled weight decay for a parameter: matrices and the head decay, embeddings and
/// norm gains do not.
fn weight_decay(role: ParamRole, o: &OptimizerOptions) -> f32 {
    if matches!(role, ParamRole::Matrix | ParamRole::Head) {
        o.weight_decay as f32
    } else {
        0.0
    }
}

/// Global L2 norm of the gradients, summed in parameter order (deterministic).
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut ss = 0f64;
    for g in grads {
        ss += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(ss.sqrt())
}

impl Optimizer {
    pub fn new(params: &[(String, Var)], opts: &OptimizerOptions, fused: bool) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                let role = ParamRole::of(name);
                let state = if opts.muon && role == ParamRole::Matrix {
                    Moments::Muon { buf: var.zeros_like()? }
                } else if fused && var.device().is_cpu() && var.dtype() == DType::F32 {
                    Moments::Host { m: vec![0.0; var.elem_count()], v: vec![0.0; var.elem_count()] }
                } else {
                    Moments::Device { m: var.zeros_like()?, v: var.zeros_like()? }
                };
                Ok(Slot { name: name.clone(), var: var.clone(), role, state })
            })
            .collect::<Result<Vec<_>>>()?;
        let on_cuda = params.first().is_some_and(|(_, v)| v.device().is_cuda());
        Ok(Self { opts: opts.clone(), slots, multi_tensor: fused && on_cuda && cfg!(feature = "cuda"), t: 0 })
    }

    /// The gradients of every parameter, in order; a missing one is an error (it would mean
    /// the graph lost a gradient).
    /// Whether the parameters live in main memory (a CPU run).
    pub fn on_cpu(&self) -> bool {
        self.slots.first().is_none_or(|s| s.var.device().is_cpu())
    }

    pub fn collect_grads(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.slots
            .iter()
            .map(|s| grads.get(&s.var).cloned().with_context(|| format!("no gradient reached {}", s.name)))
            .collect()
    }

    /// One update with `lr_factor` times the peak rates. `grads` are summed over
    /// `accum` micro-batches (averaged here). Returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &[Tensor], accum: usize, lr_factor: f64) -> Result<f64> {
        let inv_accum = 1.0 / accum as f64;
        let norm = grad_norm(grads)? * inv_accum;
        if !norm.is_finite() {
            bail!("gradient norm is {norm} (not finite)");
        }
        let clip =
            if self.opts.grad_clip > 0.0 && norm > self.opts.grad_clip { self.opts.grad_clip / norm } else { 1.0 };
        self.t += 1;
        if self.multi_tensor {
            return self.step_multi_tensor(grads, inv_accum * clip, lr_factor).map(|()| norm);
        }
        let o = &self.opts;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let step = AdamWStep {
                lr: (o.lr * lr_factor) as f32,
                beta1: o.beta1 as f32,
                beta2: o.beta2 as f32,
                eps: o.eps as f32,
                weight_decay: weight_decay(slot.role, o),
                t: self.t,
                grad_scale: (inv_accum * clip) as f32,
            };
            let g = g.to_dtype(DType::F32)?;
            match &mut slot.state {
                Moments::Host { m, v } => adamw_inplace(&slot.var, &g, m, v, &step)?,
                Moments::Device { m, v } => {
                    let (p2, m2, v2) = adamw_composed(slot.var.as_tensor(), &g, m, v, &step)?;
                    slot.var.set(&p2)?;
                    (*m, *v) = (m2, v2);
                }
                Moments::Muon { buf } => {
                    let lr = o.muon_lr * lr_factor;
                    muon_update(&slot.var, &g, buf, step.grad_scale as f64, lr, o.muon_momentum, o.weight_decay)?;
                }
            }
        }
        Ok(norm)
    }

    /// [`Optimizer::step`]'s update with every AdamW tensor in one kernel launch (Muon's
    /// matrices, if any, as usual): the same arithmetic as [`adamw_composed`], element by element.
    #[cfg(feature = "cuda")]
    fn step_multi_tensor(&mut self, grads: &[Tensor], grad_scale: f64, lr_factor: f64) -> Result<()> {
        use jarip_kernels::cuda::{adamw_multi, AdamWItem, AdamWScalars};
        let o = self.opts.clone();
        let (bc1, bc2) = (1.0 - o.beta1.powi(self.t as i32), 1.0 - o.beta2.powi(self.t as i32));
        let scalars = AdamWScalars {
            lr: (o.lr * lr_factor) as f32,
            beta1: o.beta1 as f32,
            beta2: o.beta2 as f32,
            eps: o.eps as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            grad_scale: grad_scale as f32,
        };
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            if let Moments::Muon { buf } = &mut slot.state {
                let lr = o.muon_lr * lr_factor;
                muon_update(&slot.var, &g.to_dtype(DType::F32)?, buf, grad_scale, lr, o.muon_momentum, o.weight_decay)?;
            }
        }
        let mut items = Vec::new();
        for (slot, g) in self.slots.iter().zip(grads) {
            match &slot.state {
                Moments::Device { m, v } => {
                    let weight_decay = weight_decay(slot.role, &o);
                    items.push(AdamWItem { param: slot.var.as_tensor(), grad: g, m, v, weight_decay });
                }
                Moments::Muon { .. } => {}
                Moments::Host { .. } => bail!("multi-tensor AdamW: {} has its moments on the host", slot.name),
            }
        }
        adamw_multi(&items, &scalars)?;
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    fn step_multi_tensor(&mut self, _: &[Tensor], _: f64, _: f64) -> Result<()> {
        bail!("multi-tensor AdamW needs a build with the cuda feature")
    }

    /// Moments as named tensors (`NAME.m`, `NAME.v`, `NAME.muon`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            match &s.state {
                Moments::Host { m, v } => {
                    out.insert(format!("{}.m", s.name), Tensor::from_slice(m, s.var.shape(), &Device::Cpu)?);
                    out.insert(format!("{}.v", s.name), Tensor::from_slice(v, s.var.shape(), &Device::Cpu)?);
                }
                Moments::Device { m, v } => {
                    out.insert(format!("{}.m", s.name), m.clone());
                    out.insert(format!("{}.v", s.name), v.clone());
                }
                Moments::Muon { buf } => {
                    out.insert(format!("{}.muon", s.name), buf.clone());
                }
            }
        }
        out.insert("step".into(), Tensor::new(&[self.t as u32], &Device::Cpu)?);
        Ok(out)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.state_tensors()?, path)
            .with_context(|| format!("cannot write optimizer state {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read optimizer state {}", path.display()))?;
        let mut take = |key: String, like: &Var| -> Result<Tensor> {
            let x = t.remove(&key).with_context(|| format!("{}: no tensor {key}", path.display()))?;
            if x.dims() != like.dims() {
                bail!("{}: {key} has shape {:?}, expected {:?}", path.display(), x.dims(), like.dims());
            }
            Ok(x)
        };
        for s in &mut self.slots {
            match &mut s.state {
                Moments::Host { m, v } => {
                    *m = take(format!("{}.m", s.name), &s.var)?.flatten_all()?.to_vec1()?;
                    *v = take(format!("{}.v", s.name), &s.var)?.flatten_all()?.to_vec1()?;
                }
                Moments::Device { m, v } => {
                    *m = take(format!("{}.m", s.name), &s.var)?.to_device(s.var.device())?;
                    *v = take(format!("{}.v", s.name), &s.var)?.to_device(s.var.device())?;
                }
                Moments::Muon { buf } => *buf = take(format!("{}.muon", s.name), &s.var)?.to_device(s.var.device())?,
            }
        }
        let step = t.remove("step").with_context(|| format!("{}: no step", path.display()))?;
        self.t = step.to_vec1::<u32>()?[0] as u64;
        Ok(())
    }
}

/// Muon for one matrix: `buf ← μ·buf + g`; the Nesterov direction `g + μ·buf` is
/// orthogonalised by five Newton–Schulz iterations (quintic, Keller Jordan's coefficients),
/// scaled by `√max(1, rows/cols)`, and applied with decoupled weight decay.
fn muon_update(var: &Var, g: &Tensor, buf: &mut Tensor, grad_scale: f64, lr: f64, mu: f64, wd: f64) -> Result<()> {
    let g = (g * grad_scale)?;
    *buf = ((&*buf * mu)? + &g)?;
    let dir = (&g + (&*buf * mu)?)?;
    let (rows, cols) = dir.dims2()?;
    let o = newton_schulz5(&dir)?;
    let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
    let p = ((var.as_tensor() * (1.0 - lr * wd))? - (o * (lr * scale))?)?;
    var.set(&p)?;
    Ok(())
}

fn newton_schulz5(g: &Tensor) -> Result<Tensor> {
    let (a, b, c) = (3.4445, -4.7750, 2.0315);
    let (rows, cols) = g.dims2()?;
    let mut x = g.clone();
    let transposed = rows > cols;
    if transposed {
        x = x.t()?.contiguous()?;
    }
    let norm = x.sqr()?.sum_all()?.sqrt()?;
    x = x.broadcast_div(&(norm + 1e-7)?)?;
    for _ in 0..5 {
        let xxt = x.matmul(&x.t()?)?;
        let bm = ((&xxt * b)? + (xxt.matmul(&xxt)? * c)?)?;
        x = ((&x * a)? + bm.matmul(&x)?)?;
    }
    Ok(if transposed { x.t()?.contiguous()? } else { x })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every optimizer variant fits one fixed batch: the loss falls over a few steps, and the
    /// state saved and loaded gives the same next step bit for bit.
    #[test]
    fn optimizers_reduce_loss_and_state_round_trips() {
        use jarip_model::{Gpt, ModelConfig};
        let cfg = ModelConfig::tiny(300);
        let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 37 % 300) as u32).collect();
        let all = Tensor::from_vec(ids, (2, 17), &Device::Cpu).unwrap();
        let (x, y) = (all.narrow(1, 0, 16).unwrap(), all.narrow(1, 1, 16).unwrap());
        for (muon, fused) in [(false, true), (false, false), (true, true)] {
            let model = Gpt::new(&cfg, 1, &Device::Cpu).unwrap();
            let opts = OptimizerOptions { muon, lr: 3e-3, ..Default::default() };
            let mut opt = Optimizer::new(model.params(), &opts, fused).unwrap();
            let first = crate::step::train_step(&model, &mut opt, &[(x.clone(), y.clone())], 1.0).unwrap().loss;
            let mut last = first;
            for _ in 0..5 {
                last = crate::step::train_step(&model, &mut opt, &[(x.clone(), y.clone())], 1.0).unwrap().loss;
            }
            assert!(last < first - 0.1, "muon={muon} fused={fused}: loss {first} -> {last}");

            let d = tempfile::tempdir().unwrap();
            model.save(d.path()).unwrap();
            opt.save(&d.path().join("opt.safetensors")).unwrap();
            let model2 = Gpt::load(d.path(), &Device::Cpu).unwrap();
            let mut opt2 = Optimizer::new(model2.params(), &opts, fused).unwrap();
            opt2.load(&d.path().join("opt.safetensors")).unwrap();
            let a = crate::step::train_step(&model, &mut opt, &[(x.clone(), y.clone())], 0.5).unwrap();
            let b = crate::step::train_step(&model2, &mut opt2, &[(x.clone(), y.clone())], 0.5).unwrap();
            assert_eq!(a.loss.to_bits(), b.loss.to_bits());
            assert_eq!(model.weights_sha256().unwrap(), model2.weights_sha256().unwrap());
        }
    }

    #[test]
    fn newton_schulz_is_near_orthogonal() {
        let g = Tensor::randn(0f32, 1.0, (16, 32), &Device::Cpu).unwrap();
        let o = newton_schulz5(&g).unwrap();
        let oot = o.matmul(&o.t().unwrap()).unwrap();
        let diag = oot.to_vec2::<f32>().unwrap();
        for (i, row) in diag.iter().enumerate() {
            assert!((0.5..1.5).contains(&row[i]), "diag {}", row[i]);
        }
    }
}
