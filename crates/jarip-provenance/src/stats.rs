//! Similarity statistics between two tensors of the same shape.
//!
//! Why not cosine: weights with a large common offset (norm gains all near 1) give cosine ≈ 1
//! for *any* two models. Pearson correlation removes the mean first, so two unrelated gain
//! vectors score ≈ 0. For matrices, linear CKA compares the geometry of the rows (or columns)
//! and does not change when hidden units are permuted or rotated; the debiased estimator is
//! used because the plain one is biased far above 0 for unrelated wide matrices.

use anyhow::Result;
use candle_core::{Device, Tensor as CTensor};

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Mean-centred correlation; NaN when either side is constant (no signal to compare).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 1e-30 || bb <= 1e-30 {
        return f64::NAN;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// At most this many examples (rows) enter a Gram matrix; a fixed stride subset, the same
/// rows on both sides, keeps the estimate unbiased and the cost bounded.
const MAX_EXAMPLES: usize = 512;

/// A fixed stride subset of `n` examples, at most [`MAX_EXAMPLES`], the same on both sides.
fn examples(n: usize) -> Vec<usize> {
    (0..n).step_by(n.div_ceil(MAX_EXAMPLES).max(1)).collect()
}

/// Gram matrix of rows `take` of a row-major matrix with `cols` columns.
fn gram_rows(data: &[f32], cols: usize, take: &[usize]) -> Result<Vec<f64>> {
    let mut sub = Vec::with_capacity(take.len() * cols);
    for &r in take {
        sub.extend_from_slice(&data[r * cols..(r + 1) * cols]);
    }
    let x = CTensor::from_vec(sub, (take.len(), cols), &Device::Cpu)?;
    let k = x.matmul(&x.t()?)?;
    Ok(k.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect())
}

/// Gram matrix of columns `take` (gathered, never transposing the whole matrix).
fn gram_cols(data: &[f32], rows: usize, cols: usize, take: &[usize]) -> Result<Vec<f64>> {
    let n = take.len();
    let mut sub = Vec::with_capacity(rows * n);
    for row in data.chunks_exact(cols).take(rows) {
        sub.extend(take.iter().map(|&c| row[c]));
    }
    let x = CTensor::from_vec(sub, (rows, n), &Device::Cpu)?;
    let k = x.t()?.matmul(&x)?;
    Ok(k.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect())
}

/// Debiased CKA of two n×n Gram matrices over the same examples.
fn cka_grams(k: &[f64], l: &[f64], n: usize) -> f64 {
    if n < 4 {
        return f64::NAN;
    }
    let (kl, kk, ll) = (hsic_unbiased(k, l, n), hsic_unbiased(k, k, n), hsic_unbiased(l, l, n));
    if kk <= 0.0 || ll <= 0.0 {
        return f64::NAN;
    }
    kl / (kk * ll).sqrt()
}

/// Unbiased HSIC (Song et al. 2012) of two n×n Gram matrices.
fn hsic_unbiased(k: &[f64], l: &[f64], n: usize) -> f64 {
    let nf = n as f64;
    let at = |m: &[f64], i: usize, j: usize| if i == j { 0.0 } else { m[i * n + j] };
    let (mut tr, mut sk, mut sl, mut cross) = (0f64, 0f64, 0f64, 0f64);
    let mut rk = vec![0f64; n];
    let mut rl = vec![0f64; n];
    for i in 0..n {
        for j in 0..n {
            let (a, b) = (at(k, i, j), at(l, i, j));
            tr += a * b;
            rk[i] += a;
            rl[i] += b;
        }
        sk += rk[i];
        sl += rl[i];
    }
    for i in 0..n {
        cross += rk[i] * rl[i];
    }
    (tr + sk * sl / ((nf - 1.0) * (nf - 2.0)) - 2.0 * cross / (nf - 2.0)) / (nf * (nf - 3.0))
}

/// Debiased linear CKA between two sets of features of the same `rows` examples: `a` is
/// rows×`cols_a`, `b` rows×`cols_b` (the feature counts may differ). ≈ 0 for unrelated
/// matrices, 1 for matrices equal up to an orthogonal transform of their features (e.g. a
/// permutation) and an overall scale. NaN when there are too few examples or no variation.
pub fn cka_features(a: &[f32], cols_a: usize, b: &[f32], cols_b: usize, rows: usize) -> Result<f64> {
    if rows < 4 || cols_a == 0 || cols_b == 0 {
        return Ok(f64::NAN);
    }
    let take = examples(rows);
    Ok(cka_grams(&gram_rows(a, cols_a, &take)?, &gram_rows(b, cols_b, &take)?, take.len()))
}

/// [`cka_features`] for two matrices of the same shape, rows as examples.
pub fn cka_rows(a: &[f32], b: &[f32], rows: usize, cols: usize) -> Result<f64> {
    cka_features(a, cols, b, cols, rows)
}

/// Debiased CKA with columns as examples and rows as features.
pub fn cka_cols(a: &[f32], b: &[f32], rows: usize, cols: usize) -> Result<f64> {
    if cols < 4 || rows == 0 {
        return Ok(f64::NAN);
    }
    let take = examples(cols);
    Ok(cka_grams(&gram_cols(a, rows, cols, &take)?, &gram_cols(b, rows, cols, &take)?, take.len()))
}

/// CKA in both orientations, the larger kept: whichever axis holds the hidden units, their
/// permutation leaves one orientation unchanged.
pub fn cka_both(a: &[f32], b: &[f32], rows: usize, cols: usize) -> Result<f64> {
    let r = cka_rows(a, b, rows, cols)?;
    let c = cka_cols(a, b, rows, cols)?;
    Ok(match (r.is_nan(), c.is_nan()) {
        (true, true) => f64::NAN,
        (true, false) => c,
        (false, true) => r,
        _ => r.max(c),
    })
}

/// The `k` largest singular values of a rows×cols matrix, by subspace iteration on its Gram.
pub fn top_singular_values(a: &[f32], rows: usize, cols: usize, k: usize) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let x = CTensor::from_slice(a, (rows, cols), &dev)?;
    let g = if rows <= cols { x.matmul(&x.t()?)? } else { x.t()?.matmul(&x)? };
    let n = rows.min(cols);
    let k = k.min(n);
    // Deterministic start: a fixed pseudo-random block.
    let start: Vec<f32> =
        (0..n * k).map(|i| (((i as u64).wrapping_mul(2654435761) % 1000) as f32 / 1000.0) - 0.5).collect();
    let mut q = CTensor::from_vec(start, (n, k), &dev)?;
    for _ in 0..30 {
        q = g.matmul(&q)?;
        q = orthonormalize(&q)?;
    }
    let r = q.t()?.matmul(&g.matmul(&q)?)?; // k×k, nearly diagonal
    let mut ev: Vec<f32> = (0..k)
        .map(|i| r.get(i).and_then(|row| row.get(i)).and_then(|v| v.to_scalar::<f32>()))
        .collect::<candle_core::Result<_>>()?;
    ev.sort_by(|a, b| b.total_cmp(a));
    Ok(ev.into_iter().map(|e| e.max(0.0).sqrt()).collect())
}

