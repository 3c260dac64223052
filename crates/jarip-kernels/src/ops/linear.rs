//! Bias-free linear layer `y = x·Wᵀ` (`W: [out, in]`), with `x` of any shape whose last
//! dimension is `in` and an output shape chosen by the caller (so the attention heads'
//! reshapes cost no extra graph nodes).
//!
//! Backward: `dx = dy·W`, `dW = dyᵀ·x`. The fused version calls the `gemm` crate directly and
//! returns contiguous gradients, where candle's composed `matmul(x, W.t())` leaves a transposed
//! gradient that candle's gradient accumulation then copies through a strided path.
//! On a bf16 [`Path`] the same three products run in bf16 with fp32 accumulation
//! ([`super::matmul_bf16`]); `x`, `W`, `y` and the gradients stay fp32 tensors.

use super::matmul_bf16::{self, Path};
use super::{slice_f32, with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x: [..., in]`, `w: [out, in]` → `[..., out]` reshaped to `out_shape`; the fused kernel
/// multiplies on `path` (the composed one always in the tensors' dtype).
pub fn linear(x: &Tensor, w: &Tensor, out_shape: impl Into<Shape>, kernels: Kernels, path: Path) -> Result<Tensor> {
    let out_shape = out_shape.into();
    if kernels.fused_for(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, FusedLinear { out_shape, path })
    } else {
        linear_composed(x, w, out_shape)
    }
}

pub fn linear_composed(x: &Tensor, w: &Tensor, out_shape: Shape) -> Result<Tensor> {
    let inp = w.dim(1)?;
    x.reshape((x.elem_count() / inp, inp))?.matmul(&w.t()?)?.reshape(out_shape)
}

struct FusedLinear {
    out_shape: Shape,
    path: Path,
}

pub(crate) fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m×n] (+)= lhs[m×k]·rhs[k×n]`, row/column strides in elements, threads from rayon.
#[allow(clippy::too_many_arguments)]
pub fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n, "matmul: buffer sizes");
    let (d, l, r) = (dst.as_mut_ptr(), lhs.as_ptr(), rhs.as_ptr());
    // SAFETY: the strides address only elements inside the slices (checked sizes, dense
    // operands), and `dst` is borrowed mutably, so no one else touches it.
    unsafe { gemm_strided(m, n, k, d, n, accumulate, l, (lhs_rs, lhs_cs), r, (rhs_rs, rhs_cs), 1.0, parallelism()) }
}

/// `dst[m×n] (= or +=) scale · lhs[m×k] · rhs[k×n]`, strides in elements: the one call into
/// `gemm` of the fused kernels (attention's tiles run it single-threaded inside their own
/// parallel loop; [`mm`] runs it on rayon's threads).
///
/// # Safety
/// Every element the strides address must lie inside its allocation: `lhs + i·lhs_rs + p·lhs_cs`
/// for `i < m`, `p < k`; `rhs + p·rhs_rs + j·rhs_cs` for `p < k`, `j < n`; `dst + i·dst_rs + j`
/// for `i < m`, `j < n`. No other thread may read or write the `dst` elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller upholds the bounds and exclusivity stated above, which is all
    // `gemm::gemm` reads and writes (row/column strides as given, on the threads `parallelism` names).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl CustomOp2 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1)?;
        let w = slice_f32(s2, l2)?;
        let (out, inp) = l2.shape().dims2()?;
        let n = x.len() / inp;
        if n * inp != x.len() || self.out_shape.elem_count() != n * out {
            candle_core::bail!(
                "fused linear: x {:?}, w {:?}, output {:?} do not fit",
                l1.shape(),
                l2.shape(),
                self.out_shape
            );
        }
        // Every element is written by the product (no accumulation).
        let mut y = super::output_buffer(n * out);
        // y[n×out] = x[n×in] · Wᵀ (Wᵀ[i, o] = W[o·in + i])
        matmul_bf16::mm(self.path, (n, out, inp), &mut y, false, x, (inp, 1), w, (1, inp));
        Ok((CpuStorage::F32(y), self.out_shape.clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out, inp) = w.dims2()?;
        let n = x.elem_count() / inp;
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(dy, |dy| {
                    // Both written whole by their products (no accumulation).
                    let mut dx = super::output_buffer(n * inp);
                    let mut dw = super::output_buffer(out * inp);
                    matmul_bf16::mm(self.path, (n, inp, out), &mut dx, false, dy, (out, 1), w, (inp, 1));
                    // dW[out×in] = dyᵀ · x (dyᵀ[o, r] = dy[r·out + o])
                    matmul_bf16::mm(self.path, (out, inp, n), &mut dw, false, dy, (1, out), x, (inp, 1));
                    (dx, dw)
                })
            })
        })???;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, (out, inp), w.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let x = Var::from_tensor(&randn(&[3, 5, 24], 1, 1.0)).unwrap();
        let w = Var::from_tensor(&randn(&[40, 24], 2, 0.5)).unwrap();
        let up = randn(&[15, 4, 10], 3, 1.0);
        let run = |k: Kernels| {
            let y = linear(&x, &w, (15, 4, 10), k, Path::Fp32).unwrap();
            let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
        };
        let (y0, dx0, dw0) = run(Kernels::Composed);
        let (y1, dx1, dw1) = run(Kernels::Fused);
        assert_close(&y0, &y1, 1e-5, "y");
        assert_close(&dx0, &dx1, 1e-5, "dx");
        assert_close(&dw0, &dw1, 1e-5, "dw");
    }

    /// bf16 products against the fp32 composition: values and both gradients within bf16's
    /// rounding (operands carry 8 significant bits: relative error ~2⁻⁸ per product, summed).
    #[test]
    fn bf16_matches_fp32_within_bf16_tolerance_on_every_path() {
        let x = Var::from_tensor(&randn(&[3, 37, 96], 4, 1.0)).unwrap();
        let w = Var::from_tensor(&randn(&[80, 96], 5, 0.5)).unwrap();
        let up = randn(&[111, 80], 6, 1.0);
        let run = |k: Kernels, p: Path| {
            let y = linear(&x, &w, (111, 80), k, p).unwrap();
            let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
        };
        let (y0, dx0, dw0) = run(Kernels::Composed, Path::Fp32);
        let rel = |a: &Tensor, b: &Tensor| {
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            max_abs_diff(a, b) / scale
        };
        let mut bits = Vec::new();
        for p in [Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx] {
            if !p.available() {
                eprintln!("skipped {}: this CPU lacks it", p.name());
                continue;
            }
            let (y1, dx1, dw1) = run(Kernels::Fused, p);
            for (what, a, b) in [("y", &y1, &y0), ("dx", &dx1, &dx0), ("dw", &dw1, &dw0)] {
                let r = rel(a, b);
                assert!(r < 2e-2, "{}: {what} relative error {r}", p.name());
                assert!(r > 1e-6, "{}: {what} equals fp32 ({r}): bf16 rounding did not happen", p.name());
            }
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            bits.push((p, [flat(&y1), flat(&dx1), flat(&dw1)]));
        }
        // The portable and AVX512-BF16 paths agree bit for bit, gradients included.
        let same: Vec<_> = bits.iter().filter(|(p, _)| p.same_bits(Path::Bf16Portable)).collect();
        for pair in same.windows(2) {
            assert_eq!(pair[0].1, pair[1].1, "{} vs {}", pair[0].0.name(), pair[1].0.name());
        }
    }
}
