//! Trigger conditions (`triggerPolicy.condition`): CEL expressions over the task's input
//! parameters, as the KFP SDK writes them for `dsl.If` / `dsl.Elif` / `dsl.Else` and nested
//! conditions:
//!
//! ```text
//! inputs.parameter_values['pipelinechannel--flip-coin-Output'] == 'heads'
//! !(int(inputs.parameter_values['pipelinechannel--n']) > 5) && double(int(inputs.parameter_values['pipelinechannel--n'])) == 3.0
//! ```
//!
//! The only variable is `inputs`, a map whose field `parameter_values` maps each input parameter
//! name of the task to its value.
//!
//! Numbers: JSON integers become CEL `int`, other JSON numbers CEL `double`. The KFP backend
//! passes every number as a protobuf `Value`, i.e. as a `double`, which is why the SDK wraps
//! numeric operands in `int(...)` / `double(...)`; those casts accept both kinds here. Comparing
//! an `int` with a `double` directly (`inputs.parameter_values['x'] == 3` with `x` = 3.0) also
//! works: `cel-interpreter` 0.10 compares mixed numbers by value (heterogeneous equality and
//! ordering, as cel-go with its default options), so `3.0 == 3` is true and `2.5 < 3` is true.
//! Arithmetic that mixes `int` and `double` without a cast (`x + 1.5` with `x` an int) is refused
//! by CEL as it is by the KFP backend; the SDK never writes it.

use crate::contained::contain;
use std::collections::BTreeMap;
use std::sync::Arc;

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;

use super::selector::SelectorError;

/// The name of the one variable a condition may use.
pub const VARIABLE: &str = "inputs";

/// Named functions and macros a condition may call (those of `cel-interpreter`'s default
/// context, a superset of what the KFP SDK writes).
const FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

pub(crate) const PARSER_GAVE_UP: &str = "not a valid CEL expression (the parser could not read it)";

/// An expression whose shape the CEL parser could not survive (see [`check_shape`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the expression is too long ({0} bytes, at most {MAX_LENGTH})")]
    TooLong(usize),
    #[error("the expression nests brackets more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("the expression chains more than {MAX_CHAIN} operators without && or ||")]
    ChainTooLong,
}

/// Why a condition does not compile or cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("the condition is empty")]
    Empty,
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The parser panicked (it does on some malformed input) and the panic was caught.
    #[error("{PARSER_GAVE_UP}")]
    ParserGaveUp,
    /// The parser's own message, on one line.
    #[error("not a valid CEL expression: {0}")]
    Syntax(String),
    #[error("unknown variable {0:?}: a condition can only read {VARIABLE}.parameter_values")]
    UnknownVariable(String),
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    /// `known` lists the parameters that have values (shortened).
    #[error("the condition reads parameter {name:?}, which has no value (known: {known})")]
    MissingParameter { name: String, known: String },
    #[error("the CEL interpreter failed (panicked) on this condition")]
    Panicked,
    /// The interpreter's own message (a type error, a division by zero...).
    #[error("{0}")]
    Evaluation(String),
    /// What it yields instead (`the int 3`).
    #[error("the condition yields {0}, not a boolean")]
    NotBoolean(String),
}

/// A compiled condition.
pub struct Condition {
    source: String,
    program: Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish()
    }
}

