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
        // One exponential per token: unnormalised probabilities, their sum gives the log-sum-exp.
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f32> = l.iter().map(|v| (v - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let lse = max + total.ln();
        let token = if self.params.temperature == 0.0 { argmax(&l) } else { self.draw(&probs, total) };
        self.observe(token);
        let top = if self.params.top_logprobs > 0 {
            largest(&l, self.params.top_logprobs, true).into_iter().map(|(i, v)| (i, v - lse)).collect()
        } else {
            vec![]
        };
        TokenLogprob { token, logprob: l[token as usize] - lse, top }
    }

    /// Draws from the unnormalised probabilities `probs` (summing to `total`) after top-k, top-p
    /// and min-p truncation.
    fn draw(&mut self, probs: &[f32], total: f32) -> u32 {
        let p = &self.params;
        let (cand, mass) = if p.top_k == 0 && p.top_p >= 1.0 && p.min_p == 0.0 {
            // No truncation: one pass in id order, no sort over the vocabulary.
            let mut u = self.rng.gen::<f32>() * total;
            for (i, &q) in probs.iter().enumerate() {
                u -= q;
                if u <= 0.0 {
                    return i as u32;
                }
            }
            return argmax(probs);
        } else {
            truncate(p, probs, total)
        };
        let mut u = self.rng.gen::<f32>() * mass;
        for c in &cand {
            u -= c.1;
            if u <= 0.0 {
                return c.0;
            }
        }
        cand.last().expect("truncation keeps at least one token").0
    }
}

/// The tokens top-k, min-p and top-p keep (in that order), most likely first with ties by id, and
/// their total. Truncation keeps a prefix of the sorted vocabulary, so only the largest few are
/// sorted, and more only when the kept prefix might be longer than those (a flat distribution).
fn truncate(p: &SamplingParams, probs: &[f32], total: f32) -> (Vec<(u32, f32)>, f32) {
    let v = probs.len();
    let k = if p.top_k > 0 { p.top_k.min(v) } else { v };
    // Mass of the top-k set, the denominator of top-p when min-p removes nothing.
    let mass_k = if k == v { total } else { mass(&largest(probs, k, false)) };
    let mut head = k.min(512);
    loop {
        let cand = largest(probs, head, true);
        let complete = head == k;
        // min-p keeps the prefix at or above a fraction of the top token.
        let (n, mass) = if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            let n = cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            if n == head && !complete {
                head = (head * 4).min(k);
                continue;
            }
            (n, if n == k { mass_k } else { mass(&cand[..n]) })
        } else {
            (k, mass_k)
        };
        let mut keep = n;
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, c) in cand.iter().take(n).enumerate() {
                acc += c.1 / mass;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if keep > head {
            head = (head * 4).min(k);
            continue;
        }
        let mut cand = cand;
        cand.truncate(keep.max(1));
        let kept = cand.iter().map(|c| c.1).sum();
        return (cand, kept);
    }
}

/// Total of a set of candidates, summed in id order (as the whole vocabulary's total is), so
/// that the top-p cut does not depend on how the set was found.
fn mass(set: &[(u32, f32)]) -> f32 {
    let mut by_id = set.to_vec();
    by_id.sort_unstable_by_key(|c| c.0);
    by_id.iter().map(|c| c.1).sum()
}

/// The `n` largest `(id, value)` pairs, in decreasing value with ties by id when `sorted`.
fn largest(x: &[f32], n: usize, sorted: bool) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut idx: Vec<(u32, f32)> = x.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    let n = n.min(idx.len());
    if n < idx.len() && n > 0 {
        idx.select_nth_unstable_by(n - 1, order);
    }
    idx.truncate(n);
    if sorted {
        idx.sort_unstable_by(order);
    }
    idx
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

    /// Truncation by sorting the whole vocabulary, the definition `truncate` must agree with.
    fn truncate_by_full_sort(p: &SamplingParams, probs: &[f32]) -> Vec<u32> {
        let mut cand = largest(probs, probs.len(), true);
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            let keep = cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            cand.truncate(keep);
        }
        if p.top_p < 1.0 {
            let total = mass(&cand);
            let (mut acc, mut keep) = (0.0, cand.len());
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        cand.iter().map(|c| c.0).collect()
    }

    #[test]
    fn partial_sort_truncation_equals_sorting_the_whole_vocabulary() {
        // Peaked and flat distributions over a vocabulary larger than the first sorted prefix,
        // with ties, so that both the quick path and every widening are taken.
        let v = 5000;
        let peaked: Vec<f32> = (0..v).map(|i| ((i * 7919 % 997) as f32 / 60.0).exp()).collect();
        let flat: Vec<f32> = (0..v).map(|i| 1.0 + (i % 3) as f32 * 1e-3).collect();
        for probs in [&peaked, &flat] {
            let total: f32 = probs.iter().sum();
            for (top_k, top_p, min_p) in [
                (0, 0.9, 0.0),
                (0, 0.999, 0.0),
                (0, 1.0, 0.05),
                (0, 1.0, 0.999),
                (40, 1.0, 0.0),
                (3000, 1.0, 0.0),
                (2000, 0.95, 0.01),
                (0, 0.5, 0.2),
            ] {
                let p = SamplingParams { top_k, top_p, min_p, ..Default::default() };
                let (got, mass) = truncate(&p, probs, total);
                let want = truncate_by_full_sort(&p, probs);
                assert_eq!(
                    got.iter().map(|c| c.0).collect::<Vec<_>>(),
                    want,
                    "top_k {top_k} top_p {top_p} min_p {min_p}"
                );
                let sum: f32 = got.iter().map(|c| c.1).sum();
                assert!((mass - sum).abs() <= 1e-3 * sum);
            }
        }
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
