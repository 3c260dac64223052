//! The chat stage end to end through the binary: a tiny corpus is prepared, tokenized, sharded
//! and pretrained for a few steps; `jarip sft` fine-tunes it on conversations (resuming exactly),
//! then `jarip generate` and `jarip chat` talk to it; and the bad inputs are refused clearly.

mod common;
use common::{conversations, fails_with, jarip, ok, s};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// corpus → prepared → tokenizer → shards → a 10-step depth-1 base model.
fn base_model(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).unwrap();
    let ko = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. ";
    let en = "All the world's a stage, and all the men and women merely players. ";
    for i in 0..40 {
        std::fs::write(
            c.join(format!("doc{i:02}.txt")),
            format!("{} {} 제{i}조 number {}\n", ko.repeat(1 + i % 3), en, i * 37),
        )
        .unwrap();
    }
    let run = dir.join("run");
    ok(&jarip(&["data", "prepare", &s(&c), "--out", &s(&run.join("prepared"))]));
    ok(&jarip(&[
        "tokenizer",
        "train",
        &s(&run.join("prepared")),
        "--vocab-size",
        "400",
        "--out",
        &s(&run.join("tokenizer")),
    ]));
    ok(&jarip(&[
        "data",
        "shard",
        &s(&run.join("prepared")),
        "--tokenizer",
        &s(&run.join("tokenizer")),
        "--out",
        &s(&run.join("shards")),
    ]));
    ok(&jarip(&[
        "pretrain",
        "--data",
        &s(&run.join("shards")),
        "--out",
        &s(&run),
        "--depth",
        "1",
        "--max-steps",
        "10",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--eval-tokens",
        "256",
        "--sample-every",
        "0",
        "--warmup-steps",
        "2",
        "--no-progress",
    ]));
    run
}

fn sft_args<'a>(base: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "sft",
        "--base",
        base,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        steps,
        "--seed",
        "7",
        "--seq-len",
        "64",
        "--batch-size",
        "2",
        "--keep-checkpoints",
        "0",
        "--eval-every",
        "3",
        "--warmup-steps",
        "2",
        "--no-progress",
    ]
}

fn trainer_hash(ckpt: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer.json")).unwrap()).unwrap();
    v["weights_sha256"].as_str().unwrap().to_string()
}

fn generate_json(model: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(ok(&jarip(&args)).trim()).unwrap()
}

