//! KFP placeholders in a container's command and args, substituted as Kubeflow's launcher
//! does: `{{$}}`, `{{$.inputs.parameters['x']}}`, `{{$.outputs.artifacts['m'].path}}`, ...,
//! and the structured `{"Concat": [...]}` / `{"IfPresent": {...}}` forms the SDK writes as
//! JSON strings. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

/// An artifact as the step sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepArtifact {
    /// Local path inside the step (file or directory).
    pub path: String,
    /// The URI written into the executor input (the same local path; see the launcher).
    pub uri: String,
    pub metadata: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Default)]
pub struct Context {
    pub executor_input: String,
    pub input_parameters: BTreeMap<String, Value>,
    pub input_artifacts: BTreeMap<String, StepArtifact>,
    /// Output parameter name → file the step writes its value to.
    pub output_parameter_files: BTreeMap<String, String>,
    pub output_artifacts: BTreeMap<String, StepArtifact>,
    pub job_name: String,
    pub job_id: String,
    pub task_name: String,
    pub task_id: String,
    pub pipeline_root: String,
}

fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
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

fn artifact_field(a: &StepArtifact, field: &str, expr: &str) -> Result<String, String> {
    match field {
        ".path" => Ok(a.path.clone()),
        ".uri" => Ok(a.uri.clone()),
        ".metadata" => Ok(Value::Object(a.metadata.clone()).to_string()),
        _ => Err(format!("unsupported placeholder {{{{{expr}}}}}")),
    }
}

/// The value of one `{{...}}` expression (without braces).
fn resolve(expr: &str, ctx: &Context) -> Result<String, String> {
    let unknown = || format!("unsupported placeholder {{{{{expr}}}}}");
    match expr {
        "$" => return Ok(ctx.executor_input.clone()),
        "$.pipeline_job_name" | "$.pipeline_job_resource_name" => return Ok(ctx.job_name.clone()),
        "$.pipeline_job_uuid" => return Ok(ctx.job_id.clone()),
        "$.pipeline_task_name" => return Ok(ctx.task_name.clone()),
        "$.pipeline_task_uuid" => return Ok(ctx.task_id.clone()),
        "$.pipeline_root" => return Ok(ctx.pipeline_root.clone()),
        _ => {}
    }
    if let Some(rest) = expr.strip_prefix("$.inputs.parameters") {
        let (name, tail) = bracket_name(rest).ok_or_else(unknown)?;
        if !tail.is_empty() {
            return Err(unknown());
        }
        return ctx
            .input_parameters
            .get(name)
            .map(param_text)
            .ok_or_else(|| {
                format!("placeholder {{{{{expr}}}}}: input parameter {name:?} has no value")
            });
    }
    if let Some(rest) = expr.strip_prefix("$.inputs.artifacts") {
        let (name, tail) = bracket_name(rest).ok_or_else(unknown)?;
        let a = ctx.input_artifacts.get(name).ok_or_else(|| {
            format!("placeholder {{{{{expr}}}}}: input artifact {name:?} is absent")
        })?;
        return artifact_field(a, tail, expr);
    }
    if let Some(rest) = expr.strip_prefix("$.outputs.parameters") {
        let (name, tail) = bracket_name(rest).ok_or_else(unknown)?;
        if tail != ".output_file" {
            return Err(unknown());
        }
        return ctx
            .output_parameter_files
            .get(name)
            .cloned()
            .ok_or_else(|| format!("placeholder {{{{{expr}}}}}: no output parameter {name:?}"));
    }
    if let Some(rest) = expr.strip_prefix("$.outputs.artifacts") {
        let (name, tail) = bracket_name(rest).ok_or_else(unknown)?;
        let a = ctx
            .output_artifacts
            .get(name)
            .ok_or_else(|| format!("placeholder {{{{{expr}}}}}: no output artifact {name:?}"))?;
        return artifact_field(a, tail, expr);
    }
    Err(unknown())
}

