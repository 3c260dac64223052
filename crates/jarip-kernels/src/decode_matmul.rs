//! The matrix kernel of CPU decoding: `out = x · wᵀ` for a few activation rows `x` and a weight
//! matrix `w` stored row by row (`[n × k]`, the layout of every weight in the model).
//!
//! Decoding is memory-bound at batch 1 and becomes compute-bound as the batch grows, so the kernel
//! is register-blocked: `R` activation rows × `G` weight rows of accumulators, each weight row read
//! from memory once per step whatever the batch. Every output element is reduced in one fixed
//! order — lane `l` of an 8-lane accumulator sums `x[i]·w[i]` for `i ≡ l (mod 8)` in increasing
//! `i`, then the lanes in a fixed tree, then the tail — whatever `R`, `G`, the batch size or the
//! instruction set, so a sequence's logits are bit-identical whichever sequences share its batch.
//!
//! Weights come as f32 rows, as bf16 rows (widened exactly to f32 as they are read: the f32
//! arithmetic and order on the rounded values, half the bytes), or as [`Q8Matrix`] (llama.cpp's Q8_0: 32 values of 8 bits sharing one
//! scale, 3.6× fewer bytes to stream). With Q8_0 weights the activations are quantized the same
//! way per row ([`Q8Activations`]) and each block's dot product is an exact integer sum, scaled
//! once per block — llama.cpp's `q8_0 × q8_0` scheme; lane `l` takes bytes `4l..4l + 4` of each
//! block, in the same fixed order for every batch and instruction set.

use crate::ops::SendPtr;
use crate::quant::{BlockQ8_0, QK8_0};
use rayon::prelude::*;

/// Alignment of weight matrices and quantized activations: a cache line, so that with rows whose
/// byte length is a multiple of 64 (every model width jarip builds) no vector load straddles two
/// lines (a split load costs two; unaligned buffers cost prompt processing ~12 %).
pub const ALIGN: usize = 64;

pub use aligned_vec::{AVec, RuntimeAlign};

/// A buffer for `n` weights a decode step streams whole: aligned to 2 MiB when it spans at
/// least that (else to [`ALIGN`]) and advised into huge pages while still untouched
/// ([`crate::alloc::advise_huge_pages`]). Measured on batch-1 f32 decode of the 97.5M model:
/// 72.5 → 76.6 tok/s (means of 5 alternating runs; 314 of its 365 MB then in huge pages).
fn weight_buffer<T: Copy>(n: usize) -> AVec<T, RuntimeAlign> {
    const HUGE: usize = 2 << 20;
    let bytes = n * std::mem::size_of::<T>();
    let v: AVec<T, RuntimeAlign> = AVec::with_capacity(if bytes >= HUGE { HUGE } else { ALIGN }, n);
    crate::alloc::advise_huge_pages(v.as_ptr() as *const u8, bytes);
    v
}

thread_local! {
    /// A block of bf16 weight rows widened to f32 (per thread, reused).
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst = src` widened from bf16 bits to f32 (exact: the bits shifted up 16).
fn widen_bf16(src: &[u16], dst: &mut Vec<f32>) {
    dst.clear();
    dst.extend(src.iter().map(|&b| f32::from_bits((b as u32) << 16)));
}

/// One activation row against bf16 weight rows (batch-1 decode, bound by reading the weights):
/// each 8 weights widened in registers as they are loaded, then the 256-bit kernels' arithmetic —
/// lane `l` sums `x[i]·w[i]` for `i ≡ l (mod 8)` by fused multiply-adds in increasing `i`, the
/// lanes in [`reduce`]'s tree, the tail by `mul_add` — so the bits are those of the f32 kernels on
/// the widened weights (tested), with half the bytes read.
mod bf16_row {
    /// Whether this CPU runs the vector path (AVX2 and FMA, as the f32 kernels it matches).
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `part[j] = x · w[j]` for `nb` rows of `k` bf16 weights.
    pub(super) fn run(x: &[f32], w: &[u16], nb: usize, k: usize, part: &mut [f32]) {
        assert!(x.len() >= k && w.len() >= nb * k && part.len() >= nb && available(), "bf16_row: sizes or CPU");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present (asserted); the sizes were checked above.
        unsafe {
            kernel(x, w, nb, k, part)
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` must hold `k` values, `w` `nb·k`, `part` `nb`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel(x: &[f32], w: &[u16], nb: usize, k: usize, part: &mut [f32]) {
        let mut j = 0;
        while j < nb {
            // SAFETY: rows j..j + G lie inside `w` (G ≤ nb − j); the caller's conditions hold.
            unsafe {
                match (nb - j).min(4) {
                    4 => tile::<4>(x, w, j, nb, k, part),
                    3 => tile::<3>(x, w, j, nb, k, part),
                    2 => tile::<2>(x, w, j, nb, k, part),
                    _ => tile::<1>(x, w, j, nb, k, part),
                }
            }
            j += (nb - j).min(4);
        }
    }

    /// Rows `j0..j0 + G`, the next tile's rows prefetched as the f32 kernels do.
    ///
    /// # Safety
    /// As for `kernel`, with `j0 + G ≤ nb`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const G: usize>(x: &[f32], w: &[u16], j0: usize, nb: usize, k: usize, part: &mut [f32]) {
        use super::{reduce, LANES};
        use std::arch::x86_64::*;
        let body = k - k % LANES;
        let next = if j0 + 2 * G <= nb { j0 + G } else { j0 };
        // SAFETY: rows j0..j0 + G and next..next + G lie inside `w`; every load reads 8 values
        // at column c < body ≤ k of a row or of `x`.
        unsafe {
            let rows: [*const u16; G] = std::array::from_fn(|g| w.as_ptr().add((j0 + g) * k));
            let ahead: [*const u16; G] = std::array::from_fn(|g| w.as_ptr().add((next + g) * k));
            let mut acc = [_mm256_setzero_ps(); G];
            let mut c = 0;
            while c < body {
                let xv = _mm256_loadu_ps(x.as_ptr().add(c));
                for g in 0..G {
                    let h = _mm_loadu_si128(rows[g].add(c) as *const __m128i);
                    let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
                    if c % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead[g].add(c) as *const i8);
                    }
                    acc[g] = _mm256_fmadd_ps(xv, wv, acc[g]);
                }
                c += LANES;
            }
            for (g, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let mut s = reduce(&lanes);
                for (t, &xt) in x.iter().enumerate().take(k).skip(body) {
                    s = xt.mul_add(f32::from_bits((*rows[g].add(t) as u32) << 16), s);
                }
                part[j0 + g] = s;
            }
        }
    }
}

/// A copy of `src` in a [`weight_buffer`].
fn huge_page_copy<T: Copy>(src: &[T]) -> AVec<T, RuntimeAlign> {
    let mut v = weight_buffer(src.len());
    v.extend_from_slice(src);
    v
}

