//! Synthetic Hugging-Face-layout Llama-style models, and derivatives of them, for the tests and the
//! benchmark of the lineage tool ("is model B built from model A's weights?").
//!
//! [`write_model`] writes a directory the way `save_pretrained` would: BF16 weights in sharded
//! safetensors files (`model-00001-of-0000N.safetensors`) with `model.safetensors.index.json`, a
//! `config.json` with the Hugging Face Llama (or Mixtral) keys and a minimal BPE `tokenizer.json`.
//!
//! Weights are random draws from the initial distribution, generated one tensor at a time and never
//! held as a whole model (a writer thread streams one tensor while the next is generated), so a
//! 7B-shaped model (~13.5 GB) is written in the memory of its largest tensors: ~0.8 GB peak for
//! Llama-7B's A, ~1 GB for a derivative (which gathers the f32 embedding into a second buffer).
//! Every tensor is cut into chunks of [`CHUNK`] values; chunk `c` of a tensor draws from a ChaCha8
//! stream keyed by (seed, tensor name) with stream number `c`, so the bytes depend on neither the
//! number of threads nor the order in which tensors are written. Those bytes are a contract: a
//! derivative is only a derivative of an A written by the same generator, so a change to the
//! key derivation, the streams or the Gaussian makes every stored synthetic model stale.
//!
//! Initial distribution (that of Hugging Face `LlamaPreTrainedModel._init_weights` with
//! `initializer_range` = 0.02): every linear weight (attention, MLP, experts, the MoE router,
//! `lm_head`) and the embedding are N(0, 0.02²); RMSNorm gains are 1 + N(0, 0.02²), so they are
//! not all identical. Gaussians are exact (Box–Muller on 24-bit uniforms, tails cut at 5.8σ).
//!
//! A derivative ([`Derive`]) regenerates model A's tensors from A's seed, tensor by tensor, and
//! transforms them on the way out; A is never read from disk. The transforms apply in this order:
//! prune/permute MLP units, permute attention heads, permute experts, permute the residual
//! channels, rescale, extend the vocabulary, add noise. All but the last two (and pruning)
//! preserve the function the model computes, up to BF16 rounding: each permutation or scale is
//! applied to every tensor that shares the axis.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use half::bf16;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Map, Value};

/// Standard deviation of the initial distribution of every tensor (`initializer_range`).
pub const INIT_STD: f32 = 0.02;
/// Values per random stream: the unit of parallel generation.
pub const CHUNK: usize = 1 << 16;
/// The index file that maps tensors to shards.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The shape of a synthetic model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spec {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// `lm_head` shares the embedding (no `lm_head.weight` tensor).
    pub tied: bool,
    /// Routed experts per layer; 0 = dense MLP.
    pub experts: usize,
    /// A shared expert beside the routed ones (only with `experts` > 0).
    pub shared_expert: bool,
    /// A shard holds tensors up to this many bytes (a larger tensor gets a shard of its own).
    pub shard_bytes: u64,
}

impl Spec {
    /// Llama-2-7B: 32 layers, hidden 4096, intermediate 11008, 32 heads (no GQA), vocab 32000,
    /// untied, 5 GB shards (~6.74 B parameters, ~13.5 GB in BF16).
    pub fn llama7b() -> Self {
        Spec {
            layers: 32,
            hidden: 4096,
            intermediate: 11008,
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
            vocab: 32000,
            tied: false,
            experts: 0,
            shared_expert: false,
            shard_bytes: 5_000_000_000,
        }
    }

    /// About 106 M parameters (~0.21 GB in BF16) in three 100 MB shards.
    pub fn small() -> Self {
        Spec {
            layers: 8,
            hidden: 768,
            intermediate: 2048,
            heads: 12,
            kv_heads: 12,
            head_dim: 64,
            vocab: 32000,
            tied: false,
            experts: 0,
            shared_expert: false,
            shard_bytes: 100_000_000,
        }
    }

    /// For tests: 2 layers, hidden 64, 4 heads sharing 2 KV heads, vocab 300, 64 KiB shards (so
    /// there are several).
    pub fn tiny() -> Self {
        Spec {
            layers: 2,
            hidden: 64,
            intermediate: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            vocab: 300,
            tied: false,
            experts: 0,
            shared_expert: false,
            shard_bytes: 64 * 1024,
        }
    }

    pub fn num_params(&self) -> u64 {
        let dims = Dims::of(self, self.intermediate, self.vocab);
        kinds(self).iter().map(|k| dims.numel(*k) as u64).sum()
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.hidden > 0 && self.intermediate > 0 && self.heads > 0 && self.head_dim > 0 && self.vocab > 0,
            "synthetic model: hidden, intermediate, heads, head_dim and vocab must be positive"
        );
        ensure!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "synthetic model: {} heads cannot share {} KV heads",
            self.heads,
            self.kv_heads
        );
        ensure!(self.shard_bytes > 0, "synthetic model: shard_bytes must be positive");
        ensure!(!self.shared_expert || self.experts > 0, "synthetic model: a shared expert needs experts > 0");
        Ok(())
    }
}

/// How a derivative B is made from model A's weights. `Derive::default()` changes nothing (B is
/// byte-identical to A).
#[derive(Debug, Clone, Default)]
pub struct Derive {
    /// Add Gaussian noise of `noise` × the tensor's init std to every weight (0 = none).
    pub noise: f32,
    /// Permute MLP hidden units per layer and per expert (rows of gate/up, columns of down).
    pub permute_units: bool,
    /// Permute attention heads per layer: KV groups together with the q heads that share them,
    /// and q heads within a group (q/k/v rows and o columns in blocks of head_dim).
    pub permute_heads: bool,
    /// One permutation of the residual channels, applied to every tensor's residual axis.
    pub permute_channels: bool,
    /// Permute the experts of each layer, and the router rows with them.
    pub permute_experts: bool,
    /// Function-preserving rescaling: norm gain channel × s, the columns of the matrices that read
    /// after that norm ÷ s; MLP units: up row × s, down column ÷ s (s uniform in [0.5, 2]). The final
    /// norm is left alone when the embedding is tied to the head.
    pub rescale: bool,
    /// Drop this fraction of MLP hidden units per layer (a random subset; intermediate shrinks).
    pub prune_units: f32,
    /// Append this fraction of new tokens: new embedding/head rows (random init) and new
    /// entries in tokenizer.json.
    pub extend_vocab: f32,
    /// Seed of the noise, permutations, subsets and scales.
    pub seed: u64,
}

