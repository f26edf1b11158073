//! WebhookService: the hooks that the leader posts run and task state changes to
//! ([`crate::webhooks`] delivers them; [`gantry_core::state::notify`] keeps them).

use gantry_core::state::notify::{self, Events, Webhook};
use gantry_core::state::Command;
use gantry_proto::v1 as pb;
use gantry_proto::v1::webhook_service_client::WebhookServiceClient;
use gantry_proto::v1::webhook_service_server::WebhookService;
use tonic::{Request, Response, Status};

use super::status::ApiError;
use super::{forwarded, relay, Api, ROUTE_WAIT};
use crate::auth::principal;
use crate::server::Route;

/// `scheme://host/…`: a hook URL's path and query often hold its secret (Slack's do).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".into();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(host_end);
    // A user:password@ part is a secret too.
    let host = host.rsplit('@').next().unwrap_or(host);
    if tail.is_empty() || tail == "/" {
        format!("{scheme}://{host}{tail}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

fn info(n: &notify::Notifications, h: &Webhook) -> pb::WebhookInfo {
    let pending = n.pending_count(&h.id);
    pb::WebhookInfo {
        id: h.id.clone(),
        url: redacted(&h.url),
        events: h.events.as_str().to_string(),
        created_at_ms: h.created_at,
        created_by: h.created_by.clone().unwrap_or_default(),
        delivered: h.delivered,
        pending,
    }
}

#[tonic::async_trait]
impl WebhookService for Api {
    async fn add_webhook(
        &self,
        req: Request<pb::AddWebhookRequest>,
    ) -> Result<Response<pb::WebhookInfo>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return WebhookServiceClient::new(ch).add_webhook(relay(req)).await;
        }
        let by = principal(&req).token.map(|t| t.name);
        let r = req.into_inner();
        let events = Events::parse(&r.events).ok_or_else(|| {
            Status::invalid_argument(format!(
                "events {:?}: \"runs\" (run state changes) or \"all\" (runs and tasks)",
                r.events
            ))
        })?;
        let url = r.url.trim().to_string();
        notify::validate(&r.id, &url)
            .map_err(|e| ApiError::Rejected(gantry_core::state::Rejection::Webhook(e)))?;
        let hook = Webhook {
            id: r.id.clone(),
            url,
            events,
            created_at: crate::now_ms(),
            created_by: by,
            delivered: 0,
        };
        let applied = self.0.propose(Command::AddWebhook { hook }).await?;
        applied.result.map_err(ApiError::from)?;
        tracing::info!(webhook = %r.id, "webhook added");
        let st = self.0.state.read();
        let n = &st.notifications;
        let h = n.hooks.get(&r.id).ok_or_else(|| {
            Status::not_found(format!("webhook {:?} was removed meanwhile", r.id))
        })?;
        Ok(Response::new(info(n, h)))
    }

    async fn list_webhooks(
        &self,
        _req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        self.0.read_barrier().await?;
        let st = self.0.state.read();
        let n = &st.notifications;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: n.hooks.values().map(|h| info(n, h)).collect(),
            last_seq: n.last_seq,
            dropped: n.dropped,
        }))
    }

    async fn remove_webhook(
        &self,
        req: Request<pb::RemoveWebhookRequest>,
    ) -> Result<Response<pb::WebhookInfo>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return WebhookServiceClient::new(ch)
                .remove_webhook(relay(req))
                .await;
        }
        let id = req.into_inner().id;
        let shown = {
            let st = self.0.state.read();
            let n = &st.notifications;
            n.hooks.get(&id).map(|h| info(n, h))
        };
        let applied = self
            .0
            .propose(Command::RemoveWebhook { id: id.clone() })
            .await?;
        applied.result.map_err(ApiError::from)?;
        tracing::info!(webhook = %id, "webhook removed");
        Ok(Response::new(shown.unwrap_or(pb::WebhookInfo {
            id,
            ..Default::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn secrets_in_hook_urls_are_not_shown() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted("http://user:pw@10.0.0.1:8080/x?token=1"),
            "http://10.0.0.1:8080/…"
        );
        assert_eq!(redacted("http://h:1/"), "http://h:1/");
        assert_eq!(redacted("http://h:1"), "http://h:1");
    }
}
