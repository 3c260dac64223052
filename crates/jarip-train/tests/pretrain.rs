//! End-to-end pretraining on a tiny model and real (tiny) shards: bit-exact resume after
//! SIGKILL, refusal of mismatched resumes, checkpoint hygiene, NaN handling, the ledger.

use jarip_data::{write_shards, DocumentSource, IngestOptions, ShardOptions};
use jarip_ledger::{Ledger, Manifest};
use jarip_model::ModelConfig;
use jarip_train::checkpoint::list_checkpoints;
use jarip_train::metrics::MetricsLog;
use jarip_train::{pretrain, PretrainOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "JARIP_TRAIN_TEST_CHILD";

/// A corpus of pseudo-sentences, a 300-token tokenizer trained on it, and shards.
fn fixture(dir: &Path) -> (PathBuf, PathBuf, usize) {
    let words =
        ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house", "tree", "한국어"];
    let mut x: u64 = 12345;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let docs: Vec<String> = (0..300)
        .map(|_| (0..20 + next() % 30).map(|_| words[next() % words.len()]).collect::<Vec<_>>().join(" ") + ".")
        .collect();
    let jsonl = dir.join("docs.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({ "text": d }).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let cfg = jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() };
    let tok = jarip_tokenizer::train(docs.into_iter(), &cfg).unwrap();
    let tok_dir = dir.join("tokenizer");
    tok.save(&tok_dir, vec![]).unwrap();
    let src = DocumentSource::new(&[&jsonl], IngestOptions::default()).unwrap();
    let shards = dir.join("shards");
    let so =
        ShardOptions { tokens_per_shard: 4_000, val_fraction: 0.1, seed: 1, batch_bytes: 1 << 16, hangul_repeat: 1 };
    write_shards(&tok, &src, &shards, &so).unwrap();
    (shards, tok_dir, tok.vocab_size())
}

fn tiny_options(dir: &Path, shards: &Path, vocab: usize, out: &str) -> PretrainOptions {
    let cfg_path = dir.join("tiny.json");
    std::fs::write(&cfg_path, ModelConfig::tiny(vocab).to_json()).unwrap();
    let mut o = PretrainOptions {
        data: shards.to_path_buf(),
        out: dir.join(out),
        config: Some(cfg_path),
        max_steps: Some(12),
        seed: 7,
        seq_len: 32,
        batch_size: 4,
        batch_tokens: Some(256), // two micro-batches per step
        checkpoint_every: 3,
        keep_checkpoints: 2,
        eval_every: 3,
        eval_tokens: 512,
        sample_every: 6,
        sample_tokens: 8,
        progress: false,
        ..Default::default()
    };
    o.schedule.warmup_steps = 3;
    o
}

fn losses(run: &Path) -> Vec<(u64, f64, Option<f64>)> {
    MetricsLog::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|l| (l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap(), l.get("val_loss").and_then(|v| v.as_f64())))
        .collect()
}

/// Entry point of the child process the SIGKILL test starts (runs only when asked to).
#[test]
#[ignore = "started as a child process by resume_after_sigkill_is_bit_exact"]
fn child_pretrain() {
    if let Ok(json) = std::env::var(CHILD_ENV) {
        let opts: PretrainOptions = serde_json::from_str(&json).unwrap();
        pretrain(&opts).unwrap();
    }
}

#[test]
fn resume_after_sigkill_is_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let (shards, _tok, vocab) = fixture(d.path());

    let reference = tiny_options(d.path(), &shards, vocab, "reference");
    let summary = pretrain(&reference).unwrap();
    assert_eq!(summary.steps, 12);
    let want = losses(&reference.out);
    assert_eq!(want.len(), 12);
    assert!(want[11].1 < want[0].1, "loss should fall: {want:?}");
    assert!(want[11].2.is_some(), "the last step evaluates");

    // The same run in a child process, slowed down, killed with SIGKILL after a checkpoint.
    let mut interrupted = tiny_options(d.path(), &shards, vocab, "interrupted");
    interrupted.step_delay_ms = 150;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_pretrain", "--ignored", "--nocapture"])
        .env(CHILD_ENV, serde_json::to_string(&interrupted).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !interrupted.out.join("ckpt-000006").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "child never reached step 6");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200)); // let it get part-way into later steps
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let reached = list_checkpoints(&interrupted.out).unwrap().last().unwrap().0;
    assert!(reached < 12, "the child should have been killed before the end (reached {reached})");

    let mut resumed = interrupted.clone();
    resumed.step_delay_ms = 0;
    resumed.resume = true;
    let s2 = pretrain(&resumed).unwrap();
    let got = losses(&resumed.out);
    assert_eq!(got.len(), 12, "{got:?}");
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(a.0, b.0);
        assert_eq!(a.1.to_bits(), b.1.to_bits(), "step {}: loss {} vs {}", a.0, a.1, b.1);
        assert_eq!(a.2.map(f64::to_bits), b.2.map(f64::to_bits), "step {}: val loss", a.0);
    }
    assert_eq!(summary.weights_sha256, s2.weights_sha256);

    // Ledger: start, checkpoints, resume — a valid chain with the step-0 weight hash first.
    let entries = Ledger::at(&resumed.out.join("ledger.jsonl")).verify_chain().unwrap();
    assert_eq!(entries[0].stage, "pretrain-start");
    assert_eq!(entries[0].details["step"], 0);
    let shards_manifest = Manifest::read(&shards).unwrap();
    assert_eq!(entries[0].details["shards_merkle_root"], shards_manifest.settings["merkle_root"]);
    assert_eq!(entries[0].details["weights_sha256"].as_str().unwrap().len(), 64);
    assert!(entries.iter().any(|e| e.stage == "pretrain-resume"));
    let ck: Vec<_> = entries.iter().filter(|e| e.stage == "checkpoint").collect();
    assert!(ck.iter().all(|e| e.details["data"]["sampler_after"].is_object()));
    assert_eq!(ck.last().unwrap().details["weights_sha256"].as_str().unwrap(), s2.weights_sha256);

    // keep_checkpoints = 2, each checkpoint complete and matching its manifest.
    let cks = list_checkpoints(&resumed.out).unwrap();
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 12]);
    for (_, dir) in &cks {
        let m = Manifest::read(dir).unwrap();
        assert_eq!(m.kind, "checkpoint");
        for f in ["model.safetensors", "optimizer.safetensors", "trainer.json", "config.json"] {
            assert!(m.files.contains_key(f), "{f} missing from manifest");
        }
        m.verify(dir).unwrap();
    }
    // No temporary directories left behind.
    let stray: Vec<_> = std::fs::read_dir(&resumed.out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // Mismatched resumes are refused with a clear message.
    let mut other = resumed.clone();
    other.config = None;
    other.depth = Some(1);
    let err = format!("{:#}", pretrain(&other).unwrap_err());
    assert!(err.contains("config differs"), "{err}");
    let mut other = resumed.clone();
    other.seq_len = 16;
    assert!(format!("{:#}", pretrain(&other).unwrap_err()).contains("seq_len"));
    // A fresh run into a directory with checkpoints is refused.
    let mut again = reference.clone();
    again.resume = false;
    assert!(format!("{:#}", pretrain(&again).unwrap_err()).contains("--resume"));
}

