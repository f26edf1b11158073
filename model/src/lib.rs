//! Shared vocabulary of the coordinator and the agent.
//!
//! Everything here is plain data with serde derives: it crosses the wire (inside the gRPC messages
//! as JSON documents) and the Raft log. No I/O, no clocks, no async.
//!
//! `clippy.toml` (the same list as `core`'s) names what that rules out.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod artifact;
pub mod env;
pub mod flags;
pub mod ids;
pub mod limits;
pub mod params;
pub mod resources;
pub mod step;
pub mod uri_policy;

pub use artifact::{
    artifact_prefix, artifact_uri, validate_artifact_name, ArtifactNameError, ArtifactRef,
};
pub use env::{is_reserved_env, RESERVED_ENV};
pub use ids::{AgentId, AttemptKey, RunId, TaskId};
pub use params::{ParamError, ParamType};
pub use resources::{
    GpuDevice, HostInventory, ResourceRequest, Taint, TaintEffect, TaintError, Toleration,
};
pub use step::{
    config_map_label, secret_label, validate_resource_name, validate_secret_key, volume_label,
    ConfigMapEnv, ConfigMapVolume, ContainerSpec, EmptyDirMount, EnvVar, NameError,
    OutputArtifactSpec, SecretEnv, SecretVolume, SharedMemory, StepInputs, StepOutcome,
    StepOutputs, StepSpec, VolumeMount, RESOURCE_LABEL_VALUE, WORKSPACE_PATH,
};
pub use uri_policy::UriPolicy;
