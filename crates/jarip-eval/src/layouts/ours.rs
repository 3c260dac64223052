//! jarip's own task format (layout `jsonl`) and the `bpb` text layout.
//!
//! One JSON object per line; the first row decides the file's kind and every row must be of it:
//! - multiple choice: `{"context": "…", "choices": ["…", …], "gold": 0}`, optionally
//!   `"delimiter"` (joins context and choice, default `" "`) and `"description"` (text put once
//!   before any few-shot examples);
//! - generative: `{"prompt": "…", "answer": "…"}` or `"answers": ["…", …]`, optionally
//!   `"stop": ["…"]` (default `["\n\n"]`), `"max_tokens"` and `"delimiter"` (joins prompt and
//!   answer in few-shot examples, default `" "`);
//! - text for bits per byte: `{"text": "…"}`.

use super::{mc, Fields};
use crate::rows::{read_jsonl, Row};
use crate::task::{Examples, GenExample};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const JSONL_FIELDS: &str = "context+choices+gold | prompt+answer(s) | text";
/// lm-eval's default `until` for generation: the few-shot delimiter.
pub const GEN_DEFAULT_STOP: &str = "\n\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    MultipleChoice,
    Generative,
    Text,
}

fn kind_of(row: &Row) -> Result<Kind> {
    let has = |k: &str| row.fields.contains_key(k);
    if has("choices") {
        Ok(Kind::MultipleChoice)
    } else if has("answer") || has("answers") {
        Ok(Kind::Generative)
    } else if has("text") {
        Ok(Kind::Text)
    } else {
        bail!(
            "{}: not a jarip task row: expected \"choices\" (multiple choice), \"answer\"/\"answers\" (generative) or \"text\" (bits per byte)",
            row.at
        )
    }
}

fn opt_str(f: &Fields, name: &str, default: &str) -> Result<String> {
    match f.get(name) {
        Some(_) => f.str(name),
        None => Ok(default.to_string()),
    }
}

pub fn jsonl(path: &Path) -> Result<Examples> {
    let rows = read_jsonl(path)?;
    let Some(first) = rows.first() else { return Ok(Examples::MultipleChoice(vec![])) };
    let kind = kind_of(first)?;
    for r in &rows {
        let k = kind_of(r)?;
        if k != kind {
            bail!("{}: a {k:?} row in a file whose first row is {kind:?}; keep one kind per file", r.at);
        }
    }
    match kind {
        Kind::MultipleChoice => super::multiple_choice(rows, |r| {
            let f = Fields::new(r, "jsonl", JSONL_FIELDS);
            let mut ex =
                mc(r, opt_str(&f, "description", "")?, f.str("context")?, f.str_list("choices")?, f.int("gold")?)?;
            ex.delimiter = opt_str(&f, "delimiter", " ")?;
            Ok(ex)
        }),
        Kind::Generative => Ok(Examples::Generative(rows.iter().map(generative).collect::<Result<_>>()?)),
        Kind::Text => Ok(Examples::Text(rows.iter().map(text).collect::<Result<_>>()?)),
    }
}

fn generative(r: &Row) -> Result<GenExample> {
    let f = Fields::new(r, "jsonl", JSONL_FIELDS);
    let answers = if f.get("answers").is_some() { f.str_list("answers")? } else { vec![f.str("answer")?] };
    if answers.is_empty() {
        bail!("{}: empty answer list", r.at);
    }
    let stop = if f.get("stop").is_some() { f.str_list("stop")? } else { vec![GEN_DEFAULT_STOP.to_string()] };
    let max_tokens = match f.get("max_tokens") {
        Some(_) => {
            let n = f.int("max_tokens")?;
            if n <= 0 {
                bail!("{}: max_tokens must be positive", r.at);
            }
            Some(n as usize)
        }
        None => None,
    };
    Ok(GenExample { prompt: f.str("prompt")?, answers, stop, max_tokens, delimiter: opt_str(&f, "delimiter", " ")? })
}

fn text(r: &Row) -> Result<String> {
    let t = Fields::new(r, "jsonl", JSONL_FIELDS).str("text")?;
    if t.is_empty() {
        bail!("{}: empty text (bits per byte needs at least one byte)", r.at);
    }
    Ok(t)
}

/// `bpb`: a `.txt` file is one document; a `.jsonl` file holds `{"text": …}` rows.
pub fn bpb(path: &Path) -> Result<Examples> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => {
            let docs = read_jsonl(path)?.iter().map(text).collect::<Result<Vec<_>>>()?;
            Ok(Examples::Text(docs))
        }
        _ => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 text (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?;
            if text.is_empty() {
                bail!("{} is empty: bits per byte needs text", path.display());
            }
            Ok(Examples::Text(vec![text]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn three_kinds_and_their_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p =
            test_files::jsonl(d.path(), "mc.jsonl", &[json!({"context": "2+2=", "choices": ["4", "5"], "gold": 0})]);
        let Examples::MultipleChoice(v) = jsonl(&p).unwrap() else { panic!() };
        assert_eq!((v[0].context.as_str(), v[0].delimiter.as_str(), v[0].gold), ("2+2=", " ", 0));

        let p = test_files::jsonl(
            d.path(),
            "gen.jsonl",
            &[
                json!({"prompt": "Q: 2+2\nA:", "answer": "4"}),
                json!({"prompt": "p", "answers": ["a", "b"], "stop": ["."], "max_tokens": 3}),
            ],
        );
        let Examples::Generative(v) = jsonl(&p).unwrap() else { panic!() };
        assert_eq!(v[0].stop, vec!["\n\n"]);
        assert_eq!(v[1].answers, vec!["a", "b"]);
        assert_eq!(v[1].max_tokens, Some(3));

        let p = test_files::jsonl(d.path(), "t.jsonl", &[json!({"text": "abc"})]);
        assert_eq!(jsonl(&p).unwrap(), Examples::Text(vec!["abc".into()]));
    }

    #[test]
    fn mixed_kinds_and_unknown_rows_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "m.jsonl",
            &[json!({"context": "c", "choices": ["a"], "gold": 0}), json!({"text": "t"})],
        );
        assert!(jsonl(&p).unwrap_err().to_string().contains("m.jsonl:2: a Text row"));
        let p = test_files::jsonl(d.path(), "x.jsonl", &[json!({"question": "q"})]);
        assert!(jsonl(&p).unwrap_err().to_string().contains("not a jarip task row"));
    }

    #[test]
    fn bpb_reads_text_files_and_text_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::write(d.path(), "a.txt", "한국어 text\n");
        assert_eq!(bpb(&p).unwrap(), Examples::Text(vec!["한국어 text\n".into()]));
        let p = test_files::jsonl(d.path(), "b.jsonl", &[json!({"text": "x"}), json!({"text": "y"})]);
        assert_eq!(bpb(&p).unwrap().len(), 2);
        std::fs::write(d.path().join("c.txt"), [0xffu8, 0xfe]).unwrap();
        assert!(bpb(&d.path().join("c.txt")).unwrap_err().to_string().contains("not UTF-8"));
    }
}
