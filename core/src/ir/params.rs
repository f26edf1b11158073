//! Run parameters: what a user gives at submit time, checked against the pipeline's inputs.

use std::collections::BTreeMap;

use gantry_model::ArtifactRef;
use serde_json::Value;

use super::error::{list_names, IrError};
use super::model::PipelineSpec;
use gantry_model::UriPolicy;

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

/// Checks the input artifacts of a run (`NAME` → URI, as `--artifact NAME=URI` gives them)
/// against the root's input artifacts of `spec` and makes their references.
///
/// - Unknown names are refused, listing the declared ones.
/// - A URI must be `s3://bucket/key` or `file:///absolute/path`: the stores agents read;
///   and `policy` must allow it ([`UriPolicy::check`]: import roots, buckets).
/// - Missing required artifacts are refused, all of them named; optional ones stay absent.
///
/// The artifact's type is the declared one; its metadata starts empty. Error paths are
/// `root.inputDefinitions.artifacts.NAME`.
pub fn resolve_run_artifacts(
    spec: &PipelineSpec,
    given: &BTreeMap<String, String>,
    policy: &UriPolicy,
) -> Result<BTreeMap<String, Vec<ArtifactRef>>, IrError> {
    let defs = &spec.root.input_artifacts;
    let path = |name: &str| format!("root.inputDefinitions.artifacts.{name}");
    if let Some(name) = given.keys().find(|k| !defs.contains_key(*k)) {
        let known = if defs.is_empty() {
            "it declares none".to_string()
        } else {
            format!(
                "the pipeline's input artifacts: {}",
                list_names(defs.keys().map(String::as_str))
            )
        };
        return Err(IrError::new(
            path(name),
            format!("unknown pipeline input artifact {name:?} ({known})"),
        ));
    }
    let mut out = BTreeMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for (name, def) in defs {
        let Some(uri) = given.get(name) else {
            if !def.optional {
                missing.push(name);
            }
            continue;
        };
        let supported = uri.strip_prefix("s3://").is_some_and(|rest| {
            rest.split_once('/')
                .is_some_and(|(b, k)| !b.is_empty() && !k.is_empty())
        }) || uri
            .strip_prefix("file://")
            .is_some_and(|p| p.starts_with('/'));
        if !supported {
            return Err(IrError::new(
                path(name),
                format!(
                    "input artifact {name:?} has URI {uri:?}: expected s3://bucket/key or \
                     file:///absolute/path"
                ),
            ));
        }
        if let Err(why) = policy.check(uri) {
            return Err(IrError::new(
                path(name),
                format!("artifact input {name:?}: {why}"),
            ));
        }
        let r = ArtifactRef {
            name: name.clone(),
            uri: uri.clone(),
            schema_title: def.schema_title.clone(),
            schema_version: def.schema_version.clone(),
            metadata: Default::default(),
        };
        out.insert(name.clone(), vec![r]);
    }
    if let Some(first) = missing.first() {
        let message = if missing.len() == 1 {
            format!("missing required pipeline input artifact {first}: give it with --artifact {first}=URI")
        } else {
            format!(
                "missing required pipeline input artifacts {}: give each with --artifact NAME=URI",
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

    const WITH_ARTIFACTS: &str = r#"
pipelineInfo: {name: arts}
root:
  dag: {tasks: {}}
  inputDefinitions:
    artifacts:
      data:
        artifactType: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}
      model:
        artifactType: {schemaTitle: system.Model, schemaVersion: 0.0.1}
        isOptional: true
"#;

    /// Bucket `b` and the import root `file:///tmp` allowed.
    fn open() -> UriPolicy {
        UriPolicy::new(
            "s3://art/root",
            vec!["file:///tmp".into()],
            vec!["b".into()],
        )
        .unwrap()
    }

    fn uris(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn input_artifacts_take_their_declared_type() {
        let spec = parse_pipeline(WITH_ARTIFACTS).unwrap();
        let got = resolve_run_artifacts(&spec, &uris(&[("data", "s3://b/in/data.csv")]), &open())
            .unwrap();
        assert_eq!(got.len(), 1, "the optional model stays absent");
        let data = &got["data"][0];
        assert_eq!(data.name, "data");
        assert_eq!(data.uri, "s3://b/in/data.csv");
        assert_eq!(data.schema_title, "system.Dataset");
        assert_eq!(data.schema_version, "0.0.1");
        let got = resolve_run_artifacts(
            &spec,
            &uris(&[("data", "file:///tmp/d"), ("model", "s3://b/m")]),
            &open(),
        )
        .unwrap();
        assert_eq!(got["model"][0].schema_title, "system.Model");
    }

    #[test]
    fn input_artifacts_refuse_unknown_missing_and_foreign_uris() {
        let spec = parse_pipeline(WITH_ARTIFACTS).unwrap();
        let e = resolve_run_artifacts(&spec, &BTreeMap::new(), &open()).unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.artifacts.data");
        assert!(e.message.contains("--artifact data=URI"), "{e}");
        let e = resolve_run_artifacts(
            &spec,
            &uris(&[("data", "s3://b/k"), ("dta", "s3://b/k")]),
            &open(),
        )
        .unwrap_err();
        assert!(
            e.message.contains("unknown pipeline input artifact \"dta\" (the pipeline's input artifacts: data, model)"),
            "{e}"
        );
        for bad in [
            "gs://b/k",
            "s3://bucket-only",
            "file://relative",
            "/abs/path",
        ] {
            let e = resolve_run_artifacts(&spec, &uris(&[("data", bad)]), &open()).unwrap_err();
            assert!(e.message.contains("expected s3://bucket/key"), "{bad}: {e}");
        }
        let none = parse_pipeline(PIPELINE).unwrap();
        let e = resolve_run_artifacts(&none, &uris(&[("x", "s3://b/k")]), &open()).unwrap_err();
        assert!(e.message.contains("it declares none"), "{e}");
    }

    #[test]
    fn input_artifacts_outside_the_uri_policy_are_refused_naming_uri_and_rule() {
        let spec = parse_pipeline(WITH_ARTIFACTS).unwrap();
        let closed = UriPolicy::new("s3://art/root", vec![], vec![]).unwrap();
        let e = resolve_run_artifacts(&spec, &uris(&[("data", "file:///etc/shadow")]), &closed)
            .unwrap_err();
        assert_eq!(e.path, "root.inputDefinitions.artifacts.data");
        assert_eq!(
            e.message,
            "artifact input \"data\": file:///etc/shadow is outside the import roots (none \
             configured; see --import-root)"
        );
        let e = resolve_run_artifacts(&spec, &uris(&[("data", "s3://b/k")]), &closed).unwrap_err();
        assert!(e.message.contains("see --allow-bucket"), "{e}");
        let e = resolve_run_artifacts(&spec, &uris(&[("data", "file:///tmp/../etc/x")]), &open())
            .unwrap_err();
        assert!(e.message.contains("'..' segment"), "{e}");
        assert!(
            resolve_run_artifacts(&spec, &uris(&[("data", "s3://art/root/r/x")]), &closed).is_ok()
        );
    }
}
