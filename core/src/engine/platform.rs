//! The Kubernetes platform spec (`platforms.kubernetes`, written by `kfp-kubernetes`): what
//! Gantry honours, what it may ignore, and what it refuses because the step would run without
//! something it counts on.
//!
//! - honoured: `activeDeadlineSeconds` (kfp-kubernetes `set_timeout`) becomes the task's timeout;
//!   `nodeSelector` labels (`add_node_selector`) must all be labels of the agent that runs the
//!   step; `tolerations` (`add_toleration`) let the step onto agents with those taints;
//!   `secretAsEnv` (`use_secret_as_env`) becomes references (secret, key, variable) the agent
//!   resolves from its secret store, and `pvcMount` (`mount_pvc`) a mount of the agent volume
//!   of that name; both add the label the agent advertises for the secret or volume
//!   ([`gantry_model::secret_label`], [`gantry_model::volume_label`]) to the node selector, so
//!   the step goes only where they exist. Secret values never enter the spec or the run state;
//! - ignored, as they change nothing a step computes: `podMetadata` (pod labels and
//!   annotations), `imagePullSecret` and `imagePullPolicy` (images are local to the agents);
//! - refused, naming the executor and the feature: other volumes (`secretAsVolume`,
//!   `configMapAsVolume`, `emptyDirMounts`, `genericEphemeralVolume`), environment taken from
//!   the cluster (`configMapAsEnv`, `fieldPathAsEnv`), `nodeAffinity`, shared memory, the
//!   pipeline workspace (`pipelineConfig.workspace`), claims the pipeline creates or deletes
//!   (`CreatePVC`, `DeletePVC`), and node selectors, tolerations, secret names or claim names
//!   taken from a pipeline parameter or a task output at run time (`nodeSelectorJson`,
//!   `tolerationJson`, `secretNameParameter`, `pvcNameParameter`).

use std::collections::BTreeMap;

use serde_json::Value;

use gantry_model::{
    secret_label, validate_resource_name, validate_secret_key, volume_label, NameError, SecretEnv,
    TaintEffect, Toleration, VolumeMount, RESOURCE_LABEL_VALUE,
};

use crate::ir::{ExecutorSpec, Implementation, PipelineSpec};

const IGNORED: &[&str] = &["podMetadata", "imagePullSecret", "imagePullPolicy"];
const TIMEOUT: &str = "activeDeadlineSeconds";
const NODE_SELECTOR: &str = "nodeSelector";
const TOLERATIONS: &str = "tolerations";
const SECRET_AS_ENV: &str = "secretAsEnv";
const PVC_MOUNT: &str = "pvcMount";
/// Images kfp-kubernetes gives the executors of `CreatePVC` and `DeletePVC`: Kubeflow's
/// backend does the work itself instead of running them.
const PVC_STUBS: &[(&str, &str)] = &[
    ("argostub/createpvc", "CreatePVC"),
    ("argostub/deletepvc", "DeletePVC"),
];

/// Why an executor's Kubernetes settings cannot be honoured (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error(
        "its node selector comes from a pipeline parameter at run time (nodeSelectorJson, a \
         Kubernetes node selector), which Gantry does not support; give the labels in the \
         pipeline"
    )]
    RuntimeNodeSelector,
    #[error("node selector label {key:?} is not a string: {value}")]
    LabelNotString { key: String, value: Value },
    #[error(
        "its tolerations come from a pipeline parameter at run time (tolerationJson, \
         Kubernetes tolerations), which Gantry does not support; give them in the pipeline"
    )]
    RuntimeTolerations,
    #[error("toleration operator {0:?} is not Equal or Exists")]
    TolerationOperator(String),
    #[error("toleration effect {0:?} is unknown")]
    TolerationEffect(String),
    #[error("{field} is not a list: {value}")]
    NotAList { field: String, value: Value },
    /// A secret or claim name given as a constant that is not a string.
    #[error("{param_field}: the {what} {value} is not a string")]
    NameNotString {
        param_field: String,
        what: &'static str,
        value: Value,
    },
    /// A secret or claim name taken from `from` (a parameter, a task output) at run time.
    #[error(
        "its {what} comes from {from} at run time ({param_field}), which Gantry does not \
         support; name it in the pipeline"
    )]
    RuntimeName {
        what: &'static str,
        from: &'static str,
        param_field: String,
    },
    #[error("an entry gives no {what} ({param_field} or {legacy})")]
    NoName {
        what: &'static str,
        param_field: String,
        legacy: String,
    },
    #[error("environment variable name {0:?} is empty or holds '=' or a control character")]
    EnvName(String),
    #[error("mount path {0:?} must be an absolute path below / without '..'")]
    MountPath(String),
    #[error("secret name {secret:?} {error}")]
    SecretName { secret: String, error: NameError },
    #[error("keyToEnv of secret {secret:?} is not a list: {value}")]
    KeyToEnvNotAList { secret: String, value: Value },
    #[error("an entry of keyToEnv of secret {secret:?} has no {field}")]
    KeyToEnvField { secret: String, field: String },
    #[error("key {key:?} of secret {secret:?} {error}")]
    SecretKey {
        key: String,
        secret: String,
        error: NameError,
    },
    #[error("claim name {claim:?} {error}")]
    ClaimName { claim: String, error: NameError },
    #[error("the mount of {0:?} has no mountPath")]
    NoMountPath(String),
    #[error("subPath {sub_path:?} of {volume:?} must be relative, without '..'")]
    SubPath { sub_path: String, volume: String },
    #[error("two volumes are mounted at {0:?}")]
    MountPathTaken(String),
    /// A problem with one setting (`secretAsEnv`, `pvcMount`) of an executor.
    #[error("{feature}: {error}")]
    InSetting {
        feature: &'static str,
        error: Box<PlatformError>,
    },
    /// A problem with the settings of executor `label`.
    #[error("executor {label:?}: {error}")]
    InExecutor {
        label: String,
        error: Box<PlatformError>,
    },
}

