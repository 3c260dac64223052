//! `jarip sft`, `jarip generate` and `jarip chat`: flags onto the fine-tuning options and the
//! inference engine.

use crate::pretrain_cmd::{on_ranks, EngineArgs};
use anyhow::{Context, Result};
use clap::Args;
use jarip_infer::{Engine, Request, SamplingParams};
use jarip_infer::{KvFormat, WeightFormat};
use jarip_tokenizer::{Message, Role};
use jarip_train::{SftOptions, SftSummary};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SftArgs {
    /// The base model: a checkpoint directory, or a run directory (its selected checkpoint,
    /// else its newest).
    #[arg(long)]
    pub base: PathBuf,
    /// Conversations, one {"messages":[{"role","content"},…]} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory of the fine-tuning.
    #[arg(long)]
    pub out: PathBuf,
    /// Ledger to append to (default: OUT/ledger.jsonl).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Or after this many passes over the training conversations (default: set by the data,
    /// 1 to 4 passes, more for smaller sets).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Share of conversations held out for validation and checkpoint selection (by item).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Share of each kind's template variants held out whole (conversations with a
    /// "template": "kind/variant" field; kinds with at least three variants).
    #[arg(long, default_value_t = 0.2)]
    pub template_fraction: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: u64,
    /// Checkpoints to keep (0 = all); the selected one is always kept.
    #[arg(long, default_value_t = 0)]
    pub keep_checkpoints: usize,
    /// Evaluate held-out conversations and keep a checkpoint every N steps (default: four
    /// times an epoch; 0: only at the end, and the last checkpoint is the run's model).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Stop after this many evaluations without a lower held-out loss (0: never stop early).
    #[arg(long, default_value_t = 3)]
    pub patience: u32,
    /// Pretraining shards whose text is mixed into every batch (keeps what pretraining taught).
    #[arg(long)]
    pub mix_data: Option<PathBuf>,
    /// Share of every batch's windows read from --mix-data.
    #[arg(long, default_value_t = 0.25)]
    pub mix_fraction: f64,
    /// Fine-tune a base that no jarip ledger proves (another team's model). Refused without this;
    /// with it, the ledger, the model card and `provenance verify` say the result is not from scratch.
    #[arg(long)]
    pub allow_foreign_base: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl SftArgs {
    pub fn options(&self) -> SftOptions {
        let mut o = SftOptions {
            base: self.base.clone(),
            data: self.data.clone(),
            out: self.out.clone(),
            ledger: self.ledger.clone(),
            max_steps: self.max_steps,
            epochs: self.epochs,
            resume: self.resume,
            seed: self.seed,
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            replicas: self.engine.replicas,
            val_fraction: self.val_fraction,
            template_fraction: self.template_fraction,
            keep_checkpoints: self.keep_checkpoints,
            eval_every: self.eval_every,
            patience: (self.patience > 0).then_some(self.patience),
            mix_data: self.mix_data.clone(),
            mix_fraction: self.mix_fraction,
            kernels: self.engine.kernels(),
            precision: self.engine.precision.map(Into::into),
            bf16_kernel: self.engine.bf16_kernel,
            device: self.engine.device.clone(),
            progress: !self.engine.no_progress,
            allow_foreign_base: self.allow_foreign_base,
            ..Default::default()
        };
        o.optimizer.lr = self.lr;
        o.schedule.warmup_steps = self.warmup_steps;
        o
    }
}

pub fn sft(a: &SftArgs) -> Result<SftSummary> {
    let (s, leader) = on_ranks(a.engine.dist, &a.engine.device, |comm, device| {
        let mut o = a.options();
        o.device = device.to_string();
        jarip_train::sft_parallel(&o, comm)
    })?;
    if !leader {
        return Ok(s);
    }
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "sft: {} steps{}, loss {}; base {} ({}…)",
        s.steps,
        s.stopped_early_at.map_or(String::new(), |at| format!(" (stopped early at {at})")),
        fmt(s.final_loss),
        s.base_checkpoint.display(),
        &s.base_weights_sha256[..12],
    );
    println!("{}", sft_verdict(&s));
    Ok(s)
}