/// `n` zeros, [`ALIGN`]ed: activation buffers the kernel reads.
pub fn aligned_zeros(n: usize) -> AVec<f32> {
    let mut v = AVec::with_capacity(ALIGN, n);
    v.resize(n, 0.0);
    v
}

/// A weight matrix `[n × k]` as the decode kernel reads it.
pub enum Mat {
    F32 {
        w: AVec<f32, RuntimeAlign>,
        n: usize,
        k: usize,
    },
    /// bf16 weights (the bits of `half::bf16`): half the bytes of f32 per step; each block of
    /// rows is widened to f32 (exactly) and multiplied by the f32 kernel, so the result is the f32
    /// path's on the rounded weights, bit for bit, in the same stated order.
    Bf16 {
        w: AVec<u16, RuntimeAlign>,
        n: usize,
        k: usize,
    },
    Q8(Q8Matrix),
}

impl Mat {
    pub fn new(w: Vec<f32>, n: usize, k: usize, quant: WeightFormat) -> Self {
        match quant {
            WeightFormat::Q8_0 if k.is_multiple_of(crate::quant::QK8_0) => Mat::Q8(Q8Matrix::quantize(&w, n, k)),
            WeightFormat::Bf16 => {
                let mut b = weight_buffer(w.len());
                b.extend_from_slice(&w.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect::<Vec<u16>>());
                Mat::Bf16 { w: b, n, k }
            }
            _ => Mat::F32 { w: huge_page_copy(&w), n, k },
        }
    }

    /// `out[m × n] = x[m × k] · wᵀ`.
    pub fn apply(&self, x: &[f32], m: usize, out: &mut [f32]) {
        match self {
            Mat::F32 { w, n, k } => matmul_wt(x, m, w, *n, *k, out),
            Mat::Bf16 { .. } => Mat::apply_all(&[self], x, m, &mut [out]),
            Mat::Q8(q) => matmul_q8(x, m, q, out),
        }
    }

    /// Rows and columns `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Mat::F32 { n, k, .. } | Mat::Bf16 { n, k, .. } => (*n, *k),
            Mat::Q8(q) => q.shape(),
        }
    }

    /// Several matrices over the same activation rows in one parallel pass:
    /// `outs[i][m × n_i] = x[m × k] · w_iᵀ` (the q/k/v projections, the gate and up of an MLP).
    /// The same bits as [`Mat::apply`] on each; one dispatch instead of one per matrix (at batch
    /// 1 a token's matrices take tens of microseconds each, and waking the pool costs several), and
    /// Q8_0 activations quantized once.
    pub fn apply_all(mats: &[&Mat], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
        assert_eq!(mats.len(), outs.len(), "apply_all: one output per matrix");
        let Some(k) = mats.first().map(|w| w.shape().1) else { return };
        let ns: Vec<usize> = mats.iter().map(|w| w.shape().0).collect();
        assert!(
            mats.iter().all(|w| w.shape().1 == k)
                && fits(x.len(), m, k)
                && outs.iter().zip(&ns).all(|(o, &n)| fits(o.len(), m, n)),
            "apply_all: buffer sizes"
        );
        let kernel = Kernel::detect();
        let xq = mats.iter().any(|w| matches!(w, Mat::Q8(_))).then(|| Q8Activations::quantize(&x[..m * k], m, k));
        by_blocks(m, &ns, outs, |i, lo, hi, part| match mats[i] {
            Mat::F32 { w, .. } => kernel.run(x, m, &w[lo * k..hi * k], hi - lo, k, part),
            Mat::Bf16 { w, .. } if m == 1 && bf16_row::available() => {
                bf16_row::run(&x[..k], &w[lo * k..hi * k], hi - lo, k, part)
            }
            Mat::Bf16 { w, .. } => WIDE.with_borrow_mut(|wide| {
                widen_bf16(&w[lo * k..hi * k], wide);
                kernel.run(x, m, wide, hi - lo, k, part)
            }),
            Mat::Q8(q) => kernel.run_q8(xq.as_ref().expect("quantized above"), &q.rows(lo, hi), part),
        });
    }

    pub fn bytes(&self) -> usize {
        match self {
            Mat::F32 { w, .. } => 4 * w.len(),
            Mat::Bf16 { w, .. } => 2 * w.len(),
            Mat::Q8(q) => q.bytes(),
        }
    }
}

/// How [`DecodeModel`] holds its weight matrices (norms and the embedding table stay f32, and so
/// does a matrix whose rows are not a multiple of 32 values, which Q8_0 blocks cannot tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    #[default]
    F32,
    /// bf16 weights, widened exactly to f32 a block of rows at a time: half the bytes a decode
    /// step reads; the f32 kernels' order and bits on the rounded weights.
    Bf16,
    /// llama.cpp's Q8_0 blocks: 3.6× fewer bytes per decode step, each weight within half a
    /// step (1/254 of its block's largest magnitude, plus the f16 rounding of the block's scale)
    /// of the f32 value.
    Q8_0,
}

impl std::str::FromStr for WeightFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "q8_0" => Ok(Self::Q8_0),
            _ => anyhow::bail!("unknown weight format {s:?}: use f32, bf16 or q8_0"),
        }
    }
}

/// Accumulator lanes of one dot product (one 256-bit register).
pub(crate) const LANES: usize = 8;
/// Weight rows per parallel task: enough work per task, and a block small enough to stay in L2
/// while every tile of activation rows passes over it.
const BLOCK: usize = 32;

/// `out[m × n] = x[m × k] · wᵀ` for `w: [n × k]`.
pub fn matmul_wt(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, out: &mut [f32]) {
    matmul_wt_with(Kernel::detect(), x, m, w, n, k, out)
}

/// [`matmul_wt`] with a chosen kernel (for benchmarks and tests).
pub fn matmul_wt_with(kernel: Kernel, x: &[f32], m: usize, w: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(fits(x.len(), m, k) && fits(w.len(), n, k) && fits(out.len(), m, n), "matmul_wt: buffer sizes");
    by_blocks(m, &[n], &mut [out], |_, lo, hi, part| kernel.run(x, m, &w[lo * k..hi * k], hi - lo, k, part));
}

/// `out[m × n] = x[m × k] · wᵀ` for a Q8_0 weight matrix.
pub fn matmul_q8(x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32]) {
    matmul_q8_with(Kernel::detect(), x, m, w, out)
}

/// [`matmul_q8`] with a chosen kernel.
pub fn matmul_q8_with(kernel: Kernel, x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(fits(x.len(), m, k) && fits(out.len(), m, n), "matmul_q8: buffer sizes");
    let xq = Q8Activations::quantize(&x[..m * k], m, k);
    by_blocks(m, &[n], &mut [out], |_, lo, hi, part| kernel.run_q8(&xq, &w.rows(lo, hi), part));
}

