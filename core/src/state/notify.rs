//! Webhook notifications of run and task state changes, kept in the replicated state.
//!
//! Every state change of a run (and, when a hook asks for them, of a task) is committed as a
//! [`Notice`] with a sequence number, in the same apply that makes the change, so every
//! replica holds the same notices in the same order. The leader posts them to each hook in
//! order and commits how far each hook has been served ([`Command::WebhookDelivered`]); a new
//! leader carries on from that mark. A notice can reach a receiver twice only when the mark
//! is not committed after the receiver's answer (the leader died, or lost its lead); it then
//! carries the same id (`<hook>-<seq>`), which receivers use to drop the repeat.
//!
//! Notices are found by comparing the states of the runs a command names before and after
//! it applies, and only while hooks exist: a cluster without hooks pays nothing.
//!
//! [`Command::WebhookDelivered`]: super::Command::WebhookDelivered

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use gantry_model::{RunId, TaskId};
use serde::{Deserialize, Serialize};

use crate::engine::{approval, RunRecord, ROOT_TASK_ID};

/// Hooks a cluster may have.
pub const MAX_HOOKS: usize = 16;
/// Longest hook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest hook id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Notices kept for hooks that have not taken them: past this, the oldest are dropped (and
/// counted), so an unreachable hook cannot grow every replica's state without end.
pub const MAX_OUTBOX: usize = 100_000;
/// Longest error text a notice carries, in bytes.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Which changes a hook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Events {
    /// Run state changes only.
    Runs,
    /// Run and task state changes.
    #[default]
    All,
}

impl Events {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "runs" => Some(Self::Runs),
            "all" | "" => Some(Self::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::All => "all",
        }
    }

    pub fn wants(self, notice: &Notice) -> bool {
        self == Self::All || notice.task.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Events,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The notices up to this sequence number have been delivered (or were there before the
    /// hook).
    pub delivered: u64,
}

/// The task a notice is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeTask {
    pub id: TaskId,
    pub name: String,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub seq: u64,
    pub at: i64,
    pub run_id: RunId,
    /// The run's display name (KFP API runs) or its pipeline's name.
    pub run_name: String,
    /// `None`: the run's own state changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<NoticeTask>,
    /// The state as the API shows it (a task waiting for approval is `WAITING_APPROVAL`).
    pub state: String,
    /// `None` for a run or task that did not exist before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {0:?} already exists")]
    Exists(String),
    #[error("webhook {0:?} not found")]
    NotFound(String),
    #[error("the cluster has {MAX_HOOKS} webhooks, the most it may have")]
    TooMany,
    #[error("invalid webhook: {0}")]
    Invalid(String),
    #[error("webhook {id:?}: delivery mark {upto} is past the last notice ({last})")]
    MarkAhead { id: String, upto: u64, last: u64 },
}

/// The hooks, and the notices some hook has not taken yet.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Notifications {
    pub hooks: BTreeMap<String, Webhook>,
    pub outbox: VecDeque<Notice>,
    /// Sequence number of the newest notice (0: none yet).
    pub last_seq: u64,
    /// Notices dropped from a full outbox before every hook had them.
    #[serde(default)]
    pub dropped: u64,
}

