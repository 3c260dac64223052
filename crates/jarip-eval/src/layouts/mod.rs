//! Readers for each `--task` layout. Every published layout is rendered exactly as
//! lm-evaluation-harness renders it (its `doc_to_text`, `doc_to_choice`, `doc_to_target`),
//! so scores sit beside published ones; each module names the harness task it follows.

mod arc;
mod click;
mod haerae;
mod hellaswag;
mod kmmlu;
mod kobest;
mod mmlu;
mod ours;

use crate::rows::{Fields, Row};
use crate::task::{Examples, Layout, McExample, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub use ours::{GEN_DEFAULT_STOP, JSONL_FIELDS};

/// Reads and checks a task file. Nothing is scored here: a bad row fails before any model runs.
pub fn load_task(spec: &TaskSpec) -> Result<Task> {
    let path = &spec.path;
    if !path.exists() {
        bail!("task file {} does not exist", path.display());
    }
    if path.is_dir() {
        bail!("{} is a directory; --task takes one file (LAYOUT=FILE)", path.display());
    }
    let examples = match spec.layout {
        Layout::Jsonl => ours::jsonl(path)?,
        Layout::Bpb => ours::bpb(path)?,
        Layout::KobestBoolq => kobest::boolq(path)?,
        Layout::KobestCopa => kobest::copa(path)?,
        Layout::KobestWic => kobest::wic(path)?,
        Layout::KobestHellaswag => kobest::hellaswag(path)?,
        Layout::KobestSentineg => kobest::sentineg(path)?,
        Layout::Kmmlu => kmmlu::read(path)?,
        Layout::Haerae => haerae::read(path)?,
        Layout::Click => click::read(path)?,
        Layout::Arc => arc::read(path)?,
        Layout::Hellaswag => hellaswag::read(path)?,
        Layout::Mmlu => mmlu::read(path)?,
    };
    if examples.is_empty() {
        bail!("{} holds no examples", path.display());
    }
    let sha256 = jarip_ledger::sha256_file(path).with_context(|| format!("cannot hash {}", path.display()))?;
    Ok(Task {
        name: stem(path),
        layout: spec.layout,
        path: path.clone(),
        sha256,
        examples,
        macro_f1: matches!(
            spec.layout,
            Layout::KobestBoolq
                | Layout::KobestCopa
                | Layout::KobestWic
                | Layout::KobestHellaswag
                | Layout::KobestSentineg
        ),
        clean: None,
    })
}

/// Loads every spec; task names (file stems) that collide get their layout as a prefix
/// (`kobest_boolq:test`), and a collision that remains is an error.
pub fn load_tasks(specs: &[TaskSpec]) -> Result<Vec<Task>> {
    let mut tasks: Vec<Task> = specs.iter().map(load_task).collect::<Result<_>>()?;
    let count = |tasks: &[Task], name: &str| tasks.iter().filter(|t| t.name == name).count();
    let clashing: Vec<usize> = (0..tasks.len()).filter(|&i| count(&tasks, &tasks[i].name) > 1).collect();
    for i in clashing {
        tasks[i].name = format!("{}:{}", tasks[i].layout, tasks[i].name);
    }
    for t in &tasks {
        if count(&tasks, &t.name) > 1 {
            bail!("two tasks would both be named {:?}: rename one of the files", t.name);
        }
    }
    Ok(tasks)
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// A multiple-choice example, checked: a non-empty choice list, no empty choice text (the
/// length normalisation divides by it), a gold index inside the list.
fn mc(row: &Row, description: String, context: String, choices: Vec<String>, gold: i64) -> Result<McExample> {
    if choices.is_empty() {
        bail!("{}: empty choice list", row.at);
    }
    if let Some(i) = choices.iter().position(|c| c.is_empty()) {
        bail!("{}: choice {i} is empty text", row.at);
    }
    if gold < 0 || gold as usize >= choices.len() {
        bail!(
            "{}: gold index {gold} is out of range for {} choices (valid: 0..={})",
            row.at,
            choices.len(),
            choices.len() - 1
        );
    }
    Ok(McExample { description, context, choices, gold: gold as usize, delimiter: " ".into() })
}

fn multiple_choice(rows: Vec<Row>, f: impl Fn(&Row) -> Result<McExample>) -> Result<Examples> {
    Ok(Examples::MultipleChoice(rows.iter().map(f).collect::<Result<_>>()?))
}

/// `["A", "B", …]` for `n` options.
fn letters(n: usize) -> Vec<String> {
    (0..n).map(|i| ((b'A' + i as u8) as char).to_string()).collect()
}

/// Index of a letter answer (`"B"`, `"(B)"`, `" b "`) among `n` options.
fn letter_index(answer: &str) -> Option<i64> {
    let a = answer.trim().trim_start_matches('(').trim_end_matches(')').trim();
    let mut chars = a.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some((c.to_ascii_uppercase() as u8 - b'A') as i64),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_files {
    use std::path::{Path, PathBuf};

    /// Writes `text` to `dir/name` and returns the path.
    pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn jsonl(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        write(dir, name, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_are_refused_with_their_position() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(
            d.path(),
            "t.jsonl",
            &[
                serde_json::json!({"context": "a", "choices": ["x", "y"], "gold": 1}),
                serde_json::json!({"context": "b", "choices": ["x", "y"], "gold": 2}),
            ],
        );
        let e = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:2: gold index 2 is out of range for 2 choices"), "{e}");
        let p =
            test_files::jsonl(d.path(), "u.jsonl", &[serde_json::json!({"context": "a", "choices": [], "gold": 0})]);
        let e = load_task(&TaskSpec::new(Layout::Jsonl, &p)).unwrap_err().to_string();
        assert!(e.contains("u.jsonl:1: empty choice list"), "{e}");
    }

    #[test]
    fn a_file_in_another_layout_is_named_as_such() {
        let d = tempfile::tempdir().unwrap();
        let p = test_files::jsonl(d.path(), "copa.jsonl", &[serde_json::json!({"premise": "p", "label": 0})]);
        let e = load_task(&TaskSpec::new(Layout::KobestBoolq, &p)).unwrap_err().to_string();
        assert!(e.contains("missing field \"paragraph\", which layout kobest_boolq expects"), "{e}");
    }

    #[test]
    fn clashing_stems_get_their_layout() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        std::fs::create_dir_all(d.path().join("b")).unwrap();
        let boolq = test_files::jsonl(
            &d.path().join("a"),
            "test.jsonl",
            &[serde_json::json!({"paragraph": "p", "question": "q", "label": 1})],
        );
        let senti =
            test_files::jsonl(&d.path().join("b"), "test.jsonl", &[serde_json::json!({"sentence": "s", "label": 0})]);
        let tasks =
            load_tasks(&[TaskSpec::new(Layout::KobestBoolq, &boolq), TaskSpec::new(Layout::KobestSentineg, &senti)])
                .unwrap();
        assert_eq!(tasks[0].name, "kobest_boolq:test");
        assert_eq!(tasks[1].name, "kobest_sentineg:test");
        let e = load_tasks(&[TaskSpec::new(Layout::KobestBoolq, &boolq), TaskSpec::new(Layout::KobestBoolq, &boolq)])
            .unwrap_err();
        assert!(e.to_string().contains("rename one"), "{e}");
    }

    #[test]
    fn letters_and_letter_answers() {
        assert_eq!(letters(3), vec!["A", "B", "C"]);
        assert_eq!(letter_index("(C)"), Some(2));
        assert_eq!(letter_index(" b "), Some(1));
        assert_eq!(letter_index("AB"), None);
    }
}
