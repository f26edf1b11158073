//! A panic anywhere in a coordinator ends its process (status 70), so a node never goes on
//! answering, as leader even, with its Raft thread or one of its tasks dead; its supervisor
//! restarts it from its disk. Failpoints (fail-rs, set through `FAILPOINTS`) panic the Raft
//! loop and the leadership-watch task of a serving node. Without the coordinator's panic hook
//! tokio would swallow the task's panic and the node would run on without it.

use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::*;

/// Starts one node whose failpoint `point` panics on its `after`+1-th pass, checks that the
/// node led and answered first, and that the panic then ended the process with status 70.
fn a_panic_ends_the_node(point: &str, after: u32) {
    let mut opts = ClusterOpts::loopback(1);
    opts.bootstrap_one = true;
    opts.env = vec![("FAILPOINTS".into(), format!("{point}={after}*off->panic"))];
    let mut c = Cluster::start(opts).unwrap();
    let led = c.wait_leader(&[1], Duration::from_secs(30));
    let status = eventually(Duration::from_secs(90), || {
        c.exit_status(1).ok_or("the node still runs")
    });
    let log = c.log(1);
    assert!(
        led.is_ok(),
        "node 1 did not lead before its failpoint fired: {led:?}\n{log}"
    );
    assert_eq!(status.code(), Some(70), "{point}: {status}\n{log}");
    assert!(
        log.contains(&format!("failpoint {point} panic")) && log.contains("exiting"),
        "{point}: the log does not say what panicked and that the node exits\n{log}"
    );
    assert!(c.status(1).is_none(), "a dead node answered");
}

#[test]
fn a_panicked_task_ends_the_coordinator() {
    // The leadership watch wakes every 50 ms: about 5 s of serving first.
    a_panic_ends_the_node("leadership-watch", 100);
}

#[test]
fn a_panicked_raft_thread_ends_the_coordinator() {
    a_panic_ends_the_node("raft-loop", 100);
}
