//! GPU placement across a fleet: a coordinator process and four agent processes, each loading the
//! stand-in NVML library (tests/nvml/standin_nvml.c) through the agent's real NVML path, with
//! different GPU sets. Steps asking for 1, 2 and 4 GPUs of given models land on fitting agents
//! and see exactly their GPUs, by UUID; a GPU that NVML reports in error while the agent runs is
//! reported and gets no new steps.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::*;
use serde_json::Value;

fn gpu_lines(prefix: &str, model: &str, n: usize, lost: &[usize]) -> String {
    (0..n)
        .map(|i| {
            let flags = if lost.contains(&i) { "|lost" } else { "" };
            format!("GPU-{prefix}-{i}|{model}|40960{flags}\n")
        })
        .collect()
}

fn start_agent(c: &mut Cluster, id: &str, gpus_file: &Path, lib: &Path) {
    let env = vec![
        ("GANTRY_NVML_LIBRARY".to_string(), lib.display().to_string()),
        (
            "GANTRY_STANDIN_GPUS_FILE".to_string(),
            gpus_file.display().to_string(),
        ),
    ];
    c.start_agent_with(id, &["--label", &format!("host={id}")], &env)
        .expect("agent starts");
}

fn agents(cli: &Cli) -> Vec<Value> {
    cli.run(&["agent", "list", "-o", "json"])
        .json()
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn visible(run: &Value, name: &str) -> (String, Vec<String>) {
    let t = task(run, name);
    let seen = t["outputs"]["parameters"]["gpus"].as_str().unwrap_or("");
    let uuids = if seen == "void" {
        vec![]
    } else {
        seen.split(',').map(str::to_string).collect()
    };
    (t["agent"].as_str().unwrap_or("").to_string(), uuids)
}

#[test]
fn gpu_steps_land_on_fitting_agents_with_distinct_uuids_and_failed_gpus_are_avoided() {
    let lib = standin_nvml();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let mut c = Cluster::start(ClusterOpts::new(1, &root)).expect("coordinator");
    c.wait_leader(&[1], Duration::from_secs(20))
        .expect("leader");

    let hosts = [
        ("t4-host", gpu_lines("t", "Tesla T4", 1, &[])),
        ("a100-host", gpu_lines("a", "NVIDIA A100-SXM4-40GB", 4, &[])),
        // GPU-h-0 is in error from the start.
        (
            "h100-host",
            gpu_lines("h", "NVIDIA H100 80GB HBM3", 8, &[0]),
        ),
        ("cpu-host", String::new()),
    ];
    for (id, gpus) in &hosts {
        let file = dir.path().join(format!("{id}.gpus"));
        std::fs::write(&file, gpus).unwrap();
        start_agent(&mut c, id, &file, &lib);
    }
    let cli = c.cli();
    cli.wait_for_agents(4).expect("four agents");
    let list = agents(&cli);
    let h100 = list.iter().find(|a| a["agent_id"] == "h100-host").unwrap();
    assert_eq!(h100["gpus"].as_array().unwrap().len(), 8, "{h100:#}");
    assert_eq!(h100["gpus"][0]["healthy"], false, "{h100:#}");
    assert_eq!(h100["gpus"][1]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(h100["labels"]["host"], "h100-host");

    let out = tempfile::tempdir().unwrap();
    let file = compile_pipeline("gpus", out.path()).unwrap();
    let (code, run) = cli.submit_wait(&file, &[]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", c.logs_tail());

    let (agent, seen) = visible(&run, "visible");
    assert_eq!(
        (agent.as_str(), seen.len()),
        ("cpu-host", 0),
        "CPU step keeps off GPU hosts"
    );
    let (agent, t4) = visible(&run, "visible-2");
    assert_eq!(
        (agent.as_str(), t4),
        ("t4-host", vec!["GPU-t-0".to_string()])
    );
    let (agent, a100) = visible(&run, "visible-4");
    assert_eq!(agent, "a100-host");
    assert_eq!(a100.iter().collect::<BTreeSet<_>>().len(), 4, "{a100:?}");
    let (agent2, two) = visible(&run, "visible-3");
    let (agent4, four) = visible(&run, "visible-5");
    assert_eq!(
        (agent2.as_str(), agent4.as_str()),
        ("h100-host", "h100-host")
    );
    assert_eq!((two.len(), four.len()), (2, 4));
    let all: BTreeSet<&String> = two.iter().chain(&four).collect();
    assert_eq!(
        all.len(),
        6,
        "the H100 steps overlapped on distinct GPUs: {two:?} {four:?}"
    );
    assert!(
        !all.contains(&"GPU-h-0".to_string()),
        "a GPU in error was given out"
    );

    // A GPU fails while the agent runs: the agent reports it and it gets no new step.
    std::fs::write(
        dir.path().join("h100-host.gpus"),
        gpu_lines("h", "NVIDIA H100 80GB HBM3", 8, &[0, 1, 2, 3, 4]),
    )
    .unwrap();
    eventually(Duration::from_secs(30), || {
        let list = agents(&cli);
        let h = list.iter().find(|a| a["agent_id"] == "h100-host").cloned();
        let unhealthy = h
            .as_ref()
            .and_then(|a| a["gpus"].as_array().cloned())
            .map(|g| g.iter().filter(|g| g["healthy"] == false).count())
            .unwrap_or(0);
        if unhealthy == 5 {
            Ok(())
        } else {
            Err(format!("the failed GPUs were not reported: {h:#?}"))
        }
    });
    // Three healthy H100s remain: the 2-GPU step fits, the 4-GPU one must wait.
    let run_id = cli.submit(&file, &["seconds=1"]).unwrap();
    let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "visible-3")["state"] == "SUCCEEDED"
    });
    let (_, two) = visible(&run, "visible-3");
    assert!(
        two.iter()
            .all(|u| ["GPU-h-5", "GPU-h-6", "GPU-h-7"].contains(&u.as_str())),
        "{two:?}"
    );
    assert_eq!(task(&run, "visible-5")["state"], "READY", "{run:#}");
    let run = cli.wait_until(&run_id, Duration::from_secs(30), |r| {
        task(r, "visible-5")["waiting_reason"]
            .as_str()
            .is_some_and(|w| {
                w.contains("h100-host: 3 of the 4 NVIDIA_H100_80GB GPU(s) free, 5 unhealthy")
            })
    });
    assert_eq!(
        task(&run, "visible-5")["state"],
        "READY",
        "it never fits on 3 healthy GPUs"
    );
    cli.run(&["run", "cancel", &run_id]);
}
