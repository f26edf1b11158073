//! Run parameters: what a user gives at submit time, checked against the pipeline's inputs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{list_names, IrError};
use super::model::PipelineSpec;

/// Checks and completes the parameters of a run against the root inputs of `spec`.
///
/// - Unknown names are refused, listing the known ones.
/// - Values are coerced to the declared type: a CLI passes text (`"5"` for an integer becomes
///   `5`, `"[1, 2]"` for a list becomes a list); JSON values of the right type are taken as
///   they are, and whole doubles (`3.0`) are accepted for integers.
/// - Defaults fill what is not given; a `null` counts as not given. Optional inputs without a
///   default stay absent.
/// - Missing required inputs are refused, all of them named.
///
/// Error paths are `root.inputDefinitions.parameters.NAME`.
pub fn resolve_run_parameters(
    spec: &PipelineSpec,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, IrError> {
    let defs = &spec.root.input_parameters;
    let path = |name: &str| format!("root.inputDefinitions.parameters.{name}");
    if let Some(name) = given.keys().find(|k| !defs.contains_key(*k)) {
        return Err(IrError::new(
            path(name),
            format!(
                "unknown pipeline parameter {name:?} (the pipeline's parameters: {})",
                list_names(defs.keys().map(String::as_str))
            ),
        ));
    }
    let mut out = BTreeMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for (name, def) in defs {
        match given.get(name).filter(|v| !v.is_null()) {
            Some(value) => {
                let coerced = def.ptype.coerce(value).map_err(|e| {
                    IrError::new(
                        path(name),
                        format!("parameter {name:?} is {}: {e}", def.ptype.ir_name()),
                    )
                })?;
                out.insert(name.clone(), coerced);
            }
            None => match &def.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None if def.optional => {}
                None => missing.push(name),
            },
        }
    }
    if let Some(first) = missing.first() {
        let message = if missing.len() == 1 {
            format!("missing required pipeline parameter {first}: it has no default")
        } else {
            format!(
                "missing required pipeline parameters {}: they have no default",
                list_names(missing.iter().copied())
            )
        };
        return Err(IrError::new(path(first), message));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_pipeline;
    use serde_json::json;

    const PIPELINE: &str = r#"
pipelineInfo: {name: params}
root:
  dag: {tasks: {}}
  inputDefinitions:
    parameters:
      rows:
        parameterType: NUMBER_INTEGER
      rate:
        parameterType: NUMBER_DOUBLE
        defaultValue: 0.5
        isOptional: true
      name:
        parameterType: STRING
        defaultValue: world
        isOptional: true
      tags:
        parameterType: LIST
        isOptional: true
      verbose:
        parameterType: BOOLEAN
        defaultValue: false
        isOptional: true
"#;

    fn given(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn coerces_cli_text_and_applies_defaults() {
        let spec = parse_pipeline(PIPELINE).unwrap();
        let out = resolve_run_parameters(
            &spec,
            &given(&[
                ("rows", json!("5")),
                ("tags", json!("[\"a\", \"b\"]")),
                ("verbose", json!("true")),
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            given(&[
                ("rows", json!(5)),
                ("rate", json!(0.5)),
                ("name", json!("world")),
                ("tags", json!(["a", "b"])),
                ("verbose", json!(true)),
            ])
        );
    }

    #[test]
    fn accepts_json_numbers() {
        let spec = parse_pipeline(PIPELINE).unwrap();
        let out =
            resolve_run_parameters(&spec, &given(&[("rows", json!(3.0)), ("rate", json!(2))]))
                .unwrap();
        assert_eq!(out["rows"], json!(3));
        assert_eq!(out["rate"], json!(2));
        assert!(!out.contains_key("tags"));
    }

    #[test]
    fn refuses_unknown_names_listing_the_known_ones() {
        let spec = parse_pipeline(PIPELINE).unwrap();
        let e = resolve_run_parameters(&spec, &given(&[("rows", json!(1)), ("row", json!(1))]))
            .unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.parameters.row");
        assert!(
            e.message
                .contains("unknown pipeline parameter \"row\" (the pipeline's parameters: name, rate, rows, tags, verbose)"),
            "{e}"
        );
    }

    #[test]
    fn refuses_wrong_types() {
        let spec = parse_pipeline(PIPELINE).unwrap();
        let e = resolve_run_parameters(&spec, &given(&[("rows", json!("many"))])).unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.parameters.rows");
        assert!(e.message.contains("NUMBER_INTEGER"), "{e}");
        assert!(e.message.contains("\"many\" is not an integer"), "{e}");
        let e = resolve_run_parameters(&spec, &given(&[("rows", json!(1)), ("name", json!(7))]))
            .unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.parameters.name");
    }

    #[test]
    fn refuses_missing_required() {
        let spec = parse_pipeline(PIPELINE).unwrap();
        let e = resolve_run_parameters(&spec, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.parameters.rows");
        assert_eq!(
            e.message,
            "missing required pipeline parameter rows: it has no default"
        );
        let e = resolve_run_parameters(&spec, &given(&[("rows", Value::Null)])).unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
    }
}
