//! KFP IR YAML → [`PipelineSpec`]: reading the document.
//!
//! The YAML is first loaded into generic values, then walked by hand so that every error names
//! its path in the document (`components.comp-train.inputDefinitions.parameters.x.parameterType`).
//! The checks that need the whole document (references, types, cycles) live in
//! [`super::validate`], which [`parse_pipeline`] runs last: a returned spec is always valid.

use std::collections::BTreeMap;

use gantry_model::{ParamType, ResourceRequest};
use serde::Deserialize;
use serde_json::{Map as JsonMap, Number, Value};

use super::condition;
use super::error::{index, join, kind_of, list_names, IrError};
use super::model::{
    ArtifactDef, ArtifactSource, ComponentSpec, ContainerExecutor, DagOutputParameter, DagSpec,
    DynamicResources, ExecutorSpec, Implementation, ImporterSpec, ImporterUri, IteratorItems,
    OutputSelector, ParameterBinding, ParameterDef, ParameterSource, PipelineSpec, RetryPolicy,
    TaskSpec, TriggerStrategy,
};

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

/// The fields of a task (`PipelineTaskSpec`). Unknown task fields are refused rather than
/// ignored: each one changes how a task runs.
const TASK_FIELDS: &[&str] = &[
    "artifactIterator",
    "cachingOptions",
    "componentRef",
    "dependentTasks",
    "inputs",
    "iteratorPolicy",
    "parameterIterator",
    "retryPolicy",
    "taskInfo",
    "triggerPolicy",
];

/// Backoff cap when a retry policy does not name one (the SDK's default and maximum).
const DEFAULT_BACKOFF_MAX_MS: u64 = 3_600_000;

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

// ---------------------------------------------------------------------------------------------
// Walking generic values with paths.

