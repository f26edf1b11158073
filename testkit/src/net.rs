//! Ports and readiness of the servers a test starts.
//!
//! A port picked here and handed to a child can be taken by someone else before the child
//! binds it. Where a child can bind port 0 and say its address (s3s-fs, `gantry dev`), prefer
//! that and read the address with [`wait_for_line`]; [`free_ports`] is for addresses that must
//! be known before any child starts (the peers of a Raft cluster).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::poll::poll;

/// A port the OS reports free on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `n` ports the OS reports free on 127.0.0.1; all are held until each is known, so they
/// differ.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Until something listens on 127.0.0.1:`port`; fails early if `child` exits.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str, timeout: Duration) -> Result<()> {
    poll(timeout, || {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Ok(()));
        }
        match child.try_wait() {
            Ok(Some(status)) => Ok(Err(anyhow!(
                "{what} exited with {status} before listening on {port}"
            ))),
            _ => Err(anyhow!(
                "{what} did not listen on {port} within {timeout:?}"
            )),
        }
    })?
}

/// Until the `occurrence`-th line of the file `log` holding `marker` is there (1 for the
/// first; a log appended to across restarts counts its earlier lines); returns what follows
/// the marker on that line, trimmed. Fails early, with the log, if `child` exits.
pub fn wait_for_line(
    log: &Path,
    marker: &str,
    occurrence: usize,
    child: &mut Child,
    what: &str,
    timeout: Duration,
) -> Result<String> {
    let found = poll(timeout, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // Only whole lines: a line still being written can hold the marker without what
        // follows it (the CI's "gantry dev starts: an address after the banner").
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(rest) = whole
            .lines()
            .filter_map(|l| l.split_once(marker).map(|(_, r)| r))
            .nth(occurrence.saturating_sub(1))
        {
            return Ok(Ok(rest.trim().to_string()));
        }
        match child.try_wait() {
            Ok(Some(status)) => Ok(Err(anyhow!("{what} exited ({status}):\n{text}"))),
            _ => Err(anyhow!(
                "{what} did not log {marker:?} within {timeout:?}:\n{text}"
            )),
        }
    });
    match found {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// How many lines of `log` hold `marker` (0 when the file is absent).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn count_lines(log: &Path, marker: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.contains(marker)).count())
        .unwrap_or(0)
}

/// `text` without the terminal colour codes (`ESC [ ... m`) the programs' logs carry, so that a
/// field reads as `reason=...`.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() != Some('[') {
            continue;
        }
        // Parameters and intermediates, up to the final byte (@ to ~).
        for c in chars.by_ref() {
            if ('@'..='~').contains(&c) {
                break;
            }
        }
    }
    out
}

/// The first word of what [`wait_for_line`] returned: an address after a banner.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub(crate) fn first_word(rest: &str) -> Result<String> {
    rest.split_whitespace()
        .next()
        .map(str::to_string)
        .context("an address after the banner")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m request refused \u{1b}[3mreason\u{1b}[0m\u{1b}[2m=\u{1b}[0mno token";
        assert_eq!(
            strip_ansi(line),
            "2026  WARN request refused reason=no token"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn a_marker_counts_only_once_its_line_is_whole() {
        use std::io::Write;
        let log = std::env::temp_dir().join(format!("gantry-net-test-{}.log", std::process::id()));
        std::fs::write(&log, "starting\ngantry dev: coordinator on ").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                f.write_all(b"127.0.0.1:7070 (a banner)\n").unwrap();
            })
        };
        let rest = wait_for_line(
            &log,
            "gantry dev: coordinator on ",
            1,
            &mut child,
            "sleep",
            Duration::from_secs(10),
        );
        writer.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&log);
        assert_eq!(rest.unwrap(), "127.0.0.1:7070 (a banner)");
    }
}
