//! What a task is once read: its examples in one of three kinds (multiple choice, generative,
//! bits per byte), whatever layout the file was published in.

use anyhow::{bail, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The file layouts `--task LAYOUT=PATH` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Our own JSONL format (multiple choice, generative or text rows; see the README).
    Jsonl,
    KobestBoolq,
    KobestCopa,
    KobestWic,
    KobestHellaswag,
    KobestSentineg,
    Kmmlu,
    Haerae,
    Click,
    Arc,
    Hellaswag,
    Mmlu,
    /// Plain text (`.txt`, one document) or JSONL with a `text` field: bits per byte.
    Bpb,
}

impl Layout {
    pub const ALL: [Layout; 13] = [
        Layout::Jsonl,
        Layout::KobestBoolq,
        Layout::KobestCopa,
        Layout::KobestWic,
        Layout::KobestHellaswag,
        Layout::KobestSentineg,
        Layout::Kmmlu,
        Layout::Haerae,
        Layout::Click,
        Layout::Arc,
        Layout::Hellaswag,
        Layout::Mmlu,
        Layout::Bpb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Jsonl => "jsonl",
            Layout::KobestBoolq => "kobest_boolq",
            Layout::KobestCopa => "kobest_copa",
            Layout::KobestWic => "kobest_wic",
            Layout::KobestHellaswag => "kobest_hellaswag",
            Layout::KobestSentineg => "kobest_sentineg",
            Layout::Kmmlu => "kmmlu",
            Layout::Haerae => "haerae",
            Layout::Click => "click",
            Layout::Arc => "arc",
            Layout::Hellaswag => "hellaswag",
            Layout::Mmlu => "mmlu",
            Layout::Bpb => "bpb",
        }
    }

    pub fn known() -> String {
        Self::ALL.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.iter().find(|l| l.name() == s) {
            Some(l) => Ok(*l),
            None => bail!("unknown task layout {s:?}; known layouts: {}", Self::known()),
        }
    }
}

/// `LAYOUT=PATH` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub layout: Layout,
    pub path: PathBuf,
}

impl TaskSpec {
    pub fn new(layout: Layout, path: impl Into<PathBuf>) -> Self {
        Self { layout, path: path.into() }
    }
}

impl FromStr for TaskSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((layout, path)) = s.split_once('=') else {
            bail!("task {s:?} is not LAYOUT=PATH (known layouts: {})", Layout::known());
        };
        if path.is_empty() {
            bail!("task {s:?} names no file after '='");
        }
        Ok(Self { layout: layout.trim().parse()?, path: PathBuf::from(path) })
    }
}

impl fmt::Display for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.layout, self.path.display())
    }
}

/// One multiple-choice question, already rendered as lm-evaluation-harness renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct McExample {
    /// Text placed once before any few-shot examples (MMLU's subject line), usually empty.
    pub description: String,
    /// The prompt (`doc_to_text`).
    pub context: String,
    /// The answer texts scored after the context (`doc_to_choice`).
    pub choices: Vec<String>,
    pub gold: usize,
    /// Joins context and choice (lm-eval's `target_delimiter`, a space by default).
    pub delimiter: String,
}

/// One completion task: generate after `prompt`, compare with the answers.
#[derive(Debug, Clone, PartialEq)]
pub struct GenExample {
    pub prompt: String,
    /// Any of these counts as correct.
    pub answers: Vec<String>,
    /// Generation ends at the first of these (never part of the answer).
    pub stop: Vec<String>,
    /// Overrides the run's `--max-gen-tokens`.
    pub max_tokens: Option<usize>,
    /// Joins prompt and answer in few-shot examples.
    pub delimiter: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Examples {
    MultipleChoice(Vec<McExample>),
    Generative(Vec<GenExample>),
    /// Documents whose bits per byte are measured.
    Text(Vec<String>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::MultipleChoice(v) => v.len(),
            Examples::Generative(v) => v.len(),
            Examples::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Examples::MultipleChoice(_) => "multiple_choice",
            Examples::Generative(_) => "generative",
            Examples::Text(_) => "bits_per_byte",
        }
    }
}

/// A task file, read and checked.
#[derive(Debug, Clone)]
pub struct Task {
    /// The file's stem, the key of its results.
    pub name: String,
    pub layout: Layout,
    pub path: PathBuf,
    pub sha256: String,
    pub examples: Examples,
    /// Also report macro-F1 over the gold labels (KoBEST reports it).
    pub macro_f1: bool,
    /// `clean[i]`: example `i` is free of contamination (from `jarip data contamination`'s
    /// report, set by `jarip eval --contamination`). When set, every score is computed a second
    /// time over the clean examples alone; `None` scores the full set only.
    pub clean: Option<Vec<bool>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_unknown_layouts_list_the_known_ones() {
        let s: TaskSpec = "kobest_copa=data/copa.jsonl".parse().unwrap();
        assert_eq!(s, TaskSpec::new(Layout::KobestCopa, "data/copa.jsonl"));
        let e = "superglue=x.csv".parse::<TaskSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown task layout \"superglue\""), "{e}");
        assert!(e.contains("kobest_boolq") && e.contains("mmlu") && e.contains("bpb"), "{e}");
        let e = "x.csv".parse::<TaskSpec>().unwrap_err().to_string();
        assert!(e.contains("LAYOUT=PATH"), "{e}");
        for l in Layout::ALL {
            assert_eq!(l.name().parse::<Layout>().unwrap(), l);
        }
    }
}
