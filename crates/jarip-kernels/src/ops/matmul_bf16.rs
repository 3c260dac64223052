//! bf16 matrix products with fp32 accumulation, the matmuls of `--precision bf16` training:
//! `dst (= | +=) lhs · rhs` with `lhs: [m×k]`, `rhs: [k×n]` (any strides), fp32 in and out.
//!
//! Math: every operand is rounded to bf16 as it is packed (round to nearest even, subnormals to
//! signed zero, NaN kept quiet: the rule of `vcvtne2ps2bf16`), products are exact in fp32, sums
//! are fp32. `dst` is written (or, with `accumulate`, added to with one plain fp32 add per element).
//! The backward of a bf16 linear layer is two more products of the same kind (`dx = dy·W`,
//! `dW = dyᵀ·x`, see [`super::linear`]): gradients stay fp32 tensors, only the products' inputs
//! are rounded.
//!
//! **Reduction order** (the portable and the AVX512-BF16 path give the same bits, tested): `k` is
//! taken in pairs `(2p, 2p+1)` (zero-padded to a multiple of [`K_ALIGN`]); for each output element,
//! one fp32 accumulator starts at `+0` and, for `p = 0, 1, …` in order, takes
//! `acc ← acc + a[2p+1]·b[2p+1]` then `acc ← acc + a[2p]·b[2p]`, each a fused multiply-add rounded
//! to nearest even with subnormal inputs read as zero and subnormal results flushed to zero — the
//! arithmetic Intel specifies for `vdpbf16ps`. [`Path::Bf16Portable`] does exactly that in scalar
//! code, so a bf16 run replays bit for bit on any x86-64 (or other) CPU.
//! [`Path::Bf16Amx`] (`tdpbf16ps`) sums in an order Intel leaves to the implementation: it is an
//! opt-in speed path whose runs replay only on AMX machines.
//!
//! Where the CPU's `vdpbf16ps` does not reproduce the portable bits
//! (checked once at run time, [`avx512bf16_exact`]) the AVX512-BF16 path is not offered.
//!
//! Layout: `lhs` is packed to `ceil(m/32)·32` rows of `kp = k/2` (padded) bf16 pairs, one `u32` per
//! pair (element `2p` in the low half), each 32-row block stored as [`KS`]-pair sub-panels so an
//! AMX A tile is contiguous; `rhs` to panels of [`NR`] columns, each `kp` rows of `NR` pairs — the
//! layout both `vdpbf16ps` (pairs broadcast from `lhs`) and AMX's B tiles read. Threads split `m`
//! into blocks of 32 rows; each output element is computed by one thread in the order above, so
//! the thread count does not change the bits.

use crate::decode_matmul::AVec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Columns per packed `rhs` panel (two 16-lane registers, two AMX B tiles).
pub const NR: usize = 32;
/// Rows per thread task (two AMX A tiles); `lhs` is zero-padded to a multiple.
pub const MB: usize = 32;
/// `k` is zero-padded to a multiple of this (one AMX tile row holds 32 bf16).
pub const K_ALIGN: usize = 32;

/// How the fused kernels multiply matrices: the run's precision and kernel path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// fp32 operands through the `gemm` crate.
    #[default]
    Fp32,
    /// bf16 operands, `vdpbf16ps`'s arithmetic in scalar code: any CPU, same bits as `Bf16Avx512`.
    Bf16Portable,
    /// bf16 operands on AVX512-BF16 (`vdpbf16ps`).
    Bf16Avx512,
    /// bf16 operands on AMX tiles (`tdpbf16ps`): fastest, replays only on AMX machines.
    Bf16Amx,
}

impl Path {
    pub fn is_bf16(self) -> bool {
        self != Path::Fp32
    }

    pub fn is_fp32(&self) -> bool {
        *self == Path::Fp32
    }

    /// The name used on the command line and in the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Path::Fp32 => "fp32",
            Path::Bf16Portable => "bf16_portable",
            Path::Bf16Avx512 => "bf16_avx512",
            Path::Bf16Amx => "bf16_amx",
        }
    }

    /// Whether this CPU (and OS) can run the path.
    pub fn available(self) -> bool {
        match self {
            Path::Fp32 | Path::Bf16Portable => true,
            Path::Bf16Avx512 => has_avx512bf16() && avx512bf16_exact(),
            Path::Bf16Amx => amx_permitted(),
        }
    }

    /// The paths that give the same bits as this one (a replay may run any of them).
    pub fn same_bits(self, other: Path) -> bool {
        let family = |p: Path| match p {
            Path::Fp32 => 0,
            Path::Bf16Portable | Path::Bf16Avx512 => 1,
            Path::Bf16Amx => 2,
        };
        family(self) == family(other)
    }

    /// The path to replay a run recorded with `self` on this machine: the same, or the portable
    /// path for AVX512-BF16 (same bits); an AMX run cannot be replayed without AMX.
    pub fn for_replay(self) -> Result<Path, String> {
        match self {
            p if p.available() => Ok(p),
            Path::Bf16Avx512 => Ok(Path::Bf16Portable),
            p => Err(format!(
                "the run multiplied with {} ({}), which this CPU ({}) cannot run; its bits come only from that \
                 instruction set",
                p.name(),
                p.describe(),
                crate::peak::cpu_model()
            )),
        }
    }

    /// One line for banners and reports.
    pub fn describe(self) -> &'static str {
        match self {
            Path::Fp32 => "fp32 matmuls (gemm crate)",
            Path::Bf16Portable => "bf16 matmuls, fp32 accumulation, portable vdpbf16ps arithmetic",
            Path::Bf16Avx512 => "bf16 matmuls, fp32 accumulation, AVX512-BF16 vdpbf16ps",
            Path::Bf16Amx => "bf16 matmuls, fp32 accumulation, AMX tdpbf16ps (replays only on AMX machines)",
        }
    }
}

/// The precision of a run's matrix products (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

/// The path a run multiplies with, and a one-line notice when the CPU changed the request.
///
/// `precision` `None` means: what `recorded` used when resuming, else fp32. `kernel` names a bf16
/// path (and implies bf16); without it bf16 runs on AVX512-BF16, or — where the CPU lacks it — in
/// fp32 with a notice (`bf16_portable` gives bf16's bits there, slowly). A resumed run must keep
/// its bits: a path that does not give the recorded path's bits is refused.
pub fn resolve(
    precision: Option<Precision>,
    kernel: Option<Path>,
    recorded: Option<Path>,
) -> Result<(Path, Option<String>), String> {
    resolve_on(precision, kernel, recorded, Path::available)
}

