//! What scoring needs from a model, as a small trait ([`LanguageModel`]) so that metrics can be
//! checked against a toy model with known log-likelihoods, and its implementation for the
//! jarip transformer ([`GptLm`]):
//! - multiple choice reads each context once and every choice after a copy of its cache, through
//!   the decode-layout model (`jarip_infer::DecodeModel`, ragged and batch-invariant);
//! - bits per byte and single requests run right-padded batches, longest first, through the
//!   training kernels (the fused head + cross-entropy for log-likelihoods);
//! - generation goes through `jarip_infer`'s engine (the one `jarip generate` and the server use).

use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};
use jarip_infer::{Engine, Request};
use jarip_infer::{SeqCache, SeqInput, WeightFormat};
use jarip_model::Gpt;
use jarip_tokenizer::Tokenizer;
use std::sync::OnceLock;

/// Score `continuation` given `context` (both token ids; the context starts with `<|bos|>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Several continuations after one context: the choices of a multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedContext {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlScore {
    /// Σ log p(continuation token | everything before it), natural log.
    pub logprob: f64,
    /// Whether every continuation token is the model's most likely one.
    pub is_greedy: bool,
}

pub trait LanguageModel {
    /// The longest sequence the model reads at once.
    fn max_len(&self) -> usize;

    /// One score per request, in request order.
    fn loglikelihood(&self, requests: &[LlRequest]) -> Result<Vec<LlScore>>;

    /// Only the log-likelihoods (what multiple choice and bits per byte need); a model may
    /// compute them more cheaply than [`LanguageModel::loglikelihood`].
    fn logprobs(&self, requests: &[LlRequest]) -> Result<Vec<f64>> {
        Ok(self.loglikelihood(requests)?.into_iter().map(|s| s.logprob).collect())
    }

    /// For each question, the log-likelihood of each continuation after its context; a model
    /// may read each context once instead of once per continuation.
    fn choice_logprobs(&self, questions: &[SharedContext]) -> Result<Vec<Vec<f64>>> {
        let requests: Vec<LlRequest> = questions
            .iter()
            .flat_map(|q| {
                q.continuations.iter().map(|c| LlRequest { context: q.context.clone(), continuation: c.clone() })
            })
            .collect();
        let mut flat = self.logprobs(&requests)?.into_iter();
        Ok(questions.iter().map(|q| flat.by_ref().take(q.continuations.len()).collect()).collect())
    }

    /// The text generated for each request (up to, not including, a stop string or token),
    /// in request order.
    fn generate(&self, requests: Vec<Request>) -> Result<Vec<String>>;
}

/// The jarip transformer as a [`LanguageModel`].
pub struct GptLm<'a> {
    model: &'a Gpt,
    tokenizer: &'a Tokenizer,
    /// Most sequences per forward pass.
    batch_size: usize,
    /// Most padded tokens per forward pass: the logits of a batch are `tokens × vocab` floats,
    /// so this bounds memory whatever the sequence length.
    token_budget: usize,
    /// Weight format of the decode-layout copy; anything but f32 also scores log-likelihoods
    /// through it.
    weights: WeightFormat,
    /// The decode-layout copy of the weights (multiple choice, generation), built on first use:
    /// a bits-per-byte run never pays for it.
    engine: OnceLock<Engine>,
}

impl<'a> GptLm<'a> {
    pub fn new(model: &'a Gpt, tokenizer: &'a Tokenizer, batch_size: usize) -> Self {
        Self {
            model,
            tokenizer,
            batch_size: batch_size.max(1),
            token_budget: 8192,
            weights: WeightFormat::F32,
            engine: OnceLock::new(),
        }
    }

    /// Scores with the weight matrices held in `format`.
    pub fn with_weights(mut self, format: WeightFormat) -> Self {
        self.weights = format;
        self
    }

