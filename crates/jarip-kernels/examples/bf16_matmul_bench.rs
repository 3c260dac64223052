//! The training step's matrix products at the benchmark shape (tokens 2048, width 384, MLP
//! 1536, vocab 8192): fp32 (`gemm` crate) against every bf16 path this CPU runs, packing
//! included; best of 7, GFLOP/s and the ratio to fp32.
//!
//! cargo run --release -p jarip-kernels --example bf16_matmul_bench

use jarip_kernels::ops::matmul_bf16::{self, Path};
use std::time::Instant;

fn main() {
    println!("cpu: {} ({} threads)", jarip_kernels::peak::cpu_model(), rayon::current_num_threads());
    // (what, m, n, k, lhs strides, rhs strides) as the linear layer's three products use them.
    let shapes: [(&str, usize, usize, usize); 6] = [
        ("fwd x·Wᵀ 2048×1536×384", 2048, 1536, 384),
        ("bwd dx=dy·W 2048×384×1536", 2048, 384, 1536),
        ("bwd dW=dyᵀ·x 1536×384×2048", 1536, 384, 2048),
        ("fwd x·Wᵀ 2048×384×384", 2048, 384, 384),
        ("head 128×8192×384", 128, 8192, 384),
        ("head dW 8192×384×128", 8192, 384, 128),
    ];
    let paths: Vec<Path> = [Path::Fp32, Path::Bf16Portable, Path::Bf16Avx512, Path::Bf16Amx]
        .into_iter()
        .filter(|p| p.available())
        .collect();
    print!("{:<30}", "product");
    for p in &paths {
        print!(" {:>16}", p.name());
    }
    println!();
    for (what, m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 1000) as f32 - 500.0) * 1e-3).collect();
        let mut out = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        print!("{what:<30}");
        let mut base = 0.0;
        for &p in &paths {
            if p == Path::Bf16Portable && m * n * k > 200_000_000 {
                print!(" {:>16}", "-");
                continue;
            }
            let best = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    if p == Path::Fp32 {
                        jarip_kernels::ops::linear::mm((m, n, k), &mut out, false, &a, (k, 1), &b, (n, 1));
                    } else {
                        matmul_bf16::mm(p, (m, n, k), &mut out, false, &a, (k, 1), &b, (n, 1));
                    }
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            let gf = flops / best / 1e9;
            if p == Path::Fp32 {
                base = gf;
            }
            print!(" {:>9.0} ({:.2}×)", gf, gf / base);
        }
        // The product alone on AMX, operands packed beforehand (what packing costs is the rest).
        if Path::Bf16Amx.available() {
            let (pa, pb) = (matmul_bf16::pack_lhs(m, k, &a, (k, 1)), matmul_bf16::pack_rhs(k, n, &b, (n, 1)));
            let best = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    matmul_bf16::matmul(Path::Bf16Amx, &pa, &pb, &mut out, false);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            print!("  | amx product alone {:>6.0}", flops / best / 1e9);
        }
        println!();
    }
}
