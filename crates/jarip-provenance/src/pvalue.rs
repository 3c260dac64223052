//! p-values in log space: normal and chi-square tails, Fisher's combination, the permutation
//! distribution of a matched-pair statistic, and the power of the whole procedure.
//!
//! Evidence of derivation in a 7B model is so strong that p underflows any float (a correctly
//! aligned layer gives z ≈ 100, p ≈ 10⁻²¹⁷⁴), so every p-value here is carried as its natural
//! logarithm and reported as log10 p.
//!
//! The statistic of one test group (see [`crate::independence`]) is `T = Σᵢ R[i][i]`, where
//! `R[i][k]` is the similarity of A's unit i and the B unit matched to A's unit k. Under H0 the
//! pairing carries no information, so `T` is one draw of `Σᵢ R[i][σ(i)]` over uniform
//! permutations σ. Hoeffding's combinatorial central limit theorem gives that distribution's
//! mean and variance exactly and its normality for many units; few units use Monte Carlo
//! permutations (exact enumeration below 8 units).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub const LN10: f64 = std::f64::consts::LN_10;

/// ln P(Z > z) for a standard normal Z, accurate in the far tail (no underflow: z = 1000 gives
/// ≈ −500,007). Uses erfc's Chebyshev fit (relative error < 1.2e-7 everywhere), taken in logs.
pub fn ln_norm_sf(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    if z < 0.0 {
        return (-(ln_norm_sf(-z).exp())).ln_1p();
    }
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    // erfc(x) = t·exp(poly); P(Z > z) = erfc(x)/2
    t.ln() + poly - std::f64::consts::LN_2
}

/// P(Z > z), plain (may underflow to 0).
pub fn norm_sf(z: f64) -> f64 {
    ln_norm_sf(z).exp()
}

/// ln P(X > x) for X ~ χ² with 2k degrees of freedom: for an even number of degrees of freedom
/// the tail is exactly `e^{−x/2} Σ_{j<k} (x/2)^j / j!`, summed here in log space.
pub fn ln_chi2_sf_even(x: f64, k: usize) -> f64 {
    if x <= 0.0 || k == 0 {
        return 0.0;
    }
    let y = x / 2.0;
    let ln_y = y.ln();
    // log-sum-exp over j of j·ln y − ln j!
    let mut terms = Vec::with_capacity(k);
    let mut ln_fact = 0.0;
    for j in 0..k {
        if j > 0 {
            ln_fact += (j as f64).ln();
        }
        terms.push(j as f64 * ln_y - ln_fact);
    }
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    (-y + m + s.ln()).min(0.0)
}

/// Fisher's method: ln of the combined p-value of independent p-values given as ln p.
pub fn fisher_ln(ln_ps: &[f64]) -> f64 {
    if ln_ps.is_empty() {
        return 0.0;
    }
    let x: f64 = ln_ps.iter().map(|lp| -2.0 * lp.min(0.0)).sum();
    ln_chi2_sf_even(x, ln_ps.len())
}

/// The permutation distribution of `T = Σᵢ R[i][σ(i)]` (R is m×m, row-major): its exact mean
/// and variance over uniform σ (Hoeffding 1951).
pub fn permutation_moments(r: &[f64], m: usize) -> (f64, f64) {
    let mf = m as f64;
    let mut row = vec![0f64; m];
    let mut col = vec![0f64; m];
    for i in 0..m {
        for k in 0..m {
            let v = r[i * m + k];
            row[i] += v;
            col[k] += v;
        }
    }
    let total: f64 = row.iter().sum();
    let (rm, cm, g) = (
        row.iter().map(|x| x / mf).collect::<Vec<_>>(),
        col.iter().map(|x| x / mf).collect::<Vec<_>>(),
        total / (mf * mf),
    );
    let mut ss = 0f64;
    for i in 0..m {
        for k in 0..m {
            let d = r[i * m + k] - rm[i] - cm[k] + g;
            ss += d * d;
        }
    }
    (total / mf, if m > 1 { ss / (mf - 1.0) } else { 0.0 })
}

/// How a group's p-value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermMethod {
    /// Normal approximation with the exact permutation moments (many units).
    Clt,
    /// Every permutation enumerated (fewer than 8 units).
    Exact,
    /// Monte Carlo permutations: p = (1 + #{T_σ ≥ T}) / (1 + K).
    MonteCarlo(usize),
}

impl PermMethod {
    pub fn describe(&self) -> String {
        match self {
            PermMethod::Clt => "permutation of matched pairs, normal approximation with exact moments".into(),
            PermMethod::Exact => "permutation of matched pairs, all permutations".into(),
            PermMethod::MonteCarlo(k) => format!("permutation of matched pairs, {k} Monte Carlo permutations"),
        }
    }
}

