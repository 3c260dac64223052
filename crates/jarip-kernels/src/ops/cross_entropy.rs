//! Soft-capped cross-entropy, fused: from raw logits `z: [N, V]` (fp32) and targets `[N]`
//! to per-token losses `[N]` in nats, never materialising the capped logits or the softmax.
//!
//! `c = cap·tanh(z/cap)`, `loss = logsumexp(c) − c[t]`.
//! Backward: `dz = g · (softmax(c) − onehot(t)) · (1 − (c/cap)²)`.
//!
//! `cap = 0` means no soft-cap (Llama- and Qwen-style heads): `c = z`, so
//! `loss = logsumexp(z) − z[t]` (with the row's maximum subtracted first: raw logits are not
//! bounded) and `dz = g · (softmax(z) − onehot(t))`.

use super::fastmath::{exp_inplace, tanh_inplace};
use super::{rows_per_task, slice_f32, with_f32, Kernels};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Mutex;

/// Per-token losses (nats, fp32) of soft-capped `logits: [N, V]` against `targets: [N]` (u32).
pub fn softcap_cross_entropy(logits: &Tensor, targets: &Tensor, cap: f32, kernels: Kernels) -> Result<Tensor> {
    if kernels.fused_for(logits) {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, FusedSoftcapCe { cap, lse: Mutex::new(Vec::new()) })
    } else {
        softcap_cross_entropy_composed(logits, targets, cap)
    }
}

/// `cap · tanh(z / cap)` in fp32; `cap = 0`: the logits unchanged (in fp32).
pub fn softcap(logits: &Tensor, cap: f32) -> Result<Tensor> {
    if cap == 0.0 {
        return logits.to_dtype(DType::F32);
    }
    let cap = cap as f64;
    (logits.to_dtype(DType::F32)? / cap)?.tanh()? * cap
}

pub fn softcap_cross_entropy_composed(logits: &Tensor, targets: &Tensor, cap: f32) -> Result<Tensor> {
    let c = softcap(logits, cap)?;
    let max = c.max_keepdim(D::Minus1)?.detach();
    let shifted = c.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (lse - picked)?.squeeze(1)
}

/// Loss and log-sum-exp of one row of raw logits `z` (`buf`: scratch of the row's length).
pub(crate) fn row_forward(z: &[f32], target: u32, cap: f32, buf: &mut [f32]) -> (f32, f32) {
    if cap == 0.0 {
        // c = z: logsumexp after subtracting the row's maximum.
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        buf.iter_mut().zip(z).for_each(|(b, &zj)| *b = zj - max);
        exp_inplace(buf);
        let lse = max + buf.iter().sum::<f32>().ln();
        return (lse - z[target as usize], lse);
    }
    // u = tanh(z/cap); c = cap·u. The capped logits lie in (−cap, cap), so exp(c − cap)
    // cannot overflow and needs no max pass.
    let inv_cap = 1.0 / cap;
    buf.iter_mut().zip(z).for_each(|(b, &zj)| *b = zj * inv_cap);
    tanh_inplace(buf);
    let c_target = cap * buf[target as usize];
    buf.iter_mut().for_each(|b| *b = cap * *b - cap);
    exp_inplace(buf);
    let sum: f32 = buf.iter().sum();
    let lse = cap + sum.ln();
    (lse - c_target, lse)
}

/// Turns a row of raw logits `z` into `dloss/dz` in place, for upstream gradient `g`.
pub(crate) fn row_backward(z: &mut [f32], target: u32, lse: f32, g: f32, cap: f32, e: &mut [f32]) {
    if cap == 0.0 {
        // dz = g·(softmax(z) − onehot(t)), softmax(z) = exp(z − lse).
        e.iter_mut().zip(z.iter()).for_each(|(e, &zj)| *e = zj - lse);
        exp_inplace(e);
        z.iter_mut().zip(e.iter()).for_each(|(d, &p)| *d = g * p);
        z[target as usize] -= g;
        return;
    }
    // z ← u = tanh(z/cap); e ← softmax(c) = exp(cap·u − lse)
    let inv_cap = 1.0 / cap;
    z.iter_mut().for_each(|d| *d *= inv_cap);
    tanh_inplace(z);
    e.iter_mut().zip(z.iter()).for_each(|(e, &u)| *e = cap * u - lse);
    exp_inplace(e);
    let tj = target as usize;
    let u_t = z[tj];
    z.iter_mut().zip(e.iter()).for_each(|(d, &p)| *d = g * p * (1.0 - *d * *d));
    z[tj] -= g * (1.0 - u_t * u_t);
}

