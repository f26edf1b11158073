//! Waiting for a condition: one helper instead of a deadline-and-sleep loop in every test.
//!
//! A check returns `Ok(value)` when the condition holds and `Err(why)` while it does not; on
//! timeout the caller gets the last `why`, so a failure says what was last seen.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The default interval between two checks.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `check` every `every` until it returns `Ok`, for at most `timeout`: the value, or the
/// last `Err` once the time is up. `check` runs at least once, and once more at the deadline.
pub fn poll_every<T, E>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())))
            }
        }
    }
}

/// [`poll_every`] at the default interval ([`POLL`]).
pub fn poll<T, E>(timeout: Duration, check: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    poll_every(timeout, POLL, check)
}

/// For test bodies: [`poll`], panicking on timeout with the last reason.
#[track_caller]
pub fn eventually<T, E: Display>(timeout: Duration, check: impl FnMut() -> Result<T, E>) -> T {
    match poll(timeout, check) {
        Ok(v) => v,
        Err(why) => panic!("not within {timeout:?}: {why}"),
    }
}

/// For test bodies: `check` holds at every poll for `period`; panics at the first `Err`.
#[track_caller]
pub fn always<E: Display>(period: Duration, mut check: impl FnMut() -> Result<(), E>) {
    let until = Instant::now() + period;
    loop {
        if let Err(why) = check() {
            panic!("{why}");
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(now)));
    }
}

/// For test bodies: waits until `observe` gives one value at every poll for `period` (a system
/// at rest) and returns it; panics after `timeout` with the last two values seen.
#[track_caller]
pub fn settled<T: PartialEq + std::fmt::Debug, E: Display>(
    timeout: Duration,
    period: Duration,
    mut observe: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last: Option<(T, Instant)> = None;
    loop {
        let why = match observe() {
            Ok(v) => match last.take() {
                Some((prev, since)) if prev == v => {
                    if since.elapsed() >= period {
                        return v;
                    }
                    last = Some((prev, since));
                    String::new()
                }
                Some((prev, _)) => {
                    let why = format!("still changing: {prev:?} then {v:?}");
                    last = Some((v, Instant::now()));
                    why
                }
                None => {
                    last = Some((v, Instant::now()));
                    String::new()
                }
            },
            Err(e) => {
                last = None;
                e.to_string()
            }
        };
        if Instant::now() >= deadline {
            panic!("not at rest for {period:?} within {timeout:?}: {why}");
        }
        std::thread::sleep(POLL);
    }
}

/// Calls `f` at every poll for `period` (sampling what happens meanwhile).
pub fn repeat_for(period: Duration, mut f: impl FnMut()) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        f();
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
}

/// [`poll_every`] for async code: sleeps on tokio's timer between checks.
#[cfg(feature = "async")]
pub async fn poll_async<T, E>(
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now())))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_value_once_the_check_holds() {
        let mut n = 0;
        let v = poll_every(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err("not yet")
            }
        });
        assert_eq!(v, Ok(3));
    }

    #[test]
    fn poll_gives_the_last_reason_after_the_timeout() {
        let mut n = 0;
        let t0 = Instant::now();
        let r: Result<(), String> =
            poll_every(Duration::from_millis(30), Duration::from_millis(5), || {
                n += 1;
                Err(format!("try {n}"))
            });
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(r, Err(format!("try {n}")));
        assert!(n >= 2, "checked once more at the deadline: {n}");
    }

    #[test]
    #[should_panic(expected = "not within")]
    fn eventually_panics_with_the_reason() {
        eventually(Duration::from_millis(10), || Err::<(), _>("never"));
    }

    #[test]
    #[should_panic(expected = "broke at 2")]
    fn always_panics_at_the_first_broken_check() {
        let mut n = 0;
        always(Duration::from_secs(5), || {
            n += 1;
            if n == 2 {
                Err(format!("broke at {n}"))
            } else {
                Ok(())
            }
        });
    }
}
