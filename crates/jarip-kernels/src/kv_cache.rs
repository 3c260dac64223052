//! The decode path's KV cache and the attention that reads it.
//!
//! Each sequence keeps, per layer and KV head, its past keys and values after rotary as one
//! `[pos, D]` array, so attention reads a head's history contiguously. Keys and values are held
//! as f32, or as f16 ([`KvFormat::F16`]): at long contexts attention reads the cache once per
//! step and can cost as many bytes as the weights, and half precision halves that traffic (and
//! the memory a server needs per sequence). The f16 path widens a block of rows to f32 and runs
//! the f32 arithmetic on it in the same order, so it equals the f32 path applied to the rounded
//! values, bit for bit.
//!
//! One query row attends at a time in a decode step ([`attend_head`]); a prompt's rows attend by
//! KV head in blocks ([`attend_rows`]: the keys read once per block, q·Kᵀ through the several-row
//! kernel), each row getting exactly the bits it would alone.

use crate::decode_matmul::Kernel;
use crate::ops::fastmath::exp_inplace;
use anyhow::{bail, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// How the KV cache holds keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvFormat {
    #[default]
    F32,
    /// IEEE half precision: 11 significant bits. Keys are RMS-normalised, so well inside its
    /// range; a value beyond ±65504 is saturated there rather than stored as infinity.
    F16,
}

impl std::str::FromStr for KvFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => bail!("unknown KV cache format {s:?}: use f32 or f16"),
        }
    }
}

/// One head's keys or values, `[pos, D]`.
#[derive(Debug, Clone)]
pub enum KvRows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvRows {
    pub(crate) fn new(format: KvFormat) -> Self {
        match format {
            KvFormat::F32 => Self::F32(Vec::new()),
            KvFormat::F16 => Self::F16(Vec::new()),
        }
    }

    fn format(&self) -> KvFormat {
        match self {
            Self::F32(_) => KvFormat::F32,
            Self::F16(_) => KvFormat::F16,
        }
    }

    fn values(&self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::F16(x) => x.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Self::F32(x) => x.truncate(n),
            Self::F16(x) => x.truncate(n),
        }
    }

    fn head(&self, n: usize) -> Self {
        match self {
            Self::F32(x) => Self::F32(x[..n].to_vec()),
            Self::F16(x) => Self::F16(x[..n].to_vec()),
        }
    }

    /// Appends one position's row.
    pub(crate) fn push(&mut self, row: &[f32]) {
        match self {
            Self::F32(x) => x.extend_from_slice(row),
            Self::F16(x) => {
                let at = x.len();
                x.resize(at + row.len(), f16::ZERO);
                if row.iter().all(|v| v.abs() <= f16::MAX.to_f32()) {
                    x[at..].convert_from_f32_slice(row);
                } else {
                    let lim = f16::MAX.to_f32();
                    let clamped: Vec<f32> = row.iter().map(|v| v.clamp(-lim, lim)).collect();
                    x[at..].convert_from_f32_slice(&clamped);
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::F32(x) => 4 * x.len(),
            Self::F16(x) => 2 * x.len(),
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Self::F32(x) => x.shrink_to_fit(),
            Self::F16(x) => x.shrink_to_fit(),
        }
    }
}

/// Keys and values of one sequence's past positions: one [`KvRows`] per layer and KV head
/// (index `layer · Hkv + head`).
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    pub(crate) k: Vec<KvRows>,
    pub(crate) v: Vec<KvRows>,
    pub(crate) len: usize,
}

