//! Parameter types of the KFP IR and the checks that keep values in their JSON types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a value does not fit a parameter type. The texts are quoted as the value was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// The JSON value has another type (`got` says which: `a string`, `an integer`...).
    #[error("expected {}, got {got}", expected.ir_name())]
    WrongType {
        expected: ParamType,
        got: &'static str,
    },
    /// A number with a fraction given to an integer parameter.
    #[error("expected NUMBER_INTEGER, got {0}")]
    NotWhole(serde_json::Number),
    #[error("{0:?} is not an integer")]
    NotInteger(String),
    #[error("{0:?} is not a number")]
    NotNumber(String),
    #[error("{0:?} is not a boolean (true or false)")]
    NotBoolean(String),
    #[error("{0:?} is not a JSON list")]
    NotList(String),
    #[error("{0:?} is not a JSON object")]
    NotObject(String),
}

/// The `parameterType` of an IR parameter definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParamType {
    String,
    NumberInteger,
    NumberDouble,
    Boolean,
    List,
    Struct,
    TaskFinalStatus,
}

impl ParamType {
    /// Parses the IR spelling (`NUMBER_INTEGER`, ...). Older SDKs wrote `INT`, `DOUBLE`, `STRING`.
    pub fn from_ir(s: &str) -> Option<Self> {
        Some(match s {
            "STRING" => Self::String,
            "NUMBER_INTEGER" | "INT" => Self::NumberInteger,
            "NUMBER_DOUBLE" | "DOUBLE" => Self::NumberDouble,
            "BOOLEAN" => Self::Boolean,
            "LIST" => Self::List,
            "STRUCT" => Self::Struct,
            "TASK_FINAL_STATUS" => Self::TaskFinalStatus,
            _ => return None,
        })
    }

    pub fn ir_name(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::NumberInteger => "NUMBER_INTEGER",
            Self::NumberDouble => "NUMBER_DOUBLE",
            Self::Boolean => "BOOLEAN",
            Self::List => "LIST",
            Self::Struct => "STRUCT",
            Self::TaskFinalStatus => "TASK_FINAL_STATUS",
        }
    }

    /// Checks that `value` already has this type. Integers must be whole numbers; a double
    /// accepts any number.
    pub fn check(self, value: &Value) -> Result<(), ParamError> {
        let ok = match self {
            Self::String => value.is_string(),
            Self::NumberInteger => value.is_i64() || value.is_u64(),
            Self::NumberDouble => value.is_number(),
            Self::Boolean => value.is_boolean(),
            Self::List => value.is_array(),
            Self::Struct | Self::TaskFinalStatus => value.is_object(),
        };
        if ok {
            Ok(())
        } else {
            Err(ParamError::WrongType {
                expected: self,
                got: json_kind(value),
            })
        }
    }

    /// Converts a value given as text (a CLI `-p NAME=VALUE`, or the content of an output
    /// parameter file) into this type.
    pub fn parse_text(self, text: &str) -> Result<Value, ParamError> {
        let trimmed = text.trim();
        match self {
            Self::String => Ok(Value::String(text.to_string())),
            Self::NumberInteger => trimmed
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| {
                    // "3.0" is an integer written by Python's float formatting
                    trimmed
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| Value::from(f as i64))
                        .ok_or(())
                })
                .map_err(|_| ParamError::NotInteger(trimmed.to_string())),
            Self::NumberDouble => trimmed
                .parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                .ok_or_else(|| ParamError::NotNumber(trimmed.to_string())),
            Self::Boolean => match trimmed.to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(ParamError::NotBoolean(trimmed.to_string())),
            },
            Self::List => match serde_json::from_str::<Value>(trimmed) {
                Ok(v @ Value::Array(_)) => Ok(v),
                _ => Err(ParamError::NotList(trimmed.to_string())),
            },
            Self::Struct | Self::TaskFinalStatus => match serde_json::from_str::<Value>(trimmed) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(ParamError::NotObject(trimmed.to_string())),
            },
        }
    }

    /// Coerces a JSON value that may come with a looser type (an integer given as 3.0, a
    /// number given to a string parameter by a YAML constant) to this type, or says why not.
    pub fn coerce(self, value: &Value) -> Result<Value, ParamError> {
        if self.check(value).is_ok() {
            return Ok(value.clone());
        }
        match (self, value) {
            (Self::NumberInteger, Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| Value::from(f as i64))
                .ok_or_else(|| ParamError::NotWhole(n.clone())),
            (_, Value::String(s)) if self != Self::String => self.parse_text(s),
            _ => self.check(value).map(|_| value.clone()),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_text_into_ir_types() {
        assert_eq!(
            ParamType::NumberInteger.parse_text("42").unwrap(),
            json!(42)
        );
        assert_eq!(
            ParamType::NumberInteger.parse_text("3.0").unwrap(),
            json!(3)
        );
        assert!(ParamType::NumberInteger.parse_text("3.5").is_err());
        assert_eq!(
            ParamType::NumberDouble.parse_text("0.25").unwrap(),
            json!(0.25)
        );
        assert_eq!(ParamType::Boolean.parse_text("True").unwrap(), json!(true));
        assert!(ParamType::Boolean.parse_text("yes").is_err());
        assert_eq!(ParamType::List.parse_text("[1, 2]").unwrap(), json!([1, 2]));
        assert!(ParamType::Struct.parse_text("[1]").is_err());
        assert_eq!(ParamType::String.parse_text(" a ").unwrap(), json!(" a "));
    }

    #[test]
    fn check_refuses_wrong_json_types() {
        assert_eq!(
            ParamType::NumberInteger
                .check(&json!(1.5))
                .unwrap_err()
                .to_string(),
            "expected NUMBER_INTEGER, got a number"
        );
        assert_eq!(
            ParamType::NumberInteger
                .coerce(&json!(1.5))
                .unwrap_err()
                .to_string(),
            "expected NUMBER_INTEGER, got 1.5"
        );
        assert_eq!(
            ParamType::Boolean.parse_text(" yes ").unwrap_err(),
            ParamError::NotBoolean("yes".into())
        );
        assert!(ParamType::NumberDouble.check(&json!(1)).is_ok());
        assert!(ParamType::String.check(&json!(1)).is_err());
        assert_eq!(
            ParamType::NumberInteger.coerce(&json!(2.0)).unwrap(),
            json!(2)
        );
    }
}
