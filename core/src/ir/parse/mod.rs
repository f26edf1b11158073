//! KFP IR YAML → [`PipelineSpec`]: reading the document.
//!
//! The YAML is first loaded into generic values (by serde-saphyr, within budgets: the file
//! arrives over gRPC from anyone who may submit), then walked by hand so that every error names
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

use serde_json::Value;

use self::dag::parse_component;
use self::executor::parse_executor;
use self::walk::Obj;
use super::error::{kind_of, IrError};
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

/// The non-empty YAML documents of a pipeline file as JSON values, read within the same
/// budgets as [`parse_pipeline`] (what the KFP API returns as a version's `pipeline_spec`).
pub fn pipeline_documents(yaml: &str) -> Result<Vec<Value>, IrError> {
    load_documents(yaml)
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

/// Largest pipeline file read, whatever the configuration: a submission of it still fits in
/// a client request (16 MiB) with room for its parameters. Coordinators refuse smaller ones
/// first (`--max-pipeline-bytes`, 4 MiB by default, some 80 times the largest pipeline in the
/// KFP conformance corpus).
pub(crate) const MAX_FILE_BYTES: usize = 12 * 1024 * 1024;

/// Deepest nesting of mappings and lists. The corpus nests 14 deep at most; building a value
/// recurses once per level, so a document of 10,000 `[` must stop early, not overflow the
/// stack.
const MAX_DEPTH: usize = 64;

/// Most parser events that aliases may replay in a file. The KFP compiler writes no aliases; a
/// hand-written file that shares a few blocks through anchors replays as many events as those
/// blocks hold, while a billion-laughs bomb replays billions.
const MAX_ALIAS_REPLAY_EVENTS: usize = 100_000;

/// How the pipeline YAML is read: budgets against hostile input, and the YAML 1.2 core
/// schema for untyped values, so that `yes`, `n`, `0755` and `1_000` stay strings, as they
/// did under serde_norway.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            // The scanner reads flow collections (`[[[`) ahead of the depth count: cap them
            // at the same depth.
            flow_nesting_limit: MAX_DEPTH,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY_EVENTS,
        },
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // Messages travel back to the submitter as one line; a rendered snippet spans several.
        with_snippet: false,
    }
}

/// Every non-empty YAML document of the file, as JSON values. Merge keys (`<<`) are
/// expanded, duplicate keys and non-finite numbers refused.
fn load_documents(text: &str) -> Result<Vec<Value>, IrError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(IrError::document(format!(
            "the file holds {} bytes, over the size limit of {MAX_FILE_BYTES} bytes (12 MiB)",
            text.len()
        )));
    }
    serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options())
        .map_err(|e| yaml_error(&e))
}

/// A YAML error as a document error. A breached budget names the limit in Gantry's terms;
/// the library's own wording for it is a debug dump of its counters.
fn yaml_error(e: &serde_saphyr::Error) -> IrError {
    use serde_saphyr::budget::BudgetBreach as Breach;
    use serde_saphyr::granit_parser::ErrorKind;
    use serde_saphyr::{Error as E, ExternalMessageSource};

    let mut cause = e;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = cause {
        cause = error;
    }
    let too_deep = match cause {
        E::Budget {
            breach: Breach::Depth { .. },
            ..
        } => true,
        E::ExternalMessage { source, .. } => matches!(
            &**source,
            ExternalMessageSource::Parser(scan)
                if *scan.kind() == ErrorKind::RecursionLimitExceeded
        ),
        _ => false,
    };
    let at = match cause.location() {
        Some(l) if l.line() > 0 => format!(" (line {}, column {})", l.line(), l.column()),
        _ => String::new(),
    };
    let limit = match cause {
        _ if too_deep => {
            format!("mappings and lists nest deeper than {MAX_DEPTH} levels (the depth limit)")
        }
        E::AliasReplayLimitExceeded { .. } => format!(
            "aliases expand to more than {MAX_ALIAS_REPLAY_EVENTS} parser events (the alias limit)"
        ),
        // Limits left at the library's defaults: its wording names them, with the position.
        E::AliasExpansionLimitExceeded { .. } | E::AliasReplayStackDepthExceeded { .. } => {
            return IrError::document(format!("YAML refused: {cause}"));
        }
        E::Budget { breach, .. } => format!("the document is over the parser's budget: {breach:?}"),
        // The library's wording advises its own options, which mean nothing to a submitter.
        E::DuplicateMappingKey { key: Some(key), .. } => {
            return IrError::document(format!("malformed YAML: duplicate key {key:?}{at}"));
        }
        _ => return IrError::document(format!("malformed YAML: {e}")),
    };
    IrError::document(format!("YAML refused: {limit}{at}"))
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
