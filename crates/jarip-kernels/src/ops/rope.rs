//! Rotary position embeddings on `[B, T, H, D]` tensors, rotating the pairs
//! `(x[i], x[i + D/2])` of position `p` by the angle `p · base^(−2i/D)`:
//! `y₁ = x₁·cos − x₂·sin`, `y₂ = x₁·sin + x₂·cos`.
//!
//! A rotation is linear and orthogonal, so the backward pass is the rotation by the
//! opposite angle (`sin → −sin`).

use super::{rows_per_task, slice_f32, Kernels};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Precomputed cos/sin tables, `[max_seq_len, D/2]`, as tensors (composed path) and as
/// plain vectors (fused path).
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    cos_v: Arc<Vec<f32>>,
    sin_v: Arc<Vec<f32>>,
    half: usize,
}

/// The rotary frequencies `base^(−2i/D)`, `i < D/2`, in f64.
pub fn rope_inv_freq(head_dim: usize, base: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| base.powf(-(2.0 * i as f64) / head_dim as f64)).collect()
}

/// `cos` and `sin` of `p · base^(−2i/D)` for positions `p < max_seq_len` and `i < D/2`, row by
/// row (`[max_seq_len, D/2]`), computed in f64 and rounded once: the one table training and
/// decoding both rotate with.
pub fn rope_angles(max_seq_len: usize, head_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
    rope_angles_of(max_seq_len, &rope_inv_freq(head_dim, base))
}

/// [`rope_angles`] for given frequencies (a model's own, scaled ones: `ModelConfig::rope_inv_freq`).
pub fn rope_angles_of(max_seq_len: usize, inv_freq: &[f64]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_seq_len * half);
    let mut sin = Vec::with_capacity(max_seq_len * half);
    for p in 0..max_seq_len {
        for &f in inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The rotation of one pair: `(x₁·cos − x₂·sin, x₁·sin + x₂·cos)`.
#[inline(always)]
pub fn rotate_pair(x1: f32, x2: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
}

/// Rotary embedding in place of `x: [N, heads, D]`, row `r` at position `pos[r]`, with the
/// tables of [`rope_angles`] (the decode path's form of the fused forward).
pub fn rope_rows_inplace(x: &mut [f32], pos: &[usize], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    x.par_chunks_mut(heads * d).zip(pos).for_each(|(row, &p)| {
        let (cos, sin) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for hd in row.chunks_mut(d) {
            let (x1, x2) = hd.split_at_mut(half);
            for i in 0..half {
                (x1[i], x2[i]) = rotate_pair(x1[i], x2[i], cos[i], sin[i]);
            }
        }
    });
}

impl RopeTables {
    pub fn new(max_seq_len: usize, head_dim: usize, base: f64, device: &Device) -> Result<Self> {
        Self::with_freqs(max_seq_len, &rope_inv_freq(head_dim, base), device)
    }

    /// Tables for given frequencies (`D/2` of them).
    pub fn with_freqs(max_seq_len: usize, inv_freq: &[f64], device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let (cos, sin) = rope_angles_of(max_seq_len, inv_freq);
        Ok(Self {
            cos: Tensor::from_vec(cos.clone(), (max_seq_len, half), device)?,
            sin: Tensor::from_vec(sin.clone(), (max_seq_len, half), device)?,
            cos_v: Arc::new(cos),
            sin_v: Arc::new(sin),
            half,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.cos_v.len() / self.half
    }
}

/// Rotates `x: [B, T, H, D]` whose first position is `pos_offset`.
pub fn rope(x: &Tensor, tables: &RopeTables, pos_offset: usize, kernels: Kernels) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels.cuda_for(x) && tables.cos.device().same_device(x.device()) {
        return crate::cuda::rope(x, &tables.cos, &tables.sin, pos_offset);
    }
    if kernels.fused_for(x) {
        x.contiguous()?.apply_op1(FusedRope { tables: tables.clone(), pos_offset, inverse: false })
    } else {
        rope_composed(x, tables, pos_offset)
    }
}

pub fn rope_composed(x: &Tensor, tables: &RopeTables, pos_offset: usize) -> Result<Tensor> {
    let (_b, t, _h, d) = x.dims4()?;
    let half = d / 2;
    let cos = tables.cos.narrow(0, pos_offset, t)?.reshape((1, t, 1, half))?.to_dtype(x.dtype())?;
    let sin = tables.sin.narrow(0, pos_offset, t)?.reshape((1, t, 1, half))?.to_dtype(x.dtype())?;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y1, y2], 3)
}

struct FusedRope {
    tables: RopeTables,
    pos_offset: usize,
    inverse: bool,
}

impl CustomOp1 for FusedRope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l)?;
        let (_b, t, h, d) = l.shape().dims4()?;
        let half = d / 2;
        if half != self.tables.half || self.pos_offset + t > self.tables.max_seq_len() {
            candle_core::bail!("fused rope: input {:?} does not fit the rotary tables", l.shape());
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        let row = h * d; // one position
        let rows = rows_per_task(row);
        y.par_chunks_mut(row * rows).zip(x.par_chunks(row * rows)).enumerate().for_each(|(blk, (yb, xb))| {
            for (r, (yr, xr)) in yb.chunks_mut(row).zip(xb.chunks(row)).enumerate() {
                let pos = (blk * rows + r) % t + self.pos_offset;
                let cos = &self.tables.cos_v[pos * half..(pos + 1) * half];
                let sin = &self.tables.sin_v[pos * half..(pos + 1) * half];
                for (yh, xh) in yr.chunks_mut(d).zip(xr.chunks(d)) {
                    let (x1, x2) = xh.split_at(half);
                    let (y1, y2) = yh.split_at_mut(half);
                    for i in 0..half {
                        (y1[i], y2[i]) = rotate_pair(x1[i], x2[i], cos[i], sign * sin[i]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let inv = FusedRope { tables: self.tables.clone(), pos_offset: self.pos_offset, inverse: !self.inverse };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let tables = RopeTables::new(16, 8, 10_000.0, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&randn(&[2, 5, 3, 8], 1, 1.0)).unwrap();
        let up = randn(&[2, 5, 3, 8], 2, 1.0);
        for offset in [0, 7] {
            let run = |k: Kernels| {
                let y = rope(&x, &tables, offset, k).unwrap();
                let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(&x).unwrap().clone())
            };
            let (y0, dx0) = run(Kernels::Composed);
            let (y1, dx1) = run(Kernels::Fused);
            assert_close(&y0, &y1, 1e-6, "y");
            assert_close(&dx0, &dx1, 1e-6, "dx");
        }
    }
}
