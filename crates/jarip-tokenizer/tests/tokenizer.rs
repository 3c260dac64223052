mod common;

use jarip_tokenizer::{
    train, PreTokenizer, Preset, StreamDecoder, Tokenizer, TrainConfig, JARIP_PATTERN, SPECIAL_TOKENS,
};
use proptest::prelude::*;
use std::sync::OnceLock;

fn cfg(vocab_size: usize) -> TrainConfig {
    TrainConfig { vocab_size, ..TrainConfig::default() }
}

/// One tokenizer shared by the property tests (training is the slow part).
fn shared() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| train(common::docs(400, 1).into_iter(), &cfg(600)).unwrap())
}

#[test]
fn training_is_deterministic_and_vocab_exact() {
    let a = train(common::docs(400, 1).into_iter(), &cfg(600)).unwrap();
    let b = train(common::docs(400, 1).into_iter(), &cfg(600)).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.sha256(), b.sha256());
    assert_eq!(a.vocab_size(), 600);
    assert_eq!(a.merge_count(), 600 - 256 - 7);
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(a.special_id(s), Some((600 - 7 + i) as u32), "{s}");
        assert!(a.is_special(600 - 7 + i as u32));
    }
    assert_eq!(a.bos_id(), 593);
    assert_eq!(a.special_id("<|nope|>"), None);
    // Same corpus as one big document stream in another order of batches: same counts, same result.
    let c = train(common::docs(400, 1).into_iter().rev(), &cfg(600)).unwrap();
    assert_eq!(a.sha256(), c.sha256());
}

#[test]
fn error_cases_are_clear() {
    let err = train(common::docs(5, 1).into_iter(), &cfg(200)).unwrap_err().to_string();
    assert!(err.contains("too small") && err.contains("263"), "{err}");
    let err = train(Vec::<String>::new().into_iter(), &cfg(300)).unwrap_err().to_string();
    assert!(err.contains("empty corpus"), "{err}");
    let err = train(vec![String::new()].into_iter(), &cfg(300)).unwrap_err().to_string();
    assert!(err.contains("empty corpus"), "{err}");
    let d = tempfile::tempdir().unwrap();
    let err = format!("{:#}", Tokenizer::load(d.path()).unwrap_err());
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::write(d.path().join("tokenizer.json"), "{\"model\": 1}").unwrap();
    let err = format!("{:#}", Tokenizer::load(d.path()).unwrap_err());
    assert!(err.contains("tokenizer.json") && err.contains("not a usable tokenizer"), "{err}");
}

#[test]
fn min_frequency_stops_early_on_a_tiny_corpus() {
    let t = train(vec!["abc abd".to_string()].into_iter(), &cfg(1000)).unwrap();
    // Only pairs seen twice merge: " a"? no: "abc" and " abd" share only ("a","b").
    assert!(t.vocab_size() < 1000);
    assert_eq!(t.special_id("<|end|>"), Some(t.vocab_size() as u32 - 1));
    assert_eq!(t.decode(&t.encode("abc abd")), "abc abd");
}

#[test]
fn korean_compresses_far_better_than_bytes() {
    let t = shared();
    let held_out = common::korean_text(2000, 99);
    let s = t.stats(held_out.as_bytes());
    assert_eq!(s.bytes as usize, held_out.len());
    // Plain bytes would be 1.0 bytes/token; a Hangul syllable alone is 3 bytes.
    assert!(s.bytes_per_token > 4.0, "{s:?}");
}

#[test]
fn save_load_round_trip_with_manifest() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.txt");
    std::fs::write(&input, common::docs(200, 5).concat()).unwrap();
    let mut c = cfg(400);
    c.inputs = vec![jarip_ledger::FileRef::of_file(&input).unwrap()];
    let t = train(common::docs(200, 5).into_iter(), &c).unwrap();
    let dir = d.path().join("tok");
    t.save(&dir, vec![]).unwrap();
    let back = Tokenizer::load(&dir).unwrap();
    assert_eq!(back.sha256(), t.sha256());
    assert_eq!(back.sha256(), jarip_ledger::sha256_file(&dir.join("tokenizer.json")).unwrap());
    let text = "대한민국은 민주공화국이다. The king is dead 12345!";
    assert_eq!(back.encode(text), t.encode(text));
    assert_eq!(Tokenizer::load(&dir.join("tokenizer.json")).unwrap().sha256(), t.sha256());
    let m = jarip_ledger::Manifest::read(&dir).unwrap();
    m.verify(&dir).unwrap();
    assert_eq!(m.kind, "tokenizer");
    assert_eq!(m.inputs, c.inputs);
    assert_eq!(m.settings["vocab_size"], 400);
    assert_eq!(m.settings["preset"], "jarip");
    assert_eq!(m.settings["min_frequency"], 2);
    assert!(m.settings["training"]["bytes"].as_u64().unwrap() > 1000);
    assert_eq!(m.settings["special_tokens"][0][0], "<|bos|>");
    // Saving again replaces the tokenizer directory; a foreign directory is refused.
    back.save(&dir, c.inputs.clone()).unwrap();
    assert_eq!(jarip_ledger::Manifest::read(&dir).unwrap().inputs, c.inputs);
    std::fs::create_dir(d.path().join("other")).unwrap();
    std::fs::write(d.path().join("other/x"), "x").unwrap();
    let err = t.save(&d.path().join("other"), vec![]).unwrap_err().to_string();
    assert!(err.contains("refusing"), "{err}");
    assert!(d.path().join("other/x").exists());
}

