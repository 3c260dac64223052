//! `jarip provenance verify|card` and `jarip lineage` end to end on a tiny run made with the
//! CLI: an honest run verifies and replays bit for bit; each kind of tampering fails verify and
//! is named; lineage verdicts in --json; bad inputs exit non-zero with a clear message.

mod common;
use common::{jarip, ok, s};

use jarip_ledger::{FileRef, Ledger, Manifest};
use jarip_model::{Gpt, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::Output;

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Asserts failure, and that the output (the PASS/FAIL lines on stdout, or the error on stderr)
/// names each needle.
fn fails_naming(out: &Output, needles: &[&str]) {
    let all = text(out);
    assert!(!out.status.success(), "expected failure, got success:\n{all}");
    for n in needles {
        assert!(all.contains(n), "output should mention {n:?}:\n{all}");
    }
}

/// Names of the checks verify reported as failed.
fn failed_checks(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL  "))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect()
}

fn tiny_config(dir: &Path, width: usize) -> PathBuf {
    let cfg = ModelConfig { n_layer: 1, n_embd: width, ..ModelConfig::tiny(300) };
    let p = dir.join(format!("tiny{width}.json"));
    std::fs::write(&p, cfg.to_json()).unwrap();
    p
}

/// corpus → prepare → tokenizer → shards → pretrain (6 steps, a checkpoint every 2), all in
/// `root/run` with one ledger.
fn make_run(root: &Path, seed: u64) -> PathBuf {
    let run = common::tiny_shards(root);
    pretrain(&run, &tiny_config(root, 64), seed);
    run
}

fn pretrain(run: &Path, config: &Path, seed: u64) {
    pretrain_with(run, config, seed, &[]);
}

fn pretrain_with(run: &Path, config: &Path, seed: u64, extra: &[&str]) {
    let shards = s(&run.join("shards"));
    let tok = s(&run.join("tok"));
    let (out, config, seed) = (s(run), s(config), seed.to_string());
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
        "--max-steps",
        "6",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "0",
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
        "--seed",
        &seed,
    ];
    args.extend_from_slice(extra);
    ok(&jarip(&args));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn verify(run: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["provenance", "verify", run.to_str().unwrap()];
    args.extend_from_slice(extra);
    jarip(&args)
}

/// A bf16 run replays bit for bit from its ledger — on this CPU's AVX512-BF16 path where it has
/// one, else the portable path (the same bits) — and its card names the path.
#[test]
fn a_bf16_run_replays_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::tiny_shards(dir.path());
    pretrain_with(&run, &tiny_config(dir.path(), 64), 5, &["--precision", "bf16"]);
    let ledger = std::fs::read_to_string(run.join("ledger.jsonl")).unwrap();
    let native = jarip_model::MatmulPath::Bf16Avx512.available();
    // Without AVX512-BF16 the run falls back to fp32 (recorded as nothing: fp32 is the default).
    assert_eq!(ledger.contains("\"matmul\":\"bf16_avx512\""), native, "{ledger}");
    let out = ok(&verify(&run, &["--replay", "0", "--replay", "2"]));
    assert!(out.contains("PASS  replay 0") && out.contains("PASS  replay 2"), "{out}");
    if native {
        ok(&jarip(&["provenance", "card", &s(&run)]));
        let card = std::fs::read_to_string(run.join("MODEL_CARD.md")).unwrap();
        assert!(card.contains("bf16_avx512 matmuls"), "{card}");
    }
}

