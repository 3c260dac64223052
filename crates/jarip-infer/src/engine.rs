//! The inference engine: requests in, streamed text out.
//!
//! A [`Batcher`] holds the sequences being generated. Each [`Batcher::step`] is one forward
//! pass over the weights in which newly admitted sequences feed (a chunk of) their prompt and
//! every other sequence feeds its last sampled token; sequences can be admitted and cancelled
//! between steps. That is continuous batching: the server runs one batcher, `jarip generate`
//! and `jarip chat` run one with a single sequence.
//!
//! Each sequence turns tokens into text through a UTF-8 buffer (a character split across
//! tokens is held until complete) and a [`StopMatcher`] (stop strings are never returned).
//! Its sampler draws only tokens that keep the bytes valid UTF-8 ([`Utf8Constraint`]) unless
//! the request is `raw`; bytes of a character still unfinished when the sequence reaches its
//! length limit are dropped, so no U+FFFD ever comes from the model.

use crate::decode::{DecodeModel, KvFormat, SeqCache, SeqInput, WeightFormat};
use crate::prefix_cache::PrefixCache;
use crate::sampling::{Sampler, SamplingParams, TokenLogprob};
use crate::stop::{StopMatcher, StopOutcome};
use anyhow::{bail, Result};
use jarip_model::{Gpt, Utf8Constraint};
use jarip_tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// At most this many new tokens (generation also ends at the context's end).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends generation; it is not returned.
    pub stop: Vec<String>,
    /// Tokens that end generation (e.g. `<|end|>`); they are not returned.
    pub stop_tokens: Vec<u32>,
    /// Report the log-probability of each chosen token (and `sampling.top_logprobs` alternatives).
    pub logprobs: bool,
    /// A prompt longer than the context is an error unless this is set: then only its last
    /// tokens are kept, leaving room for `max_tokens` (or at least one).
    pub truncate_prompt: bool,
    /// Draw from the model's whole distribution, even tokens that make the bytes invalid UTF-8
    /// (for comparisons with engines that do not constrain their output).
    pub raw: bool,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling,
            stop: vec![],
            stop_tokens: vec![],
            logprobs: false,
            truncate_prompt: false,
            raw: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// Cancelled by the caller.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// New text (possibly empty while a character or a possible stop string is incomplete).
    pub text: String,
    /// The token sampled this step, unless it was a stop token.
    pub token: Option<u32>,
    pub logprob: Option<TokenLogprob>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub delta: Delta,
    /// Set on the sequence's last event.
    pub finished: Option<FinishReason>,
}

/// A whole generation.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
    /// Tokens sampled, including a final stop token.
    pub completion_tokens: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// Bytes of generated tokens → text, never splitting a UTF-8 character.
#[derive(Default)]
struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).expect("checked prefix"));
                    match e.error_len() {
                        // An invalid sequence can never complete: replace it and go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                        // An incomplete character at the end: wait for its next bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// The end of the text: bytes still waiting for the rest of their character are dropped
    /// (`push` has already turned every invalid sequence into U+FFFD).
    fn finish(&mut self) {
        self.pending.clear();
    }
}

struct Active {
    id: u64,
    req: Request,
    cache: SeqCache,
    /// The tokens whose keys and values `cache` holds.
    fed: Vec<u32>,
    /// Tokens not yet fed to the model (the prompt, then each sampled token).
    pending: Vec<u32>,
    sampler: Sampler,
    text: Utf8Buffer,
    stop: StopMatcher,
    generated: usize,
}

/// Sequences being generated together (continuous batching).
pub struct Batcher {
    model: Arc<DecodeModel>,
    tokenizer: Arc<Tokenizer>,
    active: Vec<Active>,
    max_batch: usize,
    /// Most prompt tokens one sequence feeds per step, so a long prompt does not stall the
    /// decoding of the others (chunked prefill).
    prefill_chunk: usize,
    /// Shared by every batcher of an engine (see [`Engine::with_prefix_cache`]).
    prefix: Option<Arc<Mutex<PrefixCache>>>,
    /// Which tokens keep each sequence's bytes valid UTF-8.
    utf8: Arc<Utf8Constraint>,
}

