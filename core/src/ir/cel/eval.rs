//! Evaluates a [`Program`] against variables, within a budget.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::parse::{Expr, Op, Postfix, Program, Unary};
use super::value::{equal, weight, Number, Value};

/// Why an evaluation has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("unknown variable {0:?}")]
    UnknownVariable(String),
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    #[error("no such key: {0:?}")]
    NoSuchKey(String),
    #[error("index {index} is out of range for a list of {len}")]
    IndexOutOfRange { index: String, len: usize },
    #[error("no such overload: {0}")]
    NoSuchOverload(String),
    #[error("{0}: integer overflow")]
    Overflow(String),
    #[error("division by zero")]
    DivisionByZero,
    #[error("{function}: {message}")]
    Conversion { function: String, message: String },
    #[error("the expression needs more than its evaluation budget of {0} units")]
    BudgetExhausted(u64),
}

impl Program {
    /// Evaluates the program with `variables`, spending at most `budget` units (one per node,
    /// one per byte or element copied, compared or parsed).
    pub fn evaluate(
        &self,
        variables: &BTreeMap<&str, Value>,
        budget: u64,
    ) -> Result<Value, EvalError> {
        let mut ev = Evaluator {
            variables,
            left: budget,
            budget,
        };
        ev.eval(&self.root)
    }
}

struct Evaluator<'a> {
    variables: &'a BTreeMap<&'a str, Value>,
    left: u64,
    budget: u64,
}

fn overload(what: &str, args: &[&Value]) -> EvalError {
    let types: Vec<&str> = args.iter().map(|v| v.type_name()).collect();
    EvalError::NoSuchOverload(format!("{what}({})", types.join(", ")))
}

