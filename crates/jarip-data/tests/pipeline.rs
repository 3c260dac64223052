//! End-to-end tests of ingest → prepare → shards → reader on tiny generated inputs.

use jarip_data::*;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Byte-level test encoder: byte b → id b + offset; `<|bos|>` = 0.
struct ByteEncoder {
    offset: u32,
    sha: String,
}

impl ByteEncoder {
    fn small() -> Self {
        Self { offset: 1, sha: "ab".repeat(32) }
    }
    fn large() -> Self {
        Self { offset: 70_000, sha: "cd".repeat(32) }
    }
    fn encode(&self, s: &str) -> Vec<u32> {
        s.bytes().map(|b| b as u32 + self.offset).collect()
    }
}

impl TokenEncoder for ByteEncoder {
    fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
    fn bos_id(&self) -> u32 {
        0
    }
    fn vocab_size(&self) -> usize {
        256 + self.offset as usize
    }
    fn sha256(&self) -> String {
        self.sha.clone()
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A parquet file with an optional `text` column (None = null) and an `id` column, in two row groups.
fn write_parquet(path: &Path, texts: &[Option<&str>]) {
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type("message doc { optional binary text (UTF8); required int32 id; }")
            .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).unwrap();
    let mid = texts.len() / 2;
    for part in [&texts[..mid], &texts[mid..]] {
        let mut rg = w.next_row_group().unwrap();
        let values: Vec<ByteArray> = part.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        let defs: Vec<i16> = part.iter().map(|t| t.is_some() as i16).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
        col.close().unwrap();
        let ids: Vec<i32> = (0..part.len() as i32).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int32Type>().write_batch(&ids, None, None).unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn texts(src: &DocumentSource) -> anyhow::Result<Vec<String>> {
    src.iter().map(|d| d.map(|d| d.text)).collect()
}

fn source(inputs: &[PathBuf]) -> DocumentSource {
    DocumentSource::new(inputs, IngestOptions::default()).unwrap()
}

fn jsonl(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .map(|t| serde_json::json!({"text": t, "meta": {"n": [1, 2]}}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

#[test]
fn reads_every_format_directory_and_glob_in_sorted_order() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("corpus");
    write(&r.join("a.txt"), "plain text 가".as_bytes());
    write(&r.join("b.txt.gz"), &gz("gzip text 나".as_bytes()));
    write(&r.join("c.txt.zst"), &zst("zstd text 다".as_bytes()));
    write(&r.join("d.jsonl"), &jsonl(&["j1", "j2"]));
    write(&r.join("e.jsonl.gz"), &gz(&jsonl(&["g1"])));
    write(&r.join("f.jsonl.zst"), &zst(&jsonl(&["z1"])));
    write_parquet(&r.join("g.parquet"), &[Some("p1"), None, Some("p2"), Some("p3")]);
    let mut pq = Vec::new();
    write_parquet(&d.path().join("tmp.parquet"), &[Some("q1"), Some("q2")]);
    pq.extend(std::fs::read(d.path().join("tmp.parquet")).unwrap());
    write(&r.join("h.parquet.gz"), &gz(&pq));
    write(&r.join("sub/i.txt"), b"nested");
    write(&r.join("README.md"), b"not an input");
    write(&r.join(".hidden.txt"), b"hidden");

    let src = source(std::slice::from_ref(&r));
    assert_eq!(src.skipped(), &[r.join("README.md")]);
    let got = texts(&src).unwrap();
    let want = [
        "plain text 가",
        "gzip text 나",
        "zstd text 다",
        "j1",
        "j2",
        "g1",
        "z1",
        "p1",
        "",
        "p2",
        "p3",
        "q1",
        "q2",
        "nested",
    ];
    assert_eq!(got, want);

    // A glob, sorted, and the same file named twice is read once.
    let glob = format!("{}/*.jsonl*", r.display());
    let src = DocumentSource::new(&[PathBuf::from(&glob), r.join("d.jsonl")], IngestOptions::default()).unwrap();
    assert_eq!(texts(&src).unwrap(), ["j1", "j2", "g1", "z1"]);

    // Another field name for JSONL and parquet.
    write(&d.path().join("o.jsonl"), b"{\"body\": \"B\"}\n\n{\"body\": null}\n");
    let opts = IngestOptions { text_field: "body".into(), ..Default::default() };
    assert_eq!(texts(&DocumentSource::new(&[d.path().join("o.jsonl")], opts).unwrap()).unwrap(), ["B", ""]);
}

#[test]
fn large_text_files_are_split_at_blank_lines() {
    let d = tempfile::tempdir().unwrap();
    let para = "한국어 문단입니다. ".repeat(5); // 135 bytes
    let text = (0..20).map(|i| format!("{i} {para}")).collect::<Vec<_>>().join("\n\n");
    write(&d.path().join("big.txt"), text.as_bytes());
    let opts = IngestOptions { max_doc_bytes: 400, ..Default::default() };
    let docs = texts(&DocumentSource::new(&[d.path().join("big.txt")], opts).unwrap()).unwrap();
    assert!(docs.len() > 5, "{}", docs.len());
    assert!(docs.iter().all(|t| t.len() <= 400));
    assert!(docs.iter().take(docs.len() - 1).all(|t| t.ends_with("\n\n")));
    assert_eq!(docs.concat(), text);
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs prepare on a bad input and checks the error and that no output (or temp dir) remains.
fn prepare_fails(inputs: &[PathBuf], opts: IngestOptions) -> String {
    let out_parent = tempfile::tempdir().unwrap();
    let out = out_parent.path().join("prepared");
    let r = DocumentSource::new(inputs, opts).and_then(|s| prepare(&s, &out, &PrepareOptions::default()));
    let e = err_of(r);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(out_parent.path()).unwrap().count(), 0, "leftovers after: {e}");
    e
}

#[test]
fn bad_inputs_give_named_errors_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let bad_txt = d.path().join("bad.txt");
    let mut bytes = b"good start ".to_vec();
    bytes.extend([0xff, 0xfe]);
    write(&bad_txt, &bytes);
    let e = prepare_fails(std::slice::from_ref(&bad_txt), IngestOptions::default());
    assert!(e.contains("bad.txt") && e.contains("invalid UTF-8 at byte offset 11"), "{e}");

    let bad_json = d.path().join("bad.jsonl");
    write(&bad_json, b"{\"text\": \"ok\"}\n{\"text\": oops}\n");
    let e = prepare_fails(std::slice::from_ref(&bad_json), IngestOptions::default());
    assert!(e.contains("bad.jsonl:2: malformed JSON"), "{e}");

    let missing = d.path().join("missing.jsonl");
    write(&missing, b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
    let e = prepare_fails(&[missing], IngestOptions { on_invalid: OnInvalid::Skip, ..Default::default() });
    assert!(e.contains("missing.jsonl:2: missing field \"text\""), "{e}");

    let not_pq = d.path().join("broken.parquet");
    write(&not_pq, b"this is not parquet at all");
    let e = prepare_fails(&[not_pq], IngestOptions::default());
    assert!(e.contains("broken.parquet"), "{e}");

    let pq = d.path().join("other.parquet");
    write_parquet(&pq, &[Some("x"), Some("y")]);
    let e = prepare_fails(&[pq], IngestOptions { text_field: "body".into(), ..Default::default() });
    assert!(e.contains("other.parquet") && e.contains("missing column \"body\""), "{e}");

    let csv = d.path().join("data.csv");
    write(&csv, b"a,b");
    let e = prepare_fails(&[csv], IngestOptions::default());
    assert!(e.contains("data.csv") && e.contains(".jsonl") && e.contains(".parquet.zst"), "{e}");

    let e = prepare_fails(&[d.path().join("nope.txt")], IngestOptions::default());
    assert!(e.contains("nope.txt") && e.contains("does not exist"), "{e}");

    let e = prepare_fails(&[d.path().join("nothing-*.txt")], IngestOptions::default());
    assert!(e.contains("matched no files"), "{e}");

    // Skip policy: the bad documents are dropped and counted, the good ones kept.
    let good = d.path().join("good.txt");
    write(&good, "이 문서는 충분히 길어서 최소 길이 기준을 넘는 정상적인 한국어 문서입니다.".as_bytes());
    let out = d.path().join("out");
    let src = DocumentSource::new(
        &[bad_txt, bad_json, good],
        IngestOptions { on_invalid: OnInvalid::Skip, ..Default::default() },
    )
    .unwrap();
    let s = prepare(&src, &out, &PrepareOptions::default()).unwrap();
    assert_eq!(s.invalid_skipped, 2);
    assert_eq!(s.warnings.len(), 2);
    assert_eq!(s.documents_out, 1);
    assert_eq!(s.dropped_too_short, 1); // {"text": "ok"}
}

const BASE: &str = "서울은 대한민국의 수도이며 가장 큰 도시이다. 한강이 도시를 가로질러 흐르고, \
    많은 사람들이 지하철을 타고 출근한다. 역사적인 궁궐과 현대적인 건물이 함께 어우러져 있다. \
    봄에는 벚꽃이 피고 가을에는 단풍이 들어 관광객이 많이 찾는다. 서울의 음식 문화도 다양해서 \
    골목마다 오래된 식당과 새로운 카페가 나란히 자리하고 있다.";

fn corpus(dir: &Path) -> Vec<PathBuf> {
    let near = BASE.replace("가장 큰", "제일 큰");
    let decomposed =
        "\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF}은 세종대왕이 만든 글자이며 과학적인 문자 체계로 알려져 있다.";
    let docs: Vec<String> = vec![
        BASE.to_string(),
        format!("  {BASE}\r\n"),      // exact duplicate after cleaning
        near,                         // near duplicate
        "짧은 글".to_string(),        // too short
        " \u{0}\u{7}\t ".to_string(), // empty after cleaning
        decomposed.to_string(),       // NFC
        "The Korean alphabet, Hangul, was created in the fifteenth century by King Sejong.".to_string(),
        "부산은 대한민국 남동쪽에 있는 항구 도시로, 해운대 해수욕장과 자갈치 시장으로 유명하다.".to_string(),
    ];
    let p = dir.join("in/docs.jsonl");
    write(&p, docs.iter().map(|t| serde_json::json!({ "text": t }).to_string() + "\n").collect::<String>().as_bytes());
    vec![p]
}

#[test]
fn prepare_cleans_dedups_and_summarises() {
    let d = tempfile::tempdir().unwrap();
    let inputs = corpus(d.path());
    let out = d.path().join("prepared");
    let s = prepare(&source(&inputs), &out, &PrepareOptions::default()).unwrap();
    assert_eq!(s.documents_in, 8);
    assert_eq!(s.exact_duplicates, 1);
    assert_eq!(s.near_duplicates, 1);
    assert_eq!(s.dropped_too_short, 1);
    assert_eq!(s.dropped_empty, 1);
    assert_eq!(s.documents_out, 4);
    assert_eq!(s.output_files, ["documents.jsonl"]);
    assert!(s.share_hangul > 0.5 && s.share_latin > 0.05 && s.share_other > 0.0, "{s:?}");
    assert!((s.share_hangul + s.share_latin + s.share_other - 1.0).abs() < 1e-9);

    let back = texts(&source(std::slice::from_ref(&out))).unwrap();
    assert_eq!(back.len(), 4);
    assert_eq!(back[0], BASE);
    assert!(back[1].starts_with("한글은"));
    assert_eq!(s.bytes_out, back.iter().map(|t| t.len() as u64).sum::<u64>());

    let summary: PrepareSummary = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.documents_out, 4);
    let m = jarip_ledger::Manifest::read(&out).unwrap();
    assert_eq!(m.kind, "prepared-corpus");
    assert_eq!(m.inputs.len(), 1);
    assert_eq!(m.inputs[0].sha256, jarip_ledger::sha256_file(&inputs[0]).unwrap());
    m.verify(&out).unwrap();

    // Deterministic: a second run writes identical documents.
    let out2 = d.path().join("prepared2");
    prepare(&source(&inputs), &out2, &PrepareOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(out.join("documents.jsonl")).unwrap(),
        std::fs::read(out2.join("documents.jsonl")).unwrap()
    );

    // An existing prepared output is replaced; an unrelated non-empty directory is refused.
    prepare(&source(&inputs), &out2, &PrepareOptions::default()).unwrap();
    let e = err_of(prepare(&source(&inputs), &d.path().join("in"), &PrepareOptions::default()));
    assert!(e.contains("refusing to replace"), "{e}");
    assert!(inputs[0].exists());

    // Distinct documents survive; near-dedup off keeps the near duplicate.
    let mut opts = PrepareOptions::default();
    opts.dedup.near = false;
    let s = prepare(&source(&inputs), &d.path().join("p3"), &opts).unwrap();
    assert_eq!((s.exact_duplicates, s.near_duplicates, s.documents_out), (1, 0, 5));
}

/// Deterministic pseudo-random Hangul text: distinct for every `seed`.
fn hangul_text(seed: u64, chars: usize) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..chars)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if i % 6 == 5 {
                ' '
            } else {
                char::from_u32(0xAC00 + ((x >> 33) % 11172) as u32).unwrap()
            }
        })
        .collect()
}

