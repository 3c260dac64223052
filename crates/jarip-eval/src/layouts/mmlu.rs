//! MMLU, as lm-evaluation-harness's default `mmlu_*` tasks render it: the subject line
//! ("The following are multiple choice questions (with answers) about {subject}.") once before
//! any examples, then the question, options `A.`…`D.` and `Answer:`, scored on the letters.
//! Reads the original CSV (no header: question, A, B, C, D, answer letter; the subject from a
//! file name such as `abstract_algebra_test.csv`) and the Hugging Face layout (question,
//! subject, choices, answer 0–3).

use super::{letter_index, mc, multiple_choice, Fields};
use crate::rows::{read_rows, CsvHeader};
use crate::task::Examples;
use anyhow::{bail, Result};
use std::path::Path;

const CSV_COLUMNS: &[&str] = &["question", "A", "B", "C", "D", "answer"];

/// `abstract_algebra_test` → `abstract_algebra`.
fn subject_of(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for suffix in ["_test", "_dev", "_val", "_validation"] {
        if let Some(s) = stem.strip_suffix(suffix) {
            return s.to_string();
        }
    }
    stem
}

pub fn read(path: &Path) -> Result<Examples> {
    let file_subject = subject_of(path);
    multiple_choice(read_rows(path, Some(CsvHeader::Absent(CSV_COLUMNS)))?, |r| {
        let f = Fields::new(r, "mmlu", "question, choices + answer (0-3), or CSV question, A, B, C, D, answer letter");
        let choices = if f.get("choices").is_some() {
            f.str_list("choices")?
        } else {
            ["A", "B", "C", "D"].iter().map(|k| f.str(k)).collect::<Result<_>>()?
        };
        if choices.len() != 4 {
            bail!("{}: {} choices; MMLU items have four", r.at, choices.len());
        }
        let answer = f.str("answer")?;
        let gold = match letter_index(&answer) {
            Some(i) => i,
            None => f.int("answer")?,
        };
        let subject = if f.get("subject").is_some() { f.str("subject")? } else { file_subject.clone() };
        let description = format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        );
        let context = format!(
            "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
            f.str("question")?.trim(),
            choices[0],
            choices[1],
            choices[2],
            choices[3]
        );
        mc(r, description, context, ["A", "B", "C", "D"].map(String::from).to_vec(), gold)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn mmlu_original_csv_and_hf_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::write(d.path(), "abstract_algebra_test.csv", "\"Find 2+2.\",3,4,5,6,B\n");
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(
            v[0].description,
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        );
        assert_eq!(v[0].context, "Find 2+2.\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
        assert_eq!((v[0].choices.len(), v[0].gold), (4, 1));

        let p = test_files::jsonl(
            d.path(),
            "mmlu.jsonl",
            &[
                json!({"question": "Q?", "subject": "high_school_physics", "choices": ["a", "b", "c", "d"], "answer": 3}),
            ],
        );
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert!(v[0].description.contains("about high school physics."));
        assert_eq!(v[0].gold, 3);
    }
}
