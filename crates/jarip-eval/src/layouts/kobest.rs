//! KoBEST (`skt/kobest_v1` field names), as lm-evaluation-harness's `kobest_*` tasks render it.
//! Labels are 0-based; KoBEST reports accuracy and macro-F1.

use super::{mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::{bail, Result};
use std::path::Path;

fn no_yes() -> Vec<String> {
    vec!["아니오".into(), "예".into()]
}

/// `{paragraph} 질문: {question} 답변: ` → 아니오 / 예.
pub fn boolq(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kobest_boolq", "paragraph, question, label");
        let context = format!("{} 질문: {} 답변: ", f.str("paragraph")?, f.str("question")?);
        mc(r, String::new(), context, no_yes(), f.int("label")?)
    })
}

/// `{premise}  왜냐하면` (cause) or `{premise}  그래서` (effect) → the two alternatives.
/// The double space is the harness's: its connector already starts with a space.
pub fn copa(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kobest_copa", "premise, question, alternative_1, alternative_2, label");
        let question = f.str("question")?;
        let connector = match question.trim() {
            "원인" => " 왜냐하면",
            "결과" => " 그래서",
            other => bail!("{}: question is {other:?}; KoBEST COPA questions are 원인 or 결과", r.at),
        };
        let context = format!("{} {connector}", f.str("premise")?);
        mc(r, String::new(), context, vec![f.str("alternative_1")?, f.str("alternative_2")?], f.int("label")?)
    })
}

/// `문장1: {context_1} 문장2: {context_2} 두 문장에서 {word}가 같은 뜻으로 쓰였나?` → 아니오 / 예.
pub fn wic(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kobest_wic", "word, context_1, context_2, label");
        let context = format!(
            "문장1: {} 문장2: {} 두 문장에서 {}가 같은 뜻으로 쓰였나?",
            f.str("context_1")?,
            f.str("context_2")?,
            f.str("word")?
        );
        mc(r, String::new(), context, no_yes(), f.int("label")?)
    })
}

/// `문장: {context}` → the four endings.
pub fn hellaswag(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kobest_hellaswag", "context, ending_1, ending_2, ending_3, ending_4, label");
        let endings = (1..=4).map(|i| f.str(&format!("ending_{i}"))).collect::<Result<Vec<_>>>()?;
        mc(r, String::new(), format!("문장: {}", f.str("context")?), endings, f.int("label")?)
    })
}

/// `문장: {sentence} 긍부정:` → 부정 / 긍정.
pub fn sentineg(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "kobest_sentineg", "sentence, label");
        let context = format!("문장: {} 긍부정:", f.str("sentence")?);
        mc(r, String::new(), context, vec!["부정".into(), "긍정".into()], f.int("label")?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use crate::task::McExample;
    use serde_json::json;

    fn one(e: Examples) -> McExample {
        match e {
            Examples::MultipleChoice(mut v) => v.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn boolq_prompt() {
        let d = tempfile::tempdir().unwrap();
        // The HF dataset viewer exports CSV with the same columns.
        let p = test_files::write(
            d.path(),
            "boolq.csv",
            "paragraph,question,label\n로마는 이탈리아의 수도이다.,로마는 수도인가?,1\n",
        );
        let ex = one(boolq(&p).unwrap());
        assert_eq!(ex.context, "로마는 이탈리아의 수도이다. 질문: 로마는 수도인가? 답변: ");
        assert_eq!(ex.choices, vec!["아니오", "예"]);
        assert_eq!(ex.gold, 1);
    }

    #[test]
    fn copa_prompt_and_connector() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "copa.jsonl",
            &[
                json!({"premise": "물을 쏟았다.", "question": "결과", "alternative_1": "바닥이 젖었다.", "alternative_2": "해가 떴다.", "label": 0}),
            ],
        );
        let ex = one(copa(&p).unwrap());
        assert_eq!(ex.context, "물을 쏟았다.  그래서");
        assert_eq!(ex.choices, vec!["바닥이 젖었다.", "해가 떴다."]);
        let p = test_files::jsonl(
            d.path(),
            "bad.jsonl",
            &[json!({"premise": "p", "question": "이유", "alternative_1": "a", "alternative_2": "b", "label": 0})],
        );
        assert!(copa(&p).unwrap_err().to_string().contains("원인 or 결과"));
    }

    #[test]
    fn wic_hellaswag_sentineg_prompts() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "wic.jsonl",
            &[json!({"word": "배", "context_1": "배를 먹었다.", "context_2": "배를 탔다.", "label": false})],
        );
        let ex = one(wic(&p).unwrap());
        assert_eq!(ex.context, "문장1: 배를 먹었다. 문장2: 배를 탔다. 두 문장에서 배가 같은 뜻으로 쓰였나?");
        assert_eq!(ex.gold, 0);

        let p = test_files::jsonl(
            d.path(),
            "hs.jsonl",
            &[
                json!({"context": "그는 문을 열었다.", "ending_1": "a", "ending_2": "b", "ending_3": "c", "ending_4": "d", "label": 3}),
            ],
        );
        let ex = one(hellaswag(&p).unwrap());
        assert_eq!((ex.context.as_str(), ex.choices.len(), ex.gold), ("문장: 그는 문을 열었다.", 4, 3));

        let p = test_files::write(d.path(), "sn.tsv", "sentence\tlabel\n영화가 재미없지 않았다.\t1\n");
        let ex = one(sentineg(&p).unwrap());
        assert_eq!(ex.context, "문장: 영화가 재미없지 않았다. 긍부정:");
        assert_eq!(ex.choices, vec!["부정", "긍정"]);
        assert_eq!(ex.gold, 1);
    }
}
