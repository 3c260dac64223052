//! jarip-data: everything between raw text on disk and token windows fed to the model.
//!
//! The crate owns:
//! - [`ingest`]: expanding input paths (files, directories, globs) and streaming documents from
//!   `.txt`, `.jsonl`, `.parquet` (each optionally `.gz`/`.zst`) and from our own prepared output;
//! - [`clean`]: Unicode NFC, control-character removal, trimming, length filter;
//! - [`dedup`]: exact (128-bit content hash) and near-duplicate (MinHash + LSH) removal;
//! - [`prepare`]: the `data prepare` stage (ingest → clean → dedup → `documents.jsonl`,
//!   `summary.json`, `manifest.json`), written atomically;
//! - [`shard`]: tokenizing prepared documents into binary `train-*.bin` / `val-*.bin` shards;
//! - [`conversations`], [`sft`]: chat data for fine-tuning (validated conversation files, the
//!   demo conversation generator, packing with assistant-only loss masks);
//! - [`contamination`]: which evaluation items a corpus holds (GPT-3's 13-gram rule, Llama 2's
//!   ≥ 10-token spans), exact, streamed past an index of the evaluation set's n-grams;
//! - [`reader`]: memory-mapped shard sets, validated, with a deterministic, resumable batch sampler.
//!
//! Every output directory is built with [`jarip_ledger::AtomicDir`] and described by a
//! [`jarip_ledger::Manifest`]; the same inputs and seed always give the same bytes out.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod clean;
pub mod contamination;
pub mod conversations;
pub mod dedup;
pub mod encoder;
pub mod ingest;
pub mod licence;
pub mod prepare;
pub mod reader;
pub mod script;
pub mod sft;
pub mod shard;

pub use clean::{clean_text, CleanOptions, Cleaned};
pub use dedup::{DedupDecision, DedupOptions, Deduper, Signature};
pub use encoder::TokenEncoder;
pub use ingest::{Document, DocumentSource, IngestOptions, IngestStats, InputFile, InputFormat, OnInvalid};
pub use prepare::{prepare, PrepareOptions, PrepareSummary};
pub use reader::{Batch, BatchSampler, SamplerState, ShardInfo, ShardSet, SplitInfo};
pub use script::ScriptCounts;
pub use shard::{mostly_hangul, write_shards, Dtype, ShardOptions, ShardSummary, Split, SplitSummary};
