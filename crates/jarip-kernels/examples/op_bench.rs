//! Forward+backward time of each building block at the benchmark shape (batch 8, context
//! 256, width 384, 6 heads, vocab 8192), fused kernel vs composed candle ops; best of 5.
//!
//! cargo run --release -p jarip-kernels --example op_bench

use candle_core::{Device, Tensor, Var};
use jarip_kernels::ops::{self, matmul_bf16::Path, rope::RopeTables, Kernels};
use std::time::Instant;

/// One benchmark case: runs the op's forward with the given kernels.
type Case<'a> = (&'a str, Box<dyn Fn(Kernels) -> Tensor + 'a>);

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn time(f: &dyn Fn(Kernels) -> Tensor, k: Kernels) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let y = f(k);
            let _g = y.sum_all().unwrap().backward().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let (b, t, h, d, v) = (8, 256, 6, 64, 8192);
    let (n, c) = (b * t, h * d);
    let x = Var::from_tensor(&randn(&[n, c])).unwrap();
    let w = Var::from_tensor(&(randn(&[c]) + 1.0).unwrap()).unwrap();
    let w_up = Var::from_tensor(&(randn(&[4 * c, c]) * 0.05).unwrap()).unwrap();
    let head = Var::from_tensor(&(randn(&[v, c]) * 0.05).unwrap()).unwrap();
    let hid = Var::from_tensor(&randn(&[n, 4 * c])).unwrap();
    let q = Var::from_tensor(&randn(&[b, t, h, d])).unwrap();
    let k = Var::from_tensor(&randn(&[b, t, h, d])).unwrap();
    let vv = Var::from_tensor(&randn(&[b, t, h, d])).unwrap();
    let targets =
        Tensor::from_vec((0..n as u32).map(|i| (i * 7919) % v as u32).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
    let tables = RopeTables::new(t, d, 10_000.0, &Device::Cpu).unwrap();
    // The fused column multiplies on this path (`JARIP_MATMUL=bf16_amx`, …; default fp32).
    let path: Path = std::env::var("JARIP_MATMUL").ok().map_or(Path::Fp32, |p| p.parse().expect("a matmul path"));
    println!("fused matmuls: {} ({})", path.name(), jarip_kernels::peak::cpu_model());
    let cases: Vec<Case> = vec![
        ("rms_norm [2048,384]", Box::new(|k| ops::rms_norm::rms_norm(&x, &w, 1e-5, k).unwrap())),
        ("linear 384->1536", Box::new(|k| ops::linear::linear(&x, &w_up, (n, 4 * c), k, path).unwrap())),
        ("relu2 [2048,1536]", Box::new(|k| ops::relu2::relu2(&hid, k).unwrap())),
        ("rope [8,256,6,64]", Box::new(|k| ops::rope::rope(&q, &tables, 0, k).unwrap())),
        ("attention [8,256,6,64]", Box::new(|kk| ops::attention::causal_attention(&q, &k, &vv, kk).unwrap())),
        (
            "head+cross-entropy 384->8192",
            Box::new(|k| ops::head_ce::head_cross_entropy(&x, &head, &targets, 15.0, k, path).unwrap()),
        ),
    ];
    println!("{:32} {:>12} {:>12}", "op (forward+backward)", "fused ms", "composed ms");
    let only = std::env::args().nth(1);
    for (name, f) in cases.iter().filter(|(n, _)| only.as_ref().is_none_or(|o| n.contains(o.as_str()))) {
        let fused = time(f.as_ref(), Kernels::Fused);
        let composed = time(f.as_ref(), Kernels::Composed);
        println!("{name:32} {fused:12.1} {composed:12.1}");
    }
}
