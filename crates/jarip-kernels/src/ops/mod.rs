//! The model's building blocks, each in two forms:
//!
//! - **composed**: plain candle tensor ops, whose backward candle derives. Runs on every
//!   device and dtype, and is the reference the fused kernels are tested against.
//! - **fused** (CPU, fp32): one custom op per block with a hand-written, multithreaded
//!   forward *and* backward (candle's own fused `rms_norm`/`softmax_last_dim`/`rope` have no
//!   backward and would silently stop gradients).
//!
//! [`Kernels`] picks one. On a CUDA tensor (f32 or bf16), [`Kernels::Fused`] runs the CUDA
//! kernels of [`crate::cuda`] (feature `cuda`) for RMSNorm, RoPE, attention and the head's
//! cross-entropy, and composed ops (cuBLAS) for the rest; wherever no fused kernel takes the
//! input it falls back to composed, so the switch is always safe.

pub mod attention;
pub mod cross_entropy;
pub mod fastmath;
pub mod head_ce;
pub mod head_ce_blocked;
pub mod linear;
pub mod matmul_bf16;
pub mod relu2;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use serde::{Deserialize, Serialize};

/// Which implementation of the building blocks the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// Candle ops only (any device).
    Composed,
    /// Hand-written CPU kernels with explicit backward where the input allows, else composed.
    #[default]
    Fused,
}

impl Kernels {
    /// Whether the fused kernel may run on `t`.
    pub(crate) fn fused_for(self, t: &Tensor) -> bool {
        self == Kernels::Fused && t.device().is_cpu() && t.dtype() == DType::F32
    }

    /// Whether the fused CUDA kernels may run on `t` (a CUDA f32/bf16 tensor, feature `cuda`).
    pub(crate) fn cuda_for(self, t: &Tensor) -> bool {
        self == Kernels::Fused && t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
    }
}

/// Contiguous f32 view of a custom op's CPU input.
pub fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op needs a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (used by backward passes).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok(f(slice_f32(c, l)?)),
        _ => candle_core::bail!("fused op: tensor is not on the CPU"),
    }
}

/// A raw pointer that worker threads may share when each writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: a `SendPtr` only carries an address between threads; every dereference is in an
// `unsafe` block whose comment shows that the threads write disjoint regions of a buffer that
// outlives them.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: sharing the address itself is harmless; the writes are disjoint.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A buffer of `n` values for a kernel's output, **every element of which the caller writes
/// before anything reads it**, allocated without zeroing: a memset of every output and gradient
/// was ~6 % of a bf16 training step (the pages are recycled, not fresh from the kernel). In this
/// crate's own tests the buffer is filled with NaN instead, so an element a kernel forgot to
/// write fails the fused-against-composed comparisons.
pub(crate) fn output_buffer(n: usize) -> Vec<f32> {
    output_buffer_of(n, f32::NAN)
}

/// [`output_buffer`] of any plain value type, filled with `poison` in this crate's tests.
// Deliberately uninitialised (as candle's CPU kernels allocate theirs): nothing reads an element
// before a kernel writes it, which this crate's tests check through the poison.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer_of<T: Copy>(n: usize, poison: T) -> Vec<T> {
    if cfg!(test) {
        return vec![poison; n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is `n`. The values are not initialised here: every caller writes all
    // `n` of them before any is read (stated at each call site), as candle's own CPU kernels do
    // with their outputs; the element types used (f32, u32) have no invalid bit patterns.
    unsafe { v.set_len(n) };
    v
}

/// Rows per rayon task for row-wise kernels: enough work per task to amortise scheduling.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// Helpers for the kernels' tests (and the optimizer's, in jarip-train).
#[doc(hidden)]
pub mod testing {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    pub fn randn(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let d = max_abs_diff(a, b);
        assert!(d <= tol, "{what}: max |diff| {d} > {tol}");
    }
}
