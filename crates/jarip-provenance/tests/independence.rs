//! The lineage hypothesis test on HF-layout models written by [`jarip_provenance::synth`]
//! (bf16, sharded with an index, random weights in the init's distribution): p-values of
//! independent pairs are uniform; every disguise of a derivative is `derived` with p below α; a
//! derivative drowned in noise is never `derived` and the report states the test's power;
//! tampered files are refused with the file and tensor named.

use jarip_provenance::independence::{test_paths, TestOptions, TestReport, Verdict};
use jarip_provenance::synth::{write_model, Derive, Spec};
use std::path::{Path, PathBuf};

/// Small enough for debug builds, large enough for the test to have power (ρ_min ≈ 0.1).
fn spec() -> Spec {
    Spec { layers: 2, hidden: 256, intermediate: 768, heads: 4, kv_heads: 2, head_dim: 64, vocab: 1000, ..Spec::tiny() }
}

fn write(dir: &Path, name: &str, spec: &Spec, seed: u64, derive: Option<&Derive>) -> PathBuf {
    let p = dir.join(name);
    write_model(&p, spec, seed, derive).unwrap();
    p
}

fn test(a: &Path, b: &Path) -> TestReport {
    test_paths(a, b, &TestOptions::default()).unwrap()
}

/// The model's shard files, in order.
fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "the test wants several shards: {v:?}");
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().to_string()
}

fn assert_derived(r: &TestReport, what: &str) {
    assert_eq!(r.verdict, Verdict::Derived, "{what}: {:#?}", r.reasons);
    assert!(r.log10_p < -6.0, "{what}: log10 p {}", r.log10_p);
}

#[test]
fn independent_pairs_have_uniform_p_values() {
    let d = tempfile::tempdir().unwrap();
    let spec = Spec { layers: 1, ..Spec::tiny() };
    let pairs = 100;
    let mut ps = Vec::new();
    for i in 0..pairs {
        let a = write(d.path(), "a", &spec, 1000 + 2 * i, None);
        let b = write(d.path(), "b", &spec, 1001 + 2 * i, None);
        let r = test(&a, &b);
        assert_ne!(r.verdict, Verdict::Derived, "pair {i}: {:#?}", r.reasons);
        ps.push(r.p_value);
    }
    let rate = |alpha: f64| ps.iter().filter(|&&p| p < alpha).count();
    // Binomial(100, 0.01) ≥ 5 has probability 0.003; Binomial(100, 0.1) outside [3, 20], 0.002.
    assert!(rate(0.01) <= 4, "{} of {pairs} below 0.01: {ps:?}", rate(0.01));
    let r10 = rate(0.1);
    assert!((3..=20).contains(&r10), "{r10} of {pairs} below 0.1: {ps:?}");
    // Kolmogorov–Smirnov distance to the uniform: 0.163 is the 1 % critical value at n = 100.
    ps.sort_by(f64::total_cmp);
    let ks = ps
        .iter()
        .enumerate()
        .map(|(i, &p)| (p - i as f64 / 100.0).abs().max(((i + 1) as f64 / 100.0 - p).abs()))
        .fold(0.0, f64::max);
    assert!(ks < 0.163, "KS distance {ks}: {ps:?}");
}

#[test]
fn independent_seeds_are_unrelated_with_a_power_statement() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a", &spec(), 1, None);
    let b = write(d.path(), "b", &spec(), 2, None);
    let r = test(&a, &b);
    assert_eq!(r.verdict, Verdict::Unrelated, "{:#?}", r.reasons);
    let rho = r.rho_min.expect("a power statement");
    assert!(rho > 0.0 && rho < 0.3, "rho_min {rho}");
    assert!(r.reasons.iter().any(|x| x.contains("power")), "{:#?}", r.reasons);
    // Every block and the residual channels are tested; only the norm gains are folded in.
    assert_eq!(r.layers.len(), 3);
    assert!(r.unmatched_a.is_empty() && r.unmatched_b.is_empty(), "{:?} {:?}", r.unmatched_a, r.unmatched_b);
}

