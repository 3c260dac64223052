//! `pretrain --arch llama|qwen3`: the depth dial in another family trains from the seed,
//! replays bit for bit, resumes exactly, and exports to the HF layout and GGUF and back with the
//! same greedy continuation. (Native exports for other engines come with issue 16's
//! export work; these models use jarip's own export for now.)

mod common;

use common::{fails_with, jarip, ok, s};
use std::path::Path;

fn pretrain(run: &Path, out: &Path, arch: &str, tied: bool, resume: bool) -> String {
    let (shards, tok, out) = (s(&run.join("shards")), s(&run.join("tok")), s(out));
    let mut args = vec![
        "pretrain",
        "--data",
        &shards,
        "--tokenizer",
        &tok,
        "--out",
        &out,
        "--depth",
        "1",
        "--arch",
        arch,
        "--max-steps",
        "6",
        "--checkpoint-every",
        "3",
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
    ];
    if resume {
        args.push("--resume");
    }
    if tied {
        args.push("--tie-embeddings");
    }
    ok(&jarip(&args))
}

fn greedy(model: &Path) -> String {
    let out = ok(&jarip(&[
        "generate",
        "--model",
        &s(model),
        "--prompt",
        "the cat",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--raw",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["tokens"].to_string()
}

#[test]
fn llama_and_qwen3_presets_train_resume_replay_and_export() {
    for (arch, qk_norm, tied) in [("llama", false, false), ("qwen3", true, false), ("llama", false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let run = common::tiny_shards(dir.path());
        pretrain(&run, &run, arch, tied, false);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("ckpt-000006/config.json")).unwrap()).unwrap();
        assert_eq!((cfg["mlp"].as_str(), cfg["logit_softcap"].as_f64()), (Some("swi_glu"), Some(0.0)), "{arch}: {cfg}");
        assert_eq!(cfg["qk_norm"].as_bool().unwrap_or(true), qk_norm, "{arch}: {cfg}");
        let tensors = std::fs::read(run.join("ckpt-000006/model.safetensors")).unwrap();
        let has_q_norm = String::from_utf8_lossy(&tensors[..4096.min(tensors.len())]).contains("q_norm");
        assert_eq!(has_q_norm, qk_norm, "{arch}: QK-norm gains stored only when used");
        let has_head = String::from_utf8_lossy(&tensors[..4096.min(tensors.len())]).contains("lm_head");
        assert_eq!(has_head, !tied, "{arch}: a tied head is the embedding, not a tensor of its own");
        assert_eq!(cfg["tie_embeddings"].as_bool().unwrap_or(false), tied, "{cfg}");

        // Every recorded interval replays bit for bit; a run cut at step 3 resumes to the same
        // weights.
        ok(&jarip(&["provenance", "verify", &s(&run), "--replay-all"]));
        let again = dir.path().join("again");
        pretrain(&run, &again, arch, tied, false);
        std::fs::remove_dir_all(again.join("ckpt-000006")).unwrap();
        pretrain(&run, &again, arch, tied, true);
        let hash = |d: &Path| std::fs::read(d.join("ckpt-000006/model.safetensors")).unwrap();
        assert!(hash(&again) == hash(&run), "{arch}: resumed weights differ");
        // A --config file sets every field itself: --arch is refused beside it.
        let cfg_file = dir.path().join("c.json");
        std::fs::write(&cfg_file, serde_json::to_string(&cfg).unwrap()).unwrap();
        fails_with(
            &jarip(&[
                "pretrain",
                "--data",
                &s(&run.join("shards")),
                "--tokenizer",
                &s(&run.join("tok")),
                "--out",
                &s(&dir.path().join("other")),
                "--config",
                &s(&cfg_file),
                "--arch",
                arch,
                "--max-steps",
                "1",
            ]),
            &["--arch"],
        );

        // The checkpoint and its HF export continue a prompt alike.
        let hf = dir.path().join("hf");
        let said = ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&hf)]));
        assert!(said.contains("no remote code") && said.contains("vLLM"), "{said}");
        assert_eq!(greedy(&run), greedy(&hf), "{arch}");
        let hf_cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        assert_eq!(hf_cfg["tie_word_embeddings"], tied, "{hf_cfg}");
        let gguf = dir.path().join("m.gguf");
        let said = ok(&jarip(&["export", "--model", &s(&run), "--out", &s(&gguf)]));
        assert!(said.contains(&format!("llama.cpp and Ollama as {arch} exactly")), "{said}");
        assert_eq!(greedy(&run), greedy(&gguf), "{arch} (GGUF)");
        let file = jarip_interop::gguf::GgufFile::open(&gguf).unwrap();
        assert_eq!(
            file.tensor("output.weight").is_some(),
            !tied,
            "a tied GGUF leaves output.weight out, as llama.cpp's converter does"
        );
    }
}
