//! With the `cuda` feature, compiles `cuda/train.cu` (the fused training kernels) to PTX with
//! nvcc, for the compute capability in `CUDA_COMPUTE_CAP` (default 90, Hopper), as candle's own
//! kernels are built. The PTX is embedded in the library and JIT-compiled by the driver when the
//! first fused op runs; a toolkit no newer than the GPU machine's driver must build it
//! (`scripts/gpu-check --build` uses CUDA 13.0 for driver 580).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda/train.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("train.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("cuda/train.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} for cuda/train.cu: {e} (is the CUDA toolkit on PATH?)"));
    assert!(status.success(), "{nvcc} failed on cuda/train.cu ({status})");
}
