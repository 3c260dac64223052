//! The README's crate table is the truth about the manifests: every crate depends (in its
//! `[dependencies]`) on exactly the jarip crates the table lists, and only on crates listed above
//! it, so the graph flows one way. Also: every crate but jarip-kernels forbids unsafe code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

/// The jarip crates named in a manifest's `[dependencies]` table (not dev- or build-).
fn manifest_deps(crate_dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("");
            if name.starts_with("jarip-") {
                deps.insert(name.to_string());
            }
        }
    }
    deps
}

/// The README's table between `<!-- crate-graph -->` markers, in its order.
fn readme_table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = text.find("<!-- crate-graph -->").expect("README has a crate-graph table");
    let end = text.find("<!-- /crate-graph -->").expect("README's crate-graph table ends");
    text[start..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').map(str::trim).collect();
            (cells.len() == 2 && cells[0].starts_with("jarip")).then(|| (cells[0].to_string(), cells[1].to_string()))
        })
        .collect()
}

#[test]
fn readme_crate_table_matches_the_manifests_and_flows_one_way() {
    let table = readme_table();
    let mut on_disk: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("Cargo.toml").exists() {
            on_disk.insert(dir.file_name().unwrap().to_string_lossy().to_string(), manifest_deps(&dir));
        }
    }
    let listed: BTreeSet<String> = table.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(listed, on_disk.keys().cloned().collect(), "the README's table and crates/ name different crates");
    let mut above: BTreeSet<String> = BTreeSet::new();
    for (krate, cell) in &table {
        let have = &on_disk[krate];
        let want: BTreeSet<String> =
            cell.split(',').map(str::trim).filter(|s| s.starts_with("jarip")).map(str::to_string).collect();
        assert_eq!(have, &want, "{krate}: the manifest's jarip dependencies differ from the README's");
        for d in have {
            assert!(
                above.contains(d),
                "{krate} depends on {d}, which is not above it: the graph does not flow one way"
            );
        }
        above.insert(krate.clone());
    }
}

#[test]
fn every_crate_but_the_kernels_forbids_unsafe_code() {
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = e.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let Ok(text) = std::fs::read_to_string(dir.join(root_file)) else { continue };
            let forbids = text.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]");
            if name == "jarip-kernels" {
                assert!(!forbids, "jarip-kernels is where unsafe code lives");
            } else {
                assert!(forbids, "{name}/{root_file} does not declare #![forbid(unsafe_code)]");
            }
        }
    }
}
