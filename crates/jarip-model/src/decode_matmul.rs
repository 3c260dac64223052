//! The matrix kernel of CPU decoding: `out = x · wᵀ` for a few activation rows `x` and a weight
//! matrix `w` stored row by row (`[n × k]`, the layout of every weight in the model).
//!
//! Decoding is memory-bound at batch 1 and becomes compute-bound as the batch grows, so the kernel
//! is register-blocked: `R` activation rows × `G` weight rows of accumulators, each weight row read
//! from memory once per step whatever the batch. Every output element is reduced in one fixed
//! order — lane `l` of an 8-lane accumulator sums `x[i]·w[i]` for `i ≡ l (mod 8)` in increasing
//! `i`, then the lanes in a fixed tree, then the tail — whatever `R`, `G`, the batch size or the
//! instruction set, so a sequence's logits are bit-identical whichever sequences share its batch.

use rayon::prelude::*;

/// Accumulator lanes of one dot product (one 256-bit register).
const LANES: usize = 8;
/// Weight rows per parallel task: enough work per task, and a block small enough to stay in L2
/// while every tile of activation rows passes over it.
const BLOCK: usize = 32;

/// `out[m × n] = x[m × k] · wᵀ` for `w: [n × k]`.
pub fn matmul_wt(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, out: &mut [f32]) {
    matmul_wt_with(Kernel::detect(), x, m, w, n, k, out)
}

/// [`matmul_wt`] with a chosen kernel (for benchmarks and tests).
pub fn matmul_wt_with(kernel: Kernel, x: &[f32], m: usize, w: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n, "matmul_wt: buffer sizes");
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
            let mut part = vec![0f32; m * (hi - lo)];
            kernel.run(x, m, &w[lo * k..hi * k], hi - lo, k, &mut part);
            part
        })
        .collect();
    for (b, part) in blocks.iter().enumerate() {
        let (lo, width) = (b * BLOCK, part.len() / m.max(1));
        for i in 0..m {
            out[i * n + lo..i * n + lo + width].copy_from_slice(&part[i * width..(i + 1) * width]);
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
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
                return Kernel::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// `part[m × nb] = x · w_blockᵀ`. Panics if this CPU lacks the kernel's instructions.
    pub fn run(self, x: &[f32], m: usize, w: &[f32], nb: usize, k: usize, part: &mut [f32]) {
        assert!(x.len() >= m * k && w.len() >= nb * k && part.len() >= m * nb, "kernel: buffer sizes");
        match self {
            Kernel::Portable => portable(x, m, w, nb, k, part),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                assert!(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"));
                // SAFETY: the instructions were just detected; sizes were checked above.
                unsafe { avx2::kernel(x, m, w, nb, k, part) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                assert!(std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("fma"));
                // SAFETY: as above.
                unsafe { avx512::kernel(x, m, w, nb, k, part) }
            }
        }
    }
}

/// Sum of the lanes in the kernel's fixed tree.
#[inline(always)]
fn reduce(a: &[f32; LANES]) -> f32 {
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
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const R: usize, const G: usize>(
                x: &[f32], i0: usize, w: &[f32], j0: usize, nb: usize, k: usize, part: &mut [f32],
            ) {
                let body = k - k % LANES;
                let xp = x.as_ptr().add(i0 * k);
                let wp = w.as_ptr().add(j0 * k);
                // The next tile's weight rows are fetched while this one computes: with many
                // activation rows the tile is compute-bound and the hardware prefetcher alone
                // leaves the memory stream idle (measured: half the bandwidth at 8 rows).
                let next = if j0 + 2 * G <= nb { wp.add(G * k) } else { wp };
                let mut acc = [[_mm256_setzero_ps(); G]; R];
                let mut c = 0;
                while c < body {
                    let mut wv = [_mm256_setzero_ps(); G];
                    for g in 0..G {
                        wv[g] = _mm256_loadu_ps(wp.add(g * k + c));
                        if R > 0 {
                            _mm_prefetch::<_MM_HINT_T0>(next.add(g * k + c) as *const i8);
                        }
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
                            s = (*xp.add(r * k + t)).mul_add(*wp.add(g * k + t), s);
                        }
                        part[(i0 + r) * nb + j0 + g] = s;
                    }
                }
            }

            /// Rows `i0..i0+R` against every weight row: tiles of `G`, then single rows.
            #[target_feature(enable = $features)]
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

#[cfg(target_arch = "x86_64")]
simd_kernel!(avx2, "avx2,fma", 4, [1 => 8, 2 => 4, 3 => 3, 4 => 2]);
#[cfg(target_arch = "x86_64")]
simd_kernel!(avx512, "avx2,fma,avx512f,avx512vl", 8, [1 => 8, 2 => 8, 3 => 6, 4 => 4, 5 => 4, 6 => 3, 7 => 3, 8 => 3]);

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 211) as f32 / 105.0 - 1.0).collect()
    }

    #[test]
    fn every_kernel_and_batch_size_gives_the_same_bits_as_one_row_alone() {
        let (n, k) = (45, 77); // neither a multiple of a tile nor of the lanes
        let w = data(n * k, 1);
        let kernels: Vec<Kernel> = {
            let mut v = vec![Kernel::detect()];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                v.push(Kernel::Avx2);
            }
            v
        };
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
            #[cfg(target_feature = "fma")]
            {
                let mut part = vec![0f32; m * n];
                Kernel::Portable.run(&x, m, &w, n, k, &mut part);
                assert_eq!(part, want, "portable with {m} rows");
            }
        }
    }
}