/// [`resolve`] on a CPU that runs the paths `runs` accepts (tests stand in for other CPUs).
fn resolve_on(
    precision: Option<Precision>,
    kernel: Option<Path>,
    recorded: Option<Path>,
    runs: impl Fn(Path) -> bool,
) -> Result<(Path, Option<String>), String> {
    let for_replay = |p: Path| match p {
        p if runs(p) => Ok(p),
        Path::Bf16Avx512 => Ok(Path::Bf16Portable),
        p => p.for_replay(),
    };
    if let Some(k) = kernel {
        if !k.is_bf16() {
            return Err("--bf16-kernel names a bf16 path (bf16_portable, bf16_avx512, bf16_amx)".into());
        }
        if precision == Some(Precision::Fp32) {
            return Err(format!("--bf16-kernel {} contradicts --precision fp32", k.name()));
        }
    }
    let mut notice = None;
    let want = match (precision, kernel, recorded) {
        (_, Some(k), _) => k,
        (None, None, Some(r)) => for_replay(r)?,
        (None | Some(Precision::Fp32), None, _) => Path::Fp32,
        (Some(Precision::Bf16), None, r) => match r {
            Some(r) if r.is_bf16() => for_replay(r)?,
            _ if runs(Path::Bf16Avx512) => Path::Bf16Avx512,
            _ => {
                let why = if has_avx512bf16() {
                    "its vdpbf16ps does not give the portable bf16 bits"
                } else {
                    "has no AVX512-BF16"
                };
                notice = Some(format!(
                    "note: this CPU ({}) {why}: training in fp32 (--bf16-kernel bf16_portable gives bf16's bits in \
                     slow portable code)",
                    crate::peak::cpu_model()
                ));
                Path::Fp32
            }
        },
    };
    if !runs(want) {
        return Err(format!(
            "--bf16-kernel {}: this CPU ({}) cannot run it ({})",
            want.name(),
            crate::peak::cpu_model(),
            want.describe()
        ));
    }
    if let Some(r) = recorded {
        if !want.same_bits(r) {
            return Err(format!(
                "the run multiplied with {}; continuing with {} would change its arithmetic (pass --precision {} \
                 or nothing)",
                r.name(),
                want.name(),
                if r.is_bf16() { "bf16" } else { "fp32" }
            ));
        }
    }
    Ok((want, notice))
}

impl std::str::FromStr for Path {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Path::Fp32, Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown matmul path {s:?} (fp32, bf16_portable, bf16_avx512, bf16_amx)"))
    }
}

fn has_avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU's `vdpbf16ps` gives the portable arithmetic's bits, checked once on one tile
/// whose inputs exercise rounding, cancellation and the subnormal edge. Intel specifies the
/// instruction exactly; a CPU that computed it otherwise would make `bf16_avx512` runs replay
/// nowhere else, so there the path counts as unavailable (bf16 then falls back with its notice).
pub fn avx512bf16_exact() -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if has_avx512bf16() {
            let k = 96;
            // A fixed pseudo-random sequence (no seed to record), scaled across the exponent range.
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = |i: usize, scales: &[f32]| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scales[i % scales.len()]
            };
            let a: Vec<f32> = (0..MB * k).map(|i| next(i, &[1.0, 1e-20, 1e20, 3e-19, 1.0])).collect();
            let b: Vec<f32> = (0..k * NR).map(|i| next(i, &[1.0, 1e-19, 1e-3, 1.0, 7e-20, 1.0, 1.0])).collect();
            let (pa, pb) = (pack_lhs(MB, k, &a, (k, 1)), pack_rhs(k, NR, &b, (NR, 1)));
            let (mut want, mut got) = ([0f32; MB * NR], [0f32; MB * NR]);
            block_portable(&pa.data, &pb.data, pa.kp, &mut want);
            // SAFETY: AVX-512F and AVX512-BF16 were detected; the packed tile has MB rows of `kp`
            // pairs and one panel of `kp × NR` pairs.
            unsafe { avx512::block(&pa.data, &pb.data, pa.kp, &mut got) };
            return want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits());
        }
        false
    })
}

/// Whether the CPU has AMX-BF16 and Linux granted this process the tile data state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once).
pub fn amx_permitted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::__cpuid_count;
            // CPUID leaf 7 subleaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
            let leaf7 = __cpuid_count(7, 0);
            if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only reads its two integer arguments
            // and changes this process's permitted XSAVE state; no memory is passed.
            let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
            rc == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// fp32 → bf16 bits, round to nearest even; zero and subnormals → signed zero; NaN stays a
/// (quiet) NaN (the conversion rule of `vcvtne2ps2bf16`).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let exp = b & 0x7f80_0000;
    if exp == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    if exp == 0x7f80_0000 {
        return if b & 0x007f_ffff != 0 { ((b >> 16) | 0x40) as u16 } else { (b >> 16) as u16 };
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline]
fn from_bf16(h: u32) -> f32 {
    f32::from_bits(h << 16)
}

/// `c + a·b` rounded once (the product of two bf16 values is exact in fp32 unless it leaves the
/// normal range, where the true fused multiply-add is used), subnormal results flushed to zero.
#[inline]
fn fma_ftz(a: f32, b: f32, c: f32) -> f32 {
    let p = a * b;
    let r = if p.is_normal() || a == 0.0 || b == 0.0 { c + p } else { a.mul_add(b, c) };
    if r != 0.0 && r.abs() < f32::MIN_POSITIVE {
        0f32.copysign(r)
    } else {
        r
    }
}

/// `vdpbf16ps` on one lane: `acc + a₁·b₁ + a₀·b₀` (odd pair element first), `a`, `b` packed pairs.
#[inline]
pub fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let acc = if acc != 0.0 && acc.abs() < f32::MIN_POSITIVE { 0f32.copysign(acc) } else { acc };
    let acc = fma_ftz(from_bf16(a >> 16), from_bf16(b >> 16), acc);
    fma_ftz(from_bf16(a & 0xffff), from_bf16(b & 0xffff), acc)
}

fn padded_kp(k: usize) -> usize {
    k.div_ceil(K_ALIGN) * K_ALIGN / 2
}

/// `lhs [m×k]` packed: `ceil(m/MB)` blocks of `MB` rows × `kp` pairs, laid out as [`KS`]-pair
/// sub-panels (see [`lhs_at`]).
pub struct PackedLhs {
    m: usize,
    k: usize,
    kp: usize,
    data: AVec<u32>,
}

/// `rhs [k×n]` packed: `ceil(n/NR)` panels of `kp × NR` pairs.
pub struct PackedRhs {
    k: usize,
    n: usize,
    data: AVec<u32>,
}

/// k-steps (16 pairs) ahead that the AMX kernel prefetches its tiles.
const PREFETCH_STEPS: usize = 1;

/// A packed operand's buffer of `n` pairs, cache-line aligned: an AMX tile row is 64 bytes, and
/// an unaligned one straddles two lines (every tile load then costs twice as many accesses).
/// Every pair is written by the packing (its padding with zeros); in this crate's tests the
/// buffer starts as [`POISON`], elsewhere it is not initialised.
fn packed_buffer(n: usize) -> AVec<u32> {
    let mut v = AVec::with_capacity(crate::decode_matmul::ALIGN, n);
    if cfg!(test) {
        v.resize(n, POISON);
    } else {
        // SAFETY: the capacity is `n`; every element is written by the packing before anything
        // reads it (see `pack_lhs`/`pack_rhs`), and u32 has no invalid bit patterns.
        unsafe { v.set_len(n) };
    }
    v
}