/// Write a synthetic model to `dir` (created if missing): model A from `seed` when `derive` is
/// `None`, otherwise the derivative of that same A.
pub fn write_model(dir: &Path, spec: &Spec, seed: u64, derive: Option<&Derive>) -> Result<()> {
    spec.check()?;
    let plan = Plan::new(spec, seed, derive)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // Shard layout, from the shapes alone.
    let order = kinds(spec);
    let mut shards: Vec<Vec<Kind>> = Vec::new();
    let mut filled = 0u64;
    for &k in &order {
        let bytes = plan.b.numel(k) as u64 * 2;
        if shards.is_empty() || (filled > 0 && filled + bytes > spec.shard_bytes) {
            shards.push(Vec::new());
            filled = 0;
        }
        shards.last_mut().expect("a shard was pushed").push(k);
        filled += bytes;
    }
    let n = shards.len();
    let file_name = |s: usize| format!("model-{:05}-of-{n:05}.safetensors", s + 1);

    // Headers first (the layout follows from the shapes), then the tensors' bytes.
    let mut weight_map = Map::new();
    let mut total_size = 0u64;
    let mut files = Vec::with_capacity(n);
    for (s, tensors) in shards.iter().enumerate() {
        let fname = file_name(s);
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for &k in tensors {
            let bytes = plan.b.numel(k) as u64 * 2;
            header.insert(
                k.name(),
                json!({"dtype": "BF16", "shape": plan.b.shape(k), "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
            weight_map.insert(k.name(), Value::String(fname.clone()));
        }
        total_size += offset;
        let mut head = serde_json::to_vec(&Value::Object(header))?;
        head.resize(head.len().div_ceil(8) * 8, b' ');
        files.push((dir.join(&fname), head, tensors.len()));
    }

    // A writer thread streams each tensor to disk while the next one is generated (a rendezvous
    // channel: at most one tensor waits, so memory stays that of two tensors).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    std::thread::scope(|sc| -> Result<()> {
        let writer = sc.spawn(move || -> Result<()> {
            for (path, head, count) in &files {
                let err = || format!("cannot write {}", path.display());
                let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
                let mut w = BufWriter::with_capacity(8 << 20, file);
                w.write_all(&(head.len() as u64).to_le_bytes()).with_context(err)?;
                w.write_all(head).with_context(err)?;
                for _ in 0..*count {
                    let bytes = rx.recv().context("the tensor generator stopped")?;
                    w.write_all(&bytes).with_context(err)?;
                }
                w.into_inner().map_err(|e| e.into_error()).with_context(err)?;
            }
            Ok(())
        });
        for &k in shards.iter().flatten() {
            let data = plan.tensor(k);
            debug_assert_eq!(data.len(), plan.b.numel(k));
            if tx.send(to_bf16_bytes(&data)).is_err() {
                break; // the writer failed: its error is returned below
            }
        }
        drop(tx);
        writer.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;

    let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
    write_json(&dir.join(INDEX_FILE), &index)?;
    write_json(&dir.join("config.json"), &config_json(spec, plan.b.inter, plan.b.vocab))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(plan.b.vocab))?;
    Ok(())
}

/// The string of token `id` in every synthetic tokenizer.
pub fn token(id: usize) -> String {
    format!("tok{id:05}")
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, v)?;
    w.write_all(b"\n")?;
    w.flush().with_context(|| format!("cannot write {}", path.display()))
}

fn config_json(spec: &Spec, inter: usize, vocab: usize) -> Value {
    let moe = spec.experts > 0;
    let mut c = json!({
        "architectures": [if moe { "MixtralForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if moe { "mixtral" } else { "llama" },
        "hidden_size": spec.hidden,
        "intermediate_size": inter,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": vocab,
        "tie_word_embeddings": spec.tied,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": INIT_STD,
        "torch_dtype": "bfloat16",
    });
    if moe {
        let o = c.as_object_mut().expect("an object");
        o.insert("num_local_experts".into(), json!(spec.experts));
        o.insert("num_experts_per_tok".into(), json!(spec.experts.min(2)));
        if spec.shared_expert {
            o.insert("shared_expert_intermediate_size".into(), json!(inter));
        }
    }
    c
}

fn tokenizer_json(vocab: usize) -> Value {
    let v: Map<String, Value> = (0..vocab).map(|i| (token(i), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": null,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "vocab": v,
            "merges": [],
        },
    })
}

/// Which MLP a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ex {
    Dense,
    Expert(usize),
    Shared,
}

impl Ex {
    fn prefix(self) -> String {
        match self {
            Ex::Dense => "mlp".into(),
            Ex::Expert(e) => format!("mlp.experts.{e}"),
            Ex::Shared => "mlp.shared_expert".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    Input(usize),
    Post(usize),
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embed,
    Head,
    Norm(Norm),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    Router(usize),
    Gate(usize, Ex),
    Up(usize, Ex),
    Down(usize, Ex),
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Embed => "model.embed_tokens.weight".into(),
            Kind::Head => "lm_head.weight".into(),
            Kind::Norm(Norm::Input(l)) => format!("model.layers.{l}.input_layernorm.weight"),
            Kind::Norm(Norm::Post(l)) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Kind::Norm(Norm::Final) => "model.norm.weight".into(),
            Kind::Q(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            Kind::K(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            Kind::V(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            Kind::O(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            Kind::Router(l) => format!("model.layers.{l}.mlp.gate.weight"),
            Kind::Gate(l, e) => format!("model.layers.{l}.{}.gate_proj.weight", e.prefix()),
            Kind::Up(l, e) => format!("model.layers.{l}.{}.up_proj.weight", e.prefix()),
            Kind::Down(l, e) => format!("model.layers.{l}.{}.down_proj.weight", e.prefix()),
        }
    }

    fn mean(self) -> f32 {
        if matches!(self, Kind::Norm(_)) {
            1.0
        } else {
            0.0
        }
    }
}

/// Every tensor of a model, in the order they are written.
fn kinds(spec: &Spec) -> Vec<Kind> {
    let mut v = vec![Kind::Embed];
    for l in 0..spec.layers {
        v.extend([Kind::Norm(Norm::Input(l)), Kind::Q(l), Kind::K(l), Kind::V(l), Kind::O(l)]);
        v.push(Kind::Norm(Norm::Post(l)));
        let mlps: Vec<Ex> = if spec.experts == 0 {
            vec![Ex::Dense]
        } else {
            v.push(Kind::Router(l));
            (0..spec.experts).map(Ex::Expert).chain(spec.shared_expert.then_some(Ex::Shared)).collect()
        };
        for e in mlps {
            v.extend([Kind::Gate(l, e), Kind::Up(l, e), Kind::Down(l, e)]);
        }
    }
    v.push(Kind::Norm(Norm::Final));
    if !spec.tied {
        v.push(Kind::Head);
    }
    v
}

/// The matrix dimensions of a model (A's, or a derivative's after pruning and extension).
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    inter: usize,
    vocab: usize,
    q: usize,
    kv: usize,
    experts: usize,
}

impl Dims {
    fn of(spec: &Spec, inter: usize, vocab: usize) -> Self {
        Dims {
            hidden: spec.hidden,
            inter,
            vocab,
            q: spec.heads * spec.head_dim,
            kv: spec.kv_heads * spec.head_dim,
            experts: spec.experts,
        }
    }

    /// (rows, columns); a norm gain is one row of `hidden` columns.
    fn rc(&self, k: Kind) -> (usize, usize) {
        match k {
            Kind::Embed | Kind::Head => (self.vocab, self.hidden),
            Kind::Norm(_) => (1, self.hidden),
            Kind::Q(_) => (self.q, self.hidden),
            Kind::K(_) | Kind::V(_) => (self.kv, self.hidden),
            Kind::O(_) => (self.hidden, self.q),
            Kind::Router(_) => (self.experts, self.hidden),
            Kind::Gate(..) | Kind::Up(..) => (self.inter, self.hidden),
            Kind::Down(..) => (self.hidden, self.inter),
        }
    }

    fn shape(&self, k: Kind) -> Vec<usize> {
        match (k, self.rc(k)) {
            (Kind::Norm(_), (_, n)) => vec![n],
            (_, (r, c)) => vec![r, c],
        }
    }

    fn numel(&self, k: Kind) -> usize {
        let (r, c) = self.rc(k);
        r * c
    }
}

/// Everything needed to produce any tensor of model A or of a derivative, one at a time.
struct Plan<'a> {
    spec: &'a Spec,
    seed: u64,
    derive: Option<&'a Derive>,
    a: Dims,
    b: Dims,
}

impl<'a> Plan<'a> {
    fn new(spec: &'a Spec, seed: u64, derive: Option<&'a Derive>) -> Result<Self> {
        let a = Dims::of(spec, spec.intermediate, spec.vocab);
        let mut b = a;
        if let Some(d) = derive {
            if !(d.noise.is_finite() && d.noise >= 0.0) {
                bail!("derive: noise must be a finite number ≥ 0, not {}", d.noise);
            }
            if !(0.0..1.0).contains(&d.prune_units) {
                bail!("derive: prune_units must be in [0, 1), not {}", d.prune_units);
            }
            if !(d.extend_vocab.is_finite() && d.extend_vocab >= 0.0) {
                bail!("derive: extend_vocab must be a finite number ≥ 0, not {}", d.extend_vocab);
            }
            let dropped = (d.prune_units as f64 * spec.intermediate as f64).round() as usize;
            b.inter = spec.intermediate - dropped;
            ensure!(b.inter > 0, "derive: pruning {} leaves no MLP unit", d.prune_units);
            b.vocab = spec.vocab + (d.extend_vocab as f64 * spec.vocab as f64).round() as usize;
        }
        Ok(Plan { spec, seed, derive, a, b })
    }

    /// A's tensor that B's tensor `k` is made from (experts move when they are permuted).
    fn source(&self, k: Kind) -> Kind {
        let Some(d) = self.derive.filter(|d| d.permute_experts) else { return k };
        let moved = |l: usize, e: Ex| match e {
            Ex::Expert(i) => Ex::Expert(self.experts(l, d)[i]),
            other => other,
        };
        match k {
            Kind::Gate(l, e) => Kind::Gate(l, moved(l, e)),
            Kind::Up(l, e) => Kind::Up(l, moved(l, e)),
            Kind::Down(l, e) => Kind::Down(l, moved(l, e)),
            other => other,
        }
    }

    /// Model A's tensor `k`, or derivative B's tensor `k`, as f32 (row-major).
    fn tensor(&self, k: Kind) -> Vec<f32> {
        let src = self.source(k);
        let mut x = vec![0f32; self.a.numel(src)];
        fill_gaussian(&mut x, key(self.seed, &format!("weights/{}", src.name())), src.mean(), INIT_STD, false);
        let Some(d) = self.derive else { return x };
        let (_, mut cols) = self.a.rc(src);

        // 1. Prune / permute MLP units: gate and up rows, down columns.
        if d.permute_units || self.b.inter != self.a.inter {
            match src {
                Kind::Gate(l, e) | Kind::Up(l, e) => x = gather_rows(&x, cols, &self.units(l, e, d)),
                Kind::Down(l, e) => {
                    let idx = self.units(l, e, d);
                    x = gather_cols(&x, cols, &idx);
                    cols = idx.len();
                }
                _ => {}
            }
        }
        // 2. Permute heads: q rows and o columns by q head, k and v rows by KV head.
        if d.permute_heads {
            let hd = self.spec.head_dim;
            match k {
                Kind::Q(l) => x = gather_rows(&x, cols, &blocks(&self.heads(l, d).0, hd)),
                Kind::K(l) | Kind::V(l) => x = gather_rows(&x, cols, &blocks(&self.heads(l, d).1, hd)),
                Kind::O(l) => x = gather_cols(&x, cols, &blocks(&self.heads(l, d).0, hd)),
                _ => {}
            }
        }
        // 3. Permute experts: the expert tensors moved in `source`; the router rows move here.
        if d.permute_experts {
            if let Kind::Router(l) = k {
                x = gather_rows(&x, cols, &self.experts(l, d));
            }
        }
        // 4. Permute the residual channels: rows of what writes to the residual stream, columns of
        //    everything else (a norm gain is one row).
        if d.permute_channels {
            let pc = self.channels(d);
            x = match k {
                Kind::O(_) | Kind::Down(..) => gather_rows(&x, cols, &pc),
                _ => gather_cols(&x, cols, &pc),
            };
        }
        // 5. Rescale: norm gains × s and the columns reading after the norm ÷ s; up rows × u and
        //    down columns ÷ u.
        if d.rescale {
            let reads = match k {
                Kind::Q(l) | Kind::K(l) | Kind::V(l) => Some(Norm::Input(l)),
                Kind::Gate(l, _) | Kind::Up(l, _) | Kind::Router(l) => Some(Norm::Post(l)),
                Kind::Head => Some(Norm::Final),
                _ => None,
            };
            if let Some(n) = reads {
                scale_cols(&mut x, cols, &recip(&self.norm_scales(n, d)));
            }
            if let Kind::Norm(n) = k {
                if !(n == Norm::Final && self.spec.tied) {
                    scale_cols(&mut x, cols, &self.norm_scales(n, d));
                }
            }
            match src {
                Kind::Up(l, e) => scale_rows(&mut x, cols, &self.unit_scales(l, e, d)),
                Kind::Down(l, e) => scale_cols(&mut x, cols, &recip(&self.unit_scales(l, e, d))),
                _ => {}
            }
        }
        // 6. Extend the vocabulary: new embedding / head rows from the initial distribution.
        if self.b.vocab > self.a.vocab && matches!(k, Kind::Embed | Kind::Head) {
            let old = x.len();
            x.resize(self.b.numel(k), 0.0);
            fill_gaussian(&mut x[old..], key(d.seed, &format!("extend/{}", k.name())), 0.0, INIT_STD, false);
        }
        // 7. Noise, relative to the initial std.
        if d.noise > 0.0 {
            fill_gaussian(&mut x, key(d.seed, &format!("noise/{}", k.name())), 0.0, d.noise * INIT_STD, true);
        }
        x
    }

    /// B's MLP unit j is A's unit `units[j]` (in the MLP `e` of A, before experts move).
    fn units(&self, l: usize, e: Ex, d: &Derive) -> Vec<usize> {
        let mut p = perm(d.seed, &format!("units/{l}/{}", e.prefix()), self.a.inter);
        if self.b.inter < self.a.inter {
            p.truncate(self.b.inter);
            if !d.permute_units {
                p.sort_unstable();
            }
        }
        p
    }

    /// (q map, kv map): B's q head h is A's q head `q[h]`, B's KV head g is A's `kv[g]`.
    fn heads(&self, l: usize, d: &Derive) -> (Vec<usize>, Vec<usize>) {
        let group = self.spec.heads / self.spec.kv_heads;
        let kv = perm(d.seed, &format!("heads/{l}"), self.spec.kv_heads);
        let mut q = Vec::with_capacity(self.spec.heads);
        for (g, &src) in kv.iter().enumerate() {
            let within = perm(d.seed, &format!("heads/{l}/{g}"), group);
            q.extend(within.iter().map(|&j| src * group + j));
        }
        (q, kv)
    }

    /// B's expert e of layer l is A's expert `experts[e]`.
    fn experts(&self, l: usize, d: &Derive) -> Vec<usize> {
        perm(d.seed, &format!("experts/{l}"), self.spec.experts)
    }

    /// B's residual channel c is A's channel `channels[c]`.
    fn channels(&self, d: &Derive) -> Vec<usize> {
        perm(d.seed, "channels", self.spec.hidden)
    }

    fn norm_scales(&self, n: Norm, d: &Derive) -> Vec<f32> {
        scales(d.seed, &format!("rescale/{}", Kind::Norm(n).name()), self.spec.hidden)
    }

    fn unit_scales(&self, l: usize, e: Ex, d: &Derive) -> Vec<f32> {
        scales(d.seed, &format!("unit-scale/{l}/{}", e.prefix()), self.b.inter)
    }
}

/// A 64-bit key from a seed and a label (FNV-1a, then the SplitMix64 finaliser).
fn key(seed: u64, label: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ splitmix(seed);
    for &b in label.as_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rng(seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(key(seed, label))
}

fn perm(seed: u64, label: &str, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng(seed, label));
    p
}

fn scales(seed: u64, label: &str, n: usize) -> Vec<f32> {
    let mut r = rng(seed, label);
    (0..n).map(|_| r.gen_range(0.5f32..=2.0)).collect()
}

fn recip(s: &[f32]) -> Vec<f32> {
    s.iter().map(|v| 1.0 / v).collect()
}

/// Expand a map of blocks (heads) to a map of rows: block i of the output is block `map[i]`.
fn blocks(map: &[usize], size: usize) -> Vec<usize> {
    map.iter().flat_map(|&b| b * size..(b + 1) * size).collect()
}

/// Fill `out` (or add to it) with N(mean, std²): chunk c draws from stream c of `key`.
fn fill_gaussian(out: &mut [f32], key: u64, mean: f32, std: f32, add: bool) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = ChaCha8Rng::seed_from_u64(key);
        r.set_stream(c as u64);
        for pair in chunk.chunks_mut(2) {
            // Box–Muller on 24-bit uniforms: u1 in (0, 1], u2 in [0, 1).
            let u1 = ((r.next_u32() >> 8) as f32 + 1.0) * (1.0 / 16_777_216.0);
            let u2 = (r.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0);
            let rad = (-2.0 * u1.ln()).sqrt();
            let (s, co) = (std::f32::consts::TAU * u2).sin_cos();
            for (x, z) in pair.iter_mut().zip([rad * co, rad * s]) {
                *x = if add { *x + std * z } else { mean + std * z };
            }
        }
    });
}

