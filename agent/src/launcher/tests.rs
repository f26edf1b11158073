//! Identity and parameter resolution, the executor input's shape, and the checks that keep
//! ids and reported URIs where they belong.

use std::collections::BTreeMap;

use gantry_model::{
    ContainerSpec, OutputArtifactSpec, ParamType, ResourceRequest, StepInputs, StepOutputs,
    StepSpec,
};
use serde_json::{json, Map};

use super::collect::under_root;
use super::layout::check_ids;
use super::prepare::{identity, last_segment};
use super::*;
use crate::placeholders::{self, StepArtifact};

pub(super) fn spec() -> StepSpec {
    StepSpec {
        run_id: "run-1".into(),
        task_id: "for-loop-2/0/train".into(),
        task_name: "train".into(),
        attempt: 1,
        pipeline_name: "my-pipeline".into(),
        pipeline_root: "file:///tmp/root".into(),
        container: ContainerSpec {
            image: "img".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            resources: ResourceRequest::default(),
            secret_env: vec![],
            volumes: vec![],
            namespace_env: vec![],
            secret_volumes: vec![],
            config_map_env: vec![],
            config_map_volumes: vec![],
            empty_dirs: vec![],
            shared_memory: None,
        },
        inputs: StepInputs {
            parameters: BTreeMap::from([
                ("n".to_string(), json!(3)),
                ("job".to_string(), json!("{{$.pipeline_job_uuid}}")),
                ("task".to_string(), json!("{{$.pipeline_task_name}}")),
                (
                    "greeting".to_string(),
                    json!("hi-{{$.inputs.parameters['n']}}-there"),
                ),
                ("ws".to_string(), json!("{{$.workspace_path}}")),
            ]),
            artifacts: BTreeMap::new(),
        },
        outputs: StepOutputs {
            parameters: BTreeMap::from([("acc".to_string(), ParamType::NumberDouble)]),
            artifacts: BTreeMap::from([(
                "model".to_string(),
                OutputArtifactSpec {
                    uri: "file:///tmp/root/run-1/train/attempt-1/model".into(),
                    schema_title: "system.Model".into(),
                    schema_version: "0.0.1".into(),
                },
            )]),
        },
        gpus: vec![],
    }
}

#[test]
fn parameter_values_resolve_self_references_and_run_identity() {
    let s = spec();
    let ident = identity(&s);
    let p = resolve_parameter_values(&s.inputs.parameters, &ident);
    assert_eq!(p["job"], json!("run-1"));
    assert_eq!(p["task"], json!("train"));
    assert_eq!(p["greeting"], json!("hi-3-there"));
    assert_eq!(p["n"], json!(3));
    assert_eq!(p["ws"], json!("/kfp-workspace"));
    // Unknown: kept as it was, for the step to see.
    let unknown = BTreeMap::from([(
        "x".to_string(),
        json!("{{$.pipeline_google_cloud_project_id}}"),
    )]);
    let kept = resolve_parameter_values(&unknown, &ident);
    assert_eq!(kept["x"], json!("{{$.pipeline_google_cloud_project_id}}"));
    assert_eq!(ident.job_resource_name, "my-pipeline-run-1");
    assert!(ident.job_resource_name.starts_with("my-pipeline-"));
    assert_eq!(ident.task_uuid.len(), 36);
    assert_eq!(identity(&s).task_uuid, ident.task_uuid);
    let mut other = s.clone();
    other.task_id = "for-loop-2/1/train".into();
    assert_ne!(identity(&other).task_uuid, ident.task_uuid);
}

#[test]
fn executor_input_has_kfp_shape() {
    let ctx = placeholders::Context {
        input_parameters: BTreeMap::from([("n".to_string(), json!(3))]),
        input_artifacts: BTreeMap::from([(
            "data".to_string(),
            vec![StepArtifact {
                name: "data".into(),
                schema_title: "system.Dataset".into(),
                schema_version: "0.0.1".into(),
                path: "/gantry/inputs/data/0/data".into(),
                uri: "/gantry/inputs/data/0/data".into(),
                metadata: json!({"rows": 2}).as_object().cloned().unwrap_or_default(),
            }],
        )]),
        output_parameter_files: BTreeMap::from([(
            "acc".to_string(),
            "/gantry/outputs/params/acc".to_string(),
        )]),
        output_artifacts: BTreeMap::from([(
            "model".to_string(),
            StepArtifact {
                name: "model".into(),
                schema_title: "system.Model".into(),
                schema_version: "0.0.1".into(),
                path: "/gantry/outputs/artifacts/model".into(),
                uri: "/gantry/outputs/artifacts/model".into(),
                metadata: Map::new(),
            },
        )]),
        output_file: "/gantry/outputs/executor_output.json".into(),
        ..Default::default()
    };
    assert_eq!(
        executor_input_json(&ctx),
        json!({
            "inputs": {
                "parameterValues": {"n": 3},
                "artifacts": {"data": {"artifacts": [{
                    "name": "data",
                    "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                    "uri": "/gantry/inputs/data/0/data",
                    "metadata": {"rows": 2},
                }]}},
            },
            "outputs": {
                "parameters": {"acc": {"outputFile": "/gantry/outputs/params/acc"}},
                "artifacts": {"model": {"artifacts": [{
                    "name": "model",
                    "type": {"schemaTitle": "system.Model", "schemaVersion": "0.0.1"},
                    "uri": "/gantry/outputs/artifacts/model",
                    "metadata": {},
                }]}},
                "outputFile": "/gantry/outputs/executor_output.json",
            },
        })
    );
}

