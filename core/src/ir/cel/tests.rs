use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn run(src: &str) -> Result<Value, String> {
    let p = Program::compile(src).map_err(|e| e.to_string())?;
    let vars = BTreeMap::from([("x", Value::from_json(&json!({"a": [1, 2.5, "s"], "n": 3})))]);
    p.evaluate(&vars, DEFAULT_BUDGET).map_err(|e| e.to_string())
}

fn yes(src: &str) {
    assert_eq!(run(src), Ok(Value::Bool(true)), "{src}");
}

#[test]
fn literals_operators_and_precedence() {
    for src in [
        "1 + 2 * 3 == 7",
        "(1 + 2) * 3 == 9",
        "10 - 2 - 3 == 5",
        "7 / 2 == 3 && 7 % 2 == 1",
        "-7 / 2 == -3",
        "0x1F == 31",
        "3u + 4u == 7u",
        "2.5 * 2.0 == 5.0",
        "1e3 == 1000.0",
        "-9223372036854775808 < 0",
        "'a' + \"b\" == 'ab'",
        "'''x'y''' == \"x'y\"",
        "r'\\n' == '\\\\n'",
        "'\\x41\\u00e9\\101' == 'Aé' + 'A'",
        "!false && !!true",
        "true ? 1 == 1 : false",
        "false ? false : true ? true : false",
        "[1, 2] + [3] == [1, 2, 3]",
        "2 in [1, 2] && 'k' in {'k': 1} && !('z' in {'k': 1})",
        "{'a': 1}.a == 1 && {'a': 1}['a'] == 1",
        "null == null && [] == [] && {} == {}",
        "'abc' < 'abd' && false < true",
        "size('héllo') == 5 && 'héllo'.size() == 5 && size([1]) == 1",
        "'hello'.contains('ell') && 'hello'.startsWith('he') && 'hello'.endsWith('lo')",
        "int('42') == 42 && int(3.9) == 3 && int(-3.9) == -3 && uint(7) == 7u",
        "double('2.5') == 2.5 && double(2) == 2.0 && string(12) == '12' && bool('true')",
        "x.n == 3 && x['a'][1] == 2.5 && x.a[2] == 's' && size(x.a) == 3",
        "1 // a comment\n == 1",
    ] {
        yes(src);
    }
}

#[test]
fn numbers_compare_by_value_across_kinds() {
    for src in [
        "3 == 3.0",
        "3u == 3",
        "2.5 < 3",
        "3 <= 3u",
        "9223372036854775807 < 9223372036854775808.0",
        "9223372036854775807 != 9223372036854775806.0",
        "18446744073709551615u > 9223372036854775807",
        "-1 < 0u",
        "!(double('NaN') == double('NaN'))",
        "!(double('NaN') < 1) && !(double('NaN') >= 1)",
        "1 != 'a' && !(1 == 'a')",
    ] {
        yes(src);
    }
}

#[test]
fn and_or_let_a_decisive_side_win_over_an_error() {
    yes("false && 1 / 0 == 1 ? false : true");
    yes("1 / 0 == 1 || true");
    yes("!(1 / 0 == 1 && false)");
    assert_eq!(run("1 / 0 == 1 && true"), Err("division by zero".into()));
    assert!(run("1 && true").unwrap_err().contains("no such overload"));
}

#[test]
fn runtime_errors_name_what_went_wrong() {
    let cases = [
        ("9223372036854775807 + 1 == 0", "integer overflow"),
        ("-9223372036854775808 / -1 == 0", "integer overflow"),
        ("1 % 0 == 0", "division by zero"),
        ("1 + 1.0 == 2.0", "no such overload: _+_(int, double)"),
        ("x.zz == 1", "no such key: \"zz\""),
        ("x.a[3] == 1", "index 3 is out of range for a list of 3"),
        ("y == 1", "unknown variable \"y\""),
        ("frob(1)", "unknown function \"frob\""),
        ("int('4x') == 4", "\"4x\" is not an integer"),
        ("int(1e300) == 1", "out of range"),
        ("uint(-1) == 1u", "out of the uint range"),
        ("'a' < 1", "no such overload: _<_(string, int)"),
        ("1 ? 2 : 3", "no such overload: _?_:_(int)"),
        ("{1: 2} == {}", "a map key must be a string"),
        ("parseJson('{') == 1", "parseJson"),
        ("-'a' == 1", "no such overload: -_(string)"),
    ];
    for (src, want) in cases {
        let got = run(src).unwrap_err();
        assert!(got.contains(want), "{src}: {got}");
    }
}

#[test]
fn syntax_errors_give_the_column() {
    let cases = [
        ("", "empty"),
        ("1 +", "column 4: expected a value, the expression ended"),
        ("(1", "column 3: expected `)`"),
        (
            "1 2",
            "column 3: unexpected number 2 after a complete expression",
        ),
        ("'abc", "column 1: the string is not closed"),
        ("'a\nb'", "not closed on its line"),
        ("'\\q'", "invalid escape"),
        ("'\\ud800'", "invalid escape"),
        ("b'x'", "bytes literals are not supported"),
        ("9223372036854775808", "out of range"),
        ("99999999999999999999", "out of range"),
        ("0x", "needs digits"),
        ("1e", "exponent needs digits"),
        ("12abc", "runs into"),
        ("a.", "a field or method name after `.`"),
        ("#", "unexpected character '#'"),
        ("[1, 2", "expected `,` or `]`"),
        ("{'a' 1}", "`:` after a map key"),
        ("true ? 1", "`:` of a `?:`"),
    ];
    for (src, want) in cases {
        let got = Program::compile(src).unwrap_err().to_string();
        assert!(got.contains(want), "{src:?}: {got}");
    }
}

