//! Validation's tests: a small pipeline with a condition sub-DAG, broken one check at a time.

use serde_json::json;

use super::*;
use crate::ir::parse_pipeline;

/// Two steps and a condition sub-DAG:
/// `produce` → `consume` (parameter and artifact), `condition-1` runs `consume-2` when
/// `produce` says "heads", and exposes its output.
const GOOD: &str = r#"
components:
  comp-produce:
    executorLabel: exec-produce
    inputDefinitions:
      parameters:
        n:
          parameterType: NUMBER_INTEGER
        flag:
          parameterType: BOOLEAN
          defaultValue: false
          isOptional: true
    outputDefinitions:
      parameters:
        Output:
          parameterType: STRING
      artifacts:
        data:
          artifactType:
            schemaTitle: system.Dataset
            schemaVersion: 0.0.1
  comp-consume:
    executorLabel: exec-consume
    inputDefinitions:
      parameters:
        text:
          parameterType: STRING
      artifacts:
        data:
          artifactType:
            schemaTitle: system.Dataset
            schemaVersion: 0.0.1
    outputDefinitions:
      parameters:
        Output:
          parameterType: STRING
  comp-condition-1:
    dag:
      tasks:
        consume-2:
          componentRef:
            name: comp-consume
          inputs:
            parameters:
              text:
                componentInputParameter: pipelinechannel--produce-Output
            artifacts:
              data:
                componentInputArtifact: pipelinechannel--produce-data
          taskInfo:
            name: consume-2
      outputs:
        parameters:
          result:
            valueFromParameter:
              producerSubtask: consume-2
              outputParameterKey: Output
    inputDefinitions:
      parameters:
        pipelinechannel--produce-Output:
          parameterType: STRING
      artifacts:
        pipelinechannel--produce-data:
          artifactType:
            schemaTitle: system.Dataset
            schemaVersion: 0.0.1
    outputDefinitions:
      parameters:
        result:
          parameterType: STRING
deploymentSpec:
  executors:
    exec-produce:
      container:
        image: alpine
        command: [echo]
    exec-consume:
      container:
        image: alpine
        command: [cat]
pipelineInfo:
  name: demo
root:
  dag:
    tasks:
      produce:
        componentRef:
          name: comp-produce
        inputs:
          parameters:
            n:
              runtimeValue:
                constant: 3.0
        taskInfo:
          name: produce
      consume:
        componentRef:
          name: comp-consume
        dependentTasks:
        - produce
        inputs:
          parameters:
            text:
              taskOutputParameter:
                producerTask: produce
                outputParameterKey: Output
          artifacts:
            data:
              taskOutputArtifact:
                producerTask: produce
                outputArtifactKey: data
        taskInfo:
          name: consume
      condition-1:
        componentRef:
          name: comp-condition-1
        dependentTasks:
        - produce
        inputs:
          parameters:
            pipelinechannel--produce-Output:
              taskOutputParameter:
                producerTask: produce
                outputParameterKey: Output
          artifacts:
            pipelinechannel--produce-data:
              taskOutputArtifact:
                producerTask: produce
                outputArtifactKey: data
        taskInfo:
          name: condition-1
        triggerPolicy:
          condition: inputs.parameter_values['pipelinechannel--produce-Output'] == 'heads'
  inputDefinitions:
    parameters:
      rows:
        parameterType: NUMBER_INTEGER
        defaultValue: 5
schemaVersion: 2.1.0
sdkVersion: kfp-2.16.1
"#;

fn replaced(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    GOOD.replacen(from, to, 1)
}

fn assert_err(yaml: &str, path: &str, message_part: &str) {
    match parse_pipeline(yaml) {
        Ok(_) => panic!("expected an error at {path}"),
        Err(e) => {
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(message_part), "{e}");
        }
    }
}

fn root_task<'a>(spec: &'a PipelineSpec, name: &str) -> &'a TaskSpec {
    match &spec.root.implementation {
        Implementation::Dag(d) => &d.tasks[name],
        Implementation::Executor(_) => panic!("root is a DAG"),
    }
}

#[test]
fn the_fixture_is_valid_and_constants_are_coerced() {
    let spec = parse_pipeline(GOOD).unwrap();
    assert_eq!(
        root_task(&spec, "produce").parameters["n"].source,
        ParameterSource::Constant(json!(3))
    );
    assert_eq!(
        root_task(&spec, "condition-1").condition.as_deref(),
        Some("inputs.parameter_values['pipelinechannel--produce-Output'] == 'heads'")
    );
}

#[test]
fn unknown_component() {
    let yaml = replaced(
        "name: comp-consume\n        dependentTasks",
        "name: comp-nope\n        dependentTasks",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.componentRef.name",
        "unknown component \"comp-nope\" (known: comp-condition-1, comp-consume, comp-produce)",
    );
}

#[test]
fn unknown_executor() {
    let yaml = replaced("executorLabel: exec-produce", "executorLabel: exec-nope");
    assert_err(
        &yaml,
        "components.comp-produce.executorLabel",
        "unknown executor \"exec-nope\"",
    );
}

