//! The KFP v2beta1 REST API that `kfp.Client` speaks (`../shared/kfp-rest-v2beta1.md` is the
//! wire contract), served on the coordinator's own port beside gRPC: HTTP/1.1 and HTTP/2,
//! under `/apis/v2beta1/`. Every coordinator answers. Writes run on the leader: a follower
//! sends the request on to it over the peer channel it already holds (as it does for gRPC),
//! with the caller's token, and the leader authorizes the caller. Reads take a ReadIndex
//! barrier first, so a reply never shows a state older than one already acknowledged.
//!
//! Authentication and authorization happen before any handler, in `crate::auth`, with the
//! same table and tokens as gRPC (keys `"METHOD /apis/v2beta1/..."`).

pub(crate) mod experiments;
pub mod json;
pub mod list;
mod pipelines;
mod recurring;
pub mod routes;
mod runs;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tonic::{Code, Status};

use crate::api::ROUTE_WAIT;
use crate::server::{Coordinator, Route, FORWARDED};
use routes::{Endpoint, Found};

/// The largest request body read (KFP's own limit for uploads): an upload or a run carries the
/// whole pipeline, which the submission limits then bound more tightly.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// A refusal in KFP's error shape: `{"code": <gRPC code>, "message": ...}` with the HTTP status
/// grpc-gateway gives that code. No `details`: `kfp.Client` fails on non-base64 ones.
#[derive(Debug)]
pub struct HttpError {
    pub code: Code,
    pub message: String,
}

impl HttpError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        HttpError {
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn response(&self) -> Response<Body> {
        reply(
            http_status(self.code),
            &json!({"code": self.code as i32, "message": self.message}),
        )
    }
}

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        HttpError::new(s.code(), s.message())
    }
}

impl From<crate::api::status::ApiError> for HttpError {
    fn from(e: crate::api::status::ApiError) -> Self {
        Status::from(e).into()
    }
}

impl From<HttpError> for Status {
    fn from(e: HttpError) -> Self {
        Status::new(e.code, e.message)
    }
}

impl From<list::ListError> for HttpError {
    fn from(e: list::ListError) -> Self {
        HttpError::bad(e.0)
    }
}

/// grpc-gateway's mapping from gRPC codes to HTTP statuses.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

type Reply = Result<Value, HttpError>;

/// One request, as the handlers see it.
pub(crate) struct Ctx {
    c: Arc<Coordinator>,
    params: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Ctx {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or("")
    }