#[test]
fn every_disguise_of_a_derivative_is_derived() {
    let d = tempfile::tempdir().unwrap();
    let s = spec();
    let a = write(d.path(), "a", &s, 7, None);
    let cases: Vec<(&str, Derive)> = vec![
        ("light fine-tune (noise 0.3 std)", Derive { noise: 0.3, seed: 1, ..Default::default() }),
        ("heavy noise (4 × std)", Derive { noise: 4.0, seed: 2, ..Default::default() }),
        (
            "permuted units, heads and channels, noise 3 × std",
            Derive {
                noise: 3.0,
                permute_units: true,
                permute_heads: true,
                permute_channels: true,
                seed: 3,
                ..Default::default()
            },
        ),
        (
            "function-preserving rescaling, noise 1 × std",
            Derive { rescale: true, noise: 1.0, seed: 4, ..Default::default() },
        ),
        (
            "25 % of MLP units pruned, permuted",
            Derive { prune_units: 0.25, permute_units: true, noise: 1.0, seed: 5, ..Default::default() },
        ),
        (
            "vocabulary extended by 10 %",
            Derive { extend_vocab: 0.1, noise: 1.0, permute_channels: true, seed: 6, ..Default::default() },
        ),
    ];
    for (what, derive) in cases {
        let b = write(d.path(), "b", &s, 7, Some(&derive));
        let r = test(&a, &b);
        assert_derived(&r, what);
        // B against A gives the same answer as A against B.
        assert_derived(&test(&b, &a), what);
    }
}

#[test]
fn mixture_of_experts_matched_expert_to_expert() {
    let d = tempfile::tempdir().unwrap();
    let s = Spec { experts: 4, shared_expert: true, intermediate: 256, ..spec() };
    let a = write(d.path(), "a", &s, 11, None);
    let b = write(
        d.path(),
        "b",
        &s,
        11,
        Some(&Derive { permute_experts: true, permute_units: true, noise: 2.0, seed: 9, ..Default::default() }),
    );
    let r = test(&a, &b);
    assert_derived(&r, "permuted experts");
    let experts: Vec<_> = r.groups.iter().filter(|g| g.kind.starts_with("mlp.expert")).collect();
    assert_eq!(experts.len(), 2 * 4, "{:?}", r.groups.iter().map(|g| &g.kind).collect::<Vec<_>>());
    assert!(experts.iter().all(|g| g.log10_p < -6.0), "each expert found its partner");
    assert!(r.groups.iter().any(|g| g.kind == "mlp.shared_expert"));
    let c = write(d.path(), "c", &s, 12, None);
    assert_ne!(test(&a, &c).verdict, Verdict::Derived);
}

#[test]
fn a_derivative_drowned_in_noise_is_never_derived() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a", &spec(), 21, None);
    let b = write(d.path(), "b", &spec(), 21, Some(&Derive { noise: 1000.0, seed: 3, ..Default::default() }));
    let r = test(&a, &b);
    assert_ne!(r.verdict, Verdict::Derived, "{:#?}", r.reasons);
    assert!(r.rho_min.is_some() && r.reasons.iter().any(|x| x.contains("power")), "{:#?}", r.reasons);
}

#[test]
fn tampered_files_are_refused_naming_file_and_tensor() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a", &spec(), 1, None);
    let err = |b: &Path| format!("{:#}", test_paths(&a, b, &TestOptions::default()).expect_err("an error"));

    // A shard cut short.
    let t = write(d.path(), "truncated", &spec(), 2, None);
    let shard = shards(&t)[1].clone();
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    let e = err(&t);
    assert!(e.contains(&file_name(&shard)) && e.contains("tensor"), "{e}");

    // A shard named in the index is missing.
    let m = write(d.path(), "missing", &spec(), 3, None);
    let gone = shards(&m)[2].clone();
    std::fs::remove_file(&gone).unwrap();
    let e = err(&m);
    assert!(e.contains(&file_name(&gone)) && e.contains("model B"), "{e}");

    // Pickled weights are never loaded.
    let p = d.path().join("pickle");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("pytorch_model.bin"), b"\x80\x04pickle").unwrap();
    let e = err(&p);
    assert!(e.contains("pytorch_model.bin") && e.contains("pickle"), "{e}");

    // NaN weights: the error names the tensor.
    let n = write(d.path(), "nan", &spec(), 4, None);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n.join("model.safetensors.index.json")).unwrap()).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    let file = n.join(index["weight_map"][name].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    let start = 8 + hlen + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bytes = bytes;
    bytes[start..start + 2].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let e = err(&n);
    assert!(e.contains(name) && e.contains("non-finite"), "{e}");
}

/// A tensor's shape and f32 values.
type Values = (Vec<usize>, Vec<f32>);