#[test]
fn large_outputs_roll_over_and_read_back_in_order() {
    let d = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..60).map(|i| hangul_text(i, 40 + i as usize)).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    write(&d.path().join("in.jsonl"), &jsonl(&refs));
    let opts = PrepareOptions { max_output_file_bytes: 2000, ..Default::default() };
    let out = d.path().join("p");
    let s = prepare(&source(&[d.path().join("in.jsonl")]), &out, &opts).unwrap();
    assert_eq!(s.documents_out, 60);
    assert!(s.output_files.len() > 3, "{:?}", s.output_files);
    assert_eq!(s.output_files[0], "documents-00000.jsonl");
    let want: Vec<String> = lines.iter().map(|l| l.trim().to_string()).collect();
    assert!(texts(&source(&[out])).unwrap() == want, "documents differ after read-back");
}

fn shard_corpus(dir: &Path, n: usize) -> DocumentSource {
    let docs: Vec<String> = (0..n).map(|i| format!("document {i} {}", "가나다 abc ".repeat(i % 5 + 1))).collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let p = dir.join("docs.jsonl");
    write(&p, &jsonl(&refs));
    source(&[p])
}

#[test]
fn shards_round_trip_with_bos_and_split_by_document() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 200);
    let enc = ByteEncoder::small();
    let out = d.path().join("shards");
    let opts = ShardOptions { tokens_per_shard: 2000, val_fraction: 0.1, seed: 7, ..Default::default() };
    let s = write_shards(&enc, &src, &out, &opts).unwrap();
    assert_eq!(s.dtype, Dtype::U16);
    assert!(s.train.shards.len() > 2);
    assert!(s.val.documents > 5 && s.val.documents < 45, "{}", s.val.documents);
    assert_eq!(s.train.documents + s.val.documents, 200);

    let set = ShardSet::open(&out, Some(&enc.sha256())).unwrap();
    assert_eq!(set.dtype(), Dtype::U16);
    assert_eq!(set.tokenizer_sha256(), enc.sha256());
    assert_eq!(set.train_tokens(), s.train.tokens);
    let info = set.split_info(Split::Val);
    assert_eq!((info.documents, info.tokens, info.text_bytes), (s.val.documents, s.val.tokens, s.val.text_bytes));

    // Every document comes back exactly once, each as BOS + its encoding, at its indexed start.
    let mut seen = Vec::new();
    for split in [Split::Train, Split::Val] {
        for (i, _) in set.shards(split).iter().enumerate() {
            let toks = set.shard_tokens(split, i);
            let starts = set.doc_starts(split, i);
            for (k, &st) in starts.iter().enumerate() {
                let end = starts.get(k + 1).map_or(toks.len(), |&e| e as usize);
                assert_eq!(toks[st as usize], 0);
                let bytes: Vec<u8> = toks[st as usize + 1..end].iter().map(|&t| (t - 1) as u8).collect();
                seen.push((String::from_utf8(bytes).unwrap(), split));
            }
        }
    }
    let all = texts(&src).unwrap();
    let mut got: Vec<String> = seen.iter().map(|(t, _)| t.clone()).collect();
    got.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(got, want);

    // Same inputs and seed → identical bytes; the manifest's Merkle root matches.
    let out2 = d.path().join("shards2");
    let s2 = write_shards(&enc, &src, &out2, &opts).unwrap();
    assert_eq!(s.merkle_root, s2.merkle_root);
    assert_eq!(
        std::fs::read(out.join("train-00000.bin")).unwrap(),
        std::fs::read(out2.join("train-00000.bin")).unwrap()
    );
    let m = jarip_ledger::Manifest::read(&out).unwrap();
    assert_eq!(m.kind, "shards");
    assert_eq!(m.settings["merkle_root"], s.merkle_root);
    assert_eq!(m.settings["val"]["text_bytes"], s.val.text_bytes);
}

