//! Fast `exp` and `tanh`, the only ones jarip's kernels use besides candle's own (the composed
//! reference path): vectorised over slices for the fused training kernels' hot loops (libm's
//! scalar `expf`/`tanhf` dominated the soft-capped cross-entropy), and [`tanh_one_exp`], the
//! scalar form the decode path soft-caps its logits with. The two differ in the last bits, and
//! each path keeps its own so that training and decoding results stay what they are.
//!
//! `exp(x) = 2ⁿ · p(r)` with `n = round(x·log₂e)`, `r = x − n·ln2` (Cody–Waite split) and a
//! degree-6 polynomial for `p` (relative error ≈ 2e-7 for x ≤ 88; the kernels only pass x ≤ 0). Written without
//! branches so the compiler vectorises it; compiled once more with AVX-512 / AVX2 enabled and
//! picked at run time. Every variant computes the same operations in the same order, so
//! results do not depend on the CPU's vector width.

/// `xs[i] = exp(xs[i])`.
pub fn exp_inplace(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the feature, checked just above.
            return unsafe { exp_avx512(xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { exp_avx2(xs) };
        }
    }
    exp_body(xs)
}

/// `xs[i] = tanh(xs[i])`, as `1 − 2/(exp(2x) + 1)` (absolute error below 5e-7).
pub fn tanh_inplace(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x *= 2.0;
    }
    exp_inplace(xs);
    for x in xs.iter_mut() {
        *x = 1.0 - 2.0 / (*x + 1.0);
    }
}

/// [`exp_body`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    exp_body(xs)
}

/// [`exp_body`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_body(xs)
}

#[inline(always)]
fn exp_body(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp1(*x);
    }
}

#[inline(always)]
fn exp1(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Below −87.3 the result is 0 (to f32 precision, ignoring subnormals); above 88.7 it overflows.
    // Adding 1.5·2²³ rounds to the nearest integer (ties to even) in the low mantissa bits,
    // with plain arithmetic that vectorises (unlike `f32::round`).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p =
        1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_41 + r * (0.008_333_452 + r * 0.001_390_385)))));
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    p * scale
}

/// `tanh` through one libm `exp` (libm's `tanhf` costs two at batch 8 × the vocabulary per decode
/// step): `(1 − e^{−2|y|}) / (1 + e^{−2|y|})` with the sign of `y`, which never overflows; within
/// 1e-7 of `tanh` in absolute terms.
pub fn tanh_one_exp(y: f32) -> f32 {
    let e = (-2.0 * y.abs()).exp();
    ((1.0 - e) / (1.0 + e)).copysign(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exp_tanh_matches_libm() {
        for i in -4000..=4000 {
            let y = i as f32 * 2.5e-3;
            let t = tanh_one_exp(y);
            assert!((t - y.tanh()).abs() < 2e-7, "tanh({y}): {t} vs {}", y.tanh());
        }
        assert_eq!(tanh_one_exp(100.0), 1.0);
        assert_eq!(tanh_one_exp(-1e30), -1.0);
        assert_eq!(tanh_one_exp(0.0), 0.0);
    }

    #[test]
    fn matches_libm() {
        let xs: Vec<f32> = (0..20_001).map(|i| -90.0 + i as f32 * 0.0085).collect();
        let mut e = xs.clone();
        exp_inplace(&mut e);
        for (x, y) in xs.iter().zip(&e) {
            let want = x.exp();
            assert!(
                (y - want).abs() <= 1e-6 * want.max(1e-30) || (want < 1e-37 && *y < 1e-37),
                "exp({x}) = {y}, libm {want}"
            );
        }
        let mut t = xs.iter().map(|x| x / 5.0).collect::<Vec<_>>();
        let t0 = t.clone();
        tanh_inplace(&mut t);
        for (x, y) in t0.iter().zip(&t) {
            assert!((y - x.tanh()).abs() < 5e-7, "tanh({x}) = {y}, libm {}", x.tanh());
        }
    }
}