/// One `MB × NR` block of results.
#[repr(align(64))]
struct Tile([f32; MB * NR]);

/// What unwritten packed pairs hold in this crate's tests (two bf16 NaNs): a pair the packing
/// forgot would turn products into NaN there.
const POISON: u32 = 0x7fc1_7fc1;

/// Pairs per `lhs` sub-panel: a block of [`MB`] rows is stored as `kp/KS` sub-panels of
/// `MB × KS` pairs (row-major), so an AMX A tile (16 rows × 16 pairs) is 1 KiB of contiguous
/// memory and packing a transposed operand writes inside one 2 KiB sub-panel at a time.
pub const KS: usize = 16;

/// Index of pair `p` of row `r` inside a packed `lhs` block.
#[inline]
fn lhs_at(r: usize, p: usize) -> usize {
    (p / KS) * (MB * KS) + r * KS + p % KS
}

/// Packs `lhs[i, p] = lhs[i·rs + p·cs]` for `i < m`, `p < k`.
pub fn pack_lhs(m: usize, k: usize, lhs: &[f32], (rs, cs): (usize, usize)) -> PackedLhs {
    check_fits(lhs.len(), m, k, rs, cs, "lhs");
    let kp = padded_kp(k);
    let rows = m.div_ceil(MB) * MB;
    // Every pair is written below, the padding (rows past `m`, pairs past `k`) with zeros.
    let mut data = packed_buffer(rows * kp);
    // A transposed operand that is dense (`[k×m]` row-major) with whole blocks and sub-panels
    // (the weight gradients' dyᵀ at every model width) is converted and transposed in registers,
    // 16 × 16 pairs at a time, where the CPU has AVX-512.
    #[cfg(target_arch = "x86_64")]
    if cs != 1 && rs == 1 && cs == m && m.is_multiple_of(MB) && k.is_multiple_of(2 * KS) && has_avx512_bw() {
        data.par_chunks_mut(MB * kp).enumerate().for_each(|(ib, blk)| {
            // SAFETY: AVX-512F/BW were detected; `lhs` holds k rows of m values (checked by
            // `check_fits`), the block i0..i0 + MB lies inside them (m a multiple of MB), and
            // `blk` is one block of MB·kp pairs with kp = k/2 (k a multiple of 32).
            unsafe { transposed_block_avx512(&lhs[..k * m], m, k, ib * MB, blk) }
        });
        return PackedLhs { m, k, kp, data };
    }
    // Otherwise a transposed dense operand is converted in one pass first.
    let converted = (cs != 1 && rs == 1 && cs == m).then(|| {
        let mut conv = vec![0u16; k * m];
        conv.par_chunks_mut(m).zip(lhs[..k * m].par_chunks(m)).for_each(|(d, s)| convert(s, d));
        conv
    });
    data.par_chunks_mut(MB * kp).enumerate().for_each(|(ib, blk)| {
        let i0 = ib * MB;
        let rows = MB.min(m.saturating_sub(i0));
        // Padding: whole rows past `m`, and pairs past `k` of every row (the contiguous-row
        // path below rewrites the latter with its own zeros).
        for r in rows..MB {
            (0..kp).for_each(|q| blk[lhs_at(r, q)] = 0);
        }
        for r in 0..rows {
            (k.div_ceil(2)..kp).for_each(|q| blk[lhs_at(r, q)] = 0);
        }
        if cs == 1 {
            // Rows are contiguous: a pair is two neighbours, so a row packs as its bf16 values.
            for r in 0..rows {
                // Row r's pairs p lie at lhs_at(r, p): 16 contiguous per sub-panel, MB·KS apart.
                pairs_into_subpanels(&lhs[(i0 + r) * rs..(i0 + r) * rs + k], &mut blk[lhs_at(r, 0)..], MB * KS);
            }
        } else if let Some(conv) = &converted {
            // Columns are contiguous (a transposed operand): pair q of row i is source rows 2q
            // and 2q+1 at column i; both reads are contiguous, the writes stay in one sub-panel.
            for q in 0..k.div_ceil(2) {
                let lo = &conv[2 * q * m + i0..2 * q * m + i0 + rows];
                let hi = (2 * q + 1 < k).then(|| &conv[(2 * q + 1) * m + i0..(2 * q + 1) * m + i0 + rows]);
                for r in 0..rows {
                    blk[lhs_at(r, q)] = lo[r] as u32 | (hi.map_or(0, |h| h[r]) as u32) << 16;
                }
            }
        } else {
            // Any other strides: element by element.
            for r in 0..rows {
                for q in 0..k.div_ceil(2) {
                    let at = |p: usize| if p < k { to_bf16(lhs[(i0 + r) * rs + p * cs]) as u32 } else { 0 };
                    blk[lhs_at(r, q)] = at(2 * q) | at(2 * q + 1) << 16;
                }
            }
        }
    });
    PackedLhs { m, k, kp, data }
}

/// Packs `rhs[p, j] = rhs[p·rs + j·cs]` for `p < k`, `j < n`.
pub fn pack_rhs(k: usize, n: usize, rhs: &[f32], (rs, cs): (usize, usize)) -> PackedRhs {
    check_fits(rhs.len(), k, n, rs, cs, "rhs");
    let kp = padded_kp(k);
    let panels = n.div_ceil(NR);
    // Every pair is written below, the padding (columns past `n`, pairs past `k`) with zeros.
    let mut data = packed_buffer(panels * kp * NR);
    data.par_chunks_mut(kp * NR).enumerate().for_each(|(jb, panel)| {
        let j0 = jb * NR;
        let cols = NR.min(n - j0);
        for q in 0..kp {
            let row = &mut panel[q * NR..(q + 1) * NR];
            row[cols..].fill(0);
            if q >= k.div_ceil(2) {
                row[..cols].fill(0);
            }
        }
        if rs == 1 {
            // Each column is contiguous along k (x·Wᵀ: a row of W): its pairs are neighbours.
            let mut tmp = vec![0u16; 2 * kp];
            for jj in 0..cols {
                let src = &rhs[(j0 + jj) * cs..(j0 + jj) * cs + k];
                convert(src, &mut tmp[..k]);
                for (q, t) in tmp.chunks_exact(2).enumerate() {
                    panel[q * NR + jj] = t[0] as u32 | (t[1] as u32) << 16;
                }
            }
        } else if cs == 1 && cols == NR {
            // Rows contiguous along n, a whole panel wide: rows 2q and 2q+1 straight into pair
            // row q (one pass).
            panel_from_rows(rhs, rs, j0, k, panel);
        } else {
            // Rows are contiguous along n (or strided): rows 2q and 2q+1 interleave into pair row q.
            let (mut lo, mut hi) = ([0u16; NR], [0u16; NR]);
            for q in 0..k.div_ceil(2) {
                let row = |p: usize, out: &mut [u16; NR]| {
                    if p >= k {
                        out.fill(0);
                    } else if cs == 1 {
                        convert(&rhs[p * rs + j0..p * rs + j0 + cols], &mut out[..cols]);
                    } else {
                        out.iter_mut()
                            .take(cols)
                            .enumerate()
                            .for_each(|(jj, o)| *o = to_bf16(rhs[p * rs + (j0 + jj) * cs]));
                    }
                };
                row(2 * q, &mut lo);
                row(2 * q + 1, &mut hi);
                for jj in 0..cols {
                    panel[q * NR + jj] = lo[jj] as u32 | (hi[jj] as u32) << 16;
                }
            }
        }
    });
    PackedRhs { k, n, data }
}

