//! Whole-document checks of a parsed pipeline: every reference resolves, types fit, the graph
//! has no cycle, names are safe to use in paths. Run by [`super::parse_pipeline`] last.

use std::collections::{BTreeMap, BTreeSet};

use gantry_model::{validate_artifact_name, ParamType};
use serde_json::Value;

use super::condition;
use super::error::{index, join, list_names, IrError};
use super::model::{
    ArtifactSource, ComponentSpec, DagOutputParameter, DagSpec, ExecutorSpec, Implementation,
    ImporterUri, IteratorItems, OutputSelector, ParameterSource, PipelineSpec, TaskSpec,
};

/// Task inputs the SDK adds beside the component's declared inputs: the values a placeholder
/// reads (`pipelinechannel--NAME`, in f-string constants, resource fields and conditions) and
/// the resource settings taken from a pipeline channel (`set_cpu_limit(param)`).
const CHANNEL_PREFIX: &str = "pipelinechannel--";
const RESOURCE_INPUTS: &[&str] = &[
    "accelerator_count",
    "accelerator_type",
    "cpu_limit",
    "cpu_request",
    "memory_limit",
    "memory_request",
];

fn is_extra_input(name: &str) -> bool {
    name.starts_with(CHANNEL_PREFIX) || RESOURCE_INPUTS.contains(&name)
}

/// A constant coerced to its input's type, to store back: (component key or `None` for root,
/// task, input, value).
type Fix = (Option<String>, String, String, Value);

pub(crate) fn validate(mut spec: PipelineSpec) -> Result<PipelineSpec, IrError> {
    if spec.name.trim().is_empty() {
        return Err(IrError::new(
            "pipelineInfo.name",
            "the pipeline has no name",
        ));
    }
    if let Implementation::Executor(label) = &spec.root.implementation {
        return Err(IrError::new(
            "root",
            format!("the root component must be a DAG (`dag:`), not an executor ({label:?})"),
        ));
    }
    // Definitions first (names, executors), then the DAGs that use them.
    check_definitions(&spec, None, &spec.root)?;
    for (key, comp) in &spec.components {
        check_definitions(&spec, Some(key), comp)?;
    }
    let mut fixes: Vec<Fix> = Vec::new();
    if let Implementation::Dag(dag) = &spec.root.implementation {
        check_dag(&spec, None, &spec.root, dag, "root", &mut fixes)?;
    }
    for (key, comp) in &spec.components {
        if let Implementation::Dag(dag) = &comp.implementation {
            check_dag(
                &spec,
                Some(key),
                comp,
                dag,
                &component_path(Some(key)),
                &mut fixes,
            )?;
        }
    }
    check_recursion(&spec)?;
    for (key, task, input, value) in fixes {
        let comp = match &key {
            None => Some(&mut spec.root),
            Some(k) => spec.components.get_mut(k),
        };
        if let Some(ComponentSpec {
            implementation: Implementation::Dag(dag),
            ..
        }) = comp
        {
            if let Some(b) = dag
                .tasks
                .get_mut(&task)
                .and_then(|t| t.parameters.get_mut(&input))
            {
                b.source = ParameterSource::Constant(value);
            }
        }
    }
    Ok(spec)
}

fn component_path(key: Option<&str>) -> String {
    match key {
        None => "root".to_string(),
        Some(k) => format!("components.{k}"),
    }
}

fn names<V>(map: &BTreeMap<String, V>) -> impl std::iter::Iterator<Item = &str> {
    map.keys().map(String::as_str)
}

