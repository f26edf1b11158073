//! Host capacity and step resource requests.

use serde::{Deserialize, Serialize};

/// What a step asks for, from the IR's `resources` of its container executor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// CPU cores the container may use at most (Docker CPU quota).
    pub cpu_limit: Option<f64>,
    /// CPU cores the scheduler reserves; falls back to the limit.
    pub cpu_request: Option<f64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    pub accelerator_type: Option<String>,
    #[serde(default)]
    pub accelerator_count: u32,
}

impl ResourceRequest {
    /// CPU cores reserved on the agent for placement.
    pub fn cpu_reserved(&self) -> f64 {
        self.cpu_request.or(self.cpu_limit).unwrap_or(0.0)
    }

    /// Memory reserved on the agent for placement.
    pub fn memory_reserved(&self) -> u64 {
        self.memory_request_bytes
            .or(self.memory_limit_bytes)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub memory_free_bytes: u64,
    #[serde(default = "yes")]
    pub healthy: bool,
}

fn yes() -> bool {
    true
}

/// What an agent reports about its host when it registers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInventory {
    pub hostname: String,
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
    #[serde(default)]
    pub driver_version: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    /// `docker` or `process`.
    #[serde(default)]
    pub runtime: String,
}
