//! `Q8_0`: 8-bit block quantization exactly as ggml / llama.cpp define it.
//!
//! Why this format: it is the simplest quantized tensor type a GGUF file can carry, so weights
//! quantized here are read by llama.cpp (and anything else that reads GGUF) without conversion;
//! and a block of 32 weights takes 34 bytes instead of 128 as f32, so a memory-bound decode step
//! streams about 3.8× fewer weight bytes.
//!
//! A block holds 32 consecutive values `x[0..32]` as one f16 scale `d` and 32 signed bytes
//! `qs`, with `x[j] ≈ d · qs[j]`. The quantizer follows ggml's reference
//! `quantize_row_q8_0_ref` step for step (same scale, same rounding), so the bytes it produces
//! are the ones ggml produces for the same input. On disk a block is `d` as little-endian f16
//! followed by the 32 bytes of `qs`: 34 bytes, no padding.
//!
//! Limits inherited from the format: a block whose largest magnitude exceeds
//! `127 · 65504 ≈ 8.3e6` gets an infinite f16 scale, and NaN inputs give unspecified (but
//! non-panicking) results.

use anyhow::{bail, Result};
use half::f16;

/// Values per `Q8_0` block.
pub const QK8_0: usize = 32;

/// Bytes per `Q8_0` block on disk (f16 scale + 32 × i8).
pub const Q8_0_BLOCK_BYTES: usize = 2 + QK8_0;

/// One `Q8_0` block: `x[j] ≈ f32(d) · qs[j]`. Same layout as ggml's `block_q8_0` (34 bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The block's scale, `max |x| / 127`, rounded to f16.
    pub d: f16,
    /// The quantized values, `round(x / d)`.
    pub qs: [i8; QK8_0],
}

/// Quantizes `x` into `x.len() / 32` blocks.
///
/// # Panics
/// If `x.len()` is not a multiple of [`QK8_0`].
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    assert!(x.len().is_multiple_of(QK8_0), "quantize_q8_0: input length {} is not a multiple of {QK8_0}", x.len());
    x.chunks_exact(QK8_0)
        .map(|block| {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            // Quantize with the exact f32 scale, as ggml does, not with the rounded f16 one.
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK8_0];
            for (q, &v) in qs.iter_mut().zip(block) {
                // `round` is half away from zero, like C's `roundf`; |v·id| ≤ 127 so the cast is exact.
                *q = (v * id).round() as i8;
            }
            BlockQ8_0 { d: f16::from_f32(d), qs }
        })
        .collect()
}

/// Expands `blocks` into `out` (`out.len()` must be `32 · blocks.len()`).
///
/// # Panics
/// If `out` has the wrong length.
pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK8_0,
        "dequantize_q8_0: output holds {} values, {} blocks need {}",
        out.len(),
        blocks.len(),
        blocks.len() * QK8_0
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (y, &q) in o.iter_mut().zip(&b.qs) {
            *y = d * q as f32;
        }
    }
}

/// The on-disk (GGUF / ggml) bytes of `blocks`: per block, `d` as little-endian f16, then `qs`.
pub fn q8_0_to_bytes(blocks: &[BlockQ8_0]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * Q8_0_BLOCK_BYTES);
    for b in blocks {
        out.extend_from_slice(&b.d.to_le_bytes());
        out.extend(b.qs.iter().map(|&q| q as u8));
    }
    out
}

