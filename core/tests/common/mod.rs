//! Shared by the corpus tests: where the KFP conformance corpus is, its files, table cells and
//! a line diff for golden files.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

pub fn corpus_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("GANTRY_CONFORMANCE_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    // `shared/` beside the repository (the usual layout), then inside it.
    candidates.push(manifest.join("../../shared/kfp-conformance"));
    candidates.push(manifest.join("../shared/kfp-conformance"));
    match candidates.iter().find(|c| c.is_dir()) {
        Some(dir) => dir.clone(),
        None => panic!(
            "the KFP conformance corpus is missing: looked in {}. It lives in `shared/kfp-conformance` \
             beside the repository; set GANTRY_CONFORMANCE_DIR to use another copy.",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

pub fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Lines only in `expected` (`-`) or only in `actual` (`+`), in order.
pub fn diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for line in &exp {
        if !act.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &act {
        if !exp.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order or repetition)\n");
    }
    out
}

/// The corpus-relative path of `path`, with `/` separators.
pub fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Compares `actual` with the golden file, or rewrites it under `GANTRY_BLESS=1`.
pub fn check_golden(golden: &Path, actual: &str, test: &str) {
    if std::env::var("GANTRY_BLESS").is_ok_and(|v| v == "1") {
        fs::write(golden, actual).unwrap_or_else(|e| panic!("writing {}: {e}", golden.display()));
        return;
    }
    let expected = fs::read_to_string(golden)
        .unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}; generate it with GANTRY_BLESS=1 cargo test -p gantry-core --test {test}",
                golden.display()
            )
        })
        .replace("\r\n", "\n");
    assert!(
        expected == actual,
        "the results differ from {} (- committed, + now):\n{}\nIf the change is intended, \
         rerun with GANTRY_BLESS=1 cargo test -p gantry-core --test {test} and commit the file.",
        golden.display(),
        diff(&expected, actual)
    );
}
