//! The machine's arithmetic peak, measured rather than assumed, for MFU figures: the fp32 FMA rate
//! and (where the CPU has AVX512-BF16) the bf16 dot-product rate of all threads together.
//!
//! fp32: each thread runs `A` independent chains `acc_a ← acc_a·x + y` over full vector registers
//! (AVX-512: 16 lanes, AVX2+FMA: 8; `A` = 16 covers the FMA latency × ports of current cores), so
//! the loop is bound by FMA throughput alone: `iters · A · lanes · 2` FLOPs. bf16: the same with
//! `vdpbf16ps` (`acc ← acc + Σ_{pair} a·b`, 32 bf16 products per instruction: 64 FLOPs). Each
//! AMX (where the CPU has AMX-BF16 and Linux grants the tile state): four independent
//! `tdpbf16ps` accumulator tiles (16×16 fp32, each step `16·16·32` products: 16,384 FLOPs). Each
//! measurement is the best of 3 runs of ~0.1 s; the result is cached per CPU model and thread
//! count in `$XDG_CACHE_HOME/jarip/peak.json` (else `~/.cache/jarip/peak.json`), so runs do not
//! pay for it again. Which instruction path was timed is part of the result.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Independent accumulator chains per thread.
const CHAINS: usize = 16;
/// Bumped when the measurement changes, so cached figures from another method are not reused.
const METHOD: u32 = 2;

/// What was measured on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub cpu: String,
    pub threads: usize,
    pub fp32_gflops: f64,
    /// The fp32 path timed: `avx512f`, `avx2+fma` or `portable`.
    pub fp32_path: String,
    /// `None` where the CPU has no bf16 dot-product instruction.
    pub bf16_gflops: Option<f64>,
    pub bf16_path: Option<String>,
    /// AMX `tdpbf16ps`; `None` where the CPU (or the OS) offers no AMX-BF16.
    #[serde(default)]
    pub amx_bf16_gflops: Option<f64>,
    pub method: u32,
}

impl Peak {
    /// The peak the matrix products of `path` run against, in GFLOP/s, and its name for banners
    /// and reports (fp32 FMA where the path's own peak was not measured).
    pub fn for_matmul(&self, path: crate::ops::matmul_bf16::Path) -> (f64, &'static str) {
        use crate::ops::matmul_bf16::Path;
        match path {
            Path::Bf16Avx512 | Path::Bf16Portable if self.bf16_gflops.is_some() => {
                (self.bf16_gflops.unwrap_or_default(), "bf16 dot-product (vdpbf16ps)")
            }
            Path::Bf16Amx if self.amx_bf16_gflops.is_some() => {
                (self.amx_bf16_gflops.unwrap_or_default(), "AMX bf16 (tdpbf16ps)")
            }
            _ => (self.fp32_gflops, "fp32 FMA"),
        }
    }
}

/// The CPU's model name (`/proc/cpuinfo`'s first `model name`), or `unknown CPU`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("jarip").join("peak.json"))
}

/// The cached peak of this CPU model and thread count, else a fresh measurement (then cached;
/// a cache that cannot be read or written is ignored).
pub fn peak() -> Peak {
    peak_cached_in(cache_file())
}

/// [`peak`] with the cache at `file` (`None`: measure, cache nothing).
fn peak_cached_in(file: Option<PathBuf>) -> Peak {
    let (cpu, threads) = (cpu_model(), rayon::current_num_threads());
    let mut cached: Vec<Peak> = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(p) = cached.iter().find(|p| p.cpu == cpu && p.threads == threads && p.method == METHOD) {
        return p.clone();
    }
    let p = measure();
    cached.retain(|c| !(c.cpu == cpu && c.threads == threads));
    cached.push(p.clone());
    if let Some(f) = file {
        // Written beside and renamed into place: processes measuring at once never leave a torn file.
        let tmp = f.with_extension(format!("json.{}", std::process::id()));
        let _ = f.parent().map(std::fs::create_dir_all);
        if std::fs::write(&tmp, serde_json::to_string_pretty(&cached).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &f);
        }
    }
    p
}

/// Measures both peaks now (about a second).
pub fn measure() -> Peak {
    let threads = rayon::current_num_threads();
    let (fp32_path, fp32) = fp32_kernel();
    let fp32_gflops = best_rate(fp32);
    let bf16 = bf16_kernel();
    Peak {
        cpu: cpu_model(),
        threads,
        fp32_gflops,
        fp32_path: fp32_path.into(),
        bf16_gflops: bf16.map(|(_, k)| best_rate(k)),
        bf16_path: bf16.map(|(p, _)| p.to_string()),
        amx_bf16_gflops: crate::ops::matmul_bf16::Path::Bf16Amx
            .available()
            .then(|| best_rate(crate::ops::matmul_bf16::amx_peak_kernel)),
        method: METHOD,
    }
}

