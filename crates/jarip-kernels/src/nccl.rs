//! The NCCL all-reduce (sum) of a CUDA tensor as a candle op, for `--dist nccl`.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};
pub use cudarc::nccl::safe::{Comm, Id, ReduceOp};

/// `x` summed over the communicator's ranks by `ncclAllReduce` into a new buffer (f32, contiguous).
pub fn all_reduce_sum(comm: &Comm, x: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&AllReduce(comm))
}

struct AllReduce<'a>(&'a Comm);
// SAFETY: an `AllReduce` exists only inside `all_reduce_sum`, which candle applies
// synchronously on the calling thread; the communicator is never touched from another thread
// through it. candle's `CustomOp1` merely requires the bounds.
unsafe impl Send for AllReduce<'_> {}
// SAFETY: as for `Send` above: the value is never shared with another thread.
unsafe impl Sync for AllReduce<'_> {}

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums CUDA tensors only")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("NCCL all-reduce: not contiguous") };
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let mut dst = s.device.alloc_zeros::<f32>(b - a)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, s.device.clone()), l.shape().clone()))
    }
}
