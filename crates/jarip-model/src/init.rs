//! Seeded initialisation: the same `seed` gives the same weights, bit for bit, on every run.
//!
//! Each tensor draws from its own ChaCha8 stream keyed by SHA-256(seed, tensor name), so a
//! tensor's values do not depend on which other tensors exist or in what order they are built.
//! Normal samples come from Box–Muller in f64, rounded once to f32.
//!
//! The scheme (C = width, L = layers, fan_in = a matrix's input width):
//! - token embedding: N(0, 1) — the first RMSNorm rescales it anyway;
//! - q/k/v, MLP up (and gate) projections: N(0, 1/fan_in), which keeps activations at unit scale;
//! - attention output and MLP down projections: N(0, 1/fan_in) / √(2L), so the 2L residual
//!   branches together start near unit variance (GPT-2's scaling; not zero, so every weight
//!   receives a gradient from the first step);
//! - output head: N(0, 0.001²), so the first logits are ≈ 0 and the first loss ≈ ln(vocab);
//! - RMSNorm gains: 1.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The random stream for one tensor.
pub fn tensor_rng(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// `n` samples of N(0, std²).
pub fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box–Muller: two uniforms in (0, 1] give two independent standard normals.
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out.push((r * th.cos() * std) as f32);
        out.push((r * th.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_named() {
        let a = normal(&mut tensor_rng(7, "w"), 1001, 1.0);
        assert_eq!(a, normal(&mut tensor_rng(7, "w"), 1001, 1.0));
        assert_ne!(a, normal(&mut tensor_rng(7, "x"), 1001, 1.0));
        assert_ne!(a, normal(&mut tensor_rng(8, "w"), 1001, 1.0));
        let n = 200_000;
        let b = normal(&mut tensor_rng(1, "s"), n, 2.0);
        let mean = b.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = b.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02 && (var.sqrt() - 2.0).abs() < 0.02, "{mean} {var}");
    }
}
