//! The fused CUDA training kernels of `cuda/train.cu` as candle ops (feature `cuda`): RMSNorm,
//! RoPE and causal grouped-query attention (tensor cores for bf16 with head size 64 or 128, CUDA
//! cores otherwise) with hand-written backward passes, the soft-capped
//! cross-entropy fused with the head, and a multi-tensor AdamW. `--kernels fused` runs them on a
//! CUDA model (bf16 or f32 tensors); the math, the layouts and the reduction orders are stated in
//! `train.cu`'s comments, and every kernel sums in a fixed order, so runs repeat bit for bit.
//!
//! The PTX is built by `build.rs` and loaded once per device (`get_or_load_custom_func`). Each op
//! here checks shapes and contiguity before launching; `scripts/gpu-check` compares every op with
//! the composed candle ops on a GPU (`gpu_parity`), and `tests/python/test_cuda_emu.py` runs
//! the same CUDA source on CPU threads against numpy.

use crate::ops::attention::Dims;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use half::bf16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));
const MODULE: &str = "jarip_train_kernels";
/// Threads of the row-reduction kernels (`REDUCE_THREADS` in train.cu).
const REDUCE: u32 = 256;
/// CUDA-core attention: queries per block of the forward (`FWD_Q`), keys per tile (`KT`; also
/// the rows of a tensor-core block, `TC`).
const FWD_Q: usize = 64;
const KT: usize = 32;
/// Head sizes the attention kernels are instantiated for.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];

fn w<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| candle_core::Error::Msg(format!("CUDA: {e:?}")))
}

/// The element types the kernels are instantiated for, with their entry-point suffix.
trait Elem: CudaDType + cudarc_repr::Repr {
    const SUFFIX: &'static str;
}
impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Elem for bf16 {
    const SUFFIX: &'static str = "bf16";
}
mod cudarc_repr {
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
    /// What a kernel argument slice needs.
    pub trait Repr: DeviceRepr + ValidAsZeroBits + Copy + 'static {}
    impl<T: DeviceRepr + ValidAsZeroBits + Copy + 'static> Repr for T {}
}

/// Runs `$f::<T>(...)` for the tensor's element type.
macro_rules! by_dtype {
    ($dt:expr, $f:ident($($a:expr),*)) => {
        match $dt {
            DType::F32 => $f::<f32>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            d => bail!("fused CUDA ops take f32 or bf16 tensors, not {d:?}"),
        }
    };
}

/// Whether the fused CUDA ops can take `t` (a CUDA tensor of f32 or bf16).
pub fn supports(t: &Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

fn view<'a, T: CudaDType + cudarc_repr::Repr>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("fused CUDA op: input is not contiguous") };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// A device buffer for a kernel's output, not zeroed first (that would be one more pass over
/// memory for the norms and RoPE, which are bound by it): every kernel here writes each element
/// of its outputs, which `tests/python/test_cuda_emu.py` checks by running each one over buffers
/// pre-filled with two different byte patterns and requiring the same bytes back.
fn output<T: Elem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the buffer is only handed to a kernel that writes all of it (see above) before
    // anything reads it; it is a plain allocation on the device's stream, of n ≥ 1 elements.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

fn launch_cfg(grid: (usize, usize), block: u32) -> Result<LaunchConfig> {
    if grid.0 == 0 || grid.1 == 0 {
        bail!("fused CUDA op: empty launch");
    }
    if grid.0 > i32::MAX as usize || grid.1 > 65_535 {
        bail!("fused CUDA op: grid {grid:?} exceeds CUDA's limits");
    }
    Ok(LaunchConfig { grid_dim: (grid.0 as u32, grid.1 as u32, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 })
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("fused CUDA op: {what} = {n} exceeds i32")))
}

fn cpu_only() -> Result<(CpuStorage, Shape)> {
    bail!("this fused op runs on CUDA tensors only (the CPU has its own fused kernels)")
}

/// The `cpu_fwd` of a CUDA-only `CustomOp3`.
macro_rules! cuda_only_cpu_fwd3 {
    () => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            cpu_only()
        }
    };
}

// ---------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let w = w.to_dtype(x.dtype())?;
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

