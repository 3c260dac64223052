//! Prints this machine's measured fp32 and bf16 peaks (`cargo run --release -p jarip-kernels
//! --example peak`): what jarip's MFU figures divide by.

fn main() {
    let p = jarip_kernels::peak::measure();
    println!("{}", serde_json::to_string_pretty(&p).expect("serialises"));
}