/// Units from which on the normal approximation is used.
pub const CLT_MIN_UNITS: usize = 256;

/// Skewness of the permutation distribution of `trace(R)`, from the doubly centred entries as if
/// the m terms were independent: γ ≈ μ₃ / (σ³ √m), μ₃ and σ² the entries' third moment and variance.
fn permutation_skewness(r: &[f64], m: usize) -> f64 {
    let mf = m as f64;
    let mut row = vec![0f64; m];
    let mut col = vec![0f64; m];
    for i in 0..m {
        for k in 0..m {
            row[i] += r[i * m + k] / mf;
            col[k] += r[i * m + k] / mf;
        }
    }
    let g = row.iter().sum::<f64>() / mf;
    let (mut m2, mut m3) = (0f64, 0f64);
    for i in 0..m {
        for k in 0..m {
            let d = r[i * m + k] - row[i] - col[k] + g;
            m2 += d * d;
            m3 += d * d * d;
        }
    }
    let n = mf * mf;
    let (m2, m3) = (m2 / n, m3 / n);
    if m2 <= 0.0 {
        return 0.0;
    }
    m3 / (m2.powf(1.5) * mf.sqrt())
}

/// One-sided p-value (as ln p) of `T = trace(R)` against its permutation distribution, the
/// standardised statistic z (mean and sd of that distribution), and the method used.
pub fn permutation_test(r: &[f64], m: usize, permutations: usize, seed: u64) -> (f64, f64, PermMethod) {
    let t: f64 = (0..m).map(|i| r[i * m + i]).sum();
    let (mean, var) = permutation_moments(r, m);
    let z = if var > 0.0 { (t - mean) / var.sqrt() } else { 0.0 };
    if m >= CLT_MIN_UNITS {
        // |r| is right-skewed, and so is T: a Cornish–Fisher step moves z towards the centre by
        // γ/6 (z² − 1) (never away from it; z capped at 8 in the correction, where it is already
        // far beyond any α), so the normal tail is not anti-conservative.
        let gamma = permutation_skewness(r, m).max(0.0);
        let zc = z.clamp(1.0, 8.0);
        let z_adj = if z > 1.0 { z - gamma / 6.0 * (zc * zc - 1.0) } else { z };
        return (ln_norm_sf(z_adj), z, PermMethod::Clt);
    }
    let stat = |perm: &[usize]| -> f64 { perm.iter().enumerate().map(|(i, &k)| r[i * m + k]).sum() };
    // Ties count as reaching T, with a small tolerance for float rounding of the same sum.
    let tol = 1e-9 * t.abs().max(1.0);
    if m < 8 {
        let mut perm: Vec<usize> = (0..m).collect();
        let (mut ge, mut total) = (0usize, 0usize);
        loop {
            total += 1;
            if stat(&perm) >= t - tol {
                ge += 1;
            }
            if !next_permutation(&mut perm) {
                break;
            }
        }
        return ((ge as f64 / total as f64).ln(), z, PermMethod::Exact);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut perm: Vec<usize> = (0..m).collect();
    let mut ge = 0usize;
    for _ in 0..permutations {
        perm.shuffle(&mut rng);
        if stat(&perm) >= t - tol {
            ge += 1;
        }
    }
    (((1 + ge) as f64 / (1 + permutations) as f64).ln(), z, PermMethod::MonteCarlo(permutations))
}

fn next_permutation(p: &mut [usize]) -> bool {
    let n = p.len();
    if n < 2 {
        return false;
    }
    let mut i = n - 1;
    while i > 0 && p[i - 1] >= p[i] {
        i -= 1;
    }
    if i == 0 {
        return false;
    }
    let mut j = n - 1;
    while p[j] <= p[i - 1] {
        j -= 1;
    }
    p.swap(i - 1, j);
    p[i..].reverse();
    true
}

/// E|X| for X ~ N(μ, σ²).
pub fn folded_mean(mu: f64, sigma: f64) -> f64 {
    if sigma <= 0.0 {
        return mu.abs();
    }
    let a = mu / sigma;
    sigma * (2.0 / std::f64::consts::PI).sqrt() * (-a * a / 2.0).exp() + mu * (1.0 - 2.0 * norm_sf(a))
}

/// Probability that nearest-neighbour matching by |correlation| over `d` entries picks the true
/// partner (true correlation ρ) among `n` candidates whose correlations are null: the partner's
/// standardised |r| ~ |N(ρ√d, 1)| must beat the largest of n−1 values |N(0, 1)|.
pub fn p_align(rho: f64, d: usize, n: usize) -> f64 {
    if n <= 1 {
        return 1.0;
    }
    let mu = rho * (d as f64).sqrt();
    let (hi, steps) = (mu + 9.0, 3000usize);
    let h = hi / steps as f64;
    let phi = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut s = 0.0;
    for k in 0..=steps {
        let x = k as f64 * h;
        let dens = phi(x - mu) + phi(x + mu);
        // P(max of n−1 |N(0,1)| < x) = (1 − 2 P(Z > x))^(n−1)
        let tail = 2.0 * norm_sf(x);
        let cdf = if tail >= 1.0 { 0.0 } else { ((n - 1) as f64 * (-tail).ln_1p()).exp() };
        let w = if k == 0 || k == steps { 0.5 } else { 1.0 };
        s += w * dens * cdf;
    }
    (s * h).clamp(0.0, 1.0)
}

/// A group's shape, as far as the power of its test is concerned.
#[derive(Debug, Clone, Copy)]
pub struct GroupShape {
    /// Units tested (A's sampled units).
    pub m: usize,
    /// Candidates each is matched among (B's units).
    pub n: usize,
    /// Entries the matching reads per unit.
    pub d_align: usize,
    /// Entries the test reads per unit.
    pub d_test: usize,
    /// Whether the group's vectors are indexed by residual channels that had to be aligned.
    pub residual: bool,
    /// Smallest p-value the group's method can give (1 for the normal approximation: none).
    pub p_floor: f64,
}

/// The group's expected z when B's matched weights correlate with A's at `rho` and a share
/// `res_share` of residual channels is aligned correctly.
pub fn expected_z(g: &GroupShape, rho: f64, res_share: f64) -> f64 {
    let r = if g.residual { rho * res_share } else { rho };
    let pa = p_align(r, g.d_align, g.n);
    let s = 1.0 / (g.d_test as f64).sqrt();
    let mu0 = folded_mean(0.0, s);
    let sd0 = ((1.0 - 2.0 / std::f64::consts::PI) / g.d_test as f64).sqrt();
    (g.m as f64).sqrt() * pa * (folded_mean(r, s) - mu0) / sd0
}

/// Power of Fisher's combination at level α when each group's z is N(zᵢ, 1): the Fisher
/// statistic is approximated as normal, with each group's mean and variance of −2 ln p taken by
/// quadrature over its z.
pub fn fisher_power(zs: &[(f64, f64)], alpha: f64) -> f64 {
    if zs.is_empty() {
        return 0.0;
    }
    let k = zs.len();
    // Critical value of χ²(2k) at α, by bisection on the log tail.
    let ln_alpha = alpha.ln();
    let (mut lo, mut hi) = (0.0f64, 2.0 * k as f64 + 100.0);
    while ln_chi2_sf_even(hi, k) > ln_alpha {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if ln_chi2_sf_even(mid, k) > ln_alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let crit = hi;
    let (mut mean, mut var) = (0.0, 0.0);
    for &(z, floor) in zs {
        let ln_floor = floor.ln();
        let (mut m1, mut m2, mut wsum) = (0.0, 0.0, 0.0);
        let steps = 240;
        for i in 0..=steps {
            let e = -8.0 + 16.0 * i as f64 / steps as f64;
            let w = (-e * e / 2.0).exp();
            let x = -2.0 * ln_norm_sf(z + e).max(ln_floor);
            m1 += w * x;
            m2 += w * x * x;
            wsum += w;
        }
        let (m1, m2) = (m1 / wsum, m2 / wsum);
        mean += m1;
        var += (m2 - m1 * m1).max(0.0);
    }
    if var <= 0.0 {
        return if mean > crit { 1.0 } else { 0.0 };
    }
    norm_sf((crit - mean) / var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn normal_tail_matches_known_values_and_does_not_underflow() {
        for (z, p) in [(0.0, 0.5), (1.0, 0.158_655_253_9), (3.0, 1.349_898_031_6e-3), (6.0, 9.865_876_450_4e-10)] {
            assert!((norm_sf(z) / p - 1.0).abs() < 1e-6, "z {z}: {} vs {p}", norm_sf(z));
        }
        assert!((norm_sf(-2.0) - (1.0 - 0.022_750_131_948)).abs() < 1e-8);
        // ln P(Z > 40) = −804.608…
        assert!((ln_norm_sf(40.0) + 804.608_442).abs() < 1e-3, "{}", ln_norm_sf(40.0));
        assert!(ln_norm_sf(1000.0).is_finite() && ln_norm_sf(1000.0) < -500_000.0);
    }

    #[test]
    fn chi_square_tail_and_fisher() {
        // χ²(2) tail is e^{−x/2}
        assert!((ln_chi2_sf_even(5.0, 1) + 2.5).abs() < 1e-12);
        // χ²(4) at 9.4877 is 0.05
        assert!((ln_chi2_sf_even(9.487_729, 2).exp() - 0.05).abs() < 1e-6);
        // Fisher of one p is that p
        assert!((fisher_ln(&[0.03f64.ln()]) - 0.03f64.ln()).abs() < 1e-12);
        // Fisher of p-values 1 is 1
        assert!(fisher_ln(&[0.0, 0.0, 0.0]).abs() < 1e-12);
        // astronomically small p-values stay finite in logs: X = 16000.2, k = 3,
        // ln Q = −X/2 + ln(1 + y + y²/2) with y = X/2
        let lp = fisher_ln(&[-5000.0, -3000.0, -0.1]);
        let y: f64 = 8000.1;
        assert!((lp - (-y + (1.0 + y + y * y / 2.0).ln())).abs() < 1e-9, "{lp}");
    }

    #[test]
    fn permutation_moments_match_enumeration() {
        let m = 5;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let r: Vec<f64> = (0..m * m).map(|_| rng.gen::<f64>()).collect();
        let (mean, var) = permutation_moments(&r, m);
        let mut perm: Vec<usize> = (0..m).collect();
        let mut vals = vec![];
        loop {
            vals.push(perm.iter().enumerate().map(|(i, &k)| r[i * m + k]).sum::<f64>());
            if !next_permutation(&mut perm) {
                break;
            }
        }
        assert_eq!(vals.len(), 120);
        let em = vals.iter().sum::<f64>() / 120.0;
        let ev = vals.iter().map(|v| (v - em).powi(2)).sum::<f64>() / 120.0;
        assert!((em - mean).abs() < 1e-12 && (ev - var).abs() < 1e-12, "{em} {mean} {ev} {var}");
    }

    #[test]
    fn permutation_p_values_are_uniform_under_the_null() {
        // R with row/column structure and skewed entries but no pairing: rejections at 0.05 near
        // 5 %, for both the normal approximation (m = 300) and Monte Carlo (m = 20).
        for (m, trials) in [(300usize, 300usize), (20, 300)] {
            let mut rng = ChaCha8Rng::seed_from_u64(m as u64);
            let mut rejections = 0;
            for t in 0..trials {
                let rowfx: Vec<f64> = (0..m).map(|_| rng.gen::<f64>()).collect();
                let r: Vec<f64> = (0..m * m).map(|i| rowfx[i / m] + rng.gen::<f64>().powi(3)).collect();
                let (lp, _, _) = permutation_test(&r, m, 199, t as u64);
                if lp < 0.05f64.ln() {
                    rejections += 1;
                }
            }
            let rate = rejections as f64 / trials as f64;
            assert!((0.015..=0.09).contains(&rate), "m {m}: rejection rate {rate}");
        }
    }

    #[test]
    fn a_true_pairing_is_found() {
        let m = 300;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let r: Vec<f64> = (0..m * m).map(|i| rng.gen::<f64>() + if i / m == i % m { 0.5 } else { 0.0 }).collect();
        let (lp, z, method) = permutation_test(&r, m, 0, 1);
        assert_eq!(method, PermMethod::Clt);
        assert!(z > 10.0 && lp < -40.0, "z {z} ln p {lp}");
    }

    #[test]
    fn alignment_probability_and_power_behave() {
        assert!(p_align(0.0, 4096, 1000) < 0.01);
        assert!(p_align(0.5, 4096, 11008) > 0.999);
        let mid = p_align(0.05, 4096, 11008);
        assert!(mid > 0.01 && mid < 0.9, "{mid}");
        let g = GroupShape { m: 512, n: 11008, d_align: 4096, d_test: 8192, residual: true, p_floor: 0.0 };
        assert!(expected_z(&g, 0.0, 1.0).abs() < 1e-6);
        assert!(expected_z(&g, 0.05, 1.0) > 5.0);
        let zs: Vec<(f64, f64)> = (0..32).map(|_| (expected_z(&g, 0.05, 1.0), 0.0)).collect();
        assert!(fisher_power(&zs, 1e-6) > 0.99);
        let none: Vec<(f64, f64)> = (0..32).map(|_| (0.0, 0.0)).collect();
        assert!(fisher_power(&none, 1e-6) < 1e-4);
    }
}
