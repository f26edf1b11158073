//! Command-line values shared by the programs: `KEY=VALUE` pairs (labels, step variables,
//! run parameters).

/// Why a `KEY=VALUE` flag was refused; `flag` names the flag, `given` is what it got.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    #[error("{flag} {given:?} has an empty name before '='")]
    EmptyKey { flag: String, given: String },
    #[error("{flag} {given:?} is not KEY=VALUE")]
    NoEquals { flag: String, given: String },
}

/// `given` split at its first `=` into a non-empty key and a value (which may hold `=`);
/// `flag` names the flag in the error.
pub fn key_value<'a>(flag: &str, given: &'a str) -> Result<(&'a str, &'a str), KeyValueError> {
    let (flag, given_owned) = (flag.to_string(), given.to_string());
    match given.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        Some(_) => Err(KeyValueError::EmptyKey {
            flag,
            given: given_owned,
        }),
        None => Err(KeyValueError::NoEquals {
            flag,
            given: given_owned,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(key_value("--label", "zone=a"), Ok(("zone", "a")));
        assert_eq!(key_value("-p", "q=a=b"), Ok(("q", "a=b")));
        assert_eq!(key_value("-p", "empty="), Ok(("empty", "")));
        let e = key_value("--label", "zone").unwrap_err();
        assert_eq!(e.to_string(), r#"--label "zone" is not KEY=VALUE"#);
        let e = key_value("--step-env", "=x").unwrap_err();
        assert!(matches!(e, KeyValueError::EmptyKey { .. }));
        assert_eq!(
            e.to_string(),
            r#"--step-env "=x" has an empty name before '='"#
        );
    }
}
