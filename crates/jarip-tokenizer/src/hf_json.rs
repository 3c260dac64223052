//! Reading and writing HF `tokenizers`' tokenizer.json for our byte-level BPE:
//! model BPE (byte-level unicode strings, merges in rank order, no unk, `ignore_merges: false`),
//! pre-tokenizer `Sequence[Split(Regex, Isolated), ByteLevel(use_regex: false)]`, ByteLevel
//! decoder, no normalizer, no post-processor, the specials as added tokens.

use crate::bytes_map::{bytes_to_unicode, unicode_to_bytes};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// What a tokenizer.json holds, in our terms.
pub(crate) struct Parts {
    pub pattern: String,
    /// id → bytes; a special token's bytes are its text.
    pub tokens: Vec<Vec<u8>>,
    /// (left, right, merged), in rank order.
    pub merges: Vec<(u32, u32, u32)>,
    pub specials: Vec<(String, u32)>,
    /// The tokenizer declares an NFC normalizer (Qwen's do; jarip's never: it normalises before).
    pub nfc: bool,
    /// HF's `ignore_merges`: a piece that is itself in the vocabulary is one token (Llama 3).
    pub ignore_merges: bool,
}

fn token_string(parts: &Parts, id: usize) -> String {
    match parts.specials.iter().find(|(_, i)| *i as usize == id) {
        Some((s, _)) => s.clone(),
        None => bytes_to_unicode(&parts.tokens[id]),
    }
}

pub(crate) fn write(parts: &Parts) -> String {
    let strings: Vec<String> = (0..parts.tokens.len()).map(|id| token_string(parts, id)).collect();
    let mut vocab = Map::with_capacity(strings.len());
    for (id, s) in strings.iter().enumerate() {
        vocab.insert(s.clone(), json!(id));
    }
    // "left right" strings: byte-level tokens never contain a space (0x20 maps to 'Ġ'), and
    // every tokenizers version reads this form.
    let merges: Vec<Value> = parts
        .merges
        .iter()
        .map(|&(a, b, _)| json!(format!("{} {}", strings[a as usize], strings[b as usize])))
        .collect();
    let added: Vec<Value> = parts
        .specials
        .iter()
        .map(|(s, id)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": parts.pattern}, "behavior": "Isolated", "invert": false},
                byte_level,
            ]
        },
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("json serialises");
    text.push('\n');
    text
}

fn split_pattern(pre: &Value) -> Result<String> {
    let kind = pre.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "Sequence" => {
            let list = pre.get("pretokenizers").and_then(Value::as_array).context("Sequence without pretokenizers")?;
            let mut pattern = None;
            let mut byte_level = false;
            for p in list {
                match p.get("type").and_then(Value::as_str) {
                    Some("Split") => {
                        if pattern.is_some() {
                            bail!("more than one Split pre-tokenizer");
                        }
                        let behavior = p.get("behavior").and_then(Value::as_str).unwrap_or("");
                        let invert = p.get("invert").and_then(Value::as_bool).unwrap_or(false);
                        if behavior != "Isolated" || invert {
                            bail!("only Split with behavior Isolated and invert false is supported");
                        }
                        let re = p.pointer("/pattern/Regex").and_then(Value::as_str);
                        pattern = Some(re.context("Split pattern must be {\"Regex\": ...}")?.to_string());
                    }
                    Some("ByteLevel") => {
                        if p.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
                            || p.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false)
                        {
                            bail!("ByteLevel after Split must have use_regex and add_prefix_space false");
                        }
                        byte_level = true;
                    }
                    other => bail!("unsupported pre-tokenizer {other:?}"),
                }
            }
            if !byte_level {
                bail!("pre-tokenizer has no ByteLevel step: not a byte-level BPE");
            }
            pattern.context("pre-tokenizer has no Split step")
        }
        "ByteLevel" if !pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false) => {
            // ByteLevel's own regex is GPT-2's split.
            Ok(crate::Preset::Gpt2.pattern().to_string())
        }
        _ => bail!("unsupported pre-tokenizer {kind:?}"),
    }
}