    /// Each request's continuation scored through the decode-layout model, sequences in ragged
    /// batches (used for quantized weights, which only that path holds).
    fn decode_scores(&self, requests: &[LlRequest]) -> Result<Vec<LlScore>> {
        let (seqs, lens) = self.sequences(requests)?;
        let model = self.engine()?.model();
        let vocab = model.config().vocab_size;
        let mut out = vec![LlScore { logprob: 0.0, is_greedy: false }; requests.len()];
        for batch in self.batches(&lens) {
            let mut caches = vec![SeqCache::new(); batch.len()];
            let logits = {
                let mut inputs: Vec<SeqInput<'_>> = batch
                    .iter()
                    .zip(caches.iter_mut())
                    .map(|(&i, cache)| SeqInput { tokens: &seqs[i][..lens[i]], cache })
                    .collect();
                model.forward(&mut inputs, true)?
            };
            for (&i, rows) in batch.iter().zip(&logits) {
                let start = lens[i] - requests[i].continuation.len();
                let mut score = LlScore { logprob: 0.0, is_greedy: true };
                for p in start..lens[i] {
                    let (lp, greedy) = logprob_of(&rows[p * vocab..(p + 1) * vocab], seqs[i][p + 1]);
                    score.logprob += lp;
                    score.is_greedy &= greedy;
                }
                out[i] = score;
            }
        }
        Ok(out)
    }

    fn engine(&self) -> Result<&Engine> {
        if let Some(e) = self.engine.get() {
            return Ok(e);
        }
        let tok = self.tokenizer.clone();
        let e = Engine::with_format(self.model, tok, self.weights, jarip_infer::KvFormat::F32)?;
        Ok(self.engine.get_or_init(|| e))
    }

    /// Groups sequence indices (sorted longest first) into batches within both limits.
    fn batches(&self, lens: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        // Longest first, as the harness does: a batch is padded to its first sequence, and
        // similar lengths side by side waste little; ties keep request order (determinism).
        order.sort_by(|&a, &b| lens[b].cmp(&lens[a]).then(a.cmp(&b)));
        let mut out: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match out.last_mut() {
                Some(b) if b.len() < self.batch_size && (b.len() + 1) * lens[b[0]] <= self.token_budget => b.push(i),
                _ => out.push(vec![i]),
            }
        }
        out
    }

    /// Each request as one sequence, left-truncated to the context window (the harness's
    /// `(context + continuation)[-(max_length + 1):]`), and its input length (all but the last).
    fn sequences(&self, requests: &[LlRequest]) -> Result<(Vec<Vec<u32>>, Vec<usize>)> {
        let max = self.max_len();
        let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(requests.len());
        for r in requests {
            if r.continuation.is_empty() || r.context.is_empty() {
                bail!("a request needs a context (at least <|bos|>) and a continuation of at least one token");
            }
            if r.continuation.len() > max {
                bail!("a continuation of {} tokens does not fit the model's context of {max}", r.continuation.len());
            }
            let mut s: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
            if s.len() > max + 1 {
                s.drain(..s.len() - (max + 1));
            }
            seqs.push(s);
        }
        let lens = seqs.iter().map(|s| s.len() - 1).collect();
        Ok((seqs, lens))
    }

    /// `[B, T]` u32 ids, each row right-padded: causal attention keeps padding out of every
    /// real position, so a row scores as it would alone.
    fn padded(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(self.tokenizer.pad_id(), t - r.len()));
        }
        Ok(Tensor::from_vec(ids, (rows.len(), t), self.model.device())?)
    }
}

/// A context scored once and the choices that follow it, as (question, choice) indices.
type ContextGroup<'q> = (&'q [u32], Vec<(usize, usize)>);

/// `log p(target)` and whether `target` is the arg-max of `logits` (first maximum, as argmax).
fn logprob_of(logits: &[f32], target: u32) -> (f64, bool) {
    let mut best = 0;
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > max {
            max = x;
            best = i;
        }
    }
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lp = (logits[target as usize] - max) as f64 - sum.ln();
    (lp, best == target as usize)
}