/// Distance between two singular-value spectra (same length, descending): the mean absolute
/// difference of their log values after removing each one's mean log, so an overall rescaling
/// costs nothing. 0 for equal spectra. Sorted spectra of *any* two matrices of one shape are
/// strongly correlated (random matrices share a Marchenko–Pastur shape), so correlation of
/// spectra would be another raw-cosine trap; the distance is read against the references.
pub fn spectrum_distance(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let logs = |v: &[f32]| -> Vec<f64> {
        let l: Vec<f64> = v[..n].iter().map(|&x| (x as f64).max(1e-20).ln()).collect();
        let m = l.iter().sum::<f64>() / n as f64;
        l.into_iter().map(|x| x - m).collect()
    };
    let (la, lb) = (logs(a), logs(b));
    la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64
}

pub(crate) fn orthonormalize(q: &CTensor) -> Result<CTensor> {
    let (n, k) = q.dims2()?;
    let mut cols: Vec<Vec<f32>> = (0..k)
        .map(|j| q.narrow(1, j, 1).and_then(|c| c.flatten_all()?.to_vec1::<f32>()))
        .collect::<candle_core::Result<_>>()?;
    for j in 0..k {
        for i in 0..j {
            let d: f32 = cols[j].iter().zip(&cols[i]).map(|(a, b)| a * b).sum();
            let ci = cols[i].clone();
            for (x, y) in cols[j].iter_mut().zip(ci) {
                *x -= d * y;
            }
        }
        let norm = cols[j].iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-20);
        cols[j].iter_mut().for_each(|v| *v /= norm);
    }
    let mut flat = vec![0f32; n * k];
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            flat[i * k + j] = *v;
        }
    }
    Ok(CTensor::from_vec(flat, (n, k), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.gen::<f32>() * 2.0 - 1.0).collect()
    }

    #[test]
    fn norm_gains_near_one_fool_cosine_not_pearson() {
        let a: Vec<f32> = randn(512, 1).iter().map(|v| 1.0 + 0.02 * v).collect();
        let b: Vec<f32> = randn(512, 2).iter().map(|v| 1.0 + 0.02 * v).collect();
        assert!(cosine(&a, &b) > 0.999);
        assert!(pearson(&a, &b).abs() < 0.2);
        assert!((pearson(&a, &a.iter().map(|v| 3.0 * v - 1.0).collect::<Vec<_>>()) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn cka_sees_through_permutation_but_not_independence() {
        let (rows, cols) = (96, 64);
        let a = randn(rows * cols, 3);
        let b = randn(rows * cols, 4);
        // Permute the rows (hidden units) of a and scale it.
        let perm: Vec<usize> = (0..rows).map(|i| (i * 37) % rows).collect();
        let mut p = vec![0f32; rows * cols];
        for (i, &src) in perm.iter().enumerate() {
            for c in 0..cols {
                p[i * cols + c] = 0.5 * a[src * cols + c];
            }
        }
        assert!(pearson(&a, &p).abs() < 0.2, "permutation hides from Pearson");
        assert!(cka_both(&a, &p, rows, cols).unwrap() > 0.99);
        assert!(cka_both(&a, &b, rows, cols).unwrap().abs() < 0.1);
    }

    #[test]
    fn columns_as_examples_equal_rows_of_the_transpose() {
        let (rows, cols) = (40, 30);
        let (a, b) = (randn(rows * cols, 5), randn(rows * cols, 6));
        let t = |m: &[f32]| (0..cols).flat_map(|c| (0..rows).map(move |r| m[r * cols + c])).collect::<Vec<f32>>();
        let noisy: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.5 * y).collect();
        let want = cka_rows(&t(&a), &t(&noisy), cols, rows).unwrap();
        assert!((cka_cols(&a, &noisy, rows, cols).unwrap() - want).abs() < 1e-6);
        assert!(want > 0.5);
    }

    #[test]
    fn singular_values_of_a_diagonal_matrix() {
        let mut m = vec![0f32; 6 * 4];
        for (i, s) in [5.0, 3.0, 2.0, 1.0].iter().enumerate() {
            m[i * 4 + i] = *s;
        }
        let sv = top_singular_values(&m, 6, 4, 3).unwrap();
        for (got, want) in sv.iter().zip([5.0, 3.0, 2.0]) {
            assert!((got - want).abs() < 1e-3, "{sv:?}");
        }
    }
}
