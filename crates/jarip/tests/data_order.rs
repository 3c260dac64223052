//! `jarip provenance data-order` end to end: a run's own weights carry the trace of its
//! recorded data order (p below α), a twin trained on the same data, from the same seeded
//! initialisation, in another order does not, nor does an independent model (with its own
//! tokenizer, so the run's text is re-tokenised), and the trace survives fine-tuning on other
//! text. The corpus is real text (the Rust sources of regex-syntax at the version Cargo.lock pins,
//! from cargo's registry: the same bytes on every machine and after every change to this
//! workspace), which a tiny model partly memorises: random word salad leaves no trace a tiny
//! model keeps.

mod common;

use common::{fails_with, jarip, ok, s};
use std::path::{Path, PathBuf};

/// The crate whose sources are the corpus: regex-syntax's are half documentation prose, which the
/// tiny model memorises enough to leave a clear trace (candle-core's and tokio's left the run's
/// own weights at log10 p −7.4 and −6.0 and fine-tuning below α; regex-syntax's −8.8, −7.4).
const CORPUS_CRATE: &str = "regex-syntax";

/// The source directory of the [`CORPUS_CRATE`] version Cargo.lock pins (the first listed), in
/// cargo's registry.
fn pinned_sources() -> PathBuf {
    let krate = CORPUS_CRATE;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains(&format!("name = \"{krate}\"\n")))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_else(|| panic!("Cargo.lock does not pin {krate}"));
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = home.join("registry").join("src");
    let found = std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join(format!("{krate}-{version}")).join("src")))
        .find(|p| p.is_dir());
    found.unwrap_or_else(|| panic!("{krate} {version} sources are not under {}", registry.display()))
}

/// About 280k tokens of Rust source ([`CORPUS_CRATE`]'s, files in path order) in 2,000-character
/// documents.
fn source_corpus(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = Vec::new();
    {
        let mut stack = vec![pinned_sources()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    'outer: for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(2000) {
            docs.push(serde_json::json!({ "text": chunk.iter().collect::<String>() }).to_string());
            if docs.len() == 300 {
                break 'outer;
            }
        }
    }
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("docs.jsonl"), docs.join("\n")).unwrap();
    corpus
}

/// prepare (the sources under the workspace's licence) → tokenizer (`vocab` tokens) → shards,
/// into `run`.
fn shards(corpus: &Path, run: &Path, vocab: usize) {
    let r = |p: &str| s(&run.join(p));
    let licence = "*.jsonl=Apache-2.0";
    ok(&jarip(&["data", "prepare", &s(corpus), "--out", &r("prepared"), "--no-near-dedup", "--licence", licence]));
    ok(&jarip(&["tokenizer", "train", &r("prepared"), "--vocab-size", &vocab.to_string(), "--out", &r("tok")]));
    ok(&jarip(&["data", "shard", "--tokenizer", &r("tok"), &r("prepared"), "--out", &r("shards")]));
}

fn config(dir: &Path, vocab: usize) -> PathBuf {
    let cfg = jarip_model::ModelConfig {
        n_layer: 1,
        n_embd: 64,
        n_head: 2,
        n_kv_head: 2,
        mlp_hidden: 256,
        max_seq_len: 128,
        ..jarip_model::ModelConfig::tiny(vocab)
    };
    let p = dir.join(format!("tiny{vocab}.json"));
    std::fs::write(&p, cfg.to_json()).unwrap();
    p
}

/// 1.5 epochs of 64-token windows, 8 a step: half the windows are read twice, the rest once.
fn pretrain(run: &Path, out: &Path, config: &Path, seed: u64, data_seed: Option<u64>) {
    let (shards, tok, out, config) = (s(&run.join("shards")), s(&run.join("tok")), s(out), s(config));
    let train_tokens = jarip_data::ShardSet::open(&run.join("shards"), None).unwrap().train_tokens();
    let tokens = (train_tokens * 3 / 2).to_string();
    let seed = seed.to_string();
    let mut args = vec![
        "pretrain",
        "--data",
        &shards,
        "--tokenizer",
        &tok,
        "--out",
        &out,
        "--config",
        &config,
        "--tokens",
        &tokens,
        "--checkpoint-every",
        "400",
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--schedule",
        "wsd",
        "--eval-every",
        "0",
        "--eval-tokens",
        "256",
        "--sample-every",
        "0",
        "--seed",
        &seed,
    ];
    let ds = data_seed.map(|d| d.to_string());
    if let Some(d) = &ds {
        args.extend(["--data-seed", d.as_str()]);
    }
    ok(&jarip(&args));
}

fn data_order(run: &Path, model: &Path, extra: &[&str]) -> serde_json::Value {
    let (run, model) = (s(run), s(model));
    // Four windows a sampled step: more text scored, less noise per unit.
    let mut args = vec!["provenance", "data-order", &run, "--model", &model, "--json", "--windows-per-batch", "4"];
    args.extend_from_slice(extra);
    let r: serde_json::Value = serde_json::from_str(&ok(&jarip(&args))).unwrap();
    eprintln!("{model}: ρ = {:.3}, log10 p = {:.2}, {}", r["spearman"], r["log10_p"], r["verdict"]);
    r
}

