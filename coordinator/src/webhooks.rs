//! The leader posts committed state changes to each webhook, in order, one at a time, and
//! commits each hook's mark after the receiver answers 2xx; a new leader carries on from
//! the committed mark. Failures are retried with backoff (0.5 s doubling to 60 s) for as
//! long as the notice is kept ([`gantry_core::state::notify::MAX_OUTBOX`]).
//!
//! Each body is Slack-compatible (`text`) and carries the change's fields beside it; the
//! `id` field and the `Idempotency-Key` header (`<hook>-<seq>`) name the change, so a
//! receiver can drop the one repeat a leader's death between answer and mark may cause.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::state::notify::Notice;
use gantry_core::state::Command;
use serde_json::{json, Value};

use crate::server::Coordinator;

/// How often the leader looks for hooks added or removed.
const EVERY: Duration = Duration::from_millis(200);
/// How often a hook with nothing to send looks again.
const IDLE: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A receiver that has not answered by then is tried again.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn delivery_loop(c: Arc<Coordinator>) {
    let client = match reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        // A hook is the URL an admin gave; it is not sent elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client could be built; no webhook will be posted");
            return;
        }
    };
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let hooks: BTreeSet<String> = if c.raft.status().is_leader {
            c.state.read().notifications.hooks.keys().cloned().collect()
        } else {
            BTreeSet::new()
        };
        workers.retain(|id, w| {
            let keep = hooks.contains(id) && !w.is_finished();
            if !keep {
                w.abort();
            }
            keep
        });
        for id in hooks {
            workers
                .entry(id.clone())
                .or_insert_with(|| tokio::spawn(deliver(c.clone(), client.clone(), id)));
        }
    }
}

/// Sends hook `id` its notices while this node leads and the hook exists.
async fn deliver(c: Arc<Coordinator>, client: reqwest::Client, id: String) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if !c.raft.status().is_leader {
            return;
        }
        let (url, next, upto, delivered) = {
            let st = c.state.read();
            let n = &st.notifications;
            let Some(hook) = n.hooks.get(&id) else { return };
            let Some((mut next, upto)) = n.pending(&id, 1) else {
                return;
            };
            (hook.url.clone(), next.pop(), upto, hook.delivered)
        };
        let Some(notice) = next else {
            // Only notices it does not want came in: move its mark past them.
            if upto > delivered {
                mark(&c, &id, upto).await;
            }
            tokio::time::sleep(IDLE).await;
            continue;
        };
        match post(&client, &url, &id, &notice).await {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                fail::fail_point!("webhook-posted", |_| ());
                if !mark(&c, &id, upto).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(webhook = %id, seq = notice.seq, error = %e, retry_in = ?backoff, "webhook: the receiver did not take the notice");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Commits hook `id`'s mark; false when this node can no longer do so (it lost the lead).
async fn mark(c: &Coordinator, id: &str, upto: u64) -> bool {
    let cmd = Command::WebhookDelivered {
        id: id.to_string(),
        upto,
    };
    match c.propose(cmd).await {
        Ok(applied) => {
            if let Err(e) = applied.result {
                tracing::debug!(webhook = %id, error = %e, "webhook mark not recorded");
            }
            true
        }
        Err(e) => {
            tracing::warn!(webhook = %id, upto, error = %e, "webhook: the delivery mark could not be committed; the next leader sends the notice again");
            false
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, id: &str, n: &Notice) -> Result<(), String> {
    let delivery = format!("{id}-{}", n.seq);
    let resp = client
        .post(url)
        .header("Idempotency-Key", &delivery)
        .header("X-Gantry-Delivery", &delivery)
        .json(&body(&delivery, n))
        .send()
        .await
        .map_err(|e| {
            // reqwest's errors name the URL, secret path included: keep only the cause.
            let e = e.without_url();
            format!("{e}")
        })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("it answered {status}"))
    }
}

/// The JSON posted for a notice.
pub fn body(delivery: &str, n: &Notice) -> Value {
    let subject = match &n.task {
        Some(t) => format!("task {} of run {} ({})", t.name, n.run_name, n.run_id),
        None => format!("run {} ({})", n.run_name, n.run_id),
    };
    let change = match &n.previous {
        Some(p) => format!("{p} → {}", n.state),
        None => n.state.clone(),
    };
    let mut text = format!("Gantry: {subject}: {change}");
    if let Some(e) = &n.error {
        text.push_str(&format!(": {e}"));
    }
    json!({
        "text": text,
        "id": delivery,
        "seq": n.seq,
        "at": crate::kfp::json::time(n.at),
        "run_id": n.run_id.to_string(),
        "run_name": n.run_name,
        "task_id": n.task.as_ref().map(|t| t.id.to_string()),
        "task_name": n.task.as_ref().map(|t| t.name.clone()),
        "state": n.state,
        "previous_state": n.previous,
        "error": n.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::state::notify::NoticeTask;

    #[test]
    fn a_body_is_slack_text_with_the_fields_beside_it() {
        let n = Notice {
            seq: 7,
            at: 0,
            run_id: "r1".into(),
            run_name: "train".into(),
            task: Some(NoticeTask {
                id: "t".into(),
                name: "deploy".into(),
            }),
            state: "FAILED".into(),
            previous: Some("WAITING_APPROVAL".into()),
            error: Some("rejected by alice: not yet".into()),
        };
        let b = body("slack-7", &n);
        assert_eq!(
            b["text"],
            "Gantry: task deploy of run train (r1): WAITING_APPROVAL → FAILED: rejected by alice: not yet"
        );
        assert_eq!(b["id"], "slack-7");
        assert_eq!(b["task_name"], "deploy");
        assert_eq!(b["at"], "1970-01-01T00:00:00Z");
    }
}