#[test]
fn an_honest_run_verifies_replays_and_gets_a_card() {
    let d = tempfile::tempdir().unwrap();
    let run = make_run(d.path(), 3);
    let out = ok(&verify(&run, &["--replay", "0", "--replay", "1"]));
    for needle in [
        "PASS  ledger chain",
        "PASS  initial weights (seed 3)",
        "PASS  shards merkle root",
        "PASS  replay 0: seed → ckpt-000002",
        "PASS  replay 1: ckpt-000002 → ckpt-000004",
        "PASS  training record continuity",
    ] {
        assert!(out.contains(needle), "{needle}:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(&verify(&run, &["--replay-all", "--json"]))).unwrap();
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["pass"] == true), "{json:#}");
    assert_eq!(checks.iter().filter(|c| c["name"].as_str().unwrap().starts_with("replay")).count(), 3);

    // The run can be moved: recorded paths are found inside it.
    let moved = d.path().join("elsewhere/run");
    copy_tree(&run, &moved);
    ok(&verify(&moved, &[]));

    fails_naming(&verify(&run, &["--replay", "7"]), &["replay 7", "3 checkpoints"]);

    // Fine-tuning recorded in the same ledger is checked too; fine-tuning weights that no ledger
    // shows being made is an import.
    let convs = d.path().join("convs.jsonl");
    let line = serde_json::json!({"messages": [{"role": "user", "content": "국민은?"}, {"role": "assistant", "content": "the cat sat on a mat."}]});
    std::fs::write(&convs, format!("{line}\n").repeat(20)).unwrap();
    let sft = |base: &Path, out: &Path, ledger: &Path| {
        ok(&jarip(&[
            "sft",
            "--base",
            &s(base),
            "--data",
            &s(&convs),
            "--out",
            &s(out),
            "--ledger",
            &s(ledger),
            "--max-steps",
            "2",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--keep-checkpoints",
            "0",
            "--eval-every",
            "1",
        ]));
    };
    sft(&run, &run.join("sft"), &run.join("ledger.jsonl"));
    // Fine-tuning replays too: from the base to its first checkpoint, and from there to the next.
    let out = ok(&verify(&run, &["--replay", "2", "--replay-sft", "0", "--replay-sft", "1"]));
    assert!(out.contains("PASS  sft checkpoint ckpt-000002") && !out.contains("FAIL"), "{out}");
    assert!(out.contains("PASS  replay sft 0") && out.contains("PASS  replay sft 1"), "{out}");
    fails_naming(&verify(&run, &["--replay-sft", "2"]), &["replay sft 2", "2 fine-tuning checkpoints"]);
    // Forged fine-tuned weights with every hash rewritten: only the replay sees it.
    let forged = d.path().join("forged-sft");
    copy_tree(&run, &forged);
    forge(&forged, "sft/ckpt-000002");
    assert!(!ok(&verify(&forged, &[])).contains("FAIL"));
    fails_naming(&verify(&forged, &["--replay-sft", "1"]), &["FAIL  replay sft 1", "ckpt-000002"]);
    let foreign = d.path().join("foreign");
    copy_tree(&run.join("ckpt-000006"), &foreign.join("ckpt-000006"));
    sft(&foreign.join("ckpt-000006"), &d.path().join("sft2"), &d.path().join("sft2/ledger.jsonl"));
    fails_naming(&verify(&d.path().join("sft2"), &[]), &["FAIL  no imported weights", "sft-start fine-tuned weights"]);

    let out = jarip(&["provenance", "card", &s(&run), "--json"]);
    let card: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(card["claims_verified"], true);
    assert_eq!(card["training"]["seed"], 3);
    assert_eq!(card["tokenizer"]["trained_in_this_run"], true);
    assert_eq!(card["training"]["checkpoints"].as_array().unwrap().len(), 3);
    let md = std::fs::read_to_string(run.join("MODEL_CARD.md")).unwrap();
    for needle in
        ["all checks pass", "jarip provenance verify", "seed 3", "byte-level BPE trained by jarip", "ckpt-000006"]
    {
        assert!(md.contains(needle), "{needle}:\n{md}");
    }
}

/// Replaces checkpoint `ckpt` with other weights and rewrites its manifest, trainer state and
/// the whole ledger so that every hash agrees: only re-running training can catch this.
fn forge(run: &Path, ckpt: &str) {
    let dir = run.join(ckpt);
    let honest = Gpt::load(&dir, &candle_core::Device::Cpu).unwrap();
    let forged = Gpt::new(honest.config(), 999, &candle_core::Device::Cpu).unwrap();
    forged.save(&dir).unwrap();
    let weights = forged.weights_sha256().unwrap();
    let trainer = dir.join("trainer.json");
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trainer).unwrap()).unwrap();
    state["weights_sha256"] = weights.clone().into();
    std::fs::write(&trainer, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let old = Manifest::read(&dir).unwrap();
    Manifest::for_dir("checkpoint", &dir, vec![], old.settings).unwrap().write(&dir).unwrap();

    let path = run.join("ledger.jsonl");
    let entries = Ledger::at(&path).entries().unwrap();
    std::fs::remove_file(&path).unwrap();
    let ledger = Ledger::at(&path);
    for mut e in entries {
        if e.outputs.iter().any(|f| f.path.contains(ckpt)) {
            for f in &mut e.outputs {
                let now = FileRef::of_file(&dir.join(Path::new(&f.path).file_name().unwrap())).unwrap();
                (f.sha256, f.bytes) = (now.sha256, now.bytes);
            }
            e.details["weights_sha256"] = weights.clone().into();
        }
        ledger.append(e).unwrap();
    }
}

