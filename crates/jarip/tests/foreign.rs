//! Other teams' models, read-only: an HF-layout Llama / Qwen3 model written here with random
//! weights (bf16, a tied head or shards, a tokenizer that is not jarip's: other special tokens,
//! `ignore_merges`, NFC, its own Jinja chat template) generates, chats, evaluates beside one of
//! ours in one table, and serves — and every output names it as not built by this run. `sft`
//! refuses it as a base, naming the rule; with `--allow-foreign-base` the fine-tuning runs and
//! its ledger, `provenance verify` and the model card say it is not from scratch. Pickled weights,
//! SentencePiece-only tokenizers and families jarip does not run are refused by name.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fails_with, jarip, ok, s};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// jarip's special tokens renamed as another family spells its own.
const RENAMES: [(&str, &str); 7] = [
    ("<|bos|>", "<|begin_of_text|>"),
    ("<|eos|>", "<|end_of_text|>"),
    ("<|pad|>", "<|finetune_right_pad|>"),
    ("<|system|>", "<|start_header_id|>"),
    ("<|user|>", "<|end_header_id|>"),
    ("<|assistant|>", "<|reserved_special_token_0|>"),
    ("<|end|>", "<|eot_id|>"),
];

/// A chat template in the Llama 3 manner (header tokens around the role, `<|eot_id|>` after each
/// message), written for this test.
const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n\
{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Writes an HF model directory of `family` ("llama": one bf16 file, tied head; "qwen3": two
/// f32 shards, untied, QK-norm, no BOS) with random weights and a foreign tokenizer.
fn foreign_model(root: &Path, family: &str) -> PathBuf {
    let dir = root.join(family);
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<String> = (0..40)
        .map(|i| {
            format!("대한민국은 민주공화국이다 {i}. The cat sat on the mat and the dog ran to the big red house {i}.")
        })
        .collect();
    let tok = jarip_tokenizer::train(
        docs.into_iter(),
        &jarip_tokenizer::TrainConfig { vocab_size: 330, ..Default::default() },
    )
    .unwrap();
    let mut text = tok.to_json().to_string();
    for (ours, theirs) in RENAMES {
        text = text.replace(&format!("\"{ours}\""), &format!("\"{theirs}\""));
    }
    let mut t: Value = serde_json::from_str(&text).unwrap();
    t["model"]["ignore_merges"] = json!(true);
    t["normalizer"] = json!({"type": "NFC"});
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string_pretty(&t).unwrap()).unwrap();
    let id =
        |name: &str| t["added_tokens"].as_array().unwrap().iter().find(|a| a["content"] == name).unwrap()["id"].clone();
    let qwen = family == "qwen3";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "bos_token": if qwen { Value::Null } else { json!("<|begin_of_text|>") },
            "eos_token": {"content": "<|eot_id|>", "special": true},
            "pad_token": "<|finetune_right_pad|>",
            "chat_template": TEMPLATE,
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"eos_token_id": [id("<|end_of_text|>"), id("<|eot_id|>")]}).to_string(),
    )
    .unwrap();
    let vocab = tok.vocab_size() + 6; // padded past the tokenizer, as Qwen's are
    let cfg = jarip_model::ModelConfig {
        vocab_size: vocab,
        n_layer: 2,
        n_embd: 64,
        n_head: 4,
        n_kv_head: 2,
        mlp_hidden: 96,
        mlp: jarip_model::MlpKind::SwiGlu,
        max_seq_len: 256,
        rope_base: 10_000.0,
        logit_softcap: 0.0,
        norm_eps: 1e-6,
        qk_norm: qwen,
        tie_embeddings: !qwen,
        rope_scaling: None,
        head_dim_override: None,
    };
    let hf = json!({
        "architectures": [if qwen { "Qwen3ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": family,
        "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": null,
        "attention_bias": false, "tie_word_embeddings": !qwen, "torch_dtype": if qwen { "float32" } else { "bfloat16" },
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf).unwrap()).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, shape)) in jarip_model::param_shapes(&cfg).into_iter().enumerate() {
        let t = if shape.len() == 1 {
            (Tensor::rand(0.5f32, 1.5, shape.as_slice(), &Device::Cpu).unwrap()).to_dtype(DType::F32).unwrap()
        } else {
            (Tensor::randn(0f32, 0.3, shape.as_slice(), &Device::Cpu).unwrap() + (i as f64) * 1e-3).unwrap()
        };
        tensors.insert(name, t);
    }
    if qwen {
        let names: Vec<String> = tensors.keys().cloned().collect();
        let (a, b): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| n.contains("layers.0."));
        let mut map = serde_json::Map::new();
        for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
            let shard: HashMap<String, Tensor> = part.iter().map(|n| (n.clone(), tensors[n].clone())).collect();
            candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
            for n in part {
                map.insert(n, json!(file));
            }
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            json!({"metadata": {}, "weight_map": map}).to_string(),
        )
        .unwrap();
    } else {
        let bf: HashMap<String, Tensor> =
            tensors.into_iter().map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap())).collect();
        candle_core::safetensors::save(&bf, dir.join("model.safetensors")).unwrap();
    }
    dir
}

