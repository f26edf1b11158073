//! Host capacity and step resource requests.

use std::collections::BTreeMap;

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
    /// Agent labels the step needs, all of them (kfp-kubernetes `add_node_selector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Agent taints the step accepts (kfp-kubernetes `add_toleration`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// What a taint keeps away: `NoSchedule` and `NoExecute` keep steps that do not tolerate it off
/// the agent; `PreferNoSchedule` only ranks the agent last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NoSchedule" => Some(Self::NoSchedule),
            "PreferNoSchedule" => Some(Self::PreferNoSchedule),
            "NoExecute" => Some(Self::NoExecute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }
}

/// A mark on an agent (from its configuration) that steps must tolerate to land there, as in
/// Kubernetes: `key=value:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: TaintEffect,
}

/// Why text is not a taint; each variant holds the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaintError {
    #[error("taint {0:?} is not KEY[=VALUE]:EFFECT")]
    Syntax(String),
    #[error("taint {0:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute")]
    UnknownEffect(String),
    #[error("taint {0:?} has an empty key")]
    EmptyKey(String),
}

impl Taint {
    /// `key=value:Effect` or `key:Effect`.
    pub fn parse(s: &str) -> Result<Self, TaintError> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| TaintError::Syntax(s.to_string()))?;
        let effect =
            TaintEffect::parse(effect).ok_or_else(|| TaintError::UnknownEffect(s.to_string()))?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(TaintError::EmptyKey(s.to_string()));
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
        })
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect.as_str())
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect.as_str())
        }
    }
}

/// A step's acceptance of taints, with Kubernetes' matching rules: an empty key with `Exists`
/// tolerates every taint; `Exists` ignores the value; no effect matches every effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    #[serde(default)]
    pub key: String,
    /// `Equal` (the default) or `Exists`.
    #[serde(default)]
    pub exists: bool,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != t.effect) {
            return false;
        }
        if self.key.is_empty() {
            return self.exists;
        }
        self.key == t.key && (self.exists || self.value == t.value)
    }
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
    /// GPU utilisation in percent, when NVML reports it.
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    /// Whether MIG mode is on (NVML); `None` where the GPU has no MIG.
    #[serde(default)]
    pub mig_enabled: Option<bool>,
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
    /// CUDA driver API version, e.g. `12.4`.
    #[serde(default)]
    pub cuda_version: Option<String>,
    /// Bytes free on the file system of the agent's work directory.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    #[serde(default)]
    pub os: Option<String>,
    /// `docker` or `process`.
    #[serde(default)]
    pub runtime: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(s: &str) -> Taint {
        Taint::parse(s).unwrap()
    }

    #[test]
    fn taints_parse_and_print() {
        assert_eq!(
            taint("gpu=a100:NoSchedule").to_string(),
            "gpu=a100:NoSchedule"
        );
        assert_eq!(taint("dedicated:PreferNoSchedule").value, "");
        for bad in ["gpu=a100", "gpu:Never", "=x:NoSchedule"] {
            assert!(Taint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tolerations_follow_kubernetes_rules() {
        let t = taint("gpu=a100:NoSchedule");
        let equal = |k: &str, v: &str| Toleration {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        assert!(equal("gpu", "a100").tolerates(&t));
        assert!(!equal("gpu", "h100").tolerates(&t));
        assert!(!equal("zone", "a100").tolerates(&t));
        let exists = Toleration {
            key: "gpu".into(),
            exists: true,
            ..Default::default()
        };
        assert!(exists.tolerates(&t));
        let everything = Toleration {
            exists: true,
            ..Default::default()
        };
        assert!(everything.tolerates(&t));
        let other_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..equal("gpu", "a100")
        };
        assert!(!other_effect.tolerates(&t));
    }
}