/// A mapping in the document, with its path.
struct Obj<'a> {
    map: &'a JsonMap<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn of(v: &'a Value, path: String) -> Result<Self, IrError> {
        match v {
            Value::Object(map) => Ok(Self { map, path }),
            other => Err(IrError::wrong_kind(path, "a mapping", other)),
        }
    }

    /// A mapping that may be written as null (`parameters:` with nothing under it).
    fn of_or_empty(v: &'a Value, path: String) -> Result<Self, IrError> {
        static EMPTY: std::sync::OnceLock<JsonMap<String, Value>> = std::sync::OnceLock::new();
        match v {
            Value::Null => Ok(Self {
                map: EMPTY.get_or_init(JsonMap::new),
                path,
            }),
            other => Self::of(other, path),
        }
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; absent and null are the same.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn child(&self, key: &str) -> Result<Option<Obj<'a>>, IrError> {
        self.get(key).map(|v| Obj::of(v, self.at(key))).transpose()
    }

    fn req_child(&self, key: &str) -> Result<Obj<'a>, IrError> {
        self.child(key)?
            .ok_or_else(|| IrError::missing(self.at(key)))
    }

    /// The entries of the mapping under `key` (none if absent or null).
    fn entries(&self, key: &str) -> Result<Vec<(&'a String, &'a Value, String)>, IrError> {
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

    fn text(&self, key: &str) -> Result<Option<String>, IrError> {
        self.get(key).map(|v| text(v, &self.at(key))).transpose()
    }

    fn req_text(&self, key: &str) -> Result<String, IrError> {
        self.text(key)?
            .ok_or_else(|| IrError::missing(self.at(key)))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, IrError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(IrError::wrong_kind(self.at(key), "a boolean", other)),
        }
    }

    /// A non-negative integer (protobuf JSON may write 64-bit integers as strings).
    fn u64(&self, key: &str) -> Result<Option<u64>, IrError> {
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

    fn u32(&self, key: &str) -> Result<Option<u32>, IrError> {
        self.u64(key)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| IrError::new(self.at(key), format!("{n} is too large")))
            })
            .transpose()
    }

    /// A finite number (or a string holding one).
    fn f64(&self, key: &str) -> Result<Option<f64>, IrError> {
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

    fn text_list(&self, key: &str) -> Result<Vec<String>, IrError> {
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
    fn only(&self, known: &[&str], what: &str) -> Result<(), IrError> {
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
fn text(v: &Value, path: &str) -> Result<String, IrError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(IrError::wrong_kind(path, "a string", other)),
    }
}

/// A value for messages, shortened.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The document.

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

fn parse_component(name: &str, v: &Value, path: String) -> Result<ComponentSpec, IrError> {
    let c = Obj::of(v, path)?;
    let mut input_parameters = BTreeMap::new();
    let mut input_artifacts = BTreeMap::new();
    if let Some(inputs) = c.child("inputDefinitions")? {
        for (k, v, p) in inputs.entries("parameters")? {
            input_parameters.insert(k.clone(), parse_parameter_def(v, p, true)?);
        }
        for (k, v, p) in inputs.entries("artifacts")? {
            input_artifacts.insert(k.clone(), parse_artifact_def(v, p)?);
        }
    }
    let mut output_parameters = BTreeMap::new();
    let mut output_artifacts = BTreeMap::new();
    if let Some(outputs) = c.child("outputDefinitions")? {
        for (k, v, p) in outputs.entries("parameters")? {
            output_parameters.insert(k.clone(), parse_parameter_def(v, p, false)?);
        }
        for (k, v, p) in outputs.entries("artifacts")? {
            output_artifacts.insert(k.clone(), parse_artifact_def(v, p)?);
        }
    }
    let implementation = match (c.get("dag"), c.text("executorLabel")?) {
        (Some(_), Some(_)) => {
            return Err(IrError::new(
                c.path.clone(),
                "a component has either `dag` or `executorLabel`, not both",
            ))
        }
        (Some(dag), None) => Implementation::Dag(parse_dag(dag, c.at("dag"))?),
        (None, Some(label)) => Implementation::Executor(label),
        (None, None) => {
            return Err(IrError::new(
                c.path.clone(),
                "a component needs `dag` (a sub-pipeline) or `executorLabel` (a step)",
            ))
        }
    };
    Ok(ComponentSpec {
        name: name.to_string(),
        input_parameters,
        input_artifacts,
        output_parameters,
        output_artifacts,
        implementation,
    })
}

fn parse_parameter_def(v: &Value, path: String, input: bool) -> Result<ParameterDef, IrError> {
    let d = Obj::of(v, path)?;
    // `parameterType` since KFP 2.0; `type` (INT, DOUBLE, STRING) in the first v2 IRs.
    let (ptype, legacy) = match (d.text("parameterType")?, d.text("type")?) {
        (Some(t), _) => (param_type(&t, &d.at("parameterType"))?, false),
        (None, Some(t)) => (param_type(&t, &d.at("type"))?, true),
        (None, None) => {
            return Err(IrError::new(
                d.at("parameterType"),
                "missing: every parameter needs a parameterType",
            ))
        }
    };
    let default = if input {
        match d.get("defaultValue") {
            None => None,
            Some(raw) => {
                let raw = if legacy {
                    legacy_value(raw).unwrap_or_else(|| raw.clone())
                } else {
                    raw.clone()
                };
                Some(
                    ptype
                        .coerce(&raw)
                        .map_err(|e| IrError::new(d.at("defaultValue"), e))?,
                )
            }
        }
    } else {
        None
    };
    Ok(ParameterDef {
        ptype,
        default,
        optional: d.bool("isOptional")?.unwrap_or(false),
        description: d.text("description")?,
    })
}

fn param_type(name: &str, path: &str) -> Result<ParamType, IrError> {
    if let Some(t) = ParamType::from_ir(name) {
        return Ok(t);
    }
    let message = match name {
        "TASK_CONFIG" => "parameter type TASK_CONFIG (task config passthrough) is not supported by Gantry".to_string(),
        "PARAMETER_TYPE_ENUM_UNSPECIFIED" | "PRIMITIVE_TYPE_UNSPECIFIED" => {
            "the parameter type is unspecified".to_string()
        }
        other => format!(
            "unknown parameter type {other:?} (known: STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT, TASK_FINAL_STATUS)"
        ),
    };
    Err(IrError::new(path, message))
}

/// The first IRs wrote constants as `{intValue: 1}` / `{doubleValue: 1.5}` / `{stringValue: a}`.
fn legacy_value(v: &Value) -> Option<Value> {
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

fn parse_artifact_def(v: &Value, path: String) -> Result<ArtifactDef, IrError> {
    let d = Obj::of(v, path)?;
    let (schema_title, schema_version) = match d.child("artifactType")? {
        Some(t) => (
            // `schemaTitle`, or an inline `instanceSchema` / `schemaUri` (rare, older SDKs):
            // those are generic artifacts.
            t.text("schemaTitle")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "system.Artifact".to_string()),
            t.text("schemaVersion")?.unwrap_or_default(),
        ),
        None => ("system.Artifact".to_string(), String::new()),
    };
    Ok(ArtifactDef {
        schema_title,
        schema_version,
        is_list: d.bool("isArtifactList")?.unwrap_or(false),
        optional: d.bool("isOptional")?.unwrap_or(false),
    })
}

fn parse_dag(v: &Value, path: String) -> Result<DagSpec, IrError> {
    let d = Obj::of_or_empty(v, path)?;
    let mut tasks = BTreeMap::new();
    for (name, value, path) in d.entries("tasks")? {
        tasks.insert(name.clone(), parse_task(name, value, path)?);
    }
    let mut output_parameters = BTreeMap::new();
    let mut output_artifacts = BTreeMap::new();
    if let Some(outputs) = d.child("outputs")? {
        for (name, value, path) in outputs.entries("parameters")? {
            let o = Obj::of(value, path)?;
            let out = match (o.child("valueFromParameter")?, o.child("valueFromOneof")?) {
                (Some(_), Some(_)) => {
                    return Err(IrError::new(
                        o.path.clone(),
                        "a DAG output has either valueFromParameter or valueFromOneof, not both",
                    ))
                }
                (Some(single), None) => DagOutputParameter::Single(parameter_selector(&single)?),
                (None, Some(oneof)) => {
                    let selectors = list_of_objs(&oneof, "parameterSelectors")?
                        .iter()
                        .map(parameter_selector)
                        .collect::<Result<Vec<_>, _>>()?;
                    if selectors.is_empty() {
                        return Err(IrError::new(
                            oneof.at("parameterSelectors"),
                            "dsl.OneOf needs at least one producer",
                        ));
                    }
                    DagOutputParameter::OneOf(selectors)
                }
                (None, None) => {
                    return Err(IrError::new(
                        o.path.clone(),
                        "a DAG output parameter needs valueFromParameter or valueFromOneof",
                    ))
                }
            };
            output_parameters.insert(name.clone(), out);
        }
        for (name, value, path) in outputs.entries("artifacts")? {
            let o = Obj::of(value, path)?;
            let selectors = list_of_objs(&o, "artifactSelectors")?
                .iter()
                .map(|s| {
                    Ok(OutputSelector {
                        producer_task: s.req_text("producerSubtask")?,
                        output_key: s.req_text("outputArtifactKey")?,
                    })
                })
                .collect::<Result<Vec<_>, IrError>>()?;
            if selectors.is_empty() {
                return Err(IrError::new(
                    o.at("artifactSelectors"),
                    "a DAG output artifact needs at least one artifact selector",
                ));
            }
            output_artifacts.insert(name.clone(), selectors);
        }
    }
    Ok(DagSpec {
        tasks,
        output_parameters,
        output_artifacts,
    })
}

fn parameter_selector(o: &Obj<'_>) -> Result<OutputSelector, IrError> {
    Ok(OutputSelector {
        producer_task: o.req_text("producerSubtask")?,
        output_key: o.req_text("outputParameterKey")?,
    })
}

fn list_of_objs<'a>(o: &Obj<'a>, key: &str) -> Result<Vec<Obj<'a>>, IrError> {
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

