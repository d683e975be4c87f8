//! The admin listener: metrics, health, and the routes API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while serving, 503 while draining |
//! | `GET /routes` | `{"routes":[...]}` in the config's field names |
//! | `PUT /routes/{name}` | JSON with any of `stable`, `canary`, `baseline` (a URL, or null to remove it), `canary_weight`, `canary_match`, `affinity`, `mirror` |
//!
//! The routes API (reads and writes) needs `Authorization: Bearer <token>`
//! whenever `admin.token_file` is set (it must be set when the admin
//! listener is not loopback); `/metrics`, `/healthz`, `/readyz` and
//! `/version` stay open. A later reload of the config file replaces
//! changes made here. Admin connections have the data plane's time limits.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::conn::stopped;
use crate::conn::{Activity, ConnLimits, Connections, Tracked, supervise};
use crate::downstream::ProxyState;
use crate::store::UpdateError;

/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

pub async fn run_admin(
    listener: TcpListener,
    state: Arc<ProxyState>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = Connections::default();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let activity = Activity::new();
                let requests = activity.clone();
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let guard = requests.begin();
                    async move {
                        let response = admin(state, req).await;
                        Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
                    }
                });
                let conn = Box::pin(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(supervise(
                    conn,
                    |c| c.graceful_shutdown(),
                    connections.enter(None),
                    activity,
                    limits,
                    peer,
                ));
            }
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": message.into() }))
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

async fn admin(state: Arc<ProxyState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    // HEAD is GET without the body (which hyper leaves out), as load
    // balancers' health checks expect.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(state.store.metrics().encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    .parse()
                    .expect("static"),
            );
            resp
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/version") => json_response(
            StatusCode::OK,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config_sha256": state.store.metrics().config_digest(),
            }),
        ),
        (&Method::GET, "/routes") => {
            if let Some(refused) = unauthorized(&state, &req) {
                return refused;
            }
            let routing = state.store.load();
            json_response(StatusCode::OK, json!({ "routes": routing.config.routes }))
        }
        (&Method::GET, p) if p.starts_with("/routes/") => {
            if let Some(refused) = unauthorized(&state, &req) {
                return refused;
            }
            let name = &p["/routes/".len()..];
            let routing = state.store.load();
            match routing.config.routes.iter().find(|r| r.name == name) {
                Some(r) => json_response(StatusCode::OK, json!(r)),
                None => error(StatusCode::NOT_FOUND, format!("no route named `{name}`")),
            }
        }
        (&Method::PUT, p) if p.starts_with("/routes/") => {
            let name = p["/routes/".len()..].to_string();
            put_route(state, req, &name).await
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/version" | "/routes") => not_allowed(
            "GET, HEAD",
            format!("{} is not allowed on {path}; use GET", req.method()),
        ),
        (_, p) if p.starts_with("/routes/") => not_allowed(
            "GET, HEAD, PUT",
            format!("{} is not allowed on {path}; use GET or PUT", req.method()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}; try /metrics, /healthz, /readyz, /version, /routes"),
        ),
    }
}

/// 405, with the methods the resource has (RFC 9110 §15.5.6).
fn not_allowed(allow: &'static str, message: String) -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, message);
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// With `admin.token_file` set, the routes API (reads too: they show
/// upstream addresses and the A/B values that opt anyone into the canary)
/// needs `Authorization: Bearer <token>`, compared in constant time. The
/// refusal, if any.
fn unauthorized(state: &ProxyState, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    match state.store.admin_token() {
        Ok(None) => None,
        Ok(Some(token)) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                // The scheme's name is case-insensitive (RFC 9110 §11.1).
                .and_then(|v| v.trim_start().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            (!presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))).then(|| {
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "the routes API needs the header `Authorization: Bearer <token>` with the token in admin.token_file",
                );
                // RFC 9110 §11.6.1: a 401 names the scheme it wants.
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
                );
                resp
            })
        }
        Err(e) => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("admin.token_file: {e}; the routes API is refused until it is readable"),
        )),
    }
}

async fn put_route(
    state: Arc<ProxyState>,
    req: Request<Incoming>,
    name: &str,
) -> Response<Full<Bytes>> {
    if let Some(refused) = unauthorized(&state, &req) {
        return refused;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over {MAX_ADMIN_BODY} bytes; a route update is a small JSON object"
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            );
        }
    };
    let patch = match serde_json::from_slice::<StrictJson>(&body) {
        Ok(StrictJson(v)) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let store = state.store.clone();
    let name_owned = name.to_string();
    match store.update_route(&name_owned, &patch) {
        Ok(route) => {
            tracing::info!(route = %name_owned, "route updated through the admin API");
            json_response(StatusCode::OK, json!(route))
        }
        Err(UpdateError::NotFound(n)) => {
            error(StatusCode::NOT_FOUND, format!("no route named `{n}`"))
        }
        Err(UpdateError::Invalid(errors)) => error(StatusCode::BAD_REQUEST, errors.to_string()),
    }
}

/// A JSON value none of whose objects has a key twice: `serde_json`'s own
/// keeps the last silently, and a write that moves traffic must not
/// depend on which copy of `canary_weight` wins (the config file refuses
/// a repeated field too).
struct StrictJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key `{key}` is given twice"
                )));
            }
            let StrictJson(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_reads_what_serde_json_reads_but_a_key_twice() {
        let text = r#"{"a": [1, -2, 3.5, true, null, "x", {"b": {}}], "c": {"d": []}}"#;
        let strict: StrictJson = serde_json::from_str(text).unwrap();
        let plain: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict.0, plain);
        for twice in [r#"{"a": 1, "a": 2}"#, r#"[{"b": {"c": 1, "c": 1}}]"#] {
            let e = serde_json::from_str::<StrictJson>(twice).err().unwrap();
            assert!(e.to_string().contains("is given twice"), "{twice}: {e}");
        }
    }
}