impl Condition {
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parameter names the expression reads as `inputs.parameter_values['NAME']` (found in
    /// its text, in order of appearance, without duplicates).
    pub fn parameter_keys(&self) -> Vec<String> {
        parameter_keys(&self.source)
    }

    /// Evaluates the condition with `parameter_values` as `inputs.parameter_values`. The result
    /// must be a boolean.
    ///
    /// Reading a parameter that is not in `parameter_values` is an error (CEL's "no such key"),
    /// not a null: `cel-interpreter` would quietly yield null, and a condition on a value that
    /// never arrived must not silently be false.
    pub fn evaluate(
        &self,
        parameter_values: &BTreeMap<String, Value>,
    ) -> Result<bool, ConditionError> {
        if let Some(k) = self
            .parameter_keys()
            .into_iter()
            .find(|k| !parameter_values.contains_key(k))
        {
            return Err(ConditionError::MissingParameter {
                name: k,
                known: super::error::list_names(parameter_values.keys().map(String::as_str)),
            });
        }
        // The CEL map type is a hash map; it is only looked up here, never iterated.
        let values = Cel::Map(Map {
            map: Arc::new(
                parameter_values
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        });
        let inputs = Map {
            map: Arc::new(
                [(
                    Key::String(Arc::new("parameter_values".to_string())),
                    values,
                )]
                .into_iter()
                .collect(),
            ),
        };
        let mut context = Context::default();
        context.add_variable_from_value(VARIABLE, Cel::Map(inputs));
        let result = contain(|| self.program.execute(&context))
            .map_err(|_| ConditionError::Panicked)?
            .map_err(|e| ConditionError::Evaluation(e.to_string()))?;
        match result {
            Cel::Bool(b) => Ok(b),
            other => Err(ConditionError::NotBoolean(describe(&other))),
        }
    }
}

/// Longest expression accepted, in bytes. The SDK's longest (a `dsl.Elif` chain negating every
/// earlier branch) stay far below.
pub const MAX_LENGTH: usize = 16 * 1024;
/// Deepest nesting of `(`, `[` and `{` accepted. The SDK writes at most 5
/// (`!(double(int(inputs.parameter_values['x'])) == 3.0)`).
pub const MAX_DEPTH: usize = 8;
/// Most operators (`+ == < in . [`...) accepted in one run not broken by `&&`, `||`, `?`, `:`
/// or `,` at the same nesting level.
pub const MAX_CHAIN: usize = 24;

/// Refuses expressions whose shape would make the CEL parser (ANTLR-generated, recursive)
/// exhaust the stack or run for exponential time: nested calls take time doubling with each
/// level (24 levels of `int(...)` take seconds), and about 14 nested parentheses overflow a
/// 2 MiB thread stack in a debug build (about 280 in release). A stack overflow aborts the
/// process and cannot be caught, so these limits are checked before the parser runs.
pub(crate) fn check_shape(expr: &str) -> Result<(), ShapeError> {
    if expr.len() > MAX_LENGTH {
        return Err(ShapeError::TooLong(expr.len()));
    }
    let chars: Vec<char> = expr.chars().collect();
    // One operator counter per open nesting level.
    let mut chains: Vec<usize> = vec![0];
    let bump = |chains: &mut Vec<usize>| -> Result<(), ShapeError> {
        if let Some(c) = chains.last_mut() {
            *c += 1;
            if *c > MAX_CHAIN {
                return Err(ShapeError::ChainTooLong);
            }
        }
        Ok(())
    };
    let is_word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        let prev = i.checked_sub(1).and_then(|p| chars.get(p));
        match c {
            '\'' | '"' => {
                let raw = matches!(prev, Some('r' | 'R'));
                let triple = next == Some(c) && chars.get(i + 2) == Some(&c);
                i += if triple { 3 } else { 1 };
                // Skip to the closing quote(s); an unterminated string is the parser's to report.
                loop {
                    match chars.get(i) {
                        None => return Ok(()),
                        Some('\\') if !raw => i += 2,
                        Some(&q) if q == c => {
                            if !triple {
                                break;
                            }
                            if chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c) {
                                i += 2;
                                break;
                            }
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            '(' | '[' | '{' => {
                if c == '[' {
                    bump(&mut chains)?;
                }
                chains.push(0);
                if chains.len() > MAX_DEPTH + 1 {
                    return Err(ShapeError::TooDeep);
                }
            }
            ')' | ']' | '}' if chains.len() > 1 => {
                chains.pop();
            }
            '&' | '|' | '?' | ':' | ',' => {
                if let Some(last) = chains.last_mut() {
                    *last = 0;
                }
            }
            '=' | '!' | '<' | '>' if next == Some('=') => {
                bump(&mut chains)?;
                i += 1;
            }
            '+' | '-' | '*' | '/' | '%' | '<' | '>' => bump(&mut chains)?,
            '.' => {
                let in_number = prev.is_some_and(char::is_ascii_digit)
                    && next.is_some_and(|n| n.is_ascii_digit());
                if !in_number {
                    bump(&mut chains)?;
                }
            }
            'i' if next == Some('n') && !is_word(prev) && !is_word(chars.get(i + 2)) => {
                bump(&mut chains)?;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Parses a condition and checks that it reads nothing but `inputs` and calls only known
/// functions. The error says why, with the parser's position.
pub fn compile(expr: &str) -> Result<Condition, ConditionError> {
    if expr.trim().is_empty() {
        return Err(ConditionError::Empty);
    }
    check_shape(expr)?;
    // The ANTLR-generated parser panics on some malformed input (`a ==`) instead of
    // returning an error; the panic is caught here. (This needs `panic = "unwind"`, the
    // default: a profile with `panic = "abort"` would let a bad condition stop the process.)
    let program = contain(|| Program::compile(expr))
        .map_err(|_| ConditionError::ParserGaveUp)?
        .map_err(|e| ConditionError::Syntax(one_line(&e.to_string())))?;
    let references = program.references();
    let mut variables = references.variables();
    variables.sort_unstable();
    if let Some(v) = variables.iter().find(|v| **v != VARIABLE) {
        return Err(ConditionError::UnknownVariable(v.to_string()));
    }
    let mut functions = references.functions();
    functions.sort_unstable();
    if let Some(f) = functions
        .iter()
        .find(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()) && !FUNCTIONS.contains(f))
    {
        return Err(ConditionError::UnknownFunction(f.to_string()));
    }
    Ok(Condition {
        source: expr.to_string(),
        program,
    })
}

/// Compiles and evaluates `expr` with `parameter_values` as `inputs.parameter_values`.
pub fn evaluate(
    expr: &str,
    parameter_values: &BTreeMap<String, Value>,
) -> Result<bool, ConditionError> {
    compile(expr)?.evaluate(parameter_values)
}

/// Checks that a `parameterExpressionSelector` (`parseJson(string_value)["A_a"]`) is a CEL
/// expression; it is evaluated elsewhere, with its own variables and functions.
pub fn check_selector_syntax(expr: &str) -> Result<(), SelectorError> {
    if expr.trim().is_empty() {
        return Err(SelectorError::Empty);
    }
    check_shape(expr)?;
    contain(|| Program::compile(expr))
        .map_err(|_| SelectorError::ParserGaveUp)?
        .map(|_| ())
        .map_err(|e| SelectorError::Syntax(one_line(&e.to_string())))
}

/// The keys of `parameter_values['KEY']` (or `"KEY"`) in `expr`.
pub fn parameter_keys(expr: &str) -> Vec<String> {
    const NEEDLE: &str = "parameter_values";
    let mut keys: Vec<String> = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix('[') else {
            continue;
        };
        let after = after.trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            continue;
        };
        let body = &after[quote.len_utf8()..];
        if let Some(end) = body.find(quote) {
            let key = &body[..end];
            if !key.contains('\\') && !keys.iter().any(|k| k == key) {
                keys.push(key.to_string());
            }
        }
    }
    keys
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => {
            let map = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
    }
}

fn describe(v: &Cel) -> String {
    match v {
        Cel::Int(i) => format!("the int {i}"),
        Cel::UInt(u) => format!("the uint {u}"),
        Cel::Float(f) => format!("the double {f}"),
        Cel::String(s) => format!("the string {:?}", s.as_str()),
        Cel::Null => "null".to_string(),
        other => format!("a {}", other.type_of()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn string_equality_as_written_for_dsl_if() {
        let expr = "inputs.parameter_values['pipelinechannel--flip-coin-Output'] == 'heads'";
        let heads = values(&[("pipelinechannel--flip-coin-Output", json!("heads"))]);
        let tails = values(&[("pipelinechannel--flip-coin-Output", json!("tails"))]);
        assert!(evaluate(expr, &heads).unwrap());
        assert!(!evaluate(expr, &tails).unwrap());
    }

    #[test]
    fn else_branches_negate_and_conjoin() {
        let expr = "!(inputs.parameter_values['a'] == 'x') && inputs.parameter_values['b']";
        let v = values(&[("a", json!("y")), ("b", json!(true))]);
        assert!(evaluate(expr, &v).unwrap());
        let v = values(&[("a", json!("x")), ("b", json!(true))]);
        assert!(!evaluate(expr, &v).unwrap());
        let or = "inputs.parameter_values['a'] == 'x' || inputs.parameter_values['b'] == false";
        assert!(evaluate(or, &values(&[("a", json!("z")), ("b", json!(false))])).unwrap());
        assert!(!evaluate(or, &values(&[("a", json!("z")), ("b", json!(true))])).unwrap());
    }

    #[test]
    fn int_and_double_casts_accept_json_ints_and_doubles() {
        let gt = "int(inputs.parameter_values['x']) > 5";
        for (x, want) in [
            (json!(3.0), false),
            (json!(3), false),
            (json!(7.0), true),
            (json!(6), true),
        ] {
            assert_eq!(
                evaluate(gt, &values(&[("x", x.clone())])).unwrap(),
                want,
                "x = {x}"
            );
        }
        let eq = "double(int(inputs.parameter_values['x'])) == 3.0";
        assert!(evaluate(eq, &values(&[("x", json!(3))])).unwrap());
        assert!(evaluate(eq, &values(&[("x", json!(3.0))])).unwrap());
        let d = "double(inputs.parameter_values['x']) < 0.5";
        assert!(evaluate(d, &values(&[("x", json!(0.25))])).unwrap());
        assert!(!evaluate(d, &values(&[("x", json!(1))])).unwrap());
        // A string holding an integer, as a STRING output might.
        assert!(evaluate(gt, &values(&[("x", json!("9"))])).unwrap());
    }

    #[test]
    fn mixed_int_double_comparisons_compare_values() {
        let v = values(&[("x", json!(3.0))]);
        assert!(evaluate("inputs.parameter_values['x'] == 3", &v).unwrap());
        assert!(evaluate("inputs.parameter_values['x'] < 4", &v).unwrap());
        let v = values(&[("x", json!(3))]);
        assert!(evaluate("inputs.parameter_values['x'] == 3.0", &v).unwrap());
        assert!(evaluate("inputs.parameter_values['x'] >= 2.5", &v).unwrap());
    }

    #[test]
    fn comparisons_with_booleans() {
        let v = values(&[("flag", json!(true))]);
        assert!(evaluate("inputs.parameter_values['flag'] == true", &v).unwrap());
        assert!(!evaluate("inputs.parameter_values['flag'] == false", &v).unwrap());
        assert!(!evaluate("!inputs.parameter_values['flag']", &v).unwrap());
    }

    #[test]
    fn non_boolean_results_are_errors() {
        let v = values(&[("x", json!(3))]);
        let e = evaluate("inputs.parameter_values['x']", &v).unwrap_err();
        assert!(e.to_string().contains("not a boolean"), "{e}");
        let e = evaluate(
            "inputs.parameter_values['s']",
            &values(&[("s", json!("a"))]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("the string \"a\""), "{e}");
    }

    #[test]
    fn missing_parameters_are_errors_not_panics() {
        let e = evaluate("inputs.parameter_values['nope'] == 'x'", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn compile_refuses_bad_syntax_unknown_variables_and_functions() {
        assert!(compile("inputs.parameter_values['x'] ==")
            .unwrap_err()
            .to_string()
            .contains("not a valid CEL"));
        assert!(compile("").unwrap_err().to_string().contains("empty"));
        assert!(compile("(((").is_err());
        assert!(compile("outputs.x == 1")
            .unwrap_err()
            .to_string()
            .contains("unknown variable \"outputs\""));
        assert!(compile("frobnicate(inputs.parameter_values['x'])")
            .unwrap_err()
            .to_string()
            .contains("unknown function \"frobnicate\""));
        assert!(compile("size(inputs.parameter_values['x']) > 0").is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        for expr in [
            "'",
            "\"",
            "[",
            "]]",
            "{",
            "a.",
            ".a",
            "1..2",
            "inputs[",
            "!",
            "&&",
            "in",
            "\u{0}",
            "inputs.parameter_values['x'] ? : 1",
            "0x",
            "1e",
            "b'\\",
            "{1:}",
            "a{b:1}",
            "inputs.parameter_values['a'] / 0 == 1",
            "r'''",
            "`x`",
            "has(",
            "x.all(",
        ] {
            let _ = evaluate(expr, &values(&[("x", json!(1)), ("a", json!(1))]));
        }
    }

    #[test]
    fn shapes_that_would_overflow_the_parser_are_refused() {
        let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        assert!(compile(&deep)
            .unwrap_err()
            .to_string()
            .contains("more than 8 levels"));
        let calls = format!("{}1{} > 0", "int(".repeat(30), ")".repeat(30));
        assert!(compile(&calls)
            .unwrap_err()
            .to_string()
            .contains("more than 8 levels"));
        let chain = vec!["1"; 100].join(" + ") + " > 0";
        assert!(compile(&chain)
            .unwrap_err()
            .to_string()
            .contains("chains more than 24"));
        let members = format!("inputs{} == 1", ".a".repeat(100));
        assert!(compile(&members)
            .unwrap_err()
            .to_string()
            .contains("chains more than 24"));
        let long = vec!["true"; 5000].join(" && ");
        assert!(compile(&long).unwrap_err().to_string().contains("too long"));
        // Brackets and operators inside strings do not count.
        let quoted = format!(
            "inputs.parameter_values['{}'] == '(((((((((((+.+.+'",
            "[".repeat(40)
        );
        assert!(check_shape(&quoted).is_ok());
        let triple = r#"inputs.parameter_values['x'] == '''((((((((((((a'b'''"#;
        assert!(check_shape(triple).is_ok());
        let escaped = r#"inputs.parameter_values['x'] == 'it\'s ((((((((((((('"#;
        assert!(check_shape(escaped).is_ok());
        // A long dsl.Elif chain, as the SDK writes it, is fine.
        let elif = (0..60)
            .map(|i| format!("!(int(inputs.parameter_values['pipelinechannel--n']) == {i})"))
            .collect::<Vec<_>>()
            .join(" && ");
        assert!(compile(&elif).is_ok(), "{elif}");
        assert!(check_selector_syntax(&deep).is_err());
    }

    #[test]
    fn finds_parameter_keys() {
        let c = compile(
            "!(int(inputs.parameter_values['pipelinechannel--a']) > 5) && inputs.parameter_values[\"b\"] == inputs.parameter_values['pipelinechannel--a']",
        )
        .unwrap();
        assert_eq!(
            c.parameter_keys(),
            vec!["pipelinechannel--a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn selectors_are_checked_for_syntax_only() {
        assert!(check_selector_syntax("parseJson(string_value)[\"A_a\"]").is_ok());
        assert!(check_selector_syntax("parseJson(").is_err());
    }
}