/// The component's own declarations: safe output and artifact names, an executor that exists.
fn check_definitions(
    spec: &PipelineSpec,
    key: Option<&String>,
    comp: &ComponentSpec,
) -> Result<(), IrError> {
    let cp = component_path(key.map(String::as_str));
    for (section, map) in [
        (
            "inputDefinitions.artifacts",
            names(&comp.input_artifacts).collect::<Vec<_>>(),
        ),
        (
            "outputDefinitions.artifacts",
            names(&comp.output_artifacts).collect(),
        ),
        (
            "outputDefinitions.parameters",
            names(&comp.output_parameters).collect(),
        ),
    ] {
        for name in map {
            validate_artifact_name(name)
                .map_err(|e| IrError::new(join(&join(&cp, section), name), e.to_string()))?;
        }
    }
    match &comp.implementation {
        Implementation::Executor(label) => {
            let Some(exec) = spec.executors.get(label) else {
                return Err(IrError::unknown(
                    join(&cp, "executorLabel"),
                    "executor",
                    label,
                    names(&spec.executors),
                ));
            };
            if let ExecutorSpec::Importer(imp) = exec {
                if let ImporterUri::Parameter(p) = &imp.artifact_uri {
                    if !comp.input_parameters.contains_key(p) {
                        return Err(IrError::new(
                            format!("deploymentSpec.executors.{label}.importer.artifactUri.runtimeParameter"),
                            format!(
                                "{p:?} is not an input parameter of component {} (its parameters: {})",
                                comp.name,
                                list_names(names(&comp.input_parameters))
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        Implementation::Dag(_) => Ok(()),
    }
}

fn check_dag(
    spec: &PipelineSpec,
    key: Option<&String>,
    comp: &ComponentSpec,
    dag: &DagSpec,
    cp: &str,
    fixes: &mut Vec<Fix>,
) -> Result<(), IrError> {
    let tasks_path = join(cp, "dag.tasks");
    for (tname, task) in &dag.tasks {
        let tp = join(&tasks_path, tname);
        check_task_name(tname).map_err(|e| IrError::new(tp.clone(), e.to_string()))?;
        let Some(sub) = spec.components.get(&task.component) else {
            return Err(IrError::unknown(
                join(&tp, "componentRef.name"),
                "component",
                &task.component,
                names(&spec.components),
            ));
        };
        for (i, dep) in task.dependent_tasks.iter().enumerate() {
            if !dag.tasks.contains_key(dep) {
                return Err(IrError::unknown(
                    index(&join(&tp, "dependentTasks"), i),
                    "task",
                    dep,
                    names(&dag.tasks),
                ));
            }
        }
        check_task_parameters(spec, key, comp, dag, tname, task, sub, &tp, fixes)?;
        check_task_artifacts(spec, comp, dag, task, sub, &tp)?;
        check_required_inputs(task, sub, &tp)?;
        check_iterator(task, sub, &tp)?;
        if let Some(expr) = &task.condition {
            let path = join(&tp, "triggerPolicy.condition");
            let compiled =
                condition::compile(expr).map_err(|e| IrError::new(path.clone(), e.to_string()))?;
            if let Some(k) = compiled
                .parameter_keys()
                .into_iter()
                .find(|k| !task.parameters.contains_key(k))
            {
                return Err(IrError::new(
                    path,
                    format!(
                        "the condition reads parameter {k:?}, which is not an input of this task (its input parameters: {})",
                        list_names(names(&task.parameters))
                    ),
                ));
            }
        }
        if let Implementation::Executor(label) = &sub.implementation {
            if let Some(ExecutorSpec::Container(c)) = spec.executors.get(label) {
                for (field, input) in c.dynamic_resources.fields() {
                    if let Some(input) = input.filter(|i| !task.parameters.contains_key(*i)) {
                        return Err(IrError::new(
                            join(&tp, "inputs.parameters"),
                            format!(
                                "the {field} of executor {label} is read from input {input:?}, which this task does not bind"
                            ),
                        ));
                    }
                }
            }
        }
    }
    check_dag_outputs(spec, comp, dag, cp)?;
    check_task_cycles(dag, &tasks_path)
}

/// Why a task name cannot become a path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TaskNameError {
    #[error("a task name cannot be empty")]
    Empty,
    #[error("task name {0:?} is not a safe path segment (\"..\" or \".\")")]
    Traversal(String),
    #[error(
        "task name {name:?} contains {found:?}; only letters, digits, '-', '_' and '.' are allowed"
    )]
    Character { name: String, found: char },
}

/// Task names become path segments (task ids, artifact URIs): letters, digits, `-`, `_`, `.`.
fn check_task_name(name: &str) -> Result<(), TaskNameError> {
    if name.is_empty() {
        return Err(TaskNameError::Empty);
    }
    if name == "." || name.contains("..") {
        return Err(TaskNameError::Traversal(name.to_string()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(TaskNameError::Character {
            name: name.to_string(),
            found,
        });
    }
    Ok(())
}

/// The component of sibling task `producer`, or an error at `path`.
fn producer_component<'a>(
    spec: &'a PipelineSpec,
    dag: &DagSpec,
    producer: &str,
    path: String,
) -> Result<&'a ComponentSpec, IrError> {
    let Some(task) = dag.tasks.get(producer) else {
        return Err(IrError::unknown(path, "task", producer, names(&dag.tasks)));
    };
    spec.components.get(&task.component).ok_or_else(|| {
        IrError::new(
            path,
            format!(
                "task {producer:?} refers to unknown component {:?}",
                task.component
            ),
        )
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Parameter,
    Artifact,
}

/// Checks that `sel` names a sibling whose component declares the output; `path` is the
/// selector's mapping, `task_field` / `key_field` its two fields.
fn check_selector(
    spec: &PipelineSpec,
    dag: &DagSpec,
    sel: &OutputSelector,
    path: &str,
    task_field: &str,
    key_field: &str,
    kind: Kind,
) -> Result<(), IrError> {
    let producer = producer_component(spec, dag, &sel.producer_task, join(path, task_field))?;
    let (outputs, what): (Vec<&str>, &str) = match kind {
        Kind::Parameter => (
            names(&producer.output_parameters).collect(),
            "output parameter",
        ),
        Kind::Artifact => (
            names(&producer.output_artifacts).collect(),
            "output artifact",
        ),
    };
    if !outputs.contains(&sel.output_key.as_str()) {
        return Err(IrError::new(
            join(path, key_field),
            format!(
                "component {} of task {:?} has no {what} {:?} (its {what}s: {})",
                producer.name,
                sel.producer_task,
                sel.output_key,
                list_names(outputs)
            ),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_task_parameters(
    spec: &PipelineSpec,
    key: Option<&String>,
    comp: &ComponentSpec,
    dag: &DagSpec,
    tname: &str,
    task: &TaskSpec,
    sub: &ComponentSpec,
    tp: &str,
    fixes: &mut Vec<Fix>,
) -> Result<(), IrError> {
    for (pname, binding) in &task.parameters {
        let pp = join(&join(tp, "inputs.parameters"), pname);
        let declared = sub.input_parameters.get(pname);
        if declared.is_none() {
            if sub.input_artifacts.contains_key(pname) {
                return Err(IrError::new(
                    pp,
                    format!(
                        "{pname:?} is an input artifact of component {}; bind it under inputs.artifacts",
                        sub.name
                    ),
                ));
            }
            if !is_extra_input(pname) {
                return Err(IrError::new(
                    pp,
                    format!(
                        "unknown component input {pname:?}: component {} has input parameters {}",
                        sub.name,
                        list_names(names(&sub.input_parameters))
                    ),
                ));
            }
        }
        let final_status = declared.is_some_and(|d| d.ptype == ParamType::TaskFinalStatus);
        match &binding.source {
            ParameterSource::Constant(value) => {
                let path = join(&pp, "runtimeValue.constant");
                if final_status {
                    return Err(IrError::new(
                        path,
                        "a TASK_FINAL_STATUS input is bound with taskFinalStatus, not a constant",
                    ));
                }
                let Some(def) = declared else { continue };
                let runtime_placeholder = matches!(value, Value::String(s) if s.contains("{{$"));
                if runtime_placeholder
                    || binding.selector.is_some()
                    || (value.is_null() && def.optional)
                {
                    continue;
                }
                let coerced = def.ptype.coerce(value).map_err(|e| {
                    IrError::new(
                        path,
                        format!(
                            "the constant does not fit the input's type {}: {e}",
                            def.ptype.ir_name()
                        ),
                    )
                })?;
                if &coerced != value {
                    fixes.push((key.cloned(), tname.to_string(), pname.clone(), coerced));
                }
            }
            ParameterSource::ComponentInput(n) => {
                let path = join(&pp, "componentInputParameter");
                // A TASK_FINAL_STATUS input can be forwarded from the enclosing DAG's own
                // TASK_FINAL_STATUS input (a pipeline used as an exit task).
                if final_status
                    && comp
                        .input_parameters
                        .get(n)
                        .is_some_and(|d| d.ptype != ParamType::TaskFinalStatus)
                {
                    return Err(IrError::new(
                        path,
                        format!("a TASK_FINAL_STATUS input is bound with taskFinalStatus or from a TASK_FINAL_STATUS input of the enclosing component; {n:?} is not one"),
                    ));
                }
                if !comp.input_parameters.contains_key(n) {
                    let what = if comp.input_artifacts.contains_key(n) {
                        format!("{n:?} is an input artifact of the enclosing component {}, not a parameter", comp.name)
                    } else {
                        format!(
                            "unknown input parameter {n:?} of the enclosing component {} (its input parameters: {})",
                            comp.name,
                            list_names(names(&comp.input_parameters))
                        )
                    };
                    return Err(IrError::new(path, what));
                }
            }
            ParameterSource::TaskOutput(sel) => {
                if final_status {
                    return Err(IrError::new(
                        pp,
                        "a TASK_FINAL_STATUS input is bound with taskFinalStatus, not a task output",
                    ));
                }
                check_selector(
                    spec,
                    dag,
                    sel,
                    &join(&pp, "taskOutputParameter"),
                    "producerTask",
                    "outputParameterKey",
                    Kind::Parameter,
                )?;
            }
            ParameterSource::TaskFinalStatus(producer) => {
                let path = join(&pp, "taskFinalStatus.producerTask");
                if declared.is_some() && !final_status {
                    return Err(IrError::new(
                        pp,
                        format!(
                            "taskFinalStatus can only bind a TASK_FINAL_STATUS input; {pname:?} is {}",
                            declared.map(|d| d.ptype.ir_name()).unwrap_or_default()
                        ),
                    ));
                }
                if !dag.tasks.contains_key(producer) {
                    return Err(IrError::unknown(path, "task", producer, names(&dag.tasks)));
                }
            }
        }
    }
    Ok(())
}

fn check_task_artifacts(
    spec: &PipelineSpec,
    comp: &ComponentSpec,
    dag: &DagSpec,
    task: &TaskSpec,
    sub: &ComponentSpec,
    tp: &str,
) -> Result<(), IrError> {
    for (aname, source) in &task.artifacts {
        let ap = join(&join(tp, "inputs.artifacts"), aname);
        if !sub.input_artifacts.contains_key(aname) && !aname.starts_with(CHANNEL_PREFIX) {
            let message = if sub.input_parameters.contains_key(aname) {
                format!(
                    "{aname:?} is an input parameter of component {}; bind it under inputs.parameters",
                    sub.name
                )
            } else {
                format!(
                    "unknown component input {aname:?}: component {} has input artifacts {}",
                    sub.name,
                    list_names(names(&sub.input_artifacts))
                )
            };
            return Err(IrError::new(ap, message));
        }
        match source {
            ArtifactSource::ComponentInput(n) => {
                if !comp.input_artifacts.contains_key(n) {
                    let what = if comp.input_parameters.contains_key(n) {
                        format!("{n:?} is an input parameter of the enclosing component {}, not an artifact", comp.name)
                    } else {
                        format!(
                            "unknown input artifact {n:?} of the enclosing component {} (its input artifacts: {})",
                            comp.name,
                            list_names(names(&comp.input_artifacts))
                        )
                    };
                    return Err(IrError::new(join(&ap, "componentInputArtifact"), what));
                }
            }
            ArtifactSource::TaskOutput(sel) => check_selector(
                spec,
                dag,
                sel,
                &join(&ap, "taskOutputArtifact"),
                "producerTask",
                "outputArtifactKey",
                Kind::Artifact,
            )?,
        }
    }
    Ok(())
}

/// The loop item of an iterator task is supplied by the loop, not bound.
fn loop_item(task: &TaskSpec) -> Option<&str> {
    task.iterator.as_ref().map(|i| i.item_input.as_str())
}

fn check_required_inputs(task: &TaskSpec, sub: &ComponentSpec, tp: &str) -> Result<(), IrError> {
    let item = loop_item(task);
    for (n, def) in &sub.input_parameters {
        if !def.optional
            && def.default.is_none()
            && !task.parameters.contains_key(n)
            && item != Some(n.as_str())
        {
            return Err(IrError::new(
                join(tp, "inputs.parameters"),
                format!(
                    "required input parameter {n:?} of component {} is not bound (it has no default and is not optional)",
                    sub.name
                ),
            ));
        }
    }
    for (n, def) in &sub.input_artifacts {
        if !def.optional && !task.artifacts.contains_key(n) && item != Some(n.as_str()) {
            return Err(IrError::new(
                join(tp, "inputs.artifacts"),
                format!(
                    "required input artifact {n:?} of component {} is not bound (it is not optional)",
                    sub.name
                ),
            ));
        }
    }
    Ok(())
}

fn check_iterator(task: &TaskSpec, sub: &ComponentSpec, tp: &str) -> Result<(), IrError> {
    let Some(it) = &task.iterator else {
        return Ok(());
    };
    match &it.items {
        IteratorItems::Raw(_) | IteratorItems::InputParameter(_) => {
            let ip = join(tp, "parameterIterator");
            if let IteratorItems::InputParameter(p) = &it.items {
                if !task.parameters.contains_key(p) {
                    return Err(IrError::new(
                        join(&ip, "items.inputParameter"),
                        format!(
                            "the loop iterates over {p:?}, which is not an input parameter of this task (its input parameters: {})",
                            list_names(names(&task.parameters))
                        ),
                    ));
                }
            }
            if !sub.input_parameters.contains_key(&it.item_input) {
                return Err(IrError::new(
                    join(&ip, "itemInput"),
                    format!(
                        "the loop item {:?} is not an input parameter of component {}",
                        it.item_input, sub.name
                    ),
                ));
            }
        }
        IteratorItems::InputArtifact(a) => {
            let ip = join(tp, "artifactIterator");
            if !task.artifacts.contains_key(a) {
                return Err(IrError::new(
                    join(&ip, "items.inputArtifact"),
                    format!(
                        "the loop iterates over {a:?}, which is not an input artifact of this task (its input artifacts: {})",
                        list_names(names(&task.artifacts))
                    ),
                ));
            }
            if !sub.input_artifacts.contains_key(&it.item_input) {
                return Err(IrError::new(
                    join(&ip, "itemInput"),
                    format!(
                        "the loop item {:?} is not an input artifact of component {}",
                        it.item_input, sub.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_dag_outputs(
    spec: &PipelineSpec,
    comp: &ComponentSpec,
    dag: &DagSpec,
    cp: &str,
) -> Result<(), IrError> {
    let outputs = join(cp, "dag.outputs");
    for (name, out) in &dag.output_parameters {
        let op = join(&join(&outputs, "parameters"), name);
        if !comp.output_parameters.contains_key(name) {
            return Err(IrError::new(
                op,
                format!(
                    "DAG output {name:?} is not declared in outputDefinitions.parameters (declared: {})",
                    list_names(names(&comp.output_parameters))
                ),
            ));
        }
        match out {
            DagOutputParameter::Single(sel) => check_selector(
                spec,
                dag,
                sel,
                &join(&op, "valueFromParameter"),
                "producerSubtask",
                "outputParameterKey",
                Kind::Parameter,
            )?,
            DagOutputParameter::OneOf(sels) => {
                for (i, sel) in sels.iter().enumerate() {
                    check_selector(
                        spec,
                        dag,
                        sel,
                        &index(&join(&op, "valueFromOneof.parameterSelectors"), i),
                        "producerSubtask",
                        "outputParameterKey",
                        Kind::Parameter,
                    )?;
                }
            }
        }
    }
    for (name, sels) in &dag.output_artifacts {
        let op = join(&join(&outputs, "artifacts"), name);
        if !comp.output_artifacts.contains_key(name) {
            return Err(IrError::new(
                op,
                format!(
                    "DAG output {name:?} is not declared in outputDefinitions.artifacts (declared: {})",
                    list_names(names(&comp.output_artifacts))
                ),
            ));
        }
        for (i, sel) in sels.iter().enumerate() {
            check_selector(
                spec,
                dag,
                sel,
                &index(&join(&op, "artifactSelectors"), i),
                "producerSubtask",
                "outputArtifactKey",
                Kind::Artifact,
            )?;
        }
    }
    for name in comp.output_parameters.keys() {
        if !dag.output_parameters.contains_key(name) {
            return Err(IrError::new(
                join(&join(cp, "outputDefinitions.parameters"), name),
                "the DAG declares this output, but dag.outputs does not say which task produces it",
            ));
        }
    }
    for name in comp.output_artifacts.keys() {
        if !dag.output_artifacts.contains_key(name) {
            return Err(IrError::new(
                join(&join(cp, "outputDefinitions.artifacts"), name),
                "the DAG declares this output, but dag.outputs does not say which task produces it",
            ));
        }
    }
    Ok(())
}

fn check_task_cycles(dag: &DagSpec, tasks_path: &str) -> Result<(), IrError> {
    let graph: BTreeMap<&str, Vec<&str>> = dag
        .tasks
        .iter()
        .map(|(name, task)| (name.as_str(), task.upstream().into_iter().collect()))
        .collect();
    match find_cycle(&graph) {
        Some(cycle) => Err(IrError::new(
            tasks_path,
            format!(
                "dependency cycle: {} (each task waits for the next)",
                cycle.join(" -> ")
            ),
        )),
        None => Ok(()),
    }
}

/// A DAG component must not contain itself, directly or through other DAGs.
fn check_recursion(spec: &PipelineSpec) -> Result<(), IrError> {
    let graph: BTreeMap<&str, Vec<&str>> = spec
        .components
        .iter()
        .map(|(key, comp)| {
            let children = match &comp.implementation {
                Implementation::Dag(dag) => dag
                    .tasks
                    .values()
                    .map(|t| t.component.as_str())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                Implementation::Executor(_) => Vec::new(),
            };
            (key.as_str(), children)
        })
        .collect();
    match find_cycle(&graph) {
        Some(cycle) => Err(IrError::new(
            component_path(cycle.first().copied()),
            format!(
                "component recursion: {} (a DAG cannot contain itself)",
                cycle.join(" -> ")
            ),
        )),
        None => Ok(()),
    }
}

/// A cycle of `graph` (node → successors) as `[a, b, a]`, or `None`. Iterative, so a long chain
/// cannot exhaust the stack; successors that are not nodes are ignored.
fn find_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in graph.keys() {
        if marks.contains_key(start) {
            continue;
        }
        marks.insert(start, Mark::OnPath);
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some(top) = path.last_mut() {
            let node = top.0;
            let next = graph.get(node).and_then(|succ| succ.get(top.1)).copied();
            top.1 += 1;
            match next {
                Some(succ) if graph.contains_key(succ) => match marks.get(succ) {
                    None => {
                        marks.insert(succ, Mark::OnPath);
                        path.push((succ, 0));
                    }
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|(n, _)| *n == succ).unwrap_or(0);
                        let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                        cycle.push(succ);
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                },
                Some(_) => {}
                None => {
                    marks.insert(node, Mark::Done);
                    path.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
