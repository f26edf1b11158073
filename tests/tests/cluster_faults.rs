//! Fault tests on a real 3-node cluster: separate `gantry-coordinator` processes, each in its own
//! network namespace, a `gantry-agent` process, pipelines compiled by kfp, artifacts on the S3
//! server. Each test states the property it checks and fails when the property breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{
    always, compile_source_with, ensure_images, eventually, marks, poll_every, repeat_for, Cli, S3,
};
use serde_json::Value;

fn chain(dir: &Path, steps: usize) -> std::path::PathBuf {
    let out = dir.join(format!("chain-{steps}"));
    std::fs::create_dir_all(&out).unwrap();
    compile_source_with(
        Path::new("tests/pipelines/chain.py"),
        &out,
        &[&steps.to_string()],
    )
    .unwrap()
}

fn succeeded(run: &Value) -> usize {
    run["tasks"]
        .as_array()
        .map(|ts| ts.iter().filter(|t| t["state"] == "SUCCEEDED").count())
        .unwrap_or(0)
}

/// Every step ran exactly once and every task's result was recorded by its first attempt.
fn assert_each_step_once(run: &Value, marker: &Path, steps: usize) {
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    let tasks = run["tasks"].as_array().expect("tasks");
    // kfp names the tasks of the chain mark, mark-2, mark-3, ...
    let steps_in_run: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("mark")))
        .collect();
    assert_eq!(steps_in_run.len(), steps, "{run:#}");
    for t in steps_in_run {
        assert_eq!(t["state"], "SUCCEEDED", "{t:#}");
        assert_eq!(
            t["attempts"], 1,
            "a step was recorded by more than one attempt: {t:#}"
        );
    }
    let m = marks(marker);
    assert_eq!(m.len(), steps, "steps that ran: {m:?}");
    let twice: Vec<_> = m.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "steps that ran more than once: {twice:?}");
}

fn start(opts: ClusterOpts, s3: &S3, agent: bool) -> Cluster {
    ensure_images().unwrap();
    let mut c = Cluster::start(opts).unwrap();
    if agent {
        c.start_agent("agent-1", &s3.env()).unwrap();
        c.cli().wait_for_agents(1).unwrap();
    }
    c
}

/// Submissions made while faults happen: what the client was told, to check against the end.
struct History {
    acked: Mutex<Vec<(usize, String)>>,
    tried: Mutex<usize>,
}

