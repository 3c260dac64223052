//! ARC (AI2 Reasoning Challenge), as lm-evaluation-harness's `arc_easy`/`arc_challenge` render
//! it: `Question: {question}\nAnswer:`, scored on each choice's text. Reads the Hugging Face
//! layout (`question`, `choices: {text, label}`, `answerKey`) and the original release's JSONL
//! (`question: {stem, choices: [{text, label}]}`, `answerKey`).

use super::{mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;

const FIELDS: &str = "question, choices {text, label}, answerKey";

fn texts(v: &Value, key: &str) -> Option<Vec<String>> {
    v.get(key)?.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect()
}

pub fn read(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "arc", FIELDS);
        let q = f.get("question").ok_or_else(|| anyhow::anyhow!("{}: missing field \"question\" ({FIELDS})", r.at))?;
        let (question, choices) = match q {
            // Original release: the choices live inside the question object.
            Value::Object(o) => {
                let stem = o.get("stem").and_then(Value::as_str);
                let list = o.get("choices").and_then(Value::as_array);
                let (Some(stem), Some(list)) = (stem, list) else {
                    bail!("{}: question object without \"stem\" and \"choices\"", r.at);
                };
                let col = |k: &str| list.iter().map(|c| c.get(k).and_then(Value::as_str).map(str::to_string)).collect();
                let (Some(text), Some(label)) = (col("text"), col("label")) else {
                    bail!("{}: every choice needs \"text\" and \"label\"", r.at);
                };
                (stem.to_string(), (text, label))
            }
            _ => {
                let question = f.str("question")?;
                let c = f
                    .get("choices")
                    .ok_or_else(|| anyhow::anyhow!("{}: missing field \"choices\" ({FIELDS})", r.at))?;
                let (Some(text), Some(label)) = (texts(c, "text"), texts(c, "label")) else {
                    bail!("{}: \"choices\" should be {{\"text\": [...], \"label\": [...]}}", r.at);
                };
                (question, (text, label))
            }
        };
        let (text, label): (Vec<String>, Vec<String>) = choices;
        if text.len() != label.len() {
            bail!("{}: {} choice texts but {} labels", r.at, text.len(), label.len());
        }
        let key = f.str("answerKey")?;
        let Some(gold) = label.iter().position(|l| *l == key) else {
            bail!("{}: answerKey {key:?} is not among the labels {label:?}", r.at);
        };
        mc(r, String::new(), format!("Question: {question}\nAnswer:"), text, gold as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn arc_hf_and_original_layouts() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "ARC-Easy-test.jsonl",
            &[
                json!({"id": "1", "question": "Which is a liquid?", "choices": {"text": ["ice", "water"], "label": ["A", "B"]}, "answerKey": "B"}),
                json!({"id": "2", "question": {"stem": "Pick 1", "choices": [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}]}, "answerKey": "1"}),
            ],
        );
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(v[0].context, "Question: Which is a liquid?\nAnswer:");
        assert_eq!((v[0].choices.clone(), v[0].gold), (vec!["ice".to_string(), "water".to_string()], 1));
        assert_eq!((v[1].context.as_str(), v[1].gold), ("Question: Pick 1\nAnswer:", 0));
    }
}
