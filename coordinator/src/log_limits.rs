//! Bounds on what a step's log may cost the node its agent streams to: the length of a line,
//! the lines per second, and the bytes kept per attempt. A step that prints in a tight loop
//! would otherwise fill the node's disk and the memory of every `run logs -f`. Lines over a
//! bound are dropped (or cut), and a marker line in their place says how many and why, so a
//! reader never mistakes a thinned log for the whole one.
//!
//! The counters live in the agent's session and start again when it reconnects: the bounds are
//! against a runaway step, not against an agent that lies (an agent is trusted with its steps'
//! output, see DESIGN.md).

/// The bounds; `gantry-coordinator --max-log-line-bytes`, `--max-log-lines-per-sec`,
/// `--max-log-burst-lines` and `--max-log-bytes-per-step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Longest line kept whole; a longer one is cut there and marked.
    pub max_line_bytes: usize,
    /// Lines per second an attempt may send, sustained.
    pub lines_per_sec: u32,
    /// Lines an attempt may send at once, above the sustained rate.
    pub burst_lines: u32,
    /// Bytes of log lines kept per attempt; later lines are dropped.
    pub max_attempt_bytes: u64,
    /// Bytes of log lines kept per run, every attempt of every step together.
    pub max_run_bytes: u64,
    /// Bytes of step logs this node keeps in all; over it the oldest runs' logs go.
    pub max_store_bytes: u64,
}

/// The agent cuts a line without a newline at 64 KiB; the coordinator keeps a whole such piece.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// The most a line may be set to: a log batch must fit one agent message.
pub const MAX_LINE_BYTES_CEILING: usize = 1024 * 1024;

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            lines_per_sec: 1_000,
            burst_lines: 10_000,
            max_attempt_bytes: 64 * 1024 * 1024,
            max_run_bytes: 1 << 30,
            max_store_bytes: 8 << 30,
        }
    }
}

impl LogLimits {
    /// Refuses settings that would keep nothing or let one line outgrow an agent message.
    pub fn check(&self) -> Result<(), String> {
        if self.max_line_bytes < 80 || self.max_line_bytes > MAX_LINE_BYTES_CEILING {
            return Err(format!(
                "--max-log-line-bytes is {}; it must be between 80 and {MAX_LINE_BYTES_CEILING}",
                self.max_line_bytes
            ));
        }
        if self.lines_per_sec == 0 || self.burst_lines == 0 {
            return Err(
                "--max-log-lines-per-sec and --max-log-burst-lines must be at least 1".into(),
            );
        }
        if self.max_attempt_bytes < self.max_line_bytes as u64 {
            return Err(format!(
                "--max-log-bytes-per-step ({}) must hold at least one whole line ({} bytes)",
                self.max_attempt_bytes, self.max_line_bytes
            ));
        }
        if self.max_run_bytes < self.max_line_bytes as u64 {
            return Err(format!(
                "--max-log-bytes-per-run ({}) must hold at least one whole line ({} bytes)",
                self.max_run_bytes, self.max_line_bytes
            ));
        }
        if self.max_store_bytes < self.max_run_bytes {
            return Err(format!(
                "--max-step-log-bytes ({}) must be at least --max-log-bytes-per-run ({})",
                self.max_store_bytes, self.max_run_bytes
            ));
        }
        Ok(())
    }

    /// The caps of the node's step-log store.
    pub fn store_caps(&self) -> crate::logs::LogStoreCaps {
        crate::logs::LogStoreCaps {
            run_bytes: self.max_run_bytes,
            total_bytes: self.max_store_bytes,
        }
    }
}

/// The log of one attempt so far, as the session has let it through.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    /// Lines that may be sent now (a token bucket, in thousandths of a line).
    milli_tokens: u64,
    last_ms: i64,
    bytes: u64,
    dropped_for_rate: u64,
    capped: bool,
}

impl AttemptLog {
    pub fn new(limits: &LogLimits, now_ms: i64) -> Self {
        AttemptLog {
            milli_tokens: u64::from(limits.burst_lines) * 1000,
            last_ms: now_ms,
            bytes: 0,
            dropped_for_rate: 0,
            capped: false,
        }
    }