/// Whether a buffer of `len` values holds `rows × cols` (the product not overflowing).
fn fits(len: usize, rows: usize, cols: usize) -> bool {
    rows.checked_mul(cols).is_some_and(|need| len >= need)
}

/// Runs `block(i, lo, hi, part)` for blocks of weight rows `lo..hi` of every matrix `i` (`ns[i]`
/// rows, output `outs[i]: [m × ns[i]]`) in parallel, `part` being `[m × (hi − lo)]`. One row
/// (batch-1 decode) writes each block straight into its output; several rows compute a block's
/// part apart and are gathered after.
fn by_blocks(m: usize, ns: &[usize], outs: &mut [&mut [f32]], block: impl Fn(usize, usize, usize, &mut [f32]) + Sync) {
    if m == 0 {
        return;
    }
    if m == 1 {
        let tasks: Vec<(usize, usize, &mut [f32])> = outs
            .iter_mut()
            .zip(ns)
            .enumerate()
            .flat_map(|(i, (o, &n))| o[..n].chunks_mut(BLOCK).enumerate().map(move |(b, c)| (i, b * BLOCK, c)))
            .collect();
        tasks.into_par_iter().for_each(|(i, lo, c)| block(i, lo, lo + c.len(), c));
        return;
    }
    let tasks: Vec<(usize, usize)> =
        ns.iter().enumerate().flat_map(|(i, &n)| (0..n.div_ceil(BLOCK)).map(move |b| (i, b))).collect();
    for (o, &n) in outs.iter().zip(ns) {
        assert!(o.len() >= m * n, "by_blocks: output too small");
    }
    let dst: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    // Each task computes its block into its own buffer and copies it into the output's columns
    // itself (in parallel: a gather after the loop would be one thread copying every output).
    tasks.par_iter().for_each_init(Vec::new, |part: &mut Vec<f32>, &(i, b)| {
        let (n, lo, hi) = (ns[i], b * BLOCK, ((b + 1) * BLOCK).min(ns[i]));
        let width = hi - lo;
        part.clear();
        part.resize(m * width, 0.0);
        block(i, lo, hi, part);
        for r in 0..m {
            let (from, to) = (part[r * width..].as_ptr(), dst[i].get());
            // SAFETY: output i holds m·n values (asserted above); columns lo..hi of its rows
            // belong to this task alone (tasks are distinct blocks), and the outputs outlive the
            // parallel loop, which holds their only access meanwhile. A whole block's row is
            // copied with a constant length (inlined moves, not a library call per row).
            unsafe {
                if width == BLOCK {
                    std::ptr::copy_nonoverlapping(from, to.add(r * n + lo), BLOCK);
                } else {
                    std::ptr::copy_nonoverlapping(from, to.add(r * n + lo), width);
                }
            }
        }
    });
}

/// A weight matrix `[n × k]` in Q8_0 blocks along each row (`k` a multiple of 32), held as
/// widened scales and 8-bit values for the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// One per block of 32 values: the block's f16 scale, widened to f32 (exactly).
    scales: Vec<f32>,
    qs: AVec<i8, RuntimeAlign>,
}

/// Rows `lo..hi` of a [`Q8Matrix`].
pub struct Q8Rows<'a> {
    k: usize,
    rows: usize,
    scales: &'a [f32],
    qs: &'a [i8],
}

/// Activation rows quantized for a [`Q8Matrix`]: per block of 32 values, `d = max|x| / 127`
/// (kept in f32) and `q = round(x / d)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Activations {
    m: usize,
    k: usize,
    scales: Vec<f32>,
    qs: AVec<i8>,
}

/// `x.round()` (halves away from zero) for |x| < 2³¹, in arithmetic the compiler vectorises
/// (`f32::round` is a library call on baseline x86-64): truncate, then step away from zero
/// when the exact remainder `x − trunc(x)` is at least one half.
#[inline]
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let f = x - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

impl Q8Activations {
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK8_0) && x.len() == m * k, "Q8_0 rows need a multiple of 32 columns");
        let mut scales = Vec::with_capacity(x.len() / QK8_0);
        let mut qs = AVec::with_capacity(ALIGN, x.len());
        qs.resize(x.len(), 0i8);
        for (block, q) in x.chunks_exact(QK8_0).zip(qs.chunks_exact_mut(QK8_0)) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(d);
            for (q, v) in q.iter_mut().zip(block) {
                *q = round_half_away(v * id) as i8;
            }
        }
        Self { m, k, scales, qs }
    }
}

impl Q8Matrix {
    /// Quantizes `w: [n × k]` as ggml's `quantize_row_q8_0` does.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK8_0) && w.len() == n * k, "Q8_0 rows need a multiple of 32 columns");
        Self::from_blocks(&crate::quant::quantize_q8_0(w), n, k)
    }

    /// From Q8_0 blocks in row order (as a GGUF tensor stores them). Values are in −127..=127,
    /// as ggml's quantizer writes them (the kernel's sign trick has no room for −128).
    pub fn from_blocks(blocks: &[BlockQ8_0], n: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK8_0) && blocks.len() * QK8_0 == n * k, "Q8_0 blocks for [{n} × {k}]");
        assert!(blocks.iter().all(|b| !b.qs.contains(&i8::MIN)), "Q8_0 value −128 outside ggml's range");
        let scales = blocks.iter().map(|b| b.d.to_f32()).collect();
        let mut qs = weight_buffer(n * k);
        qs.resize(n * k, 0i8);
        for (q, b) in qs.chunks_exact_mut(QK8_0).zip(blocks) {
            q.copy_from_slice(&b.qs);
        }
        Self { n, k, scales, qs }
    }

    /// Rows and columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The f32 matrix these blocks stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs.iter().enumerate().map(|(i, &q)| self.scales[i / QK8_0] * q as f32).collect()
    }

    /// Bytes one pass over the matrix reads.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }

    pub fn rows(&self, lo: usize, hi: usize) -> Q8Rows<'_> {
        let bpr = self.k / QK8_0;
        Q8Rows {
            k: self.k,
            rows: hi - lo,
            scales: &self.scales[lo * bpr..hi * bpr],
            qs: &self.qs[lo * self.k..hi * self.k],
        }
    }
}

