//! AdamW with decoupled weight decay, fused: one multithreaded pass over a parameter, its
//! gradient and both moments, updating the parameter in place (no temporaries).
//!
//! With `ĝ = g·grad_scale` (the clipping factor folded in), step `t` (from 1):
//! `m ← β₁m + (1−β₁)ĝ`, `v ← β₂v + (1−β₂)ĝ²`, `p ← p·(1 − lr·wd) − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`.

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor, Var};
use jarip_kernels::ops::with_f32;
use rayon::prelude::*;
use std::sync::Mutex;

const CHUNK: usize = 16_384;

#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for the bias corrections.
    pub t: u64,
    /// Factor applied to the gradient first (gradient clipping, accumulation averaging).
    pub grad_scale: f32,
}

impl AdamWStep {
    fn corrections(&self) -> (f32, f32) {
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.t as i32);
        (bc1 as f32, bc2 as f32)
    }
}

/// The update on plain slices (the kernel itself).
pub fn adamw_slices(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len(), "adamw: length mismatch");
    let (bc1, bc2) = s.corrections();
    let decay = 1.0 - s.lr * s.weight_decay;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((pc, gc), (mc, vc))| {
            for i in 0..pc.len() {
                let g = gc[i] * s.grad_scale;
                mc[i] = s.beta1 * mc[i] + (1.0 - s.beta1) * g;
                vc[i] = s.beta2 * vc[i] + (1.0 - s.beta2) * g * g;
                let mhat = mc[i] / bc1;
                let vhat = vc[i] / bc2;
                pc[i] = pc[i] * decay - s.lr * mhat / (vhat.sqrt() + s.eps);
            }
        });
}

struct InPlace<'a> {
    g: &'a [f32],
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    step: AdamWStep,
}

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (a, b) = match layout.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("fused adamw: parameter must be contiguous"),
        };
        let p = match storage {
            CpuStorage::F32(data) => &mut data[a..b],
            _ => candle_core::bail!("fused adamw: parameter must be f32"),
        };
        let mut m = self.m.lock().expect("m lock");
        let mut v = self.v.lock().expect("v lock");
        adamw_slices(p, self.g, &mut m, &mut v, &self.step);
        Ok(())
    }
}

/// Updates `param` (CPU, f32) in place from `grad`, with moments `m`, `v`.
pub fn adamw_inplace(param: &Var, grad: &Tensor, m: &mut [f32], v: &mut [f32], step: &AdamWStep) -> Result<()> {
    with_f32(grad, |g| param.inplace_op1(&InPlace { g, m: Mutex::new(m), v: Mutex::new(v), step: *step }))?
}

/// The same update with candle tensor ops (any device): returns new `(p, m, v)`.
pub fn adamw_composed(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (bc1, bc2) = s.corrections();
    let g = (g * s.grad_scale as f64)?;
    let m = ((m * s.beta1 as f64)? + (&g * (1.0 - s.beta1) as f64)?)?;
    let v = ((v * s.beta2 as f64)? + (g.sqr()? * (1.0 - s.beta2) as f64)?)?;
    let mhat = (&m / bc1 as f64)?;
    let denom = ((&v / bc2 as f64)?.sqrt()? + s.eps as f64)?;
    let p = ((p * (1.0 - s.lr * s.weight_decay) as f64)? - (mhat / denom)? * s.lr as f64)?;
    Ok((p, m, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jarip_kernels::ops::testing::*;

    #[test]
    fn fused_matches_composed() {
        let n = 40_000;
        let p0 = randn(&[n], 1, 1.0);
        let g = randn(&[n], 2, 0.1);
        let mut m = randn(&[n], 3, 0.01).to_vec1::<f32>().unwrap();
        let mut v = randn(&[n], 4, 0.01).sqr().unwrap().to_vec1::<f32>().unwrap();
        let (m0, v0) =
            (Tensor::new(m.as_slice(), p0.device()).unwrap(), Tensor::new(v.as_slice(), p0.device()).unwrap());
        let s = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 3, grad_scale: 0.5 };
        let (p_ref, m_ref, v_ref) = adamw_composed(&p0, &g, &m0, &v0, &s).unwrap();
        let p = Var::from_tensor(&p0).unwrap();
        adamw_inplace(&p, &g, &mut m, &mut v, &s).unwrap();
        assert_close(&p_ref, p.as_tensor(), 1e-6, "p");
        assert_close(&m_ref, &Tensor::new(m.as_slice(), p0.device()).unwrap(), 1e-7, "m");
        assert_close(&v_ref, &Tensor::new(v.as_slice(), p0.device()).unwrap(), 1e-7, "v");
    }
}