#[test]
fn unknown_producer() {
    let yaml = replaced(
        "              taskOutputParameter:\n                producerTask: produce\n                outputParameterKey: Output\n          artifacts:\n            data:",
        "              taskOutputParameter:\n                producerTask: ghost\n                outputParameterKey: Output\n          artifacts:\n            data:",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.inputs.parameters.text.taskOutputParameter.producerTask",
        "unknown task \"ghost\"",
    );
}

#[test]
fn unknown_output_key() {
    let yaml = replaced(
        "outputArtifactKey: data\n        taskInfo:\n          name: consume",
        "outputArtifactKey: model\n        taskInfo:\n          name: consume",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.inputs.artifacts.data.taskOutputArtifact.outputArtifactKey",
        "has no output artifact \"model\"",
    );
}

#[test]
fn unknown_dependent_task() {
    let yaml = replaced("        dependentTasks:\n        - produce\n        inputs:\n          parameters:\n            text:", "        dependentTasks:\n        - produce\n        - ghost\n        inputs:\n          parameters:\n            text:");
    assert_err(
        &yaml,
        "root.dag.tasks.consume.dependentTasks[1]",
        "unknown task \"ghost\"",
    );
}

#[test]
fn unknown_component_input() {
    let yaml = replaced(
        "            n:\n              runtimeValue:",
        "            x:\n              runtimeValue:",
    );
    // `n` is then unbound, but the unknown input is reported first.
    assert_err(
        &yaml,
        "root.dag.tasks.produce.inputs.parameters.x",
        "unknown component input \"x\"",
    );
}

#[test]
fn input_of_the_wrong_kind() {
    let yaml = replaced(
        "          artifacts:\n            data:\n              taskOutputArtifact:\n                producerTask: produce\n                outputArtifactKey: data\n        taskInfo:\n          name: consume",
        "          artifacts:\n            text:\n              taskOutputArtifact:\n                producerTask: produce\n                outputArtifactKey: data\n        taskInfo:\n          name: consume",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.inputs.artifacts.text",
        "is an input parameter of component comp-consume",
    );
}

#[test]
fn unknown_enclosing_input() {
    let yaml = replaced(
        "componentInputParameter: pipelinechannel--produce-Output",
        "componentInputParameter: pipelinechannel--other",
    );
    assert_err(&yaml, "components.comp-condition-1.dag.tasks.consume-2.inputs.parameters.text.componentInputParameter", "unknown input parameter \"pipelinechannel--other\" of the enclosing component comp-condition-1");
    let yaml = replaced(
        "componentInputArtifact: pipelinechannel--produce-data",
        "componentInputArtifact: pipelinechannel--produce-Output",
    );
    assert_err(&yaml, "components.comp-condition-1.dag.tasks.consume-2.inputs.artifacts.data.componentInputArtifact", "is an input parameter of the enclosing component");
}

