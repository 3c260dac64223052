//! CLIcK (`EunsuKim/CLIcK` rows: id, paragraph, question, choices, answer = the correct choice's
//! text), as lm-evaluation-harness's `click_*` tasks render it: an instruction, the context if
//! any, the question, options A–D on one line, then `정답:`; scored on the letters. CSAT items
//! (id containing `CSAT`) are scored on A–E although, as in the harness, the prompt lists four.

use super::{letters, mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::{bail, Result};
use std::path::Path;

pub fn read(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "click", "id, paragraph, question, choices, answer");
        let choices = f.str_list("choices")?;
        if choices.len() < 4 {
            bail!("{}: {} choices; CLIcK items have four or five", r.at, choices.len());
        }
        let answer = f.str("answer")?;
        let Some(gold) = choices.iter().position(|c| *c == answer) else {
            bail!("{}: answer {answer:?} is not among the choices", r.at);
        };
        let id = if f.get("id").is_some() { f.str("id")? } else { String::new() };
        let paragraph = if f.get("paragraph").is_some() { f.str("paragraph")? } else { String::new() };
        let question = f.str("question")?;
        let options = format!("A:{}, B: {}, C: {}, D: {}", choices[0], choices[1], choices[2], choices[3]);
        let context = if paragraph.is_empty() {
            format!(
                "주어진 질문을 천천히 읽고, 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n질문: {question}\n보기:\n{options}\n정답:"
            )
        } else {
            format!(
                "주어진 맥락을 천천히 읽고, 질문에 대한 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n맥락: {paragraph}\n질문: {question}\n보기:\n{options}\n정답:"
            )
        };
        let labels = letters(if id.contains("CSAT") { 5 } else { 4 });
        mc(r, String::new(), context, labels, gold as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn click_prompts_with_and_without_context() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::write(
            d.path(),
            "click.json",
            &json!([
                {"id": "KIIP_law_1", "paragraph": "", "question": "수도는?", "choices": ["서울", "부산", "대구", "광주"], "answer": "서울"},
                {"id": "CSAT_korean_22_3", "paragraph": "글", "question": "맞는 것은?", "choices": ["a", "b", "c", "d", "e"], "answer": "e"}
            ])
            .to_string(),
        );
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(
            v[0].context,
            "주어진 질문을 천천히 읽고, 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n질문: 수도는?\n보기:\nA:서울, B: 부산, C: 대구, D: 광주\n정답:"
        );
        assert_eq!((v[0].choices.len(), v[0].gold), (4, 0));
        assert!(v[1].context.starts_with("주어진 맥락을 천천히 읽고"));
        assert!(v[1].context.contains("\n\n맥락: 글\n질문: 맞는 것은?\n보기:\nA:a, B: b, C: c, D: d\n정답:"));
        assert_eq!((v[1].choices.len(), v[1].gold), (5, 4));
        let p = test_files::write(
            d.path(),
            "bad.json",
            &json!([{"id": "x", "question": "q", "choices": ["a", "b", "c", "d"], "answer": "z"}]).to_string(),
        );
        assert!(read(&p).unwrap_err().to_string().contains("answer \"z\" is not among the choices"));
    }
}