/// One line: did fine-tuning lower the held-out loss, and which checkpoint is the model.
pub fn sft_verdict(s: &SftSummary) -> String {
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let (base, sel) = (s.base_eval(), s.selected_eval());
    let verdict = match (base, sel) {
        (Some(b), Some(x)) if x.val_loss < b.val_loss => "improved",
        (Some(_), Some(_)) => "NOT improved (the base is kept)",
        _ => "not measured",
    };
    format!(
        "sft verdict: held-out loss {} → {} ({verdict}); held-out-template loss {} → {}; model: {} (step {})",
        fmt(base.map(|e| e.val_loss)),
        fmt(sel.map(|e| e.val_loss)),
        fmt(base.and_then(|e| e.template_loss)),
        fmt(sel.and_then(|e| e.template_loss)),
        s.selected_checkpoint.display(),
        s.selected_step
    )
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed of the sampler (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Text that ends generation (not returned); repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep only the end of a prompt longer than the context instead of refusing it.
    #[arg(long)]
    pub truncate: bool,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            top_logprobs: 0,
        }
    }

    fn request(&self, prompt: Vec<u32>) -> Request {
        let mut r = Request::new(prompt, self.max_tokens, self.params());
        r.stop = self.stop.clone();
        r.truncate_prompt = self.truncate;
        r
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A checkpoint directory, or a run directory (its selected checkpoint, else its newest).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print {"text","tokens",…} as JSON instead of streaming the text.
    #[arg(long)]
    pub json: bool,
    /// Also report each token's log-probability and this many alternatives (with --json).
    #[arg(long)]
    pub logprobs: Option<usize>,
    /// Render the prompt as one user turn of the chat template.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's turn.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Weight matrices in memory: f32, bf16 (half the bytes, the f32 arithmetic on rounded
    /// weights) or q8_0 (8-bit blocks, fastest decoding); default: as stored.
    #[arg(long)]
    pub weights: Option<WeightFormat>,
    /// Keys and values cached as f32, or f16 (half the memory; faster at long contexts).
    #[arg(long, default_value = "f32")]
    pub kv_cache: KvFormat,
    /// Sample from the model's whole distribution: no mask keeping the output valid UTF-8
    /// (to compare tokens and log-probabilities with engines that apply none).
    #[arg(long)]
    pub raw: bool,
}

