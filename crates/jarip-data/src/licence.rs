//! Data licences: the licence each input file of `data prepare` was given under, recorded in the
//! ledger beside its path, size and SHA-256 so the model card can list what a model was built
//! from and on what terms.
//!
//! A file's licence is stated, never guessed, in one of two ways (the first that matches wins):
//! 1. `--licence PATTERN=SPDX` on the command line, in order: `PATTERN` is a glob matched against
//!    the input path as given (a pattern without `/` also against the file name), or a
//!    directory that the path lies under;
//! 2. a [`LICENCES_FILE`] beside the data, in the file's directory or any directory above it (the
//!    nearest wins): a JSON object of `"PATTERN": "SPDX"`, patterns relative to that directory.
//!
//! `SPDX` is an SPDX licence expression (`CC-BY-4.0`, `MIT OR Apache-2.0`,
//! `LicenseRef-…` for terms SPDX does not list); its syntax is checked, not its meaning. A file
//! matched by neither has no stated licence, which the card shows as such.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The licence manifest read beside the data.
pub const LICENCES_FILE: &str = "licences.json";

/// One `--licence PATTERN=SPDX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceRule {
    pub pattern: String,
    pub spdx: String,
}

impl std::str::FromStr for LicenceRule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((pattern, spdx)) = s.rsplit_once('=') else {
            bail!("--licence {s:?}: expected PATH_OR_GLOB=SPDX, e.g. 'data/ko/**=CC-BY-4.0'");
        };
        let (pattern, spdx) = (pattern.trim(), spdx.trim());
        if pattern.is_empty() {
            bail!("--licence {s:?}: the path or glob before '=' is empty");
        }
        glob::Pattern::new(pattern).with_context(|| format!("--licence {s:?}: {pattern:?} is not a glob"))?;
        check_spdx(spdx).with_context(|| format!("--licence {s:?}"))?;
        Ok(Self { pattern: pattern.to_string(), spdx: spdx.to_string() })
    }
}

/// Checks the syntax of an SPDX licence expression: identifiers of letters, digits, `.`, `-`,
/// `+` and `:` (`LicenseRef-`, `DocumentRef-`), joined by AND, OR, WITH and parentheses.
pub fn check_spdx(expr: &str) -> Result<()> {
    let spaced = expr.replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    if tokens.is_empty() {
        bail!("the SPDX licence expression is empty");
    }
    let mut depth = 0i32;
    let mut want_id = true;
    for t in &tokens {
        match *t {
            "(" if want_id => depth += 1,
            ")" if !want_id => {
                depth -= 1;
                if depth < 0 {
                    bail!("{expr:?}: unbalanced ')'");
                }
            }
            "AND" | "OR" | "WITH" if !want_id => want_id = true,
            id if want_id && id.chars().all(|c| c.is_ascii_alphanumeric() || ".-+:".contains(c)) => want_id = false,
            other => bail!("{expr:?} is not an SPDX licence expression (unexpected {other:?})"),
        }
    }
    if want_id || depth != 0 {
        bail!("{expr:?} is not a complete SPDX licence expression");
    }
    Ok(())
}

/// A file's licence and where it was stated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stated {
    pub spdx: String,
    /// `--licence PATTERN` or the licences file's path.
    pub from: String,
}

fn matches(pattern: &str, path: &Path) -> bool {
    let text = path.to_string_lossy();
    let Ok(p) = glob::Pattern::new(pattern) else { return false };
    let opts = glob::MatchOptions { require_literal_separator: false, ..Default::default() };
    if p.matches_with(&text, opts) || path.starts_with(pattern) {
        return true;
    }
    !pattern.contains('/') && path.file_name().is_some_and(|n| p.matches(&n.to_string_lossy()))
}

/// The licence of `file` by the rules (see the module doc). A licences file that is not a JSON
/// object of valid expressions is an error naming it.
pub fn resolve(file: &Path, rules: &[LicenceRule]) -> Result<Option<Stated>> {
    Resolver::new(rules).resolve(file)
}

/// A licences file found in a directory: its path and its `(pattern, SPDX)` pairs.
type LicencesFile = (String, Vec<(String, String)>);

/// [`resolve`] over many files: each directory's licences file is looked up, read and checked
/// once, not once per file under it.
pub struct Resolver<'a> {
    rules: &'a [LicenceRule],
    /// Directory → the licences file's path and patterns (`None`: the directory has none).
    dirs: HashMap<PathBuf, Option<LicencesFile>>,
}

impl<'a> Resolver<'a> {
    pub fn new(rules: &'a [LicenceRule]) -> Self {
        Self { rules, dirs: HashMap::new() }
    }

