//! Benchmark contamination: which evaluation items occur in a training corpus, by exact token
//! n-gram overlap, under two published rules reported side by side.
//!
//! # The rules
//! Items and documents are token sequences of one tokenizer. Let an item have `L` tokens.
//! - **GPT-3** (Brown et al. 2020, appendix C): the item is contaminated when any of its
//!   13-grams (`Rules::ngram`) occurs in a corpus document. An item shorter than 13 tokens is
//!   checked as one n-gram of its own length: it is contaminated when the whole item occurs in a
//!   document. An empty item never is.
//! - **Llama 2** (Touvron et al. 2023, sec. A.6): a token of the item is contaminated when it
//!   lies in a span of at least 10 tokens (`Rules::span`) that occurs in a corpus document; the
//!   item's *fraction* is the share of its tokens so covered. Computed as: every item token
//!   covered by some 10-gram of the item that occurs in the corpus is marked. A span of ≥ 10
//!   matching tokens is the union of its 10-grams, each of which matches, so the marked tokens
//!   are exactly the union of the matched spans of length ≥ 10. The item is `dirty` when the
//!   fraction is above 80 %, `clean` below 20 %, `not-clean` otherwise
//!   ([`ContaminationClass::of`]). An item shorter than 10 tokens has no such span: fraction 0.
//!
//! An item is **contaminated** (left out of the clean subset `jarip eval --contamination`
//! scores) when the GPT-3 rule fires or its Llama 2 class is `dirty`.
//!
//! # Exactness
//! The index holds every distinct n-gram the rules need (13-grams, 10-grams, and the whole of
//! each item shorter than 13 tokens) as its exact token sequence, found through a 64-bit
//! rolling hash; every hash hit is compared token by token before it counts, so the result is
//! exact — the same as comparing every item n-gram with every document window (the tests check
//! it against that brute force, with hash collisions forced). N-grams never span two
//! documents: each document is tokenised and scanned on its own, so batches and their
//! boundaries change nothing. (A `.txt` file larger than the ingest limit is read as several
//! documents, cut at blank lines; a match across such a cut is not seen.)
//!
//! # Memory
//! Memory is set by the evaluation set, never by the corpus: the index holds at most
//! `2·L` n-grams per item (about 100 bytes each), and the corpus streams past it in batches of
//! about `batch_bytes` of text (a reader thread keeps at most two batches ready), each
//! document's tokens dropped once scanned (a document is held whole while it is: the largest
//! document bounds the rest). What is kept from the corpus is one bit per distinct n-gram:
//! whether it was seen.
//!
//! # Speed
//! A document window costs one probe of a bit filter (16 bits per indexed 10-gram, small enough
//! for cache), rarely a hash-map lookup, never a second table: 13-grams are looked up only where
//! the 10-gram at the same place matched ([`NgramIndex::scan`]). Tokenising the corpus is most of
//! the work; documents are tokenised and scanned in parallel (rayon).

use crate::encoder::TokenEncoder;
use crate::ingest::DocumentSource;
use crate::prepare::for_each_batch;
use anyhow::Result;
pub use jarip_ledger::records::ContaminationClass;
use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The two rules' parameters; the defaults are the published ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// GPT-3's n (13).
    pub ngram: usize,
    /// Llama 2's shortest matched span (10).
    pub span: usize,
    /// Llama 2: `clean` below this contaminated share (0.2).
    pub clean_below: f64,
    /// Llama 2: `dirty` above this contaminated share (0.8).
    pub dirty_above: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { ngram: 13, span: 10, clean_below: 0.2, dirty_above: 0.8 }
    }
}

/// One item's result under both rules.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// Tokens of the item.
    pub tokens: usize,
    /// GPT-3's rule fired.
    pub ngram: bool,
    /// Tokens covered by matched spans (Llama 2).
    pub covered: usize,
    /// `covered / tokens` (0 for an empty item).
    pub fraction: f64,
    pub class: ContaminationClass,
    /// The maximal runs of covered tokens, in order.
    pub spans: Vec<Range<usize>>,
}

impl ItemResult {
    /// GPT-3's rule fired or the item is Llama 2 `dirty`.
    pub fn contaminated(&self) -> bool {
        self.ngram || self.class == ContaminationClass::Dirty
    }
}

/// What a scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScanStats {
    pub documents: u64,
    /// UTF-8 bytes of the documents' text.
    pub bytes: u64,
    pub tokens: u64,
    pub seconds: f64,
}

