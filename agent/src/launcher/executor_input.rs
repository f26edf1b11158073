//! The executor input: what KFP's launcher hands a component as `{{$}}`, built from a
//! placeholder context whose inputs and outputs are filled in.

use serde_json::{json, Map, Value};

use crate::placeholders::{self, StepArtifact};

/// The executor input (KFP's `ExecutorInput` in protobuf JSON, camelCase) of a context whose
/// inputs and outputs are filled in.
pub fn executor_input_json(ctx: &placeholders::Context) -> Value {
    let in_artifacts: Map<String, Value> = ctx
        .input_artifacts
        .iter()
        .map(|(name, list)| {
            let items: Vec<Value> = list.iter().map(StepArtifact::to_json).collect();
            (name.clone(), json!({ "artifacts": items }))
        })
        .collect();
    let out_params: Map<String, Value> = ctx
        .output_parameter_files
        .iter()
        .map(|(name, path)| (name.clone(), json!({ "outputFile": path })))
        .collect();
    let out_artifacts: Map<String, Value> = ctx
        .output_artifacts
        .iter()
        .map(|(name, a)| (name.clone(), json!({ "artifacts": [a.to_json()] })))
        .collect();
    json!({
        "inputs": {
            "parameterValues": ctx.input_parameters,
            "artifacts": in_artifacts,
        },
        "outputs": {
            "parameters": out_params,
            "artifacts": out_artifacts,
            "outputFile": ctx.output_file,
        },
    })
}