/// `src` (one row, `k` values) as bf16 pairs into sub-panels: pairs `16s..16s + 16` (values
/// `32s..32s + 32`) at `dst[s·stride..][..16]`, a missing last value as zero; the same rounding as
/// [`convert`], vectorised with AVX-512 where the CPU has it (one pass, no staging buffer).
fn pairs_into_subpanels(src: &[f32], dst: &mut [u32], stride: usize) {
    let subs = src.len().div_ceil(2 * KS);
    assert!(stride >= KS && (subs == 0 || dst.len() >= (subs - 1) * stride + KS), "pairs_into_subpanels: sizes");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: AVX-512F/BW were just detected; the sizes were checked above.
        unsafe { pairs_into_subpanels_avx512(src, dst, stride) };
        return;
    }
    for (s, chunk) in src.chunks(2 * KS).enumerate() {
        subpanel_plain(chunk, &mut dst[s * stride..s * stride + KS]);
    }
}

/// Up to 32 values as one sub-panel row of 16 pairs (missing values as zero), in plain code.
fn subpanel_plain(chunk: &[f32], dst: &mut [u32]) {
    let mut bf = [0u16; 2 * KS];
    convert_plain(chunk, &mut bf[..chunk.len()]);
    for (q, d) in dst[..KS].iter_mut().enumerate() {
        *d = bf[2 * q] as u32 | (bf[2 * q + 1] as u32) << 16;
    }
}

/// [`pairs_into_subpanels`] on AVX-512: 32 values → 32 bf16 → 16 pairs, stored as 64 bytes
/// (little-endian: value 2p is a pair's low half). The arithmetic is [`convert_avx512`]'s.
///
/// # Safety
/// The CPU must support AVX-512F/BW; `dst` must hold `(⌈len/32⌉ − 1)·stride + 16` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pairs_into_subpanels_avx512(src: &[f32], dst: &mut [u32], stride: usize) {
    use std::arch::x86_64::*;
    let full = src.len() / (2 * KS);
    for s in 0..full {
        // SAFETY: values 32s..32s + 32 exist (s < full); pairs s·stride..+16 exist (caller).
        unsafe {
            let lo = bf16_lanes(_mm512_loadu_si512(src.as_ptr().add(32 * s) as *const __m512i));
            let hi = bf16_lanes(_mm512_loadu_si512(src.as_ptr().add(32 * s + 16) as *const __m512i));
            let d = dst.as_mut_ptr().add(s * stride) as *mut __m256i;
            _mm256_storeu_si256(d, _mm512_cvtepi32_epi16(lo));
            _mm256_storeu_si256(d.add(1), _mm512_cvtepi32_epi16(hi));
        }
    }
    if full * 2 * KS < src.len() {
        subpanel_plain(&src[full * 2 * KS..], &mut dst[full * stride..full * stride + KS]);
    }
}

