//! The KFP conformance corpus: pipelines compiled by the kfp SDK, taken from
//! kubeflow/pipelines. It is not part of the repository: `GANTRY_KFP_CORPUS` names its
//! directory (CI sets it to `../shared/kfp-conformance`). Without it the corpus tests say so in
//! one line and pass, so a plain clone's `cargo test` passes too.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::repo_root;

/// The variable naming the corpus directory.
pub const CORPUS_VAR: &str = "GANTRY_KFP_CORPUS";

/// The corpus directory `GANTRY_KFP_CORPUS` names (a relative path is taken from the
/// repository root, since each crate's tests run in their own directory). When the variable
/// is unset or empty: `None`, after one line on stderr saying that `what` is skipped.
///
/// Panics when the variable names no directory: a corpus asked for and missing is an error.
#[track_caller]
pub fn corpus_dir(what: &str) -> Option<PathBuf> {
    match corpus_dir_from(std::env::var_os(CORPUS_VAR)) {
        Ok(dir) => Some(dir),
        Err(None) => {
            // Straight to stderr, not through eprintln!: the test harness captures that and
            // shows it only for failing tests, and this line is for passing ones.
            let _ = writeln!(
                std::io::stderr(),
                "kfp corpus: {CORPUS_VAR} is not set; skipping {what} (CI sets it to \
                 ../shared/kfp-conformance)"
            );
            None
        }
        Err(Some(e)) => panic!("{e}"),
    }
}

/// [`corpus_dir`] without the side effects: `Err(None)` when unset, `Err(Some(why))` when it
/// names no directory.
fn corpus_dir_from(value: Option<std::ffi::OsString>) -> Result<PathBuf, Option<String>> {
    let value = value.filter(|v| !v.is_empty()).ok_or(None)?;
    let dir = repo_root().join(PathBuf::from(&value));
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Some(format!(
            "{CORPUS_VAR}={} names no directory ({}): point it at a copy of the KFP conformance \
             corpus, or unset it to skip the corpus tests",
            value.to_string_lossy(),
            dir.display()
        )))
    }
}

/// Every `*.yaml` file under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(dir, &mut out);
    out.sort();
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// The path of `path` below `dir`, with `/` separators (a table's file column).
pub fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `text` as one Markdown table cell: white space folded, `|` escaped.
pub fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_skips_and_a_missing_directory_is_an_error() {
        assert_eq!(corpus_dir_from(None), Err(None));
        assert_eq!(corpus_dir_from(Some("".into())), Err(None));
        let e = corpus_dir_from(Some("no/such/corpus".into())).expect_err("missing");
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("names no directory")),
            "{e:?}"
        );
        // Relative to the repository root, wherever the test runs.
        assert_eq!(
            corpus_dir_from(Some("testkit".into())),
            Ok(repo_root().join("testkit"))
        );
    }

    #[test]
    fn files_cells_and_relative_paths() {
        let root = repo_root();
        let files = yaml_files(&root.join("core/src/engine/testdata"));
        assert!(files.windows(2).all(|w| w[0] < w[1]));
        assert!(files
            .iter()
            .any(|f| relative(&root, f) == "core/src/engine/testdata/loops.yaml"));
        assert_eq!(cell(" a |\n b "), "a \\| b");
    }
}