impl Batcher {
    pub fn new(model: Arc<DecodeModel>, tokenizer: Arc<Tokenizer>, max_batch: usize) -> Self {
        let utf8 = Arc::new(utf8_constraint(&tokenizer));
        Self::with_constraint(model, tokenizer, max_batch, utf8)
    }

    fn with_constraint(
        model: Arc<DecodeModel>,
        tokenizer: Arc<Tokenizer>,
        max_batch: usize,
        utf8: Arc<Utf8Constraint>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            active: Vec::new(),
            max_batch: max_batch.max(1),
            prefill_chunk: 256,
            prefix: None,
            utf8,
        }
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.active.len() < self.max_batch
    }

    pub fn context(&self) -> usize {
        self.model.config().max_seq_len
    }

    /// Checks a request without admitting it; returns the prompt as it will be fed.
    pub fn check(&self, req: &Request) -> Result<Vec<u32>> {
        check_request(req, self.context(), self.model.config().vocab_size)
    }

    /// Adds a sequence; it starts in the next step. Returns how many of its prompt tokens come
    /// from the prefix cache (they are not computed again).
    pub fn admit(&mut self, id: u64, req: Request) -> Result<usize> {
        if !self.has_room() {
            bail!("the batch is full ({} sequences)", self.max_batch);
        }
        let mut prompt = self.check(&req)?;
        let mut sampler = Sampler::new(req.sampling.clone(), &prompt);
        if !req.raw {
            sampler = sampler.with_utf8(self.utf8.clone());
        }
        let stop = StopMatcher::new(&req.stop);
        let (cache, reused) = self.prefix.as_ref().and_then(|p| lock(p).lookup(&prompt)).unwrap_or_default();
        let fed: Vec<u32> = prompt.drain(..reused).collect();
        self.active.push(Active {
            id,
            req,
            cache,
            fed,
            pending: prompt,
            sampler,
            text: Utf8Buffer::default(),
            stop,
            generated: 0,
        });
        Ok(reused)
    }

    /// Removes a sequence (e.g. its client went away). Returns whether it was active.
    pub fn cancel(&mut self, id: u64) -> bool {
        let Some(i) = self.active.iter().position(|a| a.id == id) else { return false };
        let a = self.active.remove(i);
        self.keep_prefix(a);
        true
    }

    fn keep_prefix(&mut self, a: Active) {
        if let Some(p) = &self.prefix {
            lock(p).insert(a.fed, a.cache);
        }
    }

    /// One forward pass for every active sequence; returns one event per sequence that sampled
    /// a token (sequences still prefilling a long prompt produce none). Finished sequences leave.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        if self.active.is_empty() {
            return Ok(vec![]);
        }
        let chunk = self.prefill_chunk;
        let feeds: Vec<Vec<u32>> = self
            .active
            .iter_mut()
            .map(|a| {
                let n = a.pending.len().min(chunk);
                let feed: Vec<u32> = a.pending.drain(..n).collect();
                a.fed.extend_from_slice(&feed);
                feed
            })
            .collect();
        let logits = {
            let mut inputs: Vec<SeqInput<'_>> =
                self.active.iter_mut().zip(&feeds).map(|(a, f)| SeqInput { tokens: f, cache: &mut a.cache }).collect();
            self.model.forward(&mut inputs, false)?
        };
        let ctx = self.context();
        // Each sequence samples with its own RNG, so sampling in parallel changes nothing but time
        // (a full-vocabulary softmax per sequence is not small next to a batched forward).
        let drawn: Vec<Option<TokenLogprob>> = self
            .active
            .par_iter_mut()
            .zip(&logits)
            .map(|(a, row)| a.pending.is_empty().then(|| a.sampler.sample(row)))
            .collect();
        let mut events = Vec::new();
        for (a, lp) in self.active.iter_mut().zip(drawn) {
            let Some(lp) = lp else {
                continue; // still prefilling
            };
            a.generated += 1;
            let token = lp.token;
            let mut delta = Delta { logprob: a.req.logprobs.then(|| lp.clone()), ..Default::default() };
            let mut finished = None;
            if a.req.stop_tokens.contains(&token) {
                finished = Some(FinishReason::Stop);
            } else {
                delta.token = Some(token);
                let piece = a.text.push(self.tokenizer.id_bytes(token).unwrap_or(b"\xEF\xBF\xBD"));
                match a.stop.push(&piece) {
                    StopOutcome::Continue(s) => delta.text = s,
                    StopOutcome::Stopped(s) => {
                        delta.text = s;
                        finished = Some(FinishReason::Stop);
                    }
                }
                if finished.is_none() && (a.generated >= a.req.max_tokens || a.cache.len() + 1 >= ctx) {
                    finished = Some(FinishReason::Length);
                }
                if finished.is_none() {
                    a.pending.push(token);
                }
            }
            if finished == Some(FinishReason::Length) {
                // An unfinished character is dropped; text held back for a possible stop string
                // is text when none completed.
                a.text.finish();
                delta.text.push_str(&a.stop.finish());
            }
            events.push(Event { id: a.id, delta, finished });
        }
        let done: Vec<u64> = events.iter().filter(|e| e.finished.is_some()).map(|e| e.id).collect();
        for id in done {
            if let Some(i) = self.active.iter().position(|a| a.id == id) {
                let a = self.active.remove(i);
                self.keep_prefix(a);
            }
        }
        Ok(events)
    }
}