struct FusedSoftcapCe {
    cap: f32,
    /// Log-sum-exp of each row, kept from the forward pass for the backward pass.
    lse: Mutex<Vec<f32>>,
}

impl CustomOp2 for FusedSoftcapCe {
    fn name(&self) -> &'static str {
        "fused-softcap-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = slice_f32(s1, l1)?;
        let (n, v) = l1.shape().dims2()?;
        let t = match l2.contiguous_offsets() {
            Some((a, b)) => &s2.as_slice::<u32>()?[a..b],
            None => candle_core::bail!("fused cross-entropy: targets must be contiguous"),
        };
        if t.len() != n {
            candle_core::bail!("fused cross-entropy: {} targets for {n} rows", t.len());
        }
        if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("fused cross-entropy: target {bad} outside the vocabulary of {v}");
        }
        let cap = self.cap;
        let mut loss = vec![0f32; n];
        let mut lse = vec![0f32; n];
        let rows = rows_per_task(v);
        loss.par_chunks_mut(rows).zip(lse.par_chunks_mut(rows)).enumerate().for_each(|(blk, (lb, sb))| {
            let mut buf = vec![0f32; v];
            for (r, (l, s)) in lb.iter_mut().zip(sb.iter_mut()).enumerate() {
                let i = blk * rows + r;
                (*l, *s) = row_forward(&z[i * v..(i + 1) * v], t[i], cap, &mut buf);
            }
        });
        *self.lse.lock().expect("lse lock") = lse;
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(&self, z: &Tensor, t: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = z.dims2()?;
        let lse = std::mem::take(&mut *self.lse.lock().expect("lse lock"));
        if lse.len() != n {
            candle_core::bail!("fused cross-entropy: backward without forward");
        }
        let t = t.to_vec1::<u32>()?;
        let g = g.to_vec1::<f32>()?;
        let cap = self.cap;
        let rows = rows_per_task(v);
        let dz = with_f32(z, |z| {
            let mut dz = vec![0f32; z.len()];
            dz.par_chunks_mut(v * rows).enumerate().for_each(|(blk, db)| {
                let mut e = vec![0f32; v];
                for (r, dr) in db.chunks_mut(v).enumerate() {
                    let i = blk * rows + r;
                    dr.copy_from_slice(&z[i * v..(i + 1) * v]);
                    row_backward(dr, t[i], lse[i], g[i], cap, &mut e);
                }
            });
            dz
        })?;
        Ok((Some(Tensor::from_vec(dz, (n, v), z.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_matches_composed_values_and_grads() {
        let (n, v) = (37, 300);
        let z = Var::from_tensor(&randn(&[n, v], 1, 30.0)).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let w = randn(&[n], 2, 1.0);
        // 15: a soft-capped head; 0: none, on logits large enough that exp(z) would overflow
        // without the row's maximum subtracted.
        for cap in [15.0, 0.0] {
            let run = |k: Kernels| {
                let l = softcap_cross_entropy(&z, &t, cap, k).unwrap();
                let g = (l.clone() * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (l, g.get(&z).unwrap().clone())
            };
            let (l0, d0) = run(Kernels::Composed);
            let (l1, d1) = run(Kernels::Fused);
            assert_close(&l0, &l1, 2e-5, &format!("loss, cap {cap}"));
            assert_close(&d0, &d1, 1e-6, &format!("dlogits, cap {cap}"));
            assert!(l1.to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()), "cap {cap}");
        }
        // Without a cap the loss is the plain cross-entropy of the logits.
        let plain = plain_ce(&z.as_tensor().clone(), &t);
        assert_close(&softcap_cross_entropy(&z, &t, 0.0, Kernels::Fused).unwrap(), &plain, 2e-5, "plain CE");
    }

    /// Cross-entropy written out: log Σ exp(z − max) + max − z[t].
    fn plain_ce(z: &Tensor, t: &Tensor) -> Tensor {
        let zs = z.to_vec2::<f32>().unwrap();
        let ts = t.to_vec1::<u32>().unwrap();
        let l: Vec<f32> = zs
            .iter()
            .zip(&ts)
            .map(|(row, &ti)| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                (s.ln() + m - row[ti as usize] as f64) as f32
            })
            .collect();
        Tensor::new(l.as_slice(), &Device::Cpu).unwrap()
    }
}
