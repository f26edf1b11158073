//! The KFP HTTP API, spoken over a node's gRPC channel (the same port, TLS and token).

use std::time::Duration;

use crate::cluster::Authed;

/// One KFP HTTP request on `ch` (a node's channel, with its TLS and token): `Ok((status, JSON
/// body))` for a 2xx, else the refusal as a `Status` with KFP's code and the message.
pub async fn http_call(
    ch: Authed,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, serde_json::Value), tonic::Status> {
    use http_body_util::BodyExt;
    use tonic::{Code, Status};
    use tower::ServiceExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let answer = async {
        let resp = ch
            .oneshot(req)
            .await
            .map_err(|e| Status::unavailable(format!("{e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(format!("{e}")))?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            return Ok((status, v));
        }
        let code = Code::from_i32(v["code"].as_i64().unwrap_or(2) as i32);
        Err(Status::new(
            code,
            format!("HTTP {status}: {}", v["message"].as_str().unwrap_or("")),
        ))
    };
    tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 15 s")))
}

/// A multipart upload of `yaml` as `kfp.Client` sends it (empty: a body without the file):
/// (content type, body).
pub fn multipart_upload(yaml: &str) -> (String, Vec<u8>) {
    let mut body = String::from("--gantryboundary\r\n");
    if yaml.is_empty() {
        body.push_str("Content-Disposition: form-data; name=\"other\"\r\n\r\nx");
    } else {
        body.push_str(
            "Content-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
        );
        body.push_str(yaml);
    }
    body.push_str("\r\n--gantryboundary--\r\n");
    (
        "multipart/form-data; boundary=gantryboundary".into(),
        body.into_bytes(),
    )
}
