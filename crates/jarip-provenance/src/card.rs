//! `provenance card`: a model card that states what was built from scratch, each statement
//! with its evidence from the ledger and the result of re-checking it now, and the command
//! that lets anyone check it again.
//!
//! The card is generated from the record, never typed by hand: what the ledger does not show
//! (a tokenizer trained elsewhere, a pruned checkpoint) is said as such rather than claimed.

use crate::record::{Pretraining, RunRecord};
use crate::verify::{verify, Check, Report, VerifyOptions};
use anyhow::{Context, Result};
use jarip_ledger::records::{ContaminationDetails, LineageDetails};
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
        "matmul": p.config.matmul,
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

/// Contamination checks recorded with `jarip data contamination`: per check and task, how many
/// evaluation items the corpus holds (GPT-3's 13-gram rule or Llama 2 `dirty`), and how many are
/// Llama 2 `dirty` / `clean`.
fn contamination_json(rec: &RunRecord) -> Vec<Value> {
    rec.entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.stage == "contamination")
        .map(|e| match e.details_as::<ContaminationDetails>() {
            Ok(d) => json!({
                "seq": e.seq,
                "time": e.time,
                "documents": d.scan.documents,
                "bytes": d.scan.bytes,
                "report": d.report,
                "report_sha256": d.report_sha256,
                "tasks": d.tasks.iter().map(|t| json!({
                    "name": t.name, "layout": t.layout, "sha256": t.sha256, "n_items": t.n_items,
                    "n_contaminated": t.n_contaminated, "n_dirty": t.n_dirty, "n_not_clean": t.n_not_clean,
                    "n_clean": t.n_clean,
                })).collect::<Vec<_>>(),
            }),
            Err(_) => json!({"seq": e.seq, "time": e.time}),
        })
        .collect()
}

fn render_contamination(m: &mut String, checks: &[Value]) {
    if checks.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\n## Benchmark contamination\n\nEvaluation items found in the training corpus by exact token overlap \
         (`jarip data contamination`): contaminated = a 13-gram of the item occurs in the corpus (GPT-3) or matched \
         spans of ≥ 10 tokens cover more than 80 % of its tokens (Llama 2 dirty); clean = under 20 % covered. \
         Paraphrases and translations are not caught, and a match does not prove the model memorised the item.\n\n\
         | # | task | items | contaminated | dirty | not clean | clean |\n|---|---|---|---|---|---|---|"
    );
    for c in checks {
        for t in c["tasks"].as_array().into_iter().flatten() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s(&c["seq"]),
                s(&t["name"]),
                s(&t["n_items"]),
                s(&t["n_contaminated"]),
                s(&t["n_dirty"]),
                s(&t["n_not_clean"]),
                s(&t["n_clean"])
            );
        }
    }
}

/// Builds the card of the run at `path` (verifying it first, without replay).
/// The corpus's input files by licence (from the `prepare` entry's `sources`), the first files,
/// and what cleaning and deduplication removed.
fn sources_json(prepare: Option<&Entry>) -> Value {
    use jarip_ledger::records::DataSource;
    let Some(e) = prepare else { return Value::Null };
    let sources: Vec<DataSource> = serde_json::from_value(e.details["sources"].clone()).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for src in &sources {
        let k = by.entry(src.licence.clone().unwrap_or_else(|| "not stated".into())).or_default();
        k.0 += 1;
        k.1 += src.bytes;
    }
    let d = &e.details;
    json!({
        "recorded": !sources.is_empty(),
        "count": sources.len(),
        "unstated": sources.iter().filter(|s| s.licence.is_none()).count(),
        "by_licence": by.iter().map(|(l, (n, b))| json!({"licence": l, "files": n, "bytes": b})).collect::<Vec<_>>(),
        "files": sources.iter().take(50).collect::<Vec<_>>(),
        "dedup": {
            "documents_in": d["documents_in"], "documents_out": d["documents_out"],
            "bytes_in": d["bytes_in"], "bytes_out": d["bytes_out"],
            "exact_duplicates": d["exact_duplicates"], "near_duplicates": d["near_duplicates"],
            "too_short": d["dropped_too_short"],
        },
    })
}