#[test]
fn large_vocabularies_use_u32_and_tiny_corpora_get_a_val_doc() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 3);
    let enc = ByteEncoder::large();
    let out = d.path().join("shards");
    let s = write_shards(&enc, &src, &out, &ShardOptions::default()).unwrap();
    assert_eq!(s.dtype, Dtype::U32);
    assert_eq!((s.train.documents, s.val.documents), (2, 1));
    let set = ShardSet::open(&out, None).unwrap();
    assert_eq!(set.dtype(), Dtype::U32);
    let toks = set.shard_tokens(Split::Val, 0);
    assert_eq!(toks[0], 0);
    assert!(toks[1..].iter().all(|&t| t >= 70_000));

    // No val at fraction 0.
    let s = write_shards(&enc, &src, &d.path().join("s0"), &ShardOptions { val_fraction: 0.0, ..Default::default() })
        .unwrap();
    assert_eq!((s.train.documents, s.val.documents), (3, 0));
}

#[test]
fn damaged_or_foreign_shards_are_refused_with_named_errors() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 20);
    let enc = ByteEncoder::small();
    let out = d.path().join("shards");
    write_shards(&enc, &src, &out, &ShardOptions::default()).unwrap();

    let e = err_of(ShardSet::open(&out, Some(&"ee".repeat(32))));
    assert!(e.contains("train-00000.bin") && e.contains("not the expected tokenizer"), "{e}");

    let copy = |name: &str| {
        let c = d.path().join(name);
        std::fs::create_dir_all(&c).unwrap();
        for f in ["train-00000.bin", "val-00000.bin"] {
            std::fs::copy(out.join(f), c.join(f)).unwrap();
        }
        c
    };
    let t = copy("truncated");
    let f = t.join("train-00000.bin");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 10).unwrap();
    let e = err_of(ShardSet::open(&t, None));
    assert!(e.contains("train-00000.bin") && e.contains("size mismatch"), "{e}");
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(50).unwrap();
    let e = err_of(ShardSet::open(&t, None));
    assert!(e.contains("train-00000.bin") && e.contains("truncated"), "{e}");

    let foreign = copy("foreign");
    std::fs::write(foreign.join("train-00000.bin"), vec![7u8; 500]).unwrap();
    let e = err_of(ShardSet::open(&foreign, None));
    assert!(e.contains("train-00000.bin") && e.contains("not a jarip shard"), "{e}");

    let v = copy("version");
    let f = v.join("val-00000.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[8] = 9;
    std::fs::write(&f, bytes).unwrap();
    let e = err_of(ShardSet::open(&v, None));
    assert!(e.contains("val-00000.bin") && e.contains("unknown shard format version 9"), "{e}");
}