/// All tensors of a synthetic model.
fn load_all(dir: &Path) -> std::collections::BTreeMap<String, Values> {
    let mut out = std::collections::BTreeMap::new();
    for f in shards(dir) {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            let data = v.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
            out.insert(name.to_string(), (v.shape().to_vec(), data));
        }
    }
    out
}

fn transpose(shape: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (r, c) = (shape[0], shape[1]);
    let mut t = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    (vec![c, r], t)
}

/// The synthetic Llama model in GPT-2's layout: Conv1D weights stored [in, out], q/k/v fused into
/// `c_attn`, tied head, no gate; one f32 `model.safetensors` and the tokenizer.
fn as_gpt2(src: &Path, dst: &Path, layers: usize) -> PathBuf {
    let t = load_all(src);
    let mut out: Vec<(String, Values)> = vec![
        ("wte.weight".into(), t["model.embed_tokens.weight"].clone()),
        ("ln_f.weight".into(), t["model.norm.weight"].clone()),
    ];
    for i in 0..layers {
        let g = |n: &str| t[&format!("model.layers.{i}.{n}.weight")].clone();
        let (q, k, v) = (g("self_attn.q_proj"), g("self_attn.k_proj"), g("self_attn.v_proj"));
        let qkv = (vec![q.0[0] + k.0[0] + v.0[0], q.0[1]], [q.1, k.1, v.1].concat());
        let h = |n: &str| format!("h.{i}.{n}.weight");
        out.push((h("ln_1"), g("input_layernorm")));
        out.push((h("ln_2"), g("post_attention_layernorm")));
        out.push((h("attn.c_attn"), transpose(&qkv.0, &qkv.1)));
        let o = g("self_attn.o_proj");
        out.push((h("attn.c_proj"), transpose(&o.0, &o.1)));
        let up = g("mlp.up_proj");
        out.push((h("mlp.c_fc"), transpose(&up.0, &up.1)));
        let down = g("mlp.down_proj");
        out.push((h("mlp.c_proj"), transpose(&down.0, &down.1)));
    }
    write_f32(dst, out, src)
}

/// One f32 `model.safetensors` in `dst`, with the tokenizer of `like`.
fn write_f32(dst: &Path, tensors: Vec<(String, Values)>, like: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, (s, v))| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    std::fs::copy(like.join("tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    dst.to_path_buf()
}

#[test]
fn gpt2_layout_conv1d_and_fused_attention() {
    let d = tempfile::tempdir().unwrap();
    let s = spec();
    let a = as_gpt2(&write(d.path(), "a", &s, 31, None), &d.path().join("ga"), s.layers);
    let derive = Derive {
        noise: 2.0,
        permute_units: true,
        permute_heads: true,
        permute_channels: true,
        seed: 4,
        ..Default::default()
    };
    let b = as_gpt2(&write(d.path(), "b", &s, 31, Some(&derive)), &d.path().join("gb"), s.layers);
    let c = as_gpt2(&write(d.path(), "c", &s, 32, None), &d.path().join("gc"), s.layers);
    let r = test(&a, &b);
    assert_derived(&r, "GPT-2 layout");
    let kinds: Vec<&str> = r.groups.iter().map(|g| g.kind.as_str()).collect();
    assert!(kinds.contains(&"mlp") && kinds.contains(&"attn.qkv") && kinds.contains(&"attn.o"), "{kinds:?}");
    assert!(r.groups.iter().filter(|g| g.kind == "mlp").all(|g| g.units_a == s.intermediate), "units read as columns");
    assert_eq!(test(&a, &c).verdict, Verdict::Unrelated);
}

/// B with block `drop` removed and the later blocks renumbered, as one f32 safetensors file.
fn without_block(src: &Path, dst: &Path, drop: usize) -> PathBuf {
    let t = load_all(src);
    let mut out = Vec::new();
    for (name, (shape, v)) in t {
        let renamed = match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (i, tail) = rest.split_once('.').unwrap();
                let i: usize = i.parse().unwrap();
                if i == drop {
                    continue;
                }
                format!("model.layers.{}.{tail}", if i > drop { i - 1 } else { i })
            }
            None => name,
        };
        out.push((renamed, (shape, v)));
    }
    write_f32(dst, out, src)
}