fn rows_cols(l: &Layout) -> Result<(usize, usize)> {
    let c = *l.dims().last().unwrap_or(&0);
    if c == 0 {
        bail!("fused RMSNorm: empty rows");
    }
    Ok((l.shape().elem_count() / c, c))
}

fn rms_fwd<T: Elem>(eps: f32, x: &CudaStorage, xl: &Layout, wt: &CudaStorage, wl: &Layout) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c) = rows_cols(xl)?;
    if wl.shape().elem_count() != c {
        bail!("fused RMSNorm: gain of {} for rows of {c}", wl.shape().elem_count());
    }
    let (xv, wv) = (view::<T>(x, xl)?, view::<T>(wt, wl)?);
    let y = output::<T>(dev, n * c)?;
    let f = dev.get_or_load_custom_func(&format!("rms_norm_fwd_{}", T::SUFFIX), MODULE, PTX)?;
    let mut b = f.builder();
    let ci = i32_of(c, "row length")?;
    b.arg(&xv).arg(&wv).arg(&y).arg(&ci).arg(&eps);
    // SAFETY: the kernel reads n·c values of x, c of w and writes n·c of y (one block per row,
    // columns c < C), all within the buffers sized above; argument types match train.cu.
    w(unsafe { b.launch(launch_cfg((n, 1), REDUCE)?) })?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cuda-rms-norm"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_only()
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, wt: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((by_dtype!(x.dtype(), rms_fwd(self.eps, x, xl, wt, wl))?, xl.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, wt: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n_c = x.elem_count();
        let flat = x.apply_op3_no_bwd(wt, &dy.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = flat.narrow(0, 0, n_c)?.reshape(x.shape())?;
        let dw = flat.narrow(0, n_c, wt.elem_count())?.reshape(wt.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `[dx (N·C) ‖ dw (C)]` in one buffer.
struct RmsNormBwd {
    eps: f32,
}

fn rms_bwd<T: Elem>(
    eps: f32,
    (x, xl): (&CudaStorage, &Layout),
    (wt, wl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c) = rows_cols(xl)?;
    let (xv, wv, dyv) = (view::<T>(x, xl)?, view::<T>(wt, wl)?, view::<T>(dy, dyl)?);
    if dyv.len() != n * c || wv.len() != c {
        bail!("fused RMSNorm backward: shapes disagree");
    }
    let mut out = output::<T>(dev, n * c + c)?;
    let rstd = output::<f32>(dev, n)?;
    let ci = i32_of(c, "row length")?;
    {
        let mut dx = out.slice_mut(0..n * c);
        let f = dev.get_or_load_custom_func(&format!("rms_norm_bwd_dx_{}", T::SUFFIX), MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&xv).arg(&wv).arg(&dyv).arg(&mut dx).arg(&rstd).arg(&ci).arg(&eps);
        // SAFETY: one block per row reads x, dy (n·c), w (c) and writes dx (n·c) and rstd (n).
        w(unsafe { b.launch(launch_cfg((n, 1), REDUCE)?) })?;
    }
    let chunks = n.clamp(1, 64);
    let per = n.div_ceil(chunks);
    let chunks = n.div_ceil(per);
    let partial = output::<f32>(dev, chunks * c)?;
    let col_blocks = c.div_ceil(REDUCE as usize);
    {
        let f = dev.get_or_load_custom_func(&format!("rms_norm_bwd_dw_partial_{}", T::SUFFIX), MODULE, PTX)?;
        let mut b = f.builder();
        let (ni, peri) = (i32_of(n, "rows")?, i32_of(per, "rows per chunk")?);
        b.arg(&xv).arg(&dyv).arg(&rstd).arg(&partial).arg(&ni).arg(&ci).arg(&peri);
        // SAFETY: grid (⌈c/256⌉, chunks): each thread reads column c of rows in its chunk
        // (< n) and writes partial[chunk·c + col], within chunks·c.
        w(unsafe { b.launch(launch_cfg((col_blocks, chunks), REDUCE)?) })?;
    }
    {
        let mut dw = out.slice_mut(n * c..n * c + c);
        let f = dev.get_or_load_custom_func(&format!("rms_norm_bwd_dw_sum_{}", T::SUFFIX), MODULE, PTX)?;
        let mut b = f.builder();
        let chunks_i = i32_of(chunks, "chunks")?;
        b.arg(&partial).arg(&mut dw).arg(&ci).arg(&chunks_i);
        // SAFETY: each thread sums column col < c of the chunks·c partials into dw[col].
        w(unsafe { b.launch(launch_cfg((col_blocks, 1), REDUCE)?) })?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "cuda-rms-norm-bwd"
    }
    cuda_only_cpu_fwd3!();
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        wt: &CudaStorage,
        wl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let n = xl.shape().elem_count() + wl.shape().elem_count();
        Ok((by_dtype!(x.dtype(), rms_bwd(self.eps, (x, xl), (wt, wl), (dy, dyl)))?, Shape::from(n)))
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

/// Rotates `x: [B, T, H, D]` (half-split pairs) at positions `offset..offset + T` with the fp32
/// tables `cos, sin: [Tmax, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims() != sin.dims() || cos.dim(1)? != d / 2 || cos.dim(0)? < offset + t {
        bail!("fused RoPE: tables {:?} do not cover {t} positions from {offset} with head size {d}", cos.dims());
    }
    let op =
        Rope { cos: cos.to_dtype(DType::F32)?.contiguous()?, sin: sin.to_dtype(DType::F32)?.contiguous()?, offset };
    x.contiguous()?.apply_op1(op)
}

#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    offset: usize,
}

fn table_view<'a>(t: &'a Tensor, guard: &'a Storage) -> Result<CudaView<'a, f32>> {
    match guard {
        Storage::Cuda(s) => view::<f32>(s, t.layout()),
        _ => bail!("fused CUDA op: table is not on the GPU"),
    }
}

fn rope_run<T: Elem>(op: &Rope, sign: f32, x: &CudaStorage, xl: &Layout) -> Result<CudaStorage> {
    let dev = &x.device;
    let (_, t, h, d) = xl.shape().dims4()?;
    let n = xl.shape().elem_count();
    let xv = view::<T>(x, xl)?;
    let y = output::<T>(dev, n)?;
    let (cs, _) = op.cos.storage_and_layout();
    let (ss, _) = op.sin.storage_and_layout();
    let (cv, sv) = (table_view(&op.cos, &cs)?, table_view(&op.sin, &ss)?);
    let pairs = (n / 2) as u64;
    let f = dev.get_or_load_custom_func(&format!("rope_{}", T::SUFFIX), MODULE, PTX)?;
    let mut b = f.builder();
    let (ti, hi, di, oi) = (i32_of(t, "T")?, i32_of(h, "H")?, i32_of(d, "D")?, i32_of(op.offset, "offset")?);
    b.arg(&xv).arg(&y).arg(&cv).arg(&sv).arg(&ti).arg(&hi).arg(&di).arg(&oi).arg(&sign).arg(&pairs);
    // SAFETY: one thread per (row, head, pair) < pairs = n/2 reads and writes two elements of its
    // own head row; positions offset + t < Tmax were checked in `rope`, so table reads are in range.
    w(unsafe { b.launch(launch_cfg(((n / 2).div_ceil(REDUCE as usize), 1), REDUCE)?) })?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "cuda-rope"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_only()
    }
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((by_dtype!(x.dtype(), rope_run(self, 1.0, x, l))?, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&RopeInverse(self.clone()))?))
    }
}