impl ScanStats {
    /// Megabytes (10^6) of text per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / 1e6 / self.seconds
        } else {
            0.0
        }
    }
}

/// Finishes a rolling hash into table bits (murmur3's fmix64): the polynomial hash's low bits
/// depend only on the tokens' low bits, so they are mixed before the table uses them.
#[derive(Default, Clone, Copy)]
struct MixHasher(u64);

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type MixMap = HashMap<u64, u32, BuildHasherDefault<MixHasher>>;

/// An odd 64-bit multiplier for the rolling hash.
const BASE: u64 = 0x9E37_79B9_7F4A_7C15;

/// The distinct n-grams of one length.
struct Table {
    len: usize,
    /// `BASE^(len-1)`, to roll the oldest token out.
    top: u64,
    /// Hash → the newest gram with that hash; older ones follow through `NgramIndex::chain`.
    heads: MixMap,
    /// One bit per slot of the mixed hash's top `64 - shift` bits, set for every gram's hash: a
    /// clear bit rules a window out without touching the map (most windows, at about 16 bits a
    /// gram: the filter fits in cache where the map does not).
    filter: Vec<u64>,
    shift: u32,
}

impl Table {
    fn build_filter(&mut self) {
        let bits = (self.heads.len() * 16).max(1 << 12).next_power_of_two();
        self.shift = 64 - bits.trailing_zeros();
        self.filter = vec![0; bits / 64];
        for &h in self.heads.keys() {
            let slot = (mix(h) >> self.shift) as usize;
            self.filter[slot / 64] |= 1 << (slot % 64);
        }
    }

    fn may_hold(&self, h: u64) -> bool {
        let slot = (mix(h) >> self.shift) as usize;
        self.filter[slot / 64] & (1 << (slot % 64)) != 0
    }
}

/// The evaluation set's n-grams, and which of them the corpus holds.
pub struct NgramIndex {
    rules: Rules,
    base: u64,
    items: Vec<Vec<u32>>,
    /// Tokens of every distinct gram, one after another.
    arena: Vec<u32>,
    /// Gram id → its start in `arena` (its length is its table's).
    starts: Vec<usize>,
    /// Gram id → the next gram with the same length and hash (`u32::MAX`: none).
    chain: Vec<u32>,
    tables: Vec<Table>,
    found: Vec<AtomicBool>,
}

impl NgramIndex {
    /// Indexes `items` (token sequences) under `rules`.
    pub fn new(items: Vec<Vec<u32>>, rules: Rules) -> Self {
        Self::with_base(items, rules, BASE)
    }

    fn with_base(items: Vec<Vec<u32>>, rules: Rules, base: u64) -> Self {
        assert!(rules.ngram > 0 && rules.span > 0, "n-gram lengths must be positive");
        let mut index = Self {
            rules,
            base,
            items: Vec::new(),
            arena: Vec::new(),
            starts: Vec::new(),
            chain: Vec::new(),
            tables: Vec::new(),
            found: Vec::new(),
        };
        for item in &items {
            for (len, pos) in grams_of(item.len(), &rules) {
                index.insert(&item[pos..pos + len]);
            }
        }
        for t in &mut index.tables {
            t.build_filter();
        }
        index.found = (0..index.starts.len()).map(|_| AtomicBool::new(false)).collect();
        index.items = items;
        index
    }

    /// Items indexed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The tokens of item `i`.
    pub fn item(&self, i: usize) -> &[u32] {
        &self.items[i]
    }