#[test]
fn size_nesting_and_node_limits_are_enforced() {
    let deep = format!(
        "{}1{}",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    assert!(matches!(
        Program::compile(&deep),
        Err(SyntaxError::TooDeep(_))
    ));
    let ok = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
    assert!(Program::compile(&ok).is_ok());
    for open in ["[", "int(", "{'a':", "x["] {
        let close: String = open
            .chars()
            .filter_map(|c| match c {
                '[' => Some(']'),
                '(' => Some(')'),
                '{' => Some('}'),
                _ => None,
            })
            .collect();
        let src = format!("{}1{}", open.repeat(100), close.repeat(100));
        assert!(
            matches!(Program::compile(&src), Err(SyntaxError::TooDeep(_))),
            "{open}"
        );
    }
    let long = "1".repeat(MAX_SOURCE_BYTES + 1);
    assert!(matches!(
        Program::compile(&long),
        Err(SyntaxError::TooLong(_))
    ));
    let wide = vec!["1"; MAX_NODES].join("+");
    assert_eq!(Program::compile(&wide).unwrap_err(), SyntaxError::TooLarge);
    // Chains are flat: a long `&&` chain, as `dsl.Elif` writes, is neither deep nor refused.
    let elif = (0..100)
        .map(|i| format!("!(int(x['n']) == {i})"))
        .collect::<Vec<_>>()
        .join(" && ");
    assert_eq!(run(&elif), Ok(Value::Bool(false)));
    // cel-rust#306: 125 bytes that take the ANTLR parser more than 1 GiB.
    let motif = "!!(!!!!!!(!!!!(((((!!(!!(!!!!((".repeat(4) + "1";
    assert!(Program::compile(&motif).is_err());
}

#[test]
fn evaluation_stops_at_its_budget() {
    let big = "a".repeat(100_000);
    let vars = BTreeMap::from([("s", Value::String(big.as_str().into()))]);
    // Each `+` copies the growing string: 100 kB, 200 kB, ... about 10 GB for 450 terms.
    let doubling = format!("size({}) > 0", vec!["s"; 450].join(" + "));
    let p = Program::compile(&doubling).unwrap();
    assert_eq!(
        p.evaluate(&vars, DEFAULT_BUDGET),
        Err(EvalError::BudgetExhausted(DEFAULT_BUDGET))
    );
    // The same program with a small string fits.
    let small = BTreeMap::from([("s", Value::String("a".into()))]);
    assert_eq!(p.evaluate(&small, DEFAULT_BUDGET), Ok(Value::Bool(true)));
    // A budget error is not absorbed by `||`.
    let p = Program::compile("size(s + s) > 0 || true").unwrap();
    assert_eq!(
        p.evaluate(&vars, 1000),
        Err(EvalError::BudgetExhausted(1000))
    );
    assert_eq!(p.evaluate(&vars, 1_000_000), Ok(Value::Bool(true)));
}

#[test]
fn reports_variables_and_functions() {
    let p =
        Program::compile("int(inputs.parameter_values['a']) > 1 && s.startsWith(t[0])").unwrap();
    assert_eq!(
        p.variables().into_iter().collect::<Vec<_>>(),
        vec!["inputs", "s", "t"]
    );
    assert_eq!(
        p.functions().into_iter().collect::<Vec<_>>(),
        vec!["int", "startsWith"]
    );
}

#[test]
fn json_round_trips() {
    let v = json!({"a": [1, -2, 2.5, "x", true, null, {"b": 18446744073709551615u64}]});
    assert_eq!(Value::from_json(&v).to_json(), Ok(v));
    assert_eq!(
        Value::Double(f64::NAN).to_json().map_err(f64::is_nan),
        Err(true)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Any text, and any sequence of CEL's own tokens, compiles or is refused, and evaluates
    /// or fails, without panicking or overflowing the stack.
    #[test]
    fn never_panics_on_any_input(src in "\\PC{0,80}") {
        if let Ok(p) = Program::compile(&src) {
            let _ = p.evaluate(&BTreeMap::new(), 10_000);
        }
    }

    #[test]
    fn never_panics_on_token_soup(parts in prop::collection::vec(prop::sample::select(vec![
        "(", ")", "[", "]", "{", "}", ".", ",", ":", "?", "!", "-", "+", "*", "/", "%",
        "&&", "||", "==", "!=", "<", "<=", ">", ">=", " in ", "1", "0", "2.5", "9223372036854775807",
        "1u", "'s'", "x", "a", "int", "size", "parseJson", "true", "null",
    ]), 0..120)) {
        let src = parts.concat();
        if let Ok(p) = Program::compile(&src) {
            let vars = BTreeMap::from([("x", Value::from_json(&json!({"a": [1, "2"]})))]);
            let _ = p.evaluate(&vars, 10_000);
        }
    }
}