#[test]
fn divergence_stops_with_error_and_keeps_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let (shards, _tok, vocab) = fixture(d.path());
    let mut o = tiny_options(d.path(), &shards, vocab, "nan");
    o.max_steps = Some(40);
    o.checkpoint_every = 2;
    o.optimizer.lr = 1e30;
    o.optimizer.grad_clip = 0.0;
    o.schedule.warmup_steps = 0;
    let err = format!("{:#}", pretrain(&o).unwrap_err());
    assert!(err.contains("not finite") && err.contains("checkpoint"), "{err}");
    for (_, dir) in list_checkpoints(&o.out).unwrap() {
        Manifest::read(&dir).unwrap().verify(&dir).unwrap();
    }
}

#[test]
fn missing_shards_and_limits_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let (shards, tok, vocab) = fixture(d.path());
    let mut o = tiny_options(d.path(), &shards, vocab, "bad");
    o.data = d.path().join("nowhere");
    o.tokenizer = Some(tok);
    assert!(pretrain(&o).is_err());
    let mut o = tiny_options(d.path(), &shards, vocab, "bad2");
    o.max_steps = None;
    assert!(format!("{:#}", pretrain(&o).unwrap_err()).contains("limit"));
    let mut o = tiny_options(d.path(), &shards, vocab, "bad3");
    o.seq_len = 64; // the tiny config's rotary tables cover 32
    assert!(format!("{:#}", pretrain(&o).unwrap_err()).contains("rotary"));
}

