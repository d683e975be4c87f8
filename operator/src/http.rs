//! The few HTTP calls the control plane makes (proxy admin API, Prometheus,
//! webhooks), each with a timeout and an error that names the URL.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: `{url}` is not a valid http:// URL")]
    BadUrl { url: String },
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// A response read whole (these bodies are small: JSON, metrics text).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<(&str, Bytes)>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let uri: http::Uri = url.parse().map_err(|_| HttpError::BadUrl {
            url: url.to_string(),
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(HttpError::BadUrl {
                url: url.to_string(),
            });
        }
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((content_type, bytes)) => req
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => req.body(Full::default()),
        }
        .map_err(|_| HttpError::BadUrl {
            url: url.to_string(),
        })?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Unreachable {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Unreachable {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_string(),
                timeout,
            })?
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, HttpError> {
        self.call(Method::GET, url, None, None, timeout).await
    }

    /// A GET with `Authorization: Bearer <token>` when a token is given.
    pub async fn get_with(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        self.call(Method::GET, url, None, token, timeout).await
    }

    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        value: &serde_json::Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let body = Bytes::from(value.to_string());
        self.call(
            method,
            url,
            Some(("application/json", body)),
            token,
            timeout,
        )
        .await
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
