//! A simulated agent's report: what a step that succeeded sends, built from the outputs its
//! spec declares. For tests and benches that drive the engine or a coordinator without running
//! anything.

use gantry_model::{ArtifactRef, HostInventory, ParamType, StepOutcome, StepSpec};
use serde_json::Value;

/// `Succeeded` with every output `spec` declares: each parameter the value `value(name, type)`
/// gives, each artifact one at the URI the spec assigns it, without metadata.
pub fn success(spec: &StepSpec, mut value: impl FnMut(&str, ParamType) -> Value) -> StepOutcome {
    let parameters = spec
        .outputs
        .parameters
        .iter()
        .map(|(name, t)| (name.clone(), value(name, *t)))
        .collect();
    let artifacts = spec
        .outputs
        .artifacts
        .iter()
        .map(|(name, out)| {
            let a = ArtifactRef {
                name: name.clone(),
                uri: out.uri.clone(),
                schema_title: out.schema_title.clone(),
                schema_version: out.schema_version.clone(),
                metadata: Default::default(),
            };
            (name.clone(), vec![a])
        })
        .collect();
    StepOutcome::Succeeded {
        parameters,
        artifacts,
    }
}

/// The plainest value of a type: `""`, `0`, `false`, `[]`, `{}`.
pub fn zero(t: ParamType) -> Value {
    match t {
        ParamType::String => Value::String(String::new()),
        ParamType::NumberInteger | ParamType::NumberDouble => Value::from(0),
        ParamType::Boolean => Value::Bool(false),
        ParamType::List => Value::Array(Vec::new()),
        ParamType::Struct | ParamType::TaskFinalStatus => Value::Object(Default::default()),
    }
}

/// A simulated host: `cpus` CPUs, `memory` bytes, no GPU.
pub fn inventory(hostname: &str, cpus: f64, memory: u64) -> HostInventory {
    HostInventory {
        hostname: hostname.to_string(),
        cpu_cores: cpus,
        memory_bytes: memory,
        gpus: Vec::new(),
        driver_version: None,
        cuda_version: None,
        disk_free_bytes: None,
        os: Some("linux".into()),
        runtime: "simulated".into(),
    }
}