    /// The lines to keep for `line`, which arrived at `now_ms`: none when it is over a bound;
    /// else the line (cut when too long), after a marker for lines dropped before it.
    pub fn admit(&mut self, limits: &LogLimits, line: String, now_ms: i64) -> Vec<String> {
        if self.capped {
            return Vec::new();
        }
        let elapsed = u64::try_from(now_ms.saturating_sub(self.last_ms)).unwrap_or(0);
        self.last_ms = self.last_ms.max(now_ms);
        let full = u64::from(limits.burst_lines) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(limits.lines_per_sec)))
            .min(full);
        if self.milli_tokens < 1000 {
            self.dropped_for_rate += 1;
            return Vec::new();
        }
        self.milli_tokens -= 1000;
        let mut out = Vec::with_capacity(2);
        if self.dropped_for_rate > 0 {
            out.push(format!(
                "[gantry] {} line(s) dropped here: the step wrote more than {} lines a second \
                 (--max-log-lines-per-sec)",
                self.dropped_for_rate, limits.lines_per_sec
            ));
            self.dropped_for_rate = 0;
        }
        let line = cut(line, limits.max_line_bytes);
        let size = line.len() as u64;
        if self.bytes + size > limits.max_attempt_bytes {
            self.capped = true;
            out.push(format!(
                "[gantry] this attempt's log reached {} bytes (--max-log-bytes-per-step); the \
                 rest of it is dropped",
                limits.max_attempt_bytes
            ));
            return out;
        }
        self.bytes += size;
        out.push(line);
        out
    }
}

/// `line` cut to at most `max` bytes, on a character boundary, with a note of its length.
fn cut(line: String, max: usize) -> String {
    if line.len() <= max {
        return line;
    }
    let note = format!(" [gantry: line cut, it had {} bytes]", line.len());
    let mut end = max.saturating_sub(note.len());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = line;
    kept.truncate(end);
    kept.push_str(&note);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits {
            max_line_bytes: 100,
            lines_per_sec: 10,
            burst_lines: 5,
            max_attempt_bytes: 1_000,
            ..LogLimits::default()
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_a_marker_counts_the_drops() {
        let l = limits();
        let mut log = AttemptLog::new(&l, 0);
        let kept: Vec<String> = (0..8)
            .flat_map(|i| log.admit(&l, format!("line {i}"), 0))
            .collect();
        assert_eq!(kept, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
        // 100 ms later one more line may pass (10 a second), after a marker for the 3 dropped.
        let next = log.admit(&l, "line 8".into(), 100);
        assert_eq!(next.len(), 2, "{next:?}");
        assert!(
            next[0].starts_with("[gantry] 3 line(s) dropped"),
            "{next:?}"
        );
        assert_eq!(next[1], "line 8");
        assert!(log.admit(&l, "line 9".into(), 100).is_empty());
    }

    #[test]
    fn the_bucket_refills_only_up_to_the_burst() {
        let l = limits();
        let mut log = AttemptLog::new(&l, 0);
        let kept = (0..20)
            .filter(|i| !log.admit(&l, format!("{i}"), 3_600_000).is_empty())
            .count();
        assert_eq!(kept, 5);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_and_say_so() {
        let l = limits();
        let mut log = AttemptLog::new(&l, 0);
        let line = "é".repeat(200);
        let kept = log.admit(&l, line, 0);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].len() <= 100, "{}", kept[0].len());
        assert!(
            kept[0].ends_with("[gantry: line cut, it had 400 bytes]"),
            "{}",
            kept[0]
        );
        assert!(kept[0].starts_with('é'));
    }

    #[test]
    fn the_cap_ends_the_log_with_one_marker() {
        let l = LogLimits {
            lines_per_sec: 1_000_000,
            burst_lines: 1_000_000,
            ..limits()
        };
        let mut log = AttemptLog::new(&l, 0);
        let mut kept = Vec::new();
        for i in 0..100 {
            kept.extend(log.admit(&l, format!("{i:0>90}"), i));
        }
        let markers: Vec<&String> = kept.iter().filter(|k| k.starts_with("[gantry]")).collect();
        assert_eq!(markers.len(), 1, "{kept:?}");
        assert_eq!(
            kept.len(),
            12,
            "11 lines of 90 bytes fit in 1000, then the marker"
        );
        assert!(kept
            .last()
            .is_some_and(|k| k.contains("reached 1000 bytes")));
    }

    #[test]
    fn settings_that_keep_nothing_are_refused() {
        assert!(LogLimits::default().check().is_ok());
        for bad in [
            LogLimits {
                max_run_bytes: 10,
                ..LogLimits::default()
            },
            LogLimits {
                max_store_bytes: 1 << 20,
                ..LogLimits::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        for bad in [
            LogLimits {
                max_line_bytes: 10,
                ..LogLimits::default()
            },
            LogLimits {
                max_line_bytes: 2 << 20,
                ..LogLimits::default()
            },
            LogLimits {
                lines_per_sec: 0,
                ..LogLimits::default()
            },
            LogLimits {
                burst_lines: 0,
                ..LogLimits::default()
            },
            LogLimits {
                max_attempt_bytes: 100,
                ..LogLimits::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