fn submit_in_background(
    cli: Cli,
    pipeline: std::path::PathBuf,
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> (Arc<History>, std::thread::JoinHandle<()>) {
    let h = Arc::new(History {
        acked: Mutex::new(Vec::new()),
        tried: Mutex::new(0),
    });
    let h2 = h.clone();
    let t = std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            *h2.tried.lock().unwrap() = n;
            let marker = dir.join(format!("history-{n}.log"));
            let p = format!("marker={}", marker.display());
            if let Ok(run_id) = cli.submit(&pipeline, &[&p]) {
                h2.acked.lock().unwrap().push((n, run_id));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    (h, t)
}

#[test]
fn kill_9_of_the_leader_during_a_300_step_run_repeatedly_loses_and_repeats_nothing() {
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("faults-kill"));
    // Snapshots and compaction happen several times during the run.
    opts.snapshot_entries = 250;
    let mut c = start(opts, &s3, true);
    let dir = c.dir.path().to_path_buf();
    let big = chain(&dir, 300);
    let small = chain(&dir, 1);
    let marker = dir.join("marker.log");
    let cli = c.cli();
    let run_id = cli
        .submit(&big, &[&format!("marker={}", marker.display())])
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (history, submitter) =
        submit_in_background(cli.clone(), small.clone(), dir.clone(), stop.clone());

    let mut kills = 0;
    let mut last_progress = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < 5 {
        // 25 more steps between two kills, or the end of the run.
        let left = deadline.saturating_duration_since(Instant::now());
        let done = poll_every(left, Duration::from_millis(100), || {
            let done = marks(&marker).len();
            if done >= 300 || done >= last_progress + 25 {
                Ok(done)
            } else {
                Err(done)
            }
        })
        .unwrap_or_else(|done| panic!("the run stalled at {done} steps: {}", c.logs_tail()));
        if done >= 300 {
            break;
        }
        last_progress = done;
        let (leader, term) = c
            .wait_leader(&c.all_ids(), Duration::from_secs(10))
            .unwrap();
        c.kill9(leader);
        kills += 1;
        let others: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != leader).collect();
        let (next, next_term) = c.wait_leader(&others, Duration::from_secs(10)).unwrap();
        assert!(next_term > term && next != leader);
        c.start_node(leader).unwrap();
    }
    assert!(
        kills >= 3,
        "only {kills} leader kills happened before the run ended"
    );

    let run = cli.wait_finished(&run_id, Duration::from_secs(240));
    stop.store(true, Ordering::Relaxed);
    submitter.join().unwrap();
    assert_each_step_once(&run, &marker, 300);

    // History: every acknowledged submission exists on every node, ran, and ran once.
    c.wait_converged(Duration::from_secs(30)).unwrap();
    let acked = history.acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 5,
        "too few submissions acknowledged: {acked:?}"
    );
    for (n, id) in &acked {
        let r = cli.wait_finished(id, Duration::from_secs(60));
        assert_eq!(r["state"], "SUCCEEDED", "{r:#}");
        let m = marks(&dir.join(format!("history-{n}.log")));
        assert_eq!(m.get("step-0"), Some(&1), "submission {n} ran {m:?}");
        for node in c.all_ids() {
            let one = c.cli_for(&[node]).get_run(id).unwrap();
            assert_eq!(
                one["state"], "SUCCEEDED",
                "node {node} on run {id}: {one:#}"
            );
        }
    }
    // Unacknowledged tries may or may not have created a run, but never two.
    for n in 1..=*history.tried.lock().unwrap() {
        let m = marks(&dir.join(format!("history-{n}.log")));
        assert!(
            m.get("step-0").copied().unwrap_or(0) <= 1,
            "submission {n} ran {m:?}"
        );
    }
    let snapshots: usize = c
        .all_ids()
        .iter()
        .map(|id| c.log(*id).matches("snapshot taken").count())
        .sum();
    assert!(snapshots > 0, "no snapshot was taken during the run");
}

#[test]
fn a_paused_leader_steps_down_and_no_term_ever_has_two_leaders() {
    let s3 = S3::start().unwrap();
    let mut c = start(
        ClusterOpts::new(3, &s3.artifact_root("faults-pause")),
        &s3,
        true,
    );
    let dir = c.dir.path().to_path_buf();
    let marker = dir.join("marker.log");
    let run_id = c
        .cli()
        .submit(
            &chain(&dir, 30),
            &[&format!("marker={}", marker.display()), "nap=0.2"],
        )
        .unwrap();
    let (old, term) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    let others: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != old).collect();
    // term → nodes that said they led in it
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let sample = |c: &Cluster, leaders: &mut BTreeMap<u64, BTreeSet<u64>>| {
        for id in c.all_ids() {
            if let Some(s) = c.status(id) {
                if s.role == "LEADER" {
                    leaders.entry(s.term).or_default().insert(s.node_id);
                }
            }
        }
    };
    c.pause(old);
    // Past the election timeout (6 ticks of 100 ms, randomised up to 12).
    repeat_for(Duration::from_secs(4), || sample(&c, &mut leaders));
    let (new, new_term) = c.wait_leader(&others, Duration::from_secs(5)).unwrap();
    assert!(new != old && new_term > term);
    c.resume(old);
    eventually(Duration::from_secs(10), || {
        sample(&c, &mut leaders);
        match c.status(old) {
            Some(s) if s.role == "FOLLOWER" && s.term >= new_term && s.leader_id != old => Ok(()),
            s => Err(format!("the old leader did not step down: {s:?}")),
        }
    });
    repeat_for(Duration::from_secs(1), || sample(&c, &mut leaders));
    for (t, ids) in &leaders {
        assert!(ids.len() <= 1, "term {t} had leaders {ids:?}");
    }
    assert!(leaders.keys().any(|t| *t > term), "{leaders:?}");
    let run = c.cli().wait_finished(&run_id, Duration::from_secs(120));
    assert_each_step_once(&run, &marker, 30);
}

