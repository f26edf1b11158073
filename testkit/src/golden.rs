//! Golden files: a test renders what it found (a Markdown table) and compares it with the
//! committed file, so a change in behaviour shows up in review. `GANTRY_BLESS=1` (that value
//! only) rewrites the file instead.

use std::fs;
use std::path::Path;

/// The variable that rewrites golden files.
pub const BLESS_VAR: &str = "GANTRY_BLESS";

/// Whether this run rewrites golden files (`GANTRY_BLESS=1`).
pub fn blessing() -> bool {
    std::env::var(BLESS_VAR).is_ok_and(|v| v == "1")
}

/// Compares `actual` with the file `golden`, or rewrites the file when [`blessing`]. `rerun`
/// is the command that produced `actual` (for the message); the error names the lines that
/// differ.
pub fn compare(golden: &Path, actual: &str, rerun: &str) -> Result<(), String> {
    if blessing() {
        return fs::write(golden, actual).map_err(|e| format!("writing {}: {e}", golden.display()));
    }
    let expected = fs::read_to_string(golden)
        .map_err(|e| {
            format!(
                "reading {}: {e}; generate it with {BLESS_VAR}=1 {rerun}",
                golden.display()
            )
        })?
        .replace("\r\n", "\n");
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "the results differ from {} (- committed, + now):\n{}\nIf the change is intended, rerun \
         with {BLESS_VAR}=1 {rerun} and commit the file.",
        golden.display(),
        line_diff(&expected, actual)
    ))
}

/// [`compare`] for a test body: panics when the results differ.
#[track_caller]
pub fn check(golden: &Path, actual: &str, rerun: &str) {
    if let Err(e) = compare(golden, actual, rerun) {
        panic!("{e}");
    }
}

/// Lines only in `expected` (`-`) or only in `actual` (`+`), in order: table rows are unique,
/// so this reads as a diff of them without a diff algorithm.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for line in exp.iter().filter(|l| !act.contains(l)) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in act.iter().filter(|l| !exp.contains(l)) {
        out.push_str(&format!("+ {line}\n"));
    }
    if out.is_empty() {
        out.push_str("(same lines, different order or repetition)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_lines_on_either_side() {
        let d = line_diff("| a |\n| b |\n", "| a |\n| c |\n");
        assert_eq!(d, "- | b |\n+ | c |\n");
        assert!(line_diff("x\ny\n", "y\nx\n").contains("different order"));
    }

    #[test]
    fn a_different_file_is_an_error_naming_the_rerun_command() {
        if blessing() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let golden = dir.path().join("t.md");
        fs::write(&golden, "| a |\n").expect("write");
        assert_eq!(compare(&golden, "| a |\n", "cargo test"), Ok(()));
        let e = compare(&golden, "| b |\n", "cargo test -p x").expect_err("differs");
        assert!(e.contains("- | a |") && e.contains("+ | b |"), "{e}");
        assert!(e.contains("GANTRY_BLESS=1 cargo test -p x"), "{e}");
    }
}
