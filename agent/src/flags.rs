//! The flags that say how this host runs steps and what they may read, shared by
//! `gantry-agent` and `gantry dev`.

use crate::access::UriAccess;
use crate::runtime::{
    parse_byte_size, StepIsolation, StepNetwork, DEFAULT_PIDS_LIMIT, DEFAULT_STEP_CAPS,
};

/// Longest list of capabilities, import roots or buckets taken from flags.
pub const MAX_FLAG_ITEMS: usize = 64;

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StepFlags {
    /// A file:///DIR steps may read input artifacts from (importers, `run submit -a`), besides
    /// the run's artifact root (repeatable; none by default). Checked after resolving symbolic
    /// links. The coordinator must allow the same roots.
    #[arg(
        long = "import-root",
        env = "GANTRY_IMPORT_ROOTS",
        value_delimiter = ',',
        value_name = "file:///DIR"
    )]
    pub import_roots: Vec<String>,
    /// An S3 bucket steps may read input artifacts from, besides the run's artifact root
    /// (repeatable; none by default).
    #[arg(
        long = "allow-bucket",
        env = "GANTRY_ALLOW_BUCKETS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allow_buckets: Vec<String>,
    /// The network of step containers: bridge (Docker's default bridge: egress to whatever
    /// the host routes to, package indexes and object stores included), none (loopback
    /// only), or host (the host's own network stack).
    #[arg(long, env = "GANTRY_STEP_NETWORK", value_enum, default_value_t = StepNetwork::Bridge)]
    pub step_network: StepNetwork,
    /// Capabilities step containers keep; all others are dropped (repeatable; replaces the
    /// default set CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, KILL,
    /// NET_BIND_SERVICE; `none` for no capability at all).
    #[arg(long = "step-cap-add", value_name = "CAP", value_delimiter = ',', default_values_t = DEFAULT_STEP_CAPS.map(String::from))]
    pub step_cap_add: Vec<String>,
    /// Most processes and threads in one step container (0: no limit).
    #[arg(long, env = "GANTRY_STEP_PIDS_LIMIT", default_value_t = DEFAULT_PIDS_LIMIT)]
    pub step_pids_limit: i64,
    /// Run step containers with no-new-privileges (setuid binaries gain nothing); pass
    /// `--step-no-new-privileges=false` to turn it off.
    #[arg(long, env = "GANTRY_STEP_NO_NEW_PRIVILEGES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub step_no_new_privileges: bool,
    /// Memory limit of a step whose pipeline sets none (`4GiB`, `512Mi`; 0: no limit).
    #[arg(
        long,
        env = "GANTRY_DEFAULT_STEP_MEMORY",
        default_value = "4GiB",
        value_name = "SIZE"
    )]
    pub default_step_memory: String,
    /// What steps read as their namespace (kfp-kubernetes `use_field_path_as_env` of
    /// `metadata.namespace`).
    #[arg(
        long,
        env = "GANTRY_NAMESPACE",
        default_value = "gantry",
        value_name = "NAME"
    )]
    pub namespace: String,
    /// Config map store for kfp-kubernetes `use_config_map_as_env` and
    /// `use_config_map_as_volume`: DIR/<config map>/<key> files; each config map is advertised
    /// as the label configmap.gantry.dev/<name>=true.
    #[arg(long, env = "GANTRY_CONFIG_MAPS_DIR", value_name = "DIR")]
    pub config_maps_dir: Option<std::path::PathBuf>,
}

impl Default for StepFlags {
    fn default() -> Self {
        StepFlags {
            import_roots: Vec::new(),
            allow_buckets: Vec::new(),
            step_network: StepNetwork::Bridge,
            step_cap_add: DEFAULT_STEP_CAPS.map(String::from).to_vec(),
            step_pids_limit: DEFAULT_PIDS_LIMIT,
            step_no_new_privileges: true,
            default_step_memory: "4GiB".into(),
            namespace: "gantry".into(),
            config_maps_dir: None,
        }
    }
}

/// A bad step flag, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StepFlagError(pub String);