fn load_engine(model: &std::path::Path, weights: Option<WeightFormat>, kv: KvFormat) -> Result<(Engine, PathBuf)> {
    let loaded = jarip_infer::load_model(model, &candle_core::Device::Cpu)?;
    if !loaded.is_own() {
        eprintln!("note: {} is {}", loaded.dir.display(), loaded.origin_label());
    }
    let format = weights.unwrap_or(loaded.stored_format);
    Ok((Engine::with_format(&loaded.model, loaded.tokenizer, format, kv)?, loaded.dir))
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let (engine, _dir) = load_engine(&a.model, a.weights, a.kv_cache)?;
    let tok = engine.tokenizer();
    let prompt = if a.chat {
        let mut msgs: Vec<Message> = a.system.iter().map(|s| Message::new(Role::System, s.clone())).collect();
        msgs.push(Message::new(Role::User, a.prompt.clone()));
        tok.render_chat(&msgs, true)?.ids
    } else {
        let mut ids = vec![tok.bos_id()];
        ids.extend(tok.encode(&a.prompt));
        ids
    };
    let prompt_ids = prompt.clone();
    let mut req = a.sampling.request(prompt);
    req.raw = a.raw;
    if a.chat {
        req.stop_tokens = engine.chat_stop_tokens();
    } else {
        req.stop_tokens = vec![tok.eos_id()];
    }
    if let Some(n) = a.logprobs {
        req.logprobs = true;
        req.sampling.top_logprobs = n;
    }
    req.sampling.validate().map_err(anyhow::Error::msg)?;
    let stdout = std::io::stdout();
    if a.json {
        let c = engine.generate(req, |_| {})?;
        let mut v = serde_json::json!({
            "text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason, "prompt_ids": prompt_ids,
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
        });
        if a.logprobs.is_some() {
            v["logprobs"] = serde_json::to_value(&c.logprobs)?;
        }
        println!("{v}");
    } else {
        let mut out = stdout.lock();
        write!(out, "{}", a.prompt)?;
        engine.generate(req, |s| {
            let _ = write!(out, "{s}");
            let _ = out.flush();
        })?;
        writeln!(out)?;
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// A checkpoint directory, or a run directory (its selected checkpoint, else its newest).
    #[arg(long)]
    pub model: PathBuf,
    /// A system message to start every conversation with.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Weight matrices in memory: f32, bf16 (half the bytes, the f32 arithmetic on rounded
    /// weights) or q8_0 (8-bit blocks, fastest decoding); default: as stored.
    #[arg(long)]
    pub weights: Option<WeightFormat>,
    /// Keys and values cached as f32, or f16 (half the memory; faster at long contexts).
    #[arg(long, default_value = "f32")]
    pub kv_cache: KvFormat,
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Say(String),
    Reset,
    System(String),
    Quit,
    Help,
    Nothing,
}

fn parse_line(s: &str) -> Line {
    let t = s.trim();
    match t.split_once(' ').map_or((t, ""), |(a, b)| (a, b.trim())) {
        ("/quit" | "/exit", _) => Line::Quit,
        ("/reset", _) => Line::Reset,
        ("/system", rest) => Line::System(rest.to_string()),
        ("/help", _) => Line::Help,
        _ if t.is_empty() => Line::Nothing,
        _ => Line::Say(t.to_string()),
    }
}

/// An interactive chat on a terminal, or one user turn per line of piped input.
pub fn chat(a: &ChatArgs) -> Result<()> {
    let (engine, dir) = load_engine(&a.model, a.weights, a.kv_cache)?;
    // Each turn resends the conversation: keep its keys and values rather than prefill it again.
    let engine = engine.with_prefix_cache(256 << 20);
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    let mut system = a.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let stdout = std::io::stdout();
    if interactive {
        eprintln!("jarip chat with {} — /reset, /system TEXT, /quit, /help", dir.display());
    }
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("\n> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read input")?;
        match parse_line(&line) {
            Line::Quit => break,
            Line::Nothing => continue,
            Line::Help => {
                eprintln!("/reset forgets the conversation, /system TEXT sets the system message, /quit ends")
            }
            Line::Reset => {
                history.clear();
                eprintln!("(conversation cleared)");
            }
            Line::System(s) => {
                system = if s.is_empty() { None } else { Some(s) };
                history.clear();
                eprintln!("(system message set; conversation cleared)");
            }
            Line::Say(text) => {
                history.push(Message::new(Role::User, text));
                let render = |history: &[Message]| -> Result<Vec<u32>> {
                    let mut msgs: Vec<Message> = system.iter().map(|s| Message::new(Role::System, s.clone())).collect();
                    msgs.extend(history.iter().cloned());
                    Ok(engine.tokenizer().render_chat(&msgs, true)?.ids)
                };
                let mut ids = render(&history)?;
                // Keep the conversation inside the context: forget the oldest turns first.
                let room = engine.model().config().max_seq_len.saturating_sub(a.sampling.max_tokens.min(256));
                while ids.len() > room && history.len() > 1 {
                    history.drain(..history.len().min(2));
                    ids = render(&history)?;
                }
                let mut req = a.sampling.request(ids);
                req.stop_tokens = engine.chat_stop_tokens();
                req.truncate_prompt = true;
                let mut out = stdout.lock();
                let c = engine.generate(req, |s| {
                    let _ = write!(out, "{s}");
                    let _ = out.flush();
                })?;
                writeln!(out)?;
                history.push(Message::new(Role::Assistant, c.text.trim().to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognised() {
        assert_eq!(parse_line("/quit"), Line::Quit);
        assert_eq!(parse_line("  /reset "), Line::Reset);
        assert_eq!(parse_line("/system 당신은 친절합니다"), Line::System("당신은 친절합니다".into()));
        assert_eq!(parse_line("/system"), Line::System(String::new()));
        assert_eq!(parse_line("안녕하세요"), Line::Say("안녕하세요".into()));
        assert_eq!(parse_line("   "), Line::Nothing);
    }
}