/// An id is 1 to 64 letters, digits, `-` and `_`; a URL is http or https, with a host.
pub fn validate(id: &str, url: &str) -> Result<(), WebhookError> {
    let bad = |m: String| Err(WebhookError::Invalid(m));
    if id.is_empty()
        || id.len() > MAX_ID_BYTES
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad(format!(
            "id {id:?}: 1 to {MAX_ID_BYTES} letters, digits, '-' and '_'"
        ));
    }
    if url.len() > MAX_URL_BYTES {
        return bad(format!(
            "url is {} bytes; the most is {MAX_URL_BYTES}",
            url.len()
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!("url {url:?} is not an http:// or https:// URL"));
    };
    if scheme != "http" && scheme != "https" {
        return bad(format!(
            "url scheme {scheme:?}: only http and https are posted to"
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) || url.contains(char::is_control) {
        return bad(format!("url {url:?} has no host, or holds spaces"));
    }
    Ok(())
}

impl Notifications {
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.outbox.is_empty() && self.last_seq == 0 && self.dropped == 0
    }

    fn wants_tasks(&self) -> bool {
        self.hooks.values().any(|h| h.events == Events::All)
    }

    pub fn add(&mut self, mut hook: Webhook) -> Result<(), WebhookError> {
        validate(&hook.id, &hook.url)?;
        if self.hooks.contains_key(&hook.id) {
            return Err(WebhookError::Exists(hook.id));
        }
        if self.hooks.len() >= MAX_HOOKS {
            return Err(WebhookError::TooMany);
        }
        // A hook is told what happens from now on.
        hook.delivered = self.last_seq;
        self.hooks.insert(hook.id.clone(), hook);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) -> Result<Webhook, WebhookError> {
        let hook = self
            .hooks
            .remove(id)
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
        self.trim();
        Ok(hook)
    }

    /// Records that `id` has been sent every notice up to `upto`; an older mark changes
    /// nothing (a deposed leader's late commit).
    pub fn delivered(&mut self, id: &str, upto: u64) -> Result<(), WebhookError> {
        let last = self.last_seq;
        let hook = self
            .hooks
            .get_mut(id)
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
        if upto > last {
            return Err(WebhookError::MarkAhead {
                id: id.to_string(),
                upto,
                last,
            });
        }
        hook.delivered = hook.delivered.max(upto);
        self.trim();
        Ok(())
    }

    /// The notices after `hook`'s mark that it wants, oldest first, at most `max`; and the
    /// sequence number the hook may be marked up to once those are sent (it covers the
    /// notices it does not want in between).
    pub fn pending(&self, id: &str, max: usize) -> Option<(Vec<Notice>, u64)> {
        let hook = self.hooks.get(id)?;
        let mut out = Vec::new();
        let mut upto = hook.delivered;
        let start = self.outbox.partition_point(|n| n.seq <= hook.delivered);
        for n in self.outbox.range(start..) {
            if hook.events.wants(n) {
                if out.len() == max {
                    break;
                }
                out.push(n.clone());
            }
            upto = n.seq;
        }
        // Notices dropped from a full outbox are skipped over.
        Some((out, upto.max(hook.delivered)))
    }

    /// How many notices hook `id` wants and has not been sent.
    pub fn pending_count(&self, id: &str) -> u64 {
        let Some(hook) = self.hooks.get(id) else {
            return 0;
        };
        let start = self.outbox.partition_point(|n| n.seq <= hook.delivered);
        self.outbox
            .range(start..)
            .filter(|n| hook.events.wants(n))
            .count() as u64
    }

    /// Drops the notices every hook has, and the oldest past [`MAX_OUTBOX`].
    fn trim(&mut self) {
        let done = self.hooks.values().map(|h| h.delivered).min();
        match done {
            None => self.outbox.clear(),
            Some(done) => {
                while self.outbox.front().is_some_and(|n| n.seq <= done) {
                    self.outbox.pop_front();
                }
            }
        }
        while self.outbox.len() > MAX_OUTBOX {
            self.outbox.pop_front();
            self.dropped += 1;
        }
    }

    fn push(&mut self, mut notice: Notice) {
        self.last_seq += 1;
        notice.seq = self.last_seq;
        self.outbox.push_back(notice);
    }
}

/// A task's state as the API shows it.
fn shown_state(run: &RunRecord, t: &crate::engine::TaskRecord) -> &'static str {
    if approval::awaiting(run, t) {
        "WAITING_APPROVAL"
    } else {
        t.state.as_str()
    }
}

fn run_name(run: &RunRecord) -> String {
    match &run.info {
        Some(i) if !i.display_name.is_empty() => i.display_name.clone(),
        _ => run.pipeline.name.clone(),
    }
}

