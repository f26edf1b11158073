//! Retention: finished runs go by count (`--max-finished-runs`) and by their own ttl
//! (`gantry run submit --ttl`) (their step logs with them: `coordinator/src/logs.rs`); a run that has not
//! finished stays whatever the policy; an agent lost for longer than
//! `--forget-lost-agents-after` is forgotten. Each removal is a committed command, so every
//! replica removes the same runs.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::Cluster;
use gantry_testkit::*;
use serde_json::Value;

fn run_ids(cli: &Cli) -> Vec<String> {
    let list = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    let runs = list
        .as_array()
        .or_else(|| list["runs"].as_array())
        .cloned()
        .unwrap_or_default();
    runs.iter()
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn finished_runs_are_removed_by_count_and_by_their_own_ttl() {
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let c = Cluster::single_with_agents(&root, &[("GANTRY_MAX_FINISHED_RUNS", "3")], &["a1"])
        .expect("coordinator and agent");
    let cli = c.cli();
    let out = tempfile::tempdir().unwrap();
    let one =
        compile_source_with(Path::new("tests/pipelines/chain.py"), out.path(), &["1"]).unwrap();
    let marker = out.path().join("marker");
    let marker = format!("marker={}", marker.display());
    let finish = |flags: &[&str]| -> String {
        let id = cli.submit_with(&one, &[&marker], flags).unwrap();
        let run = cli.wait_finished(&id, Duration::from_secs(60));
        assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
        id
    };

    // Two finished runs, under the count: kept. A third with a ttl of its own goes soon after
    // it finishes, while the other two stay.
    let a = finish(&[]);
    let b = finish(&[]);
    let short = finish(&["--ttl", "1s"]);
    poll_every(Duration::from_secs(20), Duration::from_millis(200), || {
        let ids = run_ids(&cli);
        if ids.contains(&short) {
            Err(format!("the run with --ttl 1s is still listed: {ids:?}"))
        } else {
            Ok(())
        }
    })
    .unwrap();
    let gone = cli.run(&["run", "get", &short, "-o", "json"]);
    assert_ne!(gone.code, 0, "{}", gone.stdout);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
    let ids = run_ids(&cli);
    assert!(
        ids.contains(&a) && ids.contains(&b),
        "{ids:?} lacks {a} or {b}"
    );

    // A run that has not finished is never removed, however many finished ones there are.
    let slow = cli.submit(&one, &[&marker, "nap=30"]).unwrap();
    let d = finish(&[]);
    let e = finish(&[]);
    // Four finished (a, b, d, e) over a limit of 3: the one that finished first goes.
    poll_every(Duration::from_secs(20), Duration::from_millis(200), || {
        let ids = run_ids(&cli);
        if ids.contains(&a) {
            Err(format!("{a} (finished first) is still listed: {ids:?}"))
        } else {
            Ok(ids)
        }
    })
    .unwrap();
    let ids = run_ids(&cli);
    for kept in [&b, &d, &e, &slow] {
        assert!(ids.contains(kept), "{kept} is gone: {ids:?}");
    }
    let slow_run = cli.get_run(&slow).unwrap();
    assert_eq!(slow_run["state"], "RUNNING", "{slow_run:#}");
    // The removal is committed: the leader logs each batch it proposed.
    eventually(Duration::from_secs(5), || {
        match c.log_count(1, &["retention: runs removed"]) {
            2 => Ok(()),
            n => Err(format!("{n} removals logged, not 2:\n{}", c.log(1))),
        }
    });
    let bad = cli.run(&[
        "run",
        "submit",
        one.to_str().unwrap(),
        "-p",
        &marker,
        "--ttl",
        "soon",
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("not a duration"), "{}", bad.stderr);
    cli.run(&["run", "cancel", &slow]);
}

#[test]
fn an_agent_lost_for_longer_than_the_policy_is_forgotten() {
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let mut c = Cluster::single_with_agents(
        &root,
        &[
            ("GANTRY_AGENT_LEASE_MS", "6000"),
            ("GANTRY_FORGET_LOST_AGENTS_AFTER", "3s"),
        ],
        &["left", "right"],
    )
    .expect("coordinator and agents");
    let cli = c.cli();
    let out = tempfile::tempdir().unwrap();
    let file = compile_pipeline("sleeper", out.path()).unwrap();
    let (run_id, victim) = c
        .kill_the_agent_running(&file, &["seconds=8"], "nap")
        .unwrap();
    let agents = |cli: &Cli| -> Vec<Value> {
        cli.run(&["agent", "list", "-o", "json"])
            .json()
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    // Declared lost after its lease, then forgotten three seconds later; the other stays.
    poll_every(Duration::from_secs(60), Duration::from_millis(200), || {
        let list = agents(&cli);
        let ids: Vec<&str> = list.iter().filter_map(|a| a["agent_id"].as_str()).collect();
        if ids.contains(&victim.as_str()) {
            Err(format!("{victim} is still listed: {list:?}"))
        } else {
            Ok(())
        }
    })
    .unwrap();
    assert!(
        c.log_count(1, &["declaring it lost"]) > 0,
        "forgotten without being lost first:\n{}",
        c.log(1)
    );
    let run = cli.wait_finished(&run_id, Duration::from_secs(120));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
    let ids: Vec<String> = agents(&cli)
        .iter()
        .filter_map(|a| a["agent_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], victim);
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_removed_runs_artifacts_are_deleted_unless_a_remaining_run_still_uses_them() {
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let c = Cluster::single_with_agents(
        &root,
        &[
            ("GANTRY_MAX_FINISHED_RUNS", "1"),
            ("GANTRY_DELETE_REMOVED_RUN_ARTIFACTS", "true"),
        ],
        &["a1"],
    )
    .expect("coordinator and agent");
    let cli = c.cli();
    let out = tempfile::tempdir().unwrap();
    // produce → data (a Dataset) → consume
    let file = compile_pipeline("container_io", out.path()).unwrap();
    let finish = |params: &[&str], flags: &[&str]| -> String {
        let id = cli.submit_with(&file, params, flags).unwrap();
        let run = cli.wait_finished(&id, Duration::from_secs(60));
        assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
        id
    };
    let deleted_logged = |n: usize| {
        eventually(Duration::from_secs(20), || {
            match c.log_count(1, &["retention: a removed run's artifacts deleted"]) {
                k if k >= n => Ok(()),
                k => Err(format!("{k} deletions logged, want {n}:\n{}", c.log(1))),
            }
        })
    };

    // A wrote its artifacts; once C finishes, A is over the count and goes, and its artifacts
    // with it (nothing refers to them).
    let a = finish(&["message=a"], &[]);
    assert!(!files_under(&artifacts.path().join(&a)).is_empty());
    let c_run = finish(&["message=c"], &["--disable-cache"]);
    deleted_logged(1);
    assert_eq!(
        files_under(&artifacts.path().join(&a)),
        Vec::<String>::new()
    );
    let c_files = files_under(&artifacts.path().join(&c_run));
    assert!(c_files.iter().any(|f| f.ends_with("/data")), "{c_files:?}");

    // D takes C's results from the cache, so its data artifact is C's file. When C is
    // removed, that file stays: D still refers to it.
    let d = finish(&["message=c"], &[]);
    let d_run = cli.get_run(&d).unwrap();
    let produce = task(&d_run, "produce");
    assert!(
        produce["cached_from"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "D's produce step did not come from the cache: {produce:#}"
    );
    deleted_logged(2);
    let ids = run_ids(&cli);
    assert!(!ids.contains(&c_run) && ids.contains(&d), "{ids:?}");
    let left = files_under(&artifacts.path().join(&c_run));
    assert!(
        left.iter().any(|f| f.ends_with("/data")),
        "C's data artifact, which D uses, was deleted: {left:?}"
    );
    assert_eq!(
        c.log_count(
            1,
            &["retention: a removed run's artifacts deleted", "kept=1"]
        ),
        1,
        "{}",
        c.log(1)
    );

    // E runs on its own; D goes, and with it C's data file that was kept for D alone.
    let e = finish(&["message=e"], &["--disable-cache"]);
    deleted_logged(3);
    let ids = run_ids(&cli);
    assert!(!ids.contains(&d) && ids.contains(&e), "{ids:?}");
    eventually(Duration::from_secs(20), || {
        match files_under(&artifacts.path().join(&c_run)) {
            left if left.is_empty() => Ok(()),
            left => Err(format!(
                "C's data file outlived D, the last run to use it: {left:?}\n{}",
                c.log(1)
            )),
        }
    });
    assert_eq!(
        files_under(&artifacts.path().join(&d)),
        Vec::<String>::new()
    );
    assert!(!files_under(&artifacts.path().join(&e)).is_empty());
}
