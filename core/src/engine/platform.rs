//! The Kubernetes platform spec (`platforms.kubernetes`, written by `kfp-kubernetes`): what
//! Gantry honours, what it may ignore, and what it refuses because the step would run without
//! something it counts on.
//!
//! - honoured: `activeDeadlineSeconds` (kfp-kubernetes `set_timeout`) becomes the task's timeout;
//!   `nodeSelector` labels (`add_node_selector`) must all be labels of the agent that runs the
//!   step; `tolerations` (`add_toleration`) let the step onto agents with those taints;
//! - ignored, as they change nothing a step computes: `podMetadata` (pod labels and
//!   annotations), `imagePullSecret` and `imagePullPolicy` (images are local to the agents);
//! - refused, naming the executor and the feature: volumes (`pvcMount`, `secretAsVolume`,
//!   `configMapAsVolume`, `emptyDirMounts`, `genericEphemeralVolume`), environment taken from
//!   the cluster (`secretAsEnv`, `configMapAsEnv`, `fieldPathAsEnv`), `nodeAffinity`, shared
//!   memory, the pipeline workspace (`pipelineConfig.workspace`), and node selectors or
//!   tolerations taken from a pipeline parameter at run time (`nodeSelectorJson`,
//!   `tolerationJson`).

use std::collections::BTreeMap;

use serde_json::Value;

use gantry_model::{TaintEffect, Toleration};

use crate::ir::{Implementation, PipelineSpec};

const IGNORED: &[&str] = &["podMetadata", "imagePullSecret", "imagePullPolicy"];
const TIMEOUT: &str = "activeDeadlineSeconds";
const NODE_SELECTOR: &str = "nodeSelector";
const TOLERATIONS: &str = "tolerations";

fn what(feature: &str) -> &'static str {
    match feature {
        "pvcMount" => "a Kubernetes persistent volume claim mount",
        "secretAsVolume" => "a Kubernetes secret mounted as a volume",
        "secretAsEnv" => "environment variables from a Kubernetes secret",
        "configMapAsVolume" => "a Kubernetes config map mounted as a volume",
        "configMapAsEnv" => "environment variables from a Kubernetes config map",
        "fieldPathAsEnv" => "environment variables from Kubernetes pod fields",
        "emptyDirMounts" => "a Kubernetes emptyDir volume",
        "genericEphemeralVolume" => "a Kubernetes ephemeral volume",
        "nodeSelector" => "a Kubernetes node selector",
        "nodeAffinity" => "Kubernetes node affinity",
        "enabledSharedMemory" => "a Kubernetes shared-memory volume",
        _ => "a Kubernetes-only setting",
    }
}

fn executors(spec: &PipelineSpec) -> Option<&serde_json::Map<String, Value>> {
    spec.platform_spec
        .as_ref()?
        .pointer("/platforms/kubernetes/deploymentSpec/executors")?
        .as_object()
}

/// Why the platform spec cannot be honoured on Gantry's agents, one line per feature used.
pub fn refusals(spec: &PipelineSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(execs) = executors(spec) {
        for (label, settings) in execs {
            let Some(settings) = settings.as_object() else {
                continue;
            };
            if let Err(e) = placement_of(settings) {
                out.push(format!("executor {label:?}: {e}"));
            }
            for feature in settings.keys() {
                if IGNORED.contains(&feature.as_str())
                    || [TIMEOUT, NODE_SELECTOR, TOLERATIONS].contains(&feature.as_str())
                {
                    continue;
                }
                out.push(format!(
                    "executor {label:?} uses {feature} ({}), which has no equivalent on Gantry agents",
                    what(feature)
                ));
            }
        }
    }
    let workspace = spec
        .platform_spec
        .as_ref()
        .and_then(|p| p.pointer("/platforms/kubernetes/pipelineConfig/workspace"));
    if workspace.is_some() {
        out.push(
            "the pipeline uses a workspace (platforms.kubernetes.pipelineConfig.workspace, a shared \
             Kubernetes volume), which has no equivalent on Gantry agents"
                .to_string(),
        );
    }
    out
}

/// The agent labels and taint tolerations an executor's platform settings ask for.
fn placement_of(
    settings: &serde_json::Map<String, Value>,
) -> Result<(BTreeMap<String, String>, Vec<Toleration>), String> {
    let mut labels = BTreeMap::new();
    if let Some(sel) = settings.get(NODE_SELECTOR) {
        if sel.get("nodeSelectorJson").is_some() {
            return Err(
                "its node selector comes from a pipeline parameter at run time \
                 (nodeSelectorJson, a Kubernetes node selector), which Gantry does not support; \
                 give the labels in the pipeline"
                    .into(),
            );
        }
        if let Some(map) = sel.get("labels").and_then(Value::as_object) {
            for (k, v) in map {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("node selector label {k:?} is not a string: {v}"))?;
                labels.insert(k.clone(), v.to_string());
            }
        }
    }
    let mut tolerations = Vec::new();
    for t in settings
        .get(TOLERATIONS)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if t.get("tolerationJson").is_some() {
            return Err(
                "its tolerations come from a pipeline parameter at run time (tolerationJson, \
                 Kubernetes tolerations), which Gantry does not support; give them in the \
                 pipeline"
                    .into(),
            );
        }
        let text = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let exists = match text("operator").as_str() {
            "" | "Equal" => false,
            "Exists" => true,
            other => {
                return Err(format!(
                    "toleration operator {other:?} is not Equal or Exists"
                ))
            }
        };
        let effect = match text("effect").as_str() {
            "" => None,
            e => Some(
                TaintEffect::parse(e)
                    .ok_or_else(|| format!("toleration effect {e:?} is unknown"))?,
            ),
        };
        tolerations.push(Toleration {
            key: text("key"),
            exists,
            value: text("value"),
            effect,
        });
    }
    Ok((labels, tolerations))
}