impl SeqCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions `n..` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len {
            for l in self.k.iter_mut().chain(self.v.iter_mut()) {
                let width = l.values() / self.len;
                l.truncate(n * width);
            }
            self.len = n;
        }
    }

    /// A copy of the first `n` positions (all of them if `n` is larger): what a prompt that
    /// starts with the same `n` tokens would compute, bit for bit, since a position's keys and
    /// values depend only on the tokens up to it.
    pub fn prefix(&self, n: usize) -> SeqCache {
        let n = n.min(self.len);
        let cut = |rows: &Vec<KvRows>| {
            rows.iter().map(|r| r.head(r.values().checked_div(self.len).unwrap_or(0) * n)).collect()
        };
        SeqCache { k: cut(&self.k), v: cut(&self.v), len: n }
    }

    /// Gives back the memory reserved for positions not yet held (a cache that is kept, not
    /// grown, then holds exactly [`SeqCache::bytes`]).
    pub fn shrink_to_fit(&mut self) {
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(KvRows::shrink_to_fit);
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvRows::bytes).sum()
    }

    /// Lays out `heads` empty row sets of `format`, or checks that the cache already holds that
    /// format (a cache filled by one model continues only with a model caching alike).
    pub fn prepare(&mut self, heads: usize, format: KvFormat) -> Result<()> {
        if let Some(have) = self.k.first().map(KvRows::format) {
            if have != format {
                bail!("this KV cache holds {have:?} keys and values; the model caches {format:?}");
            }
        }
        self.k.resize(heads, KvRows::new(format));
        self.v.resize(heads, KvRows::new(format));
        Ok(())
    }
}

impl SeqCache {
    /// Appends one position's key and value rows to row set `slot` (`layer · Hkv + head`); the
    /// position counts once [`SeqCache::advance`] is called for it.
    pub fn push(&mut self, slot: usize, key: &[f32], value: &[f32]) {
        self.k[slot].push(key);
        self.v[slot].push(value);
    }

    /// Counts `n` more positions as held (after their rows were pushed to every slot).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The keys and values of row set `slot`.
    pub fn slot(&self, slot: usize) -> (&KvRows, &KvRows) {
        (&self.k[slot], &self.v[slot])
    }
}

/// Positions widened from f16 at a time (a 64-position block of 128-wide rows is 32 KiB of f32,
/// which stays in L1/L2 while the kernel reads it).
const BLOCK: usize = 64;

/// Per-thread buffers of [`attend_head`].
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    rows: Vec<f32>,
    vrows: Vec<f32>,
}

/// What one query row of one head attends over: its first `seen` cached positions.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub q: &'a [f32],
    pub keys: &'a KvRows,
    pub vals: &'a KvRows,
    pub seen: usize,
    pub scale: f32,
}

/// softmax(q·Kᵀ·scale)·V for one query row of one head, into `out`.
pub fn attend_head(h: Head, s: &mut Scratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected. The build is the same arithmetic (no fused
            // multiply-add), only wider, so both paths give the same bits.
            unsafe { attend_head_avx2(h, s, out, f16_fused()) };
            return;
        }
    }
    attend_head_impl(h, s, out, f16_fused());
}

/// [`attend_head`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2 (and F16C/FMA when `fused`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_head_avx2(h: Head, s: &mut Scratch, out: &mut [f32], fused: bool) {
    attend_head_impl(h, s, out, fused);
}

