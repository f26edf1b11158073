//! Webhooks on a 3-node cluster whose leaders die right after a receiver took a notice and
//! before its mark is committed (failpoint `webhook-posted` panics on a node's fifth post; the
//! test starts the node again). The receiver (tests/webhook/receiver.py) refuses its first two
//! requests. Two runs through an approval gate, one approved and one rejected: once repeats of
//! the same id are dropped, the receiver holds every state change of both runs and their tasks
//! exactly once, in commit order, with no gap in the sequence, and each change follows the one
//! before it for the same run or task. A repeat carries the same id and body as the original,
//! and there is at most one per leader death.
//! Bad hooks are refused by the CLI with the field named, and nothing is added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{compile_source_with, repo_root};
use serde_json::Value;

struct Receiver {
    child: Child,
    out: PathBuf,
    url: String,
}

impl Receiver {
    fn start(dir: &Path, fail_first: u32) -> Receiver {
        let port_file = dir.join("receiver.port");
        let out = dir.join("received.jsonl");
        let child = Command::new("python3")
            .arg(repo_root().join("tests/webhook/receiver.py"))
            .arg(&port_file)
            .arg(&out)
            .arg(fail_first.to_string())
            .spawn()
            .expect("python3 runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            out,
            url: format!("http://127.0.0.1:{}/hooks/secret-path", port.trim()),
        }
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts every node that died again; returns their exit codes.
fn revive(c: &mut Cluster) -> Vec<Option<i32>> {
    let mut codes = Vec::new();
    for id in c.all_ids() {
        if let Some(status) = c.exit_status(id) {
            codes.push(status.code());
            c.start_node(id).unwrap();
        }
    }
    codes
}

fn task_state(run: &Value, name: &str) -> String {
    run["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .and_then(|t| t["state"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn webhooks_get_every_state_change_once_in_order_across_leader_deaths() {
    let mut opts = ClusterOpts::loopback(3);
    opts.env = vec![("FAILPOINTS".into(), "webhook-posted=4*off->panic".into())];
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let rx = Receiver::start(c.dir.path(), 2);

    // Bad hooks: refused, naming what is wrong; nothing added.
    for (args, says) in [
        (vec!["bad id", rx.url.as_str()], "letters, digits"),
        (vec!["h", "ftp://127.0.0.1/x"], "only http and https"),
        (vec!["h", "127.0.0.1:9/x"], "not an http:// or https:// URL"),
        (
            vec!["h", rx.url.as_str(), "--events", "some"],
            "\"runs\" (run state changes) or \"all\"",
        ),
    ] {
        let mut a = vec!["webhook", "add"];
        a.extend(args);
        let r = cli.run(&a);
        assert_eq!(r.code, 2, "{a:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{a:?}: {}", r.stderr);
    }
    let list = cli.run(&["webhook", "list", "-o", "json"]).json().unwrap();
    assert_eq!(list["webhooks"], Value::Array(vec![]), "{list}");

    let add = cli.run(&["webhook", "add", "test", &rx.url]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let shown = cli.run(&["webhook", "list"]);
    assert!(
        shown.stdout.contains("/…") && !shown.stdout.contains("secret-path"),
        "the URL's path is not shown: {}",
        shown.stdout
    );
    let again = cli.run(&["webhook", "add", "test", &rx.url]);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    let out = c.dir.path().join("approval");
    std::fs::create_dir_all(&out).unwrap();
    let file = compile_source_with(Path::new("tests/pipelines/approval.py"), &out, &[]).unwrap();
    // Every helper revives the nodes the failpoint killed: two deaths in a row leave no
    // majority until one comes back.
    let deaths = std::cell::RefCell::new(Vec::new());
    // Polls a run (reviving dead nodes) until `done` holds.
    let wait = |c: &mut Cluster, run: &str, done: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            deaths.borrow_mut().extend(revive(c));
            if let Ok(r) = c.cli().get_run(run) {
                if done(&r) {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "run {run}:\n{}", c.logs_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // A leader may die after committing a run but before answering: the retry names the
    // same request so it finds that run instead of starting a second one.
    let submit = |c: &mut Cluster, request: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            deaths.borrow_mut().extend(revive(c));
            match c.cli().submit_with(&file, &[], &["--request-id", request]) {
                Ok(id) => return id,
                Err(e) => assert!(Instant::now() < deadline, "{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // A decision whose answer was lost with its leader shows in the task's state.
    let decide = |c: &mut Cluster, run: &str, args: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            deaths.borrow_mut().extend(revive(c));
            let r = c.cli().run(args);
            if r.code == 0 {
                return;
            }
            if let Ok(now) = c.cli().get_run(run) {
                if task_state(&now, "deploy") != "WAITING_APPROVAL" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{args:?}: {}", r.stderr);
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let a = submit(&mut c, "hooks-a");
    wait(&mut c, &a, &|r| {
        task_state(r, "deploy") == "WAITING_APPROVAL"
    });
    decide(&mut c, &a, &["run", "approve", &a, "deploy"]);
    let ra = wait(&mut c, &a, &|r| {
        r["state"] == "SUCCEEDED" || r["state"] == "FAILED"
    });
    assert_eq!(ra["state"], "SUCCEEDED", "{ra:#}");
    let b = submit(&mut c, "hooks-b");
    wait(&mut c, &b, &|r| {
        task_state(r, "deploy") == "WAITING_APPROVAL"
    });
    decide(
        &mut c,
        &b,
        &[
            "run",
            "reject",
            &b,
            "deploy",
            "--reason",
            "accuracy too low",
        ],
    );
    let rb = wait(&mut c, &b, &|r| r["state"] == "FAILED");

    // Every change is delivered: the hook's mark reaches the last notice.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        deaths.borrow_mut().extend(revive(&mut c));
        let l = c.cli().run(&["webhook", "list", "-o", "json"]);
        if let Ok(v) = l.json() {
            let hook = &v["webhooks"][0];
            if hook["pending"] == 0 && hook["delivered"] == v["last_seq"] {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {}\n{}",
            l.stdout,
            c.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A leader that died right after its last post is counted too.
    std::thread::sleep(Duration::from_secs(1));
    deaths.borrow_mut().extend(revive(&mut c));
    let deaths = deaths.borrow().clone();
    assert!(
        !deaths.is_empty() && deaths.iter().all(|code| *code == Some(70)),
        "the leaders were to die by the failpoint's panic: {deaths:?}\n{}",
        c.logs_tail()
    );

    let got = rx.received();
    // The first two were refused and sent again.
    let refused: Vec<&Value> = got.iter().filter(|g| g["status"] == 503).collect();
    assert_eq!(refused.len(), 2, "{got:#?}");
    for r in &refused {
        assert!(
            got.iter()
                .any(|g| g["status"] == 200 && g["key"] == r["key"]),
            "a refused notice was not sent again: {r}"
        );
    }
    let taken: Vec<&Value> = got.iter().filter(|g| g["status"] == 200).collect();
    let mut by_key: BTreeMap<String, &Value> = BTreeMap::new();
    let mut order = Vec::new();
    let mut repeats = 0;
    for g in &taken {
        let key = g["key"].as_str().unwrap_or("").to_string();
        assert_eq!(g["body"]["id"], key.as_str(), "{g}");
        assert_eq!(g["content_type"], "application/json", "{g}");
        match by_key.get(&key) {
            Some(first) => {
                repeats += 1;
                assert_eq!(
                    first["body"], g["body"],
                    "a repeat differs from the original"
                );
            }
            None => {
                by_key.insert(key, g);
                order.push(g["body"].clone());
            }
        }
    }
    eprintln!(
        "{} notices, {repeats} repeats, deaths {deaths:?}",
        order.len()
    );
    // A new leader carries on from the committed mark: at most the one notice in flight
    // comes again per leader death.
    assert!(
        repeats <= deaths.len(),
        "{repeats} repeats for {} leader deaths",
        deaths.len()
    );
    // In commit order, without a gap: seq 1, 2, 3, ...
    let seqs: Vec<u64> = order.iter().map(|b| b["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{order:#?}"
    );
    // Each change of a run or task follows the one before it.
    let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
    for b in &order {
        let who = (
            b["run_id"].as_str().unwrap_or("").to_string(),
            b["task_name"].as_str().unwrap_or("(run)").to_string(),
        );
        let previous = b["previous_state"].as_str().map(str::to_string);
        assert_eq!(
            previous.as_ref(),
            last.get(&who),
            "{who:?}: a change was lost or doubled: {b}"
        );
        assert!(
            b["text"].as_str().unwrap_or("").starts_with("Gantry: "),
            "{b}"
        );
        last.insert(who, b["state"].as_str().unwrap_or("").to_string());
    }
    // The ends match the runs.
    let end = |run: &str, who: &str| last.get(&(run.to_string(), who.to_string())).cloned();
    assert_eq!(end(&a, "(run)").as_deref(), Some("SUCCEEDED"));
    assert_eq!(end(&a, "deploy").as_deref(), Some("SUCCEEDED"));
    assert_eq!(end(&b, "(run)").as_deref(), Some("FAILED"));
    assert_eq!(end(&b, "deploy").as_deref(), Some("FAILED"));
    let states_of = |run: &str, who: &str| -> Vec<String> {
        order
            .iter()
            .filter(|x| x["run_id"] == run && x["task_name"].as_str().unwrap_or("(run)") == who)
            .map(|x| x["state"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        states_of(&a, "deploy"),
        vec!["WAITING_APPROVAL", "READY", "RUNNING", "SUCCEEDED"]
    );
    assert_eq!(states_of(&b, "deploy"), vec!["WAITING_APPROVAL", "FAILED"]);
    let rejected = order
        .iter()
        .find(|x| x["run_id"] == b.as_str() && x["task_name"].is_null() && x["state"] == "FAILED")
        .unwrap();
    assert!(
        rejected["error"]
            .as_str()
            .unwrap_or("")
            .contains("accuracy too low"),
        "{rejected}"
    );
    assert_eq!(rb["state"], "FAILED");
    let runs: BTreeSet<&str> = order.iter().filter_map(|b| b["run_id"].as_str()).collect();
    assert_eq!(runs, BTreeSet::from([a.as_str(), b.as_str()]));

    // Removed: nothing more is sent.
    let rm = c.cli().run(&["webhook", "remove", "test"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    let before = rx.received().len();
    let _ = submit(&mut c, "hooks-c");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.received().len(), before, "a removed hook was posted to");
    c.stop_agent("a1");
}