/// The node selector and tolerations of the tasks running executor `label`.
pub fn executor_placement(
    spec: &PipelineSpec,
    label: &str,
) -> (BTreeMap<String, String>, Vec<Toleration>) {
    executors(spec)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
        .and_then(|s| placement_of(s).ok())
        .unwrap_or_default()
}

/// Task timeouts (ms) by IR task name from `activeDeadlineSeconds`, for every task that runs
/// an executor carrying one.
pub fn task_timeouts(spec: &PipelineSpec) -> BTreeMap<String, i64> {
    let mut by_executor = BTreeMap::new();
    if let Some(execs) = executors(spec) {
        for (label, settings) in execs {
            let secs = settings.get(TIMEOUT).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
            if let Some(secs) = secs.filter(|s| *s > 0) {
                by_executor.insert(label.clone(), secs.saturating_mul(1000));
            }
        }
    }
    let mut out = BTreeMap::new();
    if by_executor.is_empty() {
        return out;
    }
    for comp in std::iter::once(&spec.root).chain(spec.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            let label = spec
                .component(&t.component)
                .and_then(|c| match &c.implementation {
                    Implementation::Executor(l) => Some(l),
                    Implementation::Dag(_) => None,
                });
            if let Some(ms) = label.and_then(|l| by_executor.get(l)) {
                out.insert(t.name.clone(), *ms);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_pipeline;

    const PIPELINE: &str = include_str!("testdata/linear.yaml");

    fn with_platform(platform: &str) -> PipelineSpec {
        parse_pipeline(&format!("{PIPELINE}---\n{platform}")).unwrap()
    }

    #[test]
    fn kubernetes_only_features_are_refused_by_name_and_harmless_ones_ignored() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          secretAsEnv:\n          - secretName: s\n          podMetadata:\n            labels: {a: b}\n",
        );
        let r = refusals(&spec);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("exec-make-data") && r[0].contains("secretAsEnv"),
            "{r:?}"
        );
        let err = crate::engine::check_supported(&spec).unwrap_err();
        assert!(err.contains("Kubernetes secret"), "{err}");
        let ws = with_platform(
            "platforms:\n  kubernetes:\n    pipelineConfig:\n      workspace:\n        size: 1Gi\n",
        );
        assert!(refusals(&ws)[0].contains("workspace"));
    }

    #[test]
    fn node_selectors_and_tolerations_become_placement_constraints() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          nodeSelector:\n            labels: {zone: a, gpu.model: h100}\n          tolerations:\n          - key: nvidia.com/gpu\n            operator: Exists\n            effect: NoSchedule\n          - key: team\n            value: ml\n",
        );
        assert!(refusals(&spec).is_empty(), "{:?}", refusals(&spec));
        let (labels, tolerations) = executor_placement(&spec, "exec-make-data");
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(labels.get("gpu.model").map(String::as_str), Some("h100"));
        assert_eq!(tolerations.len(), 2);
        assert!(tolerations[0].exists);
        assert_eq!(tolerations[0].effect, Some(TaintEffect::NoSchedule));
        assert_eq!(
            (tolerations[1].key.as_str(), tolerations[1].value.as_str()),
            ("team", "ml")
        );

        let dynamic = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          nodeSelector:\n            nodeSelectorJson:\n              componentInputParameter: sel\n",
        );
        let r = refusals(&dynamic);
        assert!(r.len() == 1 && r[0].contains("nodeSelectorJson"), "{r:?}");
        let bad = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          tolerations:\n          - key: a\n            operator: Lt\n",
        );
        assert!(
            refusals(&bad)[0].contains("operator \"Lt\""),
            "{:?}",
            refusals(&bad)
        );
    }

    #[test]
    fn active_deadline_seconds_becomes_the_timeout_of_the_tasks_running_the_executor() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          activeDeadlineSeconds: '30'\n",
        );
        assert!(refusals(&spec).is_empty());
        assert_eq!(
            task_timeouts(&spec),
            BTreeMap::from([("make-data".to_string(), 30_000)])
        );
        assert!(task_timeouts(&parse_pipeline(PIPELINE).unwrap()).is_empty());
    }
}