#[test]
fn a_dropped_block_is_paired_past() {
    let d = tempfile::tempdir().unwrap();
    let s = Spec { layers: 3, ..spec() };
    let a = write(d.path(), "a", &s, 41, None);
    let derive = Derive { noise: 1.0, permute_units: true, permute_channels: true, seed: 8, ..Default::default() };
    let b = without_block(&write(d.path(), "b", &s, 41, Some(&derive)), &d.path().join("b2"), 1);
    let r = test(&a, &b);
    assert_derived(&r, "a block dropped");
    let last = r.groups.iter().find(|g| g.kind == "mlp" && g.layer == Some(2)).expect("A's last block tested");
    assert_eq!(last.layer_b, Some(1), "A's block 2 is B's block 1");
    assert!(last.log10_p < -6.0, "{}", last.log10_p);
    assert!(r.warnings.iter().any(|w| w.contains("different depths")), "{:?}", r.warnings);
}

#[test]
fn tied_embeddings_and_a_head_on_one_side_only() {
    let d = tempfile::tempdir().unwrap();
    let tied = Spec { tied: true, ..spec() };
    let a = write(d.path(), "a", &tied, 51, None);
    let derive = Derive { noise: 2.0, permute_channels: true, permute_units: true, seed: 2, ..Default::default() };
    let b = write(d.path(), "b", &tied, 51, Some(&derive));
    assert_derived(&test(&a, &b), "tied embeddings");
    // An untied model against a tied one: the head has no partner and is listed, not dropped.
    let untied = write(d.path(), "u", &spec(), 52, None);
    let r = test(&untied, &a);
    assert_ne!(r.verdict, Verdict::Derived);
    assert!(r.unmatched_a.iter().any(|n| n == "lm_head.weight"), "{:?}", r.unmatched_a);
}

/// `src` with `features` token features shared by every model (the same values per token, like
/// frequency or length) added to its embedding, each loading on the channels with weights drawn
/// from `seed` (so each model encodes them in its own channels), at `strength` × the init spread.
fn with_shared_features(src: &Path, dst: &Path, features: usize, strength: f32, seed: u64) -> PathBuf {
    use rand::{Rng, SeedableRng};
    let mut t = load_all(src);
    let (shape, e) = t.get_mut("model.embed_tokens.weight").unwrap();
    let (vocab, d) = (shape[0], shape[1]);
    let mut shared = rand_chacha::ChaCha8Rng::seed_from_u64(777); // the same for every model
    let f: Vec<Vec<f32>> =
        (0..features).map(|_| (0..vocab).map(|_| shared.gen::<f32>() * 2.0 - 1.0).collect()).collect();
    let mut own = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for feat in &f {
        let w: Vec<f32> = (0..d).map(|_| (own.gen::<f32>() * 2.0 - 1.0) * strength * 0.02 * 3f32.sqrt()).collect();
        for (tok, &ft) in feat.iter().enumerate() {
            for c in 0..d {
                e[tok * d + c] += ft * 3f32.sqrt() * w[c];
            }
        }
    }
    write_f32(dst, t.into_iter().collect(), src)
}

#[test]
fn token_features_every_model_learns_do_not_look_like_shared_weights() {
    // Two independent models whose embeddings carry the same four token features (each at the
    // init's own spread, in channels of each model's choosing): the residual channels of A and B
    // then correlate through the features, and matching would pair channels that load alike.
    let d = tempfile::tempdir().unwrap();
    let a = with_shared_features(&write(d.path(), "a", &spec(), 61, None), &d.path().join("fa"), 4, 1.0, 1);
    let b = with_shared_features(&write(d.path(), "b", &spec(), 62, None), &d.path().join("fb"), 4, 1.0, 2);
    let r = test(&a, &b);
    assert_ne!(r.verdict, Verdict::Derived, "{:#?}", r.reasons);
    let residual = r.groups.iter().find(|g| g.kind == "residual").unwrap();
    assert!(residual.log10_p > -3.0, "residual channels: z {} log10 p {}", residual.z, residual.log10_p);
    // The features do not hide a real derivative.
    let c = with_shared_features(
        &write(
            d.path(),
            "c",
            &spec(),
            61,
            Some(&Derive { noise: 2.0, permute_channels: true, seed: 5, ..Default::default() }),
        ),
        &d.path().join("fc"),
        4,
        1.0,
        3,
    );
    assert_derived(&test(&a, &c), "a derivative whose embedding also carries the features");
}
