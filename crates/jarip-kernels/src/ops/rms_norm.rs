//! RMSNorm over the last dimension with a learned gain: `y = x / sqrt(mean(x²) + eps) · w`.
//!
//! Backward, with `r = 1/sqrt(mean(x²)+eps)`, `x̂ = x·r`, `g = dy·w`:
//! `dx = r · (g − x̂ · mean(g·x̂))`, `dw = Σ_rows dy·x̂`.

use super::{rows_per_task, slice_f32, with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels.cuda_for(x) {
        return crate::cuda::rms_norm(x, w, eps);
    }
    if kernels.fused_for(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, FusedRmsNorm { eps: eps as f32 })
    } else {
        rms_norm_composed(x, w, eps)
    }
}

pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(w)
}

struct FusedRmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// One row's forward, `out = x · r · w` with `r = 1/sqrt(mean(x²) + eps)`: the fused kernel's
/// and the decode path's (one definition, so both give the same bits).
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let r = inv_rms(x, eps);
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * r * wi;
    }
}

impl CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1)?;
        let w = slice_f32(s2, l2)?;
        let c = w.len();
        // Every row is written by `rms_norm_row`.
        let mut y = super::output_buffer(x.len());
        let rows = rows_per_task(c);
        y.par_chunks_mut(c * rows).zip(x.par_chunks(c * rows)).for_each(|(yb, xb)| {
            for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                rms_norm_row(xr, w, self.eps, yr);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let w_v = w.flatten_all()?.to_vec1::<f32>()?;
        let rows = rows_per_task(c);
        let (dx, dw) = with_f32(x, |x| {
            with_f32(dy, |dy| {
                // Every element of every row is written below.
                let mut dx = super::output_buffer(x.len());
                // dw is reduced per fixed block of rows, then summed in block order: the result
                // does not depend on how rayon schedules the blocks (bit-exact resume relies on it).
                let partial: Vec<Vec<f32>> = dx
                    .par_chunks_mut(c * rows)
                    .zip(x.par_chunks(c * rows).zip(dy.par_chunks(c * rows)))
                    .map(|(dxb, (xb, dyb))| {
                        let mut dw = vec![0f32; c];
                        for ((dxr, xr), dyr) in dxb.chunks_mut(c).zip(xb.chunks(c)).zip(dyb.chunks(c)) {
                            let r = inv_rms(xr, self.eps);
                            let mut dot = 0f32;
                            for i in 0..c {
                                let xh = xr[i] * r;
                                dw[i] += dyr[i] * xh;
                                dot += dyr[i] * w_v[i] * xh;
                            }
                            let mean = dot / c as f32;
                            for i in 0..c {
                                dxr[i] = r * (dyr[i] * w_v[i] - xr[i] * r * mean);
                            }
                        }
                        dw
                    })
                    .collect();
                let mut dw = vec![0f32; c];
                for p in partial {
                    for (a, b) in dw.iter_mut().zip(p) {
                        *a += b;
                    }
                }
                (dx, dw)
            })
        })??;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let x = Var::from_tensor(&randn(&[3, 5, 48], 1, 2.0)).unwrap();
        let w = Var::from_tensor(&(randn(&[48], 2, 0.5) + 1.0).unwrap()).unwrap();
        let up = randn(&[3, 5, 48], 3, 1.0);
        let run = |k: Kernels| {
            let y = rms_norm(&x, &w, 1e-5, k).unwrap();
            let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
        };
        let (y0, dx0, dw0) = run(Kernels::Composed);
        let (y1, dx1, dw1) = run(Kernels::Fused);
        assert_close(&y0, &y1, 1e-5, "y");
        assert_close(&dx0, &dx1, 1e-5, "dx");
        assert_close(&dw0, &dw1, 1e-4, "dw");
    }
}
