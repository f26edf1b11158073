//! The walker over a loaded document: [`Obj`] is a mapping with its path, and each typed
//! accessor names that path in its error. Protobuf-JSON quirks (64-bit integers written as
//! strings, booleans as `"true"`, the first IRs' `{intValue: 1}` constants) are absorbed here,
//! so the readers in `dag` and `executor` see one spelling.

use serde_json::{Map as JsonMap, Number, Value};

use crate::ir::error::{index, join, list_names, IrError};

/// A mapping in the document, with its path.
pub(super) struct Obj<'a> {
    pub(super) map: &'a JsonMap<String, Value>,
    pub(super) path: String,
}

impl<'a> Obj<'a> {
    pub(super) fn of(v: &'a Value, path: String) -> Result<Self, IrError> {
        match v {
            Value::Object(map) => Ok(Self { map, path }),
            other => Err(IrError::wrong_kind(path, "a mapping", other)),
        }
    }

    /// A mapping that may be written as null (`parameters:` with nothing under it).
    pub(super) fn of_or_empty(v: &'a Value, path: String) -> Result<Self, IrError> {
        static EMPTY: std::sync::OnceLock<JsonMap<String, Value>> = std::sync::OnceLock::new();
        match v {
            Value::Null => Ok(Self {
                map: EMPTY.get_or_init(JsonMap::new),
                path,
            }),
            other => Self::of(other, path),
        }
    }

    pub(super) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; absent and null are the same.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn child(&self, key: &str) -> Result<Option<Obj<'a>>, IrError> {
        self.get(key).map(|v| Obj::of(v, self.at(key))).transpose()
    }

    pub(super) fn req_child(&self, key: &str) -> Result<Obj<'a>, IrError> {
        self.child(key)?
            .ok_or_else(|| IrError::missing(self.at(key)))
    }

    /// The entries of the mapping under `key` (none if absent or null).
    pub(super) fn entries(
        &self,
        key: &str,
    ) -> Result<Vec<(&'a String, &'a Value, String)>, IrError> {
        let Some(v) = self.map.get(key) else {
            return Ok(Vec::new());
        };
        let sub = Obj::of_or_empty(v, self.at(key))?;
        Ok(sub
            .map
            .iter()
            .map(|(k, v)| (k, v, join(&sub.path, k)))
            .collect())
    }

    pub(super) fn text(&self, key: &str) -> Result<Option<String>, IrError> {
        self.get(key).map(|v| text(v, &self.at(key))).transpose()
    }

    pub(super) fn req_text(&self, key: &str) -> Result<String, IrError> {
        self.text(key)?
            .ok_or_else(|| IrError::missing(self.at(key)))
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, IrError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(IrError::wrong_kind(self.at(key), "a boolean", other)),
        }
    }

    /// A non-negative integer (protobuf JSON may write 64-bit integers as strings).
    pub(super) fn u64(&self, key: &str) -> Result<Option<u64>, IrError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
                    .map(|f| f as u64)
            }),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| {
            IrError::new(
                self.at(key),
                format!("expected a non-negative integer, got {}", short(v)),
            )
        })
    }

    pub(super) fn u32(&self, key: &str) -> Result<Option<u32>, IrError> {
        self.u64(key)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| IrError::new(self.at(key), format!("{n} is too large")))
            })
            .transpose()
    }

    /// A finite number (or a string holding one).
    pub(super) fn f64(&self, key: &str) -> Result<Option<f64>, IrError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let f = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        f.filter(|f| f.is_finite()).map(Some).ok_or_else(|| {
            IrError::new(self.at(key), format!("expected a number, got {}", short(v)))
        })
    }

    pub(super) fn text_list(&self, key: &str) -> Result<Vec<String>, IrError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| text(item, &index(&self.at(key), i)))
                .collect(),
            Some(other) => Err(IrError::wrong_kind(self.at(key), "a list", other)),
        }
    }

    /// Refuses keys outside `known`.
    pub(super) fn only(&self, known: &[&str], what: &str) -> Result<(), IrError> {
        if let Some(k) = self.map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(IrError::new(
                self.at(k),
                format!(
                    "unknown {what} field (known fields: {})",
                    list_names(known.iter().copied())
                ),
            ));
        }
        Ok(())
    }
}

/// A scalar as text: strings as they are, numbers and booleans as YAML would print them.
pub(super) fn text(v: &Value, path: &str) -> Result<String, IrError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(IrError::wrong_kind(path, "a string", other)),
    }
}

/// A value for messages, shortened.
pub(super) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

pub(super) fn list_of_objs<'a>(o: &Obj<'a>, key: &str) -> Result<Vec<Obj<'a>>, IrError> {
    match o.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| Obj::of(item, index(&o.at(key), i)))
            .collect(),
        Some(other) => Err(IrError::wrong_kind(o.at(key), "a list", other)),
    }
}

/// The first IRs wrote constants as `{intValue: 1}` / `{doubleValue: 1.5}` / `{stringValue: a}`.
pub(super) fn legacy_value(v: &Value) -> Option<Value> {
    let map = v.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let (k, inner) = map.iter().next()?;
    match k.as_str() {
        "stringValue" => Some(Value::String(text(inner, "").ok()?)),
        "intValue" => match inner {
            Value::String(s) => s.trim().parse::<i64>().ok().map(Value::from),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(inner.clone()),
            _ => None,
        },
        "doubleValue" => match inner {
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number),
            Value::Number(_) => Some(inner.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// An artifact type's `(schemaTitle, schemaVersion)`. No type, or no title, is a generic
/// `system.Artifact`: older SDKs wrote an inline `instanceSchema` or `schemaUri` instead.
pub(super) fn artifact_schema(t: Option<Obj<'_>>) -> Result<(String, String), IrError> {
    Ok(match t {
        Some(t) => (
            t.text("schemaTitle")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "system.Artifact".to_string()),
            t.text("schemaVersion")?.unwrap_or_default(),
        ),
        None => ("system.Artifact".to_string(), String::new()),
    })
}