fn render_sources(m: &mut String, j: &Value) {
    if j.is_null() {
        return;
    }
    let _ = writeln!(
        m,
        "
## Data sources and licences
"
    );
    if j["recorded"].as_bool() != Some(true) {
        let _ = writeln!(m, "The preparation entry predates per-file licence records.");
    } else {
        let _ = writeln!(m, "| licence (SPDX) | files | bytes |\n|---|---|---|");
        for l in j["by_licence"].as_array().into_iter().flatten() {
            let _ = writeln!(m, "| {} | {} | {} |", s(&l["licence"]), s(&l["files"]), s(&l["bytes"]));
        }
        let unstated = j["unstated"].as_u64().unwrap_or(0);
        if unstated > 0 {
            let _ = writeln!(
                m,
                "
**{unstated} input files have no stated licence.**"
            );
        }
        let _ = writeln!(
            m,
            "
| input file | SHA-256 | bytes | licence | stated by |\n|---|---|---|---|---|"
        );
        for f in j["files"].as_array().into_iter().flatten() {
            let _ = writeln!(
                m,
                "| `{}` | `{}` | {} | {} | {} |",
                s(&f["path"]),
                short(&s(&f["sha256"])),
                s(&f["bytes"]),
                s(&f["licence"]),
                s(&f["licence_from"])
            );
        }
        let n = j["count"].as_u64().unwrap_or(0);
        if n > 50 {
            let _ = writeln!(
                m,
                "
… and {} more files (all in the ledger's `prepare` entry).",
                n - 50
            );
        }
    }
    let d = &j["dedup"];
    let _ = writeln!(
        m,
        "
Cleaning and deduplication: {} documents in, {} kept ({} → {} bytes); {} exact and {} near duplicates removed, {} too short.",
        s(&d["documents_in"]),
        s(&d["documents_out"]),
        s(&d["bytes_in"]),
        s(&d["bytes_out"]),
        s(&d["exact_duplicates"]),
        s(&d["near_duplicates"]),
        s(&d["too_short"])
    );
}

/// Data-order tests recorded in the run's ledger (`jarip provenance data-order`).
fn data_order_json(rec: &RunRecord) -> Vec<Value> {
    use jarip_ledger::records::DataOrderDetails;
    rec.entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.stage == "data-order")
        .filter_map(|e| {
            let d: DataOrderDetails = e.details_as().ok()?;
            Some(json!({
                "seq": e.seq, "time": e.time, "model": d.model, "verdict": d.verdict,
                "log10_p": d.log10_p, "spearman": d.spearman, "batches": d.batches,
                "retokenised": d.retokenised, "alpha": e.config["alpha"], "plot": d.plot,
            }))
        })
        .collect()
}

fn render_data_order(m: &mut String, tests: &[Value]) {
    if tests.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "
## Data-order tests

Recorded training batches scored under a model: a loss that falls with the step at which this run read them (Spearman's ρ, a permutation test exact under the null) shows the weights were trained on this run's order.

| entry | model | verdict | ρ | log10 p | α | batches |\n|---|---|---|---|---|---|---|"
    );
    for t in tests {
        let _ = writeln!(
            m,
            "| #{} | `{}` | {} | {:.3} | {:.2} | {} | {} |",
            s(&t["seq"]),
            s(&t["model"]),
            s(&t["verdict"]),
            t["spearman"].as_f64().unwrap_or(f64::NAN),
            t["log10_p"].as_f64().unwrap_or(f64::NAN),
            s(&t["alpha"]),
            s(&t["batches"])
        );
    }
}

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
            "architecture": architecture(c),
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
    let foreign = crate::verify::foreign_base_list(&rec);
    let compared = compared_json(&rec);
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
        "contamination": contamination_json(&rec),
        "sources": sources_json(prepare),
        "data_order": data_order_json(&rec),
        "from_scratch": {
            "is_from_scratch": foreign.is_empty(),
            "statement": if foreign.is_empty() {
                "Architecture, tokenizer and weights were made in this run: the tokenizer was trained on the corpus below, the weights were initialised from the recorded seed and changed only by the recorded training steps. No pretrained tensor was imported.".to_string()
            } else {
                format!("**NOT FROM SCRATCH.** This model was fine-tuned from weights that no jarip run built (`sft --allow-foreign-base`): {}. Its fine-tuning is recorded below; its base's training is not, and its weights are not this team's own.", foreign.join("; "))
            },
            "foreign_bases": foreign,
            "evidence": evidence,
        },
        "compared_with": compared,
        "checks": report.checks,
        "notes": report.notes,
    });
    let markdown = render_markdown(&json);
    Ok(Card { json, markdown, verified: report.passed() })
}

