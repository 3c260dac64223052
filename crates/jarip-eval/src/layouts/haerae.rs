//! HAE-RAE Bench (`HAERAE-HUB/HAE_RAE_BENCH` rows: `query` holding the question with its
//! options, `answer` such as `(A)`), as lm-evaluation-harness's `haerae_*` tasks score it: the
//! query as is, then the five labels `(A)`…`(E)`.

use super::{letter_index, mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::{bail, Result};
use std::path::Path;

const LABELS: [&str; 5] = ["(A)", "(B)", "(C)", "(D)", "(E)"];

pub fn read(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "haerae", "query, answer ((A)-(E))");
        let answer = f.str("answer")?;
        let Some(gold) = letter_index(&answer) else {
            bail!("{}: answer {answer:?} is not one of (A)…(E)", r.at);
        };
        mc(r, String::new(), f.str("query")?, LABELS.iter().map(|s| s.to_string()).collect(), gold)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn haerae_query_and_labels() {
        let d = tempfile::tempdir().unwrap();
        let q = "다음 중 '가랑비'의 뜻은?\n(A) 가늘게 내리는 비\n(B) 큰 비\n(C) 눈\n(D) 우박\n(E) 안개\n정답:";
        let p = test_files::jsonl(d.path(), "rare_word.jsonl", &[json!({"query": q, "answer": "(A)"})]);
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(v[0].context, q);
        assert_eq!(v[0].choices, vec!["(A)", "(B)", "(C)", "(D)", "(E)"]);
        assert_eq!(v[0].gold, 0);
        let p = test_files::jsonl(d.path(), "bad.jsonl", &[json!({"query": "q", "answer": "(F)"})]);
        assert!(read(&p).unwrap_err().to_string().contains("gold index 5 is out of range for 5 choices"));
    }
}