impl Evaluator<'_> {
    fn charge(&mut self, units: u64) -> Result<(), EvalError> {
        self.left = self
            .left
            .checked_sub(units)
            .ok_or(EvalError::BudgetExhausted(self.budget))?;
        Ok(())
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, EvalError> {
        self.charge(1)?;
        match e {
            Expr::Literal(v) => Ok(v.clone()),
            Expr::Name(n) => self
                .variables
                .get(n.as_str())
                .cloned()
                .ok_or_else(|| EvalError::UnknownVariable(n.clone())),
            Expr::Call(f, args) => {
                let args = args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.call(f, None, &args)
            }
            Expr::List(items) => {
                let items = items
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::List(Arc::new(items)))
            }
            Expr::Map(entries) => {
                let mut map = BTreeMap::new();
                for (k, v) in entries {
                    let key = match self.eval(k)? {
                        Value::String(s) => s.to_string(),
                        other => {
                            return Err(EvalError::NoSuchOverload(format!(
                                "a map key must be a string here, not a {}",
                                other.type_name()
                            )))
                        }
                    };
                    let value = self.eval(v)?;
                    map.insert(key, value);
                }
                Ok(Value::Map(Arc::new(map)))
            }
            Expr::Unary(ops, inner) => {
                let mut v = self.eval(inner)?;
                for op in ops.iter().rev() {
                    v = match (op, v) {
                        (Unary::Not, Value::Bool(b)) => Value::Bool(!b),
                        (Unary::Neg, Value::Int(i)) => Value::Int(
                            i.checked_neg()
                                .ok_or_else(|| EvalError::Overflow(format!("-{i}")))?,
                        ),
                        (Unary::Neg, Value::Double(d)) => Value::Double(-d),
                        (op, v) => {
                            let name = if *op == Unary::Not { "!_" } else { "-_" };
                            return Err(overload(name, &[&v]));
                        }
                    };
                }
                Ok(v)
            }
            Expr::Postfix(base, ops) => {
                let mut v = self.eval(base)?;
                for op in ops {
                    self.charge(1)?;
                    v = match op {
                        Postfix::Field(name) => {
                            self.index(&v, &Value::String(name.as_str().into()))?
                        }
                        Postfix::Index(i) => {
                            let i = self.eval(i)?;
                            self.index(&v, &i)?
                        }
                        Postfix::Method(name, args) => {
                            let args = args
                                .iter()
                                .map(|a| self.eval(a))
                                .collect::<Result<Vec<_>, _>>()?;
                            self.call(name, Some(&v), &args)?
                        }
                    };
                }
                Ok(v)
            }
            Expr::Chain(first, rest) => {
                let mut v = self.eval(first)?;
                for (op, e) in rest {
                    let rhs = self.eval(e)?;
                    v = self.binary(*op, &v, &rhs)?;
                }
                Ok(v)
            }
            Expr::And(terms) => self.logic(terms, false),
            Expr::Or(terms) => self.logic(terms, true),
            Expr::If(c, a, b) => match self.eval(c)? {
                Value::Bool(true) => self.eval(a),
                Value::Bool(false) => self.eval(b),
                other => Err(overload("_?_:_", &[&other])),
            },
        }
    }

    /// `&&` (`decisive` false) or `||` (true): a decisive term wins even over another's error,
    /// as in CEL; otherwise the first error, else the other boolean.
    fn logic(&mut self, terms: &[Expr], decisive: bool) -> Result<Value, EvalError> {
        let mut first_error = None;
        for t in terms {
            match self.eval(t) {
                Ok(Value::Bool(b)) if b == decisive => return Ok(Value::Bool(decisive)),
                Ok(Value::Bool(_)) => {}
                // The budget is never forgiven.
                Err(e @ EvalError::BudgetExhausted(_)) => return Err(e),
                Ok(other) => {
                    let name = if decisive { "_||_" } else { "_&&_" };
                    first_error.get_or_insert(overload(name, &[&other]));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Value::Bool(!decisive)),
        }
    }

    fn index(&mut self, v: &Value, key: &Value) -> Result<Value, EvalError> {
        match (v, key) {
            (Value::Map(m), Value::String(k)) => {
                self.charge(k.len() as u64)?;
                m.get(k.as_ref())
                    .cloned()
                    .ok_or_else(|| EvalError::NoSuchKey(k.to_string()))
            }
            (Value::List(items), i) => {
                let at = match Number::of(i) {
                    Some(Number::Int(n)) => usize::try_from(n).ok(),
                    Some(Number::UInt(n)) => usize::try_from(n).ok(),
                    _ => return Err(overload("_[_]", &[v, key])),
                };
                at.and_then(|n| items.get(n)).cloned().ok_or_else(|| {
                    let index = match i {
                        Value::Int(n) => n.to_string(),
                        Value::UInt(n) => n.to_string(),
                        _ => "?".to_string(),
                    };
                    EvalError::IndexOutOfRange {
                        index,
                        len: items.len(),
                    }
                })
            }
            _ => Err(overload("_[_]", &[v, key])),
        }
    }

    fn binary(&mut self, op: Op, a: &Value, b: &Value) -> Result<Value, EvalError> {
        let name = format!("_{}_", op.symbol());
        match op {
            Op::Eq | Op::Ne => {
                self.charge(weight(a).min(weight(b)))?;
                let eq = equal(a, b);
                Ok(Value::Bool(if op == Op::Eq { eq } else { !eq }))
            }
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let ord = match (Number::of(a), Number::of(b)) {
                    (Some(x), Some(y)) => x.compare(y),
                    _ => match (a, b) {
                        (Value::String(x), Value::String(y)) => {
                            self.charge(x.len().min(y.len()) as u64)?;
                            Some(x.cmp(y))
                        }
                        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
                        _ => return Err(overload(&name, &[a, b])),
                    },
                };
                // NaN compares false every way, as in CEL.
                Ok(Value::Bool(ord.is_some_and(|o| match op {
                    Op::Lt => o == Ordering::Less,
                    Op::Le => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })))
            }
            Op::In => match b {
                Value::List(items) => {
                    self.charge(items.len() as u64)?;
                    Ok(Value::Bool(items.iter().any(|i| equal(a, i))))
                }
                Value::Map(m) => match a {
                    Value::String(k) => Ok(Value::Bool(m.contains_key(k.as_ref()))),
                    _ => Ok(Value::Bool(false)),
                },
                _ => Err(overload("@in", &[a, b])),
            },
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem => self.arithmetic(op, &name, a, b),
        }
    }

    fn arithmetic(&mut self, op: Op, name: &str, a: &Value, b: &Value) -> Result<Value, EvalError> {
        let overflow = |x: &dyn std::fmt::Display, y: &dyn std::fmt::Display| {
            EvalError::Overflow(format!("{x} {} {y}", op.symbol()))
        };
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => {
                if matches!(op, Op::Div | Op::Rem) && *y == 0 {
                    return Err(EvalError::DivisionByZero);
                }
                let r = match op {
                    Op::Add => x.checked_add(*y),
                    Op::Sub => x.checked_sub(*y),
                    Op::Mul => x.checked_mul(*y),
                    Op::Div => x.checked_div(*y),
                    _ => x.checked_rem(*y),
                };
                r.map(Value::Int).ok_or_else(|| overflow(x, y))
            }
            (Value::UInt(x), Value::UInt(y)) => {
                if matches!(op, Op::Div | Op::Rem) && *y == 0 {
                    return Err(EvalError::DivisionByZero);
                }
                let r = match op {
                    Op::Add => x.checked_add(*y),
                    Op::Sub => x.checked_sub(*y),
                    Op::Mul => x.checked_mul(*y),
                    Op::Div => x.checked_div(*y),
                    _ => x.checked_rem(*y),
                };
                r.map(Value::UInt).ok_or_else(|| overflow(x, y))
            }
            (Value::Double(x), Value::Double(y)) if op != Op::Rem => Ok(Value::Double(match op {
                Op::Add => x + y,
                Op::Sub => x - y,
                Op::Mul => x * y,
                _ => x / y,
            })),
            (Value::String(x), Value::String(y)) if op == Op::Add => {
                self.charge((x.len() + y.len()) as u64)?;
                Ok(Value::String(format!("{x}{y}").into()))
            }
            (Value::List(x), Value::List(y)) if op == Op::Add => {
                self.charge((x.len() + y.len()) as u64)?;
                Ok(Value::List(Arc::new(
                    x.iter().chain(y.iter()).cloned().collect(),
                )))
            }
            _ => Err(overload(name, &[a, b])),
        }
    }

    fn call(
        &mut self,
        f: &str,
        target: Option<&Value>,
        args: &[Value],
    ) -> Result<Value, EvalError> {
        let all: Vec<&Value> = target.into_iter().chain(args.iter()).collect();
        let conversion = |message: String| EvalError::Conversion {
            function: f.to_string(),
            message,
        };
        let string_arg = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        match (f, all.as_slice()) {
            ("int", [v]) => to_int(v).map(Value::Int).map_err(conversion),
            ("uint", [v]) => to_uint(v).map(Value::UInt).map_err(conversion),
            ("double", [v]) => to_double(v).map(Value::Double).map_err(conversion),
            ("bool", [Value::Bool(b)]) => Ok(Value::Bool(*b)),
            ("bool", [Value::String(s)]) => match s.as_ref() {
                "true" | "True" | "TRUE" | "t" | "1" => Ok(Value::Bool(true)),
                "false" | "False" | "FALSE" | "f" | "0" => Ok(Value::Bool(false)),
                other => Err(conversion(format!("{other:?} is not a boolean"))),
            },
            ("string", [v]) => {
                self.charge(weight(v))?;
                Ok(Value::String(
                    match v {
                        Value::String(s) => return Ok(Value::String(s.clone())),
                        Value::Int(i) => i.to_string(),
                        Value::UInt(u) => u.to_string(),
                        Value::Double(d) => d.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => return Err(overload("string", &[other])),
                    }
                    .into(),
                ))
            }
            ("size", [v]) => {
                let n = match v {
                    Value::String(s) => {
                        self.charge(s.len() as u64)?;
                        s.chars().count()
                    }
                    Value::List(items) => items.len(),
                    Value::Map(m) => m.len(),
                    other => return Err(overload("size", &[other])),
                };
                Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            ("contains" | "startsWith" | "endsWith", [s, needle]) if target.is_some() => {
                let (Some(s), Some(needle)) = (string_arg(s), string_arg(needle)) else {
                    return Err(overload(f, &all));
                };
                self.charge(s.len() as u64)?;
                Ok(Value::Bool(match f {
                    "contains" => s.contains(needle.as_ref()),
                    "startsWith" => s.starts_with(needle.as_ref()),
                    _ => s.ends_with(needle.as_ref()),
                }))
            }
            ("parseJson", [Value::String(text)]) if target.is_none() => {
                self.charge(text.len() as u64)?;
                // serde_json stops at 128 levels of nesting, so this does not recurse deeper.
                serde_json::from_str::<serde_json::Value>(text)
                    .map(|v| Value::from_json(&v))
                    .map_err(|e| conversion(e.to_string()))
            }
            ("int" | "uint" | "double" | "bool" | "string" | "size" | "parseJson", _)
            | ("contains" | "startsWith" | "endsWith", _) => Err(overload(f, &all)),
            _ => Err(EvalError::UnknownFunction(f.to_string())),
        }
    }
}