/// Parses on-disk `Q8_0` bytes (see [`q8_0_to_bytes`]); errors unless the length is a multiple
/// of 34.
pub fn q8_0_from_bytes(bytes: &[u8]) -> Result<Vec<BlockQ8_0>> {
    if !bytes.len().is_multiple_of(Q8_0_BLOCK_BYTES) {
        bail!("Q8_0 data of {} bytes is not a whole number of {Q8_0_BLOCK_BYTES}-byte blocks", bytes.len());
    }
    Ok(bytes
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .map(|c| {
            let mut qs = [0i8; QK8_0];
            for (q, &byte) in qs.iter_mut().zip(&c[2..]) {
                *q = byte as i8;
            }
            BlockQ8_0 { d: f16::from_le_bytes([c[0], c[1]]), qs }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn block_is_34_bytes() {
        assert_eq!(std::mem::size_of::<BlockQ8_0>(), Q8_0_BLOCK_BYTES);
    }

    /// Per element: the rounding error (≤ d/2 with the exact scale) plus the error of storing
    /// d as f16 (≤ 127·|d − f16(d)|), plus a little f32 slack.
    fn check_round_trip(x: &[f32]) {
        let blocks = quantize_q8_0(x);
        let mut y = vec![0.0; x.len()];
        dequantize_q8_0(&blocks, &mut y);
        for (bi, (xb, yb)) in x.chunks(QK8_0).zip(y.chunks(QK8_0)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let d16 = blocks[bi].d.to_f32();
            let tol = d / 2.0 + 127.0 * (d - d16).abs() + 1e-6 * amax;
            for (j, (&a, &b)) in xb.iter().zip(yb).enumerate() {
                assert!((a - b).abs() <= tol, "block {bi} elem {j}: {a} -> {b}, error {} > {tol}", (a - b).abs());
            }
        }
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut x: Vec<f32> = Vec::new();
        // Gaussian-ish weights at several scales.
        for scale in [1e-3f32, 0.02, 1.0, 300.0] {
            for _ in 0..4 * QK8_0 {
                let s: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
                x.push(s * scale);
            }
        }
        // An all-zero block.
        x.extend([0.0; QK8_0]);
        // A block with one large outlier among small values.
        let mut outlier: Vec<f32> = (0..QK8_0).map(|i| (i as f32 - 16.0) * 1e-3).collect();
        outlier[5] = -1000.0;
        x.extend(&outlier);
        // All positive, all equal, and negative-only blocks.
        x.extend((0..QK8_0).map(|i| 0.5 + i as f32));
        x.extend([3.25; QK8_0]);
        x.extend((0..QK8_0).map(|i| -(i as f32) * 0.1 - 0.01));
        check_round_trip(&x);

        let blocks = quantize_q8_0(&x);
        let zero = &blocks[16];
        assert_eq!(zero.d.to_f32(), 0.0);
        assert_eq!(zero.qs, [0; QK8_0]);
        let out = &blocks[17];
        assert_eq!(out.qs[5], -127);
        // The small values vanish next to the outlier: |x| ≤ 0.016 < d/2 ≈ 3.9.
        assert!(out.qs.iter().enumerate().all(|(j, &q)| j == 5 || q == 0));
        assert!(blocks[19].qs.iter().all(|&q| q == 127));
    }

    #[test]
    fn hand_computed_block() {
        // x = 0, 1, …, 31: amax = 31, d = 31/127 = 0.244094…, which rounds to the f16
        // 0.125 · (1 + 976/1024) = 0.244140625, bits 0x33D0 (exponent 12, mantissa 976).
        // qs[j] = round(j · 127/31) (never a tie: 31 ∤ 2·127·j for 0 < j < 31).
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let b = quantize_q8_0(&x);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].d.to_bits(), 0x33D0);
        assert_eq!(b[0].d.to_f32(), 0.125 * (1.0 + 976.0 / 1024.0));
        let expected: [i8; 32] = [
            0, 4, 8, 12, 16, 20, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 66, 70, 74, 78, 82, 86, 90, 94, 98, 102, 107,
            111, 115, 119, 123, 127,
        ];
        assert_eq!(b[0].qs, expected);
        // Negated input flips every sign and keeps the scale.
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        let bn = quantize_q8_0(&neg);
        assert_eq!(bn[0].d, b[0].d);
        assert_eq!(bn[0].qs.map(|q| -q), expected);
    }

    #[test]
    fn ties_round_half_away_from_zero() {
        // amax = 127 makes d = 1 exactly, so qs = round(x).
        let mut x = [0.0f32; 32];
        x[..7].copy_from_slice(&[127.0, 2.5, -2.5, 0.5, -0.5, 1.49, -126.5]);
        let b = quantize_q8_0(&x);
        assert_eq!(b[0].d.to_f32(), 1.0);
        assert_eq!(&b[0].qs[..7], &[127, 3, -3, 1, -1, 1, -127]);
    }

    #[test]
    fn bytes_round_trip() {
        let x: Vec<f32> = (0..3 * QK8_0).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let blocks = quantize_q8_0(&x);
        let bytes = q8_0_to_bytes(&blocks);
        assert_eq!(bytes.len(), 3 * 34);
        // Layout: little-endian f16 scale, then the 32 quantized bytes.
        assert_eq!(&bytes[0..2], &blocks[0].d.to_bits().to_le_bytes());
        assert_eq!(bytes[2 + 4] as i8, blocks[0].qs[4]);
        assert_eq!(q8_0_from_bytes(&bytes).unwrap(), blocks);
    }

    #[test]
    fn bad_byte_length_is_an_error() {
        let err = q8_0_from_bytes(&[0u8; 35]).unwrap_err().to_string();
        assert!(err.contains("35 bytes"), "{err}");
        assert!(q8_0_from_bytes(&[]).unwrap().is_empty());
    }

    #[test]
    #[should_panic(expected = "not a multiple of 32")]
    fn quantize_rejects_partial_block() {
        quantize_q8_0(&[1.0; 33]);
    }
}