#[test]
fn a_partitioned_leader_is_replaced_and_rejoins_as_a_follower() {
    let s3 = S3::start().unwrap();
    let c = start(
        ClusterOpts::new(3, &s3.artifact_root("faults-partition")),
        &s3,
        true,
    );
    let dir = c.dir.path().to_path_buf();
    let (old, term) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    let majority: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != old).collect();
    for m in &majority {
        c.cut(old, *m).unwrap();
    }
    let (new, new_term) = c.wait_leader(&majority, Duration::from_secs(10)).unwrap();
    assert!(new != old && new_term > term);
    // The majority keeps scheduling: a run submitted there completes on the agent.
    let marker = dir.join("marker.log");
    let majority_cli = c.cli_for(&majority);
    let run_id = majority_cli
        .submit(&chain(&dir, 5), &[&format!("marker={}", marker.display())])
        .unwrap();
    let run = majority_cli.wait_finished(&run_id, Duration::from_secs(60));
    assert_each_step_once(&run, &marker, 5);
    // Cut off from a quorum, the old leader gives up leading (check_quorum).
    eventually(Duration::from_secs(10), || match c.status(old) {
        Some(s) if s.role == "LEADER" => Err("the isolated leader kept leading"),
        _ => Ok(()),
    });
    for m in &majority {
        c.heal(old, *m).unwrap();
    }
    eventually(Duration::from_secs(15), || match c.status(old) {
        Some(s) if s.role == "FOLLOWER" && s.leader_id != old && s.leader_id != 0 => Ok(()),
        s => Err(format!("old leader did not rejoin: {s:?}")),
    });
    c.wait_converged(Duration::from_secs(15)).unwrap();
    let on_old = c.cli_for(&[old]).get_run(&run_id).unwrap();
    assert_eq!(on_old["state"], "SUCCEEDED", "{on_old:#}");
}

#[test]
fn kill_9_of_every_node_then_restart_keeps_every_run_and_resumes_the_running_one() {
    let s3 = S3::start().unwrap();
    let mut c = start(
        ClusterOpts::new(3, &s3.artifact_root("faults-all")),
        &s3,
        true,
    );
    let dir = c.dir.path().to_path_buf();
    let cli = c.cli();
    let first_marker = dir.join("first.log");
    let first = cli
        .submit(
            &chain(&dir, 3),
            &[&format!("marker={}", first_marker.display())],
        )
        .unwrap();
    let first_run = cli.wait_finished(&first, Duration::from_secs(60));
    assert_eq!(first_run["state"], "SUCCEEDED");

    let marker = dir.join("marker.log");
    let run_id = cli
        .submit(
            &chain(&dir, 30),
            &[&format!("marker={}", marker.display()), "nap=0.2"],
        )
        .unwrap();
    let before = cli.wait_until(&run_id, Duration::from_secs(60), |r| succeeded(r) >= 5);
    for id in c.all_ids() {
        c.kill9(id);
    }
    std::thread::sleep(Duration::from_millis(500));
    for id in c.all_ids() {
        c.start_node(id).unwrap();
    }
    let after_first = cli.get_run(&first).unwrap();
    assert_eq!(
        after_first, first_run,
        "a finished run changed across the restart"
    );
    let run = cli.wait_finished(&run_id, Duration::from_secs(120));
    assert_each_step_once(&run, &marker, 30);
    // Results recorded before the stop are the same records after it.
    for t in before["tasks"].as_array().unwrap() {
        if t["state"] == "SUCCEEDED" {
            let now = gantry_testkit::task(&run, t["name"].as_str().unwrap());
            assert_eq!(now["finished_at"], t["finished_at"], "{t:#} became {now:#}");
        }
    }
}