/// Whether the CPU has AVX-512F and BW (the packing's vector paths).
fn has_avx512_bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One [`MB`]-row block of a transposed `lhs` (`src: [k × m]` row-major, block rows = source
/// columns `i0..i0 + MB`) packed: for each sub-panel (pairs `16s..16s + 16` = source rows
/// `32s..32s + 32`) and each half of the block's rows, sixteen vectors of pairs over 16 rows
/// (`bf16(src[2q][i]) | bf16(src[2q+1][i]) << 16`) are transposed into sixteen rows of 16 pairs
/// and stored whole. The rounding is [`bf16_lanes`]' (the scalar rule), so the pairs are those
/// of the plain path.
///
/// # Safety
/// The CPU must support AVX-512F/BW; `src` must hold `k·m` values with `m` a multiple of
/// [`MB`], `i0 + MB ≤ m`, `k` a multiple of 32, and `blk` [`MB`]`·k/2` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transposed_block_avx512(src: &[f32], m: usize, k: usize, i0: usize, blk: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(src.len() >= k * m && i0 + MB <= m && k.is_multiple_of(2 * KS) && blk.len() >= MB * k / 2);
    for s in 0..k / (2 * KS) {
        for half in 0..MB / 16 {
            let c0 = i0 + 16 * half;
            // Pairs q = 16s + j over rows c0..c0 + 16.
            // SAFETY: rows 32s..32s + 32 < k of `src`, columns c0..c0 + 16 ≤ m (asserted).
            let p: [__m512i; 16] = std::array::from_fn(|j| unsafe {
                let lo = src.as_ptr().add((32 * s + 2 * j) * m + c0);
                let a = bf16_lanes(_mm512_loadu_si512(lo as *const __m512i));
                let b = bf16_lanes(_mm512_loadu_si512(lo.add(m) as *const __m512i));
                _mm512_or_si512(a, _mm512_slli_epi32::<16>(b))
            });
            let rows = transpose16(p);
            for (r, row) in rows.iter().enumerate() {
                // SAFETY: pairs lhs_at(16·half + r, 16s..16s + 16) are 16 contiguous u32 in `blk`.
                unsafe {
                    _mm512_storeu_si512(blk.as_mut_ptr().add(lhs_at(16 * half + r, 16 * s)) as *mut __m512i, *row)
                };
            }
        }
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit values held as 16 rows: element `c` of output row
/// `r` is element `r` of input row `c`. Interleave 32-bit, then 64-bit neighbours (each 128-bit
/// lane then holds a 4 × 4 block transposed), then gather lanes across registers.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    let a: [__m512i; 16] = std::array::from_fn(|i| {
        let (x, y) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // b[4j + c], lane l: rows 4j..4j + 4 at column 4l + c.
    let b: [__m512i; 16] = std::array::from_fn(|i| {
        let (j, c) = (i / 4, i % 4);
        let (x, y) = (a[4 * j + (c / 2)], a[4 * j + 2 + (c / 2)]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let (x0, x1, x2, x3) = (b[c], b[4 + c], b[8 + c], b[12 + c]);
        let u0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(x0, x1);
        let u1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(x0, x1);
        let u2 = _mm512_shuffle_i32x4::<0b10_00_10_00>(x2, x3);
        let u3 = _mm512_shuffle_i32x4::<0b11_01_11_01>(x2, x3);
        out[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(u0, u2);
        out[8 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(u0, u2);
        out[4 + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(u1, u3);
        out[12 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(u1, u3);
    }
    out
}

/// One whole panel of the right operand from rows contiguous along `n`:
/// `panel[q·NR + j] = bf16(rhs[2q][j0 + j]) | bf16(rhs[2q+1][j0 + j]) << 16` (row `k`, past the
/// end, as zero), by [`convert`]'s rule; AVX-512 where the CPU has it, in one call per panel.
fn panel_from_rows(rhs: &[f32], rs: usize, j0: usize, k: usize, panel: &mut [u32]) {
    assert!(k == 0 || rhs.len() >= (k - 1) * rs + j0 + NR, "panel_from_rows: rhs too short");
    assert!(panel.len() >= k.div_ceil(2) * NR, "panel_from_rows: panel too short");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected; the sizes were checked above.
        unsafe { panel_from_rows_avx512(rhs, rs, j0, k, panel) };
        return;
    }
    let (mut a, mut b) = ([0u16; NR], [0u16; NR]);
    for q in 0..k.div_ceil(2) {
        convert_plain(&rhs[2 * q * rs + j0..2 * q * rs + j0 + NR], &mut a);
        b.fill(0);
        if 2 * q + 1 < k {
            convert_plain(&rhs[(2 * q + 1) * rs + j0..(2 * q + 1) * rs + j0 + NR], &mut b);
        }
        for ((d, a), b) in panel[q * NR..(q + 1) * NR].iter_mut().zip(a).zip(b) {
            *d = a as u32 | (b as u32) << 16;
        }
    }
}

/// [`panel_from_rows`] on AVX-512: the rounding of [`bf16_lanes`], the odd row shifted into the
/// high halves; the rows four pairs ahead are prefetched (they are `rs` apart, a stride the
/// hardware prefetcher follows slowly).
///
/// # Safety
/// The CPU must support AVX-512F; the sizes must be as `panel_from_rows` checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_from_rows_avx512(rhs: &[f32], rs: usize, j0: usize, k: usize, panel: &mut [u32]) {
    use std::arch::x86_64::*;
    let base = rhs.as_ptr().add(j0);
    for q in 0..k.div_ceil(2) {
        let (p0, p1) = (2 * q, 2 * q + 1);
        if p0 + 8 < k {
            for p in [p0 + 8, p0 + 9] {
                // SAFETY: prefetches never fault; row p < k lies inside `rhs` anyway.
                _mm_prefetch::<_MM_HINT_T0>(base.add(p * rs) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(base.add(p * rs + 16) as *const i8);
            }
        }
        for h in 0..NR / 16 {
            // SAFETY: rows p0 (and p1 when < k) hold NR values from j0 (checked by the caller);
            // pair row q of the panel holds NR pairs.
            let a = bf16_lanes(_mm512_loadu_si512(base.add(p0 * rs + 16 * h) as *const __m512i));
            let b = if p1 < k {
                bf16_lanes(_mm512_loadu_si512(base.add(p1 * rs + 16 * h) as *const __m512i))
            } else {
                _mm512_setzero_si512()
            };
            let pair = _mm512_or_si512(a, _mm512_slli_epi32::<16>(b));
            _mm512_storeu_si512(panel.as_mut_ptr().add(q * NR + 16 * h) as *mut __m512i, pair);
        }
    }
}

/// Sixteen f32 (as bits) rounded to bf16, each in the low half of its 32-bit lane: the rule of
/// [`convert_plain`] (nearest even, NaN quieted, subnormals to signed zero) in integer arithmetic.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bf16_lanes(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let hi = _mm512_srli_epi32::<16>(x);
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        x,
        _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1))),
    ));
    let nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff)), _mm512_set1_epi32(0x7f80_0000));
    let zero = _mm512_cmpeq_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7f80_0000)), _mm512_setzero_si512());
    let r = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    _mm512_mask_blend_epi32(zero, r, _mm512_and_si512(hi, _mm512_set1_epi32(0x8000)))
}

/// `dst[i] = to_bf16(src[i])`, vectorised with AVX-512 where the CPU has it (integer arithmetic
/// only, so every instruction set gives the same bits).
fn convert(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU supports AVX-512F/BW, checked just above.
        unsafe { convert_avx512(src, dst) };
        return;
    }
    convert_plain(src, dst)
}

#[inline(always)]
fn convert_plain(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        // Branch-free form of `to_bf16` (selects, so the loop vectorises).
        let b = x.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
        let v = if nan { ((b >> 16) | 0x40) as u16 } else { rounded };
        *d = if b & 0x7f80_0000 == 0 { ((b >> 16) & 0x8000) as u16 } else { v };
    }
}

/// [`convert_plain`] on 16 lanes at a time with AVX-512F integer instructions (the same
/// arithmetic, so the same bits), the tail in scalar code.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn convert_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let full = n / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: `i + 16 <= full <= src.len()`: 16 floats are read.
        let x = unsafe { _mm512_loadu_si512(src.as_ptr().add(i) as *const __m512i) };
        // SAFETY: AVX-512F (this function's requirement).
        let r = unsafe { bf16_lanes(x) };
        // SAFETY: `i + 16 <= dst.len()`: 16 u16 (32 bytes) are written.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, _mm512_cvtepi32_epi16(r)) };
    }
    convert_plain(&src[full..n], &mut dst[full..n]);
}

fn check_fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(
            last < len,
            "bf16 matmul: {what} [{rows}×{cols}] with strides ({rs}, {cs}) needs {} elements, has {len}",
            last + 1
        );
    }
}

