//! Causal multi-head attention with grouped key/value heads:
//! `y = softmax(q·kᵀ/√D + causal mask) · v`, per head, on `[B, T, H, D]` tensors (the layout
//! the projections produce, so no transposes are needed).
//!
//! The fused kernel works flash-style on blocks of [`BLOCK_Q`] queries: it computes that
//! block's scores against the keys it may see, normalises them, and multiplies by `v`, so at
//! most `BLOCK_Q × T` scores exist at a time per thread (never `T × T` per head, never
//! `B·H·T·T` in all). It keeps only each row's log-sum-exp for the backward pass, which
//! recomputes the probabilities block by block:
//! `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = dS·K/√D`, `dK += dSᵀ·Q/√D`.
//! Each (batch, KV head) is one task, so the gradients of a shared KV head are summed in
//! a fixed order by one thread.

use super::fastmath::exp_inplace;
use super::linear::gemm_strided;
use super::{slice_f32, Kernels, SendPtr};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Mutex;

/// Queries per block of the fused kernel.
pub const BLOCK_Q: usize = 64;

/// `q: [B, T, H, D]`, `k, v: [B, Tk, Hkv, D]` with `Tk ≥ T`; query `i` sits at position
/// `Tk − T + i` and sees keys `0..=Tk − T + i`. Returns `[B, T, H, D]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, kernels: Kernels) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if kernels.cuda_for(q) && crate::cuda::attention_supported(q, k) {
        return crate::cuda::causal_attention(q, k, v);
    }
    if kernels.fused_for(q) && q.dim(1)? == k.dim(1)? {
        let op = FusedAttention { lse: Mutex::new(Vec::new()) };
        q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    } else {
        causal_attention_composed(q, k, v)
    }
}

pub fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, t, h, d) = q.dims4()?;
    let (_, tk, hkv, _) = k.dims4()?;
    let rep = h / hkv;
    let q = q.transpose(1, 2)?.contiguous()?; // [B, H, T, D]
    let expand = |x: &Tensor| -> Result<Tensor> {
        let x = x.transpose(1, 2)?; // [B, Hkv, Tk, D]
        if rep == 1 {
            x.contiguous()
        } else {
            x.unsqueeze(2)?.broadcast_as((b, hkv, rep, tk, d))?.reshape((b, h, tk, d))
        }
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let offset = tk - t;
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..tk).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    let mask = Tensor::from_vec(mask, (t, tk), q.device())?.to_dtype(q.dtype())?;
    let scores = scores.broadcast_add(&mask)?;
    let max = scores.max_keepdim(D::Minus1)?.detach();
    let e = scores.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

struct FusedAttention {
    /// Log-sum-exp of every (batch, head, query) row, `[B, H, T]`, for the backward pass.
    lse: Mutex<Vec<f32>>,
}

/// The shapes of one attention call (shared with the CUDA kernels).
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) h: usize,
    pub(crate) hkv: usize,
    pub(crate) d: usize,
}