fn clip(error: &Option<String>) -> Option<String> {
    error.as_ref().map(|e| {
        if e.len() <= MAX_ERROR_BYTES {
            return e.clone();
        }
        let mut end = MAX_ERROR_BYTES;
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &e[..end])
    })
}

/// What the watched runs looked like before a command.
pub struct Before {
    at: i64,
    tasks: bool,
    runs: Vec<(RunId, Option<RunShape>)>,
}

struct RunShape {
    state: &'static str,
    tasks: BTreeMap<TaskId, &'static str>,
}

fn shape(run: &RunRecord, tasks: bool) -> RunShape {
    RunShape {
        state: run.state.as_str(),
        tasks: if tasks {
            run.tasks
                .values()
                .filter(|t| t.task_id.as_str() != ROOT_TASK_ID)
                .map(|t| (t.task_id.clone(), shown_state(run, t)))
                .collect()
        } else {
            BTreeMap::new()
        },
    }
}

impl Before {
    /// Takes the shapes of `runs` (those a command may change), if any hook listens.
    pub fn take(
        n: &Notifications,
        all: &BTreeMap<RunId, Arc<RunRecord>>,
        runs: Vec<RunId>,
        at: i64,
    ) -> Option<Self> {
        if n.hooks.is_empty() || runs.is_empty() {
            return None;
        }
        let tasks = n.wants_tasks();
        let runs = runs
            .into_iter()
            .map(|id| {
                let s = all.get(&id).map(|r| shape(r, tasks));
                (id, s)
            })
            .collect();
        Some(Before { at, tasks, runs })
    }

    /// Commits a notice for every change since [`Before::take`]: a run's tasks first (by
    /// task id), then the run.
    pub fn record(self, n: &mut Notifications, all: &BTreeMap<RunId, Arc<RunRecord>>) {
        for (id, before) in self.runs {
            let Some(run) = all.get(&id) else { continue };
            let now = shape(run, self.tasks);
            let name = run_name(run);
            for (task_id, state) in &now.tasks {
                let was = before.as_ref().and_then(|b| b.tasks.get(task_id)).copied();
                if was == Some(*state) {
                    continue;
                }
                let Some(t) = run.tasks.get(task_id) else {
                    continue;
                };
                n.push(Notice {
                    seq: 0,
                    at: self.at,
                    run_id: id.clone(),
                    run_name: name.clone(),
                    task: Some(NoticeTask {
                        id: task_id.clone(),
                        name: t.name.clone(),
                    }),
                    state: state.to_string(),
                    previous: was.map(str::to_string),
                    error: clip(&t.error),
                });
            }
            let was = before.as_ref().map(|b| b.state);
            if was != Some(now.state) {
                n.push(Notice {
                    seq: 0,
                    at: self.at,
                    run_id: id.clone(),
                    run_name: name,
                    task: None,
                    state: now.state.to_string(),
                    previous: was.map(str::to_string),
                    error: clip(&run.error),
                });
            }
        }
        n.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, events: Events) -> Webhook {
        Webhook {
            id: id.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events,
            created_at: 0,
            created_by: None,
            delivered: 0,
        }
    }

    fn notice(run: &str, task: Option<&str>, state: &str) -> Notice {
        Notice {
            seq: 0,
            at: 1,
            run_id: run.into(),
            run_name: "p".into(),
            task: task.map(|t| NoticeTask {
                id: t.into(),
                name: t.into(),
            }),
            state: state.into(),
            previous: None,
            error: None,
        }
    }

