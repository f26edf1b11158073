//! The one error type of the IR parser and validator: a message and the path in the document
//! it is about.

use std::fmt;

/// A refusal of a pipeline document or of run parameters, naming where in the document the
/// problem is: `root.dag.tasks.train.inputs.parameters.n_estimators: unknown component input
/// "n_estimators"`.
///
/// The path is made of map keys joined by `.` and list indexes in brackets
/// (`deploymentSpec.executors.exec-a.container.args[2]`). It is empty for problems with the
/// document as a whole (malformed YAML, no pipeline in the file); `Display` then shows the
/// message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct IrError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl IrError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error about the document as a whole.
    pub fn document(message: impl Into<String>) -> Self {
        Self::new(String::new(), message)
    }

    /// A required field is absent (or null).
    pub fn missing(path: impl Into<String>) -> Self {
        Self::new(path, "required field is missing")
    }

    /// A field holds the wrong kind of YAML value.
    pub fn wrong_kind(path: impl Into<String>, expected: &str, got: &serde_json::Value) -> Self {
        Self::new(path, format!("expected {expected}, got {}", kind_of(got)))
    }

    /// A name refers to something that does not exist; `known` lists what does (shortened).
    pub fn unknown<'a>(
        path: impl Into<String>,
        what: &str,
        name: &str,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self::new(
            path,
            format!("unknown {what} {name:?} (known: {})", list_names(known)),
        )
    }
}

/// `a, b, c` (at most 12 names, then `...`), or `none`.
pub(crate) fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    const MAX: usize = 12;
    let mut out = String::new();
    let mut n = 0usize;
    for name in names {
        if n == MAX {
            out.push_str(", ...");
            break;
        }
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        n += 1;
    }
    if n == 0 {
        out.push_str("none");
    }
    out
}

/// `a mapping`, `a list`, `a string`...: the kind of a value, for messages.
pub(crate) fn kind_of(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Appends a map key to a path.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends a list index to a path.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_path() {
        let e = IrError::new(
            "root.dag.tasks.train.inputs.parameters.n_estimators",
            "unknown component input \"x\"",
        );
        assert_eq!(
            e.to_string(),
            "root.dag.tasks.train.inputs.parameters.n_estimators: unknown component input \"x\""
        );
        assert_eq!(IrError::document("empty").to_string(), "empty");
        let u = IrError::unknown("a.b", "component", "comp-x", ["comp-a", "comp-b"]);
        assert_eq!(
            u.to_string(),
            "a.b: unknown component \"comp-x\" (known: comp-a, comp-b)"
        );
        let none = IrError::unknown("a", "task", "t", std::iter::empty());
        assert!(none.message.ends_with("(known: none)"));
    }

    #[test]
    fn long_lists_are_shortened() {
        let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        let s = list_names(names.iter().map(String::as_str));
        assert!(s.ends_with("n11, ..."), "{s}");
    }
}