/// The instruction sets a kernel is built for; all of them give the same bits where FMA exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust (fused multiply-add only where the target has it natively).
    Portable,
    /// AVX2 + FMA: 16 vector registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512VL: the same 256-bit arithmetic with 32 registers, room for larger tiles.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with VNNI (and BW/DQ): Q8_0 blocks summed by `vpdpbusd` on 512-bit registers, two
    /// weight rows per register (the same exact integers and order); f32 as [`Kernel::Avx512`].
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX2 with AVX-VNNI (VEX `vpdpbusd`, e.g. Alder Lake, Zen 5 without AVX-512); f32 as
    /// [`Kernel::Avx2`].
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs (decided once: attention asks per head and token).
    pub fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(Self::detect_now)
    }

    fn detect_now() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
                return if has!("avx512vnni") && has!("avx512bw") && has!("avx512dq") {
                    Kernel::Avx512Vnni
                } else {
                    Kernel::Avx512
                };
            }
            if has!("avx2") && has!("fma") {
                return if has!("avxvnni") { Kernel::AvxVnni } else { Kernel::Avx2 };
            }
        }
        Kernel::Portable
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512vl");
            match self {
                Kernel::Portable => true,
                Kernel::Avx2 => avx2,
                Kernel::Avx512 => avx512,
                Kernel::Avx512Vnni => avx512 && has!("avx512vnni") && has!("avx512bw") && has!("avx512dq"),
                Kernel::AvxVnni => avx2 && has!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        true
    }

    /// Every kernel this CPU runs, fastest first.
    pub fn all_available() -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        let all = vec![Kernel::Avx512Vnni, Kernel::Avx512, Kernel::AvxVnni, Kernel::Avx2, Kernel::Portable];
        #[cfg(not(target_arch = "x86_64"))]
        let all = vec![Kernel::Portable];
        all.into_iter().filter(|k| k.available()).collect()
    }

    /// The name printed beside benchmark figures.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512+vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => "avx2+avx-vnni",
        }
    }

    /// `part[m × nb] = x · w_blockᵀ`. Panics if this CPU lacks the kernel's instructions.
    pub fn run(self, x: &[f32], m: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32]) {
        assert!(fits(x.len(), m, k) && fits(w.len(), nb, k) && fits(part.len(), m, nb), "kernel: buffer sizes");
        match self {
            Kernel::Portable => portable(x, m, w, nb, k, part),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::AvxVnni => {
                assert!(Kernel::Avx2.available());
                // SAFETY: the instructions were just detected; sizes were checked above.
                unsafe { avx2::kernel(x, m, w, nb, k, part) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Vnni => {
                assert!(Kernel::Avx512.available());
                // SAFETY: as above.
                // Several activation rows (prompts, batches) are compute-bound: two weight rows per
                // 512-bit register. One row streams the weights: the 256-bit tiles. Same bits.
                unsafe {
                    if m == 1 {
                        avx512::kernel(x, m, w, nb, k, part)
                    } else {
                        f32_wide::kernel(x, m, w, nb, k, part)
                    }
                }
            }
        }
    }

    /// `part[m × rows] = x · wᵀ` for Q8_0 rows and quantized activations.
    pub fn run_q8(self, x: &Q8Activations, w: &Q8Rows<'_>, part: &mut [f32]) {
        let (m, nb, k) = (x.m, w.rows, w.k);
        // Consistent by construction (private fields); checked because the kernels read raw.
        assert!(
            x.k == k
                && x.qs.len() == m * k
                && x.scales.len() * QK8_0 == m * k
                && w.qs.len() == nb * k
                && w.scales.len() * QK8_0 == nb * k
                && fits(part.len(), m, nb),
            "kernel: buffer sizes"
        );
        match self {
            Kernel::Portable => portable_q8(x, w, part),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                assert!(Kernel::Avx2.available());
                // SAFETY: the instructions were just detected; sizes were checked above.
                unsafe { q8_avx2::kernel(x, w, part) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                assert!(Kernel::Avx512.available());
                // SAFETY: as above.
                unsafe { q8_avx512::kernel(x, w, part) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                assert!(Kernel::Avx512Vnni.available());
                // One activation row (batch-1 decode) streams the weights once, bound by memory:
                // the 256-bit kernel does it with less shuffling. More rows: two weight rows per
                // 512-bit register. Both give the same bits.
                // SAFETY: as above.
                unsafe {
                    if m == 1 {
                        q8_avx512vnni::kernel(x, w, part)
                    } else {
                        q8_wide::kernel(x, w, part)
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                assert!(Kernel::AvxVnni.available());
                // SAFETY: as above.
                unsafe { q8_avxvnni::kernel(x, w, part) }
            }
        }
    }
}

/// The Q8_0 order in plain Rust: lane `l` accumulates, block by block, the exact integer sum of
/// bytes `4l..4l + 4` times the block's scale product. The fused multiply-add is used whatever
/// the target (it runs once per 4 values), so every kernel gives these bits on every machine.
fn portable_q8(x: &Q8Activations, w: &Q8Rows<'_>, part: &mut [f32]) {
    let fma = |a: f32, b: f32, c: f32| a.mul_add(b, c);
    let (k, nblk) = (w.k, w.k / QK8_0);
    for i in 0..x.m {
        for j in 0..w.rows {
            let mut acc = [0f32; LANES];
            for b in 0..nblk {
                let s = w.scales[j * nblk + b] * x.scales[i * nblk + b];
                let (xq, wq) = (&x.qs[i * k + b * QK8_0..], &w.qs[j * k + b * QK8_0..]);
                for (l, a) in acc.iter_mut().enumerate() {
                    let isum: i32 = (4 * l..4 * l + 4).map(|t| xq[t] as i32 * wq[t] as i32).sum();
                    *a = fma(isum as f32, s, *a);
                }
            }
            part[i * w.rows + j] = reduce(&acc);
        }
    }
}

/// Sum of the lanes in the kernel's fixed tree.
#[inline(always)]
pub(crate) fn reduce(a: &[f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Reference order in plain Rust: what the vector kernels compute, one element at a time.
fn portable(x: &[f32], m: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32]) {
    #[cfg(target_feature = "fma")]
    let fma = |a: f32, b: f32, c: f32| a.mul_add(b, c);
    #[cfg(not(target_feature = "fma"))]
    let fma = |a: f32, b: f32, c: f32| a * b + c;
    let body = k - k % LANES;
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..nb {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = [0f32; LANES];
            for c in (0..body).step_by(LANES) {
                for l in 0..LANES {
                    acc[l] = fma(xr[c + l], wr[c + l], acc[l]);
                }
            }
            let mut s = reduce(&acc);
            for t in body..k {
                s = fma(xr[t], wr[t], s);
            }
            part[i * nb + j] = s;
        }
    }
}

/// One register-blocked kernel per instruction set: the same source, compiled with each
/// `target_feature` so the compiler may use that set's registers. `$tiles` lists, for each number
/// of activation rows `R` left, the weight rows `G` per tile: `R·G` accumulators plus `G` weight
/// registers must fit the register file, and `G` large enough keeps memory streams busy at `R = 1`.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    ($name:ident, $features:literal, $max_rows:expr, [$($r:literal => $g:literal),*]) => {
        mod $name {
            use super::{reduce, LANES};
            use std::arch::x86_64::*;

            /// Rows `i0..i0+R` of `x` against weight rows `j0..j0+G`.
            ///
            /// # Safety
            /// The CPU must support `$features`; `x` must hold rows `i0..i0+R` of `k` values, `w`
            /// rows `j0..j0+G` of `k` values, and `part` row `i0+R-1` of `nb` columns (`j0+G ≤ nb`).
            #[inline]
            unsafe fn tile<const R: usize, const G: usize>(
                x: &[f32], i0: usize, w: &[f32], j0: usize, nb: usize, k: usize, part: &mut [f32],
            ) {
                let body = k - k % LANES;
                let xp = x.as_ptr().add(i0 * k);
                // The next tile's weight rows are fetched while this one computes: with many
                // activation rows the tile is compute-bound and the hardware prefetcher alone
                // leaves the memory stream idle (measured: half the bandwidth at 8 rows).
                let next = if j0 + 2 * G <= nb { j0 + G } else { j0 };
                let rows: [*const f32; G] = std::array::from_fn(|g| w.as_ptr().add((j0 + g) * k));
                let ahead: [*const f32; G] = std::array::from_fn(|g| w.as_ptr().add((next + g) * k));
                let mut acc = [[_mm256_setzero_ps(); G]; R];
                let mut c = 0;
                while c < body {
                    let mut wv = [_mm256_setzero_ps(); G];
                    for g in 0..G {
                        wv[g] = _mm256_loadu_ps(rows[g].add(c));
                        _mm_prefetch::<_MM_HINT_T0>(ahead[g].add(c) as *const i8);
                    }
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(xp.add(r * k + c));
                        for g in 0..G {
                            acc[r][g] = _mm256_fmadd_ps(xv, wv[g], acc[r][g]);
                        }
                    }
                    c += LANES;
                }
                for r in 0..R {
                    for g in 0..G {
                        let mut lanes = [0f32; LANES];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][g]);
                        let mut s = reduce(&lanes);
                        for t in body..k {
                            s = (*xp.add(r * k + t)).mul_add(*rows[g].add(t), s);
                        }
                        part[(i0 + r) * nb + j0 + g] = s;
                    }
                }
            }

            /// Rows `i0..i0+R` against every weight row: tiles of `G`, then single rows.
            ///
            /// # Safety
            /// As for `tile`, for every weight row `0..nb`.
            #[inline]
            unsafe fn rows<const R: usize, const G: usize>(
                x: &[f32], i0: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32],
            ) {
                let mut j = 0;
                while j + G <= nb {
                    tile::<R, G>(x, i0, w, j, nb, k, part);
                    j += G;
                }
                while j < nb {
                    tile::<R, 1>(x, i0, w, j, nb, k, part);
                    j += 1;
                }
            }

            /// `part[m × nb] = x[m × k] · w[nb × k]ᵀ`.
            ///
            /// # Safety
            /// The CPU must support `$features`; `x` must hold `m·k` values, `w` `nb·k` and
            /// `part` `m·nb`.
            #[target_feature(enable = $features)]
            pub unsafe fn kernel(x: &[f32], m: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32]) {
                let mut i0 = 0;
                while i0 < m {
                    let r = (m - i0).min($max_rows);
                    match r {
                        $($r => rows::<$r, $g>(x, i0, w, nb, k, part),)*
                        _ => unreachable!("tile height {r}"),
                    }
                    i0 += r;
                }
            }
        }
    };
}