#[test]
fn sft_generate_and_chat_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let run = base_model(d.path());
    let convs = d.path().join("convs.jsonl");
    conversations(&convs);

    // Fine-tune 6 steps; the checkpoint records the base it started from.
    let sft = run.join("sft");
    ok(&jarip(&sft_args(&s(&run), &s(&convs), &s(&sft), "6")));
    let ckpt6 = sft.join("ckpt-000006");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt6.join("manifest.json")).unwrap()).unwrap();
    let base_hash = trainer_hash(&run.join("ckpt-000010"));
    assert_eq!(manifest["settings"]["base_weights_sha256"], base_hash.as_str());
    assert!(ckpt6.join("tokenizer.json").exists());
    let ledger = std::fs::read_to_string(sft.join("ledger.jsonl")).unwrap();
    assert!(ledger.contains("\"sft-start\"") && ledger.contains("\"sft-checkpoint\""), "{ledger}");
    let metrics = std::fs::read_to_string(sft.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("val_bpb"), "the last step evaluates on held-out conversations: {metrics}");

    // Exact resume: drop the last checkpoint and continue from step 3.
    let again = run.join("sft-again");
    let (run_s, convs_s, again_s) = (s(&run), s(&convs), s(&again));
    ok(&jarip(&sft_args(&run_s, &convs_s, &again_s, "6")));
    std::fs::remove_dir_all(again.join("ckpt-000006")).unwrap();
    let mut resume = sft_args(&run_s, &convs_s, &again_s, "6");
    resume.push("--resume");
    ok(&jarip(&resume));
    assert_eq!(trainer_hash(&again.join("ckpt-000006")), trainer_hash(&ckpt6), "resumed fine-tuning differs");
    // bf16 fine-tuning (the portable path: the same on every CPU) resumes bit for bit too,
    // without naming its precision again; it records its path and differs from fp32.
    let bf = run.join("sft-bf16");
    let bf_s = s(&bf);
    let mut bf_args = sft_args(&run_s, &convs_s, &bf_s, "6");
    bf_args.extend(["--bf16-kernel", "bf16_portable"]);
    ok(&jarip(&bf_args));
    let bf_hash = trainer_hash(&bf.join("ckpt-000006"));
    assert_ne!(bf_hash, trainer_hash(&ckpt6), "bf16 products change the arithmetic");
    let bf_manifest = std::fs::read_to_string(bf.join("ckpt-000006/manifest.json")).unwrap();
    assert!(bf_manifest.contains("\"matmul\": \"bf16_portable\""), "{bf_manifest}");
    std::fs::remove_dir_all(bf.join("ckpt-000006")).unwrap();
    let mut bf_resume = sft_args(&run_s, &convs_s, &bf_s, "6");
    bf_resume.push("--resume");
    ok(&jarip(&bf_resume));
    assert_eq!(trainer_hash(&bf.join("ckpt-000006")), bf_hash, "resumed bf16 fine-tuning differs");
    // Resuming with other settings is refused.
    let mut other = sft_args(&run_s, &convs_s, &again_s, "6");
    let seed_at = other.iter().position(|a| *a == "--seed").unwrap() + 1;
    other[seed_at] = "8";
    other.push("--resume");
    fails_with(&jarip(&other), &["other settings"]);

    // generate --json: the same seed gives the same text; --model takes a run directory.
    let a = generate_json(&sft, "대한민국은", &["--max-tokens", "12", "--seed", "3", "--temperature", "1.0"]);
    let b = generate_json(&ckpt6, "대한민국은", &["--max-tokens", "12", "--seed", "3", "--temperature", "1.0"]);
    assert_eq!(a, b);
    assert!(a["text"].is_string() && a["tokens"].as_array().unwrap().len() <= 12);
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() as usize >= a["tokens"].as_array().unwrap().len());
    // A stop string taken from a greedy continuation ends it there and is not returned.
    let free = generate_json(&sft, "All the world", &["--max-tokens", "16", "--temperature", "0"]);
    let text = free["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > 4 {
        let stop: String = chars[2..4].iter().collect();
        let cut = generate_json(&sft, "All the world", &["--max-tokens", "16", "--temperature", "0", "--stop", &stop]);
        assert_eq!(cut["text"].as_str().unwrap(), &text[..text.find(&stop).unwrap()]);
        assert_eq!(cut["finish_reason"], "stop");
    }

    // chat with piped input: one answer line per user line; /reset and /system are commands.
    let mut child = Command::new(env!("CARGO_BIN_EXE_jarip"))
        .args(["chat", "--model", &s(&sft), "--max-tokens", "8", "--seed", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("제1조는 무엇입니까?\n/reset\n/system 짧게 답하세요\nhello\n/quit\nnever read\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "two user turns, two answers: {stdout:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conversation cleared"), "{stderr}");
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let run = base_model(d.path());
    let convs = d.path().join("convs.jsonl");
    conversations(&convs);

    // Conversation files: the file and line are named.
    let bad = d.path().join("bad.jsonl");
    for (content, needle) in [
        (r#"{"messages":[{"role":"robot","content":"hi"},{"role":"assistant","content":"x"}]}"#, "bad.jsonl:2"),
        (r#"{"messages":[]}"#, "bad.jsonl:2"),
        (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "bad.jsonl:2"),
        ("not json", "bad.jsonl:2"),
    ] {
        let good = std::fs::read_to_string(&convs).unwrap();
        std::fs::write(&bad, format!("{}\n{content}\n", good.lines().next().unwrap())).unwrap();
        fails_with(&jarip(&sft_args(&s(&run), &s(&bad), &s(&d.path().join("x")), "2")), &[needle]);
    }

    // A time budget too small for one evaluation: said so, with the minimum.
    fails_with(
        &jarip(&[
            "pretrain",
            "--data",
            &s(&run.join("shards")),
            "--out",
            &s(&d.path().join("short")),
            "--depth",
            "1",
            "--minutes",
            "0.0001",
            "--eval-every",
            "100000",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--no-progress",
        ]),
        &["time budget of 0.0 min is too small", "fewer than the 100000 of one evaluation", "give at least"],
    );

    // A prompt longer than the context: a clear message, or truncation when asked.
    let long = "대한민국 ".repeat(1500);
    fails_with(
        &jarip(&["generate", "--model", &s(&run), "--prompt", &long, "--max-tokens", "2", "--json"]),
        &["context is 1024 tokens"],
    );
    let out = jarip(&["generate", "--model", &s(&run), "--prompt", &long, "--max-tokens", "2", "--json", "--truncate"]);
    ok(&out);

    // An f16 KV cache generates; an unknown cache format is named.
    let f16 = ok(&jarip(&[
        "generate",
        "--model",
        &s(&run),
        "--prompt",
        "국민",
        "--max-tokens",
        "4",
        "--json",
        "--kv-cache",
        "f16",
    ]));
    let v: serde_json::Value = serde_json::from_str(&f16).unwrap();
    assert!((1..=4).contains(&v["usage"]["completion_tokens"].as_u64().unwrap()) && v["text"].is_string(), "{f16}");
    fails_with(
        &jarip(&["generate", "--model", &s(&run), "--prompt", "x", "--kv-cache", "bf16"]),
        &["bf16", "f32 or f16"],
    );

    // Not a checkpoint.
    fails_with(&jarip(&["generate", "--model", &s(&run.join("shards")), "--prompt", "x"]), &["not a jarip checkpoint"]);
    // A tokenizer that does not match the model (with a consistent manifest, so the pairing itself is caught).
    let ckpt = d.path().join("mismatched");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["model.safetensors", "config.json", "trainer.json", "optimizer.safetensors"] {
        std::fs::copy(run.join("ckpt-000010").join(f), ckpt.join(f)).unwrap();
    }
    ok(&jarip(&[
        "tokenizer",
        "train",
        &s(&run.join("prepared")),
        "--vocab-size",
        "300",
        "--out",
        &s(&d.path().join("other-tok")),
    ]));
    std::fs::copy(d.path().join("other-tok/tokenizer.json"), ckpt.join("tokenizer.json")).unwrap();
    let settings = jarip_ledger::Manifest::read(&run.join("ckpt-000010")).unwrap().settings;
    jarip_ledger::Manifest::for_dir("checkpoint", &ckpt, vec![], settings).unwrap().write(&ckpt).unwrap();
    fails_with(&jarip(&["generate", "--model", &s(&ckpt), "--prompt", "x"]), &["does not match the model"]);
}

/// Conversations of three kinds, each with several question forms (`template`).
fn templated_conversations(path: &Path) {
    let lines: Vec<String> = (0..72)
        .map(|i| {
            let (kind, forms) = [("article", 5), ("continue", 4), ("identity", 2)][i % 3];
            let v = (i / 3) % forms;
            let q = format!("{kind} form {v}: 제{i}조는 무엇입니까?");
            serde_json::json!({
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": format!("제{i}조: 대한민국은 민주공화국이다. number {i}")},
                ],
                "template": format!("{kind}/v{v}"),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn sft_selects_its_best_checkpoint_and_every_command_uses_it() {
    let d = tempfile::tempdir().unwrap();
    let run = base_model(d.path());
    let convs = d.path().join("templated.jsonl");
    templated_conversations(&convs);
    let sft = run.join("sft");
    let (run_s, convs_s, sft_s) = (s(&run), s(&convs), s(&sft));
    let ledger = s(&run.join("ledger.jsonl"));
    let shards = s(&run.join("shards"));
    let mut args = sft_args(&run_s, &convs_s, &sft_s, "16");
    let at = args.iter().position(|a| *a == "--eval-every").unwrap() + 1;
    args[at] = "2";
    args.extend([
        "--val-fraction",
        "0.3",
        "--patience",
        "2",
        "--lr",
        "0.03",
        "--mix-data",
        &shards,
        "--mix-fraction",
        "0.5",
        "--ledger",
        &ledger,
    ]);
    let out = jarip(&args);
    let text = ok(&out);
    assert!(text.contains("sft verdict: held-out loss"), "{text}");

    // Step 0 is the base model's evaluation, both held-out sets reported.
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(sft.join("metrics.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert_eq!(first["step"], 0);
    assert!(first["val_loss"].is_f64() && first["val_template_loss"].is_f64(), "{first}");

    // The selection: the earliest lowest held-out loss, recorded in the ledger and selected.json.
    let entries = jarip_ledger::Ledger::at(&run.join("ledger.jsonl")).verify_chain().unwrap();
    let sel = &entries.iter().rev().find(|e| e.stage == "sft-select").expect("an sft-select entry").details;
    let evals = sel["evaluations"].as_array().unwrap();
    assert_eq!(evals[0]["step"], 0);
    assert!(evals.iter().all(|e| e["template_loss"].is_f64()));
    let loss = |e: &serde_json::Value| e["val_loss"].as_f64().unwrap();
    let best = evals.iter().fold(&evals[0], |b, e| if loss(e) < loss(b) { e } else { b });
    assert_eq!(sel["selected_step"], best["step"], "{sel}");
    assert_eq!(sel["rule"], "val_loss");
    let step = best["step"].as_u64().unwrap();
    let selected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sft.join("selected.json")).unwrap()).unwrap();
    let dir = sft.join(selected["checkpoint"].as_str().unwrap());
    if step == 0 {
        assert_eq!(std::fs::canonicalize(&dir).unwrap(), std::fs::canonicalize(run.join("ckpt-000010")).unwrap());
    } else {
        assert_eq!(dir, sft.join(format!("ckpt-{step:06}")));
        assert_eq!(selected["weights_sha256"].as_str().unwrap(), trainer_hash(&dir));
    }
    // Early stopping: `patience` evaluations without improvement, then the run ends.
    match sel["stopped_early_at"].as_u64() {
        Some(at) => {
            assert!(at < 16);
            assert_eq!(evals.iter().filter(|e| e["step"].as_u64().unwrap() > step).count(), 2, "{sel}");
        }
        None => assert!(evals.iter().filter(|e| e["step"].as_u64().unwrap() > step).count() < 2, "{sel}"),
    }
    // Every command that takes the run directory gets the selected checkpoint.
    let gen = |m: &Path| generate_json(m, "대한민국은", &["--max-tokens", "8", "--seed", "5", "--temperature", "1.0"]);
    assert_eq!(gen(&sft), gen(&dir));

    // The pretraining text's cursor is in every checkpoint entry, and replay covers it.
    let ckpts: Vec<_> = entries.iter().filter(|e| e.stage == "sft-checkpoint").collect();
    assert!(ckpts.iter().all(|e| e.details["mix_data"]["sampler_after"]["position"].as_u64().unwrap() > 0));
    let v = ok(&jarip(&["provenance", "verify", &run_s, "--replay-sft", "1"]));
    assert!(v.contains("PASS  replay sft 1"), "{v}");

    // Too few held-out conversations to choose on: said so, and the last checkpoint is the model.
    let few = d.path().join("few");
    let out = jarip(&sft_args(&run_s, &convs_s, &s(&few), "4"));
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too few to choose a checkpoint on"), "{err}");
    let selected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(few.join("selected.json")).unwrap()).unwrap();
    assert_eq!((selected["metric"].as_str(), selected["step"].as_u64()), (Some("last"), Some(4)));
}
