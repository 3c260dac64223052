//! The lineage decision of earlier versions (every tensor as f32 in memory, descriptive scores
//! placed between references computed in the run), for `bench/lineage` to time next to the
//! hypothesis test: `old_lineage A B` prints the verdict, the score and the seconds.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = args.as_slice() else {
        anyhow::bail!("usage: old_lineage A B");
    };
    let t0 = std::time::Instant::now();
    let opts = jarip_provenance::calibrate::LineageOptions::default();
    let r = jarip_provenance::calibrate::lineage_paths(a.as_ref(), b.as_ref(), &opts)?;
    println!(
        "{{\"verdict\": \"{}\", \"score\": {:.4}, \"unrelated_ref\": {:.4}, \"derived_ref\": {:.4}, \"seconds\": {:.1}}}",
        r.verdict,
        r.score,
        r.calibration.unrelated,
        r.calibration.derived,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