fn parse_task(name: &str, v: &Value, path: String) -> Result<TaskSpec, IrError> {
    let t = Obj::of(v, path)?;
    t.only(TASK_FIELDS, "task")?;
    let component = t.req_child("componentRef")?.req_text("name")?;
    let display_name = match t.child("taskInfo")? {
        Some(info) => info.text("name")?.unwrap_or_else(|| name.to_string()),
        None => name.to_string(),
    };
    let dependent_tasks = t.text_list("dependentTasks")?;

    let mut parameters = BTreeMap::new();
    let mut artifacts = BTreeMap::new();
    if let Some(inputs) = t.child("inputs")? {
        for (k, v, p) in inputs.entries("parameters")? {
            parameters.insert(k.clone(), parse_parameter_binding(v, p)?);
        }
        for (k, v, p) in inputs.entries("artifacts")? {
            artifacts.insert(k.clone(), parse_artifact_binding(v, p)?);
        }
    }

    let (condition, trigger_strategy) = match t.child("triggerPolicy")? {
        Some(policy) => {
            let condition = policy.text("condition")?.filter(|c| !c.trim().is_empty());
            let strategy = match policy.text("strategy")?.as_deref() {
                None | Some("") | Some("TRIGGER_STRATEGY_UNSPECIFIED") | Some("ALL_UPSTREAM_TASKS_SUCCEEDED") => {
                    TriggerStrategy::AllUpstreamSucceeded
                }
                Some("ALL_UPSTREAM_TASKS_COMPLETED") => TriggerStrategy::AllUpstreamCompleted,
                Some(other) => {
                    return Err(IrError::new(
                        policy.at("strategy"),
                        format!("unknown trigger strategy {other:?} (known: ALL_UPSTREAM_TASKS_SUCCEEDED, ALL_UPSTREAM_TASKS_COMPLETED)"),
                    ))
                }
            };
            (condition, strategy)
        }
        None => (None, TriggerStrategy::AllUpstreamSucceeded),
    };

    let iterator = parse_iterator(&t)?;

    let cache_enabled = match t.child("cachingOptions")? {
        Some(c) => c.bool("enableCache")?.unwrap_or(false),
        None => false,
    };

    let retry = t
        .child("retryPolicy")?
        .map(|r| parse_retry(&r))
        .transpose()?;

    Ok(TaskSpec {
        name: name.to_string(),
        display_name,
        component,
        dependent_tasks,
        parameters,
        artifacts,
        condition,
        trigger_strategy,
        iterator,
        cache_enabled,
        retry,
    })
}

fn parse_iterator(t: &Obj<'_>) -> Result<Option<super::model::Iterator>, IrError> {
    let parallelism = match t.child("iteratorPolicy")? {
        Some(p) => p.u32("parallelismLimit")?.unwrap_or(0),
        None => 0,
    };
    let (it, items) = match (t.child("parameterIterator")?, t.child("artifactIterator")?) {
        (Some(_), Some(_)) => {
            return Err(IrError::new(
                t.path.clone(),
                "a task has parameterIterator or artifactIterator, not both",
            ))
        }
        (Some(p), None) => {
            let items = p.req_child("items")?;
            let raw = items.get("raw");
            let input = items.text("inputParameter")?;
            let items = match (raw, input) {
                (Some(_), Some(_)) => {
                    return Err(IrError::new(
                        items.path.clone(),
                        "loop items are either `raw` or `inputParameter`, not both",
                    ))
                }
                (Some(raw), None) => IteratorItems::Raw(raw_items(raw, &items.at("raw"))?),
                (None, Some(input)) => IteratorItems::InputParameter(input),
                (None, None) => {
                    return Err(IrError::new(
                        items.path.clone(),
                        "loop items need `raw` (a JSON list) or `inputParameter`",
                    ))
                }
            };
            (p, items)
        }
        (None, Some(a)) => {
            let items = a.req_child("items")?;
            let input = items.req_text("inputArtifact")?;
            (a, IteratorItems::InputArtifact(input))
        }
        (None, None) => {
            if t.has("iteratorPolicy") {
                return Err(IrError::new(
                    t.at("iteratorPolicy"),
                    "an iterator policy needs a parameterIterator or artifactIterator",
                ));
            }
            return Ok(None);
        }
    };
    Ok(Some(super::model::Iterator {
        item_input: it.req_text("itemInput")?,
        items,
        parallelism,
    }))
}

/// `items.raw` is a JSON list written as a string (`'[1, 2, 3]'`); a YAML list is accepted too.
fn raw_items(raw: &Value, path: &str) -> Result<Value, IrError> {
    let value = match raw {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| IrError::new(path, format!("loop items are not valid JSON: {e}")))?,
        other => other.clone(),
    };
    match value {
        Value::Array(_) => Ok(value),
        other => Err(IrError::new(
            path,
            format!("loop items must be a JSON list, got {}", kind_of(&other)),
        )),
    }
}

fn parse_retry(r: &Obj<'_>) -> Result<RetryPolicy, IrError> {
    let duration = |key: &str| -> Result<Option<u64>, IrError> {
        r.get(key)
            .map(|v| {
                let path = r.at(key);
                match v {
                    Value::String(s) => parse_duration_ms(s).map_err(|e| IrError::new(path, e)),
                    Value::Number(n) => n
                        .as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| (f * 1000.0).round() as u64)
                        .ok_or_else(|| IrError::new(path, "a duration cannot be negative")),
                    other => Err(IrError::wrong_kind(path, "a duration like \"60s\"", other)),
                }
            })
            .transpose()
    };
    let factor = r.f64("backoffFactor")?;
    if let Some(f) = factor {
        if f < 0.0 {
            return Err(IrError::new(
                r.at("backoffFactor"),
                "the backoff factor cannot be negative",
            ));
        }
    }
    Ok(RetryPolicy {
        max_retry_count: r.u32("maxRetryCount")?.unwrap_or(0),
        backoff_duration_ms: duration("backoffDuration")?.unwrap_or(0),
        // Protobuf JSON omits a zero factor; a factor of 0 or none means a constant backoff.
        backoff_factor: factor.filter(|f| *f > 0.0).unwrap_or(1.0),
        backoff_max_duration_ms: duration("backoffMaxDuration")?.unwrap_or(DEFAULT_BACKOFF_MAX_MS),
    })
}

