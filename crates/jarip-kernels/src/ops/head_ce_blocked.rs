//! The output head and the soft-capped cross-entropy in blocks of rows, built from a
//! matrix product of the device (cuBLAS on CUDA) and one per-row kernel: the GPU's form of
//! [`super::head_ce`], whose CPU kernel does the products itself. Forward: per block,
//! `z = h·Wᵀ`, `loss = logsumexp(c) − c[t]` with `c = cap·tanh(z/cap)`; the logits are dropped.
//! Backward: per block, the logits again, `dz` from one kernel (see
//! [`super::cross_entropy`] for the formula), `dh = dz·W`, `dW += dzᵀ·h`. So the `[N, V]`
//! logits never exist at once and nothing of them is kept between the passes.
//!
//! The per-row kernels are `softcap_ce_fwd`/`softcap_ce_bwd` of `cuda/train.cu` on CUDA and
//! this crate's CPU row functions on the CPU, where the blocking itself is tested.

use super::cross_entropy::{row_backward, row_forward, softcap_cross_entropy_composed};
use candle_core::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

/// Rows per block: a block's logits are `HEAD_ROWS × V` values.
pub const HEAD_ROWS: usize = 4096;

/// Per-row losses `[N]` (fp32) of `h: [N, C]` through the head `w: [V, C]` against `targets: [N]`
/// (u32), in blocks of [`HEAD_ROWS`] rows: the forward keeps no logits, the backward recomputes
/// each block's logits (cuBLAS), turns them into `dlogits` in one kernel and multiplies back. On
/// the CPU the same blocking runs with the CPU's per-row cross-entropy (which is how it is tested
/// without a GPU).
pub fn head_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor, cap: f32) -> Result<Tensor> {
    head_cross_entropy_blocked(h, w, targets, cap, HEAD_ROWS)
}

#[doc(hidden)]
pub fn head_cross_entropy_blocked(h: &Tensor, w: &Tensor, targets: &Tensor, cap: f32, rows: usize) -> Result<Tensor> {
    let (n, c) = h.dims2()?;
    let (v, cw) = w.dims2()?;
    if c != cw || targets.dims() != [n] || rows == 0 {
        bail!("fused head: h {:?}, w {:?}, targets {:?} do not fit", h.dims(), w.dims(), targets.dims());
    }
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    let mx = targets.max(0)?.to_scalar::<u32>()?;
    if mx as usize >= v {
        bail!("fused head: target {mx} outside the vocabulary of {v}");
    }
    let (hd, wd) = (h.detach(), w.detach());
    let mut losses = Vec::new();
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let logits = hd.narrow(0, r0, m)?.matmul(&wd.t()?)?;
        losses.push(logits.apply_op2_no_bwd(&targets.narrow(0, r0, m)?, &CeRows { cap })?);
    }
    let losses = Tensor::cat(&losses, 0)?;
    h.apply_op2(w, HeadCeGrad { losses, targets, cap, rows })
}

/// Forward of [`head_cross_entropy`]: returns the losses computed beforehand; its backward
/// does the work.
struct HeadCeGrad {
    losses: Tensor,
    targets: Tensor,
    cap: f32,
    rows: usize,
}

impl CustomOp2 for HeadCeGrad {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let (s, l) = self.losses.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => bail!("fused head: losses on another device"),
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let (s, l) = self.losses.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => bail!("fused head: losses on another device"),
        }
    }
    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, dloss: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (h, w) = (h.detach(), w.detach());
        let n = h.dim(0)?;
        let dloss = dloss.to_dtype(DType::F32)?.contiguous()?;
        let mut dh = Vec::new();
        let mut dw: Option<Tensor> = None;
        for r0 in (0..n).step_by(self.rows) {
            let m = self.rows.min(n - r0);
            let hb = h.narrow(0, r0, m)?;
            let logits = hb.matmul(&w.t()?)?;
            let dl = logits.apply_op3_no_bwd(
                &self.targets.narrow(0, r0, m)?,
                &dloss.narrow(0, r0, m)?,
                &CeRowsBwd { cap: self.cap },
            )?;
            dh.push(dl.matmul(&w)?);
            let g = dl.t()?.matmul(&hb)?;
            dw = Some(match dw {
                None => g,
                Some(acc) => (acc + g)?,
            });
        }
        Ok((Some(Tensor::cat(&dh, 0)?), dw))
    }
}

/// Per-row soft-capped cross-entropy of a block of logits (kernel `softcap_ce_fwd`).
struct CeRows {
    cap: f32,
}

