//! How long `parse_pipeline` takes over the whole KFP conformance corpus: the figure to compare
//! when the YAML loader or the IR walker changes. A measurement, not a check, so it is ignored
//! by default:
//!
//! `cargo test -p gantry-core --release --test parse_timing -- --ignored --nocapture`
//!
//! `GANTRY_PARSE_PASSES` sets how many passes over the corpus are timed (default 20).

// Reads the corpus from disk and times it with a clock: a test may, the core may not.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs;
use std::hint::black_box;
use std::time::{Duration, Instant};

use gantry_core::ir::parse_pipeline;
use gantry_testkit::corpus::{corpus_dir, yaml_files};

#[test]
#[ignore = "a measurement: run it with --release -- --ignored --nocapture"]
fn parse_time_of_the_corpus() {
    let Some(dir) = corpus_dir("the parse timing") else {
        return;
    };
    let mut files = yaml_files(&dir);
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let passes: usize = std::env::var("GANTRY_PARSE_PASSES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(20)
        .max(1);

    // The first pass warms caches and counts what is accepted.
    let accepted = texts.iter().filter(|t| parse_pipeline(t).is_ok()).count();
    let mut times: Vec<Duration> = (0..passes)
        .map(|_| {
            let start = Instant::now();
            for t in &texts {
                let _ = black_box(parse_pipeline(black_box(t)));
            }
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{} files ({} KiB), {accepted} accepted; one pass over the corpus: min {:.2?}, median {:.2?}, max {:.2?} ({passes} passes)",
        texts.len(),
        bytes / 1024,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
    );
}
