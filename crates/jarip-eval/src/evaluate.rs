//! Scoring tasks on any [`LanguageModel`]: requests built, scored in batches, reduced to metrics.

use crate::lm::{LanguageModel, LlRequest, SharedContext};
use crate::metrics::{gen_metrics, mc_metrics, mc_outcome, McOutcome, TextTotals, PRIMARY_METRICS};
use crate::prompt::{encode_pair, fewshot_indices, gen_context, mc_context};
use crate::task::{Examples, GenExample, Layout, McExample, Task};
use anyhow::{bail, Context, Result};
use jarip_infer::{Request, SamplingParams};
use jarip_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

/// How tasks are run. The same options, model and files give the same scores on every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Score only the first N examples of each task.
    pub limit: Option<usize>,
    /// Solved examples placed before each question.
    pub fewshot: usize,
    /// Seeds the few-shot draws and sampled generation.
    pub seed: u64,
    /// Most sequences per forward pass.
    pub batch_size: usize,
    /// Longest generation (tokens) unless a row sets its own.
    pub max_gen_tokens: usize,
    /// 0 generates greedily; above 0 samples (seeded per example).
    pub temperature: f32,
    /// Print progress lines to stderr.
    #[serde(skip)]
    pub progress: bool,
    /// The weight format scored: f32, or q8_0 (then every score goes through the quantized
    /// decode path, measuring what serving that format gives).
    #[serde(default)]
    pub weights: jarip_infer::WeightFormat,
}

impl Default for EvalOptions {
    fn default() -> Self {
        // 1234 is lm-evaluation-harness's default few-shot seed.
        Self {
            limit: None,
            fewshot: 0,
            seed: 1234,
            batch_size: 16,
            max_gen_tokens: 64,
            temperature: 0.0,
            progress: false,
            weights: jarip_infer::WeightFormat::F32,
        }
    }
}

/// Scores of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub name: String,
    pub layout: Layout,
    pub kind: &'static str,
    pub path: PathBuf,
    pub sha256: String,
    /// Examples scored.
    pub n: usize,
    /// Metric name → value, in report order (`*_stderr` beside its metric).
    pub metrics: Vec<(String, f64)>,
    pub seconds: f64,
    /// UTF-8 bytes of text read by the model (bits-per-byte tasks), for throughput.
    pub text_bytes: u64,
    /// The same scores over the task's clean examples alone (when [`Task::clean`] is set).
    pub clean: Option<SubsetResult>,
}

/// Scores over a subset of a task's examples: the clean ones of a contamination report.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetResult {
    /// Examples in the subset.
    pub n: usize,
    /// Examples scored but left out of it (contaminated).
    pub excluded: usize,
    /// Metric name → value, as [`TaskResult::metrics`]; NaN when the subset is empty.
    pub metrics: Vec<(String, f64)>,
}

impl SubsetResult {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// What each scored example came to, kept so that metrics can be reduced over the whole task
/// and over a subset from the same model outputs.
enum Outcomes {
    MultipleChoice(Vec<McOutcome>),
    Generative {
        generations: Vec<String>,
        answers: Vec<Vec<String>>,
    },
    /// The task's totals (summed as scored) and each document's own.
    Text {
        total: TextTotals,
        per_doc: Vec<TextTotals>,
    },
}

impl Outcomes {
    fn metrics(&self, macro_f1: bool) -> Vec<(String, f64)> {
        match self {
            Outcomes::MultipleChoice(o) => mc_metrics(o, macro_f1),
            Outcomes::Generative { generations, answers } => gen_metrics(generations, answers),
            Outcomes::Text { total, .. } => total.metrics(),
        }
    }

