//! HellaSwag (`ind, activity_label, ctx_a, ctx_b, endings, label`, the same in the original
//! JSONL and on Hugging Face), as lm-evaluation-harness's `hellaswag` renders it:
//! `preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))` as the query and the
//! preprocessed endings as choices.

use super::{mc, multiple_choice, Fields};
use crate::rows::read_rows;
use crate::task::Examples;
use anyhow::Result;
use regex::Regex;
use std::path::Path;
use std::sync::OnceLock;

/// The harness's clean-up of WikiHow artefacts: ` [title]` becomes `. `, any other bracketed
/// tag is dropped, double spaces become single.
pub fn preprocess(text: &str) -> String {
    static BRACKETS: OnceLock<Regex> = OnceLock::new();
    let re = BRACKETS.get_or_init(|| Regex::new(r"\[.*?\]").expect("valid regex"));
    let t = text.trim().replace(" [title]", ". ");
    re.replace_all(&t, "").replace("  ", " ")
}

/// Python's `str.capitalize`: first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

pub fn read(path: &Path) -> Result<Examples> {
    multiple_choice(read_rows(path, None)?, |r| {
        let f = Fields::new(r, "hellaswag", "activity_label, ctx_a, ctx_b, endings, label");
        let ctx = format!("{} {}", f.str("ctx_a")?, capitalize(&f.str("ctx_b")?));
        let query = preprocess(&format!("{}: {ctx}", f.str("activity_label")?));
        let endings = f.str_list("endings")?.iter().map(|e| preprocess(e)).collect();
        mc(r, String::new(), query, endings, f.int("label")?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::test_files;
    use serde_json::json;

    #[test]
    fn hellaswag_query_is_preprocessed_like_the_harness() {
        assert_eq!(preprocess(" Hold it [title] Then [step] go  on. "), "Hold it. Then go on.");
        assert_eq!(capitalize("tHE man"), "The man");
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "hellaswag_val.jsonl",
            &[
                json!({"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.", "ctx_b": "then", "endings": [", the man adds wax.", " a woman [header] walks."], "label": "1"}),
            ],
        );
        let Examples::MultipleChoice(v) = read(&p).unwrap() else { panic!() };
        assert_eq!(v[0].context, "Removing ice from car: Then, the man writes over the snow. Then");
        assert_eq!(v[0].choices, vec![", the man adds wax.", "a woman walks."]);
        assert_eq!(v[0].gold, 1);
    }
}
