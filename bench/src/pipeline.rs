//! `gantry-bench` without a subcommand: a 200-step chain, 200 independent steps and a
//! 1 000-iteration ParallelFor of no-op container components (`true`) through the whole path —
//! commit, placement, dispatch, launch, report — on an embedded cluster (`gantry dev`'s) with
//! the process runtime. Prints a table. Also the pipeline IR the other benches submit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_cli::dev::{start_embedded, Embedded, RuntimeChoice};
use gantry_cli::exit::CliError;
use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::poll_async;

use crate::table::{pct, table};

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// Steps in each pipeline.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Iterations of the ParallelFor workload (no-op steps, no parallelism limit).
    #[arg(long, default_value_t = 1000)]
    pub loop_iterations: usize,
    /// Address for the embedded coordinator (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

/// IR of `steps` no-op container tasks, chained or independent, as kfp writes a container
/// component with `command=["true"]`.
pub fn noop_pipeline(name: &str, steps: usize, chained: bool) -> String {
    container_pipeline(name, steps, chained, &["true"])
}

/// IR of a `dsl.ParallelFor` over `0..iterations` whose body is one no-op container task, as
/// kfp writes `with dsl.ParallelFor([0, 1, ...]) as x: noop(x=x)`.
pub fn loop_pipeline(name: &str, iterations: usize) -> String {
    loop_pipeline_with_cpu(name, iterations, None)
}

/// [`loop_pipeline`] whose task asks for `cpu` (`set_cpu_request`), if given.
pub fn loop_pipeline_with_cpu(name: &str, iterations: usize, cpu: Option<&str>) -> String {
    let items: Vec<String> = (0..iterations).map(|i| i.to_string()).collect();
    let resources = cpu
        .map(|c| format!("\n        resources:\n          resourceCpuRequest: '{c}'"))
        .unwrap_or_default();
    format!(
        "components:
  comp-for-loop-1:
    dag:
      tasks:
        noop:
          componentRef:
            name: comp-noop
          inputs:
            parameters:
              x:
                componentInputParameter: pipelinechannel--loop-item-param-1
          taskInfo:
            name: noop
    inputDefinitions:
      parameters:
        pipelinechannel--loop-item-param-1:
          parameterType: NUMBER_INTEGER
  comp-noop:
    executorLabel: exec-noop
    inputDefinitions:
      parameters:
        x:
          parameterType: NUMBER_INTEGER
deploymentSpec:
  executors:
    exec-noop:
      container:
        command:
        - 'true'
        image: gantry/busybox:latest{resources}
pipelineInfo:
  name: {name}
root:
  dag:
    tasks:
      for-loop-1:
        componentRef:
          name: comp-for-loop-1
        parameterIterator:
          itemInput: pipelinechannel--loop-item-param-1
          items:
            raw: '[{}]'
        taskInfo:
          name: for-loop-1
schemaVersion: 2.1.0
sdkVersion: kfp-2.16.1
",
        items.join(", ")
    )
}

/// Resident memory of this process in bytes (Linux), for the memory figures.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// IR of `steps` tasks of one container component running `command`, chained or independent.
pub fn container_pipeline(name: &str, steps: usize, chained: bool, command: &[&str]) -> String {
    let mut y = String::new();
    y.push_str("components:\n  comp-noop:\n    executorLabel: exec-noop\n");
    y.push_str("deploymentSpec:\n  executors:\n    exec-noop:\n      container:\n");
    y.push_str("        command:\n");
    for c in command {
        // YAML single quotes: a quote inside is written twice.
        y.push_str(&format!("        - '{}'\n", c.replace('\'', "''")));
    }
    y.push_str("        image: gantry/busybox:latest\n");
    y.push_str(&format!(
        "pipelineInfo:\n  name: {name}\nroot:\n  dag:\n    tasks:\n"
    ));
    for i in 0..steps {
        y.push_str(&format!(
            "      step-{i}:\n        componentRef:\n          name: comp-noop\n        taskInfo:\n          name: step-{i}\n"
        ));
        if chained && i > 0 {
            y.push_str(&format!(
                "        dependentTasks:\n        - step-{}\n",
                i - 1
            ));
        }
    }
    y.push_str("schemaVersion: 2.1.0\nsdkVersion: kfp-2.16.1\n");
    y
}

