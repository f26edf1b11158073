//! `gantry webhook`: the endpoints the leader posts run and task state changes to.

use std::time::Duration;

use gantry_proto::v1 as pb;

use crate::client::{connect, Target};
use crate::exit::CliError;
use crate::output::{self, Format};

#[derive(clap::Subcommand, Debug)]
pub enum WebhookCommand {
    /// Post the state changes committed from now on to URL (a Slack-compatible JSON body,
    /// `text` and the change's fields), in order, retried until it answers 2xx.
    Add {
        /// A name for it: 1 to 64 letters, digits, '-' and '_'.
        id: String,
        /// http:// or https://.
        url: String,
        /// runs (run state changes) or all (runs and tasks).
        #[arg(long, default_value = "all")]
        events: String,
    },
    /// The webhooks, with how far each has been sent (URLs shown without path or query).
    List,
    /// Stop posting to a webhook; what it was not sent is dropped.
    Remove { id: String },
}

fn info_json(w: &pb::WebhookInfo) -> serde_json::Value {
    serde_json::json!({
        "id": w.id,
        "url": w.url,
        "events": w.events,
        "created_at_ms": w.created_at_ms,
        "created_by": w.created_by,
        "delivered": w.delivered,
        "pending": w.pending,
    })
}

pub async fn run(target: &Target, format: Format, cmd: WebhookCommand) -> Result<(), CliError> {
    let mut c = connect(target).await?;
    match cmd {
        WebhookCommand::Add { id, url, events } => {
            let w = c
                .call(Duration::from_secs(15), |mut cl| {
                    let req = pb::AddWebhookRequest {
                        id: id.clone(),
                        url: url.clone(),
                        events: events.clone(),
                    };
                    async move { cl.webhooks.add_webhook(req).await }
                })
                .await?
                .into_inner();
            if !output::print_structured(format, &info_json(&w)) {
                println!("webhook {} added: {} ({})", w.id, w.url, w.events);
            }
        }
        WebhookCommand::List => {
            let r = c
                .call(Duration::from_secs(5), |mut cl| async move {
                    cl.webhooks.list_webhooks(pb::ListWebhooksRequest {}).await
                })
                .await?
                .into_inner();
            let v = serde_json::json!({
                "webhooks": r.webhooks.iter().map(info_json).collect::<Vec<_>>(),
                "last_seq": r.last_seq,
                "dropped": r.dropped,
            });
            if !output::print_structured(format, &v) {
                output::table(
                    &["ID", "URL", "EVENTS", "DELIVERED", "PENDING", "CREATED BY"],
                    r.webhooks
                        .iter()
                        .map(|w| {
                            vec![
                                w.id.clone(),
                                w.url.clone(),
                                w.events.clone(),
                                w.delivered.to_string(),
                                w.pending.to_string(),
                                w.created_by.clone(),
                            ]
                        })
                        .collect(),
                );
                if r.dropped > 0 {
                    println!(
                        "{} state changes were dropped before every webhook had them",
                        r.dropped
                    );
                }
            }
        }
        WebhookCommand::Remove { id } => {
            let w = c
                .call(Duration::from_secs(15), |mut cl| {
                    let req = pb::RemoveWebhookRequest { id: id.clone() };
                    async move { cl.webhooks.remove_webhook(req).await }
                })
                .await?
                .into_inner();
            if !output::print_structured(format, &info_json(&w)) {
                println!("webhook {} removed", w.id);
            }
        }
    }
    Ok(())
}
