//! SwiGLU's gating, fused: `y = silu(g) · u` for the gate and up projections `g, u: [.., H]`.
//!
//! Forward, with `s = σ(g) = 1 / (1 + e^(−g))`: `y = g · s · u`.
//! Backward, for upstream `dy`: `du = dy · g · s` and `dg = dy · u · s · (1 + g · (1 − s))`
//! (the derivative of `g · σ(g)`). One pass each way over the two inputs, where the composed
//! candle ops (`silu`, then a product, and autodiff's silu backward) make several and keep their
//! intermediates.

use super::{slice_f32, with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 16_384;

pub fn swiglu(g: &Tensor, u: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.fused_for(g) && kernels.fused_for(u) && g.shape() == u.shape() {
        g.contiguous()?.apply_op2(&u.contiguous()?, FusedSwiGlu)
    } else {
        swiglu_composed(g, u)
    }
}

pub fn swiglu_composed(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.silu()? * u
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct FusedSwiGlu;

impl CustomOp2 for FusedSwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(yc, (gc, uc))| {
            for ((yi, &gi), &ui) in yc.iter_mut().zip(gc).zip(uc) {
                *yi = gi * sigmoid(gi) * ui;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_f32(g, |g| {
            with_f32(u, |u| {
                with_f32(dy, |dy| {
                    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
                        .for_each(|((dgc, duc), ((gc, uc), yc))| {
                            for i in 0..gc.len() {
                                let (gi, ui, d) = (gc[i], uc[i], yc[i]);
                                let s = sigmoid(gi);
                                duc[i] = d * gi * s;
                                dgc[i] = d * ui * s * (1.0 + gi * (1.0 - s));
                            }
                        });
                    (dg, du)
                })
            })
        })???;
        Ok((Some(Tensor::from_vec(dg, g.shape(), g.device())?), Some(Tensor::from_vec(du, u.shape(), u.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_values_and_grads() {
        // Gates from −16 to 16: both tails of the sigmoid, where a wrong derivative shows.
        let g = Var::from_tensor(&randn(&[7, 300], 1, 8.0)).unwrap();
        let u = Var::from_tensor(&randn(&[7, 300], 2, 1.0)).unwrap();
        let up = randn(&[7, 300], 3, 1.0);
        let run = |k: Kernels| {
            let y = swiglu(&g, &u, k).unwrap();
            let grads = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(&g).unwrap().clone(), grads.get(&u).unwrap().clone())
        };
        let (y0, dg0, du0) = run(Kernels::Composed);
        let (y1, dg1, du1) = run(Kernels::Fused);
        assert_close(&y0, &y1, 1e-5, "y");
        assert_close(&dg0, &dg1, 1e-5, "dg");
        assert_close(&du0, &du1, 1e-5, "du");
    }
}
