//! BPE on one pre-tokenized piece, with HF's semantics: repeatedly merge the adjacent pair of
//! lowest merge rank, leftmost on ties, until no adjacent pair has a rank. Ranks are keyed on
//! (left id, right id), exactly as HF's `BPE` model keys them.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const NONE: u32 = u32::MAX;
/// Pieces up to this many bytes use the quadratic scan (fastest on short pieces); longer ones
/// (long whitespace or symbol runs) use a heap so the cost stays O(n log n).
const SCAN_MAX: usize = 48;
/// Per-thread cache entries before the cache is cleared (bounds memory on huge corpora).
const CACHE_CAP: usize = 1 << 18;

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// (left, right) → (rank, merged id).
#[derive(Default, Clone)]
pub(crate) struct MergeTable {
    map: FxHashMap<u64, (u32, u32)>,
}

impl MergeTable {
    /// Builds the table from merges in rank order; a repeated pair keeps its later rank, as HF.
    pub fn new(merges: &[(u32, u32, u32)]) -> Self {
        let mut map = FxHashMap::with_capacity_and_hasher(merges.len(), Default::default());
        for (rank, &(a, b, new)) in merges.iter().enumerate() {
            map.insert(key(a, b), (rank as u32, new));
        }
        Self { map }
    }

    #[inline]
    fn get(&self, a: u32, b: u32) -> (u32, u32) {
        self.map.get(&key(a, b)).copied().unwrap_or((NONE, NONE))
    }
}

/// Appends the ids of `piece` (whose bytes map to `byte_ids`) to `out`.
pub(crate) fn bpe(table: &MergeTable, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) {
    match piece.len() {
        0 => {}
        1 => out.push(byte_ids[piece[0] as usize]),
        n if n <= SCAN_MAX => bpe_scan(table, byte_ids, piece, out),
        _ => bpe_heap(table, byte_ids, piece, out),
    }
}

fn bpe_scan(table: &MergeTable, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) {
    // parts[i] = (id, rank of (i, i+1), id that pair merges to)
    let mut parts = [(0u32, NONE, NONE); SCAN_MAX];
    let mut len = piece.len();
    for (i, &b) in piece.iter().enumerate() {
        parts[i].0 = byte_ids[b as usize];
    }
    for i in 0..len - 1 {
        let (r, m) = table.get(parts[i].0, parts[i + 1].0);
        parts[i].1 = r;
        parts[i].2 = m;
    }
    parts[len - 1].1 = NONE;
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (i, p) in parts[..len - 1].iter().enumerate() {
            if p.1 < best {
                best = p.1;
                at = i;
            }
        }
        if best == NONE {
            break;
        }
        parts[at].0 = parts[at].2;
        parts.copy_within(at + 2..len, at + 1);
        len -= 1;
        if at > 0 {
            let (r, m) = table.get(parts[at - 1].0, parts[at].0);
            parts[at - 1].1 = r;
            parts[at - 1].2 = m;
        }
        let (r, m) = if at + 1 < len { table.get(parts[at].0, parts[at + 1].0) } else { (NONE, NONE) };
        parts[at].1 = r;
        parts[at].2 = m;
        if len == 1 {
            break;
        }
    }
    out.extend(parts[..len].iter().map(|p| p.0));
}

fn bpe_heap(table: &MergeTable, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) {
    let n = piece.len();
    let mut ids: Vec<u32> = piece.iter().map(|&b| byte_ids[b as usize]).collect();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    // (rank, position of the pair's left element): positions grow left to right, so ties pop
    // leftmost first.
    let mut heap = BinaryHeap::new();
    for i in 0..n - 1 {
        let (r, _) = table.get(ids[i], ids[i + 1]);
        if r != NONE {
            heap.push(Reverse((r, i)));
        }
    }
    while let Some(Reverse((rank, i))) = heap.pop() {
        let j = next[i];
        if !alive[i] || j >= n {
            continue;
        }
        let (r, merged) = table.get(ids[i], ids[j]);
        if r != rank {
            continue; // stale: the pair at i changed since it was pushed
        }
        ids[i] = merged;
        alive[j] = false;
        next[i] = next[j];
        if next[j] < n {
            prev[next[j]] = i;
        }
        let p = prev[i];
        if p < n {
            let (r, _) = table.get(ids[p], ids[i]);
            if r != NONE {
                heap.push(Reverse((r, p)));
            }
        }
        if next[i] < n {
            let (r, _) = table.get(ids[i], ids[next[i]]);
            if r != NONE {
                heap.push(Reverse((r, i)));
            }
        }
    }
    let mut i = 0;
    while i < n {
        out.push(ids[i]);
        i = next[i];
    }
}

/// A per-thread piece → ids cache: most pieces of real text repeat, so BPE runs once per
/// distinct piece per thread.
pub(crate) struct PieceCache {
    owner: u64,
    map: FxHashMap<Box<[u8]>, Box<[u32]>>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache { owner: u64::MAX, map: FxHashMap::default() });
}

/// Runs `f` with this thread's cache for tokenizer `owner` (a cache that another tokenizer left
/// on this thread is cleared first).
pub(crate) fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.owner != owner {
            c.map.clear();
            c.owner = owner;
        }
        f(&mut c)
    })
}

impl PieceCache {
    /// Appends the ids of `piece` to `out`, from the cache or by running BPE.
    #[inline]
    pub fn encode(&mut self, table: &MergeTable, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(byte_ids[piece[0] as usize]);
            return;
        }
        if let Some(ids) = self.map.get(piece) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        bpe(table, byte_ids, piece, out);
        if self.map.len() >= CACHE_CAP {
            self.map.clear();
        }
        self.map.insert(piece.into(), out[start..].into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> [u32; 256] {
        std::array::from_fn(|i| i as u32)
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // merges: (b,c)->256 rank 0, (a,b)->257 rank 1, (a,256)->258 rank 2
        let t = MergeTable::new(&[(b'b' as u32, b'c' as u32, 256), (b'a' as u32, b'b' as u32, 257), (97, 256, 258)]);
        let mut out = vec![];
        bpe(&t, &identity(), b"abc", &mut out);
        assert_eq!(out, vec![258]);
        out.clear();
        bpe(&t, &identity(), b"abab", &mut out);
        assert_eq!(out, vec![257, 257]);
        // aaa with (a,a): leftmost pair merges first.
        let t = MergeTable::new(&[(97, 97, 256)]);
        out.clear();
        bpe(&t, &identity(), b"aaa", &mut out);
        assert_eq!(out, vec![256, 97]);
    }

    #[test]
    fn heap_and_scan_agree() {
        let t = MergeTable::new(&[(32, 32, 256), (256, 256, 257), (257, 32, 258), (97, 32, 259), (259, 256, 260)]);
        for n in 1..120 {
            let piece: Vec<u8> = (0..n).map(|i| if i % 7 == 3 { b'a' } else { b' ' }).collect();
            let (mut a, mut b) = (vec![], vec![]);
            bpe_heap(&t, &identity(), &piece, &mut a);
            if n <= SCAN_MAX {
                bpe_scan(&t, &identity(), &piece, &mut b);
                assert_eq!(a, b, "n={n}");
            }
        }
    }
}
