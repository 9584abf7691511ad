//! Endpoint discovery: `GET /v1/endpoints` on a server's HTTP port answers
//! `{"endpoints": ["tcp://...", "ws://.../ws"], "ttl_secs": N}`. A tiny
//! HTTP/1.1 client is enough for that one request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::ClientError;

/// Longest answer read.
const ENDPOINTS_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Longest wait for the answer.
const ENDPOINTS_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol URLs a server lists at `url` (`http://host:port/v1/endpoints`).
pub async fn fetch_endpoints(url: &str) -> Result<Vec<String>, ClientError> {
    let bad = || ClientError::InvalidUrl(format!("not an http:// endpoints address: {url}"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/endpoints"),
    };
    let answer = timeout(ENDPOINTS_TIMEOUT, async {
        let mut s = TcpStream::connect(authority).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.take(ENDPOINTS_ANSWER_BYTES_MAX as u64)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .map_err(|_| ClientError::Timeout)?
    .map_err(ClientError::Io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("malformed HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(ClientError::Protocol(format!(
            "endpoints answer: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ClientError::Protocol(format!("endpoints answer: {e}")))?;
    Ok(value["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}