#[test]
fn ids_and_names_are_checked() {
    assert!(check_ids(&spec()).is_ok());
    let mut s = spec();
    s.task_id = "a/../../etc".into();
    assert!(check_ids(&s).is_err());
    let mut s = spec();
    s.run_id = "../x".into();
    assert!(check_ids(&s).is_err());
    let mut s = spec();
    s.outputs
        .parameters
        .insert("../evil".into(), ParamType::String);
    let e = check_ids(&s).expect_err("evil");
    assert!(
        matches!(&e, LayoutError::Name { what, .. } if what == "output parameter"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        r#"output parameter "../evil": artifact name "../evil" contains ".." (path traversal)"#
    );
}

#[test]
fn reported_uris_must_stay_under_the_root() {
    assert!(under_root("s3://b/root/x/y", "s3://b/root"));
    assert!(under_root("s3://b/root/x", "s3://b/root/"));
    assert!(!under_root("s3://b/rootx/y", "s3://b/root"));
    assert!(!under_root("s3://b/root/../other", "s3://b/root"));
    assert!(!under_root(
        "file:///etc/shadow",
        "file:///var/gantry/artifacts"
    ));
    assert!(!under_root("s3://b/x", ""));
}

#[test]
fn last_segments() {
    assert_eq!(last_segment("s3://b/r/t/attempt-1/model"), "model");
    assert_eq!(last_segment("s3://b/r/t/attempt-1/model/"), "model");
    assert_eq!(last_segment("s3://b"), "b");
    assert_eq!(last_segment("file:///"), "data");
    assert_eq!(last_segment("x/.."), "data");
}

#[test]
fn the_agent_sets_its_reserved_variables_last_and_drops_the_steps_own() {
    let launcher = Launcher::new(
        Arc::new(crate::runtime::ProcessRuntime::new()),
        PathBuf::from("/tmp/w"),
    )
    .step_env(vec![("HTTP_PROXY".into(), "http://proxy".into())]);
    let mut s = spec();
    s.gpus = vec!["GPU-1".into()];
    s.container.env = [
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
        ("GANTRY_ATTEMPT", "99"),
        ("NVIDIA_DRIVER_CAPABILITIES", "all"),
        ("LD_PRELOAD", "/x.so"),
        ("MODE", "fast"),
    ]
    .into_iter()
    .map(|(k, v)| gantry_model::EnvVar {
        name: k.into(),
        value: v.into(),
    })
    .collect();
    let env = launcher.container_env(&s).unwrap();
    // What the step sees: the last value of each name.
    let seen: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(seen["NVIDIA_VISIBLE_DEVICES"], "GPU-1");
    assert_eq!(seen["CUDA_VISIBLE_DEVICES"], "GPU-1");
    assert_eq!(seen["GANTRY_ATTEMPT"], "1");
    assert!(!seen.contains_key("NVIDIA_DRIVER_CAPABILITIES"));
    assert_eq!(seen["LD_PRELOAD"], "/x.so");
    assert_eq!(seen["MODE"], "fast");
    assert_eq!(seen["HTTP_PROXY"], "http://proxy");
    // The step's own reserved values are not even passed.
    assert!(!env
        .iter()
        .any(|(_, v)| v == "all" || v == "0,1,2,3" || v == "99"));
}

#[test]
fn a_step_reads_the_agents_namespace_as_the_variables_it_names() {
    let launcher = Launcher::new(
        Arc::new(crate::runtime::ProcessRuntime::new()),
        PathBuf::from("/tmp/w"),
    )
    .namespace("ml-team".into());
    let mut s = spec();
    s.container.namespace_env = vec!["POD_NAMESPACE".into(), "GANTRY_NS".into()];
    let env = launcher.container_env(&s).unwrap();
    let seen: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(seen["POD_NAMESPACE"], "ml-team");
    // A reserved name is dropped, as any of the step's own.
    assert!(!seen.contains_key("GANTRY_NS"));
    let default = Launcher::new(
        Arc::new(crate::runtime::ProcessRuntime::new()),
        PathBuf::from("/tmp/w"),
    );
    let env = default.container_env(&s).unwrap();
    assert!(env.contains(&("POD_NAMESPACE".to_string(), "gantry".to_string())));
}

#[test]
fn the_process_runtime_refuses_secret_and_config_map_volumes_by_name() {
    let launcher = Launcher::new(
        Arc::new(crate::runtime::ProcessRuntime::new()),
        PathBuf::from("/tmp/w"),
    );
    let mut s = spec();
    s.container.config_map_volumes = vec![gantry_model::ConfigMapVolume {
        config_map: "app".into(),
        mount_path: "/etc/app".into(),
        optional: true,
    }];
    let err = launcher.container_mounts(&s).unwrap_err().to_string();
    assert!(
        err.contains("mounts config map app as volumes") && err.contains("--runtime docker"),
        "{err}"
    );
}

#[tokio::test]
async fn the_process_runtime_refuses_empty_dirs_and_shared_memory_by_name() {
    let launcher = Launcher::new(
        Arc::new(crate::runtime::ProcessRuntime::new()),
        PathBuf::from("/tmp/w"),
    );
    let mut s = spec();
    s.container.empty_dirs = vec![gantry_model::EmptyDirMount {
        name: "scratch".into(),
        mount_path: "/scratch".into(),
        memory: false,
        size_limit_bytes: None,
    }];
    s.container.shared_memory = Some(gantry_model::SharedMemory { size_bytes: None });
    let dir = tempfile::tempdir().unwrap();
    let err = launcher
        .scratch_mounts(&s, dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("emptyDir scratch, /dev/shm") && err.contains("--runtime docker"),
        "{err}"
    );
}
