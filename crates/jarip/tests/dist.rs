//! Data-parallel pretraining over MPI (`--features mpi`, `mpirun` on the PATH): two ranks (MPI's
//! own all-reduce) and three ranks (gathered sums added in rank order) train the weights one
//! process reaches with `--replicas N`, bit for bit; the run's ledger records the ranks, verifies,
//! and its intervals replay in one process; ranks without `--dist mpi`, or a step that cannot be
//! split, end the job with the reason.
#![cfg(feature = "mpi")]

mod common;
use common::{jarip, ok, s};

use jarip_ledger::Ledger;
use jarip_model::ModelConfig;
use std::path::Path;
use std::process::{Command, Output};

/// `mpirun -n ranks jarip ARGS` (Open MPI and MPICH both take `-n`; the Open MPI variables let a
/// CI container run it as root, with more ranks than cores).
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        // Containers often forbid the cross-process memory calls of Open MPI's single-copy path.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .args(["-n", &ranks.to_string(), env!("CARGO_BIN_EXE_jarip")])
        .args(args)
        .output()
        .expect("run mpirun (install an MPI, e.g. Debian's openmpi-bin)")
}

fn pretrain_args(run: &Path, out: &str, config: &Path, batch_tokens: usize) -> Vec<String> {
    [
        "pretrain",
        "--data",
        &s(&run.join("shards")),
        "--tokenizer",
        &s(&run.join("tok")),
        "--out",
        &s(&run.join(out)),
        "--config",
        &s(config),
        "--max-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "0",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--batch-tokens",
        &batch_tokens.to_string(),
        "--eval-every",
        "2",
        "--eval-tokens",
        "128",
        "--sample-every",
        "0",
        "--seed",
        "5",
        "--no-progress",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn last_weights(run: &Path) -> String {
    let entries = Ledger::at(&run.join("ledger.jsonl")).verify_chain().unwrap();
    let last = entries.iter().rev().find(|e| e.stage == "checkpoint").expect("a checkpoint entry");
    last.details["weights_sha256"].as_str().unwrap().to_string()
}

#[test]
fn two_mpi_ranks_train_what_one_process_with_two_replicas_does() {
    let d = tempfile::tempdir().unwrap();
    let run = common::tiny_shards(d.path());
    let config = d.path().join("tiny.json");
    std::fs::write(&config, ModelConfig { n_layer: 1, n_embd: 64, ..ModelConfig::tiny(300) }.to_json()).unwrap();
    // 4 micro-batches of 2×32 tokens per step: 2 per rank.
    let args = pretrain_args(&run, "dp", &config, 256);
    let mut mpi_args: Vec<&str> = args.iter().map(String::as_str).collect();
    mpi_args.extend(["--dist", "mpi"]);
    let out = mpirun(2, &mpi_args);
    let stdout = ok(&out);
    assert_eq!(stdout.matches("pretrained ").count(), 1, "only rank 0 reports: {stdout}");

    let solo_args = pretrain_args(&run, "solo", &config, 256);
    let mut solo: Vec<&str> = solo_args.iter().map(String::as_str).collect();
    solo.extend(["--replicas", "2"]);
    ok(&jarip(&solo));
    let dp = run.join("dp");
    assert_eq!(last_weights(&dp), last_weights(&run.join("solo")), "2 ranks = 1 process standing in for 2");

    let entries = Ledger::at(&dp.join("ledger.jsonl")).verify_chain().unwrap();
    let start = entries.iter().find(|e| e.stage == "pretrain-start").unwrap();
    assert_eq!(start.config["replicas"], 2);
    assert_eq!(start.details["processes"]["backend"], "mpi");
    assert_eq!(start.details["processes"]["world_size"], 2);
    let ckpts: Vec<_> = entries.iter().filter(|e| e.stage == "checkpoint").collect();
    assert_eq!(ckpts.len(), 2, "one writer: each checkpoint recorded once");
    assert!(ckpts.iter().all(|e| e.details["replicas_agree"] == 2));
    let metrics = std::fs::read_to_string(dp.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "one metrics line per step: {metrics}");

    // The data-parallel run verifies, and its second interval replays in this one process.
    let v = jarip(&["provenance", "verify", &s(&dp), "--replay", "1"]);
    let text = ok(&v);
    assert!(text.contains("PASS  replay 1"), "{text}");

    // Fine-tuning the data-parallel base on two ranks: each takes half of every step's windows;
    // the same weights as one process with --replicas 2, and its intervals replay in one process.
    let convs = d.path().join("convs.jsonl");
    common::conversations(&convs);
    let sft = |out: &str| -> Vec<String> {
        let o = s(&run.join(out));
        [
            "sft",
            "--base",
            &s(&dp),
            "--data",
            &s(&convs),
            "--out",
            &o,
            "--max-steps",
            "4",
            "--seed",
            "3",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--keep-checkpoints",
            "0",
            "--eval-every",
            "2",
            "--warmup-steps",
            "1",
            "--no-progress",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let sft_dp = sft("sft-dp");
    let mut args: Vec<&str> = sft_dp.iter().map(String::as_str).collect();
    let ledger = s(&dp.join("ledger.jsonl"));
    args.extend(["--dist", "mpi", "--ledger", &ledger]);
    ok(&mpirun(2, &args));
    let sft_solo = sft("sft-solo");
    let mut args: Vec<&str> = sft_solo.iter().map(String::as_str).collect();
    args.extend(["--replicas", "2"]);
    ok(&jarip(&args));
    let sft_weights = |ledger: &Path| {
        let e = Ledger::at(ledger).verify_chain().unwrap();
        e.iter().rev().find(|e| e.stage == "sft-checkpoint").unwrap().details["weights_sha256"].clone()
    };
    assert_eq!(sft_weights(&dp.join("ledger.jsonl")), sft_weights(&run.join("sft-solo/ledger.jsonl")));
    let entries = Ledger::at(&dp.join("ledger.jsonl")).verify_chain().unwrap();
    let start = entries.iter().find(|e| e.stage == "sft-start").unwrap();
    assert_eq!(
        (start.config["replicas"].clone(), start.details["processes"]["world_size"].clone()),
        (2.into(), 2.into())
    );
    let sft_ckpts: Vec<_> = entries.iter().filter(|e| e.stage == "sft-checkpoint").collect();
    assert_eq!(sft_ckpts.len(), 2);
    assert!(sft_ckpts.iter().all(|e| e.details["replicas_agree"] == 2));
    let lines = std::fs::read_to_string(run.join("sft-dp/metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 4, "one metrics line per step");
    let text = ok(&jarip(&["provenance", "verify", &s(&dp), "--replay-sft", "1"]));
    assert!(text.contains("PASS  replay sft 1"), "{text}");

    // Three ranks add their sums in rank order themselves (MPI may pick any order): still the
    // weights of one process standing in for three.
    let three = pretrain_args(&run, "dp3", &config, 384);
    let mut three: Vec<&str> = three.iter().map(String::as_str).collect();
    three.extend(["--dist", "mpi"]);
    ok(&mpirun(3, &three));
    let solo3 = pretrain_args(&run, "solo3", &config, 384);
    let mut solo3: Vec<&str> = solo3.iter().map(String::as_str).collect();
    solo3.extend(["--replicas", "3"]);
    ok(&jarip(&solo3));
    assert_eq!(last_weights(&run.join("dp3")), last_weights(&run.join("solo3")));

    // Ranks started without --dist mpi would each train alone into one directory: refused.
    let alone = pretrain_args(&run, "alone", &config, 256);
    let alone: Vec<&str> = alone.iter().map(String::as_str).collect();
    let out = mpirun(2, &alone);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --dist mpi"));

    // 2 micro-batches per step cannot be split among 3 ranks: the job says why and exits.
    let bad_args = pretrain_args(&run, "bad", &config, 128);
    let mut bad: Vec<&str> = bad_args.iter().map(String::as_str).collect();
    bad.extend(["--dist", "mpi"]);
    let out = mpirun(3, &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be split among 3"), "{err}");
}
