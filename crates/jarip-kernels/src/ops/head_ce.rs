//! The output head and the soft-capped cross-entropy in one op:
//! `losses = softcap_ce(h·Wᵀ, targets)` for `h: [N, C]`, `W: [V, C]`, without ever holding
//! the `[N, V]` logits: rows go through in blocks of [`BLOCK_ROWS`], whose logits live only
//! in a scratch buffer. The backward pass recomputes each block's logits (one extra
//! `N·C·V` matmul) and turns them into `dz` in place, then `dh = dz·W`, `dW += dzᵀ·h`.
//! Besides the memory (three `N×V` fp32 tensors on the composed path), this removes the
//! largest tensors from candle's gradient bookkeeping. On a bf16 [`Path`] the three products run
//! in bf16 with fp32 accumulation (`W` packed once per pass); logits, soft-cap and cross-entropy
//! stay fp32.

use super::cross_entropy::{row_backward, row_forward, softcap_cross_entropy_composed};
use super::linear::{linear_composed, mm};
use super::matmul_bf16::{self, Path};
use super::{with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Rows per block: the block's logits (`BLOCK_ROWS × V` floats) stay in cache-sized scratch.
pub const BLOCK_ROWS: usize = 128;

/// Per-row losses `[N]` (nats, fp32) of `h: [N, C]` through head `w: [V, C]` against `targets: [N]`.
pub fn head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    cap: f32,
    kernels: Kernels,
    path: Path,
) -> Result<Tensor> {
    if kernels.cuda_for(h) && h.dtype() == w.dtype() {
        return super::head_ce_blocked::head_cross_entropy(h, w, targets, cap);
    }
    if kernels.fused_for(h) && kernels.fused_for(w) {
        let op = FusedHeadCe { cap, path, lse: Mutex::new(Vec::new()) };
        h.contiguous()?.apply_op3(&w.contiguous()?, &targets.contiguous()?, op)
    } else {
        let n = h.dim(0)?;
        let logits = linear_composed(h, w, Shape::from((n, w.dim(0)?)))?.to_dtype(candle_core::DType::F32)?;
        softcap_cross_entropy_composed(&logits, targets, cap)
    }
}

struct FusedHeadCe {
    cap: f32,
    path: Path,
    lse: Mutex<Vec<f32>>,
}

fn targets_of(s: &CpuStorage, l: &Layout, n: usize, v: usize) -> Result<Vec<u32>> {
    let t = match l.contiguous_offsets() {
        Some((a, b)) => s.as_slice::<u32>()?[a..b].to_vec(),
        None => candle_core::bail!("fused head: targets must be contiguous"),
    };
    if t.len() != n {
        candle_core::bail!("fused head: {} targets for {n} rows", t.len());
    }
    if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("fused head: target {bad} outside the vocabulary of {v}");
    }
    Ok(t)
}

/// A block's logits `z = h_block·Wᵀ`, with `W` packed once when the path is bf16.
struct Logits<'a> {
    path: Path,
    w: &'a [f32],
    packed: Option<matmul_bf16::PackedRhs>,
    v: usize,
    c: usize,
}

impl<'a> Logits<'a> {
    fn new(path: Path, w: &'a [f32], v: usize, c: usize) -> Self {
        let packed = path.is_bf16().then(|| matmul_bf16::pack_rhs(c, v, w, (1, c)));
        Self { path, w, packed, v, c }
    }

    /// `z[m×v] = h[m×c]·Wᵀ`.
    fn block(&self, h: &[f32], m: usize, z: &mut [f32]) {
        let (v, c) = (self.v, self.c);
        match &self.packed {
            Some(wp) => {
                matmul_bf16::matmul(self.path, &matmul_bf16::pack_lhs(m, c, h, (c, 1)), wp, &mut z[..m * v], false)
            }
            None => mm((m, v, c), z, false, h, (c, 1), self.w, (1, c)),
        }
    }
}