/// The replica count is part of a run's definition: one process standing in for two
/// data-parallel replicas resumes bit for bit, keeps the recorded count, and trains to the same
/// loss as plain accumulation up to rounding (the same gradients, added in another order).
#[test]
fn data_parallel_replicas_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, _, vocab) = fixture(dir.path());
    let run = |out: &str, replicas: usize, stop: Option<u64>, resume: bool| {
        let mut o = tiny_options(dir.path(), &shards, vocab, out);
        o.max_steps = Some(6);
        o.batch_tokens = Some(512); // four micro-batches per step: two per replica
        o.replicas = Some(replicas);
        o.stop_at_step = stop;
        o.resume = resume;
        o.sample_every = 0;
        pretrain(&o)
    };
    let whole = run("r2", 2, None, false).unwrap();
    run("r2b", 2, Some(3), false).unwrap();
    let resumed = run("r2b", 2, None, true).unwrap();
    assert_eq!(resumed.weights_sha256, whole.weights_sha256, "a 2-replica run resumes bit for bit");
    let plain = run("r1", 1, None, false).unwrap();
    let (a, b) = (whole.final_loss.unwrap(), plain.final_loss.unwrap());
    assert!((a - b).abs() < 1e-3 * b.abs(), "2 replicas reach loss {a}, plain accumulation {b}");

    let start = Ledger::at(&dir.path().join("r2/ledger.jsonl")).verify_chain().unwrap().remove(0);
    assert_eq!(start.config["replicas"], 2);
    assert_eq!(start.details["processes"]["world_size"], 1);

    let err = run("r2b", 1, None, true).unwrap_err();
    assert!(format!("{err:#}").contains("replicas 2"), "{err:#}");
    let err = run("r3", 3, None, false).unwrap_err();
    assert!(format!("{err:#}").contains("cannot be split among 3"), "{err:#}");
}

/// bf16 training: the ledger records the path; stopping and resuming gives the same bits; the
/// portable path gives AVX512-BF16's bits (where the CPU has it); a resume that would change the
/// arithmetic is refused; the loss tracks fp32's.
#[test]
fn bf16_training_resumes_bit_exact_and_replays_on_the_portable_path() {
    use jarip_model::{MatmulPath, Precision};
    let dir = tempfile::tempdir().unwrap();
    let (shards, _, vocab) = fixture(dir.path());
    let run = |out: &str, kernel: Option<MatmulPath>, precision: Option<Precision>, stop: Option<u64>, resume: bool| {
        let mut o = tiny_options(dir.path(), &shards, vocab, out);
        o.max_steps = Some(6);
        o.precision = precision;
        o.bf16_kernel = kernel;
        o.stop_at_step = stop;
        o.resume = resume;
        o.sample_every = 0;
        pretrain(&o)
    };
    let portable = Some(MatmulPath::Bf16Portable);
    let whole = run("bf", portable, None, None, false).unwrap();
    run("bf-split", portable, None, Some(3), false).unwrap();
    // Resuming without naming a precision keeps the run's own.
    let resumed = run("bf-split", None, None, None, true).unwrap();
    assert_eq!(resumed.weights_sha256, whole.weights_sha256, "a bf16 run resumes bit for bit");

    let start = Ledger::at(&dir.path().join("bf/ledger.jsonl")).verify_chain().unwrap().remove(0);
    assert_eq!(start.config["matmul"], "bf16_portable");
    let err = run("bf-split", None, Some(Precision::Fp32), None, true).unwrap_err();
    assert!(format!("{err:#}").contains("bf16_portable"), "{err:#}");

    let fp32 = run("fp", None, None, None, false).unwrap();
    assert_ne!(fp32.weights_sha256, whole.weights_sha256, "bf16 products change the arithmetic");
    let (a, b) = (whole.final_loss.unwrap(), fp32.final_loss.unwrap());
    assert!((a - b).abs() < 2e-2 * b, "bf16 reaches loss {a}, fp32 {b}");
    let fp32_start = Ledger::at(&dir.path().join("fp/ledger.jsonl")).verify_chain().unwrap().remove(0);
    assert!(fp32_start.config.get("matmul").is_none(), "fp32 runs record as before");

    if MatmulPath::Bf16Avx512.available() {
        let native = run("bf-native", None, Some(Precision::Bf16), None, false).unwrap();
        assert_eq!(native.weights_sha256, whole.weights_sha256, "AVX512-BF16 and portable give the same bits");
    } else {
        eprintln!("skipped the AVX512-BF16 comparison: this CPU lacks it");
    }
    if MatmulPath::Bf16Amx.available() {
        let amx = run("bf-amx", Some(MatmulPath::Bf16Amx), None, None, false).unwrap();
        let again = run("bf-amx2", Some(MatmulPath::Bf16Amx), None, None, false).unwrap();
        assert_eq!(amx.weights_sha256, again.weights_sha256, "AMX runs are deterministic on one machine");
        assert!((amx.final_loss.unwrap() - b).abs() < 2e-2 * b);
    } else {
        eprintln!("skipped the AMX run: this CPU lacks AMX-BF16");
    }
}