/// `dst[m×n] (= | +=) lhs·rhs` (dense `dst`, row stride `n`) on `path` (a bf16 path).
pub fn matmul(path: Path, a: &PackedLhs, b: &PackedRhs, dst: &mut [f32], accumulate: bool) {
    assert_eq!(a.k, b.k, "bf16 matmul: inner dimensions differ");
    assert!(path.is_bf16(), "bf16 matmul on path {path:?}");
    let (m, n, kp) = (a.m, b.n, a.kp);
    assert!(dst.len() >= m * n, "bf16 matmul: dst too small");
    if m == 0 || n == 0 {
        return;
    }
    assert!(path.available(), "bf16 matmul: this CPU cannot run {}", path.name());
    dst[..m * n].par_chunks_mut(MB * n).enumerate().for_each(|(ib, out)| {
        let rows = out.len() / n;
        let a_blk = &a.data[ib * MB * kp..(ib + 1) * MB * kp];
        // Cache-line aligned: AMX stores its accumulator tiles here in 64-byte rows.
        let mut tile = Tile([0f32; MB * NR]);
        let tile = &mut tile.0;
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if path == Path::Bf16Amx {
            amx::configure_this_thread();
        }
        for jb in 0..n.div_ceil(NR) {
            let panel = &b.data[jb * kp * NR..(jb + 1) * kp * NR];
            match path {
                Path::Bf16Portable | Path::Fp32 => block_portable(a_blk, panel, kp, tile),
                #[cfg(target_arch = "x86_64")]
                Path::Bf16Avx512 => {
                    // SAFETY: `available()` confirmed AVX-512F and AVX512-BF16; `a_blk` holds
                    // MB rows of `kp` pairs and `panel` `kp` rows of NR pairs, as the kernel reads.
                    unsafe { avx512::block(a_blk, panel, kp, tile) }
                }
                #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                Path::Bf16Amx => {
                    // SAFETY: AMX is permitted (`available()`), this thread loaded the tile
                    // configuration (`_tiles`), and the buffers have the sizes the tiles read.
                    unsafe { amx::block(a_blk, panel, kp, tile) }
                }
                #[allow(unreachable_patterns)]
                _ => unreachable!("checked by available()"),
            }
            let j0 = jb * NR;
            let cols = NR.min(n - j0);
            for r in 0..rows {
                let d = &mut out[r * n + j0..r * n + j0 + cols];
                let t = &tile[r * NR..r * NR + cols];
                if accumulate {
                    d.iter_mut().zip(t).for_each(|(d, t)| *d += t);
                } else if cols == NR {
                    // A constant length: inlined moves rather than a library call per row.
                    let (d, t): (&mut [f32; NR], &[f32; NR]) = (d.try_into().expect("NR"), t.try_into().expect("NR"));
                    *d = *t;
                } else {
                    d.copy_from_slice(t);
                }
            }
        }
    });
}

/// `dst[m×n] (= | +=) lhs[m×k]·rhs[k×n]`, strides in elements, on `path`: bf16 packing both
/// operands, or fp32 through `gemm` ([`super::linear::mm`]).
#[allow(clippy::too_many_arguments)]
pub fn mm(
    path: Path,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    if !path.is_bf16() {
        return super::linear::mm((m, n, k), dst, accumulate, lhs, lhs_strides, rhs, rhs_strides);
    }
    let a = pack_lhs(m, k, lhs, lhs_strides);
    let b = pack_rhs(k, n, rhs, rhs_strides);
    matmul(path, &a, &b, dst, accumulate);
}