impl StepFlags {
    /// How Docker runs steps.
    pub fn isolation(&self) -> Result<StepIsolation, StepFlagError> {
        let err = |m: String| StepFlagError(m);
        if self.step_cap_add.len() > MAX_FLAG_ITEMS {
            return Err(err(format!(
                "--step-cap-add: at most {MAX_FLAG_ITEMS} capabilities"
            )));
        }
        let mut caps = Vec::new();
        for c in &self.step_cap_add {
            let c = c.trim().to_ascii_uppercase();
            if c == "NONE" {
                continue;
            }
            let c = c.strip_prefix("CAP_").unwrap_or(&c).to_string();
            if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_') {
                return Err(err(format!(
                    "--step-cap-add {c:?}: expected a capability name such as CHOWN or \
                     NET_BIND_SERVICE, or none"
                )));
            }
            if c == "ALL" {
                return Err(err(
                    "--step-cap-add ALL would give steps every capability; name them one by one"
                        .into(),
                ));
            }
            caps.push(c);
        }
        let pids_limit = match self.step_pids_limit {
            0 => None,
            n if n > 0 => Some(n),
            n => {
                return Err(err(format!(
                    "--step-pids-limit {n}: expected a positive number, or 0 for no limit"
                )))
            }
        };
        let default_memory_bytes = parse_byte_size(&self.default_step_memory)
            .map_err(|e| err(format!("--default-step-memory: {e}")))?;
        Ok(StepIsolation {
            no_new_privileges: self.step_no_new_privileges,
            cap_add: caps,
            pids_limit,
            default_memory_bytes,
        })
    }

    /// Where inputs may come from.
    pub fn access(&self) -> Result<UriAccess, StepFlagError> {
        if self.import_roots.len() > MAX_FLAG_ITEMS || self.allow_buckets.len() > MAX_FLAG_ITEMS {
            return Err(StepFlagError(format!(
                "--import-root, --allow-bucket: at most {MAX_FLAG_ITEMS} each"
            )));
        }
        UriAccess::new(self.import_roots.clone(), self.allow_buckets.clone())
            .map_err(|e| StepFlagError(e.to_string()))
    }

    /// The Docker network mode steps get; `none` and `host` need the Docker runtime (the
    /// process runtime's steps share the host's network whatever is asked).
    pub fn network(&self, runtime_name: &str) -> Result<Option<String>, StepFlagError> {
        if runtime_name == "process" && self.step_network != StepNetwork::Bridge {
            return Err(StepFlagError(format!(
                "--step-network {}: the process runtime cannot change a step's network; run \
                 the agent with --runtime docker",
                self.step_network.mode()
            )));
        }
        Ok(Some(self.step_network.mode().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: StepFlags,
    }

    fn parse(args: &[&str]) -> StepFlags {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("parses")
            .f
    }

    #[test]
    fn defaults_isolate_and_match_default() {
        let f = parse(&[]);
        assert_eq!(f, StepFlags::default());
        assert_eq!(f.isolation().unwrap(), StepIsolation::default());
        assert_eq!(f.network("docker").unwrap().as_deref(), Some("bridge"));
    }

    #[test]
    fn each_setting_can_be_changed_and_bad_values_are_named() {
        let f = parse(&[
            "--step-cap-add",
            "cap_chown",
            "--step-cap-add",
            "KILL",
            "--step-pids-limit",
            "0",
            "--step-no-new-privileges=false",
            "--default-step-memory",
            "0",
            "--step-network",
            "none",
        ]);
        let iso = f.isolation().unwrap();
        assert_eq!(iso.cap_add, ["CHOWN", "KILL"]);
        assert_eq!(iso.pids_limit, None);
        assert!(!iso.no_new_privileges);
        assert_eq!(iso.default_memory_bytes, None);
        assert_eq!(f.network("docker").unwrap().as_deref(), Some("none"));
        assert!(f
            .network("process")
            .unwrap_err()
            .to_string()
            .contains("--runtime docker"));
        assert!(parse(&["--step-cap-add", "none"])
            .isolation()
            .unwrap()
            .cap_add
            .is_empty());
        for (args, want) in [
            (&["--step-cap-add", "ALL"][..], "--step-cap-add ALL"),
            (&["--step-cap-add", "a b"][..], "--step-cap-add"),
            (&["--step-pids-limit=-1"][..], "--step-pids-limit -1"),
            (
                &["--default-step-memory", "lots"][..],
                "--default-step-memory",
            ),
        ] {
            let e = parse(args).isolation().unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = parse(&["--import-root", "/data"])
            .access()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--import-root"), "{e}");
    }
}
