//! Helpers shared by the binary's end-to-end tests: run `jarip`, check how it ended.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

pub fn jarip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jarip")).args(args).output().expect("run jarip")
}

pub fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 test path").to_string()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "jarip failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts failure with a message on stderr that mentions every needle.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}