/// The Q8_0 × Q8_0 kernel per instruction set: per block, `|x|` (unsigned) times `w` carrying
/// `x`'s sign, summed in pairs to 16 bits (at most 2·127², no saturation) and in fours to 32 bits,
/// converted exactly to f32 and scaled into the lane accumulators. `$tiles` as for `simd_kernel`:
/// `R·G` accumulators + `2·G` weight and scale registers + about 5 temporaries; the AVX2 tiles
/// (16 registers) spill a little, and measured faster than smaller ones all the same.
#[cfg(target_arch = "x86_64")]
macro_rules! q8_kernel {
    ($name:ident, $features:literal, $dot:ident, $max_rows:expr, [$($r:literal => $g:literal),*]) => {
        mod $name {
            use super::{reduce, Q8Activations, Q8Rows, LANES, QK8_0};
            use std::arch::x86_64::*;

            /// Rows `i0..i0+R` of `x` against weight rows `j0..j0+G`, block by block.
            ///
            /// # Safety
            /// The CPU must support `$features`; rows `i0..i0+R` must exist in `x` and rows
            /// `j0..j0+G` in `w` (same `k`), and `part` must hold row `i0+R-1` of `w.rows` columns.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const R: usize, const G: usize>(
                x: &Q8Activations, i0: usize, w: &Q8Rows<'_>, j0: usize, part: &mut [f32],
            ) {
                let (k, nb) = (w.k, w.rows);
                let nblk = k / QK8_0;
                let ones = _mm256_set1_epi16(1);
                let (wq, wd) = (w.qs.as_ptr().add(j0 * k), w.scales.as_ptr().add(j0 * nblk));
                let (xq, xd) = (x.qs.as_ptr().add(i0 * k), x.scales.as_ptr().add(i0 * nblk));
                // Fetch the next tile's rows while this one computes.
                let ahead = if j0 + 2 * G <= nb { G } else { 0 };
                let mut acc = [[_mm256_setzero_ps(); G]; R];
                for b in 0..nblk {
                    let mut wv = [_mm256_setzero_si256(); G];
                    let mut ws = [_mm256_setzero_ps(); G];
                    for g in 0..G {
                        wv[g] = _mm256_loadu_si256(wq.add(g * k + b * QK8_0) as *const __m256i);
                        ws[g] = _mm256_broadcast_ss(&*wd.add(g * nblk + b));
                        _mm_prefetch::<_MM_HINT_T0>(wq.add((g + ahead) * k + b * QK8_0));
                    }
                    for r in 0..R {
                        let xv = _mm256_loadu_si256(xq.add(r * k + b * QK8_0) as *const __m256i);
                        let xa = _mm256_abs_epi8(xv);
                        let dx = _mm256_broadcast_ss(&*xd.add(r * nblk + b));
                        for g in 0..G {
                            let isum = super::$dot(xa, _mm256_sign_epi8(wv[g], xv), ones);
                            let s = _mm256_mul_ps(ws[g], dx);
                            acc[r][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, acc[r][g]);
                        }
                    }
                }
                for r in 0..R {
                    for g in 0..G {
                        let mut lanes = [0f32; LANES];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][g]);
                        part[(i0 + r) * nb + j0 + g] = reduce(&lanes);
                    }
                }
            }

            /// Rows `i0..i0+R` against every weight row.
            ///
            /// # Safety
            /// As for `tile`, for every weight row.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn rows<const R: usize, const G: usize>(x: &Q8Activations, i0: usize, w: &Q8Rows<'_>, part: &mut [f32]) {
                let mut j = 0;
                while j + G <= w.rows {
                    tile::<R, G>(x, i0, w, j, part);
                    j += G;
                }
                while j < w.rows {
                    tile::<R, 1>(x, i0, w, j, part);
                    j += 1;
                }
            }

            /// `part[x.m × w.rows] = x · wᵀ` over Q8_0 blocks.
            ///
            /// # Safety
            /// The CPU must support `$features`; `x` and `w` must share `k`, and `part` must hold
            /// `x.m · w.rows` values.
            #[target_feature(enable = $features)]
            pub unsafe fn kernel(x: &Q8Activations, w: &Q8Rows<'_>, part: &mut [f32]) {
                let mut i0 = 0;
                while i0 < x.m {
                    let r = (x.m - i0).min($max_rows);
                    match r {
                        $($r => rows::<$r, $g>(x, i0, w, part),)*
                        _ => unreachable!("tile height {r}"),
                    }
                    i0 += r;
                }
            }
        }
    };
}

