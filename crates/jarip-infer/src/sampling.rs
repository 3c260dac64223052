//! Next-token sampling from one row of logits.
//!
//! Order of operations (the one llama.cpp and vLLM use): penalties on the raw logits, then
//! temperature, then the truncations (top-k, top-p, min-p) on the tempered distribution, then a
//! draw. Temperature 0 is greedy. Log-probabilities are reported from the distribution after
//! penalties and temperature but before truncation, as OpenAI's API reports them.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top token's; 0 disables.
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens already seen; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// Also report the log-probabilities of this many most likely tokens.
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Default::default() }
    }

    /// Checks ranges; the message names the parameter, as an API error must.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, name: &str, want: &str| if ok { Ok(()) } else { Err(format!("{name} must be {want}")) };
        check(self.temperature.is_finite() && self.temperature >= 0.0, "temperature", "≥ 0")?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "top_p", "in (0, 1]")?;
        check((0.0..=1.0).contains(&self.min_p), "min_p", "in [0, 1]")?;
        check(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0, "repetition_penalty", "> 0")?;
        check((-2.0..=2.0).contains(&self.presence_penalty), "presence_penalty", "in [-2, 2]")?;
        check((-2.0..=2.0).contains(&self.frequency_penalty), "frequency_penalty", "in [-2, 2]")?;
        check(self.top_logprobs <= 20, "top_logprobs", "at most 20")?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The most likely alternatives, most likely first (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

/// Sampling state of one sequence: its parameters, its own RNG and the counts of the tokens it
/// has seen (for the penalties).
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated token (presence and frequency penalties).
    generated: HashMap<u32, u32>,
    /// Tokens of the prompt and the generation (repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::thread_rng().gen());
        let seen = prompt.iter().map(|&t| (t, ())).collect();
        Self { params, rng: ChaCha8Rng::seed_from_u64(seed), generated: HashMap::new(), seen }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token produced by this sequence (called by [`Sampler::sample`]; exposed for
    /// callers that force a token).
    pub fn observe(&mut self, token: u32) {
        *self.generated.entry(token).or_insert(0) += 1;
        self.seen.insert(token, ());
    }

    /// Applies the penalties to `logits` in place.
    pub fn penalize(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Picks the next token from one row of logits and records it.
    pub fn sample(&mut self, logits: &[f32]) -> TokenLogprob {
        let mut l = logits.to_vec();
        self.penalize(&mut l);
        let t = if self.params.temperature > 0.0 { self.params.temperature } else { 1.0 };
        for x in l.iter_mut() {
            *x /= t;
        }
        let logprobs = log_softmax(&l);
        let token = if self.params.temperature == 0.0 { argmax(&l) } else { self.draw(&logprobs) };
        self.observe(token);
        let top = if self.params.top_logprobs > 0 { top_n(&logprobs, self.params.top_logprobs) } else { vec![] };
        TokenLogprob { token, logprob: logprobs[token as usize], top }
    }

    /// Draws from the tempered distribution after top-k, top-p and min-p truncation.
    fn draw(&mut self, logprobs: &[f32]) -> u32 {
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p == 0.0 {
            // No truncation: one pass in id order, no sort over the vocabulary.
            let mut u = self.rng.gen::<f32>();
            for (i, lp) in logprobs.iter().enumerate() {
                u -= lp.exp();
                if u <= 0.0 {
                    return i as u32;
                }
            }
            return argmax(logprobs);
        }
        let mut cand: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &lp)| (i as u32, lp.exp())).collect();
        // Sort by probability, ties by id, so the draw is a function of the seed alone.
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            let keep = cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            cand.truncate(keep);
        }
        if p.top_p < 1.0 {
            let total: f32 = cand.iter().map(|c| c.1).sum();
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut u = self.rng.gen::<f32>() * total;
        for c in &cand {
            u -= c.1;
            if u <= 0.0 {
                return c.0;
            }
        }
        cand.last().unwrap().0
    }
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
    x.iter().map(|v| v - lse).collect()
}

fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n.saturating_sub(1), |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.truncate(n);
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(params: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        let mut s = Sampler::new(SamplingParams { seed: Some(7), ..params }, &[]);
        for _ in 0..n {
            let t = s.sample(logits).token as usize;
            counts[t] += 1;
            s.generated.clear(); // keep draws independent: penalties are tested separately
        }
        counts
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let mut s = Sampler::new(SamplingParams { top_logprobs: 2, ..SamplingParams::greedy() }, &[]);
        let r = s.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(r.token, 1);
        let expect = 2.0 - (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((r.logprob - expect).abs() < 1e-6);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = freq(SamplingParams::default(), &logits, 200);
        let b = freq(SamplingParams::default(), &logits, 200);
        assert_eq!(a, b);
    }

    #[test]
    fn truncations_keep_only_the_allowed_tokens() {
        let logits = [3.0, 2.0, 1.0, 0.0, -1.0];
        let k = freq(SamplingParams { top_k: 2, ..Default::default() }, &logits, 500);
        assert!(k[2..].iter().all(|&c| c == 0) && k[0] > 0 && k[1] > 0, "{k:?}");
        // p(0) ≈ 0.64, p(1) ≈ 0.24: top_p 0.7 keeps exactly the first two.
        let p = freq(SamplingParams { top_p: 0.7, ..Default::default() }, &logits, 500);
        assert!(p[2..].iter().all(|&c| c == 0) && p[1] > 0, "{p:?}");
        // min_p 0.3: p(1)/p(0) = e^-1 ≈ 0.37 stays, p(2)/p(0) = e^-2 ≈ 0.14 goes.
        let m = freq(SamplingParams { min_p: 0.3, ..Default::default() }, &logits, 500);
        assert!(m[2..].iter().all(|&c| c == 0) && m[1] > 0, "{m:?}");
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [1.0, 0.0];
        let cold = freq(SamplingParams { temperature: 0.2, ..Default::default() }, &logits, 1000);
        let hot = freq(SamplingParams { temperature: 5.0, ..Default::default() }, &logits, 1000);
        assert!(cold[0] > 950, "{cold:?}");
        assert!(hot[0] < 650 && hot[0] > 450, "{hot:?}");
    }

    #[test]
    fn penalties_change_logits_as_specified() {
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.5,
                frequency_penalty: 0.25,
                repetition_penalty: 2.0,
                ..Default::default()
            },
            &[3],
        );
        s.observe(1);
        s.observe(1);
        s.observe(2);
        let mut l = vec![1.0, 1.0, -1.0, 4.0, 1.0];
        s.penalize(&mut l);
        // token 1: seen → 1/2, then presence 0.5 and frequency 2×0.25 → 0.5 − 1.0
        // token 2: seen, negative → −2, then 0.5 + 0.25 → −2.75; token 3: prompt only → 2.
        assert_eq!(l, vec![1.0, -0.5, -2.75, 2.0, 1.0]);
    }

    #[test]
    fn validation_names_the_parameter() {
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err().contains("top_p"));
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }
            .validate()
            .unwrap_err()
            .contains("temperature"));
        SamplingParams::default().validate().unwrap();
    }
}
