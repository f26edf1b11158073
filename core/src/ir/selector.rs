//! `parameterExpressionSelector`: a CEL expression that picks a field out of an input value,
//! as the KFP SDK writes it for a loop over dicts (`for item in ParallelFor([{"a": 1}])` and
//! `item.a` in the body):
//!
//! ```text
//! parseJson(string_value)["a"]
//! ```
//!
//! `string_value` is the input's value as text (a string as it is, anything else as JSON) and
//! `parseJson` reads JSON text, as in the KFP backend.

use std::collections::BTreeMap;

use serde_json::Value;

use super::cel::{self, EvalError, Program, SyntaxError};

/// The one variable a selector reads.
pub const VARIABLE: &str = "string_value";
const FUNCTIONS: &[&str] = &["parseJson", "int", "double", "string", "size"];

/// Why a selector does not compile, or what applying it met.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is empty")]
    Empty,
    #[error("not a valid CEL expression: {0}")]
    Syntax(#[from] SyntaxError),
    #[error("unknown variable {0:?}: a selector can only read {VARIABLE}")]
    UnknownVariable(String),
    #[error("unknown function {0:?} in a selector (it may call {list})", list = FUNCTIONS.join(", "))]
    UnknownFunction(String),
    /// An evaluation error (`parseJson` failing on text that is not JSON, the budget spent...).
    #[error("selector {selector:?}: {error}")]
    Evaluation { selector: String, error: EvalError },
    /// A missing key (or a null): the KFP backend fails there, so this does too.
    #[error("selector {selector:?} selects nothing in {value}")]
    SelectsNothing { selector: String, value: Value },
    #[error("the selector yields {0}, which JSON cannot hold")]
    NotFinite(f64),
}

#[derive(Debug)]
pub struct Selector {
    source: String,
    program: Program,
}

/// Parses a selector and checks that it reads only `string_value` and calls known functions.
pub fn compile(expr: &str) -> Result<Selector, SelectorError> {
    if expr.trim().is_empty() {
        return Err(SelectorError::Empty);
    }
    let program = Program::compile(expr)?;
    if let Some(v) = program.variables().into_iter().find(|v| v != VARIABLE) {
        return Err(SelectorError::UnknownVariable(v));
    }
    if let Some(f) = program
        .functions()
        .into_iter()
        .find(|f| !FUNCTIONS.contains(&f.as_str()))
    {
        return Err(SelectorError::UnknownFunction(f));
    }
    Ok(Selector {
        source: expr.to_string(),
        program,
    })
}

impl Selector {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The selected part of `value`, within `budget` units.
    pub fn apply(&self, value: &Value, budget: u64) -> Result<Value, SelectorError> {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let variables = BTreeMap::from([(VARIABLE, cel::Value::String(text.into()))]);
        let nothing = || SelectorError::SelectsNothing {
            selector: self.source.clone(),
            value: value.clone(),
        };
        let result = match self.program.evaluate(&variables, budget) {
            Ok(v) => v,
            Err(EvalError::NoSuchKey(_)) => return Err(nothing()),
            Err(error) => {
                return Err(SelectorError::Evaluation {
                    selector: self.source.clone(),
                    error,
                })
            }
        };
        if result == cel::Value::Null {
            return Err(nothing());
        }
        result.to_json().map_err(SelectorError::NotFinite)
    }
}

/// Compiles and applies `expr` to `value`.
pub fn select(expr: &str, value: &Value, budget: u64) -> Result<Value, SelectorError> {
    compile(expr)?.apply(value, budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const B: u64 = cel::DEFAULT_BUDGET;

    #[test]
    fn picks_fields_of_a_struct_item_whatever_its_encoding() {
        let item = json!({"a": 1, "b": "x", "c": {"d": [1.5, true]}});
        assert_eq!(
            select(r#"parseJson(string_value)["a"]"#, &item, B).unwrap(),
            json!(1)
        );
        assert_eq!(
            select(r#"parseJson(string_value)["b"]"#, &item, B).unwrap(),
            json!("x")
        );
        assert_eq!(
            select(r#"parseJson(string_value)["c"]"#, &item, B).unwrap(),
            json!({"d": [1.5, true]})
        );
        // The same item as JSON text (a STRING output of an upstream task).
        let text = json!(item.to_string());
        assert_eq!(
            select(r#"parseJson(string_value)["b"]"#, &text, B).unwrap(),
            json!("x")
        );
    }

    #[test]
    fn bad_selectors_and_values_get_a_reason() {
        assert!(compile("").is_err());
        assert!(compile("inputs.x")
            .unwrap_err()
            .to_string()
            .contains("unknown variable"));
        assert!(compile("exec(string_value)")
            .unwrap_err()
            .to_string()
            .contains("unknown function"));
        assert!(compile("parseJson(string_value)[").is_err());
        let missing = select(r#"parseJson(string_value)["zz"]"#, &json!({"a": 1}), B).unwrap_err();
        assert!(missing.to_string().contains("selects nothing"), "{missing}");
        let not_json =
            select(r#"parseJson(string_value)["a"]"#, &json!("not json"), B).unwrap_err();
        assert!(not_json.to_string().contains("parseJson"), "{not_json}");
    }
}