    /// Distinct n-grams held.
    pub fn grams(&self) -> usize {
        self.starts.len()
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn hash(&self, tokens: &[u32]) -> u64 {
        tokens.iter().fold(0u64, |h, &t| h.wrapping_mul(self.base).wrapping_add(u64::from(t) + 1))
    }

    fn gram(&self, id: u32, len: usize) -> &[u32] {
        let s = self.starts[id as usize];
        &self.arena[s..s + len]
    }

    fn table_of(&self, len: usize) -> Option<&Table> {
        self.tables.iter().find(|t| t.len == len)
    }

    fn insert(&mut self, tokens: &[u32]) {
        let len = tokens.len();
        let h = self.hash(tokens);
        let t = match self.tables.iter().position(|t| t.len == len) {
            Some(t) => t,
            None => {
                let top = (1..len).fold(1u64, |p, _| p.wrapping_mul(self.base));
                self.tables.push(Table { len, top, heads: MixMap::default(), filter: Vec::new(), shift: 63 });
                self.tables.len() - 1
            }
        };
        let head = self.tables[t].heads.get(&h).copied().unwrap_or(u32::MAX);
        let mut id = head;
        while id != u32::MAX {
            if self.gram(id, len) == tokens {
                return;
            }
            id = self.chain[id as usize];
        }
        let new = u32::try_from(self.starts.len()).expect("fewer than 2^32 distinct n-grams");
        self.starts.push(self.arena.len());
        self.arena.extend_from_slice(tokens);
        self.chain.push(head);
        self.tables[t].heads.insert(h, new);
    }

    /// The id of `tokens` if it is an indexed gram.
    fn find(&self, table: &Table, h: u64, tokens: &[u32]) -> Option<u32> {
        if !table.may_hold(h) {
            return None;
        }
        let mut id = *table.heads.get(&h)?;
        while id != u32::MAX {
            if self.gram(id, table.len) == tokens {
                return Some(id);
            }
            id = self.chain[id as usize];
        }
        None
    }

    fn seen(&self, tokens: &[u32]) -> bool {
        self.table_of(tokens.len())
            .and_then(|t| self.find(t, self.hash(tokens), tokens))
            .is_some_and(|id| self.found[id as usize].load(Ordering::Relaxed))
    }

    /// Marks every indexed gram that occurs in `doc` (one document's tokens). Safe to call from
    /// many threads at once.
    ///
    /// Every window is looked up in the tables shorter than `span` (whole short items) and in
    /// the `span` table; a longer gram (a 13-gram, or a short item of `span` tokens or more) is
    /// looked up only where the `span`-gram starting at the same place matched: each longer gram
    /// starts with a `span`-gram of the same item, which is indexed too. So a window costs one
    /// lookup, nearly always a miss, whatever the number of rules.
    pub fn scan(&self, doc: &[u32]) {
        let span = self.rules.span;
        let mark = |id: u32| {
            let f = &self.found[id as usize];
            if !f.load(Ordering::Relaxed) {
                f.store(true, Ordering::Relaxed);
            }
        };
        for table in self.tables.iter().filter(|t| t.len <= span) {
            let gate = table.len == span;
            self.for_each_window(table, doc, |start, h| {
                if let Some(id) = self.find(table, h, &doc[start..start + table.len]) {
                    mark(id);
                    if gate {
                        for longer in self.tables.iter().filter(|t| t.len > span && start + t.len <= doc.len()) {
                            let w = &doc[start..start + longer.len];
                            if let Some(id) = self.find(longer, self.hash(w), w) {
                                mark(id);
                            }
                        }
                    }
                }
            });
        }
    }

    /// Calls `f(start, hash)` for every window of `table.len` tokens of `doc`, rolling the hash.
    fn for_each_window(&self, table: &Table, doc: &[u32], mut f: impl FnMut(usize, u64)) {
        let n = table.len;
        if doc.len() < n {
            return;
        }
        let mut h = self.hash(&doc[..n]);
        f(0, h);
        for start in 1..=doc.len() - n {
            let out = u64::from(doc[start - 1]) + 1;
            let inn = u64::from(doc[start + n - 1]) + 1;
            h = h.wrapping_sub(out.wrapping_mul(table.top)).wrapping_mul(self.base).wrapping_add(inn);
            f(start, h);
        }
    }

    /// Encodes and scans one batch of documents in parallel; returns the tokens read.
    fn scan_batch<E: TokenEncoder + ?Sized>(&self, encoder: &E, texts: &[String]) -> u64 {
        texts
            .par_iter()
            .map(|t| {
                let ids = encoder.encode(t);
                self.scan(&ids);
                ids.len() as u64
            })
            .sum()
    }

    /// Tokenises and scans documents from any stream of texts, in batches of about
    /// `batch_bytes` (each batch encoded in parallel); stops at the first error.
    pub fn scan_texts<E: TokenEncoder + ?Sized>(
        &self,
        encoder: &E,
        texts: impl IntoIterator<Item = Result<String>>,
        batch_bytes: usize,
    ) -> Result<ScanStats> {
        let t0 = Instant::now();
        let mut stats = ScanStats::default();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let flush = |batch: &mut Vec<String>, stats: &mut ScanStats| {
            stats.tokens += self.scan_batch(encoder, batch);
            batch.clear();
        };
        for t in texts {
            let t = t?;
            stats.documents += 1;
            stats.bytes += t.len() as u64;
            bytes += t.len();
            batch.push(t);
            if bytes >= batch_bytes {
                flush(&mut batch, &mut stats);
                bytes = 0;
            }
        }
        flush(&mut batch, &mut stats);
        stats.seconds = t0.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Scans every document of `source` (a reader thread parses the next batches while this one
    /// is encoded); `progress` sees the running totals after each batch.
    pub fn scan_source<E: TokenEncoder + ?Sized>(
        &self,
        encoder: &E,
        source: &DocumentSource,
        batch_bytes: usize,
        mut progress: impl FnMut(&ScanStats),
    ) -> Result<ScanStats> {
        let t0 = Instant::now();
        let mut stats = ScanStats::default();
        for_each_batch(source, batch_bytes, |batch| {
            stats.documents += batch.len() as u64;
            stats.bytes += batch.iter().map(|t| t.len() as u64).sum::<u64>();
            stats.tokens += self.scan_batch(encoder, &batch);
            stats.seconds = t0.elapsed().as_secs_f64();
            progress(&stats);
            Ok(())
        })?;
        stats.seconds = t0.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Each item's result, from what the scans so far have seen.
    pub fn results(&self) -> Vec<ItemResult> {
        self.items.iter().map(|item| self.result_of(item)).collect()
    }

    fn result_of(&self, item: &[u32]) -> ItemResult {
        let r = &self.rules;
        let l = item.len();
        let ngram = match l {
            0 => false,
            l if l < r.ngram => self.seen(item),
            l => (0..=l - r.ngram).any(|p| self.seen(&item[p..p + r.ngram])),
        };
        let mut covered = vec![false; l];
        if l >= r.span {
            for p in 0..=l - r.span {
                if self.seen(&item[p..p + r.span]) {
                    covered[p..p + r.span].iter_mut().for_each(|c| *c = true);
                }
            }
        }
        let spans = runs(&covered);
        let n_covered = covered.iter().filter(|c| **c).count();
        let fraction = if l == 0 { 0.0 } else { n_covered as f64 / l as f64 };
        ItemResult {
            tokens: l,
            ngram,
            covered: n_covered,
            fraction,
            class: ContaminationClass::of(fraction, r.clean_below, r.dirty_above),
            spans,
        }
    }
}

/// `(length, start)` of every gram an item of `len` tokens needs under `rules`.
fn grams_of(len: usize, rules: &Rules) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    if len < rules.ngram {
        out.push((len, 0));
    } else {
        out.extend((0..=len - rules.ngram).map(|p| (rules.ngram, p)));
    }
    if len >= rules.span {
        out.extend((0..=len - rules.span).map(|p| (rules.span, p)));
    }
    out
}

/// The maximal runs of `true`.
fn runs(mask: &[bool]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &m) in mask.iter().chain(std::iter::once(&false)).enumerate() {
        match (m, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One token per whitespace-separated word, ids from a shared vocabulary.
    struct Words(std::sync::Mutex<Vec<String>>);

    impl Words {
        fn new() -> Self {
            Self(std::sync::Mutex::new(Vec::new()))
        }
    }

    impl TokenEncoder for Words {
        fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
            let mut vocab = self.0.lock().unwrap();
            texts
                .iter()
                .map(|t| {
                    t.split_whitespace()
                        .map(|w| match vocab.iter().position(|v| v == w) {
                            Some(i) => i as u32,
                            None => {
                                vocab.push(w.to_string());
                                vocab.len() as u32 - 1
                            }
                        })
                        .collect()
                })
                .collect()
        }
        fn bos_id(&self) -> u32 {
            u32::MAX
        }
        fn vocab_size(&self) -> usize {
            usize::MAX
        }
        fn sha256(&self) -> String {
            String::new()
        }
    }

    fn words(n: usize, tag: &str) -> String {
        (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ")
    }

    fn ok(texts: &[String]) -> Vec<Result<String>> {
        texts.iter().cloned().map(Ok).collect()
    }

    #[test]
    fn verbatim_item_is_dirty_and_caught_by_13_grams() {
        let enc = Words::new();
        let item = words(30, "q");
        let ids = enc.encode(&item);
        let index = NgramIndex::new(vec![ids], Rules::default());
        let doc = format!("{} {item} {}", words(50, "pre"), words(20, "post"));
        index.scan_texts(&enc, ok(&[doc]), 1 << 20).unwrap();
        let r = &index.results()[0];
        assert!(r.ngram);
        assert_eq!((r.covered, r.fraction, r.class), (30, 1.0, ContaminationClass::Dirty));
        assert_eq!(r.spans, vec![0..30]);
        assert!(r.contaminated());
    }

    #[test]
    fn one_ten_token_span_is_not_clean_with_its_fraction_and_span() {
        let enc = Words::new();
        // 40 tokens, of which tokens 12..22 (10 of them) occur together in the corpus.
        let item = words(40, "w");
        let ids = enc.encode(&item);
        let index = NgramIndex::new(vec![ids.clone()], Rules::default());
        let span: Vec<&str> = item.split(' ').skip(12).take(10).collect();
        let doc = format!("alpha beta {} gamma", span.join(" "));
        index.scan_texts(&enc, ok(&[doc]), 1 << 20).unwrap();
        let r = &index.results()[0];
        assert!(!r.ngram, "10 tokens hold no 13-gram");
        assert_eq!(r.covered, 10);
        assert_eq!(r.fraction, 0.25);
        assert_eq!(r.class, ContaminationClass::NotClean);
        assert_eq!(r.spans, vec![12..22]);
        assert!(!r.contaminated());
        // Nine tokens of it are no span at all.
        let index = NgramIndex::new(vec![ids], Rules::default());
        index.scan_texts(&enc, ok(&[span[..9].join(" ")]), 1 << 20).unwrap();
        assert_eq!(index.results()[0].class, ContaminationClass::Clean);
        assert_eq!(index.results()[0].covered, 0);
    }

    #[test]
    fn unrelated_item_is_clean() {
        let enc = Words::new();
        let index = NgramIndex::new(vec![enc.encode(&words(25, "x"))], Rules::default());
        index.scan_texts(&enc, ok(&[words(500, "y"), words(40, "z")]), 1 << 20).unwrap();
        let r = &index.results()[0];
        assert!(!r.ngram && !r.contaminated());
        assert_eq!((r.covered, r.class), (0, ContaminationClass::Clean));
        assert!(r.spans.is_empty());
    }

    #[test]
    fn short_items_match_only_whole() {
        let enc = Words::new();
        let short = enc.encode("a b c d e");
        let index = NgramIndex::new(vec![short.clone(), vec![]], Rules::default());
        index.scan_texts(&enc, ok(&["x a b c d y".into()]), 1 << 20).unwrap();
        let r = index.results();
        assert!(!r[0].ngram, "four of five tokens are not the item");
        assert!(!r[1].ngram && r[1].class == ContaminationClass::Clean, "empty items are never contaminated");
        index.scan_texts(&enc, ok(&["x a b c d e y".into()]), 1 << 20).unwrap();
        let r = index.results();
        assert!(r[0].ngram && r[0].contaminated());
        assert_eq!(r[0].class, ContaminationClass::Clean, "under ten tokens: no Llama 2 span");
    }

    #[test]
    fn documents_are_independent_and_batches_change_nothing() {
        let enc = Words::new();
        let item = words(26, "t");
        let index = NgramIndex::new(vec![enc.encode(&item)], Rules::default());
        let parts: Vec<&str> = item.split(' ').collect();
        // The item split over two consecutive documents: no n-gram spans them.
        let docs = vec![parts[..13].join(" "), parts[13..].join(" ")];
        for batch_bytes in [1, 1 << 20] {
            index.scan_texts(&enc, ok(&docs), batch_bytes).unwrap();
            let r = &index.results()[0];
            assert!(r.ngram, "each half is a 13-gram of the item");
            assert_eq!(r.covered, 26);
        }
        let index = NgramIndex::new(vec![enc.encode(&item)], Rules::default());
        let docs = vec![parts[..12].join(" "), parts[12..24].join(" "), parts[24..].join(" ")];
        index.scan_texts(&enc, ok(&docs), 1).unwrap();
        let r = &index.results()[0];
        assert!(!r.ngram, "12-token pieces hold no 13-gram, and none spans two documents");
        assert_eq!(r.covered, 24);
        // The whole item in a later batch, after many small ones, is found.
        let mut docs: Vec<String> = (0..20).map(|i| words(5, &format!("n{i}_"))).collect();
        docs.push(item.clone());
        let index = NgramIndex::new(vec![enc.encode(&item)], Rules::default());
        let stats = index.scan_texts(&enc, ok(&docs), 8).unwrap();
        assert_eq!(stats.documents, 21);
        assert_eq!(stats.tokens, 20 * 5 + 26);
        assert_eq!(index.results()[0].class, ContaminationClass::Dirty);
    }

    #[test]
    fn scan_errors_stop_the_scan() {
        let enc = Words::new();
        let index = NgramIndex::new(vec![enc.encode("a b")], Rules::default());
        let texts = vec![Ok("a b".to_string()), Err(anyhow::anyhow!("x.jsonl:2: malformed JSON line"))];
        let e = index.scan_texts(&enc, texts, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("x.jsonl:2"));
    }

    /// Every item n-gram compared with every document window.
    fn brute_force(items: &[Vec<u32>], docs: &[Vec<u32>], rules: &Rules) -> Vec<(bool, Vec<bool>)> {
        let occurs = |g: &[u32]| docs.iter().any(|d| d.windows(g.len()).any(|w| w == g));
        items
            .iter()
            .map(|it| {
                let l = it.len();
                let ngram = l > 0 && if l < rules.ngram { occurs(it) } else { it.windows(rules.ngram).any(occurs) };
                let mut cov = vec![false; l];
                // Llama 2 as published: the union of matched spans of every length ≥ span.
                for s in 0..l {
                    for e in s + rules.span..=l {
                        if occurs(&it[s..e]) {
                            cov[s..e].iter_mut().for_each(|c| *c = true);
                        }
                    }
                }
                (ngram, cov)
            })
            .collect()
    }

    fn check_against_brute_force(items: Vec<Vec<u32>>, docs: Vec<Vec<u32>>, rules: Rules, base: u64) {
        let expected = brute_force(&items, &docs, &rules);
        let index = NgramIndex::with_base(items, rules, base);
        for d in &docs {
            index.scan(d);
        }
        for (i, (r, (ngram, cov))) in index.results().iter().zip(expected).enumerate() {
            assert_eq!(r.ngram, ngram, "item {i}");
            let n = cov.iter().filter(|c| **c).count();
            assert_eq!(r.covered, n, "item {i}");
            assert_eq!(r.spans, runs(&cov), "item {i}");
            let f = if cov.is_empty() { 0.0 } else { n as f64 / cov.len() as f64 };
            assert_eq!(r.class, ContaminationClass::of(f, rules.clean_below, rules.dirty_above));
        }
    }

    /// Items partly copied from the documents, over a small alphabet so that chance matches
    /// of every length happen too.
    fn corpus_and_items() -> impl Strategy<Value = (Vec<Vec<u32>>, Vec<Vec<u32>>)> {
        let docs = prop::collection::vec(prop::collection::vec(0u32..3, 0..120), 1..6);
        docs.prop_flat_map(|docs| {
            let n = docs.len();
            let item = (0..n, any::<prop::sample::Index>(), 0usize..40, prop::collection::vec(0u32..3, 0..20), 0..3u8);
            (Just(docs), prop::collection::vec(item, 1..8))
        })
        .prop_map(|(docs, specs)| {
            let items = specs
                .into_iter()
                .map(|(d, at, len, noise, how)| {
                    let doc = &docs[d];
                    let s = if doc.is_empty() { 0 } else { at.index(doc.len()) };
                    let copied: Vec<u32> = doc[s..(s + len).min(doc.len())].to_vec();
                    match how {
                        0 => copied,
                        1 => noise.into_iter().chain(copied).collect(),
                        _ => noise,
                    }
                })
                .collect();
            (items, docs)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn exact_against_brute_force((items, docs) in corpus_and_items()) {
            check_against_brute_force(items.clone(), docs.clone(), Rules::default(), BASE);
            let small = Rules { ngram: 5, span: 3, ..Rules::default() };
            check_against_brute_force(items.clone(), docs.clone(), small, BASE);
            // Base 1 hashes a window to the sum of its tokens: collisions everywhere, so only
            // the token-by-token check keeps the result exact.
            check_against_brute_force(items, docs, small, 1);
        }
    }

    #[test]
    fn runs_are_maximal() {
        assert_eq!(runs(&[true, true, false, true]), vec![0..2, 3..4]);
        assert!(runs(&[]).is_empty());
    }
}
