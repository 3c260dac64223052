//! Writes a randomly initialised model as a servable checkpoint directory, for serving
//! benchmarks at sizes no training run has produced (vLLM benchmarks dummy weights the same
//! way: serving speed does not depend on the weights' values).
//!
//! cargo run --release -p jarip-serve --example random_model -- TOKENIZER_JSON DEPTH OUT_DIR [SEED]

use anyhow::{Context, Result};
use jarip_model::Device;
use jarip_model::{Gpt, ModelConfig};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tok, depth, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: random_model TOKENIZER_JSON DEPTH OUT_DIR [SEED]");
    };
    let seed: u64 = rest.first().map_or(Ok(0), |s| s.parse()).context("SEED must be an integer")?;
    let tokenizer = jarip_tokenizer::Tokenizer::load(&PathBuf::from(tok))?;
    let cfg = ModelConfig::from_depth(depth.parse().context("DEPTH must be an integer")?, tokenizer.vocab_size());
    let model = Gpt::new(&cfg, seed, &Device::Cpu)?;
    let dir = PathBuf::from(out).join("ckpt-000000");
    std::fs::create_dir_all(&dir)?;
    model.save(&dir)?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json())?;
    std::fs::write(dir.join("trainer.json"), "{\"step\": 0}\n")?;
    let settings = serde_json::json!({
        "model": cfg, "seed": seed, "tokenizer_sha256": tokenizer.sha256(), "note": "random initialisation, not trained",
    });
    jarip_ledger::Manifest::for_dir("checkpoint", &dir, vec![], settings)?.write(&dir)?;
    println!("{} ({:.1}M parameters, random init, seed {seed})", dir.display(), model.num_params() as f64 / 1e6);
    Ok(())
}