#[test]
fn specials_only_with_encode_with_specials() {
    let t = shared();
    let text = "<|user|>안녕<|end|>";
    let plain = t.encode(text);
    assert!(plain.iter().all(|&id| !t.is_special(id)));
    assert_eq!(t.decode(&plain), text);
    let with = t.encode_with_specials(text);
    let user = t.special_id("<|user|>").unwrap();
    let end = t.special_id("<|end|>").unwrap();
    assert_eq!(with.first(), Some(&user));
    assert_eq!(with.last(), Some(&end));
    assert_eq!(&with[1..with.len() - 1], t.encode("안녕").as_slice());
    assert_eq!(t.decode(&with), text);
}

#[test]
fn nfc_input_is_normalised() {
    let t = shared();
    let nfd = "\u{1112}\u{1161}\u{11AB}"; // 한 decomposed
    assert_eq!(t.encode_nfc(nfd), t.encode("한"));
    assert_ne!(t.encode(nfd), t.encode("한"));
}

#[test]
fn stream_decoder_waits_for_whole_characters() {
    let t = shared();
    let mut dec = StreamDecoder::new(t);
    let bytes = "한국".as_bytes();
    let outs: Vec<String> = bytes.iter().map(|&b| dec.push(t.byte_id(b))).collect();
    assert_eq!(outs, vec!["", "", "한", "", "", "국"]);
    // A dangling lead byte is flushed as U+FFFD.
    assert_eq!(dec.push(t.byte_id(0xED)), "");
    assert_eq!(dec.flush(), "\u{FFFD}");
    // An invalid byte in the middle does not block what follows.
    assert_eq!(dec.push(t.byte_id(0xFF)), "\u{FFFD}");
    assert_eq!(dec.push(t.byte_id(b'a')), "a");
}

#[test]
fn encode_batch_keeps_order() {
    let t = shared();
    let docs = common::docs(50, 7);
    let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
    let batch = t.encode_batch(&refs);
    for (d, ids) in docs.iter().zip(&batch) {
        assert_eq!(&t.encode(d), ids);
    }
}

#[test]
fn presets_train_and_round_trip() {
    for preset in Preset::ALL {
        let c = TrainConfig { vocab_size: 350, preset, ..TrainConfig::default() };
        let t = train(common::docs(60, 3).into_iter(), &c).unwrap();
        assert_eq!(t.preset(), Some(preset));
        let text = "Hello  world, 1234567 대한민국은!\n\n  it's";
        assert_eq!(t.decode(&t.encode(text)), text, "{}", preset.name());
        let back = Tokenizer::from_json(t.to_json().to_string()).unwrap();
        assert_eq!(back.encode(text), t.encode(text));
    }
}

/// Text that mixes every class the split pattern distinguishes.
fn mixed_text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "한", "국", "어", "가", "\u{1100}", "\u{301}", "a", "Z", "é", "'s", "'ll", "'", "1", "٣", "½", " ", "  ", "\t",
        "\n", "\r\n", "\u{3000}", "\u{a0}", ".", "!?", "<|", "|>", "🙂", "👍🏽", "中", "ß", "_", "-",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn scanner_matches_regex(text in mixed_text()) {
        let fast = PreTokenizer::new(JARIP_PATTERN).unwrap();
        let slow = PreTokenizer::new_regex_only(JARIP_PATTERN).unwrap();
        prop_assert_eq!(fast.pieces(&text), slow.pieces(&text));
    }

    #[test]
    fn scanner_matches_regex_on_any_string(text in "\\PC{0,30}") {
        let fast = PreTokenizer::new(JARIP_PATTERN).unwrap();
        let slow = PreTokenizer::new_regex_only(JARIP_PATTERN).unwrap();
        prop_assert_eq!(fast.pieces(&text), slow.pieces(&text));
    }

    #[test]
    fn strings_round_trip(text in mixed_text()) {
        let t = shared();
        prop_assert_eq!(t.decode(&t.encode(&text)), text.clone());
        prop_assert_eq!(t.encode_bytes(text.as_bytes()), t.encode(&text));
    }

    #[test]
    fn any_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let t = shared();
        prop_assert_eq!(t.decode_bytes(&t.encode_bytes(&bytes)), bytes);
    }

    #[test]
    fn stream_decoder_equals_lossy_decode(text in mixed_text()) {
        let t = shared();
        let ids = t.encode(&text);
        let mut dec = StreamDecoder::new(t);
        let mut out: String = ids.iter().map(|&id| dec.push(id)).collect();
        out.push_str(&dec.flush());
        prop_assert_eq!(out, text);
    }
}