#[test]
fn each_tampering_is_detected_and_named() {
    let d = tempfile::tempdir().unwrap();
    let run = make_run(d.path(), 3);
    let mut n = 0;
    let mut copy = |f: &dyn Fn(&Path)| -> PathBuf {
        n += 1;
        let c = d.path().join(format!("copy{n}"));
        copy_tree(&run, &c);
        f(&c);
        c
    };

    // A byte changed in a checkpoint.
    let c = copy(&|c| {
        let p = c.join("ckpt-000004/model.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() - 9;
        b[i] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    });
    let out = verify(&c, &[]);
    fails_naming(&out, &["ckpt-000004/model.safetensors changed"]);
    let failed = failed_checks(&out);
    assert!(failed.contains(&"checkpoint ckpt-000004".to_string()), "{failed:?}");
    assert!(failed.contains(&"manifest ckpt-000004".to_string()), "{failed:?}");

    // Ledger lines reordered, or one deleted.
    let lines = |c: &Path| -> Vec<String> {
        std::fs::read_to_string(c.join("ledger.jsonl")).unwrap().lines().map(str::to_string).collect()
    };
    let c = copy(&|c| {
        let mut l = lines(c);
        l.swap(4, 5);
        std::fs::write(c.join("ledger.jsonl"), l.join("\n") + "\n").unwrap();
    });
    fails_naming(&verify(&c, &[]), &["FAIL  ledger chain", "ledger.jsonl:5", "reordered"]);
    let c = copy(&|c| {
        let mut l = lines(c);
        l.remove(5);
        std::fs::write(c.join("ledger.jsonl"), l.join("\n") + "\n").unwrap();
    });
    let out = verify(&c, &[]);
    fails_naming(&out, &["FAIL  ledger chain", "deleted"]);
    assert!(failed_checks(&out).contains(&"training record continuity".to_string()), "{}", text(&out));

    // A shard swapped for another.
    let c = copy(&|c| {
        std::fs::copy(c.join("shards/val-00000.bin"), c.join("shards/train-00000.bin")).unwrap();
    });
    let out = verify(&c, &[]);
    fails_naming(&out, &["train-00000.bin changed", "FAIL  shards merkle root", "changed: train-00000.bin"]);

    // A config edited: in a checkpoint, and in the ledger itself.
    let c = copy(&|c| {
        let p = c.join("ckpt-000004/config.json");
        let cfg = std::fs::read_to_string(&p).unwrap().replace("10000", "20000");
        std::fs::write(&p, cfg).unwrap();
    });
    let out = verify(&c, &[]);
    fails_naming(&out, &["ckpt-000004/config.json changed", "config.json differs from the model config"]);
    let c = copy(&|c| {
        let l = lines(c).join("\n").replacen("\"seed\":3", "\"seed\":4", 1);
        std::fs::write(c.join("ledger.jsonl"), l + "\n").unwrap();
    });
    fails_naming(&verify(&c, &[]), &["FAIL  ledger chain", "altered"]);

    // A checkpoint absent from disk: a failure, unless pruning is explicitly accepted.
    let c = copy(&|c| std::fs::remove_dir_all(c.join("ckpt-000002")).unwrap());
    fails_naming(&verify(&c, &[]), &["FAIL  checkpoint ckpt-000002", "not on disk"]);
    ok(&verify(&c, &["--allow-pruned"]));
    let c = copy(&|c| std::fs::remove_dir_all(c.join("ckpt-000006")).unwrap());
    fails_naming(&verify(&c, &["--allow-pruned"]), &["FAIL  checkpoint ckpt-000006", "not on disk"]);

    // Weights replaced and every hash rewritten to agree: the hashes pass, the replay does not.
    let c = copy(&|c| forge(c, "ckpt-000006"));
    ok(&verify(&c, &[]));
    let out = verify(&c, &["--replay", "2"]);
    fails_naming(&out, &["FAIL  replay 2: ckpt-000004 → ckpt-000006", "the replayed weights hash to"]);
}

fn lineage_verdict(a: &Path, b: &Path) -> String {
    let out = ok(&jarip(&["lineage", &s(a), &s(b), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["verdict"].as_str().unwrap().to_string()
}

#[test]
fn lineage_verdicts_and_bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let a = make_run(&d.path().join("a"), 3);
    let b = make_run(&d.path().join("b"), 4);
    assert_eq!(lineage_verdict(&a, &b), "unrelated");
    assert_eq!(lineage_verdict(&a.join("ckpt-000002"), &a), "derived");

    // An HF-layout directory: weights only, nothing jarip wrote beside them.
    let hf = d.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::copy(a.join("ckpt-000006/model.safetensors"), hf.join("model.safetensors")).unwrap();
    assert_eq!(lineage_verdict(&hf, &a.join("ckpt-000004")), "derived");
    let text_out = ok(&jarip(&["lineage", &s(&hf), &s(&b), "--quiet"]));
    assert!(text_out.contains("verdict: unrelated") && text_out.contains("log10 p"), "{text_out}");
    // The descriptive scores of earlier versions stay available as context, not as the decision.
    let with_refs = ok(&jarip(&["lineage", &s(&hf), &s(&b), "--quiet", "--references"]));
    assert!(with_refs.contains("verdict: unrelated") && with_refs.contains("weight noise"), "{with_refs}");
    let js: serde_json::Value = serde_json::from_str(&ok(&jarip(&["lineage", &s(&a), &s(&b), "--json"]))).unwrap();
    assert!(js["p_value"].as_f64().unwrap() >= 0.01, "{js}");
    assert_eq!(js["alpha"].as_f64(), Some(1e-6));
    assert!(
        js["power"].is_number() && js["rho_min"].is_number() && js["layers"].as_array().is_some_and(|l| !l.is_empty())
    );

    // --record: the result goes into the run's ledger, the report and plot beside it, and the
    // model card shows it; the ledger still verifies.
    ok(&jarip(&["lineage", &s(&a.join("ckpt-000002")), &s(&a), "--quiet", "--record", &s(&a)]));
    let png = a
        .join("lineage")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "png"));
    assert!(png.is_some_and(|p| std::fs::read(p).unwrap().starts_with(b"\x89PNG")));
    ok(&verify(&a, &[]));
    ok(&jarip(&["provenance", "card", &s(&a)]));
    let card = std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("## Lineage tests") && card.contains("derived"), "{card}");
    ok(&jarip(&["report", &s(&a)]));
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(report.contains("## Lineage") && report.contains("lineage/lineage-"), "{report}");

    // Bad inputs.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_naming(&verify(&empty, &[]), &["no ledger"]);
    let bad_ledger = d.path().join("bad/ledger.jsonl");
    std::fs::create_dir_all(bad_ledger.parent().unwrap()).unwrap();
    std::fs::write(&bad_ledger, [0xff, 0xfe, b'\n']).unwrap();
    fails_naming(&verify(&bad_ledger, &[]), &["not UTF-8"]);
    let garbage = d.path().join("x.safetensors");
    std::fs::write(&garbage, b"definitely not tensors").unwrap();
    fails_naming(&jarip(&["lineage", &s(&garbage), &s(&a)]), &["model A", "not a safetensors file"]);
    fails_naming(&jarip(&["lineage", &s(&a), &s(&d.path().join("README.md"))]), &["model B", "no such model"]);
    fails_naming(&jarip(&["lineage", &s(&a.join("ckpt-000099")), &s(&a)]), &["ckpt-000099"]);
    let wide = d.path().join("wide");
    let cfg = ModelConfig { n_layer: 1, n_embd: 128, ..ModelConfig::tiny(300) };
    Gpt::new(&cfg, 1, &candle_core::Device::Cpu).unwrap().save(&wide).unwrap();
    // A wider model is compared through the tokens both read: widths may differ (pruned or
    // grown models), and an independent one is not called derived.
    let out = ok(&jarip(&["lineage", &s(&a), &s(&wide), "--quiet"]));
    assert!(out.contains("64 of A, 128 of B") && !out.contains("verdict: derived"), "{out}");
    let odd = d.path().join("odd.safetensors");
    let t = candle_core::Tensor::zeros((5, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("foo.bar".to_string(), t)]), &odd).unwrap();
    fails_naming(&jarip(&["lineage", &s(&a), &s(&odd)]), &["model B", "residual width"]);
    fails_naming(&jarip(&["lineage", &s(&a), &s(&b), "--alpha", "2"]), &["--alpha"]);
    fails_naming(&jarip(&["lineage", &s(&a), &s(&b), "--record", &s(&empty)]), &["no ledger"]);
}