#[inline(always)]
fn attend_head_impl(h: Head, s: &mut Scratch, out: &mut [f32], fused: bool) {
    let Head { q, keys, vals, seen, scale } = h;
    let d = q.len();
    let Scratch { scores, rows, .. } = s;
    scores.clear();
    scores.resize(seen, 0.0);
    // q·Kᵀ is a matrix-vector product over the head's keys: the decode kernel does it, in its
    // fixed reduction order (each score is its own dot product, so blocks change nothing).
    let kernel = Kernel::detect();
    match keys {
        KvRows::F32(k) => kernel.run(q, 1, &k[..seen * d], seen, d, scores),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instructions were detected; `k` holds at least `seen` rows of `d`.
        KvRows::F16(k) if fused => unsafe { f16_x86::scores(q, &k[..seen * d], scores) },
        KvRows::F16(k) => {
            for p0 in (0..seen).step_by(BLOCK) {
                let p1 = (p0 + BLOCK).min(seen);
                widen(&k[p0 * d..p1 * d], rows);
                kernel.run(q, 1, rows, p1 - p0, d, &mut scores[p0..p1]);
            }
        }
    }
    softmax_scaled(scores, scale);
    out.fill(0.0);
    match vals {
        KvRows::F32(v) => weighted_sum(scores, &v[..seen * d], d, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KvRows::F16(v) if fused => unsafe { f16_x86::weighted_sum(scores, &v[..seen * d], d, out) },
        KvRows::F16(v) => {
            for p0 in (0..seen).step_by(BLOCK) {
                let p1 = (p0 + BLOCK).min(seen);
                widen(&v[p0 * d..p1 * d], rows);
                weighted_sum(&scores[p0..p1], rows, d, out);
            }
        }
    }
}

/// `softmax(scores · scale)` in place: scaled, the maximum subtracted, [`exp_inplace`], divided by
/// the sum taken in increasing position.
fn softmax_scaled(scores: &mut [f32], scale: f32) {
    for x in scores.iter_mut() {
        *x *= scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in scores.iter_mut() {
        *x -= max;
    }
    exp_inplace(scores);
    let sum: f32 = scores.iter().fold(0.0, |a, x| a + x);
    for x in scores.iter_mut() {
        *x /= sum;
    }
}

/// Query rows of one KV head: row `i` is `q[i·d..(i + 1)·d]` and attends over the first `seen[i]`
/// cached positions (a prompt's new positions, and the query heads that share the KV head).
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub q: &'a [f32],
    pub seen: &'a [usize],
    pub keys: &'a KvRows,
    pub vals: &'a KvRows,
    pub scale: f32,
}

/// Query rows scored together: the keys are read once per block, and `q·Kᵀ` runs as a
/// several-row product (compute-bound, where one row at a time is bound by reading the keys).
const ROW_BLOCK: usize = 32;

/// [`attend_head`] for many query rows of one KV head at once, into `out: [rows, D]`. Each row's
/// result is the bits [`attend_head`] gives it alone: its scores come from the same kernel in its
/// fixed order (a block's extra scores past a row's `seen` are computed and ignored), its softmax
/// is [`softmax_scaled`], and its weighted values are summed in increasing position, one
/// multiply and one add per term, as in [`weighted_sum`]. So a prompt processed at once equals
/// the same prompt fed a token at a time.
pub fn attend_rows(h: HeadRows, s: &mut Scratch, out: &mut [f32]) {
    let HeadRows { q, seen, keys, vals, scale } = h;
    let nq = seen.len();
    let Some(&smax) = seen.iter().max() else { return };
    let d = q.len() / nq;
    assert!(q.len() == nq * d && out.len() >= nq * d, "attend_rows: buffer sizes");
    assert!(keys.values() >= smax * d && vals.values() >= smax * d, "attend_rows: rows past the cache");
    let kernel = Kernel::detect();
    let Scratch { scores, rows, vrows } = s;
    let kf: &[f32] = match keys {
        KvRows::F32(k) => &k[..smax * d],
        KvRows::F16(k) => {
            widen(&k[..smax * d], rows);
            rows
        }
    };
    let vf: &[f32] = match vals {
        KvRows::F32(v) => &v[..smax * d],
        KvRows::F16(v) => {
            widen(&v[..smax * d], vrows);
            vrows
        }
    };
    for i0 in (0..nq).step_by(ROW_BLOCK) {
        let i1 = (i0 + ROW_BLOCK).min(nq);
        let m = i1 - i0;
        let sm = seen[i0..i1].iter().copied().max().unwrap_or(0);
        scores.clear();
        scores.resize(m * sm, 0.0);
        kernel.run(&q[i0 * d..i1 * d], m, &kf[..sm * d], sm, d, scores);
        for (r, &n) in seen[i0..i1].iter().enumerate() {
            softmax_scaled(&mut scores[r * sm..r * sm + n], scale);
        }
        let o = &mut out[i0 * d..i1 * d];
        o.fill(0.0);
        weighted_sums(scores, sm, &seen[i0..i1], vf, d, o);
    }
}

/// For each row `r`: `out[r·d..][..d] += Σ_{p < seen[r]} w[r·stride + p] · vals[p·d..][..d]`, added in
/// increasing `p`, one multiply and one add per term (the order of [`weighted_sum`]).
fn weighted_sums(w: &[f32], stride: usize, seen: &[usize], vals: &[f32], d: usize, out: &mut [f32]) {
    let nr = seen.len();
    let smax = seen.iter().copied().max().unwrap_or(0);
    assert!(
        seen.iter().enumerate().all(|(r, &n)| n <= stride && w.len() >= r * stride + n)
            && vals.len() >= smax * d
            && out.len() >= nr * d,
        "weighted_sums: buffer sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected; the sizes were checked above.
            unsafe { pv_avx512::rows(w, stride, seen, vals, d, out) };
            return;
        }
    }
    for (r, &n) in seen.iter().enumerate() {
        weighted_sum_portable(&w[r * stride..r * stride + n], &vals[..n * d], d, &mut out[r * d..(r + 1) * d]);
    }
}

