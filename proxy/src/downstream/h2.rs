//! HTTP/2 client connections (prior knowledge, or ALPN `h2` over TLS),
//! served by hyper's HTTP/2 server: hyper reads each stream's head (phase
//! 2) and the shared phases run on it as on an HTTP/1.1 request.
//!
//! - The connection is supervised by `crate::conn`: the first request's
//!   head within `limits.header_read_timeout`, GOAWAY after
//!   `limits.idle_timeout` without a stream, at most `limits.h2_max_streams`
//!   streams at once, keep-alive PINGs every `limits.h2_keepalive`.
//! - A body streams to the backend at once, never read ahead (a client may
//!   wait for the response head before it sends: gRPC's bidirectional
//!   streams).
//! - A client that resets its stream while it waits is counted as 499 on
//!   the backend it waited for (hyper drops the request, and with it the
//!   record in flight).
//! - Informational responses do not reach HTTP/2 clients: hyper's server
//!   has no way to send them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::ProxyState;
use crate::answer::{Answer, AnswerBody, Local, Passed, ResponseField};
use crate::body::UpstreamBody;
use crate::config::ValidConfig;
use crate::conn::{Activity, ConnLimits, Entered, Tracked, supervise};
use crate::fields::Fields;
use crate::forward::{Client, Exchange};
use crate::route::{BodyKind, ClientRequest, Summary, Target};

/// hyper's HTTP/2 server with the configured limits.
pub fn builder(valid: &ValidConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(valid.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(valid.h2_max_streams)
        .keep_alive_interval(valid.h2_keepalive);
    builder
}

/// Serves one HTTP/2 connection until it closes, a time limit, or a drain.
pub async fn serve<I>(
    io: I,
    client: Client,
    state: Arc<ProxyState>,
    builder: &hyper::server::conn::http2::Builder<TokioExecutor>,
    entered: Entered,
    limits: ConnLimits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let requests = activity.clone();
    let peer = client.addr;
    let client = Arc::new(client);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (state, client) = (state.clone(), client.clone());
        let guard = requests.begin();
        async move {
            // Boxed: hyper spawns each stream as a task of its own, and the
            // request path's state is large; inline, it was copied with
            // every move of the stream's future (memmove was 8% of an h2c
            // load's profile; boxed, about 3% more requests per second in
            // alternating runs of the h2c bench).
            let response = Box::pin(handle(&state, req, &client)).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let conn = Box::pin(builder.serve_connection(TokioIo::new(io), service));
    supervise(
        conn,
        |c| c.graceful_shutdown(),
        entered,
        activity,
        limits,
        peer,
    )
    .await;
}

/// Serves one stream: the phases, then the answer for hyper.
async fn handle(
    state: &ProxyState,
    req: Request<Incoming>,
    client: &Client,
) -> Response<AnswerBody> {
    let start = Instant::now();
    let (parts, incoming) = req.into_parts();
    let target = match (parts.uri.scheme_str(), parts.uri.authority()) {
        (Some(scheme), Some(authority)) => Target::Absolute {
            scheme,
            authority: authority.as_str(),
            path_and_query: parts.uri.path_and_query().map_or("", |p| p.as_str()),
        },
        _ => match parts.uri.path_and_query() {
            Some(p) if p.as_str().starts_with('/') => Target::Origin(p.as_str()),
            _ => Target::Other,
        },
    };
    let body_kind = if http_body::Body::is_end_stream(&incoming) {
        BodyKind::None
    } else {
        match parts
            .headers
            .first("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        {
            Some(n) => BodyKind::Length(n),
            None => BodyKind::Streamed,
        }
    };
    let req = ClientRequest {
        method: &parts.method,
        version: Version::HTTP_2,
        target,
        fields: &parts.headers,
        summary: Summary::of(&parts.headers),
        body: body_kind,
        upgrade: None,
    };
    let head_request = parts.method == Method::HEAD;
    if let Err(refusal) = crate::route::check(&req) {
        return local(crate::answer::refused(refusal));
    }
    let secure = state.scheme == "https";
    let routed = match crate::route::route(&state.store, state.listener, &req, secure, start) {
        Ok(routed) => routed,
        Err(refusal) => return local(crate::answer::refused(refusal)),
    };
    let (body, progress) = UpstreamBody::hyper(incoming, routed.route.max_body);
    let mut ignore = |_: StatusCode, _: &dyn Fields| {};
    // Streams run at once: each has a timer of its own.
    let timer = std::pin::pin!(crate::conn::far_off());
    let exchange = Exchange {
        routed: &routed,
        req: &req,
        client,
        body,
        progress,
        interim: &mut ignore,
        timer,
    };
    let gone = std::pin::pin!(std::future::pending::<()>());
    let outcome = crate::forward::forward(exchange, gone).await;
    match crate::answer::answer(outcome, &routed, None) {
        Some(Answer::Passed(passed)) => passed_response(passed, head_request),
        Some(Answer::Local(answer)) => local(answer),
        // Only an HTTP/1.1 downstream watches for a client gone; hyper
        // drops the request instead.
        None => local(Local::new(StatusCode::BAD_REQUEST, "", None)),
    }
}

/// The proxy's own answer for hyper.
fn local(answer: Local) -> Response<AnswerBody> {
    let mut resp = Response::new(answer.body);
    *resp.status_mut() = answer.status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if answer.allow {
        headers.insert(
            http::header::ALLOW,
            HeaderValue::from_static(crate::answer::ALLOWED),
        );
    }
    resp
}

/// A backend's answer for hyper (see `crate::answer`): its fields less the
/// hop-by-hop and framing ones; a response to HEAD keeps its length.
fn passed_response(passed: Passed, head_request: bool) -> Response<AnswerBody> {
    let Passed {
        head,
        body,
        set_cookie,
        ..
    } = passed;
    let status = head.status();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    crate::answer::each_passed_field(&head, head.has_connection(), &mut |kind, name, value| {
        if kind == ResponseField::ContentLength {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    });
    if head_request && let Some(n) = head.declared_length() {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(cookie) = set_cookie {
        headers.append(http::header::SET_COOKIE, cookie);
    }
    resp
}