impl CustomOp3 for FusedHeadCe {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        st: &CpuStorage,
        lt: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = super::slice_f32(sh, lh)?;
        let w = super::slice_f32(sw, lw)?;
        let (n, c) = lh.shape().dims2()?;
        let (v, cw) = lw.shape().dims2()?;
        if c != cw {
            candle_core::bail!("fused head: h {:?} and w {:?} do not match", lh.shape(), lw.shape());
        }
        let t = targets_of(st, lt, n, v)?;
        let mut loss = vec![0f32; n];
        let mut lse = vec![0f32; n];
        let mut z = vec![0f32; BLOCK_ROWS * v];
        let logits = Logits::new(self.path, w, v, c);
        for r0 in (0..n).step_by(BLOCK_ROWS) {
            let m = BLOCK_ROWS.min(n - r0);
            logits.block(&h[r0 * c..(r0 + m) * c], m, &mut z);
            z[..m * v]
                .par_chunks_mut(v)
                .zip(loss[r0..r0 + m].par_iter_mut().zip(lse[r0..r0 + m].par_iter_mut()))
                .enumerate()
                .for_each_init(
                    || vec![0f32; v],
                    |buf, (r, (zr, (l, s)))| {
                        (*l, *s) = row_forward(zr, t[r0 + r], self.cap, buf);
                    },
                );
        }
        *self.lse.lock().expect("lse lock") = lse;
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        t: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = h.dims2()?;
        let v = w.dim(0)?;
        let lse = std::mem::take(&mut *self.lse.lock().expect("lse lock"));
        if lse.len() != n {
            candle_core::bail!("fused head: backward without forward");
        }
        let t = t.to_vec1::<u32>()?;
        let g = g.to_vec1::<f32>()?;
        let (dh, dw) = with_f32(h, |h| {
            with_f32(w, |w| {
                // dh: each block of rows written by its product; dW: written by the first
                // block's product (r0 = 0, no accumulation), then accumulated.
                let mut dh = super::output_buffer(n * c);
                let mut dw = super::output_buffer(v * c);
                let mut z = vec![0f32; BLOCK_ROWS * v];
                let logits = Logits::new(self.path, w, v, c);
                // W as the right operand of dz·W, packed once for every block.
                let w_rows = self.path.is_bf16().then(|| matmul_bf16::pack_rhs(v, c, w, (c, 1)));
                for r0 in (0..n).step_by(BLOCK_ROWS) {
                    let m = BLOCK_ROWS.min(n - r0);
                    logits.block(&h[r0 * c..(r0 + m) * c], m, &mut z);
                    z[..m * v].par_chunks_mut(v).enumerate().for_each_init(
                        || vec![0f32; v],
                        |e, (r, zr)| row_backward(zr, t[r0 + r], lse[r0 + r], g[r0 + r], self.cap, e),
                    );
                    // dh[block] = dz·W ; dW += dzᵀ·h[block]
                    match &w_rows {
                        Some(wr) => {
                            let dz = matmul_bf16::pack_lhs(m, v, &z, (v, 1));
                            matmul_bf16::matmul(self.path, &dz, wr, &mut dh[r0 * c..(r0 + m) * c], false);
                        }
                        None => mm((m, c, v), &mut dh[r0 * c..], false, &z, (v, 1), w, (c, 1)),
                    }
                    matmul_bf16::mm(self.path, (v, c, m), &mut dw, r0 > 0, &z, (1, v), &h[r0 * c..], (c, 1));
                }
                (dh, dw)
            })
        })??;
        Ok((Some(Tensor::from_vec(dh, (n, c), h.device())?), Some(Tensor::from_vec(dw, (v, c), w.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let (n, c, v) = (2 * BLOCK_ROWS + 17, 24, 300);
        let h = Var::from_tensor(&randn(&[n, c], 1, 2.0)).unwrap();
        let w = Var::from_tensor(&randn(&[v, c], 2, 1.0)).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let up = randn(&[n], 3, 1.0);
        // A soft-capped head (15) and none (0).
        for cap in [15.0, 0.0] {
            let run = |k: Kernels| {
                let l = head_cross_entropy(&h, &w, &t, cap, k, Path::Fp32).unwrap();
                let g = (l.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (l, g.get(&h).unwrap().clone(), g.get(&w).unwrap().clone())
            };
            let (l0, dh0, dw0) = run(Kernels::Composed);
            let (l1, dh1, dw1) = run(Kernels::Fused);
            assert_close(&l0, &l1, 1e-4, &format!("loss, cap {cap}"));
            assert_close(&dh0, &dh1, 1e-4, &format!("dh, cap {cap}"));
            assert_close(&dw0, &dw1, 1e-4, &format!("dw, cap {cap}"));
        }
    }

    #[test]
    fn bf16_matches_fp32_within_bf16_tolerance() {
        let (n, c, v) = (BLOCK_ROWS + 9, 40, 260);
        let h = Var::from_tensor(&randn(&[n, c], 4, 2.0)).unwrap();
        let w = Var::from_tensor(&randn(&[v, c], 5, 1.0)).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 31) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let up = randn(&[n], 6, 1.0);
        let run = |k: Kernels, p: Path| {
            let l = head_cross_entropy(&h, &w, &t, 15.0, k, p).unwrap();
            let g = (l.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            [l, g.get(&h).unwrap().clone(), g.get(&w).unwrap().clone()]
        };
        let want = run(Kernels::Composed, Path::Fp32);
        for p in [Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx] {
            if !p.available() {
                eprintln!("skipped {}: this CPU lacks it", p.name());
                continue;
            }
            let got = run(Kernels::Fused, p);
            for (what, a, b) in [("loss", &got[0], &want[0]), ("dh", &got[1], &want[1]), ("dw", &got[2], &want[2])] {
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let r = max_abs_diff(a, b) / scale;
                assert!(r < 3e-2 && r > 1e-7, "{}: {what} relative error {r}", p.name());
            }
        }
    }
}