    #[test]
    fn ids_and_urls_are_checked() {
        assert!(validate("slack", "https://hooks.example.com/services/T/B/x").is_ok());
        assert!(validate("a_b-1", "http://10.0.0.1:8080").is_ok());
        for (id, url) in [
            ("", "http://h/"),
            ("has space", "http://h/"),
            (&"x".repeat(65), "http://h/"),
            ("ok", "ftp://h/"),
            ("ok", "h/path"),
            ("ok", "http:///path"),
            ("ok", "http://h /"),
        ] {
            assert!(
                matches!(validate(id, url), Err(WebhookError::Invalid(_))),
                "{id:?} {url:?}"
            );
        }
        let long = format!("http://h/{}", "a".repeat(MAX_URL_BYTES));
        assert!(validate("ok", &long).is_err());
    }

    #[test]
    fn a_hook_gets_what_happens_after_it_was_added_and_marks_only_move_forward() {
        let mut n = Notifications::default();
        n.push(notice("r1", None, "RUNNING"));
        n.add(hook("a", Events::All)).unwrap();
        assert_eq!(n.pending("a", 10).unwrap().0, vec![]);
        n.push(notice("r1", Some("t"), "SUCCEEDED"));
        n.push(notice("r1", None, "SUCCEEDED"));
        let (got, upto) = n.pending("a", 1).unwrap();
        assert_eq!((got.len(), got[0].seq, upto), (1, 2, 2));
        n.delivered("a", 2).unwrap();
        assert_eq!(n.outbox.len(), 1, "delivered notices are dropped");
        n.delivered("a", 1).unwrap();
        assert_eq!(n.hooks["a"].delivered, 2, "an older mark changes nothing");
        assert!(matches!(
            n.delivered("a", 9),
            Err(WebhookError::MarkAhead { .. })
        ));
        assert!(matches!(
            n.delivered("b", 1),
            Err(WebhookError::NotFound(_))
        ));
    }

    #[test]
    fn a_runs_only_hook_skips_task_notices_and_is_marked_past_them() {
        let mut n = Notifications::default();
        n.add(hook("runs", Events::Runs)).unwrap();
        n.push(notice("r1", Some("t"), "RUNNING"));
        n.push(notice("r1", Some("t"), "SUCCEEDED"));
        n.push(notice("r1", None, "SUCCEEDED"));
        n.push(notice("r1", Some("u"), "RUNNING"));
        let (got, upto) = n.pending("runs", 10).unwrap();
        assert_eq!(got.iter().map(|n| n.seq).collect::<Vec<_>>(), vec![3]);
        assert_eq!(upto, 4);
        assert_eq!(n.pending_count("runs"), 1);
        assert_eq!(n.pending_count("nope"), 0);
    }

    #[test]
    fn the_outbox_is_bounded_and_the_slowest_hook_holds_it() {
        let mut n = Notifications::default();
        n.add(hook("fast", Events::All)).unwrap();
        n.add(hook("slow", Events::All)).unwrap();
        for _ in 0..5 {
            n.push(notice("r", None, "RUNNING"));
        }
        n.delivered("fast", 5).unwrap();
        assert_eq!(n.outbox.len(), 5, "kept for the slow hook");
        n.remove("slow").unwrap();
        assert!(n.outbox.is_empty());
        for _ in 0..MAX_OUTBOX + 3 {
            n.push(notice("r", None, "RUNNING"));
        }
        n.trim();
        assert_eq!((n.outbox.len(), n.dropped), (MAX_OUTBOX, 3));
        let (got, _) = n.pending("fast", 1).unwrap();
        assert_eq!(got[0].seq, 9, "dropped notices are skipped");
    }

    #[test]
    fn hooks_are_bounded_and_unique() {
        let mut n = Notifications::default();
        for i in 0..MAX_HOOKS {
            n.add(hook(&format!("h{i}"), Events::All)).unwrap();
        }
        assert_eq!(
            n.add(hook("h0", Events::All)),
            Err(WebhookError::Exists("h0".into()))
        );
        assert_eq!(n.add(hook("more", Events::All)), Err(WebhookError::TooMany));
        assert_eq!(
            n.remove("nope").map(|_| ()),
            Err(WebhookError::NotFound("nope".into()))
        );
    }
}