#[test]
fn the_order_leaves_a_trace_only_in_the_weights_trained_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = source_corpus(dir.path());
    let run = dir.path().join("run");
    shards(&corpus, &run, 512);
    let cfg = config(dir.path(), 512);
    pretrain(&run, &run, &cfg, 1, None);

    // The run's own weights: the order is found, far below α = 1e-6.
    let own = data_order(&run, &run, &[]);
    assert_eq!(own["verdict"], "trained-on-this-order", "{own:#}");
    assert!(own["log10_p"].as_f64().unwrap() < -6.0 && own["spearman"].as_f64().unwrap() < 0.0, "{own:#}");
    assert!(own["kendall"].as_f64().unwrap() < 0.0);
    assert!(own["batches"].as_u64().unwrap() >= 300, "{own:#}");
    assert_eq!(own["retokenised"], false);
    assert!(own["revisits"].as_str().unwrap().contains("last visit"), "1.5 epochs: {own:#}");
    // Recorded in the run's ledger with its report and plot.
    let ledger = std::fs::read_to_string(run.join("ledger.jsonl")).unwrap();
    let entry: serde_json::Value =
        serde_json::from_str(ledger.lines().rfind(|l| l.contains("\"data-order\"")).unwrap()).unwrap();
    assert_eq!(entry["details"]["verdict"], "trained-on-this-order");
    assert!(Path::new(entry["details"]["plot"].as_str().unwrap()).is_file());

    // The same weights exported (HF layout; GGUF quantized to Q8_0) carry the same trace.
    let hf = dir.path().join("hf");
    ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&hf)]));
    let gguf = dir.path().join("model.gguf");
    ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&gguf), "--dtype", "q8_0"]));
    for m in [&hf, &gguf] {
        let r = data_order(&run, m, &["--no-ledger"]);
        assert_eq!(r["verdict"], "trained-on-this-order", "{}: {r:#}", m.display());
    }

    // A twin: same data, same initialisation seed and config, another data order.
    let twin = dir.path().join("twin");
    pretrain(&run, &twin, &cfg, 1, Some(99));
    let pretrain_start = std::fs::read_to_string(twin.join("ledger.jsonl")).unwrap();
    assert!(pretrain_start.contains("\"data_seed\":99"), "the data seed is recorded");
    let t = data_order(&run, &twin, &["--no-ledger"]);
    assert_eq!(t["verdict"], "not-shown", "{t:#}");
    // ... and the twin's own order is found in it.
    assert_eq!(data_order(&twin, &twin, &["--no-ledger"])["verdict"], "trained-on-this-order");

    // An independent model with its own tokenizer: the run's text is re-tokenised.
    let other = dir.path().join("other");
    shards(&corpus, &other, 400);
    pretrain(&other, &other, &config(dir.path(), 400), 2, None);
    let i = data_order(&run, &other, &["--no-ledger"]);
    assert_eq!((i["verdict"].as_str(), i["retokenised"].as_bool()), (Some("not-shown"), Some(true)), "{i:#}");

    // Fine-tuned on other text (Korean conversations) for 100 steps: the trace survives.
    let convs = dir.path().join("convs.jsonl");
    common::conversations(&convs);
    let sft = dir.path().join("sft");
    ok(&jarip(&[
        "sft",
        "--base",
        &s(&run),
        "--data",
        &s(&convs),
        "--out",
        &s(&sft),
        "--max-steps",
        "100",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--no-progress",
    ]));
    let f = data_order(&run, &sft.join("ckpt-000100"), &["--no-ledger"]);
    assert_eq!(f["verdict"], "trained-on-this-order", "{f:#}");

    // The card lists the sources with their licence and the recorded data-order test.
    ok(&jarip(&["provenance", "card", &s(&run)]));
    let card = std::fs::read_to_string(run.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("## Data sources and licences") && card.contains("| Apache-2.0 | 1 |"), "{card}");
    assert!(card.contains("## Data-order tests") && card.contains("trained-on-this-order"), "{card}");

    // Changed shards are named; a ledger without cursors is refused.
    let shard = run.join("shards/train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    fails_with(
        &jarip(&["provenance", "data-order", &s(&run), "--model", &s(&run), "--no-ledger"]),
        &["train-00000.bin"],
    );
    bytes[last] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let stripped: Vec<String> = ledger
        .lines()
        .map(|l| {
            let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
            if e["stage"] == "checkpoint" {
                e["details"]["data"] = serde_json::Value::Null;
            }
            e.to_string()
        })
        .collect();
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("ledger.jsonl"), stripped.join("\n")).unwrap();
    fails_with(
        &jarip(&["provenance", "data-order", &s(&bare), "--model", &s(&run), "--no-ledger"]),
        &["records no data cursor"],
    );
}