// The integer sum of one Q8_0 block, per 32-bit lane `l`: `Σ_{t=4l}^{4l+3} |x_t| · (w_t·sign x_t)`,
// exact (|x|, |w| ≤ 127: the 16-bit pair sums of `maddubs` stay below 2¹⁵, so no saturation).
// `maddubs` + `madd` (two instructions) or VNNI's `vpdpbusd` (one) give the same integers.

#[cfg(target_arch = "x86_64")]
use dots::{dot_avxvnni, dot_madd, dot_vnni256};

/// The three ways of summing a block's 4-byte groups (the third argument: sixteen 16-bit ones).
#[cfg(target_arch = "x86_64")]
mod dots {
    use std::arch::x86_64::*;

    /// `vpmaddubsw` then `vpmaddwd`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn dot_madd(xa: __m256i, wv: __m256i, ones: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(xa, wv), ones)
    }

    /// AVX512-VNNI `vpdpbusd` on 256 bits (EVEX).
    ///
    /// # Safety
    /// The CPU must support AVX512-VNNI and AVX-512VL.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    pub unsafe fn dot_vnni256(xa: __m256i, wv: __m256i, _: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), xa, wv)
    }

    /// AVX-VNNI `vpdpbusd` (VEX).
    ///
    /// # Safety
    /// The CPU must support AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    pub unsafe fn dot_avxvnni(xa: __m256i, wv: __m256i, _: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), xa, wv)
    }
}

#[cfg(target_arch = "x86_64")]
q8_kernel!(q8_avx2, "avx2,fma", dot_madd, 3, [1 => 4, 2 => 3, 3 => 2]);
#[cfg(target_arch = "x86_64")]
q8_kernel!(q8_avx512, "avx2,fma,avx512f,avx512vl", dot_madd, 8, [1 => 4, 2 => 4, 3 => 4, 4 => 3, 5 => 3, 6 => 2, 7 => 2, 8 => 2]);
#[cfg(target_arch = "x86_64")]
q8_kernel!(q8_avx512vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dot_vnni256, 8, [1 => 4, 2 => 4, 3 => 4, 4 => 3, 5 => 3, 6 => 2, 7 => 2, 8 => 2]);

/// Q8_0 on 512-bit registers with AVX512-VNNI: two weight rows per register (lanes 0–7 the first
/// row's 8 lanes, 8–15 the second's), so each instruction does the work of two in the 256-bit
/// kernels. Every lane does exactly what the 256-bit kernels' lane does — the same exact integer
/// block sum (`vpdpbusd`; the sign moved onto `w` by a masked subtraction instead of `vpsignb`),
/// scaled by `d_w·d_x` and added with one fused multiply-add, block after block — and each row's
/// 8 lanes are summed in the same tree, so the bits are the other kernels'.
#[cfg(target_arch = "x86_64")]
mod q8_wide {
    use super::{Q8Activations, Q8Rows, QK8_0};
    use std::arch::x86_64::*;

    /// Rows `i0..i0+R` of `x` against weight rows `j0..j0+2P` (a last odd row is paired with
    /// itself and its copy dropped), block by block.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/DQ/VL and AVX512-VNNI; rows `i0..i0+R` must exist in `x`,
    /// rows `j0..min(j0+2P, w.rows)` in `w` (same `k`), and `part` must hold `x.m · w.rows` values.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn tile<const R: usize, const P: usize>(
        x: &Q8Activations,
        i0: usize,
        w: &Q8Rows<'_>,
        j0: usize,
        part: &mut [f32],
    ) {
        let (k, nb) = (w.k, w.rows);
        let nblk = k / QK8_0;
        let last = nb - 1;
        let row = |g: usize| (j0 + g).min(last);
        let (xq, xd) = (x.qs.as_ptr().add(i0 * k), x.scales.as_ptr().add(i0 * nblk));
        let zero = _mm512_setzero_si512();
        // `vpdpbusd` multiplies unsigned by signed bytes: x + 128 (x XOR 0x80, in 1..=255) times w,
        // its sum started at −128·Σw (each lane's four weights, one `vpdpbusd` per weight register
        // for all R rows) — exactly Σ x·w, with no per-row sign fix-up.
        let offset = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for b in 0..nblk {
            let mut wv = [zero; P];
            let mut ws = [_mm512_setzero_ps(); P];
            let mut base = [zero; P];
            for p in 0..P {
                let (lo, hi) = (row(2 * p), row(2 * p + 1));
                let wlo = _mm256_loadu_si256(w.qs.as_ptr().add(lo * k + b * QK8_0) as *const __m256i);
                let whi = _mm256_loadu_si256(w.qs.as_ptr().add(hi * k + b * QK8_0) as *const __m256i);
                wv[p] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(wlo), whi);
                base[p] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wv[p]));
                let slo = _mm256_set1_ps(*w.scales.as_ptr().add(lo * nblk + b));
                let shi = _mm256_set1_ps(*w.scales.as_ptr().add(hi * nblk + b));
                ws[p] = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(slo), shi);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(xq.add(r * k + b * QK8_0) as *const __m256i));
                let xu = _mm512_xor_si512(xv, offset);
                let dx = _mm512_set1_ps(*xd.add(r * nblk + b));
                for p in 0..P {
                    let isum = _mm512_dpbusd_epi32(base[p], xu, wv[p]);
                    let s = _mm512_mul_ps(ws[p], dx);
                    acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s, acc[p]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, a) in acc.iter().enumerate() {
                for (half, &sum) in super::reduce_halves(*a).iter().enumerate() {
                    let j = j0 + 2 * p + half;
                    if j < nb {
                        part[(i0 + r) * nb + j] = sum;
                    }
                }
            }
        }
    }

    /// Rows `i0..i0+R` against every weight row.
    ///
    /// # Safety
    /// As for `tile`, for every weight row.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn rows<const R: usize, const P: usize>(x: &Q8Activations, i0: usize, w: &Q8Rows<'_>, part: &mut [f32]) {
        let mut j = 0;
        while j + 2 * P <= w.rows {
            tile::<R, P>(x, i0, w, j, part);
            j += 2 * P;
        }
        while j < w.rows {
            tile::<R, 1>(x, i0, w, j, part);
            j += 2;
        }
    }

    /// `part[x.m × w.rows] = x · wᵀ` over Q8_0 blocks.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/DQ/VL and AVX512-VNNI; `x` and `w` must share `k`, and
    /// `part` must hold `x.m · w.rows` values.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    pub unsafe fn kernel(x: &Q8Activations, w: &Q8Rows<'_>, part: &mut [f32]) {
        if w.rows == 0 {
            return;
        }
        let mut i0 = 0;
        while i0 < x.m {
            let r = (x.m - i0).min(8);
            match r {
                1 => rows::<1, 4>(x, i0, w, part),
                2 => rows::<2, 4>(x, i0, w, part),
                3 => rows::<3, 3>(x, i0, w, part),
                4 => rows::<4, 3>(x, i0, w, part),
                5 => rows::<5, 2>(x, i0, w, part),
                6 => rows::<6, 2>(x, i0, w, part),
                7 => rows::<7, 2>(x, i0, w, part),
                8 => rows::<8, 2>(x, i0, w, part),
                _ => unreachable!("tile height {r}"),
            }
            i0 += r;
        }
    }
}
#[cfg(target_arch = "x86_64")]
q8_kernel!(q8_avxvnni, "avx2,fma,avxvnni", dot_avxvnni, 3, [1 => 4, 2 => 3, 3 => 2]);