    /// A query parameter; empty counts as absent (the client sends `sort_by=` and the like).
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The body as JSON. Unknown fields are ignored (newer SDKs add some).
    fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        if self.body.is_empty() {
            return Err(HttpError::bad("the request needs a JSON body"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::bad(format!("the request body is not valid: {e}")))
    }

    fn api(&self) -> crate::api::Api {
        crate::api::Api(self.c.clone())
    }

    async fn propose(&self, cmd: gantry_core::state::Command) -> Result<(), HttpError> {
        let applied = self
            .c
            .propose(cmd)
            .await
            .map_err(crate::api::status::ApiError::from)?;
        applied.result.map_err(crate::api::status::ApiError::from)?;
        Ok(())
    }
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Answers one `/apis/...` request (already authorized by `crate::auth`).
pub async fn serve(c: Arc<Coordinator>, req: http::Request<Body>) -> Response<Body> {
    match handle(c, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn handle(
    c: Arc<Coordinator>,
    req: http::Request<Body>,
) -> Result<Response<Body>, HttpError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let (route, params) = match routes::find(parts.method.as_str(), &path) {
        Found::Route { route, params } => (route, params),
        Found::WrongMethod(allowed) => {
            let mut r = HttpError::new(
                Code::Unimplemented,
                format!(
                    "{} {path} is not served; the path takes {}",
                    parts.method,
                    allowed.join(", ")
                ),
            )
            .response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return Ok(r);
        }
        Found::NotImplemented => {
            return Err(HttpError::new(
                Code::Unimplemented,
                format!(
                    "{} {path}: Gantry does not serve this part of the KFP API yet (see the \
                     README, \"KFP REST API\")",
                    parts.method
                ),
            ))
        }
        Found::NotFound => {
            return Err(HttpError::not_found(format!(
                "{} {path}: no such KFP endpoint",
                parts.method
            )))
        }
    };
    let body = http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            HttpError::new(
                Code::InvalidArgument,
                format!(
                    "the request body could not be read (the most is {MAX_BODY_BYTES} bytes): {e}"
                ),
            )
        })?
        .to_bytes();
    let forwarded = parts.headers.contains_key(FORWARDED);
    if route.endpoint.writes() {
        if let Route::Leader(ch) = c.route_write(forwarded, ROUTE_WAIT).await? {
            return forward(ch, &parts, body).await;
        }
    } else if route.endpoint != Endpoint::Healthz {
        c.read_barrier().await?;
    }
    let ctx = Ctx {
        c,
        params,
        query: query_map(parts.uri.query()),
        headers: parts.headers,
        body,
    };
    let (status, value) = dispatch(route.endpoint, &ctx).await?;
    Ok(reply(status, &value))
}

async fn dispatch(e: Endpoint, ctx: &Ctx) -> Result<(StatusCode, Value), HttpError> {
    use Endpoint::*;
    let ok = |v: Value| (StatusCode::OK, v);
    Ok(ok(match e {
        Healthz => json!({
            "commit_sha": env!("CARGO_PKG_VERSION"),
            "tag_name": env!("CARGO_PKG_VERSION"),
            "multi_user": false,
            "pipeline_store": "database",
        }),
        ListExperiments => experiments::list(ctx)?,
        CreateExperiment => experiments::create(ctx).await?,
        GetExperiment => experiments::get(ctx)?,
        DeleteExperiment => experiments::delete(ctx).await?,
        ArchiveExperiment => experiments::archive(ctx, true).await?,
        UnarchiveExperiment => experiments::archive(ctx, false).await?,
        ListPipelines => pipelines::list(ctx)?,
        UploadPipeline => pipelines::upload(ctx).await?,
        UploadPipelineVersion => pipelines::upload_version(ctx).await?,
        GetPipeline => pipelines::get(ctx)?,
        DeletePipeline => pipelines::delete(ctx).await?,
        ListPipelineVersions => pipelines::list_versions(ctx)?,
        GetPipelineVersion => pipelines::get_version(ctx)?,
        DeletePipelineVersion => pipelines::delete_version(ctx).await?,
        ListRuns => runs::list(ctx)?,
        CreateRun => runs::create(ctx).await?,
        GetRun => runs::get(ctx)?,
        DeleteRun => runs::delete(ctx).await?,
        TerminateRun => runs::terminate(ctx).await?,
        RetryRun => runs::retry(ctx).await?,
        ArchiveRun => runs::archive(ctx, true).await?,
        UnarchiveRun => runs::archive(ctx, false).await?,
        ListRecurringRuns => recurring::list(ctx)?,
        CreateRecurringRun => recurring::create(ctx).await?,
        GetRecurringRun => recurring::get(ctx)?,
        DeleteRecurringRun => recurring::delete(ctx).await?,
        EnableRecurringRun => recurring::set_enabled(ctx, true).await?,
        DisableRecurringRun => recurring::set_enabled(ctx, false).await?,
    }))
}

/// Headers that go along to the leader.
const FORWARD_HEADERS: &[&str] = &["authorization", "content-type", "idempotency-key"];

/// Sends a write on to the leader over the peer channel (HTTP/2, the channel's TLS) and
/// passes its answer back as it came.
async fn forward(
    ch: tonic::transport::Channel,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response<Body>, HttpError> {
    use tower::ServiceExt;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(path);
    for name in FORWARD_HEADERS {
        if let Some(v) = parts.headers.get(*name) {
            req = req.header(*name, v);
        }
    }
    let req = req
        .header(FORWARDED, "1")
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .map_err(|e| HttpError::new(Code::Internal, format!("forwarding: {e}")))?;
    let unavailable = |e: String| {
        HttpError::new(
            Code::Unavailable,
            format!("the leader could not be reached ({e}); retry"),
        )
    };
    let resp = ch
        .oneshot(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (head, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = head.status;
    if let Some(ct) = head.headers.get(http::header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    Ok(out)
}

/// A list response: `{<name>: [...], total_size, next_page_token}`.
fn list_reply<T>(name: &str, page: list::Page<T>, to_json: impl Fn(&T) -> Value) -> Value {
    let mut out = json!({
        name: page.rows.iter().map(to_json).collect::<Vec<_>>(),
        "total_size": page.total,
    });
    if let Some(t) = page.next_token {
        out["next_page_token"] = json!(t);
    }
    out
}

/// A fresh id: KFP's are UUIDs too.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_statuses_grpc_gateway_gives() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn queries_are_decoded_once_with_empty_values_kept() {
        let q = query_map(Some("page_token=&page_size=10&filter=%7B%22a%22%3A+1%7D"));
        assert_eq!(q["page_token"], "");
        assert_eq!(q["filter"], "{\"a\": 1}");
    }
}