/// Waits until nodes 1 and 2 have compacted their logs past `index` (each decodes its
/// snapshot before compacting), so a node behind it can only catch up by snapshot.
fn wait_compacted_past(c: &Cluster, index: u64) {
    poll_every(Duration::from_secs(60), Duration::from_millis(100), || {
        let compacted = [1u64, 2]
            .iter()
            .all(|id| c.status(*id).is_some_and(|s| s.first_index > index));
        compacted.then_some(()).ok_or(())
    })
    .unwrap_or_else(|()| panic!("the log was not compacted: {}", c.logs_tail()));
}

#[test]
fn kill_9_in_the_middle_of_a_snapshot_installation_recovers() {
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("faults-snap"));
    opts.snapshot_entries = 20;
    // Slow the receiving side down so the kill lands inside the transfer.
    opts.env = vec![("GANTRY_FAULT_SNAPSHOT_CHUNK_DELAY_MS".into(), "700".into())];
    let mut c = start(opts, &s3, false);
    let dir = c.dir.path().to_path_buf();
    c.wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    let lagging = 3;
    c.kill9(lagging);
    // Runs with 300 tasks each make a state of several MiB; with no agent they stay pending.
    // 45 entries: snapshots at 20 and 40, and the leader keeps at most one interval of log for
    // a follower that is behind, so the lagging node can only catch up by snapshot.
    let big = chain(&dir, 300);
    let cli = c.cli_for(&[1, 2]);
    for n in 0..45 {
        cli.submit(&big, &[&format!("marker={}/never-{n}.log", dir.display())])
            .unwrap();
    }
    // Each node decodes its snapshot before compacting: wait until both have compacted past
    // the first interval, so the lagging node cannot catch up from the log.
    wait_compacted_past(&c, 20);
    let snaps = c.nodes[(lagging - 1) as usize].data.join("snapshots");
    c.start_node(lagging).unwrap();
    // Polled often: the kill must land while the file is there.
    let partial = poll_every(Duration::from_secs(30), Duration::from_millis(20), || {
        let tmp = std::fs::read_dir(&snaps).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("recv-") && n.ends_with(".tmp"))
            })
        });
        tmp.ok_or(())
    })
    .unwrap_or_else(|()| panic!("no snapshot transfer began: {}", c.log(lagging)));
    c.kill9(lagging);
    assert!(partial.exists(), "the kill came after the transfer");
    assert!(
        !c.log(lagging).contains("installed a snapshot"),
        "the snapshot was already installed"
    );
    c.start_node(lagging).unwrap();
    assert!(!partial.exists(), "the partial file was not cleaned up");
    c.wait_converged(Duration::from_secs(60)).unwrap();
    assert!(
        c.log(lagging).contains("installed a snapshot"),
        "{}\n{}",
        c.log(1),
        c.log(lagging)
    );
    let (leader, _) = c.wait_leader(&c.all_ids(), Duration::from_secs(5)).unwrap();
    let leader_runs = c.status(leader).unwrap().runs;
    assert_eq!(leader_runs, 45);
    assert_eq!(c.status(lagging).unwrap().runs, leader_runs);
    // The recovered node serves current reads of everything.
    let listed = c
        .cli_for(&[lagging])
        .run(&["run", "list", "-o", "json", "--limit", "100"]);
    assert_eq!(listed.json().unwrap().as_array().map(Vec::len), Some(45));
}

