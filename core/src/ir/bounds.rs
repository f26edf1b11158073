//! Bounds on what one submission may ask of the cluster: the pipeline document's size, the
//! tasks a run may create (loops multiply: a loop of 1,000 inside a loop of 1,000 is a million
//! tasks), and the depth and size of JSON values. Each is checked before a run is created, so
//! a run that could exhaust every replica's memory is refused with the limit named, and each
//! comes from the coordinator's configuration ([`SubmitLimits`]).
//!
//! The task count is static: a loop's width counts when the IR holds its items or they come
//! from a known parameter, and 1 otherwise. The engine checks again when each loop starts,
//! with its items in hand (`RunLimits::max_tasks`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ComponentSpec, Implementation, IteratorItems, ParameterSource, PipelineSpec};

/// The limits a coordinator applies to submissions. Every field has a flag of the same name
/// (`--max-pipeline-bytes`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitLimits {
    /// The pipeline document, in bytes.
    pub max_pipeline_bytes: usize,
    /// Tasks one run may create, loop iterations and the DAGs around them included.
    pub max_tasks_per_run: u64,
    /// How deep lists and objects may nest in a parameter or an output value.
    pub max_json_depth: usize,
    /// One parameter value, as JSON, in bytes.
    pub max_parameter_bytes: usize,
    /// One CEL expression (a trigger condition or a parameter selector), in bytes.
    pub max_cel_bytes: usize,
    /// The evaluation budget each CEL expression of a run gets (recorded in the run).
    pub cel_evaluation_budget: u64,
}

/// The smallest evaluation budget a configuration may set: what the SDK's own conditions
/// need, with room.
pub const MIN_CEL_BUDGET: u64 = 1_000;
/// The largest: about a second of evaluation on every replica.
pub const MAX_CEL_BUDGET: u64 = 1 << 30;

/// The largest pipeline document any configuration accepts: what the parser reads at most.
pub const PIPELINE_BYTES_CEILING: usize = super::parse::MAX_FILE_BYTES;

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_pipeline_bytes: 4 << 20,
            max_tasks_per_run: 100_000,
            max_json_depth: 32,
            max_parameter_bytes: 256 << 10,
            max_cel_bytes: super::cel::MAX_SOURCE_BYTES,
            cel_evaluation_budget: super::cel::DEFAULT_BUDGET,
        }
    }
}

impl SubmitLimits {
    /// Refuses settings that would turn every submission away or exceed what the parser and
    /// the wire accept.
    pub fn check(&self) -> Result<(), String> {
        if self.max_pipeline_bytes == 0 || self.max_pipeline_bytes > PIPELINE_BYTES_CEILING {
            return Err(format!(
                "--max-pipeline-bytes must be between 1 and {PIPELINE_BYTES_CEILING}, not {}",
                self.max_pipeline_bytes
            ));
        }
        if self.max_tasks_per_run < 2 {
            return Err(format!(
                "--max-tasks-per-run must be at least 2 (the root DAG and one step), not {}",
                self.max_tasks_per_run
            ));
        }
        if !(1..=128).contains(&self.max_json_depth) {
            return Err(format!(
                "--max-json-depth must be between 1 and 128, not {}",
                self.max_json_depth
            ));
        }
        if self.max_parameter_bytes == 0 {
            return Err("--max-parameter-bytes must be at least 1".to_string());
        }
        let cel_ceiling = super::cel::MAX_SOURCE_BYTES;
        if !(1..=cel_ceiling).contains(&self.max_cel_bytes) {
            return Err(format!(
                "--max-cel-bytes must be between 1 and {cel_ceiling}, not {}",
                self.max_cel_bytes
            ));
        }
        if !(MIN_CEL_BUDGET..=MAX_CEL_BUDGET).contains(&self.cel_evaluation_budget) {
            return Err(format!(
                "--cel-evaluation-budget must be between {MIN_CEL_BUDGET} and {MAX_CEL_BUDGET}, \
                 not {}",
                self.cel_evaluation_budget
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    #[error(
        "the pipeline document holds {bytes} bytes, over the limit of {limit} bytes \
         (--max-pipeline-bytes)"
    )]
    PipelineTooLarge { bytes: usize, limit: usize },
    #[error(
        "the run would create at least {count} tasks{}, over the limit of {limit} tasks per \
         run (--max-tasks-per-run)",
        widths_text(.widths)
    )]
    TooManyTasks {
        /// Counting stops once it is over the limit: a lower bound.
        count: u64,
        limit: u64,
        /// The loops that weigh most in the count, outermost first: task name and width.
        widths: Vec<(String, u64)>,
    },
    #[error("{what} nests {depth} levels deep, over the limit of {limit} (--max-json-depth)")]
    JsonTooDeep {
        what: String,
        depth: usize,
        limit: usize,
    },
    #[error(
        "parameter {name:?} holds {bytes} bytes of JSON, over the limit of {limit} bytes \
         (--max-parameter-bytes); large data belongs in an artifact"
    )]
    ParameterTooLarge {
        name: String,
        bytes: usize,
        limit: usize,
    },
    #[error("{what} is {bytes} bytes of CEL, over the limit of {limit} bytes (--max-cel-bytes)")]
    CelTooLong {
        what: String,
        bytes: usize,
        limit: usize,
    },
}

