//! Components, DAGs and tasks: definitions of inputs and outputs, task bindings, trigger
//! policies, iterators and retry policies.

use std::collections::BTreeMap;

use gantry_model::ParamType;
use serde_json::Value;

use super::walk::{artifact_schema, legacy_value, list_of_objs, Obj};
use crate::ir::error::{kind_of, IrError};
use crate::ir::model::{
    ArtifactDef, ArtifactSource, ComponentSpec, DagOutputParameter, DagSpec, Implementation,
    IteratorItems, OutputSelector, ParameterBinding, ParameterDef, ParameterSource, RetryPolicy,
    TaskSpec, TriggerStrategy,
};
use crate::ir::quantity::parse_proto_duration_ms;

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

pub(super) fn parse_component(
    name: &str,
    v: &Value,
    path: String,
) -> Result<ComponentSpec, IrError> {
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
                        .map_err(|e| IrError::new(d.at("defaultValue"), e.to_string()))?,
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

fn parse_artifact_def(v: &Value, path: String) -> Result<ArtifactDef, IrError> {
    let d = Obj::of(v, path)?;
    let (schema_title, schema_version) = artifact_schema(d.child("artifactType")?)?;
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

fn parse_iterator(t: &Obj<'_>) -> Result<Option<crate::ir::model::Iterator>, IrError> {
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
    Ok(Some(crate::ir::model::Iterator {
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
                    Value::String(s) => {
                        parse_proto_duration_ms(s).map_err(|e| IrError::new(path, e.to_string()))
                    }
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
        crate::ir::cel::Program::compile(s).map_err(|e| {
            IrError::new(
                b.at("parameterExpressionSelector"),
                format!("not a valid CEL expression: {e}"),
            )
        })?;
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