/// A SentencePiece-style tokenizer (Metaspace pre-tokenizer, `<0xNN>` byte fallback) is not
/// byte-level: say so by name rather than failing on its first `▁` token.
fn refuse_sentencepiece(doc: &Value) -> Result<()> {
    let mentions = |v: Option<&Value>, what: &str| v.is_some_and(|v| v.to_string().contains(what));
    if mentions(doc.get("pre_tokenizer"), "Metaspace")
        || mentions(doc.get("normalizer"), "▁")
        || doc.pointer("/model/byte_fallback").and_then(Value::as_bool) == Some(true)
    {
        bail!(
            "a SentencePiece-style tokenizer (Metaspace / byte fallback): jarip reads byte-level BPE \
             tokenizers (GPT-2, Llama 3, Qwen, Mistral Tekken style) only"
        );
    }
    Ok(())
}

pub(crate) fn read(text: &str) -> Result<Parts> {
    let doc: Value = serde_json::from_str(text).context("not valid JSON")?;
    refuse_sentencepiece(&doc)?;
    let nfc = match doc.get("normalizer") {
        None | Some(Value::Null) => false,
        Some(n) if n.get("type").and_then(Value::as_str) == Some("NFC") => true,
        Some(n) => bail!(
            "normalizer {} is not supported (byte-level BPE without one, or with NFC)",
            n.get("type").and_then(Value::as_str).unwrap_or("?")
        ),
    };
    let model = doc.get("model").context("no model")?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        bail!("model is not BPE");
    }
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
    let pattern = split_pattern(doc.get("pre_tokenizer").context("no pre_tokenizer")?)?;
    let mut specials = Vec::new();
    for t in doc.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let content = t.get("content").and_then(Value::as_str).context("added token without content")?;
        let id = t.get("id").and_then(Value::as_u64).context("added token without id")?;
        specials.push((content.to_string(), id as u32));
    }
    let vocab = model.get("vocab").and_then(Value::as_object).context("model has no vocab")?;
    // Ids run 0..n with none missing; added tokens may or may not be listed in the vocab too,
    // and may come first (as `tokenizers`' trainer puts them) or last (as jarip's).
    let top_vocab = vocab.values().filter_map(Value::as_u64).max().map_or(0, |m| m as usize + 1);
    let n = top_vocab.max(vocab.len()).max(specials.iter().map(|s| s.1 as usize + 1).max().unwrap_or(0));
    if n > 16 * (vocab.len() + specials.len()) + 1024 {
        bail!("ids reach {n} for {} tokens: the vocabulary has gaps", vocab.len() + specials.len());
    }
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
    for (s, id) in &specials {
        tokens[*id as usize] = Some(s.as_bytes().to_vec());
    }
    for (s, id) in vocab {
        let id = id.as_u64().with_context(|| format!("vocab id of {s:?} is not a number"))? as usize;
        if id >= n {
            bail!("vocab id {id} of {s:?} is out of range (ids must be 0..{n})");
        }
        if specials.iter().any(|(sp, i)| sp == s && *i as usize == id) {
            continue;
        }
        let bytes = unicode_to_bytes(s).with_context(|| format!("vocab entry {s:?} is not byte-level"))?;
        if tokens[id].replace(bytes).is_some() {
            bail!("vocab id {id} is used twice");
        }
    }
    let tokens: Vec<Vec<u8>> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.with_context(|| format!("vocab has no token with id {id}")))
        .collect::<Result<_>>()?;
    let mut merges = Vec::new();
    for (rank, m) in model.get("merges").and_then(Value::as_array).context("model has no merges")?.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => s.split_once(' ').with_context(|| format!("merge {rank} {s:?} is not \"a b\""))?,
            Value::Array(v) if v.len() == 2 => (
                v[0].as_str().context("merge part is not a string")?,
                v[1].as_str().context("merge part is not a string")?,
            ),
            _ => bail!("merge {rank} has an unknown form"),
        };
        let id = |s: &str| -> Result<u32> {
            vocab
                .get(s)
                .and_then(Value::as_u64)
                .map(|i| i as u32)
                .with_context(|| format!("merge {rank} names {s:?}, which is not in the vocab"))
        };
        merges.push((id(a)?, id(b)?, id(&format!("{a}{b}"))?));
    }
    Ok(Parts { pattern, tokens, merges, specials, nfc, ignore_merges })
}
