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

use crate::contained::contain;
use std::sync::Arc;

use cel_interpreter::{Context, ExecutionError, Program, Value as Cel};
use serde_json::Value;

use super::condition::{check_shape, one_line, to_cel, ShapeError, PARSER_GAVE_UP};

/// The one variable a selector reads.
pub const VARIABLE: &str = "string_value";
const FUNCTIONS: &[&str] = &["parseJson", "int", "double", "string", "size"];

/// Why a selector does not compile, or what applying it met.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is empty")]
    Empty,
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The parser panicked (it does on some malformed input) and the panic was caught.
    #[error("{PARSER_GAVE_UP}")]
    ParserGaveUp,
    /// The parser's own message, on one line.
    #[error("not a valid CEL expression: {0}")]
    Syntax(String),
    #[error("unknown variable {0:?}: a selector can only read {VARIABLE}")]
    UnknownVariable(String),
    #[error("unknown function {0:?} in a selector")]
    UnknownFunction(String),
    #[error("the CEL interpreter failed (panicked) on this selector")]
    Panicked,
    /// The interpreter's own message (`parseJson` failing on text that is not JSON...).
    #[error("selector {selector:?}: {message}")]
    Evaluation { selector: String, message: String },
    /// CEL's null for a missing key: the KFP backend fails there, so this does too.
    #[error("selector {selector:?} selects nothing in {value}")]
    SelectsNothing { selector: String, value: Value },
    #[error("the selector yields {0}, which JSON cannot hold")]
    NotFinite(f64),
    /// A CEL value with no JSON form (its CEL type).
    #[error("the selector yields a {0}")]
    NotJson(String),
}

pub struct Selector {
    source: String,
    program: Program,
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selector")
            .field("source", &self.source)
            .finish()
    }
}

/// Parses a selector and checks that it reads only `string_value` and calls known functions.
pub fn compile(expr: &str) -> Result<Selector, SelectorError> {
    if expr.trim().is_empty() {
        return Err(SelectorError::Empty);
    }
    check_shape(expr)?;
    let program = contain(|| Program::compile(expr))
        .map_err(|_| SelectorError::ParserGaveUp)?
        .map_err(|e| SelectorError::Syntax(one_line(&e.to_string())))?;
    let refs = program.references();
    if let Some(v) = refs.variables().into_iter().find(|v| *v != VARIABLE) {
        return Err(SelectorError::UnknownVariable(v.to_string()));
    }
    if let Some(f) = refs
        .functions()
        .into_iter()
        .find(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()) && !FUNCTIONS.contains(f))
    {
        return Err(SelectorError::UnknownFunction(f.to_string()));
    }
    Ok(Selector {
        source: expr.to_string(),
        program,
    })
}

fn parse_json(text: Arc<String>) -> Result<Cel, ExecutionError> {
    serde_json::from_str::<Value>(&text)
        .map(|v| to_cel(&v))
        .map_err(|e| ExecutionError::function_error("parseJson", e))
}

fn to_json(v: &Cel) -> Result<Value, SelectorError> {
    Ok(match v {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(*b),
        Cel::Int(i) => Value::from(*i),
        Cel::UInt(u) => Value::from(*u),
        Cel::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or(SelectorError::NotFinite(*f))?,
        Cel::String(s) => Value::String(s.to_string()),
        Cel::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Cel::Map(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                obj.insert(k.to_string(), to_json(v)?);
            }
            Value::Object(obj)
        }
        other => return Err(SelectorError::NotJson(other.type_of().to_string())),
    })
}

impl Selector {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The selected part of `value`.
    pub fn apply(&self, value: &Value) -> Result<Value, SelectorError> {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut context = Context::default();
        context.add_variable_from_value(VARIABLE, Cel::String(Arc::new(text)));
        context.add_function("parseJson", parse_json);
        let result = contain(|| self.program.execute(&context))
            .map_err(|_| SelectorError::Panicked)?
            .map_err(|e| SelectorError::Evaluation {
                selector: self.source.clone(),
                message: e.to_string(),
            })?;
        // cel-interpreter yields null for a missing map key; the KFP backend fails instead.
        if matches!(result, Cel::Null) {
            return Err(SelectorError::SelectsNothing {
                selector: self.source.clone(),
                value: value.clone(),
            });
        }
        to_json(&result)
    }
}

/// Compiles and applies `expr` to `value`.
pub fn select(expr: &str, value: &Value) -> Result<Value, SelectorError> {
    compile(expr)?.apply(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_fields_of_a_struct_item_whatever_its_encoding() {
        let item = json!({"a": 1, "b": "x", "c": {"d": [1.5, true]}});
        assert_eq!(
            select(r#"parseJson(string_value)["a"]"#, &item).unwrap(),
            json!(1)
        );
        assert_eq!(
            select(r#"parseJson(string_value)["b"]"#, &item).unwrap(),
            json!("x")
        );
        assert_eq!(
            select(r#"parseJson(string_value)["c"]"#, &item).unwrap(),
            json!({"d": [1.5, true]})
        );
        // The same item as JSON text (a STRING output of an upstream task).
        let text = json!(item.to_string());
        assert_eq!(
            select(r#"parseJson(string_value)["b"]"#, &text).unwrap(),
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
        let missing = select(r#"parseJson(string_value)["zz"]"#, &json!({"a": 1})).unwrap_err();
        assert!(missing.to_string().contains("selects nothing"), "{missing}");
        let not_json = select(r#"parseJson(string_value)["a"]"#, &json!("not json")).unwrap_err();
        assert!(not_json.to_string().contains("parseJson"), "{not_json}");
    }
}