/// Far beyond any bench run: a slow machine makes a slow figure, not an error.
const RUN_LIMIT: Duration = Duration::from_secs(3600);

fn is_over(run: &pb::Run) -> bool {
    run.state().is_terminal()
}

struct Figures {
    label: String,
    steps: usize,
    wall: Duration,
    ready_to_assigned: Vec<i64>,
    assigned_to_started: Vec<i64>,
    started_to_recorded: Vec<i64>,
}

async fn run_one(
    client: &mut RunServiceClient<tonic::transport::Channel>,
    label: &str,
    yaml: String,
    steps: usize,
) -> Result<Figures, CliError> {
    let t0 = Instant::now();
    let run_id = client
        .submit_run(pb::SubmitRunRequest {
            pipeline_yaml: yaml,
            parameters: Default::default(),
            request_id: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .run_id;
    // Ok(Err(_)): an error that ends the wait; Err(()): not over yet.
    let run = poll_async(RUN_LIMIT, Duration::from_millis(20), async || {
        let req = pb::GetRunRequest {
            run_id: run_id.clone(),
        };
        match client.get_run(req).await {
            Ok(r) if is_over(r.get_ref()) => Ok(Ok(r.into_inner())),
            Ok(_) => Err(()),
            Err(status) => Ok(Err(CliError::from(status))),
        }
    })
    .await
    .map_err(|()| {
        CliError::Unavailable(format!("run {run_id} did not end within {RUN_LIMIT:?}"))
    })??;
    let wall = t0.elapsed();
    if run.state() != pb::RunState::Succeeded {
        return Err(CliError::RunFailed(format!(
            "{run_id} ({}): {}",
            run.state().word(),
            run.error
        )));
    }
    Ok(Figures {
        label: label.to_string(),
        steps,
        wall,
        ready_to_assigned: Vec::new(),
        assigned_to_started: Vec::new(),
        started_to_recorded: Vec::new(),
    })
}

pub async fn run(args: PipelineArgs) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let dir = tempfile::tempdir().map_err(|e| CliError::Unavailable(e.to_string()))?;
    let e = start_embedded(
        args.listen,
        dir.path().to_path_buf(),
        RuntimeChoice::Process,
        None,
        "bench-agent".into(),
        Vec::new(),
        Default::default(),
    )
    .await?;
    let endpoint = format!("http://{}", e.server.addr);
    let mut client = RunServiceClient::connect(endpoint)
        .await
        .map_err(|e| CliError::Unavailable(e.to_string()))?;
    poll_async(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            if e.server.coordinator.dispatcher.connected().is_empty() {
                Err(CliError::Unavailable(
                    "the embedded agent did not connect".into(),
                ))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    // warm-up
    run_one(&mut client, "warm-up", noop_pipeline("warm-up", 5, true), 5).await?;
    let mut figures = Vec::new();
    for (label, chained) in [("chain", true), ("independent", false)] {
        let name = format!("bench-{label}-{}", args.steps);
        let mut f = run_one(
            &mut client,
            label,
            noop_pipeline(&name, args.steps, chained),
            args.steps,
        )
        .await?;
        timings(&e, &name, &mut f);
        figures.push(f);
    }
    // A wide loop: every iteration is a task record of the run.
    let loop_name = format!("bench-loop-{}", args.loop_iterations);
    let rss_before = rss_bytes();
    let mut f = run_one(
        &mut client,
        "loop",
        loop_pipeline(&loop_name, args.loop_iterations),
        args.loop_iterations,
    )
    .await?;
    let rss_after = rss_bytes();
    timings(&e, &loop_name, &mut f);
    let (tasks, state_bytes) = {
        let st = e.server.coordinator.state.read();
        st.runs
            .values()
            .find(|r| r.pipeline.name == loop_name)
            .map(|r| {
                (
                    r.tasks.len(),
                    serde_json::to_vec(&**r).map(|v| v.len()).unwrap_or(0),
                )
            })
            .unwrap_or_default()
    };
    figures.push(f);
    let spawn = spawn_cost(50);
    e.stop().await;
    let mut t = table(&[
        "pipeline",
        "steps",
        "wall s",
        "steps/s",
        "ready→assign ms",
        "assign→start ms",
        "start→record ms",
        "overhead/step ms",
    ]);
    for mut f in figures {
        let per_step_ms = f.wall.as_secs_f64() * 1000.0 / f.steps as f64;
        t.add_row(vec![
            f.label.clone(),
            f.steps.to_string(),
            format!("{:.2}", f.wall.as_secs_f64()),
            format!("{:.1}", f.steps as f64 / f.wall.as_secs_f64()),
            format!("{:.1}", pct(&mut f.ready_to_assigned, 0.5)),
            format!("{:.1}", pct(&mut f.assigned_to_started, 0.5)),
            format!("{:.1}", pct(&mut f.started_to_recorded, 0.5)),
            format!(
                "{:.2}",
                (per_step_ms - spawn.as_secs_f64() * 1000.0).max(0.0)
            ),
        ]);
    }
    println!("{t}");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "\nloop of {} iterations: {tasks} task records, run state {:.2} MiB as JSON; \
         process RSS {:.1} MiB before, {:.1} MiB after (coordinator, agent and client share the process)",
        args.loop_iterations,
        mib(state_bytes as u64),
        rss_before.map(mib).unwrap_or(f64::NAN),
        rss_after.map(mib).unwrap_or(f64::NAN),
    );
    println!(
        "\nmedians per step; overhead/step (chain: wall/steps minus one `true` process spawn = {:.2} ms; \
         independent: wall/steps minus the same)",
        spawn.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Reads per-task timestamps from the coordinator's state directly (same process).
fn timings(e: &Embedded, pipeline: &str, f: &mut Figures) {
    let st = e.server.coordinator.state.read();
    let Some(run) = st.runs.values().find(|r| r.pipeline.name == pipeline) else {
        return;
    };
    let mut by_ready: BTreeMap<String, (i64, i64, i64, i64)> = BTreeMap::new();
    for t in run.tasks.values() {
        let Some(a) = t.attempts.last() else { continue };
        let (Some(started), Some(finished)) = (a.started_at, a.finished_at) else {
            continue;
        };
        by_ready.insert(
            t.task_id.to_string(),
            (t.created_at, a.assigned_at, started, finished),
        );
    }
    for (ready, assigned, started, finished) in by_ready.into_values() {
        f.ready_to_assigned.push(assigned - ready);
        f.assigned_to_started.push(started - assigned);
        f.started_to_recorded.push(finished - started);
    }
}

/// Mean wall time of spawning `true` and waiting for it: the floor any runtime pays.
fn spawn_cost(n: u32) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        let _ = std::process::Command::new("true").status();
    }
    t0.elapsed() / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_loops_parse_with_and_without_a_cpu_request() {
        let plain = gantry_core::ir::parse_pipeline(&loop_pipeline("p", 3)).expect("parses");
        let with_cpu = gantry_core::ir::parse_pipeline(&loop_pipeline_with_cpu("p", 3, Some("1")))
            .expect("parses");
        assert_ne!(plain, with_cpu, "the CPU request must reach the IR");
        let yaml = loop_pipeline_with_cpu("p", 3, Some("1"));
        assert!(yaml.contains("resourceCpuRequest: '1'"), "{yaml}");
        assert!(!loop_pipeline("p", 3).contains("resources:"));
    }
}
