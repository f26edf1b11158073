//! CEL values, and their exchange with JSON.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A CEL value. Maps have string keys only: every map here comes from JSON or from a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(Arc<str>),
    List(Arc<Vec<Value>>),
    Map(Arc<BTreeMap<String, Value>>),
}

impl Value {
    /// CEL's name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null_type",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::UInt(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// JSON integers become ints (uints above `i64::MAX`), other numbers doubles.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::UInt(u),
                _ => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(Arc::from(s.as_str())),
            serde_json::Value::Array(items) => {
                Value::List(Arc::new(items.iter().map(Value::from_json).collect()))
            }
            serde_json::Value::Object(fields) => Value::Map(Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            )),
        }
    }

    /// The value as JSON; `Err` carries a double that JSON cannot hold (NaN, infinite).
    pub fn to_json(&self) -> Result<serde_json::Value, f64> {
        Ok(match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::UInt(u) => serde_json::Value::from(*u),
            Value::Double(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .ok_or(*f)?,
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::List(items) => serde_json::Value::Array(
                items.iter().map(Value::to_json).collect::<Result<_, _>>()?,
            ),
            Value::Map(fields) => {
                let mut obj = serde_json::Map::new();
                for (k, v) in fields.iter() {
                    obj.insert(k.clone(), v.to_json()?);
                }
                serde_json::Value::Object(obj)
            }
        })
    }

    /// What the value is, for messages: `the int 3`, `the string "a"`, `a list`.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => format!("the int {i}"),
            Value::UInt(u) => format!("the uint {u}"),
            Value::Double(f) => format!("the double {f}"),
            Value::String(s) => {
                let shown: String = s.chars().take(64).collect();
                let cut = if shown.len() < s.len() { "…" } else { "" };
                format!("the string {shown:?}{cut}")
            }
            Value::Bool(b) => format!("the bool {b}"),
            Value::Null => "null".to_string(),
            other => format!("a {}", other.type_name()),
        }
    }
}

/// A number of any of CEL's three kinds, for comparing across them.
#[derive(Clone, Copy)]
pub(super) enum Number {
    Int(i64),
    UInt(u64),
    Double(f64),
}

impl Number {
    pub(super) fn of(v: &Value) -> Option<Number> {
        match v {
            Value::Int(i) => Some(Number::Int(*i)),
            Value::UInt(u) => Some(Number::UInt(*u)),
            Value::Double(f) => Some(Number::Double(*f)),
            _ => None,
        }
    }

    /// Compares by value; `None` when either side is NaN.
    pub(super) fn compare(self, other: Number) -> Option<Ordering> {
        use Number::*;
        match (self, other) {
            (Int(a), Int(b)) => Some(a.cmp(&b)),
            (UInt(a), UInt(b)) => Some(a.cmp(&b)),
            (Int(a), UInt(b)) => Some(i128::from(a).cmp(&i128::from(b))),
            (UInt(a), Int(b)) => Some(i128::from(a).cmp(&i128::from(b))),
            (Double(a), Double(b)) => a.partial_cmp(&b),
            (Int(a), Double(b)) => compare_integer_double(i128::from(a), b),
            (UInt(a), Double(b)) => compare_integer_double(i128::from(a), b),
            (Double(a), Int(b)) => compare_integer_double(i128::from(b), a).map(Ordering::reverse),
            (Double(a), UInt(b)) => compare_integer_double(i128::from(b), a).map(Ordering::reverse),
        }
    }
}

/// Compares an integer with a double exactly (a cast of either to the other's type rounds).
fn compare_integer_double(i: i128, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    // Every integer here lies strictly inside ±2^65, which doubles represent exactly.
    const BOUND: f64 = 36_893_488_147_419_103_232.0; // 2^65
    if d >= BOUND {
        return Some(Ordering::Less);
    }
    if d <= -BOUND {
        return Some(Ordering::Greater);
    }
    let whole = d.trunc();
    // `whole` is integral and inside ±2^65, so the cast is exact.
    let w = whole as i128;
    match i.cmp(&w) {
        Ordering::Equal => {
            let frac = d - whole;
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        other => Some(other),
    }
}

/// CEL's heterogeneous equality: numbers by value, lists and maps element by element, values
/// of different types unequal.
pub(super) fn equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (Number::of(a), Number::of(b)) {
        return x.compare(y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| equal(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => false,
    }
}

/// The size of a value for the budget: bytes of a string, elements of a list or map, 1 for a
/// scalar.
pub(super) fn weight(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::List(items) => items.len() as u64,
        Value::Map(fields) => fields.len() as u64,
        _ => 1,
    }
}