/// The weighted sums on AVX-512: a tile of up to 4 rows × 64 columns in 16 registers, each value
/// row loaded once for the tile's rows. Per column the same multiply, then add, in increasing
/// position as the portable code, so the same bits.
#[cfg(target_arch = "x86_64")]
mod pv_avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F; the sizes must be as `weighted_sums` checks them.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(w: &[f32], stride: usize, seen: &[usize], vals: &[f32], d: usize, out: &mut [f32]) {
        let mut r0 = 0;
        while r0 < seen.len() {
            let rt = (seen.len() - r0).min(4);
            let (wp, sp, op) = (w.as_ptr().add(r0 * stride), &seen[r0..r0 + rt], out.as_mut_ptr().add(r0 * d));
            match rt {
                4 => tile::<4>(wp, stride, sp, vals.as_ptr(), d, op),
                3 => tile::<3>(wp, stride, sp, vals.as_ptr(), d, op),
                2 => tile::<2>(wp, stride, sp, vals.as_ptr(), d, op),
                _ => tile::<1>(wp, stride, sp, vals.as_ptr(), d, op),
            }
            r0 += rt;
        }
    }

    /// Rows `0..R` (weights at `w + r·stride`, outputs at `out + r·d`), columns in blocks of
    /// `16·B`, then one at a time.
    ///
    /// # Safety
    /// AVX-512F; `w + r·stride` readable for `seen[r]` values, `vals` for `max(seen)` rows of `d`,
    /// `out + r·d` writable for `d` values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize>(
        w: *const f32,
        stride: usize,
        seen: &[usize],
        vals: *const f32,
        d: usize,
        out: *mut f32,
    ) {
        let common = seen.iter().copied().min().unwrap_or(0);
        let mut c0 = 0;
        while c0 + 64 <= d {
            columns::<R, 4>(w, stride, seen, common, vals, d, c0, out);
            c0 += 64;
        }
        while c0 + 16 <= d {
            columns::<R, 1>(w, stride, seen, common, vals, d, c0, out);
            c0 += 16;
        }
        for c in c0..d {
            for (r, &n) in seen.iter().enumerate() {
                let mut a = *out.add(r * d + c);
                for p in 0..n {
                    a += *w.add(r * stride + p) * *vals.add(p * d + c);
                }
                *out.add(r * d + c) = a;
            }
        }
    }

    /// Columns `c0..c0 + 16·B` of the tile: positions every row sees for all rows together, then
    /// each row's own last positions.
    ///
    /// # Safety
    /// As for `tile`, with `c0 + 16·B ≤ d`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns<const R: usize, const B: usize>(
        w: *const f32,
        stride: usize,
        seen: &[usize],
        common: usize,
        vals: *const f32,
        d: usize,
        c0: usize,
        out: *mut f32,
    ) {
        let mut acc: [[__m512; B]; R] =
            std::array::from_fn(|r| std::array::from_fn(|b| _mm512_loadu_ps(out.add(r * d + c0 + 16 * b))));
        for p in 0..common {
            let v: [__m512; B] = std::array::from_fn(|b| _mm512_loadu_ps(vals.add(p * d + c0 + 16 * b)));
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w.add(r * stride + p));
                for (ab, vb) in a.iter_mut().zip(&v) {
                    *ab = _mm512_add_ps(*ab, _mm512_mul_ps(wv, *vb));
                }
            }
        }
        for (r, a) in acc.iter_mut().enumerate() {
            for p in common..seen[r] {
                let wv = _mm512_set1_ps(*w.add(r * stride + p));
                for (b, ab) in a.iter_mut().enumerate() {
                    *ab = _mm512_add_ps(*ab, _mm512_mul_ps(wv, _mm512_loadu_ps(vals.add(p * d + c0 + 16 * b))));
                }
            }
            for (b, ab) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * d + c0 + 16 * b), *ab);
            }
        }
    }
}