fn generate(model: &Path, extra: &[&str]) -> (Value, String) {
    let m = s(model);
    let mut args =
        vec!["generate", "--model", &m, "--prompt", "the cat", "--max-tokens", "6", "--temperature", "0", "--json"];
    args.extend_from_slice(extra);
    let out = jarip(&args);
    let stdout = ok(&out);
    (serde_json::from_str(&stdout).unwrap(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn http_get(addr: &str, path: &str) -> Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn foreign_models_are_read_only_and_named_so_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let llama = foreign_model(root, "llama");
    let qwen = foreign_model(root, "qwen3");

    // Generation, plain and chat; the note on stderr names the model as not ours.
    for m in [&llama, &qwen] {
        let (v, err) = generate(m, &["--raw"]);
        assert_eq!(v["tokens"].as_array().unwrap().len(), 6, "{v}");
        assert!(err.contains("not built by this run"), "{err}");
        let (a, _) = generate(m, &["--raw"]);
        assert_eq!(a["tokens"], v["tokens"], "greedy is deterministic");
        let (c, _) = generate(m, &["--chat"]);
        assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 5, "{c}");
    }
    // Tokenization follows the foreign tokenizer (NFC applied: a decomposed Hangul syllable
    // encodes as the composed one).
    let nfd = root.join("nfd.txt");
    let nfc = root.join("nfc.txt");
    std::fs::write(&nfd, "\u{1100}\u{1161}\u{11A8} cat").unwrap();
    std::fs::write(&nfc, "\u{AC01} cat").unwrap();
    let enc = |f: &Path| ok(&jarip(&["tokenizer", "encode", "--tokenizer", &s(&llama), "--input", &s(f)]));
    assert_eq!(enc(&nfd), enc(&nfc));

    // Side by side with one of ours: one table, the foreign column marked; the entry goes to
    // our run's ledger, and the report and card show the comparison.
    let run = common::tiny_shards(root);
    #[rustfmt::skip]
    ok(&jarip(&[
        "pretrain", "--data", &s(&run.join("shards")), "--tokenizer", &s(&run.join("tok")), "--out", &s(&run),
        "--depth", "1", "--arch", "llama", "--max-steps", "2", "--checkpoint-every", "2", "--seq-len", "32",
        "--batch-size", "4", "--eval-every", "0", "--eval-tokens", "256", "--sample-every", "0", "--no-progress",
    ]));
    let task = root.join("task.jsonl");
    let rows: String = (0..6)
        .map(|i| {
            json!({"context": format!("the cat sat on the {i}"), "choices": ["mat", "house"], "gold": i % 2})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&task, rows).unwrap();
    let results = run.join("evals").join("compare.json");
    #[rustfmt::skip]
    let table = ok(&jarip(&[
        "eval", "--model", &s(&run), "--model", &s(&llama), "--task", &format!("jsonl={}", s(&task)),
        "--json", &s(&results), "--quiet",
    ]));
    let weights_row = table.lines().find(|l| l.starts_with("weights")).unwrap_or_else(|| panic!("{table}"));
    assert!(
        weights_row.contains("built by this run") && weights_row.contains("not built by this run (llama)"),
        "{table}"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(doc["runs"][1]["model"]["origin"], "not built by this run (llama)");
    assert!(doc["runs"][0]["model"].get("origin").is_none(), "our own model carries no origin mark");
    let ledger = std::fs::read_to_string(run.join("ledger.jsonl")).unwrap();
    assert_eq!(
        ledger.lines().filter(|l| l.contains("\"stage\":\"eval\"")).count(),
        2,
        "both evals recorded in our ledger"
    );
    ok(&jarip(&["report", &s(&run)]));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("### Side by side — compare.json") && report.contains("not built by this run (llama)"));
    ok(&jarip(&["provenance", "card", &s(&run)]));
    let card = std::fs::read_to_string(run.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("## Compared with other models") && card.contains("not built by this run (llama)"), "{card}");
    assert!(card.contains("Built from scratch") && card.contains("Llama-family"), "{card}");

    // Serving: /info and the web page's provenance say so.
    let mut child = Command::new(env!("CARGO_BIN_EXE_jarip"))
        .args(["serve", "--model", &s(&qwen), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
    let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
    let info = http_get(&addr, "/info");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(info["origin"], "foreign", "{info}");
    assert!(info["statement"].as_str().unwrap().starts_with("not built by this run: a qwen3 model"), "{info}");

    // Fine-tuning: refused as a base, naming the rule; allowed with the flag, and then the
    // result says it is not from scratch.
    let convs = root.join("convs.jsonl");
    common::conversations(&convs);
    let sft = |out: &Path, allow: bool| {
        #[rustfmt::skip]
        let mut args = vec![
            "sft".to_string(), "--base".into(), s(&llama), "--data".into(), s(&convs), "--out".into(), s(out),
            "--max-steps".into(), "2".into(), "--seq-len".into(), "64".into(), "--batch-size".into(), "2".into(),
            "--eval-every".into(), "0".into(), "--no-progress".into(),
        ];
        if allow {
            args.push("--allow-foreign-base".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        jarip(&refs)
    };
    // A single-file base (GGUF) is refused before anything is written: checkpoints keep the
    // base's tokenizer.json, which a GGUF file has only inside.
    let gguf = root.join("ours.gguf");
    ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&gguf)]));
    let from_file = root.join("sft-from-gguf");
    #[rustfmt::skip]
    fails_with(
        &jarip(&["sft", "--base", &s(&gguf), "--data", &s(&convs), "--out", &s(&from_file), "--max-steps", "1", "--no-progress"]),
        &["ours.gguf", "not a single file"],
    );
    assert!(!from_file.join("ledger.jsonl").exists(), "nothing written");
    let refused = root.join("sft-refused");
    fails_with(&sft(&refused, false), &["not built by this run", "from scratch", "--allow-foreign-base"]);
    assert!(!refused.join("ledger.jsonl").exists(), "nothing written when refused");
    let out = root.join("sft");
    ok(&sft(&out, true));
    let entry = std::fs::read_to_string(out.join("ledger.jsonl")).unwrap();
    assert!(entry.contains("\"foreign_base\""), "the sft-start config records the foreign base");
    let verify = jarip(&["provenance", "verify", &s(&out)]);
    assert!(!verify.status.success());
    let text = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
    assert!(text.contains("NOT FROM SCRATCH"), "{text}");
    let _ = jarip(&["provenance", "card", &s(&out)]);
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("**NOT FROM SCRATCH.**") && card.contains("not from scratch"), "{card}");
    // The fine-tuned model loads with the foreign tokenizer it kept, and says what it is.
    let (v, err) = generate(&out, &["--chat"]);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(err.contains("not from scratch"), "{err}");
}

#[test]
fn what_jarip_cannot_read_exactly_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let good = foreign_model(root, "llama");
    let variant = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        edit(&dir);
        dir
    };
    let gen = |m: &Path| jarip(&["generate", "--model", &s(m), "--prompt", "x", "--max-tokens", "1"]);
    let pickle = variant("pickle", &|d| {
        std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap();
    });
    fails_with(&gen(&pickle), &["pytorch_model.bin", "pickled weights", "safetensors"]);
    let sp = variant("sentencepiece", &|d| {
        std::fs::rename(d.join("tokenizer.json"), d.join("tokenizer.model")).unwrap();
    });
    fails_with(&gen(&sp), &["SentencePiece", "tokenizer.json"]);
    let edit_config = |name: &str, key: &str, value: Value| {
        variant(name, &|d: &Path| {
            let mut c: Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
            c[key] = value.clone();
            std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        })
    };
    fails_with(&gen(&edit_config("gpt2", "model_type", json!("gpt2"))), &["model_type \"gpt2\"", "llama"]);
    fails_with(&gen(&edit_config("yarn", "rope_scaling", json!({"rope_type": "yarn", "factor": 4.0}))), &["\"yarn\""]);
    fails_with(&gen(&edit_config("scaled", "rope_scaling", json!({"rope_type": "llama3"}))), &["without factor"]);
    fails_with(&gen(&edit_config("bias", "attention_bias", json!(true))), &["attention_bias"]);
    let metaspace = variant("metaspace", &|d| {
        let mut t: Value = serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
        t["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"});
        std::fs::write(d.join("tokenizer.json"), t.to_string()).unwrap();
    });
    fails_with(&gen(&metaspace), &["SentencePiece-style", "byte-level BPE"]);
    let truncated = variant("truncated", &|d| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    fails_with(&gen(&truncated), &["model.safetensors"]);
}
