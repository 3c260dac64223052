//! Reuse of finished sequences' KV caches by later prompts that start with the same tokens.
//!
//! A chat client resends the whole conversation every turn, and many requests share a system
//! prompt: without reuse every turn prefills the history again, which on a CPU is most of the
//! time to first token. A position's keys and values depend only on the tokens up to it (and the
//! decode path computes them in the same order whatever the chunking or batch), so a reused prefix
//! gives exactly the tokens and log-probabilities a fresh prefill would.

use crate::decode::SeqCache;

/// Finished sequences' caches under the tokens they hold, least recently used evicted first once
/// they hold more than the budget.
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    clock: u64,
}

struct Entry {
    tokens: Vec<u32>,
    cache: SeqCache,
    last_used: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> Self {
        Self { entries: Vec::new(), budget, clock: 0 }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest stored prefix of `prompt`, leaving at least its last token to be fed (the
    /// model's output at that position is what the first sample needs): a copy of the cache cut
    /// to that many positions, and how many. `None` when nothing stored shares a first token.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(SeqCache, usize)> {
        let limit = prompt.len().saturating_sub(1);
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit).min(e.cache.len())))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if n == 0 {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[best];
        e.last_used = self.clock;
        Some((e.cache.prefix(n), n))
    }

    /// Keeps `cache`, which holds the keys and values of `tokens`. An entry whose tokens are a
    /// prefix of these is dropped (this one serves every prompt it did); if an entry already
    /// extends these tokens, nothing is added.
    pub fn insert(&mut self, tokens: Vec<u32>, mut cache: SeqCache) {
        cache.shrink_to_fit();
        if tokens.is_empty() || tokens.len() != cache.len() || cache.bytes() > self.budget {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens.starts_with(&tokens)) {
            e.last_used = self.clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry { tokens, cache, last_used: self.clock });
        let mut held = self.bytes();
        while held > self.budget {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used).expect("over budget");
            held -= self.entries.swap_remove(oldest).cache.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeModel, SeqInput};
    use candle_core::Device;
    use jarip_model::{Gpt, ModelConfig};

    fn filled(dm: &DecodeModel, tokens: &[u32]) -> SeqCache {
        let mut c = SeqCache::new();
        dm.forward(&mut [SeqInput { tokens, cache: &mut c }], false).unwrap();
        c
    }

    #[test]
    fn longest_prefix_wins_and_the_budget_evicts_the_least_recently_used() {
        let dm = DecodeModel::new(&Gpt::new(&ModelConfig::tiny(50), 1, &Device::Cpu).unwrap()).unwrap();
        let a: Vec<u32> = (1..=10).collect();
        let b: Vec<u32> = (1..=4).chain(20..26).collect();
        let per_token = filled(&dm, &a).bytes() / a.len();
        let mut pc = PrefixCache::new(25 * per_token);
        pc.insert(a.clone(), filled(&dm, &a));
        pc.insert(b.clone(), filled(&dm, &b));
        assert_eq!(pc.len(), 2);

        // a's first 7 tokens, then something else: 7 positions from a.
        let p: Vec<u32> = (1..=7).chain([40, 41]).collect();
        let (c, n) = pc.lookup(&p).unwrap();
        assert_eq!((n, c.len()), (7, 7));
        // A prompt equal to a stored sequence leaves its last token to feed.
        assert_eq!(pc.lookup(&a).unwrap().1, 9);
        assert!(pc.lookup(&[33, 1, 2]).is_none());

        // A longer sequence replaces the entry it extends.
        let a2: Vec<u32> = (1..=12).collect();
        pc.insert(a2.clone(), filled(&dm, &a2));
        assert_eq!(pc.len(), 2);
        // Over budget (12 + 10 + 8 tokens > 25): b, used least recently, goes.
        pc.lookup(&a2);
        let c8: Vec<u32> = (30..38).collect();
        pc.insert(c8.clone(), filled(&dm, &c8));
        assert_eq!(pc.len(), 2);
        assert!(pc.bytes() <= 25 * per_token);
        assert_eq!(pc.lookup(&b).map(|x| x.1), Some(4), "b's own entry left; a2 still shares 4 tokens");
        assert_eq!(pc.lookup(&c8).unwrap().1, 7);
    }
}