impl Dims {
    /// `q: [B, T, H, D]` and `k/v: [B, T, Hkv, D]` with `Hkv` dividing `H`.
    pub(crate) fn of(q: &Shape, k: &Shape) -> Result<Self> {
        let (b, t, h, d) = q.dims4()?;
        let (bk, tk, hkv, dk) = k.dims4()?;
        if b != bk || t != tk || d != dk || hkv == 0 || h % hkv != 0 {
            candle_core::bail!("fused attention: q {q:?} and k/v {k:?} do not match");
        }
        Ok(Self { b, t, h, hkv, d })
    }
    fn qs(&self) -> usize {
        self.h * self.d
    }
    fn ks(&self) -> usize {
        self.hkv * self.d
    }
    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of(lq.shape(), lk.shape())?;
        if lv.shape() != lk.shape() {
            candle_core::bail!("fused attention: k {:?} and v {:?} differ", lk.shape(), lv.shape());
        }
        let (q, k, v) = (slice_f32(sq, lq)?, slice_f32(sk, lk)?, slice_f32(sv, lv)?);
        let Dims { b, t, h, hkv, d } = dims;
        let (qs, ks, scale) = (dims.qs(), dims.ks(), dims.scale());
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; b * h * t];
        let out_ptr = SendPtr(out.as_mut_ptr());
        lse.par_chunks_mut(t).enumerate().for_each(|(task, lse_row)| {
            let (bi, hi) = (task / h, task % h);
            let kvh = hi / (h / hkv);
            let q_base = bi * t * qs + hi * d;
            let k_base = bi * t * ks + kvh * d;
            let mut s = vec![0f32; BLOCK_Q * t];
            for i0 in (0..t).step_by(BLOCK_Q) {
                let m = BLOCK_Q.min(t - i0);
                let nk = i0 + m;
                // SAFETY: rows i0..i0+m of head hi (q) and positions 0..nk of KV head kvh (k)
                // lie inside q and k (`Dims::of` checked the shapes); `s` holds m·nk values.
                unsafe {
                    let qp = q.as_ptr().add(q_base + i0 * qs);
                    gemm_strided(
                        m,
                        nk,
                        d,
                        s.as_mut_ptr(),
                        nk,
                        false,
                        qp,
                        (qs, 1),
                        k.as_ptr().add(k_base),
                        (1, ks),
                        scale,
                        gemm::Parallelism::None,
                    );
                }
                for r in 0..m {
                    let row = &mut s[r * nk..(r + 1) * nk];
                    let (seen, hidden) = row.split_at_mut(i0 + r + 1);
                    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    seen.iter_mut().for_each(|x| *x -= max);
                    exp_inplace(seen);
                    let sum: f32 = seen.iter().sum();
                    let inv = 1.0 / sum;
                    seen.iter_mut().for_each(|x| *x *= inv);
                    hidden.iter_mut().for_each(|x| *x = 0.0);
                    lse_row[i0 + r] = max + sum.ln();
                }
                // SAFETY: `out` has q's shape, so rows i0..i0+m of head hi are in bounds; each
                // task (batch, head) writes only its own head's columns of those rows, so no two
                // threads write the same element, and `out` outlives the parallel loop.
                unsafe {
                    let op = out_ptr.get().add(q_base + i0 * qs);
                    gemm_strided(
                        m,
                        d,
                        nk,
                        op,
                        qs,
                        false,
                        s.as_ptr(),
                        (nk, 1),
                        v.as_ptr().add(k_base),
                        (ks, 1),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        *self.lse.lock().expect("lse lock") = lse;
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of(q.shape(), k.shape())?;
        let Dims { b, t, h, hkv, d } = dims;
        let (qs, ks, scale) = (dims.qs(), dims.ks(), dims.scale());
        let rep = h / hkv;
        let lse = std::mem::take(&mut *self.lse.lock().expect("lse lock"));
        if lse.len() != b * h * t {
            candle_core::bail!("fused attention: backward without forward");
        }
        let (q_shape, k_shape, dev) = (q.shape().clone(), k.shape().clone(), q.device().clone());
        let mut dq = vec![0f32; q.elem_count()];
        let mut dk = vec![0f32; k.elem_count()];
        let mut dv = vec![0f32; v.elem_count()];
        let (dq_ptr, dk_ptr, dv_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
        let as_vec = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (q, k, v, o, dout) = (as_vec(q)?, as_vec(k)?, as_vec(v)?, as_vec(out)?, as_vec(dout)?);
        (0..b * hkv).into_par_iter().for_each(|task| {
            let (bi, kvh) = (task / hkv, task % hkv);
            let k_base = bi * t * ks + kvh * d;
            let mut dk_loc = vec![0f32; t * d];
            let mut dv_loc = vec![0f32; t * d];
            let mut p = vec![0f32; BLOCK_Q * t];
            let mut ds = vec![0f32; BLOCK_Q * t];
            for hi in kvh * rep..(kvh + 1) * rep {
                let q_base = bi * t * qs + hi * d;
                let lse = &lse[(bi * h + hi) * t..(bi * h + hi + 1) * t];
                for i0 in (0..t).step_by(BLOCK_Q) {
                    let m = BLOCK_Q.min(t - i0);
                    let nk = i0 + m;
                    // SAFETY: offsets of row i0 of head hi and of position 0 of KV
                    // head kvh, inside q/dout and k/v whose shapes `Dims::of` checked.
                    let qp = unsafe { q.as_ptr().add(q_base + i0 * qs) };
                    // SAFETY: as above.
                    let dop = unsafe { dout.as_ptr().add(q_base + i0 * qs) };
                    // SAFETY: as above.
                    let kp = unsafe { k.as_ptr().add(k_base) };
                    // SAFETY: as above.
                    let vp = unsafe { v.as_ptr().add(k_base) };
                    // SAFETY: m query rows and nk ≤ t key rows of one head are in bounds; p and
                    // ds hold m·nk values and are this task's own.
                    unsafe {
                        gemm_strided(
                            m,
                            nk,
                            d,
                            p.as_mut_ptr(),
                            nk,
                            false,
                            qp,
                            (qs, 1),
                            kp,
                            (1, ks),
                            scale,
                            gemm::Parallelism::None,
                        );
                        gemm_strided(
                            m,
                            nk,
                            d,
                            ds.as_mut_ptr(),
                            nk,
                            false,
                            dop,
                            (qs, 1),
                            vp,
                            (1, ks),
                            1.0,
                            gemm::Parallelism::None,
                        );
                    }
                    for r in 0..m {
                        let i = i0 + r;
                        let row = (q_base + i * qs)..(q_base + i * qs + d);
                        let di: f32 = dout[row.clone()].iter().zip(&o[row]).map(|(a, b)| a * b).sum();
                        let pr = &mut p[r * nk..(r + 1) * nk];
                        let dr = &mut ds[r * nk..(r + 1) * nk];
                        let (p_seen, p_hidden) = pr.split_at_mut(i + 1);
                        p_seen.iter_mut().for_each(|x| *x -= lse[i]);
                        exp_inplace(p_seen);
                        p_hidden.iter_mut().for_each(|x| *x = 0.0);
                        for (dj, &pj) in dr.iter_mut().zip(pr.iter()) {
                            *dj = pj * (*dj - di) * scale;
                        }
                    }
                    // SAFETY: dv_loc/dk_loc (t·d, this task's own) receive nk ≤ t rows; dq rows
                    // i0..i0+m of head hi belong to this task alone (a task owns KV head kvh and
                    // so query heads kvh·rep..(kvh+1)·rep), and dq outlives the loop.
                    unsafe {
                        // dV[0..nk] += Pᵀ·dO
                        gemm_strided(
                            nk,
                            d,
                            m,
                            dv_loc.as_mut_ptr(),
                            d,
                            true,
                            p.as_ptr(),
                            (1, nk),
                            dop,
                            (qs, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                        // dQ = dS·K (scale already in dS)
                        let dqp = dq_ptr.get().add(q_base + i0 * qs);
                        gemm_strided(
                            m,
                            d,
                            nk,
                            dqp,
                            qs,
                            false,
                            ds.as_ptr(),
                            (nk, 1),
                            kp,
                            (ks, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                        // dK[0..nk] += dSᵀ·Q
                        gemm_strided(
                            nk,
                            d,
                            m,
                            dk_loc.as_mut_ptr(),
                            d,
                            true,
                            ds.as_ptr(),
                            (1, nk),
                            qp,
                            (qs, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            for j in 0..t {
                // SAFETY: position j of KV head kvh in batch bi: d values inside dk/dv (k's
                // shape), written by this task alone; the local buffers hold t·d values.
                unsafe {
                    let at = k_base + j * ks;
                    std::ptr::copy_nonoverlapping(dk_loc.as_ptr().add(j * d), dk_ptr.get().add(at), d);
                    std::ptr::copy_nonoverlapping(dv_loc.as_ptr().add(j * d), dv_ptr.get().add(at), d);
                }
            }
        });
        Ok((
            Some(Tensor::from_vec(dq, &q_shape, &dev)?),
            Some(Tensor::from_vec(dk, &k_shape, &dev)?),
            Some(Tensor::from_vec(dv, k_shape, &dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Var;

    fn check(b: usize, t: usize, h: usize, hkv: usize, d: usize) {
        let q = Var::from_tensor(&randn(&[b, t, h, d], 1, 1.5)).unwrap();
        let k = Var::from_tensor(&randn(&[b, t, hkv, d], 2, 1.5)).unwrap();
        let v = Var::from_tensor(&randn(&[b, t, hkv, d], 3, 1.0)).unwrap();
        let up = randn(&[b, t, h, d], 4, 1.0);
        let run = |kern: Kernels| {
            let y = causal_attention(&q, &k, &v, kern).unwrap();
            let g = (y.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&q).unwrap().clone(), g.get(&k).unwrap().clone(), g.get(&v).unwrap().clone())
        };
        let (y0, dq0, dk0, dv0) = run(Kernels::Composed);
        let (y1, dq1, dk1, dv1) = run(Kernels::Fused);
        assert_close(&y0, &y1, 1e-5, "y");
        assert_close(&dq0, &dq1, 1e-4, "dq");
        assert_close(&dk0, &dk1, 1e-4, "dk");
        assert_close(&dv0, &dv1, 1e-4, "dv");
    }

    #[test]
    fn fused_matches_composed_values_and_grads() {
        check(2, 19, 4, 4, 8);
        // several query blocks, grouped KV heads
        check(1, 2 * BLOCK_Q + 5, 4, 2, 16);
    }

    #[test]
    fn decode_offset_sees_all_cached_keys() {
        // One query at the end of 6 keys attends to all of them: equal to the last row of full attention.
        let q = randn(&[1, 6, 2, 8], 1, 1.0);
        let k = randn(&[1, 6, 2, 8], 2, 1.0);
        let v = randn(&[1, 6, 2, 8], 3, 1.0);
        let full = causal_attention_composed(&q, &k, &v).unwrap();
        let last = causal_attention_composed(&q.narrow(1, 5, 1).unwrap(), &k, &v).unwrap();
        assert_close(&full.narrow(1, 5, 1).unwrap(), &last, 1e-6, "decode");
    }
}
