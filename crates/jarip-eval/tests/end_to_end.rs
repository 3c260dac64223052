//! A tiny real model in a real checkpoint directory, scored on a small file in every layout
//! through the same call `jarip eval` makes; results JSON, ledger entry, determinism, refusal
//! of bad input; then the report card of the run.

use candle_core::Device;
use jarip_eval::{run_eval, write_report, EvalOptions, EvalRequest, Layout, LedgerChoice, TaskSpec};
use jarip_ledger::{Entry, Ledger, Manifest};
use jarip_model::{Gpt, ModelConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SENTENCES: &[&str] = &[
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 법 앞에 평등하다. 누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다.",
    "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer.",
    "The quick brown fox jumps over the lazy dog. Question: which is a liquid? Answer: water.",
];

/// `RUN/ckpt-000010` holding a seeded tiny model, its tokenizer and a manifest, as the trainer
/// writes them; `RUN/ledger.jsonl` with a pretrain-start entry; `RUN/metrics.jsonl`.
fn tiny_run(root: &Path) -> PathBuf {
    let run = root.join("run");
    let cfg = jarip_tokenizer::TrainConfig { vocab_size: 320, ..Default::default() };
    let tok = jarip_tokenizer::train(SENTENCES.iter().map(|s| s.to_string()), &cfg).unwrap();
    let mut mcfg = ModelConfig::tiny(tok.vocab_size());
    mcfg.max_seq_len = 128;
    let model = Gpt::new(&mcfg, 11, &Device::Cpu).unwrap();
    write_checkpoint(&run.join("ckpt-000010"), &model, &tok, 10);

    let ledger = Ledger::at(&run.join("ledger.jsonl"));
    let mut e = Entry::new("pretrain-start");
    e.seed = Some(11);
    e.details = json!({"step": 0, "weights_sha256": model.weights_sha256().unwrap(), "tokenizer_sha256": tok.sha256(),
                       "shards_merkle_root": "ab".repeat(32), "num_params": model.num_params()});
    ledger.append(e).unwrap();
    let mut ck = Entry::new("checkpoint");
    ck.details = json!({"step": 10, "weights_sha256": model.weights_sha256().unwrap(), "tokens_seen": 2560});
    ledger.append(ck).unwrap();
    let lines: String = (1..=10)
        .map(|s| {
            let mut v = json!({"step": s, "loss": 6.0 - s as f64 * 0.1, "lr": 1e-3 * s as f64 / 10.0, "tokens": s * 256,
                               "tokens_per_s": 900.0 + s as f64, "mfu": 0.1, "elapsed_s": s as f64});
            if s % 5 == 0 {
                v["val_loss"] = json!(5.9 - s as f64 * 0.05);
                v["val_bpb"] = json!(2.5 - s as f64 * 0.02);
            }
            format!("{v}\n")
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
    run
}

fn write_checkpoint(dir: &Path, model: &Gpt, tok: &jarip_tokenizer::Tokenizer, step: u64) {
    std::fs::create_dir_all(dir).unwrap();
    model.save(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tok.to_json()).unwrap();
    let trainer = json!({"step": step, "weights_sha256": model.weights_sha256().unwrap()});
    std::fs::write(dir.join("trainer.json"), trainer.to_string()).unwrap();
    Manifest::for_dir("checkpoint", dir, vec![], json!({"tokenizer_sha256": tok.sha256()}))
        .unwrap()
        .write(dir)
        .unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn jsonl(dir: &Path, name: &str, rows: &[Value]) -> PathBuf {
    write(dir, name, &rows.iter().map(|r| format!("{r}\n")).collect::<String>())
}

/// One small file per layout, in the format each is published in.
fn task_files(dir: &Path) -> Vec<TaskSpec> {
    std::fs::create_dir_all(dir).unwrap();
    let t = |l: Layout, p: PathBuf| TaskSpec::new(l, p);
    vec![
        t(
            Layout::Jsonl,
            jsonl(
                dir,
                "own_mc.jsonl",
                &[
                    json!({"context": "대한민국은", "choices": ["민주공화국이다.", "왕국이다."], "gold": 0}),
                    json!({"context": "To be, or not", "choices": ["to be", "to swim"], "gold": 0}),
                    json!({"context": "The quick brown", "choices": ["fox", "cat", "dog"], "gold": 0}),
                ],
            ),
        ),
        t(
            Layout::Jsonl,
            jsonl(
                dir,
                "own_gen.jsonl",
                &[json!({"prompt": "Question: which is a liquid? Answer:", "answer": "water", "stop": ["."], "max_tokens": 8}),
                  json!({"prompt": "대한민국은", "answer": "민주공화국이다", "stop": ["."], "max_tokens": 8})],
            ),
        ),
        t(Layout::Bpb, write(dir, "own_text.txt", &SENTENCES.join("\n"))),
        t(
            Layout::KobestBoolq,
            write(dir, "kobest_boolq.csv", "paragraph,question,label\n대한민국은 민주공화국이다.,대한민국은 왕국인가?,0\n모든 국민은 법 앞에 평등하다.,국민은 평등한가?,1\n"),
        ),
        t(
            Layout::KobestCopa,
            jsonl(
                dir,
                "kobest_copa.jsonl",
                &[json!({"premise": "비가 왔다.", "question": "결과", "alternative_1": "땅이 젖었다.", "alternative_2": "해가 떴다.", "label": 0}),
                  json!({"premise": "땅이 젖었다.", "question": "원인", "alternative_1": "해가 떴다.", "alternative_2": "비가 왔다.", "label": 1})],
            ),
        ),
        t(
            Layout::KobestWic,
            jsonl(dir, "kobest_wic.jsonl", &[json!({"word": "배", "context_1": "배가 고프다.", "context_2": "배를 탔다.", "label": 0})]),
        ),
        t(
            Layout::KobestHellaswag,
            jsonl(
                dir,
                "kobest_hellaswag.jsonl",
                &[json!({"context": "국민은 법 앞에", "ending_1": "평등하다.", "ending_2": "달린다.", "ending_3": "난다.", "ending_4": "잔다.", "label": 0})],
            ),
        ),
        t(Layout::KobestSentineg, write(dir, "kobest_sentineg.tsv", "sentence\tlabel\n좋지 않다.\t0\n나쁘지 않다.\t1\n")),
        t(
            Layout::Kmmlu,
            write(dir, "Law-test.csv", "question,answer,A,B,C,D,Category,Human Accuracy\n대한민국의 주권은 누구에게 있는가?,1,국민,왕,군대,정당,Law,0.9\n"),
        ),
        t(
            Layout::Haerae,
            jsonl(dir, "haerae_general.jsonl", &[json!({"query": "주권은?\n(A) 국민\n(B) 왕\n(C) 군\n(D) 당\n(E) 법\n정답:", "answer": "(A)"})]),
        ),
        t(
            Layout::Click,
            write(
                dir,
                "click.json",
                &json!([{"id": "KIIP_law_1", "paragraph": "", "question": "주권은 누구에게?", "choices": ["국민", "왕", "군대", "정당"], "answer": "국민"}]).to_string(),
            ),
        ),
        t(
            Layout::Arc,
            jsonl(
                dir,
                "ARC-Easy-Test.jsonl",
                &[json!({"id": "a1", "question": "Which is a liquid?", "choices": {"text": ["water", "rock"], "label": ["A", "B"]}, "answerKey": "A"})],
            ),
        ),
        t(
            Layout::Hellaswag,
            jsonl(
                dir,
                "hellaswag_val.jsonl",
                &[json!({"ind": 1, "activity_label": "Jumping", "ctx_a": "The quick brown fox", "ctx_b": "jumps", "endings": ["over the dog.", "into the sea.", "to be.", "the question."], "label": 0})],
            ),
        ),
        t(Layout::Mmlu, write(dir, "logical_fallacies_test.csv", "\"To be, or not to be?\",question,answer,fox,dog,A\n")),
    ]
}

fn request(run: &Path, tasks: Vec<TaskSpec>, json_out: Option<PathBuf>, batch_size: usize) -> EvalRequest {
    EvalRequest {
        models: vec![run.to_path_buf()],
        tasks,
        options: EvalOptions { batch_size, max_gen_tokens: 8, ..Default::default() },
        json: json_out,
        ledger: LedgerChoice::Auto,
        contamination: None,
    }
}

#[test]
fn every_layout_end_to_end_then_the_report() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let specs = task_files(&d.path().join("tasks"));
    let out = run.join("evals").join("base.json");
    let reports = run_eval(&request(&run, specs.clone(), Some(out.clone()), 8)).unwrap();
    assert_eq!(reports.len(), 1);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let results = doc["results"].as_object().unwrap();
    let names: Vec<&str> = results.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "own_mc",
            "own_gen",
            "own_text",
            "kobest_boolq",
            "kobest_copa",
            "kobest_wic",
            "kobest_hellaswag",
            "kobest_sentineg",
            "Law-test",
            "haerae_general",
            "click",
            "ARC-Easy-Test",
            "hellaswag_val",
            "logical_fallacies_test"
        ]
    );
    for (name, r) in results {
        match name.as_str() {
            "own_gen" => assert!(r["exact_match"].is_number() && r["normalized_match"].is_number(), "{r}"),
            "own_text" => {
                let bpb = r["bits_per_byte"].as_f64().unwrap();
                // An untrained model over ~320 tokens: a few bits per byte, not 0 or infinite.
                assert!(bpb > 0.5 && bpb < 12.0, "{bpb}");
            }
            _ => {
                for m in ["acc", "acc_norm", "acc_bytes"] {
                    let v = r[m].as_f64().unwrap_or_else(|| panic!("{name}: {r}"));
                    assert!((0.0..=1.0).contains(&v), "{name} {m} {v}");
                }
                assert_eq!(r.get("f1").is_some(), name.starts_with("kobest"), "{name}");
            }
        }
        assert!(r["n"].as_u64().unwrap() >= 1);
    }
    assert_eq!(results["own_mc"]["n"], 3);
    assert_eq!(doc["model"]["step"], 10);
    assert_eq!(doc["model"]["stage"], "base");
    assert!(doc["model"]["dir"].as_str().unwrap().ends_with("ckpt-000010"));
    assert_eq!(doc["tasks"]["kobest_boolq"]["layout"], "kobest_boolq");

    // The ledger gained an eval entry naming every task file and the weights, chain intact.
    let entries = Ledger::at(&run.join("ledger.jsonl")).verify_chain().unwrap();
    let eval = entries.last().unwrap();
    assert_eq!(eval.stage, "eval");
    assert_eq!(eval.inputs.len(), specs.len() + 1);
    assert_eq!(eval.inputs[0].sha256, jarip_ledger::sha256_file(&specs[0].path).unwrap());
    assert_eq!(eval.outputs[0].sha256, jarip_ledger::sha256_file(&out).unwrap());

    // Same model, same tasks: identical scores; another batch size: the same decisions.
    let again = run_eval(&EvalRequest { ledger: LedgerChoice::Off, ..request(&run, specs.clone(), None, 8) }).unwrap();
    let one = run_eval(&EvalRequest { ledger: LedgerChoice::Off, ..request(&run, specs.clone(), None, 1) }).unwrap();
    for (a, b) in reports[0].results.iter().zip(&again[0].results) {
        assert_eq!(a.metrics, b.metrics, "{}", a.name);
    }
    for (a, b) in reports[0].results.iter().zip(&one[0].results) {
        if a.kind == "bits_per_byte" {
            // Padded batches of the training kernels: equal up to float rounding.
            for ((m, x), (_, y)) in a.metrics.iter().zip(&b.metrics) {
                assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{} {m}: {x} vs {y}", a.name);
            }
        } else {
            // Choices and generation go through the batch-invariant decode kernel: identical.
            assert_eq!(a.metrics, b.metrics, "{}", a.name);
        }
    }
    // Two models side by side.
    let table = jarip_eval::render_table(&[reports[0].clone(), one[0].clone()]);
    assert!(table.contains("#1") && table.contains("#2") && table.contains("kobest_copa"), "{table}");

    // An SFT checkpoint evaluated too, then the report card of the whole run.
    let sft_dir = run.join("sft").join("ckpt-000005");
    let tok = jarip_tokenizer::Tokenizer::load(&run.join("ckpt-000010")).unwrap();
    let model = Gpt::load(&run.join("ckpt-000010"), &Device::Cpu).unwrap();
    write_checkpoint(&sft_dir, &model, &tok, 5);
    std::fs::write(run.join("sft").join("metrics.jsonl"), "{\"step\":1,\"loss\":3.0,\"lr\":1e-4,\"tokens\":100}\n{\"step\":2,\"loss\":2.5,\"lr\":1e-4,\"tokens\":200,\"val_loss\":2.7,\"val_bpb\":1.5}\n{\"torn").unwrap();
    let sft_out = run.join("evals").join("sft.json");
    let sft_req = EvalRequest { models: vec![sft_dir.clone()], ..request(&run, specs, Some(sft_out.clone()), 8) };
    run_eval(&sft_req).unwrap();
    let sft_doc: Value = serde_json::from_str(&std::fs::read_to_string(&sft_out).unwrap()).unwrap();
    assert_eq!(sft_doc["model"]["stage"], "sft");
    // The SFT checkpoint's entry goes to the run's ledger (RUN/ledger.jsonl, above RUN/sft).
    assert_eq!(Ledger::at(&run.join("ledger.jsonl")).verify_chain().unwrap().len(), entries.len() + 1);

    let report = write_report(&run).unwrap();
    let md = std::fs::read_to_string(&report).unwrap();
    for chart in jarip_eval::report::CHART_FILES {
        let p = run.join(chart);
        assert!(p.is_file(), "{chart} missing");
        let mut r = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap())).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert!(info.width > 100 && info.height > 100, "{chart}");
        assert!(md.contains(&format!("]({chart})")), "{chart} is not referenced in the report");
    }
    for needle in ["| | base | SFT |", "kobest_boolq (acc)", "hash chain verified", "seed: 11", "1 unreadable line(s)"]
    {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
}