/// A protobuf JSON duration (`"0s"`, `"60s"`, `"1.5s"`) in milliseconds. Plain numbers of
/// seconds, and `ms` / `m` / `h` suffixes, are accepted too.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1000.0)
    };
    let ok = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|c| *c == '.').count() <= 1;
    let value = number
        .parse::<f64>()
        .ok()
        .filter(|v| ok && v.is_finite() && *v * scale < 1.0e15);
    match value {
        Some(v) => Ok((v * scale).round() as u64),
        None => Err(format!("{s:?} is not a duration like \"60s\"")),
    }
}

fn parse_parameter_binding(v: &Value, path: String) -> Result<ParameterBinding, IrError> {
    let b = Obj::of(v, path)?;
    let sources = [
        "runtimeValue",
        "componentInputParameter",
        "taskOutputParameter",
        "taskFinalStatus",
    ];
    let present: Vec<&str> = sources
        .iter()
        .copied()
        .filter(|k| b.map.contains_key(*k))
        .collect();
    let source = match present.as_slice() {
        ["runtimeValue"] => {
            let rv = Obj::of(b.map.get("runtimeValue").unwrap_or(&Value::Null), b.at("runtimeValue"))?;
            if let Some(c) = rv.map.get("constant") {
                ParameterSource::Constant(c.clone())
            } else if let Some(c) = rv.get("constantValue") {
                ParameterSource::Constant(legacy_value(c).ok_or_else(|| {
                    IrError::new(
                        rv.at("constantValue"),
                        "expected {stringValue|intValue|doubleValue: ...}",
                    )
                })?)
            } else if rv.has("runtimeParameter") {
                return Err(IrError::new(
                    rv.at("runtimeParameter"),
                    "runtime parameters (an early v2 IR form) are not supported; recompile the pipeline with a current kfp",
                ));
            } else {
                return Err(IrError::new(
                    rv.path.clone(),
                    "a runtime value needs `constant`",
                ));
            }
        }
        ["componentInputParameter"] => {
            ParameterSource::ComponentInput(b.req_text("componentInputParameter")?)
        }
        ["taskOutputParameter"] => {
            let o = b.req_child("taskOutputParameter")?;
            ParameterSource::TaskOutput(OutputSelector {
                producer_task: o.req_text("producerTask")?,
                output_key: o.req_text("outputParameterKey")?,
            })
        }
        ["taskFinalStatus"] => {
            ParameterSource::TaskFinalStatus(b.req_child("taskFinalStatus")?.req_text("producerTask")?)
        }
        [] => {
            return Err(IrError::new(
                b.path.clone(),
                "an input parameter needs one of runtimeValue, componentInputParameter, taskOutputParameter, taskFinalStatus",
            ))
        }
        several => {
            return Err(IrError::new(
                b.path.clone(),
                format!(
                    "an input parameter has one source, this one has {}",
                    several.join(" and ")
                ),
            ))
        }
    };
    let selector = b
        .text("parameterExpressionSelector")?
        .filter(|s| !s.trim().is_empty());
    if let Some(s) = &selector {
        condition::check_selector_syntax(s)
            .map_err(|e| IrError::new(b.at("parameterExpressionSelector"), e))?;
    }
    Ok(ParameterBinding { source, selector })
}