#[cfg(target_arch = "x86_64")]
simd_kernel!(avx2, "avx2,fma", 4, [1 => 8, 2 => 4, 3 => 3, 4 => 2]);
/// The two weight rows' 8 lanes of a 512-bit accumulator of the wide kernels (lanes 0–7, 8–15).
///
/// # Safety
/// The CPU must support AVX-512F.
/// [`reduce`] of both 8-lane halves of a 512-bit register at once, in registers: lanes `l` and
/// `l + 4` added, then neighbours, then pairs — `((a0+a4) + (a1+a5)) + ((a2+a6) + (a3+a7))` per
/// half, the same additions (each of the same two operands) as [`reduce`], so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce_halves(a: std::arch::x86_64::__m512) -> [f32; 2] {
    use std::arch::x86_64::*;
    // 128-bit blocks swapped within each half: lane l (< 4) of `t` is a[l] + a[l + 4].
    let t = _mm512_add_ps(a, _mm512_shuffle_f32x4::<0b10_11_00_01>(a, a));
    // Neighbours: lane 0 is t0 + t1, lane 2 is t2 + t3.
    let u = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
    // Pairs: lane 0 is u0 + u2.
    let v = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
    [_mm512_cvtss_f32(v), _mm512_cvtss_f32(_mm512_shuffle_f32x4::<0b00_00_00_10>(v, v))]
}

/// f32 on 512-bit registers: two weight rows per register (lanes 0–7 the first row's 8 lanes,
/// 8–15 the second's) against the activation row's 8 values broadcast to both halves. Each lane
/// sums exactly what the 256-bit kernels' lane sums, in the same order, and each row's lanes and
/// tail are reduced as there, so the bits are the other kernels'; each instruction does twice the
/// work (the 256-bit kernels leave half of an AVX-512 core's FMA width idle).
#[cfg(target_arch = "x86_64")]
mod f32_wide {
    use super::LANES;
    use std::arch::x86_64::*;

    /// Rows `i0..i0+R` of `x` against weight rows `j0..j0+2P` (a last odd row is paired with
    /// itself and its copy dropped).
    ///
    /// # Safety
    /// The CPU must support AVX-512F (and FMA); `x` must hold rows `i0..i0+R` of `k` values, `w`
    /// rows `j0..min(j0+2P, nb)` of `k` values, and `part` `(i0+R)·nb` values.
    #[target_feature(enable = "avx2,fma,avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const P: usize>(
        x: &[f32],
        i0: usize,
        w: &[f32],
        j0: usize,
        nb: usize,
        k: usize,
        part: &mut [f32],
    ) {
        let body = k - k % LANES;
        let xp = x.as_ptr().add(i0 * k);
        let row = |g: usize| w.as_ptr().add((j0 + g).min(nb - 1) * k);
        let rows: [[*const f32; 2]; P] = std::array::from_fn(|p| [row(2 * p), row(2 * p + 1)]);
        // The next tile's rows are fetched while this one computes (as in the 256-bit kernels).
        let next = if j0 + 4 * P <= nb { 2 * P } else { 0 };
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let mut c = 0;
        while c < body {
            let mut wv = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let lo = _mm256_castps_pd(_mm256_loadu_ps(rows[p][0].add(c)));
                let hi = _mm256_castps_pd(_mm256_loadu_ps(rows[p][1].add(c)));
                wv[p] = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(lo), hi));
                _mm_prefetch::<_MM_HINT_T0>(rows[p][0].add(next * k + c) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(rows[p][1].add(next * k + c) as *const i8);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x8 = _mm256_castps_pd(_mm256_loadu_ps(xp.add(r * k + c)));
                let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(x8));
                for p in 0..P {
                    acc[p] = _mm512_fmadd_ps(xv, wv[p], acc[p]);
                }
            }
            c += LANES;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, a) in acc.iter().enumerate() {
                let sums = super::reduce_halves(*a);
                for (half, &sum) in sums.iter().enumerate() {
                    let j = j0 + 2 * p + half;
                    if j < nb {
                        let mut s = sum;
                        for t in body..k {
                            s = (*xp.add(r * k + t)).mul_add(*rows[p][half].add(t), s);
                        }
                        part[(i0 + r) * nb + j] = s;
                    }
                }
            }
        }
    }

    /// Rows `i0..i0+R` against every weight row.
    ///
    /// # Safety
    /// As for `tile`, for every weight row `0..nb`.
    #[target_feature(enable = "avx2,fma,avx512f")]
    #[inline]
    unsafe fn rows<const R: usize, const P: usize>(
        x: &[f32],
        i0: usize,
        w: &[f32],
        nb: usize,
        k: usize,
        part: &mut [f32],
    ) {
        let mut j = 0;
        while j + 2 * P <= nb {
            tile::<R, P>(x, i0, w, j, nb, k, part);
            j += 2 * P;
        }
        while j < nb {
            tile::<R, 1>(x, i0, w, j, nb, k, part);
            j += 2;
        }
    }

    /// `part[m × nb] = x[m × k] · w[nb × k]ᵀ`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and FMA; `x` must hold `m·k` values, `w` `nb·k` and `part`
    /// `m·nb`.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn kernel(x: &[f32], m: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32]) {
        if nb == 0 {
            return;
        }
        let mut i0 = 0;
        while i0 < m {
            let r = (m - i0).min(8);
            match r {
                1 => rows::<1, 4>(x, i0, w, nb, k, part),
                2 => rows::<2, 4>(x, i0, w, nb, k, part),
                3 => rows::<3, 4>(x, i0, w, nb, k, part),
                4 => rows::<4, 3>(x, i0, w, nb, k, part),
                5 => rows::<5, 3>(x, i0, w, nb, k, part),
                6 => rows::<6, 2>(x, i0, w, nb, k, part),
                7 => rows::<7, 2>(x, i0, w, nb, k, part),
                8 => rows::<8, 2>(x, i0, w, nb, k, part),
                _ => unreachable!("tile height {r}"),
            }
            i0 += r;
        }
    }
}