fn to_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::UInt(u) => i64::try_from(*u).map_err(|_| format!("{u} is out of the int range")),
        Value::Double(d) => {
            double_to_integer(*d, i64::MIN as f64, 9_223_372_036_854_775_808.0).map(|d| d as i64)
        }
        Value::String(s) => s
            .parse::<i64>()
            .map_err(|_| format!("{:?} is not an integer", short(s))),
        other => Err(format!("a {} cannot be an int", other.type_name())),
    }
}

fn to_uint(v: &Value) -> Result<u64, String> {
    match v {
        Value::UInt(u) => Ok(*u),
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("{i} is out of the uint range")),
        Value::Double(d) => {
            double_to_integer(*d, 0.0, 18_446_744_073_709_551_616.0).map(|d| d as u64)
        }
        Value::String(s) => s
            .parse::<u64>()
            .map_err(|_| format!("{:?} is not an unsigned integer", short(s))),
        other => Err(format!("a {} cannot be a uint", other.type_name())),
    }
}

/// Truncates `d` toward zero when it lies in `[low, high)`.
fn double_to_integer(d: f64, low: f64, high: f64) -> Result<f64, String> {
    if d.is_nan() || d.trunc() < low || d.trunc() >= high {
        return Err(format!("{d} is out of range"));
    }
    Ok(d.trunc())
}

fn to_double(v: &Value) -> Result<f64, String> {
    match v {
        Value::Double(d) => Ok(*d),
        Value::Int(i) => Ok(*i as f64),
        Value::UInt(u) => Ok(*u as f64),
        Value::String(s) => s
            .parse::<f64>()
            .map_err(|_| format!("{:?} is not a number", short(s))),
        other => Err(format!("a {} cannot be a double", other.type_name())),
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}