#[test]
fn sampler_is_deterministic_and_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 120);
    let out = d.path().join("shards");
    let opts = ShardOptions { tokens_per_shard: 1500, val_fraction: 0.05, ..Default::default() };
    write_shards(&ByteEncoder::small(), &src, &out, &opts).unwrap();
    let set = ShardSet::open(&out, None).unwrap();
    let (seq, bs) = (16, 4);

    let mut a = set.sampler(seq, bs, 42).unwrap();
    let per_epoch = a.windows_per_epoch();
    let first: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();
    let saved = serde_json::to_string(&a.state()).unwrap();
    let rest: Vec<Batch> = (0..(per_epoch as usize / bs + 3)).map(|_| a.next_batch()).collect();
    assert!(a.state().epoch >= 1, "crossed into the next epoch");

    let mut b = set.sampler(seq, bs, 42).unwrap();
    assert_eq!((0..5).map(|_| b.next_batch()).collect::<Vec<_>>(), first);
    let state: SamplerState = serde_json::from_str(&saved).unwrap();
    let mut c = BatchSampler::resume(&set, seq, bs, state).unwrap();
    assert_eq!((0..rest.len()).map(|_| c.next_batch()).collect::<Vec<_>>(), rest);

    let mut other = set.sampler(seq, bs, 43).unwrap();
    assert_ne!(other.next_batch(), first[0]);

    // Targets are inputs shifted by one, taken from the shard.
    let bt = &first[0];
    assert_eq!(bt.inputs.len(), bs * seq);
    assert_eq!(bt.inputs[1..seq], bt.targets[..seq - 1]);

    // One epoch visits every window (stride seq, seq + 1 tokens, within a shard) exactly once.
    let mut want: Vec<Vec<u32>> = Vec::new();
    for i in 0..set.shards(Split::Train).len() {
        let t = set.shard_tokens(Split::Train, i);
        let mut st = 0;
        while st + seq < t.len() {
            want.push(t[st..st + seq].to_vec());
            st += seq;
        }
    }
    assert_eq!(want.len() as u64, per_epoch);
    let mut s = set.sampler(seq, 1, 1).unwrap();
    let mut rows: Vec<Vec<u32>> = (0..per_epoch).map(|_| s.next_batch().inputs).collect();
    rows.sort();
    want.sort();
    assert_eq!(rows, want);
}

