//! What a pipeline may not ask of the hosts that run it, refused at submit: environment
//! variables the agent reserves, and importer URIs outside the cluster's [`UriPolicy`].
//!
//! The reserved names and why: [`gantry_model::env`].

use crate::ir::{ExecutorSpec, Implementation, ImporterUri, PipelineSpec, UriPolicy};

pub use gantry_model::env::{is_reserved_env, RESERVED_ENV};

/// A pipeline that asks the hosts for what they refuse: one line per problem, naming the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct HostRefusal {
    pub problems: Vec<String>,
}

/// Refuses, at submit, reserved variables and importer constant URIs `policy` does not allow.
/// (An importer whose URI comes from a parameter is checked when it runs.)
pub fn check_host_rules(p: &PipelineSpec, policy: &UriPolicy) -> Result<(), HostRefusal> {
    let mut problems = Vec::new();
    for comp in std::iter::once(&p.root).chain(p.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            let Some(Implementation::Executor(label)) =
                p.component(&t.component).map(|c| &c.implementation)
            else {
                continue;
            };
            match p.executors.get(label) {
                Some(ExecutorSpec::Container(c)) => {
                    for (name, _) in c.env.iter().filter(|(n, _)| is_reserved_env(n)) {
                        problems.push(format!(
                            "task {:?}: environment variable {name} is reserved ({RESERVED_ENV})",
                            t.name
                        ));
                    }
                    // Malformed platform settings are refused elsewhere, with their reason.
                    if let Ok(needs) = super::platform::executor_needs(p, label) {
                        for s in needs.secret_env.iter().filter(|s| is_reserved_env(&s.env)) {
                            problems.push(format!(
                                "task {:?}: environment variable {} (from secret {:?}) is \
                                 reserved ({RESERVED_ENV})",
                                t.name, s.env, s.secret
                            ));
                        }
                        for c in needs
                            .config_map_env
                            .iter()
                            .filter(|c| is_reserved_env(&c.env))
                        {
                            problems.push(format!(
                                "task {:?}: environment variable {} (from config map {:?}) is \
                                 reserved ({RESERVED_ENV})",
                                t.name, c.env, c.config_map
                            ));
                        }
                        for (env, _) in needs.field_env.iter().filter(|(e, _)| is_reserved_env(e)) {
                            problems.push(format!(
                                "task {:?}: environment variable {env} (from a pod field) is \
                                 reserved ({RESERVED_ENV})",
                                t.name
                            ));
                        }
                    }
                }
                Some(ExecutorSpec::Importer(i)) => {
                    if let ImporterUri::Constant(uri) = &i.artifact_uri {
                        if let Err(why) = policy.check(uri) {
                            problems.push(format!("importer {:?}: {why}", t.name));
                        }
                    }
                }
                None => {}
            }
        }
    }
    problems.sort();
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HostRefusal { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_pipeline;

    fn pipeline(env: &str, importer_uri: &str) -> PipelineSpec {
        let yaml = format!(
            r#"
pipelineInfo: {{name: p}}
components:
  comp-step:
    executorLabel: exec-step
  comp-imp:
    executorLabel: exec-imp
    outputDefinitions:
      artifacts:
        artifact: {{artifactType: {{schemaTitle: system.Dataset, schemaVersion: 0.0.1}}}}
deploymentSpec:
  executors:
    exec-step:
      container:
        image: python:3.11
        command: [python, -c, "print(1)"]
        env: [{env}]
    exec-imp:
      importer:
        artifactUri: {{constant: "{importer_uri}"}}
        typeSchema: {{schemaTitle: system.Dataset, schemaVersion: 0.0.1}}
root:
  dag:
    tasks:
      step:
        taskInfo: {{name: step}}
        componentRef: {{name: comp-step}}
      imp:
        taskInfo: {{name: imp}}
        componentRef: {{name: comp-imp}}
"#
        );
        parse_pipeline(&yaml).expect("valid pipeline")
    }

    fn policy() -> UriPolicy {
        UriPolicy::new("s3://art/root", vec!["file:///data".into()], vec![]).unwrap()
    }

    #[test]
    fn reserved_variables_are_refused_naming_variable_and_task() {
        for name in [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
            "CUDA_VISIBLE_DEVICES",
            "GANTRY_ATTEMPT",
        ] {
            let p = pipeline(&format!("{{name: {name}, value: all}}"), "s3://art/root/x");
            let e = check_host_rules(&p, &policy()).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "task \"step\": environment variable {name} is reserved (NVIDIA_*, \
                     CUDA_VISIBLE_DEVICES and GANTRY_* are set by the agent)"
                )
            );
        }
        for name in ["CUDA_HOME", "MY_NVIDIA_THING", "LD_PRELOAD", "PATH"] {
            let p = pipeline(&format!("{{name: {name}, value: x}}"), "s3://art/root/x");
            assert!(check_host_rules(&p, &policy()).is_ok(), "{name}");
        }
    }

    #[test]
    fn importer_constants_outside_the_policy_are_refused() {
        let p = pipeline("", "file:///etc/shadow");
        assert_eq!(
            check_host_rules(&p, &policy()).unwrap_err().to_string(),
            "importer \"imp\": file:///etc/shadow is outside the import roots (file:///data; see \
             --import-root)"
        );
        assert!(check_host_rules(&pipeline("", "file:///data/in.csv"), &policy()).is_ok());
        assert!(check_host_rules(&pipeline("", "gs://b/x"), &policy()).is_ok());
    }
}
