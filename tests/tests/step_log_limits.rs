//! Step log limits on a real coordinator and agent: a step that prints thousands of lines in a
//! burst, one very long line and more than its attempt may keep has its log thinned by the
//! coordinator's bounds (`--max-log-lines-per-sec`, `--max-log-burst-lines`,
//! `--max-log-line-bytes`, `--max-log-bytes-per-step`), and marker lines say what was dropped
//! or cut; the step itself succeeds.

use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};

/// One step: a long line, then 5000 short ones as fast as the shell prints them, then a
/// second of quiet and one last line.
const NOISY: &str = r#"
pipelineInfo: {name: noisy}
components:
  comp-noisy: {executorLabel: exec-noisy}
deploymentSpec:
  executors:
    exec-noisy:
      container:
        image: gantry/busybox:latest
        command: [sh, -c]
        args:
        - |
          head -c 3000 /dev/zero | tr '\0' x; echo
          i=0; while [ $i -lt 5000 ]; do echo "line $i"; i=$((i+1)); done
          sleep 1; echo "the end"
root:
  dag:
    tasks:
      noisy:
        componentRef: {name: comp-noisy}
        taskInfo: {name: noisy}
schemaVersion: 2.1.0
sdkVersion: kfp-2.16.1
"#;

fn run_noisy(env: &[(&str, &str)]) -> (Vec<String>, serde_json::Value) {
    let mut opts = ClusterOpts::loopback(1);
    opts.bootstrap_one = true;
    opts.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut c = Cluster::start(opts).unwrap();
    c.start_agent("agent-1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("noisy.yaml");
    std::fs::write(&file, NOISY).unwrap();
    let run_id = cli.submit(&file, &[]).unwrap();
    let run = cli.wait_finished(&run_id, Duration::from_secs(120));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
    let logs = cli.run(&["run", "logs", &run_id, "--task", "noisy"]).stdout;
    let lines = logs
        .lines()
        .filter(|l| {
            l.contains("line ")
                || l.contains("xxx")
                || l.contains("[gantry")
                || l.contains("the end")
        })
        .map(str::to_string)
        .collect();
    (lines, run)
}

#[test]
fn a_noisy_step_is_thinned_and_the_markers_say_so() {
    let (lines, _) = run_noisy(&[
        ("GANTRY_MAX_LOG_LINE_BYTES", "1000"),
        ("GANTRY_MAX_LOG_LINES_PER_SEC", "100"),
        ("GANTRY_MAX_LOG_BURST_LINES", "200"),
        ("GANTRY_MAX_LOG_BYTES_PER_STEP", "1000000"),
    ]);
    let all = lines.join("\n");
    let long = lines.iter().find(|l| l.contains("xxx")).expect(&all);
    assert!(
        long.len() <= 1100,
        "the long line was not cut: {} bytes",
        long.len()
    );
    assert!(
        long.contains("[gantry: line cut, it had 3000 bytes]"),
        "{long}"
    );
    let kept = lines.iter().filter(|l| l.contains("line ")).count();
    // The burst (200, the long line among them) plus 100 a second while the loop runs: far
    // fewer than the 5000 printed, however fast this machine prints.
    assert!(kept < 2000, "{kept} of 5000 lines kept\n{all}");
    assert!(
        kept >= 150,
        "{kept} lines kept: the burst should pass\n{all}"
    );
    let marker = lines
        .iter()
        .find(|l| l.contains("line(s) dropped here"))
        .expect(&all);
    assert!(marker.contains("more than 100 lines a second"), "{marker}");
    assert!(
        all.contains("the end"),
        "the line after the quiet second must pass\n{all}"
    );
}

#[test]
fn a_step_log_stops_at_its_cap_with_one_marker() {
    let (lines, _) = run_noisy(&[
        ("GANTRY_MAX_LOG_LINE_BYTES", "4000"),
        ("GANTRY_MAX_LOG_BYTES_PER_STEP", "20000"),
    ]);
    let all = lines.join("\n");
    let markers: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("log reached 20000 bytes"))
        .collect();
    assert_eq!(markers.len(), 1, "{all}");
    assert!(
        !all.contains("the end"),
        "a line after the cap was kept\n{all}"
    );
    let kept = lines.iter().filter(|l| l.contains("line ")).count();
    // 3001 bytes of long line, then lines of 6 to 9 bytes up to 20000.
    assert!((1500..3000).contains(&kept), "{kept} lines kept\n{all}");
}