fn widths_text(widths: &[(String, u64)]) -> String {
    if widths.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = widths
        .iter()
        .map(|(task, n)| format!("{task:?} × {n}"))
        .collect();
    format!(" (loop {})", parts.join(" around "))
}

/// Refuses a pipeline document over the configured size.
pub fn check_pipeline_size(bytes: usize, limits: &SubmitLimits) -> Result<(), BoundError> {
    if bytes > limits.max_pipeline_bytes {
        return Err(BoundError::PipelineTooLarge {
            bytes,
            limit: limits.max_pipeline_bytes,
        });
    }
    Ok(())
}

/// How deep `v` nests: a scalar is 0, `[1]` is 1, `{"a": [1]}` is 2. Iterative, so a value
/// deeper than the stack allows is measured, not overflowed on.
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// Refuses a value nested deeper than `limit`; `what` names it in the error.
pub fn check_json_depth(what: &str, v: &Value, limit: usize) -> Result<(), BoundError> {
    let depth = json_depth(v);
    if depth > limit {
        return Err(BoundError::JsonTooDeep {
            what: what.to_string(),
            depth,
            limit,
        });
    }
    Ok(())
}

/// Checks a run before it is created: its parameters' depth and size, and the tasks the
/// pipeline would create with them.
pub fn check_submission(
    pipeline: &PipelineSpec,
    parameters: &BTreeMap<String, Value>,
    limits: &SubmitLimits,
) -> Result<(), BoundError> {
    for (name, v) in parameters {
        check_json_depth(&format!("parameter {name:?}"), v, limits.max_json_depth)?;
        let bytes = serde_json::to_string(v).map(|s| s.len()).unwrap_or(0);
        if bytes > limits.max_parameter_bytes {
            return Err(BoundError::ParameterTooLarge {
                name: name.clone(),
                bytes,
                limit: limits.max_parameter_bytes,
            });
        }
    }
    check_cel_sizes(pipeline, limits.max_cel_bytes)?;
    let counter = Counter::new(pipeline, limits.max_tasks_per_run);
    let (inside, widths) = counter.dag(&pipeline.root, parameters, 0);
    // The root DAG is a task of its own.
    let count = 1u64.saturating_add(inside);
    if count > limits.max_tasks_per_run {
        return Err(BoundError::TooManyTasks {
            count,
            limit: limits.max_tasks_per_run,
            widths,
        });
    }
    Ok(())
}

