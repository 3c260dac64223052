//! Measures `prepare` throughput on generated text.
//! `cargo run --release -p jarip-data --example prepare_bench -- [MB] [jsonl|txt]`

use jarip_data::{prepare, DocumentSource, IngestOptions, PrepareOptions};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let kind = args.get(2).map(String::as_str).unwrap_or("jsonl");
    let dir = tempfile::tempdir()?;
    let words =
        ["대한민국", "서울", "문화", "역사", "the", "model", "language", "데이터", "학습", "과학", "2024", "사람들이"];
    let mut x: u64 = 1;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut doc = |len: usize| {
        let mut s = String::with_capacity(len + 64);
        while s.len() < len {
            let r = next();
            if r % 3 == 0 {
                s.push_str(words[(r as usize / 3) % words.len()]);
            } else {
                for _ in 0..(r % 4 + 1) {
                    s.push(char::from_u32(0xAC00 + (next() % 11172) as u32).unwrap());
                }
            }
            s.push(if r % 17 == 0 { '\n' } else { ' ' });
        }
        s
    };
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input)?;
    let mut total = 0;
    if kind == "txt" {
        let mut i = 0;
        while total < mb << 20 {
            let d = doc(25_000);
            total += d.len();
            std::fs::write(input.join(format!("{i:06}.txt")), d)?;
            i += 1;
        }
    } else {
        let mut f = std::io::BufWriter::new(std::fs::File::create(input.join("docs.jsonl"))?);
        while total < mb << 20 {
            let d = doc(4_000);
            total += d.len();
            writeln!(f, "{}", serde_json::json!({ "text": d }))?;
        }
    }
    let src = DocumentSource::new(&[input], IngestOptions::default())?;
    let s = prepare(&src, &dir.path().join("out"), &PrepareOptions::default())?;
    println!(
        "{kind}: {} docs, {:.1} MB in {:.2} s = {:.1} MB/s on {} rayon threads (out {} docs, {} exact, {} near dups)",
        s.documents_in,
        s.bytes_in as f64 / 1e6,
        s.elapsed_s,
        s.mb_per_s,
        rayon::current_num_threads(),
        s.documents_out,
        s.exact_duplicates,
        s.near_duplicates
    );
    Ok(())
}