/// Substitutes every `{{...}}` in a plain string.
pub fn substitute_str(s: &str, ctx: &Context) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{$") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unterminated placeholder in {s:?}"))?;
        out.push_str(&resolve(&after[..end], ctx)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn present(name: &str, ctx: &Context) -> bool {
    ctx.input_parameters.contains_key(name) || ctx.input_artifacts.contains_key(name)
}

/// Expands one structured item (a string, or a Concat / IfPresent object) into 0..n args.
fn expand(item: &Value, ctx: &Context, out: &mut Vec<String>) -> Result<(), String> {
    match item {
        Value::String(s) => out.push(substitute_str(s, ctx)?),
        Value::Object(m) if m.contains_key("Concat") => {
            let parts = m["Concat"]
                .as_array()
                .ok_or("Concat placeholder: expected a list")?;
            let mut joined = String::new();
            for p in parts {
                let mut v = Vec::new();
                expand(p, ctx, &mut v)?;
                joined.push_str(&v.concat());
            }
            out.push(joined);
        }
        Value::Object(m) if m.contains_key("IfPresent") => {
            let spec = m["IfPresent"]
                .as_object()
                .ok_or("IfPresent placeholder: expected an object")?;
            let name = spec
                .get("InputName")
                .and_then(Value::as_str)
                .ok_or("IfPresent placeholder: InputName is missing")?;
            let branch = if present(name, ctx) {
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
        other => return Err(format!("unsupported structured placeholder {other}")),
    }
    Ok(())
}

/// Substitutes a command or args list.
pub fn substitute_all(items: &[String], ctx: &Context) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let trimmed = item.trim_start();
        if trimmed.starts_with("{\"Concat\"") || trimmed.starts_with("{\"IfPresent\"") {
            match serde_json::from_str::<Value>(item) {
                Ok(v) => expand(&v, ctx, &mut out)?,
                Err(_) => out.push(substitute_str(item, ctx)?),
            }
        } else {
            out.push(substitute_str(item, ctx)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        let art = |p: &str| StepArtifact {
            path: p.into(),
            uri: p.into(),
            metadata: json!({"rows": 3}).as_object().cloned().unwrap_or_default(),
        };
        Context {
            executor_input: "{\"inputs\":{}}".into(),
            input_parameters: [
                ("text1".to_string(), json!("hi")),
                ("n".to_string(), json!(3)),
                ("cfg".to_string(), json!({"a": [1, 2]})),
                ("optional_input_1".to_string(), json!("one")),
            ]
            .into(),
            input_artifacts: [("data".to_string(), art("/gantry/inputs/data/0/data"))].into(),
            output_parameter_files: [(
                "lines".to_string(),
                "/gantry/outputs/parameters/lines".to_string(),
            )]
            .into(),
            output_artifacts: [(
                "text2".to_string(),
                art("/gantry/outputs/artifacts/text2/text2"),
            )]
            .into(),
            job_name: "pipe".into(),
            job_id: "run-1".into(),
            task_name: "t".into(),
            task_id: "t".into(),
            pipeline_root: "s3://b/p".into(),
        }
    }

    #[test]
    fn simple_placeholders() {
        let c = ctx();
        let args: Vec<String> = [
            "{{$}}",
            "{{$.inputs.parameters['text1']}}",
            "{{$.inputs.parameters['n']}}",
            "{{$.inputs.parameters['cfg']}}",
            "{{$.inputs.artifacts['data'].path}}",
            "{{$.outputs.parameters['lines'].output_file}}",
            "{{$.outputs.artifacts['text2'].uri}}",
            "--run={{$.pipeline_job_uuid}}/{{$.pipeline_task_name}}",
            "{{$.inputs.artifacts['data'].metadata}}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            substitute_all(&args, &c).unwrap(),
            vec![
                "{\"inputs\":{}}",
                "hi",
                "3",
                "{\"a\":[1,2]}",
                "/gantry/inputs/data/0/data",
                "/gantry/outputs/parameters/lines",
                "/gantry/outputs/artifacts/text2/text2",
                "--run=run-1/t",
                "{\"rows\":3}",
            ]
        );
    }

    #[test]
    fn fstring_and_double_quotes() {
        let c = ctx();
        assert_eq!(
            substitute_str(
                "echo \"{{$.inputs.parameters[\"text1\"]}} world\" n={{$.inputs.parameters['n']}}",
                &c
            )
            .unwrap(),
            "echo \"hi world\" n=3"
        );
    }

    #[test]
    fn concat_and_if_present_as_the_sdk_writes_them() {
        let c = ctx();
        let args = vec![
            r#"{"Concat": ["prefix-", "{{$.inputs.parameters['text1']}}", "{{$.outputs.artifacts['text2'].uri}}"]}"#.to_string(),
            r#"{"IfPresent": {"InputName": "optional_input_1", "Then": ["--arg1", "{{$.inputs.parameters['optional_input_1']}}"]}}"#.to_string(),
            r#"{"IfPresent": {"InputName": "optional_input_2", "Then": ["--arg2", "{{$.inputs.parameters['optional_input_2']}}"], "Else": ["--arg2", "default value"]}}"#.to_string(),
            r#"{"IfPresent": {"InputName": "absent", "Then": ["x"]}}"#.to_string(),
        ];
        assert_eq!(
            substitute_all(&args, &c).unwrap(),
            vec![
                "prefix-hi/gantry/outputs/artifacts/text2/text2",
                "--arg1",
                "one",
                "--arg2",
                "default value",
            ]
        );
    }

    #[test]
    fn unknown_or_missing_placeholders_are_errors() {
        let c = ctx();
        let e = substitute_str("{{$.pipeline_google_cloud_project_id}}", &c).unwrap_err();
        assert!(e.contains("unsupported placeholder"), "{e}");
        let e = substitute_str("{{$.inputs.parameters['nope']}}", &c).unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
        assert!(substitute_str("{{$.inputs.parameters['x'", &c).is_err());
        assert!(substitute_str("{{$.outputs.parameters['lines'].path}}", &c).is_err());
    }
}
