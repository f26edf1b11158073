//! A committed run survives `kill -9` of the coordinator: after a restart on the same data
//! directory the run completes, no recorded step result is lost and no finished step runs
//! again.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_tests::*;

struct Node {
    port: u16,
    data: std::path::PathBuf,
    root: String,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
}

impl Node {
    fn start(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("gantry-coordinator"))
            .arg("--bootstrap")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--artifact-root", &self.root])
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "coordinator did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Proc {
            child,
            name: "coordinator".into(),
        }
    }
}

#[test]
fn kill_9_of_the_coordinator_mid_run_loses_nothing() {
    ensure_images().unwrap();
    let s3 = S3::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node {
        port: free_port(),
        data: dir.path().join("coordinator"),
        root: s3.artifact_root("restart"),
        env: s3.env(),
        log: dir.path().join("coordinator.log"),
    };
    let mut coordinator = node.start();
    let endpoint = format!("http://127.0.0.1:{}", node.port);
    let agent_log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Proc {
        child: Command::new(bin("gantry-agent"))
            .args([
                "--coordinator",
                &endpoint,
                "--agent-id",
                "agent-1",
                "--runtime",
                "docker",
            ])
            .arg("--work-dir")
            .arg(dir.path().join("agent"))
            .envs(s3.env())
            .stdout(Stdio::null())
            .stderr(agent_log)
            .spawn()
            .unwrap(),
        name: "agent".into(),
    };
    let cli = Cli {
        endpoint: endpoint.clone(),
        env: vec![],
    };
    cli.wait_for_agents(1).unwrap();
    let file = compile_pipeline("sleeper", dir.path()).unwrap();
    let run_id = cli.submit(&file, &["seconds=3"]).unwrap();

    // Kill once the first step's result is recorded and the second step is running.
    let before = cli.wait_until(&run_id, Duration::from_secs(120), |run| {
        task(run, "nap")["state"] == "SUCCEEDED" && task(run, "nap-2")["state"] == "RUNNING"
    });
    coordinator.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let _coordinator = node.start();

    let after = cli.wait_finished(&run_id, Duration::from_secs(120));
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert_eq!(after["state"], "SUCCEEDED", "{after:#}\n{log}");
    // the result recorded before the crash is still there, unchanged
    assert_eq!(
        task(&after, "nap")["outputs"],
        task(&before, "nap")["outputs"]
    );
    assert_eq!(
        task(&after, "nap")["finished_at"],
        task(&before, "nap")["finished_at"]
    );
    for t in after["tasks"].as_array().unwrap() {
        assert_eq!(t["attempts"], 1, "a step ran twice: {t:#}");
        assert_eq!(t["state"], "SUCCEEDED");
    }
    assert_eq!(
        task(&after, "nap-3")["outputs"]["parameters"]["done"],
        serde_json::json!("a")
    );
}
