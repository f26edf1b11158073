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
//! works: mixed numbers compare by value (heterogeneous equality and ordering, as cel-go with
//! its default options), so `3.0 == 3` is true and `2.5 < 3` is true. Arithmetic that mixes
//! `int` and `double` without a cast (`x + 1.5` with `x` an int) is refused by CEL as it is by
//! the KFP backend; the SDK never writes it.
//!
//! The expression is read and evaluated by [`super::cel`], which is total and bounded: this
//! runs while a committed entry is applied, on every replica.

use std::collections::BTreeMap;

use serde_json::Value;

use super::cel::{self, Program, SyntaxError};

/// The name of the one variable a condition may use.
pub const VARIABLE: &str = "inputs";

/// Functions and methods a condition may call.
const FUNCTIONS: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "size",
    "contains",
    "startsWith",
    "endsWith",
];

/// Why a condition does not compile or cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("the condition is empty")]
    Empty,
    #[error("not a valid CEL expression: {0}")]
    Syntax(#[from] SyntaxError),
    #[error("unknown variable {0:?}: a condition can only read {VARIABLE}.parameter_values")]
    UnknownVariable(String),
    #[error("unknown function {0:?} (a condition may call {list})", list = FUNCTIONS.join(", "))]
    UnknownFunction(String),
    /// `known` lists the parameters that have values (shortened).
    #[error("the condition reads parameter {name:?}, which has no value (known: {known})")]
    MissingParameter { name: String, known: String },
    /// An evaluation error: a type error, a division by zero, the budget spent...
    #[error("{0}")]
    Evaluation(#[from] cel::EvalError),
    /// What it yields instead (`the int 3`).
    #[error("the condition yields {0}, not a boolean")]
    NotBoolean(String),
}

/// A compiled condition.
#[derive(Debug)]
pub struct Condition {
    source: String,
    program: Program,
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

    /// Evaluates the condition with `parameter_values` as `inputs.parameter_values`, within
    /// `budget` units ([`cel::DEFAULT_BUDGET`] unless the run says otherwise). The result must
    /// be a boolean.
    ///
    /// Reading a parameter that is not in `parameter_values` is an error that names it: a
    /// condition on a value that never arrived must not silently be false.
    pub fn evaluate(
        &self,
        parameter_values: &BTreeMap<String, Value>,
        budget: u64,
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
        let values = cel::Value::Map(std::sync::Arc::new(
            parameter_values
                .iter()
                .map(|(k, v)| (k.clone(), cel::Value::from_json(v)))
                .collect(),
        ));
        let inputs = cel::Value::Map(std::sync::Arc::new(BTreeMap::from([(
            "parameter_values".to_string(),
            values,
        )])));
        let variables = BTreeMap::from([(VARIABLE, inputs)]);
        match self.program.evaluate(&variables, budget)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(ConditionError::NotBoolean(other.describe())),
        }
    }
}

/// Parses a condition and checks that it reads nothing but `inputs` and calls only known
/// functions. The error says why, with the column.
pub fn compile(expr: &str) -> Result<Condition, ConditionError> {
    if expr.trim().is_empty() {
        return Err(ConditionError::Empty);
    }
    let program = Program::compile(expr)?;
    if let Some(v) = program.variables().into_iter().find(|v| v != VARIABLE) {
        return Err(ConditionError::UnknownVariable(v));
    }
    if let Some(f) = program
        .functions()
        .into_iter()
        .find(|f| !FUNCTIONS.contains(&f.as_str()))
    {
        return Err(ConditionError::UnknownFunction(f));
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
    budget: u64,
) -> Result<bool, ConditionError> {
    compile(expr)?.evaluate(parameter_values, budget)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn evaluate(expr: &str, v: &BTreeMap<String, Value>) -> Result<bool, ConditionError> {
        super::evaluate(expr, v, cel::DEFAULT_BUDGET)
    }

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
        assert!(compile("inputs.parameter_values['x'].matches('a+')")
            .unwrap_err()
            .to_string()
            .contains("unknown function \"matches\""));
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
    fn hostile_shapes_are_refused_with_the_limit_named() {
        let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        assert!(compile(&deep)
            .unwrap_err()
            .to_string()
            .contains("nests more than 32 levels"));
        let calls = format!("{}1{} > 0", "int(".repeat(40), ")".repeat(40));
        assert!(compile(&calls)
            .unwrap_err()
            .to_string()
            .contains("nests more than 32 levels"));
        let long = vec!["true"; 5000].join(" && ");
        assert!(compile(&long).unwrap_err().to_string().contains("too long"));
        // Brackets and operators inside strings do not count.
        let quoted = format!(
            "inputs.parameter_values['{}'] == '(((((((((((+.+.+'",
            "[".repeat(40)
        );
        assert!(compile(&quoted).is_ok());
        // A long dsl.Elif chain, as the SDK writes it, is fine, and evaluates.
        let elif = (0..60)
            .map(|i| format!("!(int(inputs.parameter_values['pipelinechannel--n']) == {i})"))
            .collect::<Vec<_>>()
            .join(" && ");
        let v = values(&[("pipelinechannel--n", json!(61))]);
        assert!(evaluate(&elif, &v).unwrap(), "{elif}");
        let v = values(&[("pipelinechannel--n", json!(59))]);
        assert!(!evaluate(&elif, &v).unwrap());
    }

    #[test]
    fn a_condition_over_its_budget_fails_the_same_way_everywhere() {
        let expr = "size(inputs.parameter_values['s'] + inputs.parameter_values['s']) > 0";
        let v = values(&[("s", json!("x".repeat(1000)))]);
        let e = super::evaluate(expr, &v, 1500).unwrap_err();
        assert_eq!(
            e,
            ConditionError::Evaluation(cel::EvalError::BudgetExhausted(1500))
        );
        assert!(e.to_string().contains("evaluation budget of 1500"), "{e}");
        assert_eq!(super::evaluate(expr, &v, 10_000), Ok(true));
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
}