    fn licences_in(&mut self, dir: &Path) -> Result<&Option<LicencesFile>> {
        if !self.dirs.contains_key(dir) {
            let manifest = dir.join(LICENCES_FILE);
            let found = if manifest.is_file() {
                let text = std::fs::read_to_string(&manifest)
                    .with_context(|| format!("cannot read {}", manifest.display()))?;
                let map: BTreeMap<String, String> = serde_json::from_str(&text).with_context(|| {
                    format!("{}: expected a JSON object of \"PATTERN\": \"SPDX\"", manifest.display())
                })?;
                for (pattern, spdx) in &map {
                    check_spdx(spdx).with_context(|| format!("{}: {pattern:?}", manifest.display()))?;
                }
                Some((manifest.display().to_string(), map.into_iter().collect()))
            } else {
                None
            };
            self.dirs.insert(dir.to_path_buf(), found);
        }
        Ok(&self.dirs[dir])
    }

    pub fn resolve(&mut self, file: &Path) -> Result<Option<Stated>> {
        if let Some(r) = self.rules.iter().find(|r| matches(&r.pattern, file)) {
            return Ok(Some(Stated { spdx: r.spdx.clone(), from: format!("--licence {}", r.pattern) }));
        }
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        for dir in abs.ancestors().skip(1) {
            let Some((from, patterns)) = self.licences_in(dir)? else { continue };
            let rel = abs.strip_prefix(dir).unwrap_or(&abs);
            // The nearest licences file speaks for its directory; files it does not name have none.
            return Ok(patterns
                .iter()
                .find(|(pattern, _)| matches(pattern, rel))
                .map(|(_, spdx)| Stated { spdx: spdx.clone(), from: from.clone() }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions_are_checked() {
        for ok in [
            "MIT",
            "CC-BY-4.0",
            "MIT OR Apache-2.0",
            "(MIT AND BSD-3-Clause) OR GPL-3.0-or-later",
            "LicenseRef-KR-public-works",
            "GPL-2.0-only WITH Classpath-exception-2.0",
        ] {
            check_spdx(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "MIT OR", "(MIT", "MIT)", "MIT Apache", "all rights/reserved"] {
            assert!(check_spdx(bad).is_err(), "{bad:?} should be refused");
        }
        assert!("data/ko/**".parse::<LicenceRule>().is_err(), "no '='");
        assert!("x=not spdx".parse::<LicenceRule>().unwrap_err().to_string().contains("x=not spdx"));
    }

    #[test]
    fn flags_win_then_the_nearest_licences_file() {
        let d = tempfile::tempdir().unwrap();
        let ko = d.path().join("corpus/ko");
        std::fs::create_dir_all(&ko).unwrap();
        std::fs::write(d.path().join("corpus").join(LICENCES_FILE), r#"{"ko/*.txt": "CC0-1.0", "en/**": "CC-BY-2.5"}"#)
            .unwrap();
        let law = ko.join("law.txt");
        let en = d.path().join("corpus/en/a/b.txt");
        let other = d.path().join("corpus/misc.jsonl");
        let stated = |p: &Path, rules: &[LicenceRule]| resolve(p, rules).unwrap().map(|s| s.spdx);
        assert_eq!(stated(&law, &[]).as_deref(), Some("CC0-1.0"));
        assert_eq!(stated(&en, &[]).as_deref(), Some("CC-BY-2.5"));
        assert_eq!(stated(&other, &[]), None);
        let rules: Vec<LicenceRule> = vec!["law.txt=MIT".parse().unwrap(), "*.jsonl=Apache-2.0".parse().unwrap()];
        let s = resolve(&law, &rules).unwrap().unwrap();
        assert_eq!((s.spdx.as_str(), s.from.as_str()), ("MIT", "--licence law.txt"));
        assert_eq!(stated(&other, &rules).as_deref(), Some("Apache-2.0"));
        let dir_rule: Vec<LicenceRule> =
            vec![format!("{}=CC-BY-SA-4.0", d.path().join("corpus/en").display()).parse().unwrap()];
        assert_eq!(stated(&en, &dir_rule).as_deref(), Some("CC-BY-SA-4.0"));
        std::fs::write(d.path().join("corpus").join(LICENCES_FILE), r#"{"ko/*.txt": "not a licence!"}"#).unwrap();
        let err = format!("{:#}", resolve(&law, &[]).unwrap_err());
        assert!(err.contains(LICENCES_FILE) && err.contains("ko/*.txt"), "{err}");
    }
}