/// The transpose rotation (the backward of [`Rope`]).
struct RopeInverse(Rope);

impl CustomOp1 for RopeInverse {
    fn name(&self) -> &'static str {
        "cuda-rope-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_only()
    }
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((by_dtype!(x.dtype(), rope_run(&self.0, -1.0, x, l))?, l.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention
// ---------------------------------------------------------------------------------------------

/// Whether the fused attention takes these shapes (`q: [B, T, H, D]`, `k, v: [B, T, Hkv, D]`).
pub fn attention_supported(q: &Tensor, k: &Tensor) -> bool {
    let (Ok((_, t, h, d)), Ok((_, tk, hkv, _))) = (q.dims4(), k.dims4()) else { return false };
    t == tk && hkv > 0 && h % hkv == 0 && HEAD_DIMS.contains(&d) && supports(q)
}

/// `softmax(q·kᵀ/√D + causal mask)·v` per head, `[B, T, H, D]`, without the T×T matrix.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if !attention_supported(q, k) {
        bail!("fused CUDA attention: shapes {:?}/{:?} or head size not supported", q.dims(), k.dims());
    }
    let op = Attention { lse: Arc::new(Mutex::new(None)) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The rows' log-sum-exp `[B, H, T]`, kept by the forward for the backward.
type Lse = Arc<Mutex<Option<CudaSlice<f32>>>>;

struct Attention {
    lse: Lse,
}

/// Whether bf16 attention with head size 64 or 128 runs on tensor cores (the default) rather than
/// the CUDA-core kernels (kept for f32, head size 32, and for comparison: `gpu-check parity`).
static TENSOR_CORES: AtomicBool = AtomicBool::new(true);

/// Chooses tensor-core (true, the default) or CUDA-core attention kernels for bf16.
pub fn use_tensor_cores(on: bool) {
    TENSOR_CORES.store(on, Ordering::Relaxed);
}

/// The attention kernels for one dtype and head size, with their launch geometry.
struct AttnKernels {
    tc: bool,
    fwd_rows: usize,
    fwd_threads: u32,
    bwd_threads: u32,
}

impl AttnKernels {
    fn for_<T: Elem>(d: usize) -> Self {
        let tc = T::SUFFIX == "bf16" && (d == 64 || d == 128) && TENSOR_CORES.load(Ordering::Relaxed);
        // Tensor cores: blocks of two warps over 32 rows. CUDA cores: one thread per row.
        if tc {
            Self { tc, fwd_rows: 32, fwd_threads: 64, bwd_threads: 64 }
        } else {
            Self { tc, fwd_rows: FWD_Q, fwd_threads: FWD_Q as u32, bwd_threads: KT as u32 }
        }
    }

    fn name(&self, kernel: &str, dtype: &str, d: usize) -> String {
        format!("{kernel}{}_{dtype}_d{d}", if self.tc { "_tc" } else { "" })
    }
}

/// The attention shapes, checked for the CUDA kernels (a head size they are built for).
fn dims(ql: &Layout, kl: &Layout) -> Result<Dims> {
    let s = Dims::of(ql.shape(), kl.shape())?;
    if !HEAD_DIMS.contains(&s.d) {
        bail!("fused CUDA attention: head size {} (the kernels take {HEAD_DIMS:?})", s.d);
    }
    Ok(s)
}

/// `T`, `H`, `Hkv` as the kernels' `int`s.
fn ints(s: &Dims) -> Result<(i32, i32, i32)> {
    Ok((i32_of(s.t, "T")?, i32_of(s.h, "H")?, i32_of(s.hkv, "Hkv")?))
}

fn attn_fwd<T: Elem>(
    lse_out: &Lse,
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &q.device;
    let s = dims(ql, kl)?;
    if vl.dims() != kl.dims() {
        bail!("fused CUDA attention: v {:?} differs from k {:?}", vl.dims(), kl.dims());
    }
    let (qv, kv, vv) = (view::<T>(q, ql)?, view::<T>(k, kl)?, view::<T>(v, vl)?);
    let o = output::<T>(dev, s.b * s.t * s.h * s.d)?;
    let lse = output::<f32>(dev, s.b * s.h * s.t)?;
    let kern = AttnKernels::for_::<T>(s.d);
    let f = dev.get_or_load_custom_func(&kern.name("attn_fwd", T::SUFFIX, s.d), MODULE, PTX)?;
    let mut b = f.builder();
    let ((ti, hi, hkvi), scale) = (ints(&s)?, s.scale());
    b.arg(&qv).arg(&kv).arg(&vv).arg(&o).arg(&lse).arg(&ti).arg(&hi).arg(&hkvi).arg(&scale);
    // SAFETY: grid (⌈T/rows⌉, B·H): the block of (b, h) reads q rows (b, i < T, h) and k/v rows
    // (b, j < T, h/(H/Hkv)), all inside the [B,T,H,D] and [B,T,Hkv,D] buffers checked by
    // `Dims::of`, and writes o rows i < T and lse[(b·H + h)·T + i] < B·H·T.
    w(unsafe { b.launch(launch_cfg((s.t.div_ceil(kern.fwd_rows), s.b * s.h), kern.fwd_threads)?) })?;
    *lse_out.lock().expect("lse lock") = Some(lse);
    Ok(CudaStorage::wrap_cuda_slice(o, dev.clone()))
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "cuda-flash-attention"
    }
    cuda_only_cpu_fwd3!();
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((by_dtype!(q.dtype(), attn_fwd(&self.lse, (q, ql), (k, kl), (v, vl)))?, ql.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.lse.lock().expect("lse lock").is_none() {
            bail!("fused CUDA attention: backward before forward");
        }
        let op = AttentionBwd { lse: self.lse.clone(), o: o.contiguous()?, dout: dout.contiguous()? };
        let flat = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = flat.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = flat.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = flat.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `[dq ‖ dk ‖ dv]` in one buffer.
struct AttentionBwd {
    lse: Lse,
    o: Tensor,
    dout: Tensor,
}

fn attn_bwd<T: Elem>(
    op: &AttentionBwd,
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &q.device;
    let s = dims(ql, kl)?;
    let (nq, nk) = (s.b * s.t * s.h * s.d, s.b * s.t * s.hkv * s.d);
    let (qv, kv, vv) = (view::<T>(q, ql)?, view::<T>(k, kl)?, view::<T>(v, vl)?);
    let (os, _) = op.o.storage_and_layout();
    let (ds, _) = op.dout.storage_and_layout();
    let (Storage::Cuda(os), Storage::Cuda(ds)) = (&*os, &*ds) else { bail!("fused CUDA attention: not on the GPU") };
    let (ov, dov) = (view::<T>(os, op.o.layout())?, view::<T>(ds, op.dout.layout())?);
    if ov.len() != nq || dov.len() != nq || vv.len() != nk {
        bail!("fused CUDA attention backward: shapes disagree");
    }
    let guard = op.lse.lock().expect("lse lock");
    let Some(lse) = guard.as_ref() else { bail!("fused CUDA attention: backward before forward") };
    let mut out = output::<T>(dev, nq + 2 * nk)?;
    let delta = output::<f32>(dev, s.b * s.h * s.t)?;
    let kern = AttnKernels::for_::<T>(s.d);
    let ((ti, hi, hkvi), scale) = (ints(&s)?, s.scale());
    let (bi, di) = (i32_of(s.b, "B")?, i32_of(s.d, "D")?);
    {
        let f = dev.get_or_load_custom_func(&format!("attn_bwd_delta_{}", T::SUFFIX), MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&ov).arg(&dov).arg(&delta).arg(&bi).arg(&ti).arg(&hi).arg(&di);
        // SAFETY: one thread per (b, h, i) < B·H·T reads its o and dO rows (within nq) and writes
        // delta[idx].
        w(unsafe { b.launch(launch_cfg(((s.b * s.h * s.t).div_ceil(REDUCE as usize), 1), REDUCE)?) })?;
    }
    {
        let (_, mut rest) = out.split_at_mut(nq);
        let (mut dk, mut dv) = rest.split_at_mut(nk);
        let f = dev.get_or_load_custom_func(&kern.name("attn_bwd_dkdv", T::SUFFIX, s.d), MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&qv).arg(&kv).arg(&vv).arg(&dov).arg(lse).arg(&delta).arg(&mut dk).arg(&mut dv);
        b.arg(&ti).arg(&hi).arg(&hkvi).arg(&scale);
        // SAFETY: grid (⌈T/32⌉, B·Hkv): the block of 32 keys of (b, g) reads q/dO rows of the
        // group's heads at positions < T, lse/delta of those rows, and writes its own dk/dv rows
        // (b, j < T, g) inside the nk-element slices.
        w(unsafe { b.launch(launch_cfg((s.t.div_ceil(KT), s.b * s.hkv), kern.bwd_threads)?) })?;
    }
    {
        let mut dq = out.slice_mut(0..nq);
        let f = dev.get_or_load_custom_func(&kern.name("attn_bwd_dq", T::SUFFIX, s.d), MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&qv).arg(&kv).arg(&vv).arg(&dov).arg(lse).arg(&delta).arg(&mut dq);
        b.arg(&ti).arg(&hi).arg(&hkvi).arg(&scale);
        // SAFETY: grid (⌈T/32⌉, B·H): the block of 32 queries reads k/v rows j < T and writes its
        // own dq rows (b, i < T, h) inside the nq-element slice.
        w(unsafe { b.launch(launch_cfg((s.t.div_ceil(KT), s.b * s.h), kern.bwd_threads)?) })?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "cuda-flash-attention-bwd"
    }
    cuda_only_cpu_fwd3!();
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let n = ql.shape().elem_count() + 2 * kl.shape().elem_count();
        Ok((by_dtype!(q.dtype(), attn_bwd(self, (q, ql), (k, kl), (v, vl)))?, Shape::from(n)))
    }
}

// ---------------------------------------------------------------------------------------------
// Head + soft-capped cross-entropy
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Soft-capped cross-entropy rows (the head's blocks: crate::ops::head_ce_blocked)
// ---------------------------------------------------------------------------------------------

/// Per-row soft-capped cross-entropy losses `[R]` of a block of logits `[R, V]` (kernel
/// `softcap_ce_fwd`), for [`crate::ops::head_ce_blocked`].
pub fn ce_rows(cap: f32, z: (&CudaStorage, &Layout), t: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    by_dtype!(z.0.dtype(), ce_fwd(cap, z, t))
}

/// `dlogits` of a block from its logits, targets and the losses' gradient (`softcap_ce_bwd`).
pub fn ce_rows_bwd(
    cap: f32,
    z: (&CudaStorage, &Layout),
    t: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    by_dtype!(z.0.dtype(), ce_bwd(cap, z, t, g))
}

fn ce_fwd<T: Elem>(
    cap: f32,
    (z, zl): (&CudaStorage, &Layout),
    (t, tl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &z.device;
    let (r, v) = zl.shape().dims2()?;
    let (zv, tv) = (view::<T>(z, zl)?, view::<u32>(t, tl)?);
    if tv.len() != r {
        bail!("fused cross-entropy: {} targets for {r} rows", tv.len());
    }
    let loss = output::<f32>(dev, r)?;
    let f = dev.get_or_load_custom_func(&format!("softcap_ce_fwd_{}", T::SUFFIX), MODULE, PTX)?;
    let mut b = f.builder();
    let vi = i32_of(v, "V")?;
    b.arg(&zv).arg(&tv).arg(&loss).arg(&vi).arg(&cap);
    // SAFETY: one block per row < r reads that row's v logits and its target (checked < V by
    // `head_cross_entropy_blocked`), and writes loss[row].
    w(unsafe { b.launch(launch_cfg((r, 1), REDUCE)?) })?;
    Ok(CudaStorage::wrap_cuda_slice(loss, dev.clone()))
}

fn ce_bwd<T: Elem>(
    cap: f32,
    (z, zl): (&CudaStorage, &Layout),
    (t, tl): (&CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &z.device;
    let (r, v) = zl.shape().dims2()?;
    let (zv, tv, gv) = (view::<T>(z, zl)?, view::<u32>(t, tl)?, view::<f32>(g, gl)?);
    if tv.len() != r || gv.len() != r {
        bail!("fused cross-entropy backward: {} targets, {} gradients for {r} rows", tv.len(), gv.len());
    }
    let dz = output::<T>(dev, r * v)?;
    let f = dev.get_or_load_custom_func(&format!("softcap_ce_bwd_{}", T::SUFFIX), MODULE, PTX)?;
    let mut b = f.builder();
    let vi = i32_of(v, "V")?;
    b.arg(&zv).arg(&tv).arg(&gv).arg(&dz).arg(&vi).arg(&cap);
    // SAFETY: one block per row < r reads that row's logits, target and gradient and writes the
    // row of dz (r·v elements).
    w(unsafe { b.launch(launch_cfg((r, 1), REDUCE)?) })?;
    Ok(CudaStorage::wrap_cuda_slice(dz, dev.clone()))
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor AdamW
// ---------------------------------------------------------------------------------------------

/// One AdamW step's scalars (see `adamw_multi` in train.cu for the update).
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub bc1: f32,
    pub bc2: f32,
    /// Applied to every gradient first (averaging, clipping).
    pub grad_scale: f32,
}

/// One tensor's part in [`adamw_multi`]: the parameter, its gradient, both moments (all fp32 CUDA
/// tensors of one shape, on one device) and its weight decay.
pub struct AdamWItem<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub weight_decay: f32,
}

/// Updates every parameter and both moments **in place** with one kernel launch.
pub fn adamw_multi(items: &[AdamWItem], s: &AdamWScalars) -> Result<()> {
    let Some(first) = items.first() else { return Ok(()) };
    let candle_core::Device::Cuda(dev) = first.param.device() else { bail!("multi-tensor AdamW: not on CUDA") };
    let stream = dev.cuda_stream();
    let grads: Vec<Tensor> =
        items.iter().map(|it| it.grad.to_dtype(DType::F32)?.contiguous()).collect::<Result<_>>()?;
    let mut offsets = vec![0i64];
    let mut wd = Vec::with_capacity(items.len());
    for (it, g) in items.iter().zip(&grads) {
        for (t, what) in [(it.param, "parameter"), (g, "gradient"), (it.m, "first moment"), (it.v, "second moment")] {
            if t.dtype() != DType::F32
                || !t.is_contiguous()
                || t.dims() != it.param.dims()
                || !t.device().same_device(it.param.device())
            {
                bail!(
                    "multi-tensor AdamW: {what} {:?} is not a contiguous f32 CUDA tensor of the parameter's shape",
                    t.dims()
                );
            }
        }
        offsets.push(offsets.last().copied().unwrap_or(0) + it.param.elem_count() as i64);
        wd.push(it.weight_decay);
    }
    // Device addresses of p, g, m, v per tensor. The storage guards stay alive (and the
    // tensors with them) until the launch has been queued on the stream all of them use.
    let tensors: Vec<[&Tensor; 4]> = items.iter().zip(&grads).map(|(it, g)| [it.param, g, it.m, it.v]).collect();
    let guards: Vec<_> = tensors.iter().flat_map(|ts| ts.iter().map(|t| (t.storage_and_layout(), *t))).collect();
    let mut ptrs = Vec::with_capacity(guards.len());
    let mut syncs = Vec::with_capacity(guards.len());
    for ((storage, layout), _t) in &guards {
        let Storage::Cuda(cs) = &**storage else { bail!("multi-tensor AdamW: not on CUDA") };
        let slice = cs.as_cuda_slice::<f32>()?;
        let (ptr, sync) = slice.device_ptr(&stream);
        ptrs.push(ptr + (layout.start_offset() * 4) as u64);
        syncs.push(sync);
    }
    let ptrs_d = w(stream.clone_htod(&ptrs))?;
    let offs_d = w(stream.clone_htod(&offsets))?;
    let wd_d = w(stream.clone_htod(&wd))?;
    let f = dev.get_or_load_custom_func("adamw_multi", MODULE, PTX)?;
    let mut b = f.builder();
    let nt = i32_of(items.len(), "tensors")?;
    b.arg(&ptrs_d).arg(&offs_d).arg(&wd_d).arg(&nt);
    b.arg(&s.lr).arg(&s.beta1).arg(&s.beta2).arg(&s.eps).arg(&s.bc1).arg(&s.bc2).arg(&s.grad_scale);
    let total = *offsets.last().unwrap_or(&0) as usize;
    let blocks = total.div_ceil(REDUCE as usize).clamp(1, 4096);
    // SAFETY: every address is the start of a live, contiguous f32 CUDA buffer of the parameter's
    // element count (checked above; the guards keep the storages alive and the launch is queued
    // on the stream every candle op on this device uses, so it is ordered after the ops that
    // wrote them and before any that read them). The kernel touches element i < size of tensor
    // t only, found from `offsets`; p, m, v are written in place, which is the update's purpose
    // (the parameter is a `Var`'s storage, the moments belong to the optimizer alone).
    w(unsafe { b.launch(launch_cfg((blocks, 1), REDUCE)?) })?;
    drop(syncs);
    drop(guards);
    Ok(())
}