    /// Metrics over the examples `keep` marks (`keep` covers at least the scored examples).
    fn subset(&self, keep: &[bool], macro_f1: bool) -> SubsetResult {
        let pick = |i: usize| keep.get(i).copied().unwrap_or(false);
        let (n, metrics) = match self {
            Outcomes::MultipleChoice(o) => {
                let sub: Vec<McOutcome> = o.iter().enumerate().filter(|(i, _)| pick(*i)).map(|(_, x)| *x).collect();
                (sub.len(), mc_metrics(&sub, macro_f1))
            }
            Outcomes::Generative { generations, answers } => {
                let idx: Vec<usize> = (0..generations.len()).filter(|&i| pick(i)).collect();
                let g: Vec<String> = idx.iter().map(|&i| generations[i].clone()).collect();
                let a: Vec<Vec<String>> = idx.iter().map(|&i| answers[i].clone()).collect();
                (idx.len(), gen_metrics(&g, &a))
            }
            Outcomes::Text { per_doc, .. } => {
                let mut t = TextTotals::default();
                let mut n = 0;
                for d in per_doc.iter().enumerate().filter(|(i, _)| pick(*i)).map(|(_, d)| d) {
                    t.nats += d.nats;
                    t.tokens += d.tokens;
                    t.bytes += d.bytes;
                    t.words += d.words;
                    n += 1;
                }
                (n, t.metrics())
            }
        };
        let total = match self {
            Outcomes::MultipleChoice(o) => o.len(),
            Outcomes::Generative { generations, .. } => generations.len(),
            Outcomes::Text { per_doc, .. } => per_doc.len(),
        };
        let metrics = if n == 0 { metrics.into_iter().map(|(k, _)| (k, f64::NAN)).collect() } else { metrics };
        SubsetResult { n, excluded: total - n, metrics }
    }
}

impl TaskResult {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The headline number: accuracy, exact match or bits per byte.
    pub fn primary(&self) -> Option<(&'static str, f64)> {
        PRIMARY_METRICS.into_iter().find_map(|m| self.metric(m).map(|v| (m, v)))
    }
}

/// Requests scored per call, so progress can be shown on long tasks.
const CHUNK: usize = 512;

/// A progress line rewritten in place on a terminal; nothing when stderr is a file or pipe
/// (the per-task summary line is written either way, see [`done`]).
fn progress(opts: &EvalOptions, line: impl FnOnce() -> String) {
    let mut e = std::io::stderr();
    if opts.progress && e.is_terminal() {
        let _ = write!(e, "\r{}\x1b[K", line());
        let _ = e.flush();
    }
}

fn done(opts: &EvalOptions, r: &TaskResult) {
    if opts.progress {
        let mut e = std::io::stderr();
        let clear = if e.is_terminal() { "\r\x1b[K" } else { "" };
        let _ = writeln!(e, "{clear}  {}: {} examples in {:.1}s", r.name, r.n, r.seconds);
    }
}

fn limited<T>(v: &[T], opts: &EvalOptions) -> usize {
    opts.limit.map_or(v.len(), |l| l.min(v.len()))
}

/// Runs one task.
pub fn evaluate_task<M: LanguageModel + ?Sized>(
    lm: &M,
    tok: &Tokenizer,
    task: &Task,
    opts: &EvalOptions,
) -> Result<TaskResult> {
    let t0 = Instant::now();
    let (n, outcomes) = match &task.examples {
        Examples::MultipleChoice(v) => {
            let n = limited(v, opts);
            (n, multiple_choice(lm, tok, task, v, n, opts)?)
        }
        Examples::Generative(v) => {
            let n = limited(v, opts);
            (n, generative(lm, tok, task, v, n, opts)?)
        }
        Examples::Text(docs) => {
            let n = limited(docs, opts);
            (n, bits_per_byte(lm, tok, task, &docs[..n], opts)?)
        }
    };
    let text_bytes = match &outcomes {
        Outcomes::Text { total, .. } => total.bytes,
        _ => 0,
    };
    if let Some(clean) = &task.clean {
        if clean.len() != task.examples.len() {
            bail!("the contamination report covers {} examples, the task holds {}", clean.len(), task.examples.len());
        }
    }
    let metrics = outcomes.metrics(task.macro_f1);
    let clean = task.clean.as_ref().map(|keep| outcomes.subset(&keep[..n], task.macro_f1));
    let result = TaskResult {
        name: task.name.clone(),
        layout: task.layout,
        kind: task.examples.kind(),
        path: task.path.clone(),
        sha256: task.sha256.clone(),
        n,
        metrics,
        seconds: t0.elapsed().as_secs_f64(),
        text_bytes,
        clean,
    };
    done(opts, &result);
    Ok(result)
}

/// Runs every task in order; the first failure stops the run (no partial result set).
pub fn evaluate<M: LanguageModel + ?Sized>(
    lm: &M,
    tok: &Tokenizer,
    tasks: &[Task],
    opts: &EvalOptions,
) -> Result<Vec<TaskResult>> {
    tasks
        .iter()
        .map(|t| evaluate_task(lm, tok, t, opts).with_context(|| format!("task {} ({})", t.name, t.path.display())))
        .collect()
}

fn multiple_choice<M: LanguageModel + ?Sized>(
    lm: &M,
    tok: &Tokenizer,
    task: &Task,
    all: &[McExample],
    n: usize,
    opts: &EvalOptions,
) -> Result<Outcomes> {
    let mut questions = Vec::with_capacity(n);
    for (i, ex) in all[..n].iter().enumerate() {
        let shots: Vec<&McExample> =
            fewshot_indices(all.len(), i, opts.fewshot, opts.seed)?.into_iter().map(|j| &all[j]).collect();
        let context = mc_context(ex, &shots);
        let mut q = SharedContext { context: vec![], continuations: vec![] };
        for (c, choice) in ex.choices.iter().enumerate() {
            // The context's tokens are the same for every choice (they depend on its text only).
            let (ctx, continuation) = encode_pair(tok, &context, &format!("{}{choice}", ex.delimiter));
            if continuation.is_empty() {
                bail!("example {i}: choice {c} ({choice:?}) encodes to no tokens after its context");
            }
            q.context = ctx;
            q.continuations.push(continuation);
        }
        questions.push(q);
    }
    let mut scores: Vec<Vec<f64>> = Vec::with_capacity(n);
    for chunk in questions.chunks(CHUNK / 4) {
        scores.extend(lm.choice_logprobs(chunk)?);
        progress(opts, || format!("  {}: {}/{n} questions scored", task.name, scores.len()));
    }
    let outcomes: Vec<_> = all[..n].iter().zip(&scores).map(|(ex, s)| mc_outcome(s, &ex.choices, ex.gold)).collect();
    Ok(Outcomes::MultipleChoice(outcomes))
}

fn generative<M: LanguageModel + ?Sized>(
    lm: &M,
    tok: &Tokenizer,
    task: &Task,
    all: &[GenExample],
    n: usize,
    opts: &EvalOptions,
) -> Result<Outcomes> {
    // Generation ends at a stop string or at any special token (<|eos|>, <|end|>, …).
    let stop_tokens: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&t| tok.is_special(t)).collect();
    let mut requests = Vec::with_capacity(n);
    for (i, ex) in all[..n].iter().enumerate() {
        let shots: Vec<&GenExample> =
            fewshot_indices(all.len(), i, opts.fewshot, opts.seed)?.into_iter().map(|j| &all[j]).collect();
        let mut prompt = vec![tok.bos_id()];
        prompt.extend(tok.encode(&gen_context(ex, &shots)));
        let sampling = SamplingParams {
            temperature: opts.temperature,
            // Each example its own stream: a sampled answer does not depend on the others.
            seed: Some(opts.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..SamplingParams::greedy()
        };
        let mut r = Request::new(prompt, ex.max_tokens.unwrap_or(opts.max_gen_tokens), sampling);
        r.stop = ex.stop.clone();
        r.stop_tokens = stop_tokens.clone();
        // A prompt longer than the context keeps its end, where the question is.
        r.truncate_prompt = true;
        requests.push(r);
    }
    let mut generations = Vec::with_capacity(n);
    for chunk in requests.chunks(opts.batch_size.max(1) * 4) {
        generations.extend(lm.generate(chunk.to_vec())?);
        progress(opts, || format!("  {}: {}/{n} generated", task.name, generations.len()));
    }
    let answers: Vec<Vec<String>> = all[..n].iter().map(|e| e.answers.clone()).collect();
    Ok(Outcomes::Generative { generations, answers })
}

/// Token windows covering a document: `<|bos|>` then the text's tokens, cut into disjoint
/// prediction windows of `max_len` tokens, each conditioned on the token before it (the
/// harness's rolling log-likelihood with one token of context).
pub fn rolling_windows(tokens: &[u32], max_len: usize) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut start = 1;
    while start < tokens.len() {
        let end = (start + max_len).min(tokens.len());
        out.push(tokens[start - 1..end].to_vec());
        start = end;
    }
    out
}

