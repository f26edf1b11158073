//! The document reader's tests: each breaks a small valid pipeline in one place and checks
//! the error names the right path.

use gantry_model::ParamType;
use serde_json::{json, Value};

use super::*;
use crate::ir::model::{ExecutorSpec, Implementation, ParameterSource, RetryPolicy};

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
    let spec: Value = load_documents(GOOD).unwrap().remove(0);
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
    assert!(e.message.starts_with("YAML refused"), "{e}");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = err(&deep);
    assert!(e.message.contains("depth limit"), "{e}");
}

#[test]
fn a_billion_laughs_is_refused_at_the_alias_limit() {
    // Ten levels of ten aliases each: 10^10 strings once expanded.
    let mut bomb = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let prev = format!("*l{}", level - 1);
        bomb.push_str(&format!(
            "l{level}: &l{level} [{}]\n",
            vec![prev; 10].join(", ")
        ));
    }
    let e = err(&bomb);
    assert_eq!(e.path, "");
    assert!(
        e.message.starts_with(
            "YAML refused: aliases expand to more than 100000 parser events (the alias limit)"
        ),
        "{e}"
    );
    // Aliases within the limit are read, and merge keys are expanded.
    let yaml = GOOD.replace(
        "      container:\n        image: python:3.11\n",
        "      container:\n        <<: &base {image: python:3.11}\n",
    );
    let spec = parse_pipeline(&yaml).unwrap();
    let Some(ExecutorSpec::Container(c)) = spec.executors.get("exec-train") else {
        panic!("container expected");
    };
    assert_eq!(c.image, "python:3.11");
}

#[test]
fn deep_nesting_is_refused_at_the_depth_limit() {
    let flow = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut block = String::new();
    for depth in 0..200 {
        block.push_str(&format!("{}k{depth}:\n", "  ".repeat(depth)));
    }
    for text in [flow, block] {
        let e = err(&text);
        assert_eq!(e.path, "");
        assert!(
            e.message.starts_with("YAML refused: mappings and lists nest deeper than 64 levels (the depth limit) (line "),
            "{e}"
        );
    }
}

#[test]
fn an_oversized_file_is_refused_at_the_size_limit() {
    // Valid YAML, and a valid pipeline but for its size: a comment pads it.
    let big = format!("{GOOD}# {}\n", "x".repeat(12 * 1024 * 1024));
    let e = err(&big);
    assert_eq!(e.path, "");
    assert!(e.message.starts_with("the file holds 12584"), "{e}");
    assert!(
        e.message
            .ends_with("over the size limit of 12582912 bytes (12 MiB)"),
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_refused_with_their_position() {
    let yaml = GOOD.replace(
        "pipelineInfo:\n  name: demo\n",
        "pipelineInfo:\n  name: demo\n  name: other\n",
    );
    let e = err(&yaml);
    assert_eq!(e.path, "");
    assert!(
        e.message
            .starts_with("malformed YAML: duplicate key \"name\" (line 43, column 3)"),
        "{e}"
    );
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
