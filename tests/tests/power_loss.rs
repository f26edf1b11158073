//! Power cuts under load. Each coordinator's data directory is a lossyfs mount: what a
//! coordinator wrote but did not fsync (and renames whose directory it did not fsync) is
//! thrown away when the power goes. Cuts hit one node, then every node at once, at points
//! drawn from a seed, while runs are being submitted and an agent runs a 200-step chain (and
//! the submitted runs); every node is then started again.
//!
//! What must hold (the Raft invariants and the user-visible ones):
//! - every submission that was acknowledged is still there, with the same id and pipeline;
//! - every step result that was read back is still there, unchanged; the chain ends with each
//!   step recorded by its first attempt and run exactly once (the agent holds a result until
//!   it is committed, and a committed assignment is never handed out again);
//! - no committed entry changes: runs seen before a cut are the same runs after it;
//! - no term ever has two leaders, and no node's term goes back (its vote is not forgotten);
//! - every node rejoins and applies as far as the others.
//!
//! Skipped, with a message, where FUSE cannot be mounted (not root, no /dev/fuse).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{compile_source_with, marks, S3};
use lossyfs::{CutMode, LossyFs};
use serde_json::Value;

/// The chain's steps (kfp names them mark, mark-2, mark-3, ...).
fn steps(run: &Value) -> impl Iterator<Item = &Value> {
    run["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("mark")))
}

/// The chain's step results as a linearizable read shows them: task name -> what the
/// committed result fixed (attempts, outputs, end time).
fn step_results(run: &Value) -> BTreeMap<String, String> {
    steps(run)
        .filter(|t| t["state"] == "SUCCEEDED")
        .map(|t| {
            let fixed = serde_json::json!([t["attempts"], t["outputs"], t["finished_at"]]);
            (
                t["name"].as_str().unwrap_or("").to_string(),
                fixed.to_string(),
            )
        })
        .collect()
}

/// Steps of the chain an agent runs through the cuts.
const CHAIN_STEPS: usize = 200;

/// A tiny deterministic generator: the cut points replay from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Leaders seen per term, and the highest term each node reported.
#[derive(Default)]
struct Watch {
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    terms: BTreeMap<u64, u64>,
    problems: Vec<String>,
}

impl Watch {
    fn look(&mut self, c: &Cluster) {
        for id in c.all_ids() {
            if !c.is_running(id) {
                continue;
            }
            let Some(s) = c.status(id) else { continue };
            if s.role == "LEADER" {
                let set = self.leaders.entry(s.term).or_default();
                set.insert(id);
                if set.len() > 1 {
                    self.problems
                        .push(format!("two leaders in term {}: {set:?}", s.term));
                }
            }
            let before = self.terms.entry(id).or_insert(s.term);
            if s.term < *before {
                self.problems.push(format!(
                    "node {id}'s term went back from {before} to {} (a forgotten vote)",
                    s.term
                ));
            }
            *before = (*before).max(s.term);
        }
    }
}

#[test]
fn power_cuts_lose_no_acknowledged_submission_and_change_no_committed_entry() {
    if let Err(why) = lossyfs::available() {
        eprintln!("skipped: {why}");
        return;
    }
    lossyfs::sweep_stale_mounts();
    let seed: u64 = std::env::var("GANTRY_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    eprintln!("power_loss seed {seed} (GANTRY_POWER_SEED replays it)");
    let mut rng = Rng(seed | 1);

    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("power"));
    // Snapshots and compaction happen during the test too.
    opts.snapshot_entries = 25;
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();

    // Move each data directory onto a lossyfs mount over the same path.
    let mut mounts: BTreeMap<u64, LossyFs> = BTreeMap::new();
    for id in c.all_ids() {
        c.kill9(id);
    }
    for id in c.all_ids() {
        let data = c.data_dir(id);
        let backing = data.with_extension("disk");
        std::fs::rename(&data, &backing).unwrap();
        std::fs::create_dir(&data).unwrap();
        mounts.insert(id, LossyFs::mount(&backing, &data).unwrap());
    }
    for id in c.all_ids() {
        c.start_node(id).unwrap();
    }
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();

    let dir = c.dir.path().to_path_buf();
    let out = dir.join("p");
    std::fs::create_dir_all(&out).unwrap();
    let pipeline =
        compile_source_with(Path::new("tests/pipelines/chain.py"), &out, &["1"]).unwrap();
    let chain_out = dir.join("chain");
    std::fs::create_dir_all(&chain_out).unwrap();
    let chain = compile_source_with(
        Path::new("tests/pipelines/chain.py"),
        &chain_out,
        &[&CHAIN_STEPS.to_string()],
    )
    .unwrap();
    c.start_agent("agent-1", &s3.env()).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let marker = dir.join("chain-marker.log");
    let chain_id = cli
        .submit(
            &chain,
            &[&format!("marker={}", marker.display()), "nap=0.05"],
        )
        .unwrap();
    let load_marker = dir.join("load-marker.log");

    // Submissions run on their own thread the whole time; each acknowledged id is kept.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let cli = c.cli();
        let acked = acked.clone();
        let stop = stop.clone();
        let pipeline = pipeline.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // A refused or failed submission is not acknowledged: nothing to check.
                let marker = format!("marker={}", load_marker.display());
                if let Ok(id) = cli.submit(&pipeline, &[&marker, &format!("nap=0.0{}", n % 10)]) {
                    acked.lock().unwrap().push(id);
                }
            }
        })
    };

    let mut watch = Watch::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_steps: BTreeMap<String, String> = BTreeMap::new();
    // Eight rounds by default (one node, all, one, all, ...); GANTRY_POWER_ROUNDS sets it.
    let rounds: u64 = std::env::var("GANTRY_POWER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    for round in 0..rounds {
        // Let the load run for a while, watching leaders and terms.
        let wait_ms = 1000 + rng.below(3000);
        let mut waited = 0;
        while waited < wait_ms {
            watch.look(&c);
            std::thread::sleep(Duration::from_millis(100));
            waited += 100;
        }
        // Odd rounds cut every node at once; even rounds one node.
        let victims: Vec<u64> = if round % 2 == 1 {
            c.all_ids()
        } else {
            vec![1 + rng.below(3)]
        };
        let mode = if rng.below(2) == 0 {
            CutMode::Clean
        } else {
            CutMode::Torn {
                seed: rng.below(u64::MAX),
                keep: 0.5,
            }
        };
        for id in &victims {
            c.kill9(*id);
        }
        for id in &victims {
            let report = mounts.get_mut(id).unwrap().power_cut(mode).unwrap();
            eprintln!("round {round}: power cut on node {id} ({mode:?}): {report:?}");
        }
        for id in &victims {
            c.start_node(*id).unwrap();
        }
        c.wait_leader(&c.all_ids(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", c.logs_tail()));
        watch.look(&c);

        // Every acknowledged submission is there, and runs seen before are unchanged. One
        // linearizable list (ReadIndex on the leader) covers them all.
        let ids: Vec<String> = acked.lock().unwrap().clone();
        let listed = cli
            .run(&["run", "list", "--limit", "1000000", "-o", "json"])
            .json()
            .unwrap_or_else(|e| panic!("round {round}: cannot list runs: {e}\n{}", c.logs_tail()));
        let listed: BTreeMap<String, String> = listed
            .as_array()
            .into_iter()
            .flatten()
            .map(|run| {
                // What the committed entry fixed: none of it may change.
                let fixed =
                    serde_json::json!([run["pipeline_name"], run["parameters"], run["created_at"]])
                        .to_string();
                (run["run_id"].as_str().unwrap_or("").to_string(), fixed)
            })
            .collect();
        for id in &ids {
            let Some(fixed) = listed.get(id) else {
                panic!(
                    "round {round}: acknowledged run {id} is gone after the cut\n{}",
                    c.logs_tail()
                );
            };
            if let Some(before) = seen.insert(id.clone(), fixed.clone()) {
                assert_eq!(&before, fixed, "round {round}: run {id} changed");
            }
        }
        // Every step result read back before is still there, unchanged.
        let run = cli
            .get_run(&chain_id)
            .unwrap_or_else(|e| panic!("round {round}: cannot read the chain: {e}"));
        let now = step_results(&run);
        for (name, before) in &seen_steps {
            match now.get(name) {
                Some(after) => assert_eq!(before, after, "round {round}: step {name} changed"),
                None => panic!(
                    "round {round}: the result of step {name} is gone after the cut\n{}",
                    c.logs_tail()
                ),
            }
        }
        eprintln!(
            "round {round}: {} acknowledged runs all present; chain: {} step results kept, {} now",
            ids.len(),
            seen_steps.len(),
            now.len()
        );
        seen_steps = now;
    }
    stop.store(true, Ordering::Relaxed);
    submitter.join().unwrap();

    // The chain ends; each step was recorded by its first attempt and ran once.
    let run = cli.wait_finished(&chain_id, Duration::from_secs(300));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
    let results = step_results(&run);
    assert_eq!(results.len(), CHAIN_STEPS, "{run:#}");
    for (name, before) in &seen_steps {
        assert_eq!(
            Some(before),
            results.get(name),
            "step {name} changed at the end"
        );
    }
    let again: Vec<&Value> = steps(&run).filter(|t| t["attempts"] != 1).collect();
    assert!(
        again.is_empty(),
        "steps recorded by a later attempt: {again:#?}"
    );
    let m = marks(&marker);
    assert_eq!(m.len(), CHAIN_STEPS, "steps that ran: {m:?}");
    let twice: Vec<_> = m.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "steps that ran more than once: {twice:?}");

    // Every node rejoins and applies as far as the others.
    c.wait_converged(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs_tail()));
    let total = acked.lock().unwrap().len();
    for id in c.all_ids() {
        let s = c.status(id).unwrap();
        assert!(
            s.runs as usize >= total,
            "node {id} holds {} runs, {total} were acknowledged",
            s.runs
        );
    }
    watch.look(&c);
    assert!(watch.problems.is_empty(), "{}", watch.problems.join("\n"));
    let cuts: u64 = mounts.values().map(LossyFs::cuts).sum();
    eprintln!(
        "power_loss: {cuts} power cuts, {total} acknowledged submissions and a {CHAIN_STEPS}-step \
         chain, nothing lost or run twice"
    );
    // Stop the nodes before their mounts go.
    for id in c.all_ids() {
        c.kill9(id);
    }
    drop(mounts);
}