#[test]
fn a_lagging_follower_of_the_previous_version_is_sent_a_snapshot_it_reads() {
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("faults-snap-v1"));
    opts.snapshot_entries = 20;
    let lagging = 3;
    // Node 3 takes snapshots as the previous version did: no InstallSnapshotV2, and a state
    // of format 2 refused as undecodable.
    opts.node_env = vec![(
        lagging,
        "GANTRY_FAULT_SNAPSHOT_FORMAT_1_ONLY".into(),
        "1".into(),
    )];
    let mut c = start(opts, &s3, false);
    let dir = c.dir.path().to_path_buf();
    c.wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    c.kill9(lagging);
    let small = chain(&dir, 3);
    let cli = c.cli_for(&[1, 2]);
    for n in 0..45 {
        cli.submit(
            &small,
            &[&format!("marker={}/never-{n}.log", dir.display())],
        )
        .unwrap();
    }
    wait_compacted_past(&c, 20);
    // The current version writes its own snapshots in format 2.
    let snaps = c.nodes[0].data.join("snapshots");
    let written: Vec<u8> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        String::from_utf8_lossy(&written).contains(r#"{"gantry_snapshot":2,"pipelines":["#),
        "node 1 wrote no snapshot of format 2"
    );
    c.start_node(lagging).unwrap();
    c.wait_converged(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", c.log(1), c.log(lagging)));
    assert!(
        c.log(lagging).contains("installed a snapshot"),
        "{}",
        c.log(lagging)
    );
    assert!(
        !c.log(lagging).contains("snapshot refused"),
        "{}",
        c.log(lagging)
    );
    let (leader, _) = c.wait_leader(&c.all_ids(), Duration::from_secs(5)).unwrap();
    assert!(
        c.log(leader)
            .contains("the peer reads only snapshots of format 1"),
        "{}",
        c.log(leader)
    );
    assert_eq!(c.status(lagging).unwrap().runs, 45);
    let listed = c
        .cli_for(&[lagging])
        .run(&["run", "list", "-o", "json", "--limit", "100"]);
    assert_eq!(listed.json().unwrap().as_array().map(Vec::len), Some(45));
    // No rewritten copy is left behind.
    let leftovers: Vec<_> =
        std::fs::read_dir(c.nodes[(leader - 1) as usize].data.join("snapshots"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("send-"))
            .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn nothing_is_acted_on_before_it_is_committed() {
    let s3 = S3::start().unwrap();
    let mut c = start(
        ClusterOpts::new(3, &s3.artifact_root("faults-commit")),
        &s3,
        true,
    );
    let dir = c.dir.path().to_path_buf();
    let marker = dir.join("marker.log");
    let cli = c.cli();
    let run_id = cli
        .submit(
            &chain(&dir, 2),
            &[&format!("marker={}", marker.display()), "nap=2"],
        )
        .unwrap();
    cli.wait_until(&run_id, Duration::from_secs(30), |r| {
        gantry_testkit::task(r, "mark")["state"] == "RUNNING"
    });
    let (leader, _) = c.wait_leader(&c.all_ids(), Duration::from_secs(5)).unwrap();
    let followers: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != leader).collect();
    for f in &followers {
        c.pause(*f);
    }
    // step-0 ends on the agent; its result cannot commit, so step-1 must not start.
    always(Duration::from_secs(6), || {
        let m = marks(&marker);
        if m.contains_key("step-1") {
            Err(format!(
                "step-1 started while step-0's result was not committed: {m:?}"
            ))
        } else {
            Ok(())
        }
    });
    assert_eq!(marks(&marker).get("step-0"), Some(&1));
    for f in &followers {
        c.resume(*f);
    }
    let run = cli.wait_finished(&run_id, Duration::from_secs(60));
    assert_each_step_once(&run, &marker, 2);
}

#[test]
fn a_retried_submission_through_another_node_creates_one_run() {
    let s3 = S3::start().unwrap();
    let c = start(
        ClusterOpts::new(3, &s3.artifact_root("faults-idem")),
        &s3,
        false,
    );
    let dir = c.dir.path().to_path_buf();
    let file = chain(&dir, 1);
    let file = file.to_string_lossy().into_owned();
    let mut ids = BTreeSet::new();
    for node in c.all_ids() {
        let r = c.cli_for(&[node]).run(&[
            "run",
            "submit",
            &file,
            "-p",
            "marker=/dev/null",
            "--request-id",
            "same-request",
            "-o",
            "json",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v = r.json().unwrap();
        assert_eq!(v["existing"], node != 1, "{v}");
        ids.insert(v["run_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = c.cli().run(&["run", "list", "-o", "json"]).json().unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}
