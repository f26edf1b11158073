//! KFP placeholders in a container's command and args, substituted as Kubeflow's launcher
//! (and `kfp.local`) do. Pure: no I/O.
//!
//! Plain placeholders, anywhere inside an argument (f-strings included):
//!
//! | placeholder | value |
//! | --- | --- |
//! | `{{$}}` | the executor input JSON |
//! | `{{$.inputs.parameters['N']}}` | a string as is; other types as JSON (`3`, `0.5`, `true`, `[1,2]`) |
//! | `{{$.inputs.artifacts['N'].path}}` / `.uri` | the local path of the (first) input artifact |
//! | `{{$.inputs.artifacts['N'].metadata}}` | its metadata as JSON; `.metadata['k']` one key |
//! | `{{$.inputs.artifacts['N']}}` | the list of input artifacts as JSON (name, type, uri, metadata) |
//! | `{{$.outputs.parameters['N'].output_file}}` | the file the step writes the value to |
//! | `{{$.outputs.artifacts['N'].path}}` / `.uri` | the local path the step writes the artifact to |
//! | `{{$.outputs.artifacts['N'].metadata}}` | `{}` as JSON (metadata of an output starts empty) |
//! | `{{$.outputs.output_file}}`, `{{$.outputMetadataUri}}` | the executor output file |
//! | `{{$.pipeline_job_name}}`, `{{$.pipeline_job_resource_name}}`, `{{$.pipeline_job_uuid}}`, `{{$.pipeline_task_name}}`, `{{$.pipeline_task_uuid}}`, `{{$.pipeline_root}}` | run and task identity |
//! | `{{$.workspace_path}}` | `/kfp-workspace`, where the run's workspace is mounted |
//!
//! Artifact `.uri` is the local path too: the step cannot reach the store itself, and KFP's
//! Python executor treats a URI without a scheme as the path (as `kfp.local` does).
//!
//! Structured placeholders: an argument that is a JSON object `{"Concat": [...]}` or
//! `{"IfPresent": {"InputName": "x", "Then": [...], "Else": [...]}}` (as the SDK writes them)
//! expands to 0..n arguments; they nest, and their strings hold plain placeholders.
//! `IfPresent` is true when the input parameter has a non-null value or the input artifact
//! list is not empty.
//!
//! Any other `{{$...}}` is an error naming it, as is a reference to an input that has no value.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("unsupported placeholder {0}")]
    Unsupported(String),
    #[error("placeholder {placeholder}: {what} has no value")]
    Missing { placeholder: String, what: String },
    #[error("malformed placeholder in {arg:?}: {reason}")]
    Malformed { arg: String, reason: String },
}

/// An artifact as the step sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepArtifact {
    pub name: String,
    pub schema_title: String,
    pub schema_version: String,
    /// Local path inside the step (file or directory).
    pub path: String,
    /// The URI written into the executor input (the same local path; see the module doc).
    pub uri: String,
    pub metadata: Map<String, Value>,
}

impl StepArtifact {
    /// The runtime-artifact object of the executor input.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": {"schemaTitle": self.schema_title, "schemaVersion": self.schema_version},
            "uri": self.uri,
            "metadata": self.metadata,
        })
    }
}

/// Everything a placeholder can refer to.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub executor_input: String,
    pub input_parameters: BTreeMap<String, Value>,
    pub input_artifacts: BTreeMap<String, Vec<StepArtifact>>,
    /// Output parameter name → file the step writes its value to.
    pub output_parameter_files: BTreeMap<String, String>,
    pub output_artifacts: BTreeMap<String, StepArtifact>,
    /// The executor output file (`outputs.outputFile`).
    pub output_file: String,
    pub job_name: String,
    pub job_resource_name: String,
    pub job_uuid: String,
    pub task_name: String,
    pub task_uuid: String,
    pub pipeline_root: String,
}

