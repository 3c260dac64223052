//! `jarip data contamination` end to end on a tiny run made with the CLI: evaluation items planted
//! in the prepared corpus are found and counted, the ledger entry and the report agree, the run
//! still verifies, the model card and the report card show the figures, `jarip eval
//! --contamination` scores the clean subset beside the full set, and bad inputs (a malformed task
//! line, a missing corpus, a task file changed since the report) exit non-zero with the cause.

mod common;

use common::{fails_with, jarip, ok, s};
use jarip_ledger::Ledger;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The documents of the prepared corpus, as words.
fn corpus_docs(run: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(run.join("prepared/documents.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let t: Value = serde_json::from_str(l).unwrap();
            t["text"].as_str().unwrap().trim_end_matches('.').split(' ').map(str::to_string).collect()
        })
        .collect()
}

/// Words spelt only with letters the corpus never uses, so no token span of theirs is in it.
fn foreign_words(seed: usize, n: usize) -> String {
    let letters = ['q', 'x', 'z', 'y', 'w', 'v', 'k', 'j', 'p', 'l', 'f'];
    (0..n)
        .map(|i| {
            (0..3 + (i + seed) % 4).map(|k| letters[(seed * 7 + i * 3 + k * 5) % letters.len()]).collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ten multiple-choice items in our JSONL layout: 0–3 copied verbatim from corpus documents
/// (context and the gold answer continue each other there), 4 half copied, 5–9 foreign.
fn task_file(run: &Path, path: &Path) {
    let docs = corpus_docs(run);
    let long: Vec<&Vec<String>> = docs.iter().filter(|d| d.len() >= 40).collect();
    let mut rows = Vec::new();
    for d in long.iter().take(4) {
        rows.push(
            json!({"context": d[5..30].join(" "), "choices": [foreign_words(1, 2), d[30..34].join(" ")], "gold": 1}),
        );
    }
    let d = long[4];
    rows.push(json!({"context": format!("{} {}", d[2..32].join(" "), foreign_words(2, 8)), "choices": ["yes", "no"], "gold": 0}));
    for i in 0..5 {
        rows.push(json!({"context": foreign_words(10 + i, 12), "choices": [foreign_words(20 + i, 2), foreign_words(30 + i, 2)], "gold": 0}));
    }
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn pretrain(run: &Path, root: &Path) {
    let cfg = jarip_model::ModelConfig { n_layer: 1, n_embd: 64, ..jarip_model::ModelConfig::tiny(300) };
    let cfg_file = root.join("tiny.json");
    std::fs::write(&cfg_file, cfg.to_json()).unwrap();
    #[rustfmt::skip]
    ok(&jarip(&[
        "pretrain", "--data", &s(&run.join("shards")), "--tokenizer", &s(&run.join("tok")), "--out", &s(run),
        "--config", &s(&cfg_file), "--max-steps", "2", "--checkpoint-every", "2", "--keep-checkpoints", "0",
        "--seq-len", "32", "--batch-size", "4", "--eval-every", "0", "--eval-tokens", "256", "--sample-every", "0",
    ]));
}

fn contamination(run: &Path, task: &Path, out: &Path) -> Value {
    let stdout = ok(&jarip(&[
        "data",
        "contamination",
        "--corpus",
        &s(&run.join("prepared")),
        "--task",
        &format!("jsonl={}", s(task)),
        "--tokenizer",
        &s(run),
        "--json",
        "--out",
        &s(out),
    ]));
    serde_json::from_str(&stdout).expect("--json prints the report")
}

#[test]
fn planted_items_are_found_recorded_and_left_out_of_the_clean_scores() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let run = common::tiny_shards(root);
    pretrain(&run, root);
    let task = root.join("tasks.jsonl");
    task_file(&run, &task);
    let report_file = run.join("contamination.json");
    let report = contamination(&run, &task, &report_file);

    // The counts, per task and per item.
    let t = &report["tasks"][0];
    assert_eq!(t["name"], "tasks");
    assert_eq!(
        [&t["n_items"], &t["n_contaminated"], &t["n_ngram13"], &t["n_dirty"], &t["n_not_clean"], &t["n_clean"]],
        [10, 5, 5, 4, 1, 5],
        "{t:#}"
    );
    let items = t["items"].as_array().unwrap();
    let flags: Vec<bool> = items.iter().map(|i| i["contaminated"].as_bool().unwrap()).collect();
    assert_eq!(flags, [true, true, true, true, true, false, false, false, false, false]);
    assert_eq!(items[0]["class"], "dirty");
    assert!(items[0]["fraction"].as_f64().unwrap() > 0.8);
    assert_eq!(items[4]["class"], "not-clean");
    assert!(items[4]["ngram13"].as_bool().unwrap());
    let span = &items[4]["spans"][0];
    let planted = corpus_docs(&run).into_iter().filter(|d| d.len() >= 40).nth(4).unwrap();
    assert!(span["text"].as_str().unwrap().contains(&planted[10..20].join(" ")), "{span}");
    assert_eq!(items[9]["class"], "clean");
    assert_eq!(items[9]["fraction"], 0.0);
    assert_eq!(report["config"]["ngram"], 13);
    assert_eq!(report["config"]["span"], 10);
    assert!(report["scan"]["documents"].as_u64().unwrap() > 100);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(written, report, "--out writes what --json prints");

    // The ledger entry: the figures without the items, the report's hash, the inputs.
    let ledger = Ledger::at(&run.join("ledger.jsonl"));
    ledger.verify_chain().unwrap();
    let e = ledger.entries().unwrap().into_iter().rev().find(|e| e.stage == "contamination").unwrap();
    assert_eq!(e.details["tasks"][0]["n_contaminated"], 5);
    assert_eq!(e.details["tasks"][0]["n_dirty"], 4);
    assert!(e.details["tasks"][0].get("items").is_none());
    assert_eq!(e.details["report_sha256"].as_str().unwrap(), jarip_ledger::sha256_file(&report_file).unwrap());
    assert_eq!(e.config["tasks"][0]["sha256"].as_str().unwrap(), jarip_ledger::sha256_file(&task).unwrap());
    assert!(e.inputs.iter().any(|f| f.path.ends_with("documents.jsonl")));
    assert!(e.inputs.iter().any(|f| f.path.ends_with("tokenizer.json")));
    assert!(e.outputs.iter().any(|f| f.path.ends_with("contamination.json")));
    // The run still verifies with the entry in it; the model card shows the figures.
    ok(&jarip(&["provenance", "verify", &s(&run)]));
    let card: Value = serde_json::from_str(&ok(&jarip(&["provenance", "card", &s(&run), "--json"]))).unwrap();
    assert_eq!(card["contamination"][0]["tasks"][0]["n_contaminated"], 5);
    assert_eq!(card["contamination"][0]["tasks"][0]["n_clean"], 5);
    let md = std::fs::read_to_string(run.join("MODEL_CARD.md")).unwrap();
    assert!(md.contains("## Benchmark contamination") && md.contains("| tasks | 10 | 5 | 4 | 1 | 5 |"), "{md}");

    // Eval scores the full set and the clean subset side by side.
    let eval_json = run.join("evals").join("base.json");
    let out = ok(&jarip(&[
        "eval",
        "--model",
        &s(&run),
        "--task",
        &format!("jsonl={}", s(&task)),
        "--contamination",
        &s(&report_file),
        "--json",
        &s(&eval_json),
        "--quiet",
    ]));
    assert!(out.contains("tasks (clean)"), "{out}");
    let clean_n = out.lines().find(|l| l.starts_with("tasks (clean)")).unwrap();
    assert!(clean_n.split_whitespace().any(|c| c == "5"), "{out}");
    let ev: Value = serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    assert_eq!(ev["results"]["tasks"]["n"], 10);
    assert_eq!(ev["clean_results"]["tasks"]["n"], 5);
    assert_eq!(ev["clean_results"]["tasks"]["n_contaminated"], 5);
    assert!(ev["clean_results"]["tasks"]["acc"].is_number());
    assert_eq!(ev["contamination"]["sha256"].as_str().unwrap(), jarip_ledger::sha256_file(&report_file).unwrap());
    let eval_entry = ledger.entries().unwrap().into_iter().rev().find(|e| e.stage == "eval").unwrap();
    assert_eq!(eval_entry.details["clean_results"]["tasks"]["n"], 5);
    // The report card shows both.
    ok(&jarip(&["report", &s(&run)]));
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("## Contamination") && md.contains("| tasks | 10 | 5 | 50.0 | 5 | 4 | 1 | 5 |"), "{md}");
    assert!(md.contains("tasks (clean)"), "{md}");

    // A task file changed since the report is refused, before any scoring.
    let mut text = std::fs::read_to_string(&task).unwrap();
    text.push_str(&format!("{}\n", json!({"context": "one more", "choices": ["a", "b"], "gold": 0})));
    std::fs::write(&task, text).unwrap();
    let out = jarip(&[
        "eval",
        "--model",
        &s(&run),
        "--task",
        &format!("jsonl={}", s(&task)),
        "--contamination",
        &s(&report_file),
        "--no-ledger",
    ]);
    fails_with(&out, &["tasks.jsonl changed since the contamination report", "jarip data contamination"]);
}

#[test]
fn bad_inputs_name_the_cause_and_exit_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let ckpt = common::tiny_checkpoint(root, "ckpt", 64);
    let corpus = root.join("corpus.jsonl");
    std::fs::write(&corpus, "{\"text\": \"the cat sat on the mat\"}\n").unwrap();
    let bad = root.join("bad.jsonl");
    std::fs::write(&bad, "{\"context\": \"a b\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n{\"context\": oops\n")
        .unwrap();
    let task = |p: &PathBuf| format!("jsonl={}", s(p));
    let ledger = s(&root.join("ledger.jsonl"));
    let run = |corpus: &Path, t: &str| {
        jarip(&[
            "data",
            "contamination",
            "--corpus",
            &s(corpus),
            "--task",
            t,
            "--tokenizer",
            &s(&ckpt),
            "--ledger",
            &ledger,
        ])
    };
    fails_with(&run(&corpus, &task(&bad)), &["bad.jsonl:2"]);
    fails_with(&run(&root.join("missing"), &task(&bad)), &["corpus", "missing", "does not exist"]);
    fails_with(&run(&corpus, &format!("jsonl={}", s(&root.join("none.jsonl")))), &["none.jsonl", "does not exist"]);
    fails_with(&run(&corpus, "nosuchlayout=x.jsonl"), &["unknown task layout"]);
    assert!(!root.join("ledger.jsonl").exists(), "a failed check records nothing");

    // A plain JSONL file is a corpus too, with the table on stdout.
    let good = root.join("good.jsonl");
    std::fs::write(&good, "{\"context\": \"the cat sat on\", \"choices\": [\"the mat\", \"a dog\"], \"gold\": 0}\n")
        .unwrap();
    let out = ok(&run(&corpus, &task(&good)));
    assert!(out.contains("contaminated") && out.lines().any(|l| l.starts_with("good ")), "{out}");
    let e = Ledger::at(&root.join("ledger.jsonl")).entries().unwrap();
    assert_eq!(e.last().unwrap().stage, "contamination");
}
