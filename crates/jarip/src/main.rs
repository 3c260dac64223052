fn main() {
    println!("jarip {}", jarip_ledger::JARIP_VERSION);
}
