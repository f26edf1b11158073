//! KFP's list parameters: `filter` (predicates, AND-ed), `sort_by`, `page_size` and opaque
//! page tokens, over rows that expose their fields by KFP's key names.
//!
//! A page token carries the last row's sort value and id (keyset paging: rows created
//! meanwhile do not shift later pages) and a hash of the filter and sort it was made for. A
//! request may send the same filter and sort again with the token (KFP refuses that; users
//! trip over it); a different one is refused.

use std::cmp::Ordering;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// KFP's page size when none is asked for, and the most it returns.
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 200;
/// Longest filter text read.
const MAX_FILTER_BYTES: usize = 16 * 1024;
/// Most predicates, and most values in one `IN`.
const MAX_PREDICATES: usize = 32;
const MAX_IN_VALUES: usize = 1000;

/// A field's value, as filters and sorting compare it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Field {
    Int(i64),
    Str(String),
}

impl Field {
    fn cmp_to(&self, other: &Field) -> Ordering {
        match (self, other) {
            (Field::Int(a), Field::Int(b)) => a.cmp(b),
            (Field::Str(a), Field::Str(b)) => a.cmp(b),
            (Field::Int(_), Field::Str(_)) => Ordering::Less,
            (Field::Str(_), Field::Int(_)) => Ordering::Greater,
        }
    }
}

/// A listed object: its id (the tie-breaker) and its fields by KFP key.
pub trait Row {
    fn id(&self) -> &str;
    /// `None`: the field is unset on this row (it sorts first and matches only NOT_EQUALS).
    fn field(&self, key: &str) -> Option<Field>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    In,
    IsSubstring,
}

