//! Command-line values shared by the programs: `KEY=VALUE` pairs (labels, step variables,
//! run parameters).

/// `given` split at its first `=` into a non-empty key and a value (which may hold `=`);
/// `flag` names the flag in the error.
pub fn key_value<'a>(flag: &str, given: &'a str) -> Result<(&'a str, &'a str), String> {
    match given.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        Some(_) => Err(format!("{flag} {given:?} has an empty name before '='")),
        None => Err(format!("{flag} {given:?} is not KEY=VALUE")),
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
        assert!(e.contains("--label") && e.contains("KEY=VALUE"), "{e}");
        let e = key_value("--step-env", "=x").unwrap_err();
        assert!(e.contains("empty name"), "{e}");
    }
}
