//! Certificates rotate with no restart and no dropped run: on a running 3-node cluster with an
//! agent in the middle of a step, every certificate (three coordinators, the agent, the
//! client) is replaced by one from a new CA, in the order an operator follows (trust both CAs,
//! swap the certificates, trust only the new CA). Each program picks the files up by itself.
//! Afterwards only the new CA is trusted anywhere, so every fresh handshake proves the new
//! material: the client reaches every node, a leader change makes the agent dial the new leader,
//! a second agent joins, and the step that was running finishes in its first attempt.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::{issue, write_atomic, Cluster, ClusterOpts, TEST_CLUSTER};
use gantry_testkit::{compile_pipeline, eventually, poll_every, task};
use gantry_tls::issue::create_ca;
use gantry_tls::Role;

const RELOADED: &str = "TLS material reloaded";

/// Until node `id`'s log, and agent `agent`'s, show at least `n` reloads each.
fn wait_reloads(c: &Cluster, agents: &[&str], n: usize) {
    eventually(Duration::from_secs(30), || {
        for id in c.all_ids() {
            let got = c.log_count(id, &[RELOADED]);
            if got < n {
                return Err(format!("node {id}: {got} reloads, waiting for {n}"));
            }
        }
        for a in agents {
            let got = c
                .agent_log(a)
                .lines()
                .filter(|l| l.contains(RELOADED))
                .count();
            if got < n {
                return Err(format!("agent {a}: {got} reloads, waiting for {n}"));
            }
        }
        Ok(())
    });
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn certificates_rotate_to_a_new_ca_under_a_running_step() {
    let mut c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let file = compile_pipeline("sleeper", c.dir.path()).unwrap();
    let run_id = cli.submit(&file, &["seconds=20"]).unwrap();
    cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "RUNNING"
    });

    let tls = c.tls_dir().unwrap().to_path_buf();
    let ca_pem = tls.join("ca.pem");
    let old_ca = read(&ca_pem);
    let next = c.dir.path().join("tls-next");
    let new_ca = create_ca(&next, TEST_CLUSTER, 30, false).unwrap();
    let new_ca_pem = read(&new_ca.cert);

    // 1. Everyone trusts both CAs.
    let mut both = old_ca.clone();
    both.extend_from_slice(&new_ca_pem);
    write_atomic(&ca_pem, &both).unwrap();
    wait_reloads(&c, &["a1"], 1);

    // 2. Every certificate is replaced by one of the new CA, in place.
    let mut roles: Vec<Role> = c.all_ids().into_iter().map(Role::Coordinator).collect();
    roles.push(Role::Agent("a1".into()));
    roles.push(Role::Client("harness".into()));
    for role in roles {
        issue(&new_ca, &tls, role).unwrap();
    }
    wait_reloads(&c, &["a1"], 2);

    // 3. Only the new CA is trusted.
    write_atomic(&ca_pem, &new_ca_pem).unwrap();
    wait_reloads(&c, &["a1"], 3);
    for id in c.all_ids() {
        let warned = c.log_count(id, &["cannot be loaded"]);
        assert_eq!(
            warned,
            0,
            "node {id} could not load what was written:\n{}",
            c.log(id)
        );
    }

    // A fresh client trusting only the new CA reaches every node: each serves a new
    // certificate.
    for id in c.all_ids() {
        let s = c.status(id);
        assert!(
            s.is_some(),
            "node {id} does not answer a client that trusts only the new CA:\n{}",
            c.logs_tail()
        );
    }

    // A leader change: the agent dials the new leader with its new certificate, which the new
    // leader checks against the new CA alone; the peers do the same among themselves.
    c.pause(leader);
    let survivors: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != leader).collect();
    let (new_leader, _) = c.wait_leader(&survivors, Duration::from_secs(20)).unwrap();
    c.resume(leader);
    assert_ne!(new_leader, leader);
    eventually(Duration::from_secs(30), || {
        if c.log_count(new_leader, &["agent connected", "a1"]) > 0 {
            Ok(())
        } else {
            Err(format!(
                "a1 has not connected to the new leader {new_leader}:\n{}\n{}",
                c.log(new_leader),
                c.agent_log("a1")
            ))
        }
    });

    // A second agent, certified by the new CA only, joins.
    issue(&new_ca, &tls, Role::Agent("a2".into())).unwrap();
    c.start_agent("a2", &[]).unwrap();
    cli.wait_for_agents(2).unwrap();

    // The run (three 20 s steps in a chain) was mid-step when the rotation began: it finishes,
    // every step in its first attempt.
    let run = poll_every(
        Duration::from_secs(180),
        Duration::from_millis(200),
        || match cli.get_run(&run_id) {
            Ok(r)
                if matches!(
                    r["state"].as_str(),
                    Some("SUCCEEDED" | "FAILED" | "CANCELED")
                ) =>
            {
                Ok(r)
            }
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|last| {
        panic!(
            "the run did not finish: {last}\n{}\n--- agent a1 ---\n{}",
            c.logs_tail(),
            c.agent_log("a1")
        )
    });
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
    for t in run["tasks"].as_array().into_iter().flatten() {
        assert_eq!(t["attempts"], 1, "a step was run again: {t:#}");
    }

    // And the rotated cluster goes on committing and placing.
    let (code, after) = cli.submit_wait(&file, &["seconds=1"]).unwrap();
    assert_eq!(code, 0, "{after:#}\n{}", c.logs_tail());
    c.wait_converged(Duration::from_secs(30)).unwrap();
}