impl Op {
    fn parse(v: &Value) -> Option<Op> {
        let by_number = |n: i64| match n {
            1 => Some(Op::Equals),
            2 => Some(Op::NotEquals),
            3 => Some(Op::Greater),
            5 => Some(Op::GreaterOrEqual),
            6 => Some(Op::Less),
            7 => Some(Op::LessOrEqual),
            8 => Some(Op::In),
            9 => Some(Op::IsSubstring),
            _ => None,
        };
        match v {
            Value::Number(n) => n.as_i64().and_then(by_number),
            Value::String(s) => match s.as_str() {
                "EQUALS" => Some(Op::Equals),
                "NOT_EQUALS" => Some(Op::NotEquals),
                "GREATER_THAN" => Some(Op::Greater),
                "GREATER_THAN_EQUALS" => Some(Op::GreaterOrEqual),
                "LESS_THAN" => Some(Op::Less),
                "LESS_THAN_EQUALS" => Some(Op::LessOrEqual),
                "IN" => Some(Op::In),
                "IS_SUBSTRING" => Some(Op::IsSubstring),
                other => other.parse().ok().and_then(by_number),
            },
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Predicate {
    key: String,
    op: Op,
    /// One value, or several for IN.
    values: Vec<Field>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    predicates: Vec<Predicate>,
    /// The filter as given, for the page token's hash.
    text: String,
}

/// A bad list parameter: the message names it. Answered 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ListError(pub String);

fn bad(msg: impl Into<String>) -> ListError {
    ListError(msg.into())
}

/// Reads one predicate's value(s) in any of KFP's spellings.
fn predicate_values(p: &serde_json::Map<String, Value>, op: Op) -> Result<Vec<Field>, ListError> {
    let get = |snake: &str, camel: &str| p.get(snake).or_else(|| p.get(camel));
    let scalar = |v: &Value, what: &str| -> Result<Field, ListError> {
        match v {
            Value::String(s) if what == "timestamp_value" => {
                let t = humantime::parse_rfc3339(s)
                    .or_else(|_| humantime::parse_rfc3339_weak(s))
                    .map_err(|e| {
                        bad(format!(
                            "filter: timestamp_value {s:?} is not RFC 3339: {e}"
                        ))
                    })?;
                let secs = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                Ok(Field::Int(secs))
            }
            Value::String(s) if what == "string_value" => Ok(Field::Str(s.clone())),
            Value::String(s) => s
                .parse()
                .map(Field::Int)
                .map_err(|_| bad(format!("filter: {what} {s:?} is not an integer"))),
            Value::Number(n) if what != "string_value" => n
                .as_i64()
                .map(Field::Int)
                .ok_or_else(|| bad(format!("filter: {what} {n} is not an integer"))),
            other => Err(bad(format!(
                "filter: {what} must be a {}, not {other}",
                if what == "string_value" {
                    "string"
                } else {
                    "number"
                }
            ))),
        }
    };
    const SCALARS: [(&str, &str); 4] = [
        ("string_value", "stringValue"),
        ("int_value", "intValue"),
        ("long_value", "longValue"),
        ("timestamp_value", "timestampValue"),
    ];
    const LISTS: [(&str, &str, &str); 3] = [
        ("string_values", "stringValues", "string_value"),
        ("int_values", "intValues", "int_value"),
        ("long_values", "longValues", "long_value"),
    ];
    if op == Op::In {
        for (snake, camel, each) in LISTS {
            if let Some(v) = get(snake, camel) {
                let list = v
                    .get("values")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(format!("filter: {snake} must be {{\"values\": [...]}}")))?;
                if list.len() > MAX_IN_VALUES {
                    return Err(bad(format!(
                        "filter: IN takes at most {MAX_IN_VALUES} values, not {}",
                        list.len()
                    )));
                }
                return list.iter().map(|v| scalar(v, each)).collect();
            }
        }
        return Err(bad(
            "filter: IN needs string_values, int_values or long_values",
        ));
    }
    for (snake, camel) in SCALARS {
        if let Some(v) = get(snake, camel) {
            if op == Op::IsSubstring && snake != "string_value" {
                return Err(bad("filter: IS_SUBSTRING needs a string_value"));
            }
            return Ok(vec![scalar(v, snake)?]);
        }
    }
    Err(bad(
        "filter: a predicate needs one of string_value, int_value, long_value, timestamp_value",
    ))
}

impl Filter {
    /// Reads KFP's filter JSON (already percent-decoded once by the HTTP layer; decoded a
    /// second time only if it does not parse, for clients that encode it twice). `keys`:
    /// the fields this list can be filtered on.
    pub fn parse(text: &str, keys: &[&str]) -> Result<Filter, ListError> {
        if text.trim().is_empty() {
            return Ok(Filter::default());
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(bad(format!(
                "filter is {} bytes; the most is {MAX_FILTER_BYTES}",
                text.len()
            )));
        }
        let json: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(first) => super::routes::percent_decode(text)
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| bad(format!("filter is not JSON: {first}")))?,
        };
        let preds = json
            .get("predicates")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("filter must be {\"predicates\": [...]}"))?;
        if preds.len() > MAX_PREDICATES {
            return Err(bad(format!(
                "filter has {} predicates; the most is {MAX_PREDICATES}",
                preds.len()
            )));
        }
        let mut predicates = Vec::new();
        for p in preds {
            let p = p
                .as_object()
                .ok_or_else(|| bad("filter: each predicate must be an object"))?;
            let op_value = p
                .get("operation")
                .or_else(|| p.get("op"))
                .ok_or_else(|| bad("filter: a predicate needs an operation"))?;
            let op = Op::parse(op_value).ok_or_else(|| {
                bad(format!(
                    "filter: unknown operation {op_value} (EQUALS, NOT_EQUALS, GREATER_THAN, \
                     GREATER_THAN_EQUALS, LESS_THAN, LESS_THAN_EQUALS, IN, IS_SUBSTRING or 1-9)"
                ))
            })?;
            let key = p
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("filter: a predicate needs a key"))?;
            if !keys.contains(&key) {
                return Err(bad(format!(
                    "filter: no support for filtering on unrecognized field {key:?} (fields: {})",
                    keys.join(", ")
                )));
            }
            predicates.push(Predicate {
                key: key.to_string(),
                op,
                values: predicate_values(p, op)?,
            });
        }
        Ok(Filter {
            predicates,
            text: json.to_string(),
        })
    }

    pub fn matches(&self, row: &dyn Row) -> bool {
        self.predicates.iter().all(|p| {
            let Some(have) = row.field(&p.key) else {
                return p.op == Op::NotEquals;
            };
            let want = &p.values[0];
            // A number sent for a string field (or the reverse) compares as text.
            let ord = |want: &Field| match (&have, want) {
                (Field::Str(h), Field::Int(w)) => h.cmp(&w.to_string()),
                (Field::Int(h), Field::Str(w)) => h.to_string().cmp(w),
                _ => have.cmp_to(want),
            };
            match p.op {
                Op::Equals => ord(want) == Ordering::Equal,
                Op::NotEquals => ord(want) != Ordering::Equal,
                Op::Greater => ord(want) == Ordering::Greater,
                Op::GreaterOrEqual => ord(want) != Ordering::Less,
                Op::Less => ord(want) == Ordering::Less,
                Op::LessOrEqual => ord(want) != Ordering::Greater,
                Op::In => p.values.iter().any(|w| ord(w) == Ordering::Equal),
                Op::IsSubstring => match (&have, want) {
                    (Field::Str(h), Field::Str(w)) => h.contains(w.as_str()),
                    _ => false,
                },
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub key: String,
    pub desc: bool,
}

impl Sort {
    /// `"field"`, `"field asc"` or `"field desc"`; empty: `created_at` ascending (KFP's).
    pub fn parse(text: &str, keys: &[&str]) -> Result<Sort, ListError> {
        let lower = text.trim().to_lowercase();
        let mut words = lower.split_whitespace();
        let Some(key) = words.next() else {
            return Ok(Sort {
                key: "created_at".into(),
                desc: false,
            });
        };
        let desc = match (words.next(), words.next()) {
            (None, _) | (Some("asc"), None) => false,
            (Some("desc"), None) => true,
            _ => {
                return Err(bad(format!(
                    "sort_by {text:?} must be \"field\", \"field asc\" or \"field desc\""
                )))
            }
        };
        if !keys.contains(&key) {
            return Err(bad(format!(
                "sort_by: cannot sort on unrecognized field {key:?} (fields: {})",
                keys.join(", ")
            )));
        }
        Ok(Sort {
            key: key.to_string(),
            desc,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// Hash of the filter and sort the token was made for.
    h: String,
    /// The last row's sort value and id.
    v: Option<Field>,
    i: String,
}

/// One page of rows, their total and the next page's token.
pub struct Page<T> {
    pub rows: Vec<T>,
    pub total: usize,
    pub next_token: Option<String>,
}

/// What a list request asks for.
pub struct ListQuery {
    pub filter: Filter,
    pub sort: Sort,
    pub page_size: usize,
    pub page_token: String,
}

impl ListQuery {
    /// From the request's query parameters (`filter`, `sort_by`, `page_size`, `page_token`).
    pub fn from_params(
        params: &std::collections::BTreeMap<String, String>,
        keys: &[&str],
    ) -> Result<ListQuery, ListError> {
        let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
        let page_size = match get("page_size").trim() {
            "" => DEFAULT_PAGE_SIZE,
            s => match s.parse::<i64>() {
                Ok(n) if n < 0 => {
                    return Err(bad(format!("page_size must not be negative, not {n}")))
                }
                Ok(0) => DEFAULT_PAGE_SIZE,
                Ok(n) => (n as usize).min(MAX_PAGE_SIZE),
                Err(_) => return Err(bad(format!("page_size {s:?} is not a number"))),
            },
        };
        Ok(ListQuery {
            filter: Filter::parse(get("filter"), keys)?,
            sort: Sort::parse(get("sort_by"), keys)?,
            page_size,
            page_token: get("page_token").to_string(),
        })
    }

    fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.filter.text.as_bytes());
        h.update([0]);
        h.update(self.sort.key.as_bytes());
        h.update([self.sort.desc as u8]);
        format!("{:x}", h.finalize())[..16].to_string()
    }

    fn order<R: Row>(&self, a: &R, b: &R) -> Ordering {
        let key = &self.sort.key;
        let by_value = match (a.field(key), b.field(key)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp_to(&y),
        };
        let o = by_value.then_with(|| a.id().cmp(b.id()));
        if self.sort.desc {
            o.reverse()
        } else {
            o
        }
    }

    /// Filters, sorts and cuts `rows` into the page asked for.
    pub fn page<R: Row>(&self, rows: impl Iterator<Item = R>) -> Result<Page<R>, ListError> {
        let after = match self.page_token.trim() {
            "" => None,
            t => {
                let token: Token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| bad("page_token is not a token this server gave out"))?;
                if token.h != self.hash() {
                    return Err(bad(
                        "page_token was made for another filter or sort_by: send the same ones \
                         as for the first page, or none",
                    ));
                }
                Some(token)
            }
        };
        let mut rows: Vec<R> = rows.filter(|r| self.filter.matches(r)).collect();
        let total = rows.len();
        rows.sort_by(|a, b| self.order(a, b));
        let start = match &after {
            None => 0,
            Some(t) => rows.partition_point(|r| {
                let key = &self.sort.key;
                let by_value = match (r.field(key), &t.v) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(x), Some(y)) => x.cmp_to(y),
                };
                let o = by_value.then_with(|| r.id().cmp(t.i.as_str()));
                let o = if self.sort.desc { o.reverse() } else { o };
                o != Ordering::Greater
            }),
        };
        let mut rest: Vec<R> = rows.into_iter().skip(start).collect();
        let more = rest.len() > self.page_size;
        rest.truncate(self.page_size);
        let next_token = match rest.last() {
            Some(last) if more => {
                let token = Token {
                    h: self.hash(),
                    v: last.field(&self.sort.key),
                    i: last.id().to_string(),
                };
                let json = serde_json::to_vec(&token).map_err(|e| bad(e.to_string()))?;
                Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
            }
            _ => None,
        };
        Ok(Page {
            rows: rest,
            total,
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct R {
        id: String,
        name: String,
        at: i64,
    }

    impl Row for R {
        fn id(&self) -> &str {
            &self.id
        }
        fn field(&self, key: &str) -> Option<Field> {
            match key {
                "display_name" => Some(Field::Str(self.name.clone())),
                "created_at" => Some(Field::Int(self.at)),
                _ => None,
            }
        }
    }

    const KEYS: &[&str] = &["display_name", "created_at", "state"];

    fn rows() -> Vec<R> {
        (0..7)
            .map(|i| R {
                id: format!("r{i}"),
                name: if i % 2 == 0 {
                    "even".into()
                } else {
                    format!("odd {i}")
                },
                at: 100 - i,
            })
            .collect()
    }

    fn query(params: &[(&str, &str)]) -> Result<ListQuery, ListError> {
        let p: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListQuery::from_params(&p, KEYS)
    }

    fn ids(p: &Page<R>) -> Vec<&str> {
        p.rows.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn pages_follow_the_sort_and_a_token_goes_with_the_same_filter_only() {
        let f =
            r#"{"predicates": [{"operation": 1, "key": "display_name", "stringValue": "even"}]}"#;
        let q = query(&[
            ("filter", f),
            ("page_size", "2"),
            ("sort_by", "created_at desc"),
        ])
        .unwrap();
        let p1 = q.page(rows().into_iter()).unwrap();
        assert_eq!((ids(&p1), p1.total), (vec!["r0", "r2"], 4));
        let token = p1.next_token.clone().unwrap();
        // The same filter and sort again, with the token: accepted.
        let q2 = query(&[
            ("filter", f),
            ("page_size", "2"),
            ("sort_by", "created_at desc"),
            ("page_token", &token),
        ])
        .unwrap();
        let p2 = q2.page(rows().into_iter()).unwrap();
        assert_eq!(ids(&p2), ["r4", "r6"]);
        assert_eq!(p2.next_token, None, "the last page has no token");
        // Another sort with that token: refused.
        let q3 = query(&[("filter", f), ("page_size", "2"), ("page_token", &token)]).unwrap();
        assert!(q3.page(rows().into_iter()).is_err());
        // A token of nothing: refused.
        let q4 = query(&[("page_token", "bm9wZQ")]).unwrap();
        assert!(q4.page(rows().into_iter()).is_err());
    }

    #[test]
    fn the_default_is_oldest_first_twenty_and_rows_added_between_pages_do_not_shift_them() {
        let q = query(&[("page_size", "3")]).unwrap();
        let p1 = q.page(rows().into_iter()).unwrap();
        assert_eq!(ids(&p1), ["r6", "r5", "r4"]);
        let mut more = rows();
        more.push(R {
            id: "new".into(),
            name: "x".into(),
            at: 1,
        });
        let q2 = query(&[("page_size", "3"), ("page_token", &p1.next_token.unwrap())]).unwrap();
        assert_eq!(ids(&q2.page(more.into_iter()).unwrap()), ["r3", "r2", "r1"]);
        assert_eq!(query(&[]).unwrap().page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(
            query(&[("page_size", "5000")]).unwrap().page_size,
            MAX_PAGE_SIZE
        );
        assert!(query(&[("page_size", "-1")]).is_err());
        assert!(query(&[("page_size", "ten")]).is_err());
    }

    #[test]
    fn every_operation_and_spelling() {
        let page = |f: &str| {
            let q = query(&[("filter", f)]).unwrap();
            let p = q.page(rows().into_iter()).unwrap();
            ids(&p).into_iter().map(String::from).collect::<Vec<_>>()
        };
        assert_eq!(
            page(
                r#"{"predicates":[{"operation":"IS_SUBSTRING","key":"display_name","string_value":"odd"}]}"#
            ),
            ["r5", "r3", "r1"]
        );
        assert_eq!(
            page(
                r#"{"predicates":[{"op":"IN","key":"display_name","stringValues":{"values":["odd 1","odd 3"]}}]}"#
            ),
            ["r3", "r1"]
        );
        assert_eq!(
            page(
                r#"{"predicates":[{"operation":6,"key":"created_at","long_value":"96"},{"operation":2,"key":"display_name","stringValue":"even"}]}"#
            ),
            ["r5"]
        );
        // Timestamps compare as seconds.
        assert_eq!(
            page(
                r#"{"predicates":[{"operation":"GREATER_THAN_EQUALS","key":"created_at","timestampValue":"1970-01-01T00:01:39Z"}]}"#
            ),
            ["r1", "r0"]
        );
        // Encoded twice: decoded again.
        assert_eq!(
            page("%7B%22predicates%22%3A%5B%7B%22operation%22%3A1%2C%22key%22%3A%22display_name%22%2C%22stringValue%22%3A%22odd%201%22%7D%5D%7D"),
            ["r1"]
        );
    }

    #[test]
    fn bad_filters_name_what_is_wrong() {
        let err = |f: &str| {
            query(&[("filter", f)])
                .err()
                .map(|e| e.0)
                .unwrap_or_default()
        };
        assert!(err("{").contains("not JSON"));
        assert!(
            err(r#"{"predicates":[{"operation":1,"key":"owner","stringValue":"x"}]}"#)
                .contains("unrecognized field \"owner\"")
        );
        assert!(
            err(r#"{"predicates":[{"operation":4,"key":"state","stringValue":"x"}]}"#)
                .contains("unknown operation")
        );
        assert!(
            err(r#"{"predicates":[{"operation":"IN","key":"state","stringValue":"x"}]}"#)
                .contains("IN needs")
        );
        assert!(err(r#"{"predicates":[{"operation":1,"key":"state"}]}"#).contains("needs one of"));
        assert!(query(&[("sort_by", "owner")]).is_err());
        assert!(query(&[("sort_by", "created_at sideways")]).is_err());
    }
}