#[cfg(target_arch = "x86_64")]
simd_kernel!(avx512, "avx2,fma,avx512f,avx512vl", 8, [1 => 4, 2 => 8, 3 => 6, 4 => 4, 5 => 4, 6 => 3, 7 => 3, 8 => 3]);

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 211) as f32 / 105.0 - 1.0).collect()
    }

    #[test]
    fn rounding_matches_f32_round() {
        let mut xs: Vec<f32> = (-1300..=1300).map(|i| i as f32 / 10.0).collect();
        xs.extend([0.5, -0.5, 1.5, -2.5, 0.499_999_97, -0.499_999_97, 126.5, -127.0, 0.0, -0.0]);
        xs.extend((0..2000u32).map(|i| f32::from_bits(0x3f00_0000 + i * 3001) * if i % 2 == 0 { 1.0 } else { -1.0 }));
        for x in xs {
            assert_eq!(round_half_away(x), x.round() as i32, "{x:e}");
        }
    }

    /// bf16 weights give exactly the f32 path's bits on the widened weights, for every batch
    /// size (one matrix and several in one dispatch), and half the bytes.
    #[test]
    fn bf16_weights_are_the_f32_path_on_rounded_values() {
        let (n, k) = (70, 100);
        let wf = data(n * k, 5);
        let rounded: Vec<f32> = wf.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
        let (b, f) = (Mat::new(wf.clone(), n, k, WeightFormat::Bf16), Mat::new(rounded, n, k, WeightFormat::F32));
        assert_eq!(b.bytes() * 2, f.bytes());
        for m in 1..=11 {
            let x = data(m * k, m + 3);
            let (mut got, mut want) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
            b.apply(&x, m, &mut got);
            f.apply(&x, m, &mut want);
            assert_eq!(got, want, "{m} rows");
            let (mut g2, mut w2) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            Mat::apply_all(&[&b, &f], &x, m, &mut [&mut g2, &mut w2]);
            assert_eq!((&g2, &w2), (&want, &want), "{m} rows, two matrices in one dispatch");
        }
    }

    #[test]
    fn q8_kernels_agree_bit_for_bit_and_stay_close_to_f32() {
        let (n, k) = (45, 96);
        let wf = data(n * k, 3);
        let w = Q8Matrix::quantize(&wf, n, k);
        let mut single: Vec<Vec<f32>> = vec![];
        for m in 1..=11 {
            let x = data(m * k, m + 7);
            let xq = Q8Activations::quantize(&x, m, k);
            let mut want = vec![0f32; m * n];
            portable_q8(&xq, &w.rows(0, n), &mut want);
            let mut got = vec![0f32; m * n];
            matmul_q8(&x, m, &w, &mut got);
            assert_eq!(got, want, "{m} rows against the scalar definition");
            for kern in kernels() {
                let mut part = vec![0f32; m * n];
                kern.run_q8(&xq, &w.rows(0, n), &mut part);
                assert_eq!(part, want, "{kern:?} with {m} rows");
            }
            // Batch-invariant: the last row alone gives the same bits.
            let mut one = vec![0f32; n];
            matmul_q8(&x[(m - 1) * k..], 1, &w, &mut one);
            assert_eq!(&got[(m - 1) * n..], &one[..]);
            single.push(one);
            // Close to the f32 product: within 1 % of the sum of |x·w| terms.
            for j in 0..n {
                let (i, xr, wr) = (m - 1, &x[(m - 1) * k..], &wf[j * k..(j + 1) * k]);
                let exact: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = xr.iter().zip(wr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                assert!((got[i * n + j] as f64 - exact).abs() < 0.01 * scale, "({i},{j})");
            }
        }
        let blocks = crate::quant::quantize_q8_0(&w.dequantize());
        assert_eq!(Q8Matrix::from_blocks(&blocks, n, k), w, "GGUF blocks give the same matrix");
        assert_eq!(w.bytes(), n * k + 4 * n * k / QK8_0, "one byte per weight and one scale per block");
    }

    fn kernels() -> Vec<Kernel> {
        // The portable f32 kernel has the vector kernels' bits only where FMA is native.
        Kernel::all_available().into_iter().filter(|k| cfg!(target_feature = "fma") || *k != Kernel::Portable).collect()
    }

    #[test]
    fn every_kernel_and_batch_size_gives_the_same_bits_as_one_row_alone() {
        let (n, k) = (45, 77); // neither a multiple of a tile nor of the lanes
        let w = data(n * k, 1);
        let kernels = kernels();
        for m in 1..=19 {
            let x = data(m * k, m);
            let mut want = vec![0f32; m * n];
            for i in 0..m {
                matmul_wt(&x[i * k..(i + 1) * k], 1, &w, n, k, &mut want[i * n..(i + 1) * n]);
                for j in 0..n {
                    let r: f64 = (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).sum();
                    assert!((want[i * n + j] as f64 - r).abs() < 1e-4, "m {m} ({i},{j}) vs f64");
                }
            }
            let mut got = vec![0f32; m * n];
            matmul_wt(&x, m, &w, n, k, &mut got);
            assert_eq!(got, want, "batch of {m} differs from its rows alone");
            for &kern in &kernels {
                let mut part = vec![0f32; m * n];
                kern.run(&x, m, &w, n, k, &mut part);
                assert_eq!(part, want, "{kern:?} with {m} rows");
            }
        }
    }
}