fn parse_artifact_binding(v: &Value, path: String) -> Result<ArtifactSource, IrError> {
    let b = Obj::of(v, path)?;
    match (b.has("componentInputArtifact"), b.has("taskOutputArtifact")) {
        (true, false) => Ok(ArtifactSource::ComponentInput(
            b.req_text("componentInputArtifact")?,
        )),
        (false, true) => {
            let o = b.req_child("taskOutputArtifact")?;
            Ok(ArtifactSource::TaskOutput(OutputSelector {
                producer_task: o.req_text("producerTask")?,
                output_key: o.req_text("outputArtifactKey")?,
            }))
        }
        (true, true) => Err(IrError::new(
            b.path.clone(),
            "an input artifact has one source, this one has componentInputArtifact and taskOutputArtifact",
        )),
        (false, false) => Err(IrError::new(
            b.path.clone(),
            "an input artifact needs componentInputArtifact or taskOutputArtifact",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Executors.

fn parse_executor(v: &Value, path: String) -> Result<ExecutorSpec, IrError> {
    let e = Obj::of(v, path)?;
    let kinds: Vec<&String> = e.map.keys().collect();
    match kinds.as_slice() {
        [k] if k.as_str() == "container" => Ok(ExecutorSpec::Container(parse_container(
            &e.req_child("container")?,
        )?)),
        [k] if k.as_str() == "importer" => Ok(ExecutorSpec::Importer(parse_importer(
            &e.req_child("importer")?,
        )?)),
        [k] if k.as_str() == "resolver" || k.as_str() == "customJob" => Err(IrError::new(
            e.path.clone(),
            format!(
                "unsupported executor kind {k:?}: Gantry runs container and importer executors"
            ),
        )),
        [k] => Err(IrError::new(
            e.at(k),
            format!("unknown executor kind {k:?} (known: container, importer)"),
        )),
        [] => Err(IrError::new(
            e.path.clone(),
            "an executor needs `container` or `importer`",
        )),
        _ => Err(IrError::new(
            e.path.clone(),
            format!(
                "an executor has one kind, this one has {}",
                list_names(kinds.iter().map(|k| k.as_str()))
            ),
        )),
    }
}

fn parse_container(c: &Obj<'_>) -> Result<ContainerExecutor, IrError> {
    let image = c.req_text("image")?;
    if image.trim().is_empty() {
        return Err(IrError::new(c.at("image"), "the image is empty"));
    }
    let mut env = Vec::new();
    for (i, item) in list_of_objs(c, "env")?.iter().enumerate() {
        let name = item.req_text("name")?;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(IrError::new(
                index(&c.at("env"), i),
                format!("{name:?} is not a valid environment variable name"),
            ));
        }
        env.push((name, item.text("value")?.unwrap_or_default()));
    }
    let (resources, dynamic_resources) = match c.child("resources")? {
        Some(r) => parse_resources(&r)?,
        None => (ResourceRequest::default(), DynamicResources::default()),
    };
    Ok(ContainerExecutor {
        image,
        command: c.text_list("command")?,
        args: c.text_list("args")?,
        env,
        resources,
        dynamic_resources,
    })
}

/// A resource field: a constant, or the name of the input parameter a placeholder reads.
enum Quantity<T> {
    Absent,
    Constant(T),
    Input(String),
}

fn parse_resources(r: &Obj<'_>) -> Result<(ResourceRequest, DynamicResources), IrError> {
    let mut req = ResourceRequest::default();
    let mut dynamic = DynamicResources::default();

    // CPU: `resourceCpuLimit` ("500m", "2", or a placeholder) since kfp 2.11; `cpuLimit`
    // (a number of cores) before, and still written beside it.
    let cpu = |text_key: &str, number_key: &str| -> Result<Quantity<f64>, IrError> {
        if let Some(s) = r.text(text_key)? {
            return quantity(&s, &r.at(text_key), parse_cpu_quantity);
        }
        match r.f64(number_key)? {
            Some(f) if f < 0.0 => Err(IrError::new(
                r.at(number_key),
                "a CPU amount cannot be negative",
            )),
            Some(f) if f > 0.0 => Ok(Quantity::Constant(f)),
            _ => Ok(Quantity::Absent),
        }
    };
    // Memory: `resourceMemoryLimit` ("4G", "1536Mi", or a placeholder); `memoryLimit` is a
    // number of gigabytes (10^9 bytes: the SDK writes 1536Mi as 1.610612736).
    let memory = |text_key: &str, number_key: &str| -> Result<Quantity<u64>, IrError> {
        if let Some(s) = r.text(text_key)? {
            return quantity(&s, &r.at(text_key), parse_memory_quantity);
        }
        match r.f64(number_key)? {
            Some(gb) if gb < 0.0 => Err(IrError::new(
                r.at(number_key),
                "a memory amount cannot be negative",
            )),
            Some(gb) if gb > 0.0 => {
                let bytes = gb * 1e9;
                if bytes >= u64::MAX as f64 {
                    return Err(IrError::new(
                        r.at(number_key),
                        "the memory amount is too large",
                    ));
                }
                Ok(Quantity::Constant(bytes.round() as u64))
            }
            _ => Ok(Quantity::Absent),
        }
    };
    match cpu("resourceCpuLimit", "cpuLimit")? {
        Quantity::Constant(v) => req.cpu_limit = Some(v),
        Quantity::Input(n) => dynamic.cpu_limit = Some(n),
        Quantity::Absent => {}
    }
    match cpu("resourceCpuRequest", "cpuRequest")? {
        Quantity::Constant(v) => req.cpu_request = Some(v),
        Quantity::Input(n) => dynamic.cpu_request = Some(n),
        Quantity::Absent => {}
    }
    match memory("resourceMemoryLimit", "memoryLimit")? {
        Quantity::Constant(v) => req.memory_limit_bytes = Some(v),
        Quantity::Input(n) => dynamic.memory_limit = Some(n),
        Quantity::Absent => {}
    }
    match memory("resourceMemoryRequest", "memoryRequest")? {
        Quantity::Constant(v) => req.memory_request_bytes = Some(v),
        Quantity::Input(n) => dynamic.memory_request = Some(n),
        Quantity::Absent => {}
    }

    if let Some(acc) = r.child("accelerator")? {
        // `resourceType` / `resourceCount` since kfp 2.11 (placeholders allowed); `type` /
        // `count` before.
        let type_key = if acc.has("resourceType") {
            "resourceType"
        } else {
            "type"
        };
        if let Some(t) = acc.text(type_key)?.filter(|t| !t.trim().is_empty()) {
            match placeholder_input(&t, &acc.at(type_key))? {
                Some(input) => dynamic.accelerator_type = Some(input),
                None => req.accelerator_type = Some(t),
            }
        }
        let count_key = if acc.has("resourceCount") {
            "resourceCount"
        } else {
            "count"
        };
        let count = match acc.get(count_key) {
            None => Quantity::Absent,
            Some(v) => {
                let s = text(v, &acc.at(count_key))?;
                quantity(&s, &acc.at(count_key), parse_accelerator_count)?
            }
        };
        match count {
            Quantity::Constant(n) => req.accelerator_count = n,
            Quantity::Input(n) => dynamic.accelerator_count = Some(n),
            // A type without a count asks for one device.
            Quantity::Absent => {
                if req.accelerator_type.is_some() || dynamic.accelerator_type.is_some() {
                    req.accelerator_count = 1;
                }
            }
        }
    }
    Ok((req, dynamic))
}

fn quantity<T>(
    s: &str,
    path: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Quantity<T>, IrError> {
    if s.trim().is_empty() {
        return Ok(Quantity::Absent);
    }
    if let Some(input) = placeholder_input(s, path)? {
        return Ok(Quantity::Input(input));
    }
    parse(s)
        .map(Quantity::Constant)
        .map_err(|e| IrError::new(path, e))
}

/// `{{$.inputs.parameters['NAME']}}` → `NAME`; other text → `None`; another placeholder is an
/// error (a resource field can only read one input parameter).
fn placeholder_input(s: &str, path: &str) -> Result<Option<String>, IrError> {
    let t = s.trim();
    if !t.contains("{{") {
        return Ok(None);
    }
    let name = t
        .strip_prefix("{{$.inputs.parameters[")
        .and_then(|rest| rest.strip_suffix("]}}"))
        .and_then(|quoted| {
            quoted
                .strip_prefix('\'')
                .and_then(|q| q.strip_suffix('\''))
                .or_else(|| quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
        })
        .filter(|n| !n.is_empty() && !n.contains(['\'', '"']));
    match name {
        Some(n) => Ok(Some(n.to_string())),
        None => Err(IrError::new(
            path,
            format!("unsupported placeholder {t:?}: a resource field can be a constant or {{{{$.inputs.parameters['NAME']}}}}"),
        )),
    }
}

/// A Kubernetes CPU quantity (`"2"`, `"0.5"`, `"500m"`) in cores.
pub fn parse_cpu_quantity(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (number, scale) = match t.strip_suffix('m') {
        Some(n) => (n, 0.001),
        None => (t, 1.0),
    };
    decimal(number)
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v < 1.0e9)
        .ok_or_else(|| format!("{s:?} is not a CPU amount like \"2\", \"0.5\" or \"500m\""))
}

/// A Kubernetes memory quantity (`"4G"`, `"1536Mi"`, `"268435456"`) in bytes.
pub fn parse_memory_quantity(s: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let t = s.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| t.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((t, 1.0));
    decimal(number)
        .map(|v| (v * scale).ceil())
        .filter(|v| v.is_finite() && *v < u64::MAX as f64)
        .map(|v| v as u64)
        .ok_or_else(|| {
            format!("{s:?} is not a memory amount like \"512Mi\", \"4G\" or a number of bytes")
        })
}

/// An accelerator count (`"1"`, `2`).
pub fn parse_accelerator_count(s: &str) -> Result<u32, String> {
    let t = s.trim();
    t.parse::<u32>()
        .ok()
        .or_else(|| {
            decimal(t)
                .filter(|f| f.fract() == 0.0 && *f <= u32::MAX as f64)
                .map(|f| f as u32)
        })
        .ok_or_else(|| format!("{s:?} is not an accelerator count (a whole number)"))
}

/// A non-negative decimal number without exponent or sign.
fn decimal(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().filter(|c| *c == '.').count() <= 1
        && s != ".";
    if ok {
        s.parse::<f64>().ok()
    } else {
        None
    }
}

fn parse_importer(i: &Obj<'_>) -> Result<ImporterSpec, IrError> {
    let uri = i.req_child("artifactUri")?;
    let artifact_uri = if let Some(c) = uri.text("constant")? {
        ImporterUri::Constant(c)
    } else if let Some(p) = uri.text("runtimeParameter")? {
        ImporterUri::Parameter(p)
    } else if let Some(v) = uri.get("constantValue") {
        match legacy_value(v) {
            Some(Value::String(s)) => ImporterUri::Constant(s),
            _ => {
                return Err(IrError::new(
                    uri.at("constantValue"),
                    "expected {stringValue: URI}",
                ))
            }
        }
    } else {
        return Err(IrError::new(
            uri.path.clone(),
            "an importer's artifactUri needs `constant` or `runtimeParameter`",
        ));
    };
    let (schema_title, schema_version) = match i.child("typeSchema")? {
        Some(t) => (
            t.text("schemaTitle")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "system.Artifact".to_string()),
            t.text("schemaVersion")?.unwrap_or_default(),
        ),
        None => ("system.Artifact".to_string(), String::new()),
    };
    let metadata = match i.get("metadata") {
        None => JsonMap::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(IrError::wrong_kind(i.at("metadata"), "a mapping", other)),
    };
    Ok(ImporterSpec {
        artifact_uri,
        schema_title,
        schema_version,
        metadata,
        reimport: i.bool("reimport")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small valid pipeline; tests break it in one place each.
    pub(crate) const GOOD: &str = r#"# PIPELINE DEFINITION
# Name: demo
components:
  comp-train:
    executorLabel: exec-train
    inputDefinitions:
      parameters:
        n_estimators:
          parameterType: NUMBER_INTEGER
        lr:
          parameterType: NUMBER_DOUBLE
          defaultValue: 0.1
          isOptional: true
    outputDefinitions:
      artifacts:
        model:
          artifactType:
            schemaTitle: system.Model
            schemaVersion: 0.0.1
      parameters:
        score:
          parameterType: NUMBER_DOUBLE
deploymentSpec:
  executors:
    exec-train:
      container:
        image: python:3.11
        command: [python, -c]
        args: ["train", "{{$.inputs.parameters['n_estimators']}}"]
        env:
        - name: A
          value: b
        resources:
          cpuLimit: 2.0
          memoryLimit: 4.0
          resourceCpuLimit: '2'
          resourceMemoryLimit: 4G
          accelerator:
            resourceType: nvidia.com/gpu
            resourceCount: '1'
pipelineInfo:
  name: demo
root:
  dag:
    tasks:
      train:
        cachingOptions:
          enableCache: true
        componentRef:
          name: comp-train
        inputs:
          parameters:
            n_estimators:
              componentInputParameter: n
        taskInfo:
          name: train
  inputDefinitions:
    parameters:
      n:
        parameterType: NUMBER_INTEGER
        defaultValue: 10.0
        isOptional: true
schemaVersion: 2.1.0
sdkVersion: kfp-2.16.1
"#;

    fn err(yaml: &str) -> IrError {
        match parse_pipeline(yaml) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn assert_err(yaml: &str, path: &str, message_part: &str) {
        let e = err(yaml);
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(message_part), "{e}");
    }

    #[test]
    fn parses_a_good_document() {
        let spec = parse_pipeline(GOOD).unwrap();
        assert_eq!(spec.name, "demo");
        assert_eq!(spec.sdk_version.as_deref(), Some("kfp-2.16.1"));
        assert_eq!(spec.root.input_parameters["n"].default, Some(json!(10)));
        let train = &spec.components["comp-train"];
        assert_eq!(train.output_artifacts["model"].schema_title, "system.Model");
        let Some(ExecutorSpec::Container(c)) = spec.executors.get("exec-train") else {
            panic!("container expected");
        };
        assert_eq!(c.image, "python:3.11");
        assert_eq!(c.env, vec![("A".to_string(), "b".to_string())]);
        assert_eq!(c.resources.cpu_limit, Some(2.0));
        assert_eq!(c.resources.memory_limit_bytes, Some(4_000_000_000));
        assert_eq!(
            c.resources.accelerator_type.as_deref(),
            Some("nvidia.com/gpu")
        );
        assert_eq!(c.resources.accelerator_count, 1);
        assert!(c.dynamic_resources.is_empty());
        let Implementation::Dag(dag) = &spec.root.implementation else {
            panic!("dag expected");
        };
        let t = &dag.tasks["train"];
        assert!(t.cache_enabled);
        assert_eq!(t.component, "comp-train");
        assert_eq!(
            t.parameters["n_estimators"].source,
            ParameterSource::ComponentInput("n".into())
        );
    }

    #[test]
    fn empty_and_comment_only_files_are_refused() {
        for text in [
            "",
            "# PIPELINE DEFINITION\n# Name: echo\n",
            "---\n---\n",
            "\n\n",
        ] {
            let e = err(text);
            assert_eq!(e.path, "");
            assert!(e.message.contains("holds no pipeline"), "{e}");
        }
    }

    #[test]
    fn malformed_yaml_is_refused_with_its_position() {
        let e = err("pipelineInfo:\n  name: [unclosed\nroot: {");
        assert_eq!(e.path, "");
        assert!(e.message.starts_with("malformed YAML"), "{e}");
        assert!(e.message.contains("line"), "{e}");
        assert_err("- a\n- b\n", "", "document 1 is a list, not a mapping");
    }

    #[test]
    fn unknown_top_level_fields_are_refused() {
        let yaml = GOOD.replace("components:\n  comp-train:", "components_1:\n  comp-train:");
        assert_err(&yaml, "components_1", "unknown top-level field");
    }

    #[test]
    fn multi_document_files_keep_the_platform_spec() {
        let yaml = format!(
            "{GOOD}---\nplatforms:\n  kubernetes:\n    deploymentSpec:\n      executors: {{}}\n"
        );
        let spec = parse_pipeline(&yaml).unwrap();
        assert_eq!(
            spec.platform_spec,
            Some(json!({"platforms": {"kubernetes": {"deploymentSpec": {"executors": {}}}}}))
        );
        let twice = format!("{yaml}---\nplatforms: {{}}\n");
        assert_err(&twice, "", "second platform spec");
        let other = format!("{GOOD}---\nfoo: 1\n");
        assert_err(
            &other,
            "",
            "document 2 is neither empty nor a platform spec",
        );
        let first = format!("platforms: {{}}\n---\n{GOOD}");
        assert_err(&first, "", "pipeline spec must come first");
        // empty documents in between are fine
        let gaps = format!("---\n{GOOD}---\n---\nplatforms: {{}}\n");
        assert!(parse_pipeline(&gaps).is_ok());
    }

    #[test]
    fn pipeline_job_wrapper_is_unwrapped() {
        let spec: Value = serde_norway::from_str(GOOD).unwrap();
        let job = json!({"displayName": "x", "pipelineSpec": spec}).to_string();
        assert_eq!(parse_pipeline(&job).unwrap().name, "demo");
    }

    #[test]
    fn missing_root_and_info_are_named() {
        let no_root = GOOD.split("root:\n").next().unwrap_or_default().to_string();
        assert_err(&no_root, "root", "missing");
        let no_info = GOOD.replace("pipelineInfo:\n  name: demo\n", "");
        assert_err(&no_info, "pipelineInfo", "missing");
    }

    #[test]
    fn unknown_parameter_types_name_their_path() {
        let yaml = GOOD.replace(
            "parameterType: NUMBER_DOUBLE\n          defaultValue",
            "parameterType: FLOAT\n          defaultValue",
        );
        assert_err(
            &yaml,
            "components.comp-train.inputDefinitions.parameters.lr.parameterType",
            "unknown parameter type \"FLOAT\"",
        );
        let yaml = GOOD.replace(
            "parameterType: NUMBER_DOUBLE\n          defaultValue",
            "parameterType: TASK_CONFIG\n          defaultValue",
        );
        assert_err(
            &yaml,
            "components.comp-train.inputDefinitions.parameters.lr.parameterType",
            "TASK_CONFIG",
        );
    }

    #[test]
    fn old_type_spelling_and_legacy_values_are_read() {
        let yaml = GOOD.replace(
            "      n:\n        parameterType: NUMBER_INTEGER\n        defaultValue: 10.0",
            "      n:\n        type: INT\n        defaultValue:\n          intValue: '10'",
        );
        let spec = parse_pipeline(&yaml).unwrap();
        let n = &spec.root.input_parameters["n"];
        assert_eq!(n.ptype, ParamType::NumberInteger);
        assert_eq!(n.default, Some(json!(10)));
    }

    #[test]
    fn bad_defaults_are_refused() {
        let yaml = GOOD.replace("defaultValue: 10.0", "defaultValue: ten");
        assert_err(
            &yaml,
            "root.inputDefinitions.parameters.n.defaultValue",
            "not an integer",
        );
    }

    #[test]
    fn unsupported_executor_kinds_are_named() {
        let yaml = GOOD.replace(
            "    exec-train:\n      container:",
            "    exec-other:\n      resolver:\n        outputArtifactQueries: {}\n    exec-train:\n      container:",
        );
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-other",
            "unsupported executor kind \"resolver\"",
        );
        let yaml = GOOD.replace(
            "    exec-train:\n      container:",
            "    exec-other:\n      customJob:\n        customJob: {}\n    exec-train:\n      container:",
        );
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-other",
            "\"customJob\"",
        );
    }

    #[test]
    fn wrong_kinds_name_their_path() {
        let yaml = GOOD.replace("command: [python, -c]", "command: {a: b}");
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-train.container.command",
            "expected a list, got a mapping",
        );
        let yaml = GOOD.replace("args: [\"train\",", "args: [[1],");
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-train.container.args[0]",
            "expected a string",
        );
        let yaml = GOOD.replace("enableCache: true", "enableCache: [1]");
        assert_err(
            &yaml,
            "root.dag.tasks.train.cachingOptions.enableCache",
            "expected a boolean",
        );
    }

    #[test]
    fn unknown_task_fields_are_refused() {
        let yaml = GOOD.replace(
            "        taskInfo:\n          name: train",
            "        taskInfo:\n          name: train\n        frobnicate: 1",
        );
        assert_err(
            &yaml,
            "root.dag.tasks.train.frobnicate",
            "unknown task field",
        );
    }

    #[test]
    fn resources_read_numbers_strings_and_placeholders() {
        let yaml = GOOD.replace(
            "          cpuLimit: 2.0\n          memoryLimit: 4.0\n          resourceCpuLimit: '2'\n          resourceMemoryLimit: 4G\n",
            "          cpuRequest: 0.5\n          memoryRequest: 1.610612736\n          memoryLimit: 0.268435456\n          resourceCpuLimit: \"{{$.inputs.parameters['pipelinechannel--cpu']}}\"\n",
        )
        .replace(
            "            n_estimators:\n              componentInputParameter: n\n",
            "            n_estimators:\n              componentInputParameter: n\n            pipelinechannel--cpu:\n              runtimeValue:\n                constant: '500m'\n",
        );
        let spec = parse_pipeline(&yaml).unwrap();
        let Some(ExecutorSpec::Container(c)) = spec.executors.get("exec-train") else {
            panic!("container expected");
        };
        assert_eq!(c.resources.cpu_limit, None);
        assert_eq!(
            c.dynamic_resources.cpu_limit.as_deref(),
            Some("pipelinechannel--cpu")
        );
        assert_eq!(c.resources.cpu_request, Some(0.5));
        assert_eq!(c.resources.memory_request_bytes, Some(1_610_612_736));
        assert_eq!(c.resources.memory_limit_bytes, Some(268_435_456));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_cpu_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_cpu_quantity("1.5").unwrap(), 1.5);
        assert!(parse_cpu_quantity("-1").is_err());
        assert!(parse_cpu_quantity("two").is_err());
        assert!(parse_cpu_quantity("NaN").is_err());
        assert_eq!(parse_memory_quantity("4G").unwrap(), 4_000_000_000);
        assert_eq!(parse_memory_quantity("1536Mi").unwrap(), 1_610_612_736);
        assert_eq!(parse_memory_quantity("256Mi").unwrap(), 268_435_456);
        assert_eq!(parse_memory_quantity("1.5Gi").unwrap(), 1_610_612_736);
        assert_eq!(parse_memory_quantity("1000").unwrap(), 1000);
        assert!(parse_memory_quantity("4X").is_err());
        assert!(parse_memory_quantity("99999999999E").is_err());
        assert_eq!(parse_accelerator_count("1").unwrap(), 1);
        assert_eq!(parse_accelerator_count("2.0").unwrap(), 2);
        assert!(parse_accelerator_count("1.5").is_err());
        assert!(parse_accelerator_count("-1").is_err());
        assert_eq!(parse_duration_ms("0s").unwrap(), 0);
        assert_eq!(parse_duration_ms("60s").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1_500);
        assert_eq!(parse_duration_ms("3600s").unwrap(), 3_600_000);
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("-1s").is_err());
    }

    #[test]
    fn bad_resource_values_are_refused() {
        let yaml = GOOD.replace("resourceMemoryLimit: 4G", "resourceMemoryLimit: 4 gigs");
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-train.container.resources.resourceMemoryLimit",
            "not a memory amount",
        );
        let yaml = GOOD.replace(
            "resourceCpuLimit: '2'",
            "resourceCpuLimit: \"{{$.outputs.x}}\"",
        );
        assert_err(
            &yaml,
            "deploymentSpec.executors.exec-train.container.resources.resourceCpuLimit",
            "unsupported placeholder",
        );
    }

    #[test]
    fn retry_policy_and_iterators() {
        let yaml = GOOD.replace(
            "        taskInfo:\n          name: train\n",
            "        taskInfo:\n          name: train\n        retryPolicy:\n          backoffDuration: 30s\n          backoffFactor: 2.0\n          backoffMaxDuration: 3600s\n          maxRetryCount: 3\n",
        );
        let spec = parse_pipeline(&yaml).unwrap();
        let Implementation::Dag(dag) = &spec.root.implementation else {
            panic!()
        };
        assert_eq!(
            dag.tasks["train"].retry,
            Some(RetryPolicy {
                max_retry_count: 3,
                backoff_duration_ms: 30_000,
                backoff_factor: 2.0,
                backoff_max_duration_ms: 3_600_000
            })
        );
        let bad = yaml.replace("backoffDuration: 30s", "backoffDuration: soon");
        assert_err(
            &bad,
            "root.dag.tasks.train.retryPolicy.backoffDuration",
            "not a duration",
        );
    }

    #[test]
    fn parameter_bindings_need_exactly_one_source() {
        let yaml = GOOD.replace(
            "              componentInputParameter: n\n",
            "              componentInputParameter: n\n              runtimeValue:\n                constant: 3\n",
        );
        assert_err(
            &yaml,
            "root.dag.tasks.train.inputs.parameters.n_estimators",
            "has one source",
        );
        let yaml = GOOD.replace(
            "              componentInputParameter: n\n",
            "              parameterExpressionSelector: x\n",
        );
        assert_err(
            &yaml,
            "root.dag.tasks.train.inputs.parameters.n_estimators",
            "needs one of",
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_quickly() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = err(&bomb);
        assert!(e.message.starts_with("malformed YAML"), "{e}");
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = err(&deep);
        assert!(e.message.contains("recursion limit"), "{e}");
    }

    #[test]
    fn huge_numbers_and_odd_keys_do_not_panic() {
        for text in [
            "pipelineInfo: {name: x}\nroot: {dag: {tasks: {}}}\nsdkVersion: 1e999\n",
            "{[1]: 2}",
            "? [a]\n: b\n",
            "a: &x [*x]\n",
            "pipelineInfo: {name: .nan}\nroot: {dag: {}}\n",
            "!!binary aGVsbG8=",
            "root: !tag {dag: {}}\npipelineInfo: {name: x}\n",
        ] {
            let _ = parse_pipeline(text);
        }
    }
}