impl PlatformError {
    /// This error, as a problem of setting `feature`.
    fn in_setting(feature: &'static str) -> impl Fn(PlatformError) -> PlatformError {
        move |e| PlatformError::InSetting {
            feature,
            error: Box::new(e),
        }
    }

    /// This error, as a problem of executor `label`'s settings.
    fn in_executor(label: &str) -> impl Fn(PlatformError) -> PlatformError + '_ {
        move |e| PlatformError::InExecutor {
            label: label.to_string(),
            error: Box::new(e),
        }
    }
}

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
                out.push(PlatformError::in_executor(label)(e).to_string());
            }
            if let Err(e) = needs_of(settings) {
                out.push(PlatformError::in_executor(label)(e).to_string());
            }
            for feature in settings.keys() {
                if IGNORED.contains(&feature.as_str())
                    || [
                        TIMEOUT,
                        NODE_SELECTOR,
                        TOLERATIONS,
                        SECRET_AS_ENV,
                        PVC_MOUNT,
                    ]
                    .contains(&feature.as_str())
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
    for (label, exec) in &spec.executors {
        let ExecutorSpec::Container(c) = exec else {
            continue;
        };
        let image = c.image.split(':').next().unwrap_or("");
        if let Some((_, what)) = PVC_STUBS.iter().find(|(stub, _)| *stub == image) {
            out.push(format!(
                "executor {label:?} is kfp-kubernetes {what} (it creates or deletes a Kubernetes \
                 persistent volume claim), which Gantry agents cannot do; give agents a host \
                 directory with --volume NAME=HOST_PATH and mount it by name with mount_pvc"
            ));
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
) -> Result<(BTreeMap<String, String>, Vec<Toleration>), PlatformError> {
    let mut labels = BTreeMap::new();
    if let Some(sel) = settings.get(NODE_SELECTOR) {
        if sel.get("nodeSelectorJson").is_some() {
            return Err(PlatformError::RuntimeNodeSelector);
        }
        if let Some(map) = sel.get("labels").and_then(Value::as_object) {
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| PlatformError::LabelNotString {
                    key: k.clone(),
                    value: v.clone(),
                })?;
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
            return Err(PlatformError::RuntimeTolerations);
        }
        let text = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let exists = match text("operator").as_str() {
            "" | "Equal" => false,
            "Exists" => true,
            other => return Err(PlatformError::TolerationOperator(other.to_string())),
        };
        let effect = match text("effect").as_str() {
            "" => None,
            e => Some(
                TaintEffect::parse(e)
                    .ok_or_else(|| PlatformError::TolerationEffect(e.to_string()))?,
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
///
/// The selector also names the agent label of every secret (unless optional) and volume the
/// executor needs, so that only agents holding them qualify and the scheduler's reasons
/// (`lacks label secret.gantry.dev/…`) say what is missing.
pub fn executor_placement(
    spec: &PipelineSpec,
    label: &str,
) -> (BTreeMap<String, String>, Vec<Toleration>) {
    let Some(settings) = executors(spec)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
    else {
        return Default::default();
    };
    let (mut labels, tolerations) = placement_of(settings).unwrap_or_default();
    if let Ok(needs) = needs_of(settings) {
        let present = || RESOURCE_LABEL_VALUE.to_string();
        for s in needs.secret_env.iter().filter(|s| !s.optional) {
            labels.insert(secret_label(&s.secret), present());
        }
        for v in &needs.volumes {
            labels.insert(volume_label(&v.volume), present());
        }
    }
    (labels, tolerations)
}

/// What the steps of an executor need from the agent that runs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostNeeds {
    pub secret_env: Vec<SecretEnv>,
    pub volumes: Vec<VolumeMount>,
}

/// The secrets-as-variables and volume mounts of the tasks running executor `label`.
pub fn executor_needs(spec: &PipelineSpec, label: &str) -> Result<HostNeeds, PlatformError> {
    match executors(spec)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
    {
        Some(settings) => needs_of(settings).map_err(PlatformError::in_executor(label)),
        None => Ok(HostNeeds::default()),
    }
}

fn list<'a>(
    settings: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a [Value], PlatformError> {
    match settings.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(PlatformError::NotAList {
            field: field.to_string(),
            value: other.clone(),
        }),
    }
}

/// The constant name a secret or claim entry gives. kfp-kubernetes writes it as
/// `<param_field>: {runtimeValue: {constant: NAME}}` and, in older releases, as a plain field
/// beside it (`secretName`, `constant`); a name taken from a pipeline parameter or a task
/// output would have to be resolved per task at run time, which the engine does not do.
fn constant_name(
    entry: &Value,
    param_field: &str,
    legacy: &str,
    what: &'static str,
) -> Result<String, PlatformError> {
    let dynamic = |from: &'static str| PlatformError::RuntimeName {
        what,
        from,
        param_field: param_field.to_string(),
    };
    let reference = entry.get(param_field).unwrap_or(entry);
    if let Some(c) = reference.pointer("/runtimeValue/constant") {
        return c
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PlatformError::NameNotString {
                param_field: param_field.to_string(),
                what,
                value: c.clone(),
            });
    }
    if reference.get("taskOutputParameter").is_some() {
        return Err(dynamic("the output of another task"));
    }
    if reference.get("componentInputParameter").is_some() {
        return Err(dynamic("a pipeline parameter"));
    }
    if let Some(name) = entry.get(legacy).and_then(Value::as_str) {
        return Ok(name.to_string());
    }
    Err(PlatformError::NoName {
        what,
        param_field: param_field.to_string(),
        legacy: legacy.to_string(),
    })
}

/// A variable name Docker and the process runtime can set.
fn check_env_name(name: &str) -> Result<(), PlatformError> {
    if name.is_empty() || name.contains('=') || name.chars().any(char::is_control) {
        return Err(PlatformError::EnvName(name.to_string()));
    }
    Ok(())
}

/// A path inside the container: absolute, without `..`.
fn check_mount_path(path: &str) -> Result<(), PlatformError> {
    if !path.starts_with('/') || path == "/" || path.split('/').any(|seg| seg == "..") {
        return Err(PlatformError::MountPath(path.to_string()));
    }
    Ok(())
}

fn needs_of(settings: &serde_json::Map<String, Value>) -> Result<HostNeeds, PlatformError> {
    let mut needs = HostNeeds::default();
    let secret_env = PlatformError::in_setting(SECRET_AS_ENV);
    for entry in list(settings, SECRET_AS_ENV)? {
        let secret = constant_name(
            entry,
            "secretNameParameter",
            "secretName",
            "Kubernetes secret name",
        )
        .map_err(&secret_env)?;
        validate_resource_name(&secret).map_err(|error| {
            secret_env(PlatformError::SecretName {
                secret: secret.clone(),
                error,
            })
        })?;
        let optional = entry
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let pairs = match entry.get("keyToEnv") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(other) => {
                return Err(secret_env(PlatformError::KeyToEnvNotAList {
                    secret: secret.clone(),
                    value: other.clone(),
                }))
            }
        };
        for pair in pairs {
            let field = |f: &str| {
                pair.get(f).and_then(Value::as_str).ok_or_else(|| {
                    secret_env(PlatformError::KeyToEnvField {
                        secret: secret.clone(),
                        field: f.to_string(),
                    })
                })
            };
            let (key, env) = (field("secretKey")?, field("envVar")?);
            validate_secret_key(key).map_err(|error| {
                secret_env(PlatformError::SecretKey {
                    key: key.to_string(),
                    secret: secret.clone(),
                    error,
                })
            })?;
            check_env_name(env).map_err(&secret_env)?;
            needs.secret_env.push(SecretEnv {
                secret: secret.clone(),
                key: key.to_string(),
                env: env.to_string(),
                optional,
            });
        }
    }
    let pvc_mount = PlatformError::in_setting(PVC_MOUNT);
    for entry in list(settings, PVC_MOUNT)? {
        let volume = constant_name(
            entry,
            "pvcNameParameter",
            "constant",
            "Kubernetes persistent volume claim name",
        )
        .map_err(&pvc_mount)?;
        validate_resource_name(&volume).map_err(|error| {
            pvc_mount(PlatformError::ClaimName {
                claim: volume.clone(),
                error,
            })
        })?;
        let mount_path = entry
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or_else(|| pvc_mount(PlatformError::NoMountPath(volume.clone())))?;
        check_mount_path(mount_path).map_err(&pvc_mount)?;
        let sub_path = entry.get("subPath").and_then(Value::as_str).unwrap_or("");
        if sub_path.starts_with('/') || sub_path.split('/').any(|seg| seg == "..") {
            return Err(pvc_mount(PlatformError::SubPath {
                sub_path: sub_path.to_string(),
                volume,
            }));
        }
        if needs.volumes.iter().any(|v| v.mount_path == mount_path) {
            return Err(pvc_mount(PlatformError::MountPathTaken(
                mount_path.to_string(),
            )));
        }
        needs.volumes.push(VolumeMount {
            volume,
            mount_path: mount_path.to_string(),
            sub_path: sub_path.trim_end_matches('/').to_string(),
        });
    }
    Ok(needs)
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
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          secretAsVolume:\n          - secretName: s\n          podMetadata:\n            labels: {a: b}\n",
        );
        let r = refusals(&spec);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("exec-make-data") && r[0].contains("secretAsVolume"),
            "{r:?}"
        );
        let err = crate::engine::check_supported(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Kubernetes secret"), "{err}");
        let ws = with_platform(
            "platforms:\n  kubernetes:\n    pipelineConfig:\n      workspace:\n        size: 1Gi\n",
        );
        assert!(refusals(&ws)[0].contains("workspace"));
    }

    /// As kfp-kubernetes 2.16.1 writes `use_secret_as_env` and `mount_pvc` with constant names.
    const SECRETS_AND_VOLUMES: &str = "platforms:
  kubernetes:
    deploymentSpec:
      executors:
        exec-make-data:
          nodeSelector:
            labels: {zone: a}
          pvcMount:
          - constant: v1
            mountPath: /data
            pvcNameParameter:
              runtimeValue:
                constant: v1
          - constant: v2
            mountPath: /data2
            pvcNameParameter:
              runtimeValue:
                constant: v2
            subPath: sub/dir
          secretAsEnv:
          - keyToEnv:
            - envVar: ENV1
              secretKey: k
            - envVar: ENV2
              secretKey: k2
            optional: false
            secretName: s1
            secretNameParameter:
              runtimeValue:
                constant: s1
          - keyToEnv:
            - envVar: ENV3
              secretKey: k
            optional: true
            secretName: s2
            secretNameParameter:
              runtimeValue:
                constant: s2
