//! The same network as [`jarip_model::model`], for inference on the CPU: no autograd, plain `f32`
//! slices, and *ragged* batches — every sequence brings its own KV cache and any number of new
//! tokens (a whole prompt when it is admitted, one token per decode step afterwards), and all
//! new tokens of all sequences go through each weight matrix together. That is what lets a
//! server decode many conversations in one pass over the weights (continuous batching).
//!
//! Decoding is memory-bound: each step streams every weight once, so the matrix kernel
//! ([`matmul_wt`], in [`jarip_kernels::decode_matmul`]) reads a weight row once for all activation rows of
//! the step. Each output element is reduced in one fixed order whatever the batch holds, so a
//! sequence's logits (and hence its sampled text) do not depend on which other sequences shared
//! its steps.

use anyhow::{bail, Result};
use jarip_kernels::ops::fastmath::tanh_one_exp as tanh;
use jarip_kernels::ops::rms_norm::rms_norm_row;
use jarip_kernels::ops::rope::{rope_angles_of, rope_rows_inplace};
use jarip_model::layout::{Block, EMBED, FINAL_NORM, LM_HEAD};
use jarip_model::{Gpt, ModelConfig};
use rayon::prelude::*;

use jarip_kernels::decode_matmul::aligned_zeros;
pub use jarip_kernels::decode_matmul::matmul_wt;
pub use jarip_kernels::decode_matmul::{Mat, WeightFormat};
use jarip_kernels::kv_cache::{attend_head, attend_rows, Head, HeadRows, Scratch};
pub use jarip_kernels::kv_cache::{KvFormat, SeqCache};

/// A block as decoding reads it: gains as f32 rows, matrices as the decode kernel holds them.
type Layer = Block<Vec<f32>, Mat>;

/// A read-only copy of a [`Gpt`]'s weights laid out for CPU inference.
pub struct DecodeModel {
    cfg: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: Mat,
    format: WeightFormat,
    kv: KvFormat,
    /// Rotary tables `[max_seq_len, D/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's part of a ragged batch: its new tokens and its cache (whose length is the
/// position of the first new token).
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
}

impl DecodeModel {
    pub fn new(model: &Gpt) -> Result<Self> {
        Self::with_format(model, WeightFormat::F32)
    }