/// How a parameter value is written into an argument: a string as is, anything else as
/// compact JSON (a whole double without its `.0`, as Kubeflow's launcher writes numbers).
pub fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => match n.as_f64() {
            Some(f) if f.is_finite() => format!("{f}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `['name']` or `["name"]` at the start of `s`: the name and the rest.
fn bracket_name(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('[')?;
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let s = &s[1..];
    let end = s.find(q)?;
    let name = &s[..end];
    let rest = s[end + 1..].strip_prefix(']')?;
    Some((name, rest))
}

fn metadata_field(
    metadata: &Map<String, Value>,
    tail: &str,
    placeholder: &str,
) -> Result<String, PlaceholderError> {
    if tail.is_empty() {
        return Ok(Value::Object(metadata.clone()).to_string());
    }
    let (key, rest) = bracket_name(tail)
        .filter(|(_, rest)| rest.is_empty())
        .ok_or_else(|| PlaceholderError::Unsupported(placeholder.to_string()))?;
    let _ = rest;
    metadata
        .get(key)
        .map(param_text)
        .ok_or_else(|| PlaceholderError::Missing {
            placeholder: placeholder.to_string(),
            what: format!("metadata key {key:?}"),
        })
}

fn artifact_field(
    a: &StepArtifact,
    field: &str,
    placeholder: &str,
) -> Result<String, PlaceholderError> {
    match field {
        ".path" => Ok(a.path.clone()),
        ".uri" => Ok(a.uri.clone()),
        _ => match field.strip_prefix(".metadata") {
            Some(tail) => metadata_field(&a.metadata, tail, placeholder),
            None => Err(PlaceholderError::Unsupported(placeholder.to_string())),
        },
    }
}

/// The value of one placeholder, given without its braces (`$.inputs.parameters['x']`).
fn resolve(expr: &str, ctx: &Context) -> Result<String, PlaceholderError> {
    let placeholder = format!("{{{{{expr}}}}}");
    let unsupported = || PlaceholderError::Unsupported(placeholder.clone());
    let missing = |what: String| PlaceholderError::Missing {
        placeholder: placeholder.clone(),
        what,
    };
    match expr {
        "$" => return Ok(ctx.executor_input.clone()),
        "$.pipeline_job_name" => return Ok(ctx.job_name.clone()),
        "$.pipeline_job_resource_name" => return Ok(ctx.job_resource_name.clone()),
        "$.pipeline_job_uuid" => return Ok(ctx.job_uuid.clone()),
        "$.pipeline_task_name" => return Ok(ctx.task_name.clone()),
        "$.pipeline_task_uuid" => return Ok(ctx.task_uuid.clone()),
        "$.pipeline_root" => return Ok(ctx.pipeline_root.clone()),
        // Where the run's workspace is mounted, when the pipeline has one.
        "$.workspace_path" => return Ok(gantry_model::WORKSPACE_PATH.to_string()),
        "$.outputs.output_file" | "$.outputMetadataUri" => return Ok(ctx.output_file.clone()),
        _ => {}
    }
    if let Some(rest) = expr.strip_prefix("$.inputs.parameters") {
        let (name, tail) = bracket_name(rest).ok_or_else(unsupported)?;
        if !tail.is_empty() {
            return Err(unsupported());
        }
        return match ctx.input_parameters.get(name) {
            Some(v) if !v.is_null() => Ok(param_text(v)),
            _ => Err(missing(format!("input parameter {name:?}"))),
        };
    }
    if let Some(rest) = expr.strip_prefix("$.inputs.artifacts") {
        let (name, tail) = bracket_name(rest).ok_or_else(unsupported)?;
        let list = ctx
            .input_artifacts
            .get(name)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| missing(format!("input artifact {name:?}")))?;
        if tail.is_empty() {
            let items: Vec<Value> = list.iter().map(StepArtifact::to_json).collect();
            return Ok(Value::Array(items).to_string());
        }
        return artifact_field(&list[0], tail, &placeholder);
    }
    if let Some(rest) = expr.strip_prefix("$.outputs.parameters") {
        let (name, tail) = bracket_name(rest).ok_or_else(unsupported)?;
        if tail != ".output_file" {
            return Err(unsupported());
        }
        return ctx
            .output_parameter_files
            .get(name)
            .cloned()
            .ok_or_else(|| missing(format!("output parameter {name:?} (not declared)")));
    }
    if let Some(rest) = expr.strip_prefix("$.outputs.artifacts") {
        let (name, tail) = bracket_name(rest).ok_or_else(unsupported)?;
        let a = ctx
            .output_artifacts
            .get(name)
            .ok_or_else(|| missing(format!("output artifact {name:?} (not declared)")))?;
        return artifact_field(a, tail, &placeholder);
    }
    Err(unsupported())
}

/// Substitutes every plain placeholder in `s`. A `{{$` that is not followed by `.` or `}` is
/// left alone (shell or template text); one that is must be a known, closed placeholder.
pub fn substitute_str(s: &str, ctx: &Context) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{$") {
        let after = &rest[start + 2..];
        if !(after[1..].starts_with('.') || after[1..].starts_with('}')) {
            out.push_str(&rest[..start + 3]);
            rest = &rest[start + 3..];
            continue;
        }
        out.push_str(&rest[..start]);
        let end = after
            .find("}}")
            .ok_or_else(|| PlaceholderError::Malformed {
                arg: s.to_string(),
                reason: format!(
                    "{:?} is not closed with }}}}",
                    rest[start..].chars().take(40).collect::<String>()
                ),
            })?;
        out.push_str(&resolve(&after[..end], ctx)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether an input has a value, for `IfPresent`.
pub fn is_present(name: &str, ctx: &Context) -> bool {
    ctx.input_parameters.get(name).is_some_and(|v| !v.is_null())
        || ctx.input_artifacts.get(name).is_some_and(|l| !l.is_empty())
}

fn malformed(item: &Value, reason: &str) -> PlaceholderError {
    PlaceholderError::Malformed {
        arg: item.to_string(),
        reason: reason.to_string(),
    }
}

/// Expands one structured item (a string, or a Concat / IfPresent object) into 0..n args.
fn expand(item: &Value, ctx: &Context, out: &mut Vec<String>) -> Result<(), PlaceholderError> {
    match item {
        Value::String(s) => out.push(substitute_str(s, ctx)?),
        Value::Object(m) if m.len() == 1 && m.contains_key("Concat") => {
            let parts = m["Concat"]
                .as_array()
                .ok_or_else(|| malformed(item, "Concat expects a list"))?;
            let mut pieces = Vec::new();
            for p in parts {
                expand(p, ctx, &mut pieces)?;
            }
            out.push(pieces.concat());
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("IfPresent") => {
            let spec = m["IfPresent"]
                .as_object()
                .ok_or_else(|| malformed(item, "IfPresent expects an object"))?;
            let name = spec
                .get("InputName")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(item, "IfPresent needs an InputName"))?;
            let branch = if is_present(name, ctx) {
                spec.get("Then")
            } else {
                spec.get("Else")
            };
            match branch {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for i in items {
                        expand(i, ctx, out)?;
                    }
                }
                Some(other) => expand(other, ctx, out)?,
            }
        }
        other => return Err(malformed(other, "expected a string, Concat or IfPresent")),
    }
    Ok(())
}

/// An argument the SDK wrote as a JSON structured placeholder.
fn structured(item: &str) -> Option<Value> {
    let t = item.trim();
    if !(t.starts_with('{') && (t.contains("\"Concat\"") || t.contains("\"IfPresent\""))) {
        return None;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ Value::Object(_))
            if v.as_object().is_some_and(|m| {
                m.len() == 1 && (m.contains_key("Concat") || m.contains_key("IfPresent"))
            }) =>
        {
            Some(v)
        }
        _ => None,
    }
}

/// Substitutes a command or args list; structured placeholders may add or drop arguments.
pub fn substitute_all(items: &[String], ctx: &Context) -> Result<Vec<String>, PlaceholderError> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match structured(item) {
            Some(v) => expand(&v, ctx, &mut out)?,
            None => out.push(substitute_str(item, ctx)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art(name: &str, p: &str) -> StepArtifact {
        StepArtifact {
            name: name.into(),
            schema_title: "system.Dataset".into(),
            schema_version: "0.0.1".into(),
            path: p.into(),
            uri: p.into(),
            metadata: json!({"rows": 3, "source": "db"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn ctx() -> Context {
        Context {
            executor_input: "{\"inputs\":{}}".into(),
            input_parameters: [
                ("text1".to_string(), json!("hi")),
                ("n".to_string(), json!(3)),
                ("x".to_string(), json!(0.5)),
                ("whole".to_string(), json!(2.0)),
                ("flag".to_string(), json!(true)),
                ("cfg".to_string(), json!({"a": [1, 2]})),
                ("items".to_string(), json!(["a", "b"])),
                ("optional_input_1".to_string(), json!("one")),
                ("nothing".to_string(), Value::Null),
                ("input_one".to_string(), json!("one")),
                ("input_two".to_string(), json!("two")),
                ("quoted".to_string(), json!("say \"hi\" {{$}}")),
            ]
            .into(),
            input_artifacts: [
                (
                    "data".to_string(),
                    vec![
                        art("data", "/gantry/inputs/data/0/data"),
                        art("data", "/gantry/inputs/data/1/data"),
                    ],
                ),
                ("empty".to_string(), vec![]),
            ]
            .into(),
            output_parameter_files: [(
                "output_path".to_string(),
                "/gantry/outputs/params/output_path".to_string(),
            )]
            .into(),
            output_artifacts: [
                (
                    "text2".to_string(),
                    StepArtifact {
                        metadata: Map::new(),
                        ..art("text2", "/gantry/outputs/artifacts/text2")
                    },
                ),
                (
                    "dataset".to_string(),
                    StepArtifact {
                        metadata: Map::new(),
                        ..art("dataset", "/gantry/outputs/artifacts/dataset")
                    },
                ),
            ]
            .into(),
            output_file: "/gantry/outputs/executor_output.json".into(),
            job_name: "pipe".into(),
            job_resource_name: "pipe-run-1".into(),
            job_uuid: "run-1".into(),
            task_name: "t".into(),
            task_uuid: "tu".into(),
            pipeline_root: "s3://b/p".into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_placeholders() {
        let c = ctx();
        let args = strings(&[
            "{{$}}",
            "{{$.inputs.parameters['text1']}}",
            "{{$.inputs.parameters['n']}}",
            "{{$.inputs.parameters['x']}}",
            "{{$.inputs.parameters['whole']}}",
            "{{$.inputs.parameters['flag']}}",
            "{{$.inputs.parameters['cfg']}}",
            "{{$.inputs.parameters['items']}}",
            "{{$.inputs.artifacts['data'].path}}",
            "{{$.inputs.artifacts['data'].uri}}",
            "{{$.outputs.parameters['output_path'].output_file}}",
            "{{$.outputs.artifacts['text2'].path}}",
            "{{$.outputs.artifacts['text2'].uri}}",
            "{{$.outputs.artifacts['text2'].metadata}}",
            "{{$.inputs.artifacts['data'].metadata}}",
            "{{$.inputs.artifacts['data'].metadata['source']}}",
            "{{$.outputs.output_file}}",
            "{{$.pipeline_job_name}}|{{$.pipeline_job_resource_name}}|{{$.pipeline_job_uuid}}",
            "{{$.pipeline_task_name}}|{{$.pipeline_task_uuid}}|{{$.pipeline_root}}",
            "{{$.workspace_path}}/data",
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&[
                "{\"inputs\":{}}",
                "hi",
                "3",
                "0.5",
                "2",
                "true",
                "{\"a\":[1,2]}",
                "[\"a\",\"b\"]",
                "/gantry/inputs/data/0/data",
                "/gantry/inputs/data/0/data",
                "/gantry/outputs/params/output_path",
                "/gantry/outputs/artifacts/text2",
                "/gantry/outputs/artifacts/text2",
                "{}",
                "{\"rows\":3,\"source\":\"db\"}",
                "db",
                "/gantry/outputs/executor_output.json",
                "pipe|pipe-run-1|run-1",
                "t|tu|s3://b/p",
                "/kfp-workspace/data",
            ])
        );
    }

    #[test]
    fn list_of_input_artifacts_is_json() {
        // artifacts_simple.yaml: `{{$.inputs.artifacts['in_datasets']}}`, read with
        // json.loads and `d['uri']`.
        let out = substitute_str("{{$.inputs.artifacts['data']}}", &ctx()).expect("list");
        let v: Value = serde_json::from_str(&out).expect("json");
        let uris: Vec<&str> = v
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|a| a["uri"].as_str())
            .collect();
        assert_eq!(
            uris,
            vec!["/gantry/inputs/data/0/data", "/gantry/inputs/data/1/data"]
        );
        assert_eq!(v[0]["type"]["schemaTitle"], "system.Dataset");
    }

    #[test]
    fn placeholders_inside_longer_strings() {
        // container_with_placeholder_in_fstring.yaml
        let c = ctx();
        let args = strings(&[
            "prefix-{{$.inputs.parameters['text1']}}",
            "{{$.outputs.artifacts['text2'].uri}}/0",
            "echo \"{{$.inputs.parameters[\"text1\"]}} world\" n={{$.inputs.parameters['n']}}",
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&[
                "prefix-hi",
                "/gantry/outputs/artifacts/text2/0",
                "echo \"hi world\" n=3",
            ])
        );
    }

    #[test]
    fn values_are_not_rescanned() {
        // A value holding placeholder-like text or quotes goes in verbatim, also inside
        // structured placeholders (which are parsed before substitution).
        let c = ctx();
        let args = strings(&[
            "{{$.inputs.parameters['quoted']}}",
            r#"{"Concat": ["<", "{{$.inputs.parameters['quoted']}}", ">"]}"#,
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&["say \"hi\" {{$}}", "<say \"hi\" {{$}}>"])
        );
    }

    #[test]
    fn concat_as_the_sdk_writes_it() {
        // container_with_concat_placeholder.yaml and pipeline_with_concat_placeholder.yaml
        let c = ctx();
        let args = strings(&[
            "echo \"$0\" > /tmp/test && [[ \"$0\" == 'one+two=three' ]]",
            r#"{"Concat": ["{{$.inputs.parameters['input_one']}}", "+", "{{$.inputs.parameters['input_two']}}", "=three"]}"#,
            r#"{"Concat": ["prefix-", "{{$.inputs.parameters['text1']}}", "{{$.outputs.artifacts['text2'].uri}}"]}"#,
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&[
                "echo \"$0\" > /tmp/test && [[ \"$0\" == 'one+two=three' ]]",
                "one+two=three",
                "prefix-hi/gantry/outputs/artifacts/text2",
            ])
        );
    }

    #[test]
    fn if_present_as_the_sdk_writes_it() {
        // essential/placeholder_with_if_placeholder_none_input_value.yaml: optional_input_2 is
        // not supplied, so its Else branch applies; optional_input_1 is.
        let mut c = ctx();
        let args = strings(&[
            "--arg0",
            "{{$.inputs.parameters['text1']}}",
            r#"{"IfPresent": {"InputName": "optional_input_1", "Then": ["--arg1", "{{$.inputs.parameters['optional_input_1']}}"]}}"#,
            r#"{"IfPresent": {"InputName": "optional_input_2", "Then": ["--arg2", "{{$.inputs.parameters['optional_input_2']}}"], "Else": ["--arg2", "default value"]}}"#,
            r#"{"IfPresent": {"InputName": "absent", "Then": ["x"]}}"#,
            r#"{"IfPresent": {"InputName": "nothing", "Then": ["null counts as absent"]}}"#,
            r#"{"IfPresent": {"InputName": "empty", "Then": ["an empty artifact list too"]}}"#,
            r#"{"IfPresent": {"InputName": "data", "Then": ["--data", "{{$.inputs.artifacts['data'].path}}"]}}"#,
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&[
                "--arg0",
                "hi",
                "--arg1",
                "one",
                "--arg2",
                "default value",
                "--data",
                "/gantry/inputs/data/0/data",
            ])
        );
        // container_with_if_placeholder.yaml, in the command, both ways.
        let cmd = strings(&[
            "my_program",
            r#"{"IfPresent": {"InputName": "optional_input", "Then": ["{{$.inputs.parameters['optional_input']}}"], "Else": ["bye"]}}"#,
            "--dataset",
            r#"{"IfPresent": {"InputName": "optional_input", "Then": ["{{$.outputs.artifacts['dataset'].uri}}"], "Else": ["bye"]}}"#,
        ]);
        assert_eq!(
            substitute_all(&cmd, &c).expect("absent"),
            strings(&["my_program", "bye", "--dataset", "bye"])
        );
        c.input_parameters
            .insert("optional_input".into(), json!("default"));
        assert_eq!(
            substitute_all(&cmd, &c).expect("present"),
            strings(&[
                "my_program",
                "default",
                "--dataset",
                "/gantry/outputs/artifacts/dataset"
            ])
        );
    }

    #[test]
    fn structured_placeholders_nest() {
        let c = ctx();
        let args = strings(&[
            r#"{"Concat": ["--n=", {"IfPresent": {"InputName": "n", "Then": "{{$.inputs.parameters['n']}}", "Else": "0"}}, "/", {"IfPresent": {"InputName": "absent", "Then": ["x"]}}]}"#,
            r#"{"IfPresent": {"InputName": "text1", "Then": [{"Concat": ["a", "{{$.inputs.parameters['text1']}}"]}, {"IfPresent": {"InputName": "absent", "Then": ["no"], "Else": ["b", "c"]}}]}}"#,
            r#"{"IfPresent": {"InputName": "text1", "Then": {"Concat": ["x", "y"]}}}"#,
        ]);
        assert_eq!(
            substitute_all(&args, &c).expect("substitute"),
            strings(&["--n=3/", "ahi", "b", "c", "xy"])
        );
    }

    #[test]
    fn json_arguments_that_are_not_placeholders_stay() {
        let c = ctx();
        let args = strings(&[
            r#"{"a": 1}"#,
            r#"{"Concat": "broken"#,
            r#"{"Concat": [], "other": 1}"#,
            "{{ not a placeholder }}",
            "${{$HOME}}",
        ]);
        assert_eq!(substitute_all(&args, &c).expect("substitute"), args);
    }

    #[test]
    fn unknown_missing_and_malformed_are_errors_naming_the_placeholder() {
        let c = ctx();
        let e = substitute_str("{{$.pipeline_google_cloud_project_id}}", &c).expect_err("x");
        assert_eq!(
            e,
            PlaceholderError::Unsupported("{{$.pipeline_google_cloud_project_id}}".into())
        );
        assert!(e
            .to_string()
            .contains("{{$.pipeline_google_cloud_project_id}}"));
        let e = substitute_str("--x={{$.pipeline_google_cloud_location}}", &c).expect_err("x");
        assert!(
            e.to_string()
                .contains("{{$.pipeline_google_cloud_location}}"),
            "{e}"
        );
        let e = substitute_str("{{$.inputs.parameters['nope']}}", &c).expect_err("x");
        assert!(
            matches!(&e, PlaceholderError::Missing { what, .. } if what.contains("\"nope\"")),
            "{e}"
        );
        let e = substitute_str("{{$.inputs.parameters['nothing']}}", &c).expect_err("null");
        assert!(matches!(e, PlaceholderError::Missing { .. }), "{e}");
        let e = substitute_str("{{$.inputs.artifacts['empty'].path}}", &c).expect_err("x");
        assert!(e.to_string().contains("\"empty\""), "{e}");
        let e = substitute_str("{{$.inputs.artifacts['data'].value}}", &c).expect_err("x");
        assert!(matches!(e, PlaceholderError::Unsupported(_)), "{e}");
        assert!(substitute_str("{{$.inputs.parameters['x'", &c).is_err());
        assert!(substitute_str("{{$.outputs.parameters['output_path'].path}}", &c).is_err());
        assert!(substitute_str("{{$.outputs.artifacts['undeclared'].path}}", &c).is_err());
        assert!(substitute_str("{{$.inputs.parameters['text1'].json_escape[0]}}", &c).is_err());
        let e = substitute_all(&strings(&[r#"{"IfPresent": {"Then": ["x"]}}"#]), &c)
            .expect_err("no input name");
        assert!(matches!(e, PlaceholderError::Malformed { .. }), "{e}");
        let e = substitute_all(&strings(&[r#"{"Concat": ["{{$.bogus}}"]}"#]), &c)
            .expect_err("inside concat");
        assert_eq!(e, PlaceholderError::Unsupported("{{$.bogus}}".into()));
    }
}