/// Whether this CPU reads f16 rows inside the kernels (F16C), instead of widening a block first.
fn f16_fused() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        if matches!(Kernel::detect(), Kernel::Avx2 | Kernel::Avx512 | Kernel::Avx512Vnni | Kernel::AvxVnni)
            && has!("f16c")
        {
            return true;
        }
    }
    false
}

/// The f16 cache read in place: `_mm256_cvtph_ps` widens 8 values as they are loaded, and every
/// sum runs in the order of the f32 path (the matrix kernel's 8 fused multiply-add lanes and
/// fixed tree for scores; separate multiply and add per column for the weighted values), so the
/// results are the same bits as widening first.
#[cfg(target_arch = "x86_64")]
mod f16_x86 {
    use crate::decode_matmul::{reduce, LANES};
    use half::f16;
    use std::arch::x86_64::*;

    /// Eight f16 values at `p`, widened to f32.
    ///
    /// # Safety
    /// The CPU must support F16C and AVX; `p..p+8` must be readable.
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    /// `scores[p] = q · keys[p]` for each row `p` of `keys` (`[scores.len(), q.len()]`), four rows
    /// at a time so that four independent sums are in flight.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (the lengths are asserted).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores(q: &[f32], keys: &[f16], scores: &mut [f32]) {
        const ROWS: usize = 4;
        let d = q.len();
        assert!(keys.len() >= scores.len() * d);
        let body = d - d % LANES;
        let mut p0 = 0;
        while p0 < scores.len() {
            let n = ROWS.min(scores.len() - p0);
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for c in (0..body).step_by(LANES) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(c));
                for (r, a) in acc.iter_mut().enumerate().take(n) {
                    *a = _mm256_fmadd_ps(qv, load8(keys.as_ptr().add((p0 + r) * d + c)), *a);
                }
            }
            for (r, a) in acc.iter().enumerate().take(n) {
                let mut lanes = [0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let mut s = reduce(&lanes);
                for t in body..d {
                    s = q[t].mul_add(keys[(p0 + r) * d + t].to_f32(), s);
                }
                scores[p0 + r] = s;
            }
            p0 += n;
        }
    }

    /// `out += Σ_p w[p] · vals[p]` (`vals`: `[w.len(), d]`), 64 then 8 columns in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (the lengths are asserted).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum(w: &[f32], vals: &[f16], d: usize, out: &mut [f32]) {
        assert!(vals.len() >= w.len() * d && out.len() >= d);
        let v = vals.as_ptr();
        let mut c0 = 0;
        while c0 + 64 <= d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (b, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(out.as_ptr().add(c0 + 8 * b));
            }
            for (p, &wp) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wp);
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, load8(v.add(p * d + c0 + 8 * b))));
                }
            }
            for (b, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * b), *a);
            }
            c0 += 64;
        }
        while c0 + 8 <= d {
            let mut a = _mm256_loadu_ps(out.as_ptr().add(c0));
            for (p, &wp) in w.iter().enumerate() {
                a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(wp), load8(v.add(p * d + c0))));
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c0), a);
            c0 += 8;
        }
        while c0 < d {
            let mut a = out[c0];
            for (p, &wp) in w.iter().enumerate() {
                a += wp * vals[p * d + c0].to_f32();
            }
            out[c0] = a;
            c0 += 1;
        }
    }
}

fn widen(src: &[f16], dst: &mut Vec<f32>) {
    dst.resize(src.len(), 0.0);
    src.convert_to_f32_slice(dst);
}

/// `out += Σ_p w_p·V[p]` (one row of [`weighted_sums`]).
#[inline(always)]
fn weighted_sum(w: &[f32], vals: &[f32], d: usize, out: &mut [f32]) {
    weighted_sums(w, w.len(), &[w.len()], vals, d, out)
}

/// [`weighted_sum`] in plain Rust, a block of columns at a time held in registers across all positions.
#[inline(always)]
fn weighted_sum_portable(w: &[f32], vals: &[f32], d: usize, out: &mut [f32]) {
    let mut c0 = 0;
    while c0 + 64 <= d {
        weighted_rows::<64>(w, vals, d, c0, out);
        c0 += 64;
    }
    while c0 + 8 <= d {
        weighted_rows::<8>(w, vals, d, c0, out);
        c0 += 8;
    }
    while c0 < d {
        weighted_rows::<1>(w, vals, d, c0, out);
        c0 += 1;
    }
}

