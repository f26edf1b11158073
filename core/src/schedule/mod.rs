//! Recurring runs (KFP's): a pipeline started on a cron line or every N seconds, between an
//! optional start and end, with at most `max_concurrency` of its runs going at once.
//!
//! Which tick is due is a function of the replicated record and `now`, so whichever leader
//! asks gets the same answer; each firing is committed with the tick's time, which apply
//! checks against the last one fired, so a leader change at fire time neither skips nor
//! doubles a tick.

pub mod cron;

use serde::{Deserialize, Serialize};

use crate::state::catalog::VersionRef;

/// KFP's bounds on `max_concurrency`.
pub const MAX_CONCURRENCY: u32 = 10;
/// Most ticks walked to find the latest due one (`no_catchup` after a long pause).
const MAX_TICKS_WALKED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// KFP's cron dialect (see [`cron`]).
    Cron { cron: String },
    /// Every `interval_secs` from the start (or the creation).
    Periodic { interval_secs: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecurringRun {
    pub id: String,
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub experiment_id: String,
    /// The pipeline each run starts (checked to parse when the schedule was made).
    pub pipeline_yaml: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_version: Option<VersionRef>,
    /// As given (JSON values), checked against the pipeline when the schedule was made.
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub service_account: String,
    pub trigger: Trigger,
    /// Unix seconds.
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
    pub max_concurrency: u32,
    /// Only the latest due tick fires after a pause; otherwise every missed one does, in order.
    #[serde(default)]
    pub no_catchup: bool,
    pub enabled: bool,
    /// Milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// The last tick fired (Unix seconds).
    #[serde(default)]
    pub last_fired: Option<i64>,
}

/// Checks a trigger; the error names the field.
pub fn check_trigger(t: &Trigger) -> Result<(), String> {
    match t {
        Trigger::Cron { cron } => cron::Cron::parse(cron)
            .map(|_| ())
            .map_err(|e| format!("trigger.cron_schedule.cron {cron:?}: {e}")),
        Trigger::Periodic { interval_secs } if *interval_secs < 1 => Err(format!(
            "trigger.periodic_schedule.interval_second must be at least 1, not {interval_secs}"
        )),
        Trigger::Periodic { .. } => Ok(()),
    }
}

impl RecurringRun {
    /// The first tick strictly after `t` (seconds), by the trigger alone.
    fn tick_after(&self, t: i64) -> Option<i64> {
        match &self.trigger {
            Trigger::Cron { cron } => cron::Cron::parse(cron).ok()?.next_after(t),
            Trigger::Periodic { interval_secs } => t.checked_add(*interval_secs),
        }
    }

    /// What the next tick follows (seconds): the last one fired, else the creation or the
    /// start time, whichever is later (KFP's rule).
    fn base(&self) -> i64 {
        self.last_fired.unwrap_or_else(|| {
            self.created_at
                .div_euclid(1000)
                .max(self.start_time.unwrap_or(i64::MIN))
        })
    }

    /// The tick to fire at `now` (seconds), if any: the one after [`Self::base`], or with
    /// `no_catchup` the latest due one; none when disabled, past the end, or when `active`
    /// runs of it already fill `max_concurrency`.
    pub fn due(&self, now: i64, active: usize) -> Option<i64> {
        if !self.enabled || active >= self.max_concurrency as usize {
            return None;
        }
        let base = self.base();
        let mut tick = self.tick_after(base)?;
        if tick > now {
            return None;
        }
        if self.no_catchup {
            match &self.trigger {
                Trigger::Periodic { interval_secs } => {
                    tick = base + (now - base) / interval_secs * interval_secs;
                }
                Trigger::Cron { .. } => {
                    for _ in 0..MAX_TICKS_WALKED {
                        match self.tick_after(tick) {
                            Some(next) if next <= now => tick = next,
                            _ => break,
                        }
                    }
                }
            }
        }
        if self.end_time.is_some_and(|end| tick > end) {
            return None;
        }
        Some(tick)
    }

    /// Whether apply may fire `tick` now: later than the last one fired, and a slot free.
    pub fn may_fire(&self, tick: i64, active: usize) -> Result<(), String> {
        if !self.enabled {
            return Err(format!("recurring run {} is disabled", self.id));
        }
        if self.last_fired.is_some_and(|last| tick <= last) {
            return Err(format!(
                "recurring run {}: tick {tick} was fired already (last {})",
                self.id,
                self.last_fired.unwrap_or_default()
            ));
        }
        if active >= self.max_concurrency as usize {
            return Err(format!(
                "recurring run {} has {active} runs going, its max_concurrency",
                self.id
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(secs: i64) -> RecurringRun {
        RecurringRun {
            id: "s".into(),
            display_name: "s".into(),
            description: String::new(),
            experiment_id: "e".into(),
            pipeline_yaml: String::new(),
            pipeline_version: None,
            parameters: Default::default(),
            service_account: String::new(),
            trigger: Trigger::Periodic {
                interval_secs: secs,
            },
            start_time: None,
            end_time: None,
            max_concurrency: 1,
            no_catchup: false,
            enabled: true,
            created_at: 1_000_000,
            updated_at: 1_000_000,
            last_fired: None,
        }
    }

    #[test]
    fn periodic_ticks_count_from_creation_and_missed_ones_fire_in_order() {
        let mut s = every(10);
        assert_eq!(
            s.due(1_005, 0),
            None,
            "the first tick is a period after creation"
        );
        assert_eq!(s.due(1_010, 0), Some(1_010));
        s.last_fired = Some(1_010);
        // 35 s later: 1020 is next, then 1030, one at a time.
        assert_eq!(s.due(1_045, 0), Some(1_020));
        s.last_fired = Some(1_020);
        assert_eq!(s.due(1_045, 0), Some(1_030));
        // A full slot holds the tick back; disabled, nothing.
        assert_eq!(s.due(1_045, 1), None);
        s.enabled = false;
        assert_eq!(s.due(1_045, 0), None);
    }

    #[test]
    fn no_catchup_fires_only_the_latest_due_tick_and_the_end_stops_it() {
        let mut s = every(10);
        s.no_catchup = true;
        s.last_fired = Some(1_010);
        assert_eq!(s.due(1_045, 0), Some(1_040));
        s.end_time = Some(1_035);
        assert_eq!(s.due(1_045, 0), None);
    }

    #[test]
    fn a_start_time_moves_the_first_tick() {
        let mut s = every(10);
        s.start_time = Some(2_000);
        assert_eq!(s.due(1_999, 0), None);
        assert_eq!(s.due(2_010, 0), Some(2_010));
        // A start before the creation changes nothing.
        let mut p = every(10);
        p.start_time = Some(500);
        assert_eq!(p.due(1_005, 0), None);
        assert_eq!(p.due(1_010, 0), Some(1_010));
    }

    #[test]
    fn cron_ticks() {
        let mut s = every(1);
        s.trigger = Trigger::Cron {
            cron: "*/5 * * * * *".into(),
        };
        assert_eq!(s.due(1_003, 0), None);
        assert_eq!(s.due(1_007, 0), Some(1_005));
        assert!(check_trigger(&Trigger::Cron {
            cron: "61 * * * * *".into()
        })
        .is_err());
        assert!(check_trigger(&Trigger::Periodic { interval_secs: 0 }).is_err());
    }

    #[test]
    fn apply_refuses_a_tick_fired_before_or_a_full_slot() {
        let mut s = every(10);
        s.last_fired = Some(1_010);
        assert!(s.may_fire(1_010, 0).is_err());
        assert!(s.may_fire(1_020, 1).is_err());
        assert!(s.may_fire(1_020, 0).is_ok());
    }
}
