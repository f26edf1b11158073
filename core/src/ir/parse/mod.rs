//! KFP IR YAML → [`PipelineSpec`]: reading the document.
//!
//! The YAML is first loaded into generic values, then walked by hand so that every error names
//! its path in the document (`components.comp-train.inputDefinitions.parameters.x.parameterType`).
//! The checks that need the whole document (references, types, cycles) live in
//! [`super::validate`], which [`parse_pipeline`] runs last: a returned spec is always valid.
//!
//! - this module: the file's documents, YAML → JSON values, and the top of the spec;
//! - [`walk`]: the path-carrying walker every reader below uses;
//! - [`dag`]: components, DAGs, tasks and what they bind;
//! - [`executor`]: containers and importers.

mod dag;
mod executor;
mod walk;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map as JsonMap, Number, Value};

use self::dag::parse_component;
use self::executor::parse_executor;
use self::walk::Obj;
use super::error::{index, join, kind_of, IrError};
use super::model::PipelineSpec;

/// The fields of a pipeline spec document (`PipelineSpec` in `pipeline_spec.proto`).
const TOP_LEVEL_FIELDS: &[&str] = &[
    "components",
    "defaultPipelineRoot",
    "deploymentSpec",
    "pipelineInfo",
    "root",
    "schemaVersion",
    "sdkVersion",
];

/// Parses and validates a KFP v2 pipeline IR document (YAML or JSON).
///
/// The file may hold several YAML documents: the first non-empty one is the pipeline spec, a
/// later one with `platforms:` is the platform spec (kept as is in
/// [`PipelineSpec::platform_spec`]). A `PipelineJob`-style wrapper (`pipelineSpec:`) is unwrapped.
pub fn parse_pipeline(yaml: &str) -> Result<PipelineSpec, IrError> {
    let documents = load_documents(yaml)?;
    let mut spec_doc: Option<(Value, String)> = None;
    let mut platform: Option<Value> = None;
    for (i, doc) in documents.into_iter().enumerate() {
        let label = format!("document {}", i + 1);
        let Value::Object(map) = &doc else {
            return Err(IrError::document(format!(
                "{label} is {}, not a mapping",
                kind_of(&doc)
            )));
        };
        if spec_doc.is_none() {
            if map.contains_key("platforms") && !map.contains_key("root") {
                return Err(IrError::document(format!(
                    "{label} is a platform spec (`platforms:`), but the pipeline spec must come first"
                )));
            }
            spec_doc = Some(unwrap_pipeline_job(doc));
        } else if map.contains_key("platforms") {
            if platform.is_some() {
                return Err(IrError::document(format!(
                    "{label} is a second platform spec; a file holds at most one"
                )));
            }
            platform = Some(doc);
        } else {
            return Err(IrError::document(format!(
                "{label} is neither empty nor a platform spec (`platforms:`); a file holds one pipeline"
            )));
        }
    }
    let Some((doc, prefix)) = spec_doc else {
        return Err(IrError::document(
            "the file holds no pipeline: it is empty or only comments",
        ));
    };
    let spec = build_spec(&doc, &prefix, platform)?;
    super::validate::validate(spec)
}

/// A `PipelineJob` (`{displayName, pipelineSpec, runtimeConfig}`) carries the spec inside.
fn unwrap_pipeline_job(doc: Value) -> (Value, String) {
    match doc {
        Value::Object(mut map) if !map.contains_key("root") && map.contains_key("pipelineSpec") => {
            let inner = map.remove("pipelineSpec").unwrap_or(Value::Null);
            (inner, "pipelineSpec".to_string())
        }
        other => (other, String::new()),
    }
}

/// Every non-empty YAML document of the file, as JSON values.
fn load_documents(text: &str) -> Result<Vec<Value>, IrError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut doc = serde_norway::Value::deserialize(de)
            .map_err(|e| IrError::document(format!("malformed YAML: {e}")))?;
        doc.apply_merge()
            .map_err(|e| IrError::document(format!("malformed YAML in document {}: {e}", i + 1)))?;
        let value = yaml_to_json(&doc, "")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn yaml_to_json(v: &serde_norway::Value, path: &str) -> Result<Value, IrError> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Value::Number(
                    Number::from_f64(f)
                        .ok_or_else(|| IrError::new(path, format!("{f} is not a finite number")))?,
                )
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut out = JsonMap::new();
            for (k, item) in mapping {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Tagged(t) => match &t.value {
                        Y::String(s) => s.clone(),
                        _ => return Err(IrError::new(path, "a mapping key must be a scalar")),
                    },
                    _ => {
                        return Err(IrError::new(
                            path,
                            "a mapping key must be a string, a number or a boolean",
                        ))
                    }
                };
                let child = join(path, &key);
                let value = yaml_to_json(item, &child)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(IrError::new(child, "duplicate key"));
                }
            }
            Value::Object(out)
        }
        // `!tag value`: the IR never uses tags; read the value.
        Y::Tagged(t) => yaml_to_json(&t.value, path)?,
    })
}

fn build_spec(doc: &Value, prefix: &str, platform: Option<Value>) -> Result<PipelineSpec, IrError> {
    let top = Obj::of(doc, prefix.to_string())?;
    top.only(TOP_LEVEL_FIELDS, "top-level")?;

    let info = top.child("pipelineInfo")?;
    let (name, description) = match &info {
        Some(info) => (
            info.text("name")?.unwrap_or_default(),
            info.text("description")?,
        ),
        None => (String::new(), None),
    };
    if !top.has("pipelineInfo") {
        return Err(IrError::new(
            top.at("pipelineInfo"),
            "missing: a pipeline spec has `pipelineInfo` with the pipeline's name",
        ));
    }

    let mut components = BTreeMap::new();
    for (key, value, path) in top.entries("components")? {
        components.insert(key.clone(), parse_component(key, value, path)?);
    }
    let root_value = top
        .get("root")
        .ok_or_else(|| IrError::new(top.at("root"), "missing: a pipeline spec has a `root` DAG"))?;
    let root = parse_component("root", root_value, top.at("root"))?;

    let mut executors = BTreeMap::new();
    if let Some(deployment) = top.child("deploymentSpec")? {
        for (key, value, path) in deployment.entries("executors")? {
            executors.insert(key.clone(), parse_executor(value, path)?);
        }
    }

    Ok(PipelineSpec {
        name,
        description,
        sdk_version: top.text("sdkVersion")?,
        schema_version: top.text("schemaVersion")?,
        default_pipeline_root: top.text("defaultPipelineRoot")?,
        root,
        components,
        executors,
        platform_spec: platform,
    })
}

#[cfg(test)]
mod tests;
