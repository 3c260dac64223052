//! From examples to token requests, the way lm-evaluation-harness builds them: few-shot
//! examples drawn with a fixed seed, the description first, examples joined by a blank line,
//! and the context/continuation boundary placed where the harness places it.

use crate::task::{GenExample, McExample};
use anyhow::{bail, Result};
use jarip_tokenizer::Tokenizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Joins few-shot examples and the question (lm-eval's `fewshot_delimiter`).
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// Indices of the `k` few-shot examples for example `i` of `n`: never `i` itself, drawn from a
/// stream of its own (`seed`, `i`), so an example's prompt does not depend on `--limit`, on the
/// order of evaluation or on the other examples drawn.
pub fn fewshot_indices(n: usize, i: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k == 0 {
        return Ok(vec![]);
    }
    if k >= n {
        bail!("--fewshot {k} needs at least {} examples in the task file, which has {n}", k + 1);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i as u64);
    let picked = rand::seq::index::sample(&mut rng, n, k + 1).into_vec();
    Ok(picked.into_iter().filter(|&j| j != i).take(k).collect())
}

fn join_shots(description: &str, shots: &[String], question: &str) -> String {
    let mut s = description.to_string();
    for shot in shots {
        s.push_str(shot);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(question);
    s
}

/// The full context of a multiple-choice question: description, solved examples (each its
/// context, the delimiter and its gold choice), then the question.
pub fn mc_context(ex: &McExample, shots: &[&McExample]) -> String {
    let shots: Vec<String> =
        shots.iter().map(|s| format!("{}{}{}", s.context, s.delimiter, s.choices[s.gold])).collect();
    join_shots(&ex.description, &shots, &ex.context)
}

/// The prompt a completion is generated after.
pub fn gen_context(ex: &GenExample, shots: &[&GenExample]) -> String {
    let shots: Vec<String> = shots.iter().map(|s| format!("{}{}{}", s.prompt, s.delimiter, s.answers[0])).collect();
    join_shots("", &shots, &ex.prompt)
}

/// Context and continuation tokens, split as lm-eval's `_encode_pair` splits them: trailing
/// whitespace of the context moves to the continuation (so "답변: " + " 예" is scored as
/// "답변:" + "  예"), the whole text is encoded once, and the continuation is what follows the
/// context's own encoding. `<|bos|>` starts the context, as it started every training document.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> (Vec<u32>, Vec<u32>) {
    let kept = context.trim_end();
    let moved = &context[kept.len()..];
    let whole = tok.encode(&format!("{kept}{moved}{continuation}"));
    let ctx = tok.encode(kept);
    let cont = whole.get(ctx.len()..).map(<[u32]>::to_vec).unwrap_or_default();
    let mut with_bos = Vec::with_capacity(ctx.len() + 1);
    with_bos.push(tok.bos_id());
    with_bos.extend(ctx);
    (with_bos, cont)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(context: &str, choices: &[&str], gold: usize) -> McExample {
        McExample {
            description: String::new(),
            context: context.into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            gold,
            delimiter: " ".into(),
        }
    }

    #[test]
    fn fewshot_is_seeded_excludes_itself_and_ignores_other_examples() {
        let a = fewshot_indices(10, 3, 4, 1234).unwrap();
        assert_eq!(a, fewshot_indices(10, 3, 4, 1234).unwrap());
        assert_eq!(a.len(), 4);
        assert!(!a.contains(&3));
        assert_ne!(a, fewshot_indices(10, 3, 4, 99).unwrap());
        for i in 0..10 {
            assert!(!fewshot_indices(10, i, 9, 1).unwrap().contains(&i));
        }
        assert!(fewshot_indices(3, 0, 3, 1).unwrap_err().to_string().contains("at least 4 examples"));
        assert!(fewshot_indices(1, 0, 0, 1).unwrap().is_empty());
    }

    #[test]
    fn context_layout_matches_the_harness() {
        let mut q = mc("Q3\nAnswer:", &["A", "B"], 0);
        q.description = "About x.\n\n".into();
        let s1 = mc("Q1\nAnswer:", &["A", "B"], 1);
        let s2 = mc("Q2\nAnswer:", &["A", "B"], 0);
        assert_eq!(mc_context(&q, &[&s1, &s2]), "About x.\n\nQ1\nAnswer: B\n\nQ2\nAnswer: A\n\nQ3\nAnswer:");
        assert_eq!(mc_context(&q, &[]), "About x.\n\nQ3\nAnswer:");
    }
}
