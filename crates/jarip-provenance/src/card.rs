//! `provenance card`: a model card that states what was built from scratch, each statement
//! with its evidence from the ledger and the result of re-checking it now, and the command
//! that lets anyone check it again.
//!
//! The card is generated from the record, never typed by hand: what the ledger does not show
//! (a tokenizer trained elsewhere, a pruned checkpoint) is said as such rather than claimed.

use crate::record::{Pretraining, RunRecord};
use crate::verify::{verify, Check, Report, VerifyOptions};
use anyhow::{Context, Result};
use jarip_ledger::records::LineageDetails;
use jarip_ledger::{Entry, Manifest};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const CARD_MD: &str = "MODEL_CARD.md";
pub const CARD_JSON: &str = "model_card.json";

pub struct Card {
    pub json: Value,
    pub markdown: String,
    pub verified: bool,
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

fn entry_by_stage<'a>(rec: &'a RunRecord, stage: &str) -> Option<&'a Entry> {
    rec.entries.iter().rev().map(|(_, e)| e).find(|e| e.stage == stage)
}

fn files_json(files: &[jarip_ledger::FileRef], max: usize) -> Value {
    json!({
        "count": files.len(),
        "bytes": files.iter().filter_map(|f| f.bytes).sum::<u64>(),
        "files": files.iter().take(max).map(|f| json!({"path": f.path, "sha256": f.sha256, "bytes": f.bytes})).collect::<Vec<_>>(),
    })
}

fn check_of<'a>(report: &'a Report, prefix: &str) -> Option<&'a Check> {
    report.checks.iter().find(|c| c.name.starts_with(prefix))
}

fn status(c: Option<&Check>) -> &'static str {
    match c {
        Some(c) if c.pass => "verified",
        Some(_) => "FAILED",
        None => "not recorded",
    }
}

fn training_json(rec: &RunRecord, p: &Pretraining) -> Value {
    let last = p.checkpoints.last();
    json!({
        "seed": p.config.seed,
        "initial_weights_sha256": p.initial_weights,
        "steps": last.map(|c| c.step),
        "tokens": last.and_then(|c| c.tokens_seen),
        "total_steps": last.and_then(|c| c.total_steps),
        "seq_len": p.config.seq_len,
        "batch_tokens": p.config.batch_tokens,
        "optimizer": p.config.optimizer,
        "schedule": p.config.schedule,
        "device": p.config.device,
        "kernels": p.config.kernels,
        "replicas": p.config.replicas,
        "started": rec.entries[p.start].1.time,
        "resumptions": p.resumes.len(),
        "checkpoints": p.checkpoints.iter().map(|c| json!({
            "name": c.name(), "step": c.step, "tokens_seen": c.tokens_seen, "weights_sha256": c.weights_sha256,
            "loss": c.loss, "val_bpb": c.val_bpb, "data_from": c.sampler_before, "data_to": c.sampler_after,
            "time": rec.entries[c.entry].1.time,
        })).collect::<Vec<_>>(),
    })
}