impl LanguageModel for GptLm<'_> {
    fn max_len(&self) -> usize {
        self.model.config().max_seq_len
    }

    fn loglikelihood(&self, requests: &[LlRequest]) -> Result<Vec<LlScore>> {
        if self.weights != WeightFormat::F32 {
            return self.decode_scores(requests);
        }
        let (seqs, lens) = self.sequences(requests)?;
        let mut out = vec![LlScore { logprob: 0.0, is_greedy: false }; requests.len()];
        for batch in self.batches(&lens) {
            let inputs: Vec<&[u32]> = batch.iter().map(|&i| &seqs[i][..lens[i]]).collect();
            let logits = self.model.forward(&self.padded(&inputs)?)?; // [B, T, V]
            for (row, &i) in batch.iter().enumerate() {
                let n = requests[i].continuation.len();
                let start = lens[i] - n;
                let rows = logits.i((row, start..lens[i]))?.to_vec2::<f32>()?;
                let mut score = LlScore { logprob: 0.0, is_greedy: true };
                for (j, l) in rows.iter().enumerate() {
                    let (lp, greedy) = logprob_of(l, seqs[i][start + j + 1]);
                    score.logprob += lp;
                    score.is_greedy &= greedy;
                }
                out[i] = score;
            }
        }
        Ok(out)
    }

    fn logprobs(&self, requests: &[LlRequest]) -> Result<Vec<f64>> {
        if self.weights != WeightFormat::F32 {
            return Ok(self.decode_scores(requests)?.into_iter().map(|s| s.logprob).collect());
        }
        let (seqs, lens) = self.sequences(requests)?;
        let mut out = vec![0f64; requests.len()];
        for batch in self.batches(&lens) {
            let inputs: Vec<&[u32]> = batch.iter().map(|&i| &seqs[i][..lens[i]]).collect();
            let targets: Vec<&[u32]> = batch.iter().map(|&i| &seqs[i][1..]).collect();
            let t = lens[batch[0]];
            // The fused head + cross-entropy never materialises [B, T, V] logits: 2-4x faster
            // than `forward` on the speedrun model, which is why scoring goes this way.
            let nats = self.model.token_losses(&self.padded(&inputs)?, &self.padded(&targets)?)?.to_vec1::<f32>()?;
            for (row, &i) in batch.iter().enumerate() {
                let start = lens[i] - requests[i].continuation.len();
                out[i] = -nats[row * t + start..row * t + lens[i]].iter().map(|&x| x as f64).sum::<f64>();
            }
        }
        Ok(out)
    }

    /// Each context is read once (a ragged batch of contexts through the decode-layout model),
    /// its cache copied for every choice, and only the choices' tokens are run after it. The
    /// decode kernel reduces every value in a fixed order, so a question's scores do not depend
    /// on the batch it shared; the harness's left truncation is kept exactly (a question whose
    /// choices would truncate its context differently is scored choice by choice).
    fn choice_logprobs(&self, questions: &[SharedContext]) -> Result<Vec<Vec<f64>>> {
        let model = self.engine()?.model();
        let max = self.max_len();
        let mut groups: Vec<ContextGroup> = Vec::new();
        for (qi, q) in questions.iter().enumerate() {
            if q.context.is_empty() {
                bail!("a request needs a context (at least <|bos|>)");
            }
            let keep = |n: usize| -> Result<usize> {
                if n == 0 || n > max {
                    bail!("a continuation of {n} tokens does not fit the model's context of {max} (or is empty)");
                }
                Ok(q.context.len().min(max + 1 - n))
            };
            let keeps: Vec<usize> = q.continuations.iter().map(|c| keep(c.len())).collect::<Result<_>>()?;
            if keeps.iter().all(|&k| k == q.context.len()) {
                groups.push((&q.context, (0..q.continuations.len()).map(|ci| (qi, ci)).collect()));
            } else {
                for (ci, k) in keeps.into_iter().enumerate() {
                    groups.push((&q.context[q.context.len() - k..], vec![(qi, ci)]));
                }
            }
        }
        let mut out: Vec<Vec<f64>> = questions.iter().map(|q| vec![0.0; q.continuations.len()]).collect();
        for batch in groups.chunks(self.batch_size) {
            let mut caches: Vec<SeqCache> = vec![SeqCache::new(); batch.len()];
            let last = {
                let mut inputs: Vec<SeqInput<'_>> = batch
                    .iter()
                    .zip(caches.iter_mut())
                    .map(|((ctx, _), cache)| SeqInput { tokens: ctx, cache })
                    .collect();
                model.forward(&mut inputs, false)?
            };
            // The first token of each choice is scored from its context's last position; the
            // rest by running the choice's tokens but its last after a copy of the cache.
            let mut rest: Vec<(usize, usize, SeqCache)> = Vec::new();
            for (g, (_, members)) in batch.iter().enumerate() {
                for &(qi, ci) in members {
                    let cont = &questions[qi].continuations[ci];
                    out[qi][ci] = logprob_of(&last[g], cont[0]).0;
                    if cont.len() > 1 {
                        rest.push((qi, ci, caches[g].clone()));
                    }
                }
            }
            for chunk in rest.chunks_mut(self.batch_size * 8) {
                let rows = {
                    let mut inputs: Vec<SeqInput<'_>> = chunk
                        .iter_mut()
                        .map(|(qi, ci, cache)| {
                            let cont = &questions[*qi].continuations[*ci];
                            SeqInput { tokens: &cont[..cont.len() - 1], cache }
                        })
                        .collect();
                    model.forward(&mut inputs, true)?
                };
                let vocab = model.config().vocab_size;
                for ((qi, ci, _), logits) in chunk.iter().zip(&rows) {
                    let cont = &questions[*qi].continuations[*ci];
                    for (j, row) in logits.chunks(vocab).enumerate() {
                        out[*qi][*ci] += logprob_of(row, cont[j + 1]).0;
                    }
                }
            }
        }
        Ok(out)
    }

    fn generate(&self, requests: Vec<Request>) -> Result<Vec<String>> {
        let engine = self.engine()?;
        let mut out = Vec::with_capacity(requests.len());
        let mut it = requests.into_iter().peekable();
        while it.peek().is_some() {
            // Decoded together, one pass over the weights per step; the decode kernel is
            // batch-invariant, so a sequence's text does not depend on its neighbours.
            let batch: Vec<Request> = it.by_ref().take(self.batch_size).collect();
            out.extend(engine.generate_batch(batch, |_, _| {})?.into_iter().map(|c| c.text));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use jarip_infer::SamplingParams;
    use jarip_model::ModelConfig;

    /// A tokenizer of 300 ids and a seeded tiny model (context 32).
    fn fixture() -> (Gpt, Tokenizer) {
        let docs = ["대한민국은 민주공화국이다.", "To be, or not to be, that is the question."];
        let cfg = jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() };
        let tok = jarip_tokenizer::train(docs.iter().map(|d| d.to_string()), &cfg).unwrap();
        (Gpt::new(&ModelConfig::tiny(tok.vocab_size()), 3, &Device::Cpu).unwrap(), tok)
    }

    #[test]
    fn logprob_matches_a_hand_computed_softmax() {
        let (lp, greedy) = logprob_of(&[0.0, (2f32).ln()], 1);
        assert!((lp - (2f64 / 3.0).ln()).abs() < 1e-6);
        assert!(greedy);
        assert!(!logprob_of(&[1.0, 1.0], 1).1, "ties go to the first index");
    }

    #[test]
    fn batched_scores_equal_one_at_a_time_and_both_paths_agree() {
        let (m, tok) = fixture();
        let reqs: Vec<LlRequest> = (0..7)
            .map(|i| LlRequest {
                context: (0..(3 + 2 * i)).map(|t| (t * 7 + i) as u32 % 300).collect(),
                continuation: (0..(1 + i % 3)).map(|t| (t * 11 + 5) as u32).collect(),
            })
            .collect();
        let one = GptLm::new(&m, &tok, 1).loglikelihood(&reqs).unwrap();
        let many = GptLm::new(&m, &tok, 4).loglikelihood(&reqs).unwrap();
        for (a, b) in one.iter().zip(&many) {
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
            assert_eq!(a.is_greedy, b.is_greedy);
            assert!(a.logprob < 0.0);
        }
        // The fused loss path and the logits path agree, whatever the batch.
        for b in [1, 3] {
            let fused = GptLm::new(&m, &tok, b).logprobs(&reqs).unwrap();
            for (a, s) in fused.iter().zip(&one) {
                assert!((a - s.logprob).abs() < 1e-3 * s.logprob.abs().max(1.0), "{a} vs {s:?}");
            }
        }
        // So does the decode-layout path that quantized weights take, at f32.
        let decoded = GptLm::new(&m, &tok, 3).decode_scores(&reqs).unwrap();
        for (a, s) in decoded.iter().zip(&one) {
            assert!((a.logprob - s.logprob).abs() < 1e-3, "{a:?} vs {s:?}");
            assert_eq!(a.is_greedy, s.is_greedy);
        }
        // Q8_0 weights: the same bits at any batch size, near the f32 scores.
        let q8 = |b| GptLm::new(&m, &tok, b).with_weights(WeightFormat::Q8_0).loglikelihood(&reqs).unwrap();
        let (q1, q4) = (q8(1), q8(4));
        assert_eq!(q1, q4);
        for (q, f) in q1.iter().zip(&one) {
            assert!((q.logprob - f.logprob).abs() < 0.05 * f.logprob.abs().max(1.0), "{q:?} vs {f:?}");
        }
    }

    #[test]
    fn shared_context_scores_match_separate_requests_at_any_batch() {
        let (m, tok) = fixture();
        let questions: Vec<SharedContext> = (0..5)
            .map(|i| SharedContext {
                context: (0..(2 + 3 * i)).map(|t| (t * 13 + i) as u32 % 300).collect(),
                continuations: (0..(2 + i % 3))
                    .map(|c| (0..(1 + c)).map(|t| (t * 17 + c * 5 + 1) as u32).collect())
                    .collect(),
            })
            .collect();
        let shared = GptLm::new(&m, &tok, 1).choice_logprobs(&questions).unwrap();
        // The decode kernel is batch-invariant: bit-identical at any batch size.
        assert_eq!(shared, GptLm::new(&m, &tok, 3).choice_logprobs(&questions).unwrap());
        // And it agrees with scoring every (context, choice) on its own through the training path.
        let lm = GptLm::new(&m, &tok, 4);
        for (q, s) in questions.iter().zip(&shared) {
            for (c, got) in q.continuations.iter().zip(s) {
                let want =
                    lm.logprobs(&[LlRequest { context: q.context.clone(), continuation: c.clone() }]).unwrap()[0];
                assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
            }
        }
        // Near the end of the context window each choice is truncated as the harness would.
        let long = SharedContext {
            context: (0..40).map(|t| t as u32 + 1).collect(),
            continuations: vec![vec![5], vec![6, 7, 8]],
        };
        let got = lm.choice_logprobs(std::slice::from_ref(&long)).unwrap();
        let want = lm
            .logprobs(
                &long
                    .continuations
                    .iter()
                    .map(|c| LlRequest { context: long.context.clone(), continuation: c.clone() })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        for (g, w) in got[0].iter().zip(&want) {
            assert!((g - w).abs() < 1e-3 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn long_requests_are_left_truncated() {
        let (m, tok) = fixture();
        let lm = GptLm::new(&m, &tok, 2);
        let long = LlRequest { context: (0..100).map(|t| t % 300).collect(), continuation: vec![1, 2] };
        let short = LlRequest { context: long.context[long.context.len() - 31..].to_vec(), continuation: vec![1, 2] };
        let s = lm.loglikelihood(&[long.clone(), short.clone()]).unwrap();
        assert!((s[0].logprob - s[1].logprob).abs() < 1e-5);
        let f = lm.logprobs(&[long, short]).unwrap();
        assert!((f[0] - f[1]).abs() < 1e-5 && (f[0] - s[0].logprob).abs() < 1e-3);
        let too_long = LlRequest { context: vec![1], continuation: vec![1; 40] };
        assert!(lm.loglikelihood(&[too_long]).unwrap_err().to_string().contains("does not fit"));
    }

    #[test]
    fn generation_is_reproducible_and_independent_of_the_batch() {
        let (m, tok) = fixture();
        let reqs = |n: usize| -> Vec<Request> {
            (0..n)
                .map(|i| {
                    let mut r = Request::new(tok.encode(["대한민국은", "To be"][i % 2]), 6, SamplingParams::greedy());
                    r.truncate_prompt = true;
                    r
                })
                .collect()
        };
        let one = GptLm::new(&m, &tok, 1).generate(reqs(3)).unwrap();
        assert_eq!(one, GptLm::new(&m, &tok, 1).generate(reqs(3)).unwrap());
        assert_eq!(one, GptLm::new(&m, &tok, 8).generate(reqs(3)).unwrap());
        assert_eq!(one[0], one[2]);
    }
}