#[test]
fn val_batches_count_every_val_target_once() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 100);
    let out = d.path().join("shards");
    let opts = ShardOptions { tokens_per_shard: 300, val_fraction: 0.2, ..Default::default() };
    write_shards(&ByteEncoder::small(), &src, &out, &opts).unwrap();
    let set = ShardSet::open(&out, None).unwrap();
    let val_shards = set.shards(Split::Val);
    assert!(val_shards.len() > 1);
    for seq in [7, 64, 10_000] {
        let batches: Vec<Batch> = set.val_batches(seq, 3).collect();
        let counted: usize = batches.iter().map(Batch::counted_targets).sum();
        assert_eq!(counted as u64, set.val_tokens() - val_shards.len() as u64, "seq {seq}");
        // Deterministic.
        assert_eq!(batches, set.val_batches(seq, 3).collect::<Vec<_>>());
    }
}

#[test]
fn shards_with_the_real_tokenizer_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let inputs = corpus(d.path());
    let prepared = d.path().join("prepared");
    prepare(&source(&inputs), &prepared, &PrepareOptions::default()).unwrap();
    let docs = texts(&source(std::slice::from_ref(&prepared))).unwrap();
    let cfg = jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() };
    let trained = jarip_tokenizer::train(docs.iter().cloned(), &cfg).unwrap();
    let tok_dir = d.path().join("tokenizer");
    trained.save(&tok_dir, vec![]).unwrap();
    let tok = jarip_tokenizer::Tokenizer::load(&tok_dir).unwrap();

    let out = d.path().join("shards");
    let s = write_shards(&tok, &source(&[prepared]), &out, &ShardOptions::default()).unwrap();
    assert_eq!(s.dtype, Dtype::U16);
    assert_eq!(s.train.documents + s.val.documents, docs.len() as u64);
    let set = ShardSet::open(&out, Some(tok.sha256())).unwrap();
    let mut back = Vec::new();
    for split in [Split::Train, Split::Val] {
        for i in 0..set.shards(split).len() {
            let toks = set.shard_tokens(split, i);
            let starts = set.doc_starts(split, i);
            for (k, &st) in starts.iter().enumerate() {
                let end = starts.get(k + 1).map_or(toks.len(), |&e| e as usize);
                assert_eq!(toks[st as usize], tok.bos_id());
                let body = &toks[st as usize + 1..end];
                let text = String::from_utf8(tok.decode_bytes(body)).unwrap();
                assert_eq!(body, tok.encode(&text));
                back.push(text);
            }
        }
    }
    back.sort();
    let mut want = docs;
    want.sort();
    assert_eq!(back, want);
}