/// Refuses a trigger condition or parameter selector longer than `limit` bytes.
fn check_cel_sizes(pipeline: &PipelineSpec, limit: usize) -> Result<(), BoundError> {
    for comp in std::iter::once(&pipeline.root).chain(pipeline.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for task in dag.tasks.values() {
            let selectors = task.parameters.iter().filter_map(|(input, b)| {
                b.selector
                    .as_deref()
                    .map(|s| (format!("the selector of input {input:?}"), s))
            });
            let condition = task
                .condition
                .as_deref()
                .map(|c| ("the condition".to_string(), c));
            for (what, expr) in condition.into_iter().chain(selectors) {
                if expr.len() > limit {
                    return Err(BoundError::CelTooLong {
                        what: format!("{what} of task {:?} in {}", task.name, comp.name),
                        bytes: expr.len(),
                        limit,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The tasks one iteration of a loop over `component` creates: the iteration's DAG task and
/// everything in its body, with the loop's resolved inputs `inputs`. At most `cap + 1` (the
/// count stops once it is over the cap).
pub fn iteration_task_count(
    pipeline: &PipelineSpec,
    component: &str,
    inputs: &BTreeMap<String, Value>,
    cap: u64,
) -> u64 {
    match lookup(pipeline, component) {
        Some(c) => 1u64.saturating_add(Counter::new(pipeline, cap).dag(c, inputs, 0).0),
        None => 1,
    }
}

/// How many items a loop's list holds, when it is known: a JSON list or its text.
pub fn list_len(v: &Value) -> Option<u64> {
    match v {
        Value::Array(items) => Some(items.len() as u64),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => Some(items.len() as u64),
            _ => None,
        },
        _ => None,
    }
}

fn lookup<'a>(pipeline: &'a PipelineSpec, key: &str) -> Option<&'a ComponentSpec> {
    if key == "root" {
        Some(&pipeline.root)
    } else {
        pipeline.component(key)
    }
}

/// Components nest no deeper than this in a count; validation refuses recursive components,
/// and this keeps a hostile nesting from recursing without end.
const MAX_NESTING: usize = 64;

/// Counts tasks, stopping as soon as the count is over `cap`: every task visited adds at
/// least one, so the walk costs at most `cap` visits however the pipeline nests.
struct Counter<'a> {
    pipeline: &'a PipelineSpec,
    cap: u64,
}

/// A count and the chain of loops (name, width), outermost first, that weighs most in it.
type Count = (u64, Vec<(String, u64)>);

impl<'a> Counter<'a> {
    fn new(pipeline: &'a PipelineSpec, cap: u64) -> Self {
        Counter { pipeline, cap }
    }

    /// The tasks inside DAG component `comp` whose known input values are `env`.
    fn dag(&self, comp: &ComponentSpec, env: &BTreeMap<String, Value>, depth: usize) -> Count {
        let Implementation::Dag(dag) = &comp.implementation else {
            return (0, Vec::new());
        };
        if depth > MAX_NESTING {
            return (0, Vec::new());
        }
        let mut total: u64 = 0;
        let mut heaviest: (u64, Vec<(String, u64)>) = (0, Vec::new());
        for task in dag.tasks.values() {
            // The values this task's component sees, where they are known now.
            let mut inner = BTreeMap::new();
            for (name, binding) in &task.parameters {
                if binding.selector.is_some() {
                    continue;
                }
                let known = match &binding.source {
                    ParameterSource::Constant(v) => Some(v.clone()),
                    ParameterSource::ComponentInput(p) => env.get(p).cloned(),
                    ParameterSource::TaskOutput(_) | ParameterSource::TaskFinalStatus(_) => None,
                };
                if let Some(v) = known {
                    inner.insert(name.clone(), v);
                }
            }
            let (body, mut chain) = match lookup(self.pipeline, &task.component) {
                Some(c) => self.dag(c, &inner, depth + 1),
                None => (0, Vec::new()),
            };
            let cost = match &task.iterator {
                None => 1u64.saturating_add(body),
                Some(it) => {
                    let width = match &it.items {
                        IteratorItems::Raw(v) => list_len(v),
                        IteratorItems::InputParameter(p) => inner.get(p).and_then(list_len),
                        IteratorItems::InputArtifact(_) => None,
                    }
                    .unwrap_or(1);
                    if width > 1 {
                        chain.insert(0, (task.name.clone(), width));
                    }
                    // The loop task, then per iteration its DAG task and the body.
                    1u64.saturating_add(width.saturating_mul(1u64.saturating_add(body)))
                }
            };
            if !chain.is_empty() && cost > heaviest.0 {
                heaviest = (cost, chain);
            }
            total = total.saturating_add(cost);
            if total > self.cap {
                break;
            }
        }
        (total, heaviest.1)
    }
}

#[cfg(test)]
mod tests;