/// Builds the card of the run at `path` (verifying it first, without replay).
pub fn card(path: &Path) -> Result<Card> {
    let report = verify(path, &VerifyOptions::default())?;
    let rec = RunRecord::open(path)?;
    let p = rec.pretraining().ok().flatten();
    let run = rec.run.display().to_string();
    let verify_cmd = format!("jarip provenance verify {run} --replay-all");
    let head = rec.entries.last().map(|(_, e)| e.hash.clone()).unwrap_or_default();
    let first = rec.entries.first().map(|(_, e)| e);

    let prepare = entry_by_stage(&rec, "prepare");
    let tok_train = entry_by_stage(&rec, "tokenizer-train");
    let shard = entry_by_stage(&rec, "shard");
    let tokenizer_vocab = p.as_ref().map(|p| p.config.model.vocab_size);
    let shard_settings = p
        .as_ref()
        .and_then(|p| p.shard_manifest.as_ref())
        .and_then(|m| Manifest::read(rec.paths.locate(m).parent()?).ok())
        .map(|m| m.settings);

    let model = p.as_ref().map(|p| {
        let c = &p.config.model;
        json!({
            "architecture": "decoder-only transformer (jarip-model): token embedding, rotary positions, pre-norm RMSNorm, QK-norm, grouped-query attention, untied head, logit soft-cap",
            "config": c,
            "parameters": c.num_params(),
            "final_checkpoint": p.checkpoints.last().map(|c| c.name()),
            "final_weights_sha256": p.checkpoints.last().map(|c| c.weights_sha256.clone()),
        })
    });
    let later: Vec<Value> = rec
        .entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| {
            !matches!(
                e.stage.as_str(),
                "prepare" | "tokenizer-train" | "shard" | "pretrain-start" | "pretrain-resume" | "checkpoint"
            )
        })
        .map(|e| json!({"seq": e.seq, "stage": e.stage, "time": e.time, "outputs": e.outputs.len()}))
        .collect();
    // Lineage tests recorded with `jarip lineage … --record RUN`: against which models, with
    // which result (the JSON report and the per-layer plot are outputs of the entry).
    let lineage: Vec<Value> = rec
        .entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.stage == "lineage")
        .map(|e| match e.details_as::<LineageDetails>() {
            Ok(d) => json!({
                "seq": e.seq,
                "time": e.time,
                "a": d.a.path,
                "b": d.b.path,
                "verdict": d.verdict,
                "p_value": d.p_value,
                "log10_p": d.log10_p,
                "alpha": d.alpha,
                "power": d.power,
                "power_rho": d.power_rho,
                "rho_min": d.rho_min,
                "method": d.method,
                "plot": d.plot,
            }),
            Err(_) => json!({"seq": e.seq, "time": e.time}),
        })
        .collect();
    let evidence = vec![
        format!("initial weights: {} — the model rebuilt from seed {} hashes to the step-0 hash the ledger recorded, so every starting tensor is a function of the seed", status(check_of(&report, "initial weights")), p.as_ref().map_or("?".into(), |p| p.config.seed.to_string())),
        format!("training record: {} — each checkpoint continues the one before (steps, data cursor, tokens), from step 0", status(check_of(&report, "training record continuity"))),
        format!("imports: {} — no stage read a weight file this ledger did not produce", status(check_of(&report, "no imported weights"))),
        format!("tokenizer: {} — {}", status(check_of(&report, "tokenizer")), check_of(&report, "tokenizer").map_or("no pretraining recorded".into(), |c| c.detail.clone())),
        format!("data: {} — the shard files hash to the Merkle root pretraining recorded", status(check_of(&report, "shards merkle root"))),
        format!("files: every recorded file hash and the hash chain: {}", if report.passed() { "verified" } else { "FAILED (see checks)" }),
        format!("bit-for-bit replay of recorded checkpoint intervals: run `{verify_cmd}`"),
    ];
    let json = json!({
        "run": run,
        "generated": jarip_ledger::now_rfc3339(),
        "jarip_version": first.map(|e| e.jarip_version.clone()),
        "git_commit": first.and_then(|e| e.git_commit.clone()),
        "claims_verified": report.passed(),
        "verify_command": verify_cmd,
        "ledger": {"path": rec.ledger.display().to_string(), "entries": rec.entries.len(), "head_hash": head},
        "model": model,
        "corpus": prepare.map(|e| json!({"entry": e.seq, "inputs": files_json(&e.inputs, 20), "command": e.command.join(" ")})),
        "tokenizer": {
            "sha256": p.as_ref().map(|p| p.config.tokenizer_sha256.clone()),
            "vocab_size": tokenizer_vocab,
            "trained_in_this_run": tok_train.is_some(),
            "training_entry": tok_train.map(|e| e.seq),
            "trained_on": tok_train.map(|e| files_json(&e.inputs, 20)),
            "settings": tok_train.map(|e| e.config.clone()),
        },
        "data": {
            "shard_entry": shard.map(|e| e.seq),
            "shards_merkle_root": p.as_ref().and_then(|p| p.config.shards_merkle_root.clone()),
            "train": shard_settings.as_ref().map(|s| s["train"].clone()),
            "val": shard_settings.as_ref().map(|s| s["val"].clone()),
        },
        "training": p.as_ref().map(|p| training_json(&rec, p)),
        "later_stages": later,
        "lineage": lineage,
        "from_scratch": {
            "statement": "Architecture, tokenizer and weights were made in this run: the tokenizer was trained on the corpus below, the weights were initialised from the recorded seed and changed only by the recorded training steps. No pretrained tensor was imported.",
            "evidence": evidence,
        },
        "checks": report.checks,
        "notes": report.notes,
    });
    let markdown = render_markdown(&json);
    Ok(Card { json, markdown, verified: report.passed() })
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_markdown(j: &Value) -> String {
    let mut m = String::new();
    let run = s(&j["run"]);
    let _ = writeln!(m, "# Model card: `{run}`\n");
    let _ = writeln!(
        m,
        "Built from scratch with jarip {} (git {}). Every statement below comes from the run's hash-chained ledger \
         (`{}`, {} entries, head `{}`) and was re-checked when this card was written ({}): **{}**.\n",
        s(&j["jarip_version"]),
        s(&j["git_commit"]),
        s(&j["ledger"]["path"]),
        s(&j["ledger"]["entries"]),
        short(&s(&j["ledger"]["head_hash"])),
        s(&j["generated"]),
        if j["claims_verified"].as_bool() == Some(true) { "all checks pass" } else { "SOME CHECKS FAIL" }
    );
    let _ = writeln!(m, "Check it yourself (hashes, re-initialisation, and a bit-for-bit replay of every recorded checkpoint interval):\n\n```sh\n{}\n```\n", s(&j["verify_command"]));

    let _ = writeln!(m, "## What was built from scratch\n\n{}\n", s(&j["from_scratch"]["statement"]));
    for e in j["from_scratch"]["evidence"].as_array().into_iter().flatten() {
        let _ = writeln!(m, "- {}", s(e));
    }

    let _ = writeln!(m, "\n## Model\n");
    let model = &j["model"];
    if model.is_null() {
        let _ = writeln!(m, "No pretraining is recorded in this ledger.");
    } else {
        let c = &model["config"];
        let _ = writeln!(m, "{}.\n", s(&model["architecture"]));
        let _ = writeln!(m, "| field | value |\n|---|---|");
        for (k, v) in [
            ("parameters", &model["parameters"]),
            ("layers", &c["n_layer"]),
            ("width", &c["n_embd"]),
            ("heads / KV heads", &Value::String(format!("{} / {}", s(&c["n_head"]), s(&c["n_kv_head"])))),
            ("MLP", &Value::String(format!("{} × {}", s(&c["mlp"]), s(&c["mlp_hidden"])))),
            ("vocabulary", &c["vocab_size"]),
            ("context", &c["max_seq_len"]),
            ("final checkpoint", &model["final_checkpoint"]),
            ("final weights SHA-256", &model["final_weights_sha256"]),
        ] {
            let _ = writeln!(m, "| {k} | {} |", s(v));
        }
    }

    let _ = writeln!(m, "\n## Corpus and tokenizer\n");
    match j["corpus"].as_object() {
        Some(c) => {
            let _ = writeln!(
                m,
                "Corpus prepared by entry #{}: {} files, {} bytes (`{}`).",
                s(&c["entry"]),
                s(&c["inputs"]["count"]),
                s(&c["inputs"]["bytes"]),
                s(&c["command"])
            );
        }
        None => {
            let _ = writeln!(m, "Corpus preparation is not recorded in this ledger.");
        }
    }
    let t = &j["tokenizer"];
    if t["trained_in_this_run"].as_bool() == Some(true) {
        let _ = writeln!(
            m,
            "\nTokenizer: byte-level BPE trained by jarip in entry #{} on {} files ({} bytes); vocabulary {}; \
             `tokenizer.json` SHA-256 `{}`.",
            s(&t["training_entry"]),
            s(&t["trained_on"]["count"]),
            s(&t["trained_on"]["bytes"]),
            s(&t["vocab_size"]),
            s(&t["sha256"])
        );
        let _ = writeln!(m, "\n| tokenizer training input | SHA-256 | bytes |\n|---|---|---|");
        for f in t["trained_on"]["files"].as_array().into_iter().flatten() {
            let _ = writeln!(m, "| `{}` | `{}` | {} |", s(&f["path"]), short(&s(&f["sha256"])), s(&f["bytes"]));
        }
    } else {
        let _ = writeln!(m, "\nTokenizer `{}`: its training is not recorded in this ledger.", s(&t["sha256"]));
    }
    let d = &j["data"];
    let _ = writeln!(
        m,
        "\nShards (entry #{}): Merkle root `{}`; train {} tokens, validation {} tokens.",
        s(&d["shard_entry"]),
        s(&d["shards_merkle_root"]),
        s(&d["train"]["tokens"]),
        s(&d["val"]["tokens"])
    );

    let tr = &j["training"];
    if !tr.is_null() {
        let _ = writeln!(m, "\n## Training record\n");
        let _ = writeln!(
            m,
            "Initialised from seed {} (step-0 weights `{}`), started {}; {} steps, {} tokens ({} planned steps), \
             {} resumptions; {} on {} ({} kernels, {} data-parallel replica(s)).\n",
            s(&tr["seed"]),
            short(&s(&tr["initial_weights_sha256"])),
            s(&tr["started"]),
            s(&tr["steps"]),
            s(&tr["tokens"]),
            s(&tr["total_steps"]),
            s(&tr["resumptions"]),
            if tr["optimizer"]["muon"].as_bool() == Some(true) { "AdamW + Muon" } else { "AdamW" },
            s(&tr["device"]),
            s(&tr["kernels"]),
            s(&tr["replicas"])
        );
        let _ = writeln!(m, "| checkpoint | step | tokens | weights SHA-256 | loss | val bpb | data cursor |\n|---|---|---|---|---|---|---|");
        for c in tr["checkpoints"].as_array().into_iter().flatten() {
            let num = |v: &Value| v.as_f64().map_or("—".into(), |x| format!("{x:.4}"));
            let cursor = |v: &Value| format!("{}/{}", s(&v["epoch"]), s(&v["position"]));
            let _ = writeln!(
                m,
                "| {} | {} | {} | `{}` | {} | {} | {} → {} |",
                s(&c["name"]),
                s(&c["step"]),
                s(&c["tokens_seen"]),
                short(&s(&c["weights_sha256"])),
                num(&c["loss"]),
                num(&c["val_bpb"]),
                cursor(&c["data_from"]),
                cursor(&c["data_to"])
            );
        }
    }
    if let Some(later) = j["later_stages"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(m, "\n## Later stages\n");
        for e in later {
            let _ = writeln!(
                m,
                "- #{} {} ({}, {} output files)",
                s(&e["seq"]),
                s(&e["stage"]),
                s(&e["time"]),
                s(&e["outputs"])
            );
        }
    }
    if let Some(tests) = j["lineage"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            m,
            "\n## Lineage tests\n\nWas one model built from the other's weights? A permutation test of matched hidden \
             units (H0: independently initialised); `derived` needs p < α, `unrelated` needs p ≥ 0.01 and power ≥ 0.99 \
             at ρ_min.\n\n| # | A | B | verdict | log10 p | α | ρ_min | plot |\n|---|---|---|---|---|---|---|---|"
        );
        for t in tests {
            let plot = t["plot"].as_str().map_or("—".to_string(), |p| {
                let name = Path::new(p).file_name().map_or(p.to_string(), |n| n.to_string_lossy().to_string());
                format!("![lineage](lineage/{name})")
            });
            let _ = writeln!(
                m,
                "| {} | {} | {} | **{}** | {} | {} | {} | {} |",
                s(&t["seq"]),
                s(&t["a"]),
                s(&t["b"]),
                s(&t["verdict"]),
                t["log10_p"].as_f64().map_or("—".into(), |v| format!("{v:.1}")),
                s(&t["alpha"]),
                t["rho_min"].as_f64().map_or("—".into(), |v| format!("{v:.4}")),
                plot
            );
        }
    }
    let _ = writeln!(m, "\n## Checks at the time of writing\n\n| check | result | detail |\n|---|---|---|");
    for c in j["checks"].as_array().into_iter().flatten() {
        let pass = c["pass"].as_bool() == Some(true);
        let _ = writeln!(
            m,
            "| {} | {} | {} |",
            s(&c["name"]),
            if pass { "PASS" } else { "FAIL" },
            s(&c["detail"]).replace('|', "\\|")
        );
    }
    for n in j["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(m, "\nNote: {}", s(n));
    }
    m
}

/// Writes `MODEL_CARD.md` and `model_card.json` into `out` (default: the run directory).
pub fn write_card(path: &Path, out: Option<&Path>) -> Result<(PathBuf, PathBuf, Card)> {
    let c = card(path)?;
    let rec_dir = RunRecord::open(path)?.run;
    let dir = out.map_or(rec_dir, Path::to_path_buf);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (md, js) = (dir.join(CARD_MD), dir.join(CARD_JSON));
    jarip_ledger::atomic_write(&md, c.markdown.as_bytes())?;
    jarip_ledger::atomic_write(&js, serde_json::to_string_pretty(&c.json)?.as_bytes())?;
    Ok((md, js, c))
}