/// Rows `idx` of a row-major matrix with `cols` columns.
fn gather_rows(x: &[f32], cols: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; idx.len() * cols];
    out.par_chunks_mut(cols).zip(idx.par_iter()).for_each(|(o, &i)| o.copy_from_slice(&x[i * cols..(i + 1) * cols]));
    out
}

/// Columns `idx` of a row-major matrix with `cols` columns.
fn gather_cols(x: &[f32], cols: usize, idx: &[usize]) -> Vec<f32> {
    let rows = x.len() / cols;
    let mut out = vec![0f32; rows * idx.len()];
    out.par_chunks_mut(idx.len()).zip(x.par_chunks(cols)).for_each(|(o, row)| {
        for (v, &i) in o.iter_mut().zip(idx) {
            *v = row[i];
        }
    });
    out
}

fn scale_cols(x: &mut [f32], cols: usize, s: &[f32]) {
    x.par_chunks_mut(cols).for_each(|row| row.iter_mut().zip(s).for_each(|(v, s)| *v *= s));
}

fn scale_rows(x: &mut [f32], cols: usize, s: &[f32]) {
    x.par_chunks_mut(cols).zip(s.par_iter()).for_each(|(row, s)| row.iter_mut().for_each(|v| *v *= s));
}

fn to_bf16_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() * 2];
    out.par_chunks_mut(2 * CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, v) in o.chunks_exact_mut(2).zip(x) {
            o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::path::PathBuf;

    struct T {
        shape: Vec<usize>,
        data: Vec<f32>,
    }

    impl T {
        fn cols(&self) -> usize {
            *self.shape.last().unwrap()
        }
        fn row(&self, i: usize) -> &[f32] {
            &self.data[i * self.cols()..(i + 1) * self.cols()]
        }
        fn rows(&self) -> usize {
            self.data.len() / self.cols()
        }
        /// The matrix transposed (row-major), so columns can be compared as rows.
        fn t(&self) -> T {
            let (r, c) = (self.rows(), self.cols());
            let data = (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| self.data[i * c + j]).collect();
            T { shape: vec![c, r], data }
        }
    }

    type Model = BTreeMap<String, T>;

    fn get<'m>(m: &'m Model, name: &str) -> &'m T {
        m.get(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Read a written model back with the safetensors crate, checking the index against the shards.
    fn read(dir: &Path) -> Model {
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
        let wm = index["weight_map"].as_object().unwrap();
        let files: BTreeSet<&str> = wm.values().map(|v| v.as_str().unwrap()).collect();
        let mut out = Model::new();
        let mut total = 0u64;
        for f in &files {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                assert_eq!(view.dtype(), Dtype::BF16, "{name}");
                assert_eq!(wm[&name].as_str(), Some(*f), "index puts {name} elsewhere");
                total += view.data().len() as u64;
                let data = view.data().chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                out.insert(name, T { shape: view.shape().to_vec(), data });
            }
        }
        assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
        assert_eq!(out.len(), wm.len(), "index lists tensors no shard holds");
        out
    }

    fn config(dir: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    }

    /// The tensors a Hugging Face Llama / Qwen-MoE checkpoint of this shape holds (written out
    /// independently of the module's own list).
    fn expected(spec: &Spec, inter: usize, vocab: usize) -> BTreeMap<String, Vec<usize>> {
        let (h, q, kv) = (spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim);
        let mut e = BTreeMap::new();
        e.insert("model.embed_tokens.weight".to_string(), vec![vocab, h]);
        e.insert("model.norm.weight".to_string(), vec![h]);
        if !spec.tied {
            e.insert("lm_head.weight".to_string(), vec![vocab, h]);
        }
        for l in 0..spec.layers {
            let p = format!("model.layers.{l}");
            e.insert(format!("{p}.input_layernorm.weight"), vec![h]);
            e.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
            e.insert(format!("{p}.self_attn.q_proj.weight"), vec![q, h]);
            e.insert(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
            e.insert(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
            e.insert(format!("{p}.self_attn.o_proj.weight"), vec![h, q]);
            let mut mlps = vec![];
            if spec.experts == 0 {
                mlps.push(format!("{p}.mlp"));
            } else {
                e.insert(format!("{p}.mlp.gate.weight"), vec![spec.experts, h]);
                mlps.extend((0..spec.experts).map(|x| format!("{p}.mlp.experts.{x}")));
                if spec.shared_expert {
                    mlps.push(format!("{p}.mlp.shared_expert"));
                }
            }
            for m in mlps {
                e.insert(format!("{m}.gate_proj.weight"), vec![inter, h]);
                e.insert(format!("{m}.up_proj.weight"), vec![inter, h]);
                e.insert(format!("{m}.down_proj.weight"), vec![h, inter]);
            }
        }
        e
    }

    fn write(spec: &Spec, seed: u64, d: Option<&Derive>) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), spec, seed, d).unwrap();
        let m = read(dir.path());
        (dir, m)
    }

    /// For each row of `b`, the row of `a` with the same bits (panics when there is none).
    fn find(a: &[f32], b: &[f32], len: usize) -> Vec<usize> {
        let key = |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let at: HashMap<Vec<u32>, usize> = a.chunks(len).enumerate().map(|(i, r)| (key(r), i)).collect();
        b.chunks(len).map(|r| *at.get(&key(r)).expect("a row of B that is no row of A")).collect()
    }

    fn find_rows(a: &T, b: &T) -> Vec<usize> {
        find(&a.data, &b.data, a.cols())
    }

    fn find_cols(a: &T, b: &T) -> Vec<usize> {
        find_rows(&a.t(), &b.t())
    }

    fn is_perm(p: &[usize]) -> bool {
        let mut s = p.to_vec();
        s.sort_unstable();
        s.iter().enumerate().all(|(i, &v)| i == v)
    }

    fn identity(p: &[usize]) -> bool {
        p.iter().enumerate().all(|(i, &v)| i == v)
    }

    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p: PathBuf| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect()
    }

    fn mean_std(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        (m, (x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n).sqrt())
    }

    fn corr(a: &[f32], b: &[f32]) -> f64 {
        let ((ma, sa), (mb, sb)) = (mean_std(a), mean_std(b));
        let cov = a.iter().zip(b).map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb)).sum::<f64>() / a.len() as f64;
        cov / (sa * sb)
    }

    fn moe() -> Spec {
        Spec { experts: 4, shared_expert: true, intermediate: 64, ..Spec::tiny() }
    }

    #[test]
    fn tiny_model_has_every_tensor_across_shards() {
        let spec = Spec::tiny();
        let (dir, m) = write(&spec, 1, None);
        let want = expected(&spec, spec.intermediate, spec.vocab);
        let got: BTreeMap<String, Vec<usize>> = m.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(spec.num_params(), m.values().map(|t| t.data.len() as u64).sum::<u64>());
        let shards: Vec<String> =
            files(dir.path()).into_keys().filter(|f| f.ends_with(".safetensors")).collect::<Vec<_>>();
        let n = shards.len();
        assert!(n >= 3, "{shards:?}");
        for (i, f) in shards.iter().enumerate() {
            assert_eq!(f, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
            let size = std::fs::metadata(dir.path().join(f)).unwrap().len();
            assert!(size <= spec.shard_bytes + 4096, "{f}: {size} bytes");
        }
        for (name, t) in &m {
            let (mean, std) = mean_std(&t.data);
            if name.contains("norm") {
                assert!((mean - 1.0).abs() < 0.01 && std > 0.01 && std < 0.03, "{name}: {mean} ± {std}");
            } else {
                assert!(mean.abs() < 0.002 && (std - 0.02).abs() < 0.0015, "{name}: {mean} ± {std}");
            }
        }
        let c = config(dir.path());
        assert_eq!(c["architectures"][0], "LlamaForCausalLM");
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["intermediate_size"], 256);
        assert_eq!(c["tie_word_embeddings"], false);
        let vocab = crate::invariants::vocab(&dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(vocab.len(), 300);
        assert_eq!(vocab["tok00299"], 299);
        assert_eq!(Spec::llama7b().num_params(), 6_738_415_616);
        let small = Spec::small().num_params();
        assert!((90_000_000..120_000_000).contains(&small), "{small}");
    }

    #[test]
    fn writes_are_deterministic_and_identity_derive_is_a() {
        // A vocabulary large enough that the embedding spans several random streams.
        let spec = Spec { vocab: 2100, ..Spec::tiny() };
        let a = tempfile::tempdir().unwrap();
        let a2 = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_model(a.path(), &spec, 5, None).unwrap();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        one.install(|| write_model(a2.path(), &spec, 5, None)).unwrap();
        write_model(b.path(), &spec, 5, Some(&Derive { seed: 99, ..Derive::default() })).unwrap();
        let fa = files(a.path());
        assert!(fa.len() >= 5);
        assert!(fa == files(a2.path()), "two writes of A differ");
        assert!(fa == files(b.path()), "a derivative without transforms differs from A");
        let c = tempfile::tempdir().unwrap();
        write_model(c.path(), &spec, 6, None).unwrap();
        let (ma, mc) = (read(a.path()), read(c.path()));
        let r = corr(&get(&ma, "model.embed_tokens.weight").data, &get(&mc, "model.embed_tokens.weight").data);
        assert!(r.abs() < 0.02, "two seeds correlate: {r}");
    }

    #[test]
    fn permute_units_heads_and_channels_are_consistent() {
        let spec = Spec::tiny();
        let (_a, a) = write(&spec, 3, None);

        let (_b, b) = write(&spec, 3, Some(&Derive { permute_units: true, seed: 1, ..Derive::default() }));
        let mut seen = vec![];
        for l in 0..spec.layers {
            let n = |s: &str| format!("model.layers.{l}.mlp.{s}_proj.weight");
            let p = find_rows(get(&a, &n("gate")), get(&b, &n("gate")));
            assert!(is_perm(&p) && !identity(&p));
            assert_eq!(p, find_rows(get(&a, &n("up")), get(&b, &n("up"))));
            assert_eq!(p, find_cols(get(&a, &n("down")), get(&b, &n("down"))));
            seen.push(p);
            let q = format!("model.layers.{l}.self_attn.q_proj.weight");
            assert_eq!(get(&a, &q).data, get(&b, &q).data);
        }
        assert_ne!(seen[0], seen[1], "every layer got the same permutation");

        let (_b, b) = write(&spec, 3, Some(&Derive { permute_heads: true, seed: 2, ..Derive::default() }));
        let group = spec.heads / spec.kv_heads;
        let block = spec.head_dim * spec.hidden;
        let mut moved = false;
        for l in 0..spec.layers {
            let n = |s: &str| format!("model.layers.{l}.self_attn.{s}_proj.weight");
            let q = find(&get(&a, &n("q")).data, &get(&b, &n("q")).data, block);
            let k = find(&get(&a, &n("k")).data, &get(&b, &n("k")).data, block);
            let v = find(&get(&a, &n("v")).data, &get(&b, &n("v")).data, block);
            let o = find(&get(&a, &n("o")).t().data, &get(&b, &n("o")).t().data, block);
            assert!(is_perm(&q) && is_perm(&k));
            assert_eq!(k, v);
            assert_eq!(q, o);
            for (h, &src) in q.iter().enumerate() {
                assert_eq!(src / group, k[h / group], "layer {l}: q head {h} left its KV group");
            }
            moved |= !identity(&q);
            let g = format!("model.layers.{l}.mlp.gate_proj.weight");
            assert_eq!(get(&a, &g).data, get(&b, &g).data);
        }
        assert!(moved);

        let (_b, b) = write(&spec, 3, Some(&Derive { permute_channels: true, seed: 3, ..Derive::default() }));
        let pc = find_cols(get(&a, "model.embed_tokens.weight"), get(&b, "model.embed_tokens.weight"));
        assert!(is_perm(&pc) && !identity(&pc));
        for (name, ta) in &a {
            let tb = get(&b, name);
            let residual_rows = name.contains("o_proj") || name.contains("down_proj");
            if residual_rows {
                assert_eq!(find_rows(ta, tb), pc, "{name}");
            } else if ta.shape.len() == 1 {
                let want: Vec<f32> = pc.iter().map(|&c| ta.data[c]).collect();
                assert_eq!(tb.data, want, "{name}");
            } else {
                assert_eq!(find_cols(ta, tb), pc, "{name}");
            }
        }
    }

    #[test]
    fn prune_and_extend_vocab() {
        let spec = Spec::tiny();
        let (_a, a) = write(&spec, 4, None);
        let (bd, b) = write(&spec, 4, Some(&Derive { prune_units: 0.25, seed: 8, ..Derive::default() }));
        assert_eq!(config(bd.path())["intermediate_size"], 192);
        let got: BTreeMap<String, Vec<usize>> = b.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
        assert_eq!(got, expected(&spec, 192, spec.vocab));
        for l in 0..spec.layers {
            let n = |s: &str| format!("model.layers.{l}.mlp.{s}_proj.weight");
            let p = find_rows(get(&a, &n("gate")), get(&b, &n("gate")));
            assert_eq!(p.len(), 192);
            assert!(p.windows(2).all(|w| w[0] < w[1]), "kept units are distinct and in order");
            assert_eq!(p, find_rows(get(&a, &n("up")), get(&b, &n("up"))));
            assert_eq!(p, find_cols(get(&a, &n("down")), get(&b, &n("down"))));
        }

        let (bd, b) = write(&spec, 4, Some(&Derive { extend_vocab: 0.1, seed: 8, ..Derive::default() }));
        assert_eq!(config(bd.path())["vocab_size"], 330);
        for name in ["model.embed_tokens.weight", "lm_head.weight"] {
            let (ta, tb) = (get(&a, name), get(&b, name));
            assert_eq!(tb.shape, vec![330, spec.hidden]);
            assert_eq!(tb.data[..ta.data.len()], ta.data[..]);
            let (_, std) = mean_std(&tb.data[ta.data.len()..]);
            assert!((std - 0.02).abs() < 0.003, "new rows: std {std}");
        }
        let q = "model.layers.1.self_attn.q_proj.weight";
        assert_eq!(get(&a, q).data, get(&b, q).data);
        let va = crate::invariants::vocab(&_a.path().join("tokenizer.json")).unwrap();
        let vb = crate::invariants::vocab(&bd.path().join("tokenizer.json")).unwrap();
        assert_eq!(vb.len(), 330);
        assert!(va.iter().all(|(t, id)| vb.get(t) == Some(id)), "A's tokens keep their ids");
        let new: Vec<usize> = vb.iter().filter(|(t, _)| !va.contains_key(*t)).map(|(_, &id)| id).collect();
        assert_eq!(new.len(), 30);
        assert!(new.iter().all(|&id| id >= 300));
    }

    #[test]
    fn noise_sets_the_correlation() {
        let spec = Spec { vocab: 2000, ..Spec::tiny() };
        let (_a, a) = write(&spec, 6, None);
        let (_b, b) = write(&spec, 6, Some(&Derive { noise: 3.0, seed: 2, ..Derive::default() }));
        let name = "model.embed_tokens.weight";
        let r = corr(&get(&a, name).data, &get(&b, name).data);
        let want = 1.0 / 10f64.sqrt();
        assert!((r - want).abs() < 0.02, "corr {r}, want {want}");
        let (_, std) = mean_std(&get(&b, name).data);
        assert!((std - 0.02 * 10f64.sqrt()).abs() < 0.003, "std {std}");
        let g = "model.layers.0.input_layernorm.weight";
        let (mean, std) = mean_std(&get(&b, g).data);
        assert!((mean - 1.0).abs() < 0.03 && std > 0.04, "noisy gains: {mean} ± {std}");
    }

    #[test]
    fn moe_names_and_permute_experts() {
        let spec = moe();
        let (ad, a) = write(&spec, 9, None);
        let got: BTreeMap<String, Vec<usize>> = a.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
        assert_eq!(got, expected(&spec, spec.intermediate, spec.vocab));
        assert!(!a.contains_key("model.layers.0.mlp.gate_proj.weight"));
        let c = config(ad.path());
        assert_eq!(c["architectures"][0], "MixtralForCausalLM");
        assert_eq!(c["num_local_experts"], 4);

        let (_b, b) = write(&spec, 9, Some(&Derive { permute_experts: true, seed: 5, ..Derive::default() }));
        let mut moved = false;
        for l in 0..spec.layers {
            let router = format!("model.layers.{l}.mlp.gate.weight");
            let pe = find_rows(get(&a, &router), get(&b, &router));
            assert!(is_perm(&pe));
            moved |= !identity(&pe);
            for (e, &src) in pe.iter().enumerate() {
                for p in ["gate", "up", "down"] {
                    let nb = format!("model.layers.{l}.mlp.experts.{e}.{p}_proj.weight");
                    let na = format!("model.layers.{l}.mlp.experts.{src}.{p}_proj.weight");
                    assert_eq!(get(&b, &nb).data, get(&a, &na).data, "{nb}");
                }
            }
            let s = format!("model.layers.{l}.mlp.shared_expert.down_proj.weight");
            assert_eq!(get(&b, &s).data, get(&a, &s).data);
        }
        assert!(moved);
    }

    // A reference forward pass (f32, Hugging Face Llama / Qwen-MoE semantics) to check that the
    // function-preserving transforms preserve the function.

    fn linear(w: &T, x: &[f32]) -> Vec<f32> {
        (0..w.rows()).map(|i| w.row(i).iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    fn rmsnorm(x: &[f32], g: &T) -> Vec<f32> {
        let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5).sqrt();
        x.iter().zip(&g.data).map(|(v, g)| v * inv * g).collect()
    }

    fn rope(x: &mut [f32], hd: usize, pos: usize) {
        for head in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let th = pos as f32 / 10000f32.powf(2.0 * i as f32 / hd as f32);
                let (s, c) = th.sin_cos();
                let (a, b) = (head[i], head[i + hd / 2]);
                head[i] = a * c - b * s;
                head[i + hd / 2] = b * c + a * s;
            }
        }
    }

    fn mlp(m: &Model, p: &str, h: &[f32]) -> Vec<f32> {
        let g = linear(get(m, &format!("{p}.gate_proj.weight")), h);
        let u = linear(get(m, &format!("{p}.up_proj.weight")), h);
        let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        linear(get(m, &format!("{p}.down_proj.weight")), &act)
    }

    /// (every block's output at every position, logits at every position).
    fn forward(m: &Model, spec: &Spec, tokens: &[usize]) -> (Vec<Vec<Vec<f32>>>, Vec<Vec<f32>>) {
        let (hd, group) = (spec.head_dim, spec.heads / spec.kv_heads);
        let emb = get(m, "model.embed_tokens.weight");
        let mut xs: Vec<Vec<f32>> = tokens.iter().map(|&t| emb.row(t).to_vec()).collect();
        let mut trace = vec![];
        for l in 0..spec.layers {
            let p = format!("model.layers.{l}");
            let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
            for (pos, x) in xs.iter().enumerate() {
                let h = rmsnorm(x, get(m, &format!("{p}.input_layernorm.weight")));
                let mut q = linear(get(m, &format!("{p}.self_attn.q_proj.weight")), &h);
                let mut k = linear(get(m, &format!("{p}.self_attn.k_proj.weight")), &h);
                rope(&mut q, hd, pos);
                rope(&mut k, hd, pos);
                qs.push(q);
                ks.push(k);
                vs.push(linear(get(m, &format!("{p}.self_attn.v_proj.weight")), &h));
            }
            let mut block = vec![];
            for (t, qt) in qs.iter().enumerate() {
                let mut att = vec![0f32; spec.heads * hd];
                for h in 0..spec.heads {
                    let (qh, g) = (&qt[h * hd..(h + 1) * hd], h / group);
                    let sc: Vec<f32> = (0..=t)
                        .map(|s| qh.iter().zip(&ks[s][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f32>())
                        .map(|v| v / (hd as f32).sqrt())
                        .collect();
                    let mx = sc.iter().cloned().fold(f32::MIN, f32::max);
                    let z: f32 = sc.iter().map(|v| (v - mx).exp()).sum();
                    for (s, v) in sc.iter().enumerate() {
                        let w = (v - mx).exp() / z;
                        for i in 0..hd {
                            att[h * hd + i] += w * vs[s][g * hd + i];
                        }
                    }
                }
                block.push(linear(get(m, &format!("{p}.self_attn.o_proj.weight")), &att));
            }
            for (x, o) in xs.iter_mut().zip(&block) {
                x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
            }
            trace.push(block);
            let mut block = vec![];
            for x in &xs {
                let h = rmsnorm(x, get(m, &format!("{p}.post_attention_layernorm.weight")));
                if spec.experts == 0 {
                    block.push(mlp(m, &format!("{p}.mlp"), &h));
                    continue;
                }
                let r = linear(get(m, &format!("{p}.mlp.gate.weight")), &h);
                let mut top: Vec<usize> = (0..r.len()).collect();
                top.sort_by(|&i, &j| r[j].total_cmp(&r[i]));
                top.truncate(2);
                let z: f32 = top.iter().map(|&e| r[e].exp()).sum();
                let mut out = vec![0f32; spec.hidden];
                for &e in &top {
                    let y = mlp(m, &format!("{p}.mlp.experts.{e}"), &h);
                    out.iter_mut().zip(y).for_each(|(o, y)| *o += r[e].exp() / z * y);
                }
                if spec.shared_expert {
                    out.iter_mut().zip(mlp(m, &format!("{p}.mlp.shared_expert"), &h)).for_each(|(o, y)| *o += y);
                }
                block.push(out);
            }
            for (x, o) in xs.iter_mut().zip(&block) {
                x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
            }
            trace.push(block);
        }
        let head = if spec.tied { emb } else { get(m, "lm_head.weight") };
        let logits = xs.iter().map(|x| linear(head, &rmsnorm(x, get(m, "model.norm.weight")))).collect();
        (trace, logits)
    }

    fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
        let (mut d, mut n) = (0f64, 0f64);
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            d += (*x as f64 - *y as f64).powi(2);
            n += (*x as f64).powi(2);
        }
        (d / n).sqrt()
    }

    #[test]
    fn function_preserving_transforms_preserve_the_function() {
        let tokens = [3, 17, 250, 42, 99, 3];
        let all = Derive {
            permute_units: true,
            permute_heads: true,
            permute_channels: true,
            permute_experts: true,
            rescale: true,
            seed: 21,
            ..Derive::default()
        };
        for spec in [Spec::tiny(), Spec { tied: true, ..Spec::tiny() }, moe()] {
            let (_a, a) = write(&spec, 12, None);
            let (_b, b) = write(&spec, 12, Some(&all));
            let (_c, c) = write(&spec, 13, None);
            let gate = if spec.experts == 0 { "mlp.gate_proj" } else { "mlp.experts.1.gate_proj" };
            let g = format!("model.layers.0.{gate}.weight");
            assert!(corr(&get(&a, &g).data, &get(&b, &g).data).abs() < 0.1, "B is not visibly different");
            let gain = "model.layers.1.input_layernorm.weight";
            assert!(mean_std(&get(&b, gain).data).1 > 0.2, "norm gains were not rescaled");

            let pc = find_cols(get(&a, "model.embed_tokens.weight"), get(&b, "model.embed_tokens.weight"));
            let (ta, la) = forward(&a, &spec, &tokens);
            let (tb, lb) = forward(&b, &spec, &tokens);
            let (_, lc) = forward(&c, &spec, &tokens);
            for (i, (ba, bb)) in ta.iter().zip(&tb).enumerate() {
                let ba: Vec<Vec<f32>> = ba.iter().map(|x| pc.iter().map(|&c| x[c]).collect()).collect();
                let e = rel_err(&ba, bb);
                assert!(e < 0.03, "{spec:?}: block {i} differs by {e}");
            }
            let e = rel_err(&la, &lb);
            assert!(e < 0.03, "{spec:?}: logits differ by {e}");
            assert!(rel_err(&la, &lc) > 0.5, "an unrelated model computes the same function");
        }
    }
}