/// The architecture in words, from the config (the preset's family where it is one).
fn architecture(c: &jarip_model::ModelConfig) -> String {
    let family = match (c.mlp, c.qk_norm, c.logit_softcap == 0.0) {
        (jarip_model::MlpKind::SwiGlu, false, true) => "Llama-family (`--arch llama`)",
        (jarip_model::MlpKind::SwiGlu, true, true) => "Qwen3-family (`--arch qwen3`)",
        _ => "jarip (`--arch jarip`)",
    };
    let mlp = match c.mlp {
        jarip_model::MlpKind::Relu2 => "ReLU² MLP",
        jarip_model::MlpKind::SwiGlu => "SwiGLU MLP",
    };
    let qk = if c.qk_norm { ", QK-norm" } else { "" };
    let cap =
        if c.logit_softcap > 0.0 { format!(", logit soft-cap {}", c.logit_softcap) } else { ", no soft-cap".into() };
    format!(
        "decoder-only transformer, {family} shape: token embedding, rotary positions (θ {}), pre-norm RMSNorm{qk}, \
         grouped-query attention, {mlp}, untied head{cap}",
        c.rope_base
    )
}

/// Evaluations recorded in the ledger, the run's own models and others scored beside them
/// (`jarip eval --model OURS --model OTHER`), each saying whose weights it scored.
fn compared_json(rec: &RunRecord) -> Vec<Value> {
    let evals: Vec<(u64, jarip_ledger::records::EvalDetails)> = rec
        .entries
        .iter()
        .filter(|(_, e)| e.stage == "eval")
        .filter_map(|(_, e)| Some((e.seq, e.details_as::<jarip_ledger::records::EvalDetails>().ok()?)))
        .collect();
    if !evals.iter().any(|(_, d)| d.model.origin.is_some()) {
        return vec![];
    }
    evals
        .into_iter()
        .map(|(seq, d)| {
            json!({
                "seq": seq,
                "model": d.model.dir,
                "weights": d.model.origin.clone().unwrap_or_else(|| "built by this run".into()),
                "params": d.model.params,
                "results": d.results,
            })
        })
        .collect()
}

fn render_compared(m: &mut String, rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\n## Compared with other models\n\nEvaluations in this ledger, this run's models beside models it did not \
         build (scored read-only; nothing of them entered training).\n\n| # | model | weights | parameters | results |\n|---|---|---|---|---|"
    );
    for r in rows {
        let mut res = Vec::new();
        for (task, metrics) in r["results"].as_object().into_iter().flatten() {
            for (k, v) in metrics.as_object().into_iter().flatten() {
                if k != "n" && !k.ends_with("_stderr") {
                    res.push(format!("{task} {k} {}", v.as_f64().map_or(s(v), |x| format!("{x:.4}"))));
                }
            }
        }
        let _ = writeln!(
            m,
            "| {} | `{}` | {} | {} | {} |",
            s(&r["seq"]),
            s(&r["model"]),
            s(&r["weights"]),
            s(&r["params"]),
            res.join("; ")
        );
    }
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
    let from_scratch = j["from_scratch"]["is_from_scratch"].as_bool() != Some(false);
    let _ = writeln!(
        m,
        "{} with jarip {} (git {}). Every statement below comes from the run's hash-chained ledger \
         (`{}`, {} entries, head `{}`) and was re-checked when this card was written ({}): **{}**.\n",
        if from_scratch { "Built from scratch" } else { "Fine-tuned — **not from scratch** —" },
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
             {} resumptions; {} on {} ({} kernels, {} matmuls, {} data-parallel replica(s)).\n",
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
            s(&tr["matmul"]),
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
    render_compared(&mut m, j["compared_with"].as_array().map_or(&[], Vec::as_slice));
    render_sources(&mut m, &j["sources"]);
    render_contamination(&mut m, j["contamination"].as_array().map_or(&[], Vec::as_slice));
    render_data_order(&mut m, j["data_order"].as_array().map_or(&[], Vec::as_slice));
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