/// `out[c0..c0 + W] += Σ_p w[p] · vals[p·d + c0..][..W]`, added in increasing `p`.
#[inline(always)]
fn weighted_rows<const W: usize>(w: &[f32], vals: &[f32], d: usize, c0: usize, out: &mut [f32]) {
    let mut acc: [f32; W] = out[c0..c0 + W].try_into().expect("block of W columns");
    for (p, &wp) in w.iter().enumerate() {
        let v: &[f32; W] = vals[p * d + c0..p * d + c0 + W].try_into().expect("block of W columns");
        for (a, x) in acc.iter_mut().zip(v) {
            *a += wp * x;
        }
    }
    out[c0..c0 + W].copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut x = seed;
        move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        }
    }

    /// The f16 cache equals the f32 arithmetic on the rounded values, bit for bit, at every length
    /// (across block boundaries) and head width (column blocks of 64, 8 and 1).
    #[test]
    fn f16_cache_is_the_f32_path_on_rounded_values() {
        let mut r = lcg(3);
        for d in [8usize, 13, 64, 72, 128] {
            let (mut k16, mut v16) = (KvRows::new(KvFormat::F16), KvRows::new(KvFormat::F16));
            let (mut k32, mut v32) = (KvRows::new(KvFormat::F32), KvRows::new(KvFormat::F32));
            let q: Vec<f32> = (0..d).map(|_| r()).collect();
            let mut s = Scratch::default();
            for seen in 1..=150 {
                let (kr, vr): (Vec<f32>, Vec<f32>) =
                    ((0..d).map(|_| r()).collect(), (0..d).map(|_| 8.0 * r()).collect());
                k16.push(&kr);
                v16.push(&vr);
                let round = |x: &[f32]| x.iter().map(|&y| f16::from_f32(y).to_f32()).collect::<Vec<_>>();
                k32.push(&round(&kr));
                v32.push(&round(&vr));
                let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
                let head = |keys, vals| Head { q: &q, keys, vals, seen, scale: 0.3 };
                attend_head(head(&k16, &v16), &mut s, &mut a);
                attend_head(head(&k32, &v32), &mut s, &mut b);
                assert_eq!(a, b, "d {d}, {seen} positions");
                // CPUs without F16C widen blocks of 64 positions first: the same bits.
                let mut c = vec![0f32; d];
                attend_head_impl(head(&k16, &v16), &mut s, &mut c, false);
                assert_eq!(c, b, "widening path, d {d}, {seen} positions");
            }
            assert_eq!(k16.bytes() * 2, k32.bytes());
        }
    }

    /// Both f16 paths (F16C inside the kernels, and widening a block first for CPUs without
    /// it) give the same bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_read_in_place_equals_widening_first() {
        if !f16_fused() {
            eprintln!("no F16C here: only the widening path runs");
            return;
        }
        let mut r = lcg(9);
        for d in [8usize, 13, 64, 72, 128] {
            let seen = 77;
            let q: Vec<f32> = (0..d).map(|_| r()).collect();
            let w: Vec<f32> = (0..seen).map(|_| r().abs()).collect();
            let rows: Vec<f16> = (0..seen * d).map(|_| f16::from_f32(r())).collect();
            let mut wide = Vec::new();
            widen(&rows, &mut wide);
            let (mut a, mut b) = (vec![0f32; seen], vec![0f32; seen]);
            // SAFETY: F16C/AVX2/FMA were detected above; `rows` holds `seen` rows of d, `a` seen.
            unsafe { f16_x86::scores(&q, &rows, &mut a) };
            Kernel::detect().run(&q, 1, &wide, seen, d, &mut b);
            assert_eq!(a, b, "scores, d {d}");
            let (mut a, mut b) = (vec![0.5f32; d], vec![0.5f32; d]);
            // SAFETY: as above; `w` holds `seen` weights and `a` d values.
            unsafe { f16_x86::weighted_sum(&w, &rows, d, &mut a) };
            weighted_sum(&w, &wide, d, &mut b);
            assert_eq!(a, b, "weighted values, d {d}");
        }
    }

    /// Many query rows at once (`attend_rows`, a prompt) give each row the bits it gets alone
    /// (`attend_head`, a decode step): rows of different lengths in one block, blocks past
    /// `ROW_BLOCK`, f32 and f16 caches, head widths with every column path.
    #[test]
    fn rows_together_equal_each_row_alone() {
        let mut r = lcg(5);
        for format in [KvFormat::F32, KvFormat::F16] {
            for d in [8usize, 13, 64, 72, 128] {
                let (mut keys, mut vals) = (KvRows::new(format), KvRows::new(format));
                let len = 90;
                for _ in 0..len {
                    keys.push(&(0..d).map(|_| r()).collect::<Vec<_>>());
                    vals.push(&(0..d).map(|_| 4.0 * r()).collect::<Vec<_>>());
                }
                // 70 rows: positions 20..90 with two query heads each (GQA order), unsorted tail.
                let mut seen: Vec<usize> = (20..55).flat_map(|p| [p + 1, p + 1]).collect();
                seen.extend([90, 1, 33]);
                let q: Vec<f32> = (0..seen.len() * d).map(|_| r()).collect();
                let mut together = vec![f32::NAN; seen.len() * d];
                let mut s = Scratch::default();
                let h = HeadRows { q: &q, seen: &seen, keys: &keys, vals: &vals, scale: 0.25 };
                attend_rows(h, &mut s, &mut together);
                for (i, &n) in seen.iter().enumerate() {
                    let mut alone = vec![0f32; d];
                    let head = Head { q: &q[i * d..(i + 1) * d], keys: &keys, vals: &vals, seen: n, scale: 0.25 };
                    attend_head(head, &mut s, &mut alone);
                    assert_eq!(&together[i * d..(i + 1) * d], &alone[..], "{format:?}, d {d}, row {i} ({n} seen)");
                }
            }
        }
    }

    /// The vector weighted sums equal the plain ones bit for bit, for tiles of 1–4 rows of unequal
    /// lengths and every column path, adding to what `out` holds.
    #[test]
    fn weighted_sums_equal_the_portable_order() {
        let mut r = lcg(11);
        for d in [5usize, 16, 64, 80, 128, 136] {
            let seen = [7usize, 31, 30, 1, 0, 64, 12];
            let stride = 64;
            let w: Vec<f32> = (0..seen.len() * stride).map(|_| r().abs()).collect();
            let vals: Vec<f32> = (0..64 * d).map(|_| r()).collect();
            let start: Vec<f32> = (0..seen.len() * d).map(|_| r()).collect();
            let mut fast = start.clone();
            weighted_sums(&w, stride, &seen, &vals, d, &mut fast);
            let mut plain = start.clone();
            for (i, &n) in seen.iter().enumerate() {
                weighted_sum_portable(&w[i * stride..i * stride + n], &vals, d, &mut plain[i * d..(i + 1) * d]);
            }
            assert_eq!(fast, plain, "d {d}");
        }
    }

    #[test]
    fn a_cache_keeps_its_format_and_truncates_whole_positions() {
        let mut c = SeqCache::new();
        c.prepare(2, KvFormat::F16).unwrap();
        for p in 0..5 {
            for rows in c.k.iter_mut().chain(c.v.iter_mut()) {
                rows.push(&[p as f32; 4]);
            }
            c.len += 1;
        }
        assert_eq!(c.bytes(), 4 * 5 * 4 * 2);
        c.truncate(3);
        assert_eq!((c.len(), c.bytes()), (3, 4 * 3 * 4 * 2));
        let err = c.prepare(2, KvFormat::F32).unwrap_err().to_string();
        assert!(err.contains("F16") && err.contains("F32"), "{err}");
        assert_eq!("f16".parse::<KvFormat>().unwrap(), KvFormat::F16);
        // Beyond f16's range: saturated, not infinite.
        let mut r = KvRows::new(KvFormat::F16);
        r.push(&[1e6, -1e6, 1.0]);
        let KvRows::F16(x) = &r else { unreachable!() };
        assert_eq!(x.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), vec![65504.0, -65504.0, 1.0]);
        assert!("bf16".parse::<KvFormat>().is_err());
    }
}
