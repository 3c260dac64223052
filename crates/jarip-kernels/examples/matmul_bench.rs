//! Throughput of the decode matrix kernel (`matmul_wt`) on the shapes of a ~100M model, at 1 to 8
//! activation rows, for each kernel this CPU runs and for f32 and Q8_0 weights: GFLOP/s, and GB/s
//! of weights streamed. `matmul_bench [avx512vnni|avx512|avxvnni|avx2|portable] [f32|q8]` picks one.
use jarip_kernels::decode_matmul::{matmul_q8_with, matmul_wt_with, Kernel, Q8Matrix};
use std::time::Instant;

/// `matmul_bench prefill`: a prompt's products (256 activation rows, the chunk a prefill step
/// takes) on the ~100M SwiGLU model's shapes, f32 and Q8_0, with the detected kernel: GFLOP/s.
fn prefill() {
    let kernel = Kernel::detect();
    let m = 256;
    println!("cpu: {}; kernel {}; {m} rows", jarip_kernels::peak::cpu_model(), kernel.name());
    for &(n, k) in &[(768usize, 768usize), (2048, 768), (768, 2048)] {
        let wv: Vec<f32> = (0..n * k + 16).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let xv: Vec<f32> = (0..m * k + 16).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
        // Cache-line aligned, as the decode model holds its weights and activations.
        let off = |p: *const f32| (16 - (p as usize / 4) % 16) % 16;
        let (w, x) = (&wv[off(wv.as_ptr())..][..n * k], &xv[off(xv.as_ptr())..][..m * k]);
        let q = Q8Matrix::quantize(w, n, k);
        let mut out = vec![0f32; m * n];
        for q8 in [false, true] {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                if q8 {
                    matmul_q8_with(kernel, x, m, &q, &mut out);
                } else {
                    matmul_wt_with(kernel, x, m, w, n, k, &mut out);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gf = 2.0 * (m * n * k) as f64 / best / 1e9;
            println!(
                "{} n {n:>5} k {k:>5}: {:>7.3} ms {gf:>6.1} GFLOP/s",
                if q8 { "q8_0" } else { "f32 " },
                best * 1e3
            );
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("prefill") {
        return prefill();
    }
    // Every kernel this CPU runs (VNNI ones included), slowest last.
    let kernels = Kernel::all_available();
    let only: Option<String> = std::env::args().nth(1);
    let formats: Vec<bool> = match std::env::args().nth(2).as_deref() {
        Some("f32") => vec![false],
        Some("q8") => vec![true],
        _ => vec![false, true],
    };
    // (rows n, columns k, matrices of that shape in one step of the depth-10 model)
    let shapes = [(640usize, 640usize, 40usize), (2560, 640, 10), (640, 2560, 10), (40960, 640, 1)];
    for (kernel, q8) in kernels.iter().flat_map(|&k| formats.iter().map(move |&q| (k, q))) {
        if only.as_deref().is_some_and(|o| o != "all" && !format!("{kernel:?}").eq_ignore_ascii_case(o)) {
            continue;
        }
        let label = format!("{kernel:?} {}", if q8 { "q8_0" } else { "f32" });
        let mut total = [0f64; 8];
        for &(n, k, count) in &shapes {
            // Enough copies of the weights that they stream from memory, as in a real step.
            let copies = (1_200_000_000 / (n * k * 4)).clamp(1, 64);
            let ws: Vec<Vec<f32>> = (0..copies)
                .map(|c| (0..n * k).map(|i| ((i * 7919 + c) % 1000) as f32 * 1e-3 - 0.5).collect())
                .collect();
            let qs: Vec<Q8Matrix> = if q8 { ws.iter().map(|w| Q8Matrix::quantize(w, n, k)).collect() } else { vec![] };
            let ws = if q8 { vec![] } else { ws };
            let bytes = if q8 { qs[0].bytes() } else { n * k * 4 };
            for m in 1..=8usize {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
                let mut out = vec![0f32; m * n];
                let mut best = f64::MAX;
                for round in 0..3 {
                    let t = Instant::now();
                    for w in &ws {
                        matmul_wt_with(kernel, &x, m, w, n, k, &mut out);
                    }
                    for w in &qs {
                        matmul_q8_with(kernel, &x, m, w, &mut out);
                    }
                    if round > 0 {
                        best = best.min(t.elapsed().as_secs_f64() / copies as f64);
                    }
                }
                total[m - 1] += best * count as f64;
                if [1, 2, 4, 8].contains(&m) {
                    println!(
                        "{label} n {n:>6} k {k:>5} m {m}: {:>7.3} ms {:>6.1} GFLOP/s {:>5.1} GB/s",
                        best * 1e3,
                        2.0 * (m * n * k) as f64 / best / 1e9,
                        bytes as f64 / best / 1e9
                    );
                }
            }
        }
        println!("{label}: matrix time of one step of the 100M model (depth 10) by batch:");
        for (i, t) in total.iter().enumerate() {
            let rows = (i + 1) as f64;
            println!(
                "  batch {}: {:>6.2} ms  {:>6.1} tok/s  ({:.2}× batch 1)",
                i + 1,
                t * 1e3,
                rows / t,
                rows * total[0] / t
            );
        }
    }
}