";

    #[test]
    fn secrets_as_env_and_pvc_mounts_become_references_and_placement_labels() {
        let spec = with_platform(SECRETS_AND_VOLUMES);
        assert!(refusals(&spec).is_empty(), "{:?}", refusals(&spec));
        let needs = executor_needs(&spec, "exec-make-data").unwrap();
        let env = |secret: &str, key: &str, env: &str, optional| SecretEnv {
            secret: secret.into(),
            key: key.into(),
            env: env.into(),
            optional,
        };
        assert_eq!(
            needs.secret_env,
            vec![
                env("s1", "k", "ENV1", false),
                env("s1", "k2", "ENV2", false),
                env("s2", "k", "ENV3", true)
            ]
        );
        assert_eq!(
            needs.volumes,
            vec![
                VolumeMount {
                    volume: "v1".into(),
                    mount_path: "/data".into(),
                    sub_path: String::new()
                },
                VolumeMount {
                    volume: "v2".into(),
                    mount_path: "/data2".into(),
                    sub_path: "sub/dir".into()
                },
            ]
        );
        let (labels, _) = executor_placement(&spec, "exec-make-data");
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        // The optional secret does not restrict placement.
        assert_eq!(
            keys,
            vec![
                "secret.gantry.dev/s1",
                "volume.gantry.dev/v1",
                "volume.gantry.dev/v2",
                "zone"
            ]
        );
        assert_eq!(labels["secret.gantry.dev/s1"], "true");
        assert_eq!(
            executor_needs(&spec, "exec-other"),
            Ok(HostNeeds::default())
        );

        // Older kfp-kubernetes wrote only the plain names.
        let legacy = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          pvcMount:\n          - constant: v1\n            mountPath: /data\n          secretAsEnv:\n          - secretName: s1\n            keyToEnv:\n            - {secretKey: k, envVar: E}\n",
        );
        let needs = executor_needs(&legacy, "exec-make-data").unwrap();
        assert_eq!(needs.secret_env, vec![env("s1", "k", "E", false)]);
        assert_eq!(needs.volumes[0].volume, "v1");
    }

    fn refusal_of(executor_settings: &str) -> String {
        let spec = with_platform(&format!(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n{executor_settings}"
        ));
        let r = refusals(&spec);
        assert_eq!(r.len(), 1, "{r:?}");
        r[0].clone()
    }

    #[test]
    fn names_known_only_at_run_time_and_bad_names_are_refused_clearly() {
        let r = refusal_of(
            "          secretAsEnv:\n          - keyToEnv:\n            - {envVar: E, secretKey: k}\n            optional: false\n            secretNameParameter:\n              componentInputParameter: sname\n",
        );
        assert!(
            r.contains("exec-make-data")
                && r.contains("secretAsEnv")
                && r.contains("Kubernetes secret name comes from a pipeline parameter at run time")
                && r.contains("secretNameParameter"),
            "{r}"
        );
        let r = refusal_of(
            "          secretAsEnv:\n          - keyToEnv:\n            - {envVar: E, secretKey: k}\n            secretNameParameter:\n              taskOutputParameter: {outputParameterKey: o, producerTask: t}\n",
        );
        assert!(r.contains("the output of another task"), "{r}");
        let r = refusal_of(
            "          pvcMount:\n          - componentInputParameter: pname\n            mountPath: /d\n            pvcNameParameter:\n              componentInputParameter: pname\n",
        );
        assert!(
            r.contains("pvcMount")
                && r.contains(
                    "Kubernetes persistent volume claim name comes from a pipeline parameter"
                ),
            "{r}"
        );
        // What kfp-kubernetes writes for mount_pvc(pvc_name=CreatePVC(...).outputs['name']).
        let r = refusal_of(
            "          pvcMount:\n          - mountPath: /data\n            taskOutputParameter: {outputParameterKey: name, producerTask: createpvc}\n            pvcNameParameter:\n              taskOutputParameter: {outputParameterKey: name, producerTask: createpvc}\n",
        );
        assert!(r.contains("the output of another task"), "{r}");
        for (settings, needle) in [
            (
                "          secretAsEnv:\n          - secretName: ../etc\n            keyToEnv: [{envVar: E, secretKey: k}]\n",
                "secret name \"../etc\" may hold only",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{envVar: E, secretKey: ..}]\n",
                "key \"..\" of secret \"s\"",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{envVar: 'A=B', secretKey: k}]\n",
                "variable name \"A=B\"",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{secretKey: k}]\n",
                "has no envVar",
            ),
            (
                "          pvcMount:\n          - constant: v\n            mountPath: data\n",
                "mount path \"data\" must be an absolute path",
            ),
            (
                "          pvcMount:\n          - constant: v\n            mountPath: /d\n            subPath: ../x\n",
                "subPath \"../x\"",
            ),
            (
                "          pvcMount:\n          - {constant: v, mountPath: /d}\n          - {constant: w, mountPath: /d}\n",
                "two volumes are mounted at \"/d\"",
            ),
        ] {
            let r = refusal_of(settings);
            assert!(r.contains(needle), "{needle:?} not in {r}");
        }
    }

    #[test]
    fn create_and_delete_pvc_tasks_are_refused() {
        let mut spec = parse_pipeline(PIPELINE).unwrap();
        let Some(ExecutorSpec::Container(c)) = spec.executors.values_mut().next() else {
            panic!("the test pipeline has a container executor");
        };
        c.image = "argostub/createpvc".into();
        let r = refusals(&spec);
        assert!(
            r.len() == 1 && r[0].contains("CreatePVC") && r[0].contains("--volume"),
            "{r:?}"
        );
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