#[test]
fn unigram_baseline_matches_a_direct_count() {
    let d = tempfile::tempdir().unwrap();
    let src = shard_corpus(d.path(), 120);
    let enc = ByteEncoder::small();
    let out = d.path().join("shards");
    let opts = ShardOptions { tokens_per_shard: 3000, val_fraction: 0.1, seed: 3, ..Default::default() };
    write_shards(&enc, &src, &out, &opts).unwrap();
    let set = ShardSet::open(&out, None).unwrap();
    // Each byte token decodes to one byte; BOS (id 0) to none.
    let token_bytes: Vec<u32> = (0..enc.vocab_size()).map(|i| u32::from(i != 0)).collect();
    let got = jarip_data::baseline::unigram_bpb(&set, &token_bytes).unwrap();

    let all = |split| (0..set.split_info(split).shards).flat_map(|s| set.shard_tokens(split, s)).collect::<Vec<u32>>();
    let (train, val) = (all(Split::Train), all(Split::Val));
    let mut counts = vec![0f64; enc.vocab_size()];
    train.iter().for_each(|&t| counts[t as usize] += 1.0);
    let denom = train.len() as f64 + enc.vocab_size() as f64;
    let scored: Vec<u32> = val.into_iter().filter(|&t| t != 0).collect();
    let want = scored.iter().map(|&t| -((counts[t as usize] + 1.0) / denom).log2()).sum::<f64>() / scored.len() as f64;
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    // Byte text of repeated syllables is far from uniform: well under 8 bits per byte.
    assert!(got > 1.0 && got < 6.0, "{got}");
}