fn cpu_logits(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let v = match s {
        CpuStorage::F32(v) => v.clone(),
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        _ => bail!("fused cross-entropy: logits must be f32 or bf16"),
    };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("fused cross-entropy: logits not contiguous") };
    Ok(v[a..b].to_vec())
}

fn cpu_u32(s: &CpuStorage, l: &Layout) -> Result<Vec<u32>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("fused cross-entropy: targets not contiguous") };
    Ok(s.as_slice::<u32>()?[a..b].to_vec())
}

impl CustomOp2 for CeRows {
    fn name(&self) -> &'static str {
        "softcap-ce-rows"
    }
    fn cpu_fwd(&self, z: &CpuStorage, zl: &Layout, t: &CpuStorage, tl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, v) = zl.shape().dims2()?;
        let (z, t) = (cpu_logits(z, zl)?, cpu_u32(t, tl)?);
        let mut buf = vec![0f32; v];
        let loss: Vec<f32> = (0..r).map(|i| row_forward(&z[i * v..(i + 1) * v], t[i], self.cap, &mut buf).0).collect();
        Ok((CpuStorage::F32(loss), Shape::from(r)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, z: &CudaStorage, zl: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
        let r = zl.shape().dims2()?.0;
        Ok((crate::cuda::ce_rows(self.cap, (z, zl), (t, tl))?, Shape::from(r)))
    }
}

/// `dlogits` of a block from its logits, targets and the losses' gradient (`softcap_ce_bwd`).
struct CeRowsBwd {
    cap: f32,
}

impl CustomOp3 for CeRowsBwd {
    fn name(&self) -> &'static str {
        "softcap-ce-rows-bwd"
    }
    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        zl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (r, v) = zl.shape().dims2()?;
        let (zs, t) = (cpu_logits(z, zl)?, cpu_u32(t, tl)?);
        let Some((a, b)) = gl.contiguous_offsets() else { bail!("fused cross-entropy: gradient not contiguous") };
        let g = &g.as_slice::<f32>()?[a..b];
        let mut buf = vec![0f32; v];
        let mut dz = zs.clone();
        for i in 0..r {
            let row = &zs[i * v..(i + 1) * v];
            let (_, lse) = row_forward(row, t[i], self.cap, &mut buf);
            row_backward(&mut dz[i * v..(i + 1) * v], t[i], lse, g[i], self.cap, &mut buf);
        }
        let out = match z {
            CpuStorage::BF16(_) => CpuStorage::BF16(dz.iter().map(|&x| bf16::from_f32(x)).collect()),
            _ => CpuStorage::F32(dz),
        };
        Ok((out, zl.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        z: &CudaStorage,
        zl: &Layout,
        t: &CudaStorage,
        tl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((crate::cuda::ce_rows_bwd(self.cap, (z, zl), (t, tl), (g, gl))?, zl.shape().clone()))
    }
}

/// The composed reference of [`head_cross_entropy`] (logits in the compute dtype, loss in fp32).
pub fn head_cross_entropy_composed(h: &Tensor, w: &Tensor, targets: &Tensor, cap: f32) -> Result<Tensor> {
    softcap_cross_entropy_composed(&h.matmul(&w.t()?)?.to_dtype(DType::F32)?, targets, cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var};

    fn check(cap: f32) {
        let (n, c, v) = (11, 24, 37);
        let h = Var::from_tensor(&randn(&[n, c], 1, 1.0)).unwrap();
        let w = Var::from_tensor(&randn(&[v, c], 2, 0.5)).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let g = randn(&[n], 3, 1.0);
        // Blocks of 4 rows: three blocks, the last one short.
        let fused = head_cross_entropy_blocked(&h, &w, &t, cap, 4).unwrap();
        let composed = head_cross_entropy_composed(&h, &w, &t, cap).unwrap();
        assert_close(&fused, &composed, 1e-5, "losses");
        let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(gf.get(&h).unwrap(), gc.get(&h).unwrap(), 1e-5, "dh");
        assert_close(gf.get(&w).unwrap(), gc.get(&w).unwrap(), 1e-5, "dw");
    }

    #[test]
    fn blocked_head_matches_composed_with_and_without_cap() {
        check(15.0);
        check(0.0);
    }

    #[test]
    fn bad_targets_are_refused() {
        let h = randn(&[2, 4], 1, 1.0);
        let w = randn(&[5, 4], 2, 1.0);
        let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
        let e = head_cross_entropy(&h, &w, &t, 15.0).unwrap_err();
        assert!(e.to_string().contains("target 5 outside the vocabulary of 5"), "{e}");
    }
}