#[test]
fn cycle_between_siblings() {
    // produce now waits for consume, which reads produce's outputs.
    let yaml = replaced(
        "          name: comp-produce\n        inputs:",
        "          name: comp-produce\n        dependentTasks:\n        - consume\n        inputs:",
    );
    assert_err(
        &yaml,
        "root.dag.tasks",
        "dependency cycle: produce -> consume -> produce",
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    let yaml = replaced("        dependentTasks:\n        - produce\n        inputs:\n          parameters:\n            text:", "        dependentTasks:\n        - consume\n        inputs:\n          parameters:\n            text:");
    assert_err(
        &yaml,
        "root.dag.tasks",
        "dependency cycle: consume -> consume",
    );
}

#[test]
fn component_recursion() {
    let minimal = r#"
components:
  comp-a:
    dag:
      tasks:
        b:
          componentRef: {name: comp-b}
  comp-b:
    dag:
      tasks:
        a:
          componentRef: {name: comp-a}
pipelineInfo: {name: loop}
root:
  dag:
    tasks:
      a:
        componentRef: {name: comp-a}
"#;
    assert_err(
        minimal,
        "components.comp-a",
        "component recursion: comp-a -> comp-b -> comp-a",
    );
}

#[test]
fn wrong_constant_type() {
    let yaml = replaced("constant: 3.0", "constant: three");
    assert_err(
        &yaml,
        "root.dag.tasks.produce.inputs.parameters.n.runtimeValue.constant",
        "does not fit the input's type NUMBER_INTEGER",
    );
    let yaml = replaced("constant: 3.0", "constant: 3.5");
    assert_err(
        &yaml,
        "root.dag.tasks.produce.inputs.parameters.n.runtimeValue.constant",
        "NUMBER_INTEGER",
    );
    let yaml = replaced("constant: 3.0", "constant: [1]");
    assert_err(
        &yaml,
        "root.dag.tasks.produce.inputs.parameters.n.runtimeValue.constant",
        "expected NUMBER_INTEGER, got a list",
    );
}

#[test]
fn placeholder_constants_are_left_for_run_time() {
    let yaml = replaced(
        "constant: 3.0",
        "constant: \"{{$.inputs.parameters['pipelinechannel--n']}}\"",
    );
    assert!(parse_pipeline(&yaml).is_ok());
}

#[test]
fn missing_required_input() {
    let yaml = replaced(
        "        inputs:\n          parameters:\n            n:\n              runtimeValue:\n                constant: 3.0\n",
        "",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.produce.inputs.parameters",
        "required input parameter \"n\" of component comp-produce is not bound",
    );
    let yaml = replaced(
        "          artifacts:\n            data:\n              taskOutputArtifact:\n                producerTask: produce\n                outputArtifactKey: data\n        taskInfo:\n          name: consume",
        "        taskInfo:\n          name: consume",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.inputs.artifacts",
        "required input artifact \"data\"",
    );
}

#[test]
fn bad_condition() {
    let yaml = replaced("== 'heads'", "== ");
    assert_err(
        &yaml,
        "root.dag.tasks.condition-1.triggerPolicy.condition",
        "not a valid CEL expression",
    );
    let yaml = replaced("== 'heads'", "== outputs.x");
    assert_err(
        &yaml,
        "root.dag.tasks.condition-1.triggerPolicy.condition",
        "unknown variable \"outputs\"",
    );
    let yaml = replaced(
        "condition: inputs.parameter_values['pipelinechannel--produce-Output']",
        "condition: inputs.parameter_values['pipelinechannel--nope']",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.condition-1.triggerPolicy.condition",
        "reads parameter \"pipelinechannel--nope\"",
    );
}

#[test]
fn path_traversal_in_output_names() {
    let yaml = replaced("      artifacts:\n        data:\n          artifactType:\n            schemaTitle: system.Dataset\n            schemaVersion: 0.0.1\n  comp-consume:", "      artifacts:\n        ../../etc/passwd:\n          artifactType:\n            schemaTitle: system.Dataset\n            schemaVersion: 0.0.1\n  comp-consume:");
    assert_err(
        &yaml,
        "components.comp-produce.outputDefinitions.artifacts.../../etc/passwd",
        "path traversal",
    );
    let yaml = replaced(
        "      parameters:\n        Output:\n          parameterType: STRING\n      artifacts:",
        "      parameters:\n        a/b:\n          parameterType: STRING\n      artifacts:",
    );
    assert_err(
        &yaml,
        "components.comp-produce.outputDefinitions.parameters.a/b",
        "contains '/'",
    );
}

#[test]
fn unsafe_task_names() {
    for bad in ["../up", "a/b", "..", "x y"] {
        let yaml = GOOD.replace("      produce:\n", &format!("      {bad:?}:\n"));
        let e = parse_pipeline(&yaml).unwrap_err();
        assert!(
            e.message.contains("task name") || e.message.contains("unknown task"),
            "{bad}: {e}"
        );
    }
    let yaml = GOOD.replace("      consume:\n", "      \"../consume\":\n");
    assert_err(
        &yaml,
        "root.dag.tasks.../consume",
        "not a safe path segment",
    );
}

#[test]
fn no_name() {
    let yaml = replaced("  name: demo", "  name:");
    assert_err(&yaml, "pipelineInfo.name", "the pipeline has no name");
    let yaml = replaced("  name: demo", "  name: '  '");
    assert_err(&yaml, "pipelineInfo.name", "no name");
}

#[test]
fn dag_outputs_are_checked() {
    let yaml = replaced(
        "              producerSubtask: consume-2",
        "              producerSubtask: ghost",
    );
    assert_err(&yaml, "components.comp-condition-1.dag.outputs.parameters.result.valueFromParameter.producerSubtask", "unknown task \"ghost\"");
    let yaml = replaced("        result:\n          parameterType: STRING", "        result:\n          parameterType: STRING\n        other:\n          parameterType: STRING");
    assert_err(
        &yaml,
        "components.comp-condition-1.outputDefinitions.parameters.other",
        "does not say which task produces it",
    );
}

#[test]
fn final_status_must_bind_a_final_status_input() {
    let yaml = replaced(
        "            text:\n              taskOutputParameter:\n                producerTask: produce\n                outputParameterKey: Output\n          artifacts:\n            data:",
        "            text:\n              taskFinalStatus:\n                producerTask: produce\n          artifacts:\n            data:",
    );
    assert_err(
        &yaml,
        "root.dag.tasks.consume.inputs.parameters.text",
        "taskFinalStatus can only bind a TASK_FINAL_STATUS input",
    );
}

#[test]
fn root_must_be_a_dag() {
    let yaml = r#"
pipelineInfo: {name: x}
root:
  executorLabel: exec-a
deploymentSpec:
  executors:
    exec-a:
      container: {image: alpine}
"#;
    assert_err(yaml, "root", "must be a DAG");
}

#[test]
fn find_cycle_handles_long_chains() {
    let names: Vec<String> = (0..100_000).map(|i| format!("t{i:06}")).collect();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in names.windows(2) {
        graph.insert(&w[0], vec![&w[1]]);
    }
    assert!(find_cycle(&graph).is_none());
    graph.insert(&names[99_999], vec![&names[0]]);
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(100_001));
}