fn lock(p: &Mutex<PrefixCache>) -> std::sync::MutexGuard<'_, PrefixCache> {
    // The cache holds only finished data; a panic elsewhere leaves it consistent.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_request(req: &Request, ctx: usize, vocab: usize) -> Result<Vec<u32>> {
    if req.prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if req.max_tokens == 0 {
        bail!("max_tokens must be at least 1");
    }
    if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!("prompt token {t} is outside the vocabulary of {vocab}");
    }
    req.sampling.validate().map_err(anyhow::Error::msg)?;
    if req.prompt.len() < ctx {
        return Ok(req.prompt.clone());
    }
    if !req.truncate_prompt {
        bail!(
            "the prompt has {} tokens but the model's context is {ctx} tokens (leave room for at least one new token, or ask for truncation)",
            req.prompt.len()
        );
    }
    let keep = ctx.saturating_sub(req.max_tokens.min(ctx / 2)).max(1);
    Ok(req.prompt[req.prompt.len() - keep..].to_vec())
}

/// The UTF-8 constraint of a tokenizer's vocabulary (each id's bytes).
pub fn utf8_constraint(tok: &Tokenizer) -> Utf8Constraint {
    Utf8Constraint::new(tok.vocab_size(), |t| tok.id_bytes(t))
}

/// A model ready to generate: weights laid out for decoding, and the tokenizer.
#[derive(Clone)]
pub struct Engine {
    model: Arc<DecodeModel>,
    tokenizer: Arc<Tokenizer>,
    prefix: Option<Arc<Mutex<PrefixCache>>>,
    utf8: Arc<Utf8Constraint>,
}

impl Engine {
    pub fn new(model: &Gpt, tokenizer: Tokenizer) -> Result<Self> {
        if !tokenizer.fits_vocab(model.config().vocab_size) {
            bail!(
                "the tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            );
        }
        Self::with_format(model, tokenizer, WeightFormat::F32, KvFormat::F32)
    }

    /// An engine whose weight matrices are held in `format` (Q8_0: fewer bytes per token) and
    /// whose sequences cache keys and values as `kv` (f16: half the cache memory and traffic).
    pub fn with_format(model: &Gpt, tokenizer: Tokenizer, format: WeightFormat, kv: KvFormat) -> Result<Self> {
        let decode = DecodeModel::with_format(model, format)?.with_kv_cache(kv);
        let utf8 = Arc::new(utf8_constraint(&tokenizer));
        Ok(Self { model: Arc::new(decode), tokenizer: Arc::new(tokenizer), prefix: None, utf8 })
    }

    /// The same engine, keeping finished sequences' KV caches (up to `bytes`, least recently
    /// used evicted first) for later prompts that start with the same tokens: a conversation's
    /// next turn, a shared system prompt. Outputs are unchanged, bit for bit; 0 turns it off.
    pub fn with_prefix_cache(mut self, bytes: usize) -> Self {
        self.prefix = (bytes > 0).then(|| Arc::new(Mutex::new(PrefixCache::new(bytes))));
        self
    }

    /// Bytes of keys and values the prefix cache holds.
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| lock(p).bytes())
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &DecodeModel {
        &self.model
    }

