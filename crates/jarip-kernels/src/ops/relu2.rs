//! Squared ReLU, `y = max(x, 0)²`, with `dy/dx = 2·max(x, 0)`.

use super::{slice_f32, with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 16_384;

pub fn relu2(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.fused_for(x) {
        x.contiguous()?.apply_op1(FusedRelu2)
    } else {
        relu2_composed(x)
    }
}

pub fn relu2_composed(x: &Tensor) -> Result<Tensor> {
    x.relu()?.sqr()
}

struct FusedRelu2;

impl CustomOp1 for FusedRelu2 {
    fn name(&self) -> &'static str {
        "fused-relu2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l)?;
        // Every element is written below (chunks of y and x pair up one to one).
        let mut y = super::output_buffer(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
            for (yi, &xi) in yc.iter_mut().zip(xc) {
                let r = xi.max(0.0);
                *yi = r * r;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, |x| {
            with_f32(dy, |dy| {
                // Every element is written below.
                let mut dx = super::output_buffer(x.len());
                dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(
                    |(dc, (xc, gc))| {
                        for ((d, &xi), &g) in dc.iter_mut().zip(xc).zip(gc) {
                            *d = 2.0 * xi.max(0.0) * g;
                        }
                    },
                );
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let x = Var::from_tensor(&randn(&[7, 300], 1, 2.0)).unwrap();
        let up = randn(&[7, 300], 2, 1.0);
        let run = |k: Kernels| {
            let y = relu2(&x, k).unwrap();
            let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        let (y0, dx0) = run(Kernels::Composed);
        let (y1, dx1) = run(Kernels::Fused);
        assert_close(&y0, &y1, 1e-6, "y");
        assert_close(&dx0, &dx1, 1e-6, "dx");
    }
}