#[test]
fn hangul_documents_are_repeated_in_train_only() {
    let d = tempfile::tempdir().unwrap();
    let mut docs: Vec<String> = (0..60).map(|i| format!("an english document number {i} about the stage")).collect();
    docs.extend((0..20).map(|i| format!("대한민국은 민주공화국이다 제{i}조 국민의 권리와 의무")));
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let p = d.path().join("docs.jsonl");
    write(&p, &jsonl(&refs));
    let src = source(&[p]);
    let enc = ByteEncoder::small();
    let base = ShardOptions { val_fraction: 0.2, seed: 5, ..Default::default() };
    let once = write_shards(&enc, &src, &d.path().join("s1"), &base).unwrap();
    let rep = ShardOptions { hangul_repeat: 4, ..base };
    let four = write_shards(&enc, &src, &d.path().join("s4"), &rep).unwrap();
    // The same split; each Korean training document written four times, validation untouched.
    assert_eq!(four.val, once.val);
    let extra = four.train.documents - once.train.documents;
    let korean_train = extra / 3;
    assert!(extra.is_multiple_of(3) && (10..=20).contains(&korean_train), "{extra} extra documents");
    assert!(four.train.tokens > once.train.tokens + 3 * korean_train * 10);
    assert!(mostly_hangul("대한민국 헌법 article 1") && !mostly_hangul("the constitution 헌법"));
}