    pub fn batcher(&self, max_batch: usize) -> Batcher {
        let mut b = Batcher::with_constraint(self.model.clone(), self.tokenizer.clone(), max_batch, self.utf8.clone());
        b.prefix = self.prefix.clone();
        b
    }

    /// Tokens that end an assistant's turn ([`jarip_tokenizer::Tokenizer::chat_stop_ids`]).
    pub fn chat_stop_tokens(&self) -> Vec<u32> {
        self.tokenizer.chat_stop_ids()
    }

    /// One request, its text handed to `on_text` as it is produced.
    pub fn generate(&self, req: Request, mut on_text: impl FnMut(&str)) -> Result<Completion> {
        let mut out = self.generate_batch(vec![req], |_, s| on_text(s))?;
        Ok(out.remove(0))
    }

    /// Several requests decoded together; `on_text(index, text)` streams each one's text.
    pub fn generate_batch(&self, reqs: Vec<Request>, mut on_text: impl FnMut(usize, &str)) -> Result<Vec<Completion>> {
        let mut b = self.batcher(reqs.len());
        let mut out: Vec<Completion> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.into_iter().enumerate() {
            let prompt_tokens = b.check(&r)?.len();
            out.push(Completion {
                text: String::new(),
                tokens: vec![],
                finish_reason: FinishReason::Length,
                prompt_tokens,
                cached_tokens: 0,
                completion_tokens: 0,
                logprobs: vec![],
            });
            out[i].cached_tokens = b.admit(i as u64, r)?;
        }
        while !b.is_empty() {
            for e in b.step()? {
                let c = &mut out[e.id as usize];
                c.completion_tokens += 1;
                c.text.push_str(&e.delta.text);
                c.tokens.extend(e.delta.token);
                c.logprobs.extend(e.delta.logprob);
                if !e.delta.text.is_empty() {
                    on_text(e.id as usize, &e.delta.text);
                }
                if let Some(f) = e.finished {
                    c.finish_reason = f;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use jarip_model::ModelConfig;

    fn engine() -> Engine {
        let docs =
            ["안녕하세요 반갑습니다. 오늘은 날씨가 좋네요.", "Hello there, general Kenobi. The weather is fine."];
        let cfg = jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() };
        let tok = jarip_tokenizer::train(docs.iter().map(|d| d.to_string()), &cfg).unwrap();
        let mut mc = ModelConfig::tiny(tok.vocab_size());
        mc.max_seq_len = 48;
        let model = Gpt::new(&mc, 3, &Device::Cpu).unwrap();
        Engine::new(&model, tok).unwrap()
    }

    fn sampled(seed: u64) -> SamplingParams {
        SamplingParams { temperature: 1.0, seed: Some(seed), ..Default::default() }
    }

    #[test]
    fn same_seed_same_text_and_batching_does_not_change_it() {
        let e = engine();
        let prompt = e.tokenizer().encode("안녕");
        let one = e.generate(Request::new(prompt.clone(), 20, sampled(5)), |_| {}).unwrap();
        let again = e.generate(Request::new(prompt.clone(), 20, sampled(5)), |_| {}).unwrap();
        assert_eq!(one.tokens, again.tokens);
        assert_eq!(one.text, again.text);
        let other = e.tokenizer().encode("Hello there");
        let batch = e
            .generate_batch(vec![Request::new(other, 15, sampled(9)), Request::new(prompt, 20, sampled(5))], |_, _| {})
            .unwrap();
        assert_eq!(batch[1].tokens, one.tokens, "a neighbour in the batch changed the sequence");
        let different = e.generate(Request::new(e.tokenizer().encode("안녕"), 20, sampled(6)), |_| {}).unwrap();
        assert_ne!(different.tokens, one.tokens);
    }

    /// A second turn that resends the first (prompt + answer + more) reuses its cache and
    /// samples exactly what an engine without the cache does, log-probabilities included.
    #[test]
    fn prefix_cache_reuses_a_turn_without_changing_the_output() {
        let plain = engine();
        let cached = engine().with_prefix_cache(1 << 20);
        let first = plain.tokenizer().encode("안녕하세요 반갑습니다.");
        let req = |p: Vec<u32>| {
            let mut r = Request::new(p, 12, sampled(4));
            r.logprobs = true;
            r
        };
        let a = cached.generate(req(first.clone()), |_| {}).unwrap();
        assert_eq!(a.cached_tokens, 0);
        assert_eq!(a.tokens, plain.generate(req(first.clone()), |_| {}).unwrap().tokens);
        assert!(cached.prefix_cache_bytes() > 0);
        let mut second = first.clone();
        second.extend(&a.tokens);
        second.extend(plain.tokenizer().encode(" Hello there"));
        let (hit, miss) =
            (cached.generate(req(second.clone()), |_| {}).unwrap(), plain.generate(req(second), |_| {}).unwrap());
        // Everything the first sequence fed: its prompt and its sampled tokens but the last one
        // when it stopped at the length limit (that one was never fed).
        let unfed = usize::from(a.finish_reason == FinishReason::Length);
        assert_eq!(hit.cached_tokens, first.len() + a.tokens.len() - unfed);
        assert_eq!(miss.cached_tokens, 0);
        assert_eq!((&hit.tokens, &hit.text), (&miss.tokens, &miss.text));
        let lp = |c: &Completion| c.logprobs.iter().map(|l| l.logprob.to_bits()).collect::<Vec<_>>();
        assert_eq!(lp(&hit), lp(&miss), "log-probabilities bit for bit");
    }

    #[test]
    fn streamed_text_equals_decoded_tokens_and_never_splits_characters() {
        let e = engine();
        let mut pieces = Vec::new();
        let c = e
            .generate(Request::new(e.tokenizer().encode("오늘은"), 30, sampled(1)), |s| pieces.push(s.to_string()))
            .unwrap();
        assert_eq!(pieces.concat(), c.text);
        let bytes = e.tokenizer().decode_bytes(&c.tokens);
        assert!(c.text.len() <= bytes.len() && bytes.starts_with(c.text.as_bytes()));
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.completion_tokens, 30);
    }

    #[test]
    fn utf8_buffer_holds_incomplete_characters() {
        let mut b = Utf8Buffer::default();
        let bytes = "한".as_bytes();
        assert_eq!(b.push(&bytes[..1]), "");
        assert_eq!(b.push(&bytes[1..2]), "");
        assert_eq!(b.push(&bytes[2..]), "한");
        assert_eq!(b.push(b"a\xFFb"), "a\u{FFFD}b");
        assert_eq!(b.push(&bytes[..2]), "");
        b.finish();
        assert!(b.pending.is_empty());
    }

    /// A random model draws byte tokens freely: unconstrained, its text holds U+FFFD; through
    /// the engine (constrained) never, in any sampling mode, and the text is exactly the whole
    /// characters of the tokens' bytes (an unfinished last character dropped at the length limit).
    #[test]
    fn generated_text_is_always_valid_utf8_unless_raw() {
        let e = engine();
        let prompt = e.tokenizer().encode("안녕");
        let modes = [
            SamplingParams { temperature: 1.5, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 20, ..Default::default() },
            SamplingParams { temperature: 1.0, top_p: 0.9, min_p: 0.01, ..Default::default() },
        ];
        let mut raw_broke = false;
        for seed in 0..12u64 {
            for (m, params) in modes.iter().enumerate() {
                let mut r = Request::new(prompt.clone(), 25, SamplingParams { seed: Some(seed), ..params.clone() });
                r.logprobs = true;
                let c = e.generate(r.clone(), |_| {}).unwrap();
                assert!(!c.text.contains('\u{FFFD}'), "seed {seed} mode {m}: {:?}", c.text);
                let bytes = e.tokenizer().decode_bytes(&c.tokens);
                let whole = match std::str::from_utf8(&bytes) {
                    Ok(s) => s,
                    Err(err) => {
                        assert!(err.error_len().is_none(), "seed {seed} mode {m}: invalid bytes {bytes:?}");
                        std::str::from_utf8(&bytes[..err.valid_up_to()]).unwrap()
                    }
                };
                assert_eq!(c.text, whole);
                assert!(c.logprobs.iter().all(|l| l.logprob.is_finite()));
                r.raw = true;
                raw_broke |= e.generate(r, |_| {}).unwrap().text.contains('\u{FFFD}');
            }
        }
        assert!(raw_broke, "the random model never broke UTF-8 unconstrained: the test proves nothing");
    }

    #[test]
    fn stop_strings_end_generation_and_are_not_returned() {
        let e = engine();
        let prompt = e.tokenizer().encode("Hello");
        let free = e.generate(Request::new(prompt.clone(), 30, SamplingParams::greedy()), |_| {}).unwrap();
        // Pick a stop string from the middle of the unconstrained output.
        let chars: Vec<char> = free.text.chars().collect();
        assert!(chars.len() > 6, "{:?}", free.text);
        let stop: String = chars[3..5].iter().collect();
        let mut r = Request::new(prompt, 30, SamplingParams::greedy());
        r.stop = vec![stop.clone()];
        let c = e.generate(r, |_| {}).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert!(!c.text.contains(&stop));
        assert_eq!(c.text, free.text[..free.text.find(&stop).unwrap()]);
    }

    #[test]
    fn stop_tokens_end_generation_and_are_not_returned() {
        let e = engine();
        let prompt = e.tokenizer().encode("Hello");
        let free = e.generate(Request::new(prompt.clone(), 10, SamplingParams::greedy()), |_| {}).unwrap();
        let mut r = Request::new(prompt, 10, SamplingParams::greedy());
        r.stop_tokens = vec![free.tokens[4]];
        let c = e.generate(r, |_| {}).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        let first = free.tokens.iter().position(|&t| t == free.tokens[4]).unwrap();
        assert_eq!(c.tokens, free.tokens[..first]);
        assert_eq!(c.completion_tokens, first + 1);
    }

    #[test]
    fn long_prompts_are_refused_unless_truncation_is_asked_and_context_ends_generation() {
        let e = engine();
        let long: Vec<u32> = (0..60).map(|i| i % 200).collect();
        let err = e.generate(Request::new(long.clone(), 5, SamplingParams::greedy()), |_| {}).unwrap_err();
        assert!(err.to_string().contains("context is 48 tokens"), "{err}");
        let mut r = Request::new(long, 5, SamplingParams::greedy());
        r.truncate_prompt = true;
        let c = e.generate(r, |_| {}).unwrap();
        assert_eq!(c.prompt_tokens, 43);
        assert_eq!(c.completion_tokens, 5);
        // max_tokens beyond the context: ends at the context with "length".
        let c = e.generate(Request::new(vec![1, 2, 3], 500, SamplingParams::greedy()), |_| {}).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.prompt_tokens + c.completion_tokens, 48);
    }

    #[test]
    fn logprobs_are_reported_per_token() {
        let e = engine();
        let mut r = Request::new(e.tokenizer().encode("Hello"), 6, SamplingParams { top_logprobs: 3, ..sampled(2) });
        r.logprobs = true;
        let c = e.generate(r, |_| {}).unwrap();
        assert_eq!(c.logprobs.len(), 6);
        for (lp, t) in c.logprobs.iter().zip(&c.tokens) {
            assert_eq!(lp.token, *t);
            assert!(lp.logprob <= 0.0 && lp.top.len() == 3);
            assert!(lp.top[0].1 >= lp.top[1].1 && lp.top[0].1 >= lp.logprob);
        }
    }

    #[test]
    fn cancelled_sequences_leave_the_batch() {
        let e = engine();
        let mut b = e.batcher(4);
        b.admit(1, Request::new(vec![5, 6], 100, sampled(1))).unwrap();
        b.admit(2, Request::new(vec![7], 100, sampled(1))).unwrap();
        assert_eq!(b.step().unwrap().len(), 2);
        assert!(b.cancel(1));
        let ev = b.step().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].id, 2);
        assert!(!b.cancel(1));
    }
}