#[test]
fn a_bare_run_still_gets_a_report_that_says_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("bare");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":9.0,\"lr\":0.001,\"tokens\":256,\"tokens_per_s\":800,\"mfu\":0.1}\n",
    )
    .unwrap();
    std::fs::write(run.join("report_evals.png"), b"stale").unwrap();
    let md = std::fs::read_to_string(write_report(&run).unwrap()).unwrap();
    assert!(md.contains("No SFT stage"), "{md}");
    assert!(md.contains("No evaluation results"), "{md}");
    assert!(md.contains("No `ledger.jsonl`"), "{md}");
    assert!(run.join("report_loss.png").is_file());
    assert!(!run.join("report_bpb.png").exists(), "no validation points, no chart");
    assert!(!run.join("report_evals.png").exists(), "a stale chart is removed");
    assert!(!md.contains("report_evals.png"));
    assert!(write_report(&d.path().join("missing")).unwrap_err().to_string().contains("not a run directory"));
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let tasks = d.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let good = jsonl(&tasks, "good.jsonl", &[json!({"context": "a", "choices": ["b", "c"], "gold": 0})]);
    let out = d.path().join("out.json");
    let entries_before = Ledger::at(&run.join("ledger.jsonl")).entries().unwrap().len();
    let fails = |specs: Vec<TaskSpec>, model: &Path, json_out: &Path| -> String {
        let req =
            EvalRequest { models: vec![model.to_path_buf()], ..request(&run, specs, Some(json_out.to_path_buf()), 4) };
        let e = run_eval(&req).unwrap_err();
        assert!(!json_out.exists(), "no results file after: {e:#}");
        format!("{e:#}")
    };

    // Gold index out of range, empty choice list: named with file and line, before any scoring.
    let bad_gold = jsonl(
        &tasks,
        "bad_gold.jsonl",
        &[
            json!({"context": "a", "choices": ["b"], "gold": 0}),
            json!({"context": "a", "choices": ["b", "c"], "gold": 2}),
        ],
    );
    let e = fails(vec![TaskSpec::new(Layout::Jsonl, &good), TaskSpec::new(Layout::Jsonl, &bad_gold)], &run, &out);
    assert!(e.contains("bad_gold.jsonl:2: gold index 2 is out of range for 2 choices"), "{e}");
    let empty = jsonl(&tasks, "empty.jsonl", &[json!({"context": "a", "choices": [], "gold": 0})]);
    assert!(fails(vec![TaskSpec::new(Layout::Jsonl, &empty)], &run, &out).contains("empty.jsonl:1: empty choice list"));

    // A file in another layout than declared.
    let e = fails(vec![TaskSpec::new(Layout::Kmmlu, &good)], &run, &out);
    assert!(e.contains("missing field \"question\", which layout kmmlu expects"), "{e}");

    // A model without a tokenizer.
    let no_tok = d.path().join("no_tok");
    std::fs::create_dir_all(&no_tok).unwrap();
    for f in ["model.safetensors", "config.json", "trainer.json", "manifest.json"] {
        std::fs::copy(run.join("ckpt-000010").join(f), no_tok.join(f)).unwrap();
    }
    let e = fails(vec![TaskSpec::new(Layout::Jsonl, &good)], &no_tok, &out);
    assert!(e.contains("tokenizer.json"), "{e}");

    // An output path that cannot be written: refused before the model is even loaded.
    let blocker = d.path().join("a_file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = fails(vec![TaskSpec::new(Layout::Jsonl, &good)], &run, &blocker.join("out.json"));
    assert!(e.contains("cannot write results to"), "{e}");

    // Nothing reached the ledger.
    assert_eq!(Ledger::at(&run.join("ledger.jsonl")).entries().unwrap().len(), entries_before);
    // And an unknown layout is refused when the spec is read.
    let e = "squad=x.json".parse::<TaskSpec>().unwrap_err().to_string();
    assert!(e.contains("known layouts: jsonl, kobest_boolq"), "{e}");
}