    /// A copy whose weight matrices are held in `format`.
    pub fn with_format(model: &Gpt, format: WeightFormat) -> Result<Self> {
        // Every forward allocates its activations afresh: keep freed buffers for reuse rather
        // than faulting new pages in (a prompt of 512 tokens spent ~10 % of its time there).
        jarip_kernels::alloc::retain_freed_memory();
        let cfg = model.config().clone();
        let c = cfg.n_embd;
        let mat = |w: Vec<f32>, n: usize, k: usize| Mat::new(w, n, k, format);
        let t = model.tensors();
        let get = |name: &str| -> Result<Vec<f32>> {
            let x = t.get(name).ok_or_else(|| anyhow::anyhow!("model has no tensor {name}"))?;
            Ok(x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let layers = (0..cfg.n_layer)
            .map(|i| Block::load(&cfg, i, get, |name, n, k| Ok(mat(get(name)?, n, k))))
            .collect::<Result<Vec<Layer>>>()?;
        let (cos, sin) = rope_angles_of(cfg.max_seq_len, &cfg.rope_inv_freq());
        Ok(Self {
            embed: get(EMBED)?,
            final_norm: get(FINAL_NORM)?,
            lm_head: mat(get(if cfg.tie_embeddings { EMBED } else { LM_HEAD })?, cfg.vocab_size, c),
            format,
            kv: KvFormat::F32,
            layers,
            cos,
            sin,
            cfg,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// How the weight matrices are held.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The same model, caching keys and values as `kv` (f32 unless asked).
    pub fn with_kv_cache(mut self, kv: KvFormat) -> Self {
        self.kv = kv;
        self
    }

    /// How the KV cache holds keys and values.
    pub fn kv_format(&self) -> KvFormat {
        self.kv
    }

    /// Bytes of weights one decode step reads (the memory-bandwidth cost of a token).
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| l.matrices().map(Mat::bytes).sum::<usize>() + 4 * l.norms().map(|g| g.len()).sum::<usize>())
            .sum();
        l + self.lm_head.bytes() + 4 * (self.final_norm.len() + self.cfg.n_embd)
    }

    /// Runs the new tokens of every sequence, appending their keys/values to each cache, and
    /// returns soft-capped logits: for each sequence its last position's row (`[V]`), or every
    /// new position's rows (`[n_i · V]`) when `all_positions`.
    pub fn forward(&self, seqs: &mut [SeqInput<'_>], all_positions: bool) -> Result<Vec<Vec<f32>>> {
        // On one of the pool's threads, each parallel loop splits on the spot instead of being
        // handed over (two wake-ups per matrix otherwise, a visible part of a batch-1 token).
        jarip_kernels::pool::on_pool(|| self.forward_in_pool(seqs, all_positions))
    }

    fn forward_in_pool(&self, seqs: &mut [SeqInput<'_>], all_positions: bool) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (c, h, hkv, d) = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim());
        let kv = hkv * d;
        // Row r of the batch belongs to sequence `owner[r]` at position `pos[r]`.
        let (mut owner, mut pos) = (Vec::new(), Vec::new());
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                bail!("sequence {i} of the batch has no new tokens");
            }
            let end = s.cache.len() + s.tokens.len();
            if end > cfg.max_seq_len {
                bail!("sequence of {end} tokens exceeds the model's context of {} tokens", cfg.max_seq_len);
            }
            for (j, &t) in s.tokens.iter().enumerate() {
                if t as usize >= cfg.vocab_size {
                    bail!("token id {t} is outside the vocabulary of {}", cfg.vocab_size);
                }
                owner.push(i);
                pos.push(s.cache.len() + j);
            }
        }
        let n = owner.len();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let mut x = vec![0f32; n * c];
        for (row, &t) in x.chunks_mut(c).zip(&ids) {
            row.copy_from_slice(&self.embed[t as usize * c..(t as usize + 1) * c]);
        }
        for s in seqs.iter_mut() {
            s.cache.prepare(cfg.n_layer * hkv, self.kv)?;
        }
        let qd = h * d;
        // The matrices' inputs cache-line aligned (`aligned_zeros`): no vector load straddles two lines.
        let (mut hn, mut q, mut k, mut v) =
            (aligned_zeros(n * c), aligned_zeros(n * qd), aligned_zeros(n * kv), aligned_zeros(n * kv));
        let mut y = aligned_zeros(n * qd);
        let mut up = aligned_zeros(n * cfg.mlp_hidden);
        let mut tmp = aligned_zeros(n * c);
        for (li, lw) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &lw.attn_norm, cfg.norm_eps as f32, &mut hn);
            Mat::apply_all(&[&lw.wq, &lw.wk, &lw.wv], &hn, n, &mut [&mut q, &mut k, &mut v]);
            if let (Some(qg), Some(kg)) = (&lw.q_norm, &lw.k_norm) {
                let qn = q.clone();
                rms_norm_rows(&qn, qg, cfg.norm_eps as f32, &mut q);
                let kn = k.clone();
                rms_norm_rows(&kn, kg, cfg.norm_eps as f32, &mut k);
            }
            rope_rows_inplace(&mut q, &pos, h, d, &self.cos, &self.sin);
            rope_rows_inplace(&mut k, &pos, hkv, d, &self.cos, &self.sin);
            // Append the new keys/values to their sequences' caches, head by head.
            let mut r = 0;
            for s in seqs.iter_mut() {
                for row in r..r + s.tokens.len() {
                    for head in 0..hkv {
                        let at = row * kv + head * d;
                        s.cache.push(li * hkv + head, &k[at..at + d], &v[at..at + d]);
                    }
                }
                r += s.tokens.len();
            }
            self.attend(seqs, li, &q, &owner, &pos, &mut y);
            lw.wo.apply(&y, n, &mut tmp);
            add_into(&mut x, &tmp);

            rms_norm_rows(&x, &lw.mlp_norm, cfg.norm_eps as f32, &mut hn);
            match &lw.w_gate {
                None => {
                    lw.w_up.apply(&hn, n, &mut up);
                    up.par_iter_mut().with_min_len(ELEMENTWISE).for_each(|u| *u = if *u > 0.0 { *u * *u } else { 0.0 })
                }
                Some(g) => {
                    let mut gate = aligned_zeros(n * cfg.mlp_hidden);
                    Mat::apply_all(&[&lw.w_up, g], &hn, n, &mut [&mut up, &mut gate]);
                    up.par_iter_mut()
                        .with_min_len(ELEMENTWISE)
                        .zip(gate.par_iter())
                        .for_each(|(u, g)| *u *= g / (1.0 + (-g).exp()));
                }
            }
            lw.w_down.apply(&up, n, &mut tmp);
            add_into(&mut x, &tmp);
        }
        for s in seqs.iter_mut() {
            s.cache.advance(s.tokens.len());
        }
        // Only the rows whose logits are wanted go through the (large) head.
        let rows: Vec<usize> = if all_positions {
            (0..n).collect()
        } else {
            let mut last = Vec::new();
            let mut r = 0;
            for s in seqs.iter() {
                r += s.tokens.len();
                last.push(r - 1);
            }
            last
        };
        let mut sel = aligned_zeros(rows.len() * c);
        for (dst, &r) in sel.chunks_mut(c).zip(&rows) {
            dst.copy_from_slice(&x[r * c..(r + 1) * c]);
        }
        let sel_in = sel.clone();
        rms_norm_rows(&sel_in, &self.final_norm, cfg.norm_eps as f32, &mut sel);
        let vsz = cfg.vocab_size;
        let mut logits = vec![0f32; rows.len() * vsz];
        self.lm_head.apply(&sel, rows.len(), &mut logits);
        let cap = cfg.logit_softcap;
        if cap > 0.0 {
            logits.par_iter_mut().with_min_len(ELEMENTWISE).for_each(|z| *z = cap * tanh(*z / cap));
        }
        let mut out = Vec::with_capacity(seqs.len());
        if all_positions {
            let mut r = 0;
            for s in seqs.iter() {
                let m = s.tokens.len();
                out.push(logits[r * vsz..(r + m) * vsz].to_vec());
                r += m;
            }
        } else {
            out.extend(logits.chunks(vsz).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Causal attention of each new row over its own sequence's cache (which already holds the
    /// row's own key), writing `y: [N, H·D]`.
    fn attend(&self, seqs: &[SeqInput<'_>], layer: usize, q: &[f32], owner: &[usize], pos: &[usize], y: &mut [f32]) {
        let cfg = &self.cfg;
        let (h, hkv, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim());
        let rep = h / hkv;
        let scale = 1.0 / (d as f32).sqrt();
        let one = |scratch: &mut Scratch, (idx, out): (usize, &mut [f32])| {
            let (r, head) = (idx / h, idx % h);
            let cache = &seqs[owner[r]].cache;
            let kh = layer * hkv + head / rep;
            let qv = &q[r * h * d + head * d..r * h * d + (head + 1) * d];
            let (keys, vals) = cache.slot(kh);
            let head = Head { q: qv, keys, vals, seen: pos[r] + 1, scale };
            attend_head(head, scratch, out);
        };
        // A prompt's rows go by KV head, a block of positions at a time (all query heads of the
        // group together): each key and value row is read once for the block, and q·Kᵀ runs as
        // a several-row product. The bits are those of one row at a time (`attend_rows`).
        let mut blocks = Vec::new();
        let mut prompt_row = vec![false; owner.len()];
        let mut r0 = 0;
        for s in seqs {
            let nt = s.tokens.len();
            if nt > 1 {
                prompt_row[r0..r0 + nt].fill(true);
                for g in 0..hkv {
                    for b0 in (r0..r0 + nt).step_by(PROMPT_BLOCK) {
                        blocks.push((b0, (b0 + PROMPT_BLOCK).min(r0 + nt), g));
                    }
                }
            }
            r0 += nt;
        }
        let done: Vec<Vec<f32>> = blocks
            .par_iter()
            .map_init(Scratch::default, |scratch, &(b0, b1, g)| {
                let cache = &seqs[owner[b0]].cache;
                let (keys, vals) = cache.slot(layer * hkv + g);
                let mut qg = Vec::with_capacity((b1 - b0) * rep * d);
                let mut seen = Vec::with_capacity((b1 - b0) * rep);
                for (r, &p) in pos.iter().enumerate().take(b1).skip(b0) {
                    let at = r * h * d + g * rep * d;
                    qg.extend_from_slice(&q[at..at + rep * d]);
                    seen.extend(std::iter::repeat_n(p + 1, rep));
                }
                let mut out = vec![0f32; qg.len()];
                attend_rows(HeadRows { q: &qg, seen: &seen, keys, vals, scale }, scratch, &mut out);
                out
            })
            .collect();
        for (&(b0, b1, g), out) in blocks.iter().zip(&done) {
            for (i, r) in (b0..b1).enumerate() {
                let at = r * h * d + g * rep * d;
                y[at..at + rep * d].copy_from_slice(&out[i * rep * d..(i + 1) * rep * d]);
            }
        }
        // Single new rows (decode steps), one head at a time; a short context's heads are a few
        // microseconds in all: not worth waking the pool.
        let one = |scratch: &mut Scratch, (idx, out): (usize, &mut [f32])| {
            if !prompt_row[idx / h] {
                one(scratch, (idx, out))
            }
        };
        let work: usize = pos.iter().zip(&prompt_row).filter(|(_, &p)| !p).map(|(p, _)| (p + 1) * h * d).sum();
        if work < ELEMENTWISE * 4 {
            let mut scratch = Scratch::default();
            y.chunks_mut(d).enumerate().for_each(|item| one(&mut scratch, item));
        } else {
            y.par_chunks_mut(d).enumerate().for_each_init(Scratch::default, one);
        }
    }
}

/// Positions of a prompt attended together per KV head (one parallel task).
const PROMPT_BLOCK: usize = 64;

/// Element-wise work below this many values stays on one thread: splitting a token's 768 adds
/// across the pool costs more in wake-ups than it saves.
const ELEMENTWISE: usize = 1 << 14;

fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_iter_mut().with_min_len(ELEMENTWISE).zip(y).for_each(|(a, b)| *a += b);
}

/// RMSNorm of each row of `x` (row length = `w.len()`) into `out`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let c = w.len();
    if out.len() <= c {
        return out.chunks_mut(c).zip(x.chunks(c)).for_each(|(o, r)| rms_norm_row(r, w, eps, o));
    }
    out.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(o, r)| rms_norm_row(r, w, eps, o));
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn tiny() -> Gpt {
        let mut cfg = ModelConfig::tiny(97);
        cfg.max_seq_len = 64;
        Gpt::new(&cfg, 7, &Device::Cpu).unwrap()
    }

    fn full_logits(model: &Gpt, ids: &[u32]) -> Vec<f32> {
        let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
        model.forward(&t).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn prefill_and_cached_decode_match_full_recomputation() {
        let model = tiny();
        let dm = DecodeModel::new(&model).unwrap();
        let ids: Vec<u32> = (0..20).map(|i| (i * 13 % 97) as u32).collect();
        let full = full_logits(&model, &ids);
        let v = 97;
        // All positions at once.
        let mut cache = SeqCache::new();
        let all = dm.forward(&mut [SeqInput { tokens: &ids, cache: &mut cache }], true).unwrap().remove(0);
        assert!(max_diff(&all, &full) < 1e-4, "prefill differs by {}", max_diff(&all, &full));
        // A prompt of 7, then one token at a time through the cache.
        let mut cache = SeqCache::new();
        let first = dm.forward(&mut [SeqInput { tokens: &ids[..7], cache: &mut cache }], false).unwrap().remove(0);
        assert!(max_diff(&first, &full[6 * v..7 * v]) < 1e-4);
        for p in 7..ids.len() {
            let row =
                dm.forward(&mut [SeqInput { tokens: &ids[p..p + 1], cache: &mut cache }], false).unwrap().remove(0);
            let d = max_diff(&row, &full[p * v..(p + 1) * v]);
            assert!(d < 1e-4, "position {p}: cached decode differs from full recomputation by {d}");
        }
        assert_eq!(cache.len(), ids.len());
    }

    /// A prompt run at once (its rows' attention by KV head in blocks, several-row products)
    /// gives every position the bits a token at a time gives it, for each weight and cache format.
    #[test]
    fn a_prompt_at_once_equals_one_token_at_a_time_bit_for_bit() {
        let model = tiny();
        let ids: Vec<u32> = (0..63).map(|i| (i * 29 % 97) as u32).collect();
        for (format, kv) in [
            (WeightFormat::F32, KvFormat::F32),
            (WeightFormat::Q8_0, KvFormat::F32),
            (WeightFormat::Bf16, KvFormat::F32),
            (WeightFormat::F32, KvFormat::F16),
        ] {
            let dm = DecodeModel::with_format(&model, format).unwrap().with_kv_cache(kv);
            let mut cache = SeqCache::new();
            let at_once = dm.forward(&mut [SeqInput { tokens: &ids, cache: &mut cache }], true).unwrap().remove(0);
            let mut cache = SeqCache::new();
            let mut one_by_one = Vec::new();
            for p in 0..ids.len() {
                let row = dm.forward(&mut [SeqInput { tokens: &ids[p..p + 1], cache: &mut cache }], false).unwrap();
                one_by_one.extend_from_slice(&row[0]);
            }
            assert_eq!(at_once, one_by_one, "{format:?} weights, {kv:?} cache");
        }
    }

    #[test]
    fn q8_weights_decode_close_to_f32_and_batch_invariant() {
        let model = tiny();
        let q8 = DecodeModel::with_format(&model, WeightFormat::Q8_0).unwrap();
        let f32m = DecodeModel::new(&model).unwrap();
        let (a_ids, b_ids) = ([5u32, 17, 42, 9, 77, 3], [8u32, 1, 60]);
        let alone = |m: &DecodeModel, ids: &[u32]| {
            let mut cache = SeqCache::new();
            m.forward(&mut [SeqInput { tokens: ids, cache: &mut cache }], true).unwrap().remove(0)
        };
        let (q, f) = (alone(&q8, &a_ids), alone(&f32m, &a_ids));
        assert!(max_diff(&q, &f) < 0.1, "Q8_0 logits near f32: {}", max_diff(&q, &f));
        let (mut ca, mut cb) = (SeqCache::new(), SeqCache::new());
        let both = q8
            .forward(
                &mut [SeqInput { tokens: &a_ids, cache: &mut ca }, SeqInput { tokens: &b_ids, cache: &mut cb }],
                true,
            )
            .unwrap();
        assert_eq!(both[0], q, "a sequence's Q8_0 logits do not depend on its batch");
        assert!(q8.weight_bytes() * 3 < f32m.weight_bytes());
    }

    #[test]
    fn f16_kv_cache_decodes_close_to_f32_and_batch_invariant() {
        let model = tiny();
        let f16m = DecodeModel::new(&model).unwrap().with_kv_cache(KvFormat::F16);
        let f32m = DecodeModel::new(&model).unwrap();
        let (a_ids, b_ids): (Vec<u32>, Vec<u32>) = ((0..40).map(|i| (i * 7 % 97) as u32).collect(), vec![8, 1, 60]);
        let decode = |m: &DecodeModel, ids: &[u32]| {
            let mut cache = SeqCache::new();
            let mut rows = m.forward(&mut [SeqInput { tokens: &ids[..4], cache: &mut cache }], true).unwrap();
            for p in 4..ids.len() {
                rows.extend(m.forward(&mut [SeqInput { tokens: &ids[p..p + 1], cache: &mut cache }], false).unwrap());
            }
            (rows.concat(), cache.bytes())
        };
        let ((h, h_bytes), (f, f_bytes)) = (decode(&f16m, &a_ids), decode(&f32m, &a_ids));
        assert!(max_diff(&h, &f) < 2e-2, "f16 cache logits near f32: {}", max_diff(&h, &f));
        assert_eq!(h_bytes * 2, f_bytes);
        // Beside another sequence, a's rows are the same bits.
        let (mut ca, mut cb) = (SeqCache::new(), SeqCache::new());
        let both = f16m
            .forward(
                &mut [SeqInput { tokens: &a_ids, cache: &mut ca }, SeqInput { tokens: &b_ids, cache: &mut cb }],
                true,
            )
            .unwrap();
        let mut alone = SeqCache::new();
        let a_alone = f16m.forward(&mut [SeqInput { tokens: &a_ids, cache: &mut alone }], true).unwrap().remove(0);
        assert_eq!(both[0], a_alone);
        // A cache filled as f16 does not continue with an f32-caching model.
        let err = f32m.forward(&mut [SeqInput { tokens: &[3], cache: &mut ca }], false).unwrap_err();
        assert!(err.to_string().contains("F16"), "{err}");
    }

    #[test]
    fn ragged_batch_gives_each_sequence_its_own_logits() {
        let model = tiny();
        let dm = DecodeModel::new(&model).unwrap();
        let a: Vec<u32> = vec![1, 5, 9, 2, 44, 3];
        let b: Vec<u32> = vec![7, 8];
        let (mut ca, mut cb) = (SeqCache::new(), SeqCache::new());
        // b is admitted (prefilled) while a decodes its sixth token.
        dm.forward(&mut [SeqInput { tokens: &a[..5], cache: &mut ca }], false).unwrap();
        let out = dm
            .forward(
                &mut [SeqInput { tokens: &a[5..], cache: &mut ca }, SeqInput { tokens: &b, cache: &mut cb }],
                false,
            )
            .unwrap();
        let (mut sa, mut sb) = (SeqCache::new(), SeqCache::new());
        let alone_a = dm.forward(&mut [SeqInput { tokens: &a, cache: &mut sa }], false).unwrap().remove(0);
        let alone_b = dm.forward(&mut [SeqInput { tokens: &b, cache: &mut sb }], false).unwrap().remove(0);
        assert!(max_diff(&out[0], &alone_a) < 1e-5);
        assert!(max_diff(&out[1], &alone_b) < 1e-5);
    }

    #[test]
    fn refuses_contexts_beyond_the_model() {
        let model = tiny();
        let dm = DecodeModel::new(&model).unwrap();
        let ids = vec![1u32; 65];
        let mut c = SeqCache::new();
        let err = dm.forward(&mut [SeqInput { tokens: &ids, cache: &mut c }], false).unwrap_err().to_string();
        assert!(err.contains("context of 64"), "{err}");
        assert!(c.is_empty());
    }
}