fn bits_per_byte<M: LanguageModel + ?Sized>(
    lm: &M,
    tok: &Tokenizer,
    task: &Task,
    docs: &[String],
    opts: &EvalOptions,
) -> Result<Outcomes> {
    let mut totals = TextTotals::default();
    let mut per_doc = Vec::with_capacity(docs.len());
    let mut windows = Vec::new();
    // The document each window belongs to.
    let mut owner = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let mut ids = vec![tok.bos_id()];
        tok.encode_into(d, &mut ids);
        let doc = TextTotals {
            nats: 0.0,
            tokens: ids.len() as u64 - 1,
            bytes: d.len() as u64,
            words: d.split_whitespace().count() as u64,
        };
        totals.tokens += doc.tokens;
        totals.bytes += doc.bytes;
        totals.words += doc.words;
        per_doc.push(doc);
        let w = rolling_windows(&ids, lm.max_len());
        owner.extend(std::iter::repeat_n(i, w.len()));
        windows.extend(w);
    }
    let requests: Vec<LlRequest> =
        windows.iter().map(|w| LlRequest { context: w[..1].to_vec(), continuation: w[1..].to_vec() }).collect();
    let per_call = (CHUNK / 8).max(opts.batch_size);
    let mut done = 0;
    for chunk in requests.chunks(per_call) {
        let lps = lm.logprobs(chunk)?;
        // The task's total is summed per call, as it always was; each document's on the side.
        totals.nats -= lps.iter().sum::<f64>();
        for (lp, &o) in lps.iter().zip(&owner[done..done + chunk.len()]) {
            per_doc[o].nats -= lp;
        }
        done += chunk.len();
        progress(opts, || format!("  {}: {done}/{} windows", task.name, windows.len()));
    }
    if totals.bytes == 0 {
        bail!("no text to measure");
    }
    Ok(Outcomes::Text { total: totals, per_doc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once() {
        let toks: Vec<u32> = (0..10).collect();
        let w = rolling_windows(&toks, 4);
        assert_eq!(w, vec![vec![0, 1, 2, 3, 4], vec![4, 5, 6, 7, 8], vec![8, 9]]);
        let predicted: usize = w.iter().map(|x| x.len() - 1).sum();
        assert_eq!(predicted, 9);
        assert!(rolling_windows(&[0], 4).is_empty());
    }
}