/// GFLOP/s of `kernel(iters) → FLOPs done by one thread`, run on every thread at once: the
/// iteration count is grown until a run takes ~0.1 s, then the best of 3.
fn best_rate(kernel: Kernel) -> f64 {
    let threads = rayon::current_num_threads();
    let run = |iters: u64| -> (f64, f64) {
        let t = Instant::now();
        let flops: f64 = (0..threads).into_par_iter().map(|_| kernel(iters)).sum();
        (flops, t.elapsed().as_secs_f64())
    };
    let mut iters = 1u64 << 12;
    while run(iters).1 < 0.05 && iters < 1 << 40 {
        iters *= 2;
    }
    (0..3).map(|_| run(iters)).map(|(f, s)| f / s / 1e9).fold(0.0, f64::max)
}

/// A timed loop: `iters` → FLOPs done by the calling thread.
type Kernel = fn(u64) -> f64;

fn fp32_kernel() -> (&'static str, Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("avx512f", |iters| {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                unsafe { fma_avx512(iters) }
            });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ("avx2+fma", |iters| {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                unsafe { fma_avx2(iters) }
            });
        }
    }
    ("portable", fma_portable)
}

fn bf16_kernel() -> Option<(&'static str, Kernel)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f") {
            return Some(("avx512bf16", |iters| {
                // SAFETY: the CPU supports AVX-512F and AVX512-BF16, checked just above.
                unsafe { dpbf16_avx512(iters) }
            }));
        }
    }
    None
}

/// `CHAINS` independent FMA chains of 16 lanes; returns the FLOPs done.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let (x, y) = std::hint::black_box((_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4)));
    let mut acc = std::hint::black_box([_mm512_set1_ps(1.0); CHAINS]);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for a in acc {
        sum = _mm512_add_ps(sum, a);
    }
    std::hint::black_box(_mm512_reduce_add_ps(sum));
    (iters * CHAINS as u64 * 16 * 2) as f64
}

/// `CHAINS` independent FMA chains of 8 lanes; returns the FLOPs done.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let (x, y) = std::hint::black_box((_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4)));
    let mut acc = std::hint::black_box([_mm256_set1_ps(1.0); CHAINS]);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    std::hint::black_box(lanes);
    (iters * CHAINS as u64 * 8 * 2) as f64
}

/// `CHAINS` independent `vdpbf16ps` chains (32 bf16 products each); returns the FLOPs done.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let a = std::hint::black_box(_mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3)));
    let mut acc = std::hint::black_box([_mm512_setzero_ps(); CHAINS]);
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = _mm512_dpbf16_ps(*c, a, a);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for c in acc {
        sum = _mm512_add_ps(sum, c);
    }
    std::hint::black_box(_mm512_reduce_add_ps(sum));
    (iters * CHAINS as u64 * 32 * 2) as f64
}

/// The same chains in plain Rust (whatever the compiler makes of them).
fn fma_portable(iters: u64) -> f64 {
    let mut acc = std::hint::black_box([[1.0f32; 8]; CHAINS]);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for v in a.iter_mut() {
                *v = v.mul_add(0.999_9, 1e-4);
            }
        }
    }
    std::hint::black_box(&acc);
    (iters * CHAINS as u64 * 8 * 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_the_cpu_runs_counts_its_flops() {
        // The kernels' arithmetic: chains converge to y / (1 − x) = 1, and the FLOP counts are
        // exact; the rates are positive (their values are the benchmark's business).
        assert_eq!(fma_portable(10), (10 * CHAINS * 8 * 2) as f64);
        let (path, k) = fp32_kernel();
        assert!(k(1000) > 0.0, "{path}");
        let p = measure();
        assert!(p.fp32_gflops > 0.0 && p.threads >= 1, "{p:?}");
        assert_eq!(p.bf16_path.is_some(), p.bf16_gflops.is_some());
        assert_eq!(p.amx_bf16_gflops.is_some(), crate::ops::matmul_bf16::Path::Bf16Amx.available());
        assert_eq!(p.for_matmul(crate::ops::matmul_bf16::Path::Fp32).0, p.fp32_gflops);
        assert!(!p.cpu.is_empty());
    }

    #[test]
    fn the_cache_is_keyed_by_cpu_and_threads() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("jarip/peak.json");
        let first = peak_cached_in(Some(file.clone()));
        let text = std::fs::read_to_string(&file).unwrap();
        let stored: Vec<Peak> = serde_json::from_str(&text).unwrap();
        assert_eq!(stored, vec![first.clone()]);
        // A second call reads the cache (a changed figure in it is returned as is).
        let mut edited = stored.clone();
        edited[0].fp32_gflops = 12345.0;
        std::fs::write(&file, serde_json::to_string(&edited).unwrap()).unwrap();
        assert_eq!(peak_cached_in(Some(file)).fp32_gflops, 12345.0);
    }
}
