//! Plain text only on purpose: a coordinator asked to listen on a non-loopback address, or an
//! agent asked to reach a coordinator on one, without TLS refuses to start, says why and names
//! `--insecure`; with `--insecure` it starts. On loopback neither needs a flag.

use std::process::{Command, Stdio};
use std::time::Duration;

use gantry_testkit::{bin_dir, free_port, run_within, wait_for_port, Proc};

fn coordinator(listen: &str, data: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("gantry-coordinator"));
    cmd.args(["--node-id", "1", "--bootstrap", "--listen", listen])
        .arg("--data-dir")
        .arg(data);
    cmd
}

#[test]
fn a_coordinator_refuses_plain_text_off_loopback_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let out = run_within(
        &mut coordinator(&listen, &dir.path().join("refused")),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the coordinator served plain text on {listen}: {e}"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("without TLS") && out.stderr.contains("--insecure"),
        "the refusal does not say why or how to force it: {}",
        out.stderr
    );
    assert!(
        !dir.path().join("refused").exists(),
        "a refused coordinator made its data directory"
    );

    // Forced, it serves.
    let port = free_port();
    let child = coordinator(&format!("0.0.0.0:{port}"), &dir.path().join("forced"))
        .arg("--insecure")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc::new(child, "coordinator --insecure");
    wait_for_port(
        port,
        &mut p.child,
        "coordinator --insecure on 0.0.0.0",
        Duration::from_secs(30),
    )
    .unwrap();
}

#[test]
fn a_coordinator_on_loopback_needs_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = coordinator(&format!("127.0.0.1:{port}"), dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc::new(child, "coordinator on loopback");
    wait_for_port(
        port,
        &mut p.child,
        "coordinator on 127.0.0.1 without flags",
        Duration::from_secs(30),
    )
    .unwrap();
}

#[test]
fn an_agent_refuses_a_plain_text_coordinator_off_loopback_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    // TEST-NET-1: nothing answers there, and the refusal must come before any dial.
    let out = run_within(
        Command::new(bin_dir().join("gantry-agent"))
            .args(["--coordinator", "192.0.2.1:7000", "--runtime", "process"])
            .arg("--work-dir")
            .arg(dir.path()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the agent went on without TLS: {e}"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("without TLS")
            && out.stderr.contains("192.0.2.1:7000")
            && out.stderr.contains("--insecure"),
        "the refusal does not say why or how to force it: {}",
        out.stderr
    );

    // Half the TLS flags is a mistake, said as such.
    let out = run_within(
        Command::new(bin_dir().join("gantry-agent"))
            .args(["--coordinator", "127.0.0.1:7000", "--runtime", "process"])
            .args(["--tls-ca", "/nonexistent/ca.pem"])
            .arg("--work-dir")
            .arg(dir.path()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the agent went on with half its TLS flags: {e}"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("go together"),
        "the refusal does not say what is missing: {}",
        out.stderr
    );
}