/// One `MB × NR` tile in the stated order, scalar.
fn block_portable(a: &[u32], panel: &[u32], kp: usize, tile: &mut [f32; MB * NR]) {
    for (r, out) in tile.chunks_exact_mut(NR).enumerate() {
        out.fill(0.0);
        for p in 0..kp {
            let ap = a[lhs_at(r, p)];
            let bp = &panel[p * NR..(p + 1) * NR];
            for (o, &b) in out.iter_mut().zip(bp) {
                *o = dot_pair(*o, ap, b);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MB, NR};
    use std::arch::x86_64::*;

    /// `tile[MB×NR] = a[MB rows of kp pairs] · panel[kp × NR pairs]`, eight rows at a time: per
    /// pair `p`, each row's pair is broadcast and `vdpbf16ps` adds it into two 16-lane accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX512-BF16; `a.len() >= MB·kp`, `panel.len() >= kp·NR`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block(a: &[u32], panel: &[u32], kp: usize, tile: &mut [f32; MB * NR]) {
        assert!(a.len() >= MB * kp && panel.len() >= kp * NR);
        const R: usize = 8;
        for r0 in (0..MB).step_by(R) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for p in 0..kp {
                // SAFETY: `p < kp`, so the 32 lanes `p·NR..p·NR+32` lie inside `panel`.
                let (b0, b1) = unsafe {
                    let bp = panel.as_ptr().add(p * NR) as *const __m512i;
                    (_mm512_loadu_si512(bp), _mm512_loadu_si512(bp.add(1)))
                };
                let (b0, b1) =
                    (std::mem::transmute::<__m512i, __m512bh>(b0), std::mem::transmute::<__m512i, __m512bh>(b1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x =
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(a[super::lhs_at(r0 + r, p)] as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row `r0 + r < MB` of `tile` has NR = 32 floats: two 16-lane stores.
                unsafe {
                    let t = tile.as_mut_ptr().add((r0 + r) * NR);
                    _mm512_storeu_ps(t, acc[0]);
                    _mm512_storeu_ps(t.add(16), acc[1]);
                }
            }
        }
    }
}

/// The AMX peak's timed loop (see [`crate::peak`]): `iters` rounds of four independent
/// `tdpbf16ps` on zeroed tiles; returns the FLOPs done. Panics where AMX is not permitted.
pub(crate) fn amx_peak_kernel(iters: u64) -> f64 {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let _tiles = amx::TileConfig::load();
        // SAFETY: this thread's tiles are configured (`_tiles`); the loop touches registers only.
        unsafe { amx::peak_loop(iters) };
        (iters * 4 * 16 * 16 * 32 * 2) as f64
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = iters;
        panic!("AMX needs x86-64 Linux")
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use super::{lhs_at, KS, MB, NR};
    use std::arch::asm;

    /// This thread's tile configuration (palette 1; tiles 0–7 of 16 rows × 64 bytes), released
    /// when dropped.
    pub struct TileConfig;

    impl TileConfig {
        pub fn load() -> Self {
            assert!(super::amx_permitted(), "AMX not permitted");
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette 1
            for t in 0..8 {
                cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
                cfg[48 + t] = 16; // rows
            }
            // SAFETY: AMX is permitted for this process (asserted); `cfg` is a valid 64-byte
            // palette-1 configuration that `ldtilecfg` only reads.
            unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly)) };
            TileConfig
        }
    }

    /// Configures this thread's tiles once and keeps them (the configuration is the same for
    /// every product). Loading and releasing per 32-row task cost more than the task's products
    /// at small `k` (measured: 2048×32×384 at 360 GFLOP/s on one thread).
    pub fn configure_this_thread() {
        thread_local! {
            static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        CONFIGURED.with(|c| {
            if !c.get() {
                std::mem::forget(TileConfig::load());
                c.set(true);
            }
        });
    }

    impl Drop for TileConfig {
        fn drop(&mut self) {
            // SAFETY: this thread configured the tiles (`load`); releasing returns them to init state.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// Four independent accumulator chains of `tdpbf16ps` on zeroed tiles, `iters` rounds.
    ///
    /// # Safety
    /// AMX must be permitted and this thread's tiles configured by [`TileConfig::load`].
    pub unsafe fn peak_loop(iters: u64) {
        // SAFETY: tiles configured (caller); these instructions touch tile registers only.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            for _ in 0..iters {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                );
            }
        }
    }

    /// `tile[32×32] = a[32 rows of kp pairs] · panel[kp × 32 pairs]`: four fp32 accumulator tiles
    /// (tmm0–3), two A tiles (rows 0–15, 16–31: tmm4–5) and two B tiles (columns 0–15, 16–31:
    /// tmm6–7) per 16 pairs of `k`.
    ///
    /// # Safety
    /// AMX must be permitted and this thread's tiles configured by [`TileConfig::load`];
    /// `kp` a multiple of 16, `a.len() >= MB·kp`, `panel.len() >= kp·NR`.
    pub unsafe fn block(a: &[u32], panel: &[u32], kp: usize, tile: &mut [f32; MB * NR]) {
        assert!(kp.is_multiple_of(16) && a.len() >= MB * kp && panel.len() >= kp * NR);
        let (a_stride, b_stride, c_stride) = (KS * 4, NR * 4, NR * 4);
        // SAFETY: tiles configured (caller); `tilezero` touches no memory.
        unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) };
        for p0 in (0..kp).step_by(16) {
            // The next 16 pairs' A and B tiles (2 KiB each, contiguous) into L1 while these
            // compute: tile loads stall on L2 otherwise.
            let ahead = p0 + 16 * super::PREFETCH_STEPS;
            if ahead < kp {
                let (na, nb) = (a[lhs_at(0, ahead)..].as_ptr(), panel[ahead * NR..].as_ptr());
                for line in 0..32 {
                    // SAFETY: prefetches never fault; the addresses lie inside `a` and `panel`
                    // (sub-panel `ahead/KS` and panel rows `ahead..ahead + 16`, 2 KiB each).
                    unsafe {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            na.add(16 * line) as *const i8
                        );
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            nb.add(16 * line) as *const i8
                        );
                    }
                }
            }
            let a0 = a[lhs_at(0, p0)..].as_ptr();
            let a1 = a[lhs_at(16, p0)..].as_ptr();
            let b0 = panel[p0 * NR..].as_ptr();
            let b1 = panel[p0 * NR + 16..].as_ptr();
            // SAFETY: each load reads 16 rows of 64 bytes: A rows 0–15 and 16–31 of sub-panel
            // p0/KS (1 KiB each, contiguous, inside `a`: MB·kp), B rows (p0 + q)·NR (+16) .. +16 pairs for q < 16
            // (inside `panel`: kp·NR). The dot products touch registers only.
            unsafe {
                asm!(
                    // Each load just before its first use: tiles are not renamed, so a load
                    // waits until the products reading its previous contents are done, and
                    // interleaving lets those waits overlap other products.
                    "tileloadd tmm4, [{a0} + {as_}*1]",
                    "tileloadd tmm6, [{b0} + {bs}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {bs}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {as_}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    as_ = in(reg) a_stride,
                    bs = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
        }
        let t = tile.as_mut_ptr();
        // SAFETY: each store writes 16 rows of 64 bytes at row stride NR·4 bytes inside `tile`
        // (32 rows × 32 floats): quadrants (0,0), (0,16), (16,0), (16,16).
        unsafe {
            asm!(
                "tilestored [{c00} + {cs}*1], tmm0",
                "tilestored [{c01} + {cs}*1], tmm1",
                "tilestored [{c10} + {cs}*1], tmm2",
                "tilestored [{c11} + {cs}*1], tmm3",
                c00 = in(reg) t,
                c01 = in(reg) t.add(16),
                c10 = in(reg) t.add(16 * NR),
                c11 = in(reg) t.add(16 * NR + 16),
                cs = in(reg) c_stride,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::ops::testing::randn(&[len], seed, scale).to_vec1::<f32>().unwrap()
    }

    /// Plain composition: round both operands to bf16, multiply and sum in f64.
    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let r = |x: f32| from_bf16(to_bf16(x) as u32);
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| r(a[i * k + p]) as f64 * r(b[p * n + j]) as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn conversion_rounds_to_nearest_even_and_flushes_subnormals() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between two bf16 values: ties to even (down); just above rounds up.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // odd: tie goes up
        assert_eq!(to_bf16(-f32::from_bits(1)), 0x8000);
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80); // rounds to infinity
        assert!(from_bf16(to_bf16(f32::NAN) as u32).is_nan());
        // The vectorised conversion agrees with the scalar rule on every special class.
        let xs: Vec<f32> =
            [0.0, -0.0, 1.0, -2.5, f32::MAX, -f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]
                .into_iter()
                .chain((0..4000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))))
                .collect();
        let mut got = vec![0u16; xs.len()];
        convert(&xs, &mut got);
        for (x, g) in xs.iter().zip(&got) {
            assert_eq!(*g, to_bf16(*x), "{x:e} ({:#x})", x.to_bits());
        }
    }

    /// Rows converted straight into sub-panels (vector and plain code) hold the scalar rule's
    /// pairs, the tail of a row whose length is not a multiple of 32 zero-padded.
    #[test]
    fn rows_pack_into_subpanels_as_the_scalar_rule() {
        for k in [1usize, 31, 32, 33, 64, 95, 384] {
            let src: Vec<f32> =
                (0..k as u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) ^ 0x3f00_0000)).collect();
            let stride = MB * KS;
            let subs = k.div_ceil(2 * KS);
            let want: Vec<u32> = (0..subs * KS)
                .map(|p| {
                    let at = |i: usize| if i < k { to_bf16(src[i]) as u32 } else { 0 };
                    at(2 * p) | at(2 * p + 1) << 16
                })
                .collect();
            let mut got = vec![POISON; (subs - 1) * stride + KS];
            pairs_into_subpanels(&src, &mut got, stride);
            let mut plain = vec![POISON; (subs - 1) * stride + KS];
            for (s, chunk) in src.chunks(2 * KS).enumerate() {
                subpanel_plain(chunk, &mut plain[s * stride..s * stride + KS]);
            }
            for s in 0..subs {
                assert_eq!(&got[s * stride..s * stride + KS], &want[s * KS..(s + 1) * KS], "k {k}, sub-panel {s}");
                assert_eq!(&plain[s * stride..s * stride + KS], &want[s * KS..(s + 1) * KS], "plain, k {k}");
            }
            // Between sub-panels nothing is touched.
            assert!(subs < 2 || got[KS..stride].iter().all(|&g| g == POISON));
        }
    }

    /// A dense transposed operand (the weight gradients' dyᵀ) packs to the scalar rule's pairs
    /// on every path: whole blocks (the in-register transpose where the CPU has AVX-512) and
    /// shapes that fall back to the plain path.
    #[test]
    fn transposed_operands_pack_to_the_scalar_pairs() {
        for (m, k) in [(32usize, 32usize), (96, 64), (64, 96), (40, 32), (32, 50)] {
            let src: Vec<f32> =
                (0..(k * m) as u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) >> 2 ^ 0x3e00_0000)).collect();
            let packed = pack_lhs(m, k, &src, (1, m));
            let kp = padded_kp(k);
            for ib in 0..m.div_ceil(MB) {
                let blk = &packed.data[ib * MB * kp..(ib + 1) * MB * kp];
                for r in 0..MB.min(m - ib * MB) {
                    for q in 0..kp {
                        let at = |p: usize| if p < k { to_bf16(src[p * m + ib * MB + r]) as u32 } else { 0 };
                        assert_eq!(
                            blk[lhs_at(r, q)],
                            at(2 * q) | at(2 * q + 1) << 16,
                            "m {m} k {k}: row {} pair {q}",
                            ib * MB + r
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_matches_the_bf16_composition() {
        // Odd sizes: padding of m, n and k; strided (transposed) operands as the backward uses.
        let (m, n, k) = (45, 70, 83);
        let a = data(m * k, 1, 1.0);
        let b = data(k * n, 2, 1.0);
        let want = reference(m, n, k, &a, &b);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n×k]
        for path in [Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx] {
            if !path.available() {
                eprintln!("skipped {}: this CPU lacks it", path.name());
                continue;
            }
            let mut got = vec![0f32; m * n];
            mm(path, (m, n, k), &mut got, false, &a, (k, 1), &bt, (1, k));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{}: element {i}: {g} vs {w}", path.name());
            }
            // A transposed lhs (the weight gradient's dyᵀ) packs to the same bits.
            let at: Vec<f32> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect(); // [k×m]
            let mut from_t = vec![0f32; m * n];
            mm(path, (m, n, k), &mut from_t, false, &at, (1, m), &b, (n, 1));
            assert_eq!(from_t, got, "{}: transposed lhs", path.name());
            // Accumulating adds onto what is there.
            let mut twice = got.clone();
            mm(path, (m, n, k), &mut twice, true, &a, (k, 1), &b, (n, 1));
            for (t, g) in twice.iter().zip(&got) {
                assert_eq!(*t, g + g, "{}: accumulate", path.name());
            }
        }
    }

    #[test]
    fn avx512bf16_gives_the_portable_bits() {
        if !has_avx512bf16() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        if !avx512bf16_exact() {
            // The path is then never chosen (it is not `available`): say so loudly, and check that.
            eprintln!("NOTE: this CPU's vdpbf16ps does not give the portable bits; bf16_avx512 is disabled here");
            assert!(!Path::Bf16Avx512.available());
            assert_eq!(resolve(Some(Precision::Bf16), None, None).unwrap().0, Path::Fp32);
            return;
        }
        // Wide dynamic range, cancellations and values near the subnormal edge.
        let (m, n, k) = (40, 33, 301);
        let mut a = data(m * k, 3, 1.0);
        let mut b = data(k * n, 4, 1.0);
        for (i, x) in a.iter_mut().enumerate() {
            *x *= [1.0, 1e-20, 1e20, 3e-19, 1.0][i % 5];
        }
        for (i, x) in b.iter_mut().enumerate() {
            *x *= [1.0, 1e-19, 1e-3, 1.0, 7e-20, 1.0, 1.0][i % 7];
        }
        let run = |path| {
            let mut out = vec![0f32; m * n];
            mm(path, (m, n, k), &mut out, false, &a, (k, 1), &b, (n, 1));
            out
        };
        let (p, v) = (run(Path::Bf16Portable), run(Path::Bf16Avx512));
        for (i, (x, y)) in p.iter().zip(&v).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "element {i}: portable {x:e} vs avx512bf16 {y:e}");
        }
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        let (m, n, k) = (100, 64, 96);
        let a = data(m * k, 5, 1.0);
        let b = data(k * n, 6, 1.0);
        for path in [Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx] {
            if !path.available() {
                continue;
            }
            let run = |threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let mut out = vec![0f32; m * n];
                    mm(path, (m, n, k), &mut out, false, &a, (k, 1), &b, (n, 1));
                    out
                })
            };
            assert_eq!(run(1), run(3), "{}", path.name());
        }
    }

    #[test]
    fn resolution_follows_the_cpu_and_keeps_a_resumed_run_s_bits() {
        let native = if Path::Bf16Avx512.available() { Path::Bf16Avx512 } else { Path::Fp32 };
        assert_eq!(resolve(None, None, None).unwrap(), (Path::Fp32, None));
        let (p, notice) = resolve(Some(Precision::Bf16), None, None).unwrap();
        assert_eq!(p, native);
        assert_eq!(notice.is_some(), native == Path::Fp32, "one notice exactly when bf16 falls back");
        assert_eq!(resolve(None, Some(Path::Bf16Portable), None).unwrap().0, Path::Bf16Portable);
        // Resuming: the recorded path (or one with its bits), never another arithmetic.
        assert_eq!(resolve(None, None, Some(Path::Bf16Portable)).unwrap().0, Path::Bf16Portable);
        assert!(resolve(Some(Precision::Fp32), None, Some(Path::Bf16Portable)).unwrap_err().contains("bf16_portable"));
        assert!(resolve(Some(Precision::Bf16), None, Some(Path::Fp32)).is_err());
        assert!(resolve(Some(Precision::Fp32), Some(Path::Bf16Portable), None).is_err());
        if Path::Bf16Avx512.available() {
            assert_eq!(resolve(None, Some(Path::Bf16Portable), Some(Path::Bf16Avx512)).unwrap().0, Path::Bf16Portable);
        }
        // A CPU without AVX512-BF16 (or AMX): bf16 falls back to fp32 with one line; a recorded
        // AVX512-BF16 run resumes on the portable path; an AMX run is refused, naming the path.
        let plain = |p: Path| matches!(p, Path::Fp32 | Path::Bf16Portable);
        let (p, notice) = resolve_on(Some(Precision::Bf16), None, None, plain).unwrap();
        assert_eq!(p, Path::Fp32);
        let notice = notice.expect("a notice");
        assert!(
            notice.contains("training in fp32") && notice.contains("bf16_portable") && !notice.contains('\n'),
            "{notice}"
        );
        assert_eq!(resolve_on(None, None, Some(Path::Bf16Avx512), plain).unwrap(), (Path::Bf16Portable, None));
        assert_eq!(
            resolve_on(Some(Precision::Bf16), None, Some(Path::Bf16Avx512), plain).unwrap().0,
            Path::Bf16Portable
        );
        assert!(resolve_on(None, Some(Path::Bf16Amx), None, plain).unwrap_err().contains("bf16_amx"));
        let with_native = |p: Path| p != Path::Bf16Amx;
        assert_eq!(resolve_on(Some(Precision::Bf16), None, None, with_native).unwrap(), (Path::Bf16Avx512, None));
    }

    #[test]
    fn path_names_round_trip() {
        for p in [Path::Fp32, Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx] {
            assert_eq!(p.name().parse::<Path>().unwrap(), p);
        }
        assert!(Path::Bf16Portable.same_bits(Path::Bf16Avx512) && !Path::Bf16Amx.same_bits(Path::Bf16Portable));
        assert_eq!(Path::Bf16Portable.for_replay(), Ok(Path::Bf16Portable));
    }
}
