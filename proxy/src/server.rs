//! The data-plane listener and the request path.
//!
//! Phases of one request, in order: accept -> check (target, Host,
//! transfer coding: `request_problem`) -> route (host + path) -> split
//! (A/B rules, else exact weight) -> forward to the backend's pooled client ->
//! stream the response back; metrics are recorded once, when the response
//! body ends ([`crate::body::MeteredBody`]).
//!
//! - Fields a client may not send on (`X-Sluice-*`, names with `_` unless
//!   the route keeps them: [`crate::fields`]) are removed before forwarding;
//!   A/B rules and affinity still read them.
//! - The first 16 KiB of an HTTP/1 request body (the whole of most) are
//!   read before the backend is contacted, so a body that breaks there
//!   never reaches it. A body that breaks on the client's side, before or
//!   after, is the client's fault: 400 (408 for one paused longer than
//!   `timeouts.idle`), counted in `sluice_client_errors_total` and never
//!   on the backend, whose exchange hyper abandons (the connection is
//!   closed, not pooled).
//! - A 101 goes to the client only when it asked to upgrade to that
//!   protocol; any other is a 502.
//! - Informational responses (103 Early Hints) reach an HTTP/1.1 client as
//!   they come, though hyper's server cannot send them: they go through
//!   the connection's [`Activity`] to [`ClientIo`], which writes them where
//!   no other response can be cut. HTTP/2 clients do not get them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{GrpcJudge, InFlight, MeteredBody, Recorder, UpstreamBody};
use crate::config::{Protocol, ValidConfig};
use crate::conn::{Activity, ClientIo, ConnLimits, Connections, Entered, Tracked, supervise};
use crate::fields::TransferCoding;
use crate::metrics::{ClientErrorKind, RejectReason, UpstreamErrorKind};
use crate::routing::Backend;
use crate::store::Store;

/// State shared by every connection of the data-plane listener.
pub struct ProxyState {
    pub store: Arc<Store>,
    /// Set while draining: `/readyz` fails so load balancers stop sending.
    /// Shared by every listener's state.
    pub draining: Arc<AtomicBool>,
    /// Which listener this state serves (0: `listen`, 1 + i: `listeners[i]`).
    pub listener: usize,
    /// `https` when the listener terminates TLS.
    pub scheme: &'static str,
    /// Open client connections of the whole process (shared by every
    /// listener and thread).
    pub capacity: Arc<crate::conn::Capacity>,
    /// Upgraded connections (WebSocket and other tunnels) of the whole
    /// process: a drain waits for them as for requests, then cuts them.
    pub tunnels: Arc<Connections>,
}

/// The hyper connection builder with the configured limits.
pub fn connection_builder(valid: &ValidConfig) -> auto::Builder<TokioExecutor> {
    // The first request head of a connection (before hyper knows its
    // protocol) and idle connections are bounded in `crate::conn`.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(valid.header_read_timeout)
        .max_buf_size(valid.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(valid.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(valid.h2_max_streams)
        .keep_alive_interval(valid.h2_keepalive);
    builder
}

/// Joins several `cookie` fields into one, with `"; "`.
fn join_cookies(headers: &mut HeaderMap) {
    let fields: Vec<&HeaderValue> = headers.get_all(header::COOKIE).iter().collect();
    if fields.len() < 2 {
        return;
    }
    let joined: Vec<u8> = fields
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The per-connection time limits of `valid`.
pub fn conn_limits(valid: &ValidConfig) -> ConnLimits {
    ConnLimits {
        header_read_timeout: valid.header_read_timeout,
        idle_timeout: valid.idle_timeout,
    }
}

/// Bytes of a connection the own path read before it handed the
/// connection to hyper.
pub(crate) struct Prefix {
    pub bytes: bytes::Bytes,
    /// The first request in them came before the previous answer went out.
    pub pipelined: bool,
}

/// Serves one accepted connection (plain or TLS) with hyper, under the
/// connection limits, until it closes or a drain ends it; `prefix` is read
/// first.
pub(crate) fn serve_hyper<I>(
    io: I,
    prefix: Prefix,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    builder: &auto::Builder<TokioExecutor>,
    entered: Entered,
    limits: ConnLimits,
) -> impl Future<Output = ()> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    if prefix.pipelined {
        activity.first_pipelined();
    }
    let requests = activity.clone();
    let io = TokioIo::new(ClientIo::new(io, prefix.bytes, activity.clone()));
    // The client's address as a header value, formatted once per connection.
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a header value");
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let guard = requests.begin();
        if !http_body::Body::is_end_stream(req.body()) {
            requests.with_body();
        }
        let client = Client {
            addr: peer,
            ip: peer_ip.clone(),
            activity: requests.clone(),
        };
        let settle = requests.clone();
        async move {
            // Boxed: hyper keeps room for this future in every connection,
            // idle or not, and the request path's state is kilobytes; boxed,
            // an idle keep-alive connection holds a pointer instead.
            let response = Box::pin(handle(state, req, client)).await;
            // The final head comes next: no informational one after it.
            settle.settle_interim();
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let conn = Box::pin(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    );
    supervise(
        conn,
        |c| c.graceful_shutdown(),
        entered,
        activity,
        limits,
        peer,
    )
}

/// Accepts connections (TLS first when `tls` is set) until `shutdown`
/// flips, then drains.
pub async fn run_listener(
    listener: TcpListener,
    state: Arc<ProxyState>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<crate::tls::Terminator>>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let connections = Connections::default();
    let builder = Arc::new(builder);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over limits.max_connections: closed at once, counted.
                    let Some(opened) = state.capacity.try_open() else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let entered = connections.enter(Some(opened));
                    match &tls {
                        // Sluice's own HTTP/1.1 path first (`crate::fast`).
                        None => {
                            tokio::spawn(crate::fast::serve(stream, peer, state.clone(), builder.clone(), entered, limits));
                        }
                        Some(terminator) => {
                            let acceptor = terminator.acceptor();
                            let (state, builder) = (state.clone(), builder.clone());
                            tokio::spawn(async move {
                                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls_stream)) => {
                                        let prefix = Prefix { bytes: bytes::Bytes::new(), pipelined: false };
                                        serve_hyper(tls_stream, prefix, peer, state, &builder, entered, limits).await;
                                    }
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(timeout = ?drain_timeout, "draining in-flight requests");
    let deadline = tokio::time::Instant::now() + drain_timeout;
    connections.drain(drain_timeout).await;
    // Then the tunnels, within what is left of the same timeout; the ones
    // still open after it are cut when this serving thread ends.
    state
        .tunnels
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

// === the request path ===

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
/// `Trailer` is not among them (RFC 9110 §6.6.2): it announces trailer
/// fields, which an HTTP/1.1 peer sends only when announced.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// An HTTP/1.1 protocol upgrade to tunnel (WebSocket and the like). `h2c`
/// upgrades are not tunnelled: the request is served as plain HTTP/1.1
/// (clients that want h2c use prior knowledge, which the listener speaks).
fn is_upgrade_request(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && connection_has(req.headers(), "upgrade")
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            // No h2c in the list: a backend that took it would speak
            // HTTP/2 with the client through the tunnel, past the routing.
            .is_some_and(|v| !v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An informational response's head for an HTTP/1.1 client: its status
/// and fields, less the hop-by-hop ones (and those `Connection` names)
/// and any length.
fn interim_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name)
            || name == header::CONTENT_LENGTH
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a 101's `Upgrade` names only protocols the request `offered`
/// (any case); a 101 without one agrees to nothing.
fn upgrade_agrees(offered: &HeaderValue, response: &HeaderMap) -> bool {
    let tokens = |value: &HeaderValue| -> Vec<String> {
        value
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let offered = tokens(offered);
    let chosen: Vec<String> = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(tokens)
        .collect();
    !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// Removes hop-by-hop headers, including those the Connection header names.
/// `TE: trailers` survives (gRPC needs it); `keep_upgrade` keeps an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present, no hashing and no allocation, for
    // the common case of none.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Other fields the Connection header names (rare): only those present.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(t))
                && headers.contains_key(*t)
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade && let Some(up) = upgrade {
        headers.insert(header::UPGRADE, up);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The host the client asked for: the URI authority (HTTP/2, absolute form)
/// or the Host header (shared, not copied).
fn request_authority(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned()
}

/// Why a request is refused before it is routed, if it is; it is then
/// never forwarded (see `crate::fields` for the rules on hosts and
/// codings):
/// - The target is origin-form (`/…`), or an `http`/`https` absolute URI
///   whose authority is a host and optional port and whose path starts
///   with `/` (HTTP/2: `:scheme`, `:authority`, `:path` alike); `*` is for
///   OPTIONS only (answered by the proxy itself). 400 otherwise: a backend
///   never gets `GET ?a=1` or `Host: a@other-host`.
/// - HTTP/1 (RFC 9112 §3.2): one Host field, a host and optional port; an
///   HTTP/1.1 request whose target names no authority needs one. HTTP/1.0
///   requests may leave it out. HTTP/2: a Host field, when sent, is one
///   valid host that agrees with `:authority` (RFC 9113 §8.3.1). 400.
/// - `Transfer-Encoding` is exactly `chunked`: 501 for another coding,
///   400 for a malformed list.
/// - HTTP/2 `content-length` fields are equal numbers (they are merged
///   into one): 400 otherwise.
fn request_problem(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
    let bad = |text| Some((StatusCode::BAD_REQUEST, text));
    let uri = req.uri();
    let path_ok = uri
        .path_and_query()
        .is_some_and(|p| p.as_str().starts_with('/'));
    match (uri.scheme_str(), uri.authority()) {
        (None, None) if path_ok => {}
        (None, None) => {
            return bad("sluice: the request target is not a path starting with `/`\n");
        }
        (Some("http" | "https"), Some(authority)) => {
            if !crate::fields::is_host_and_port(authority.as_str().as_bytes()) {
                return bad(
                    "sluice: the request target's authority is not a host and optional port\n",
                );
            }
            if !path_ok {
                return bad("sluice: the request target's path does not start with `/`\n");
            }
        }
        _ => {
            return bad("sluice: the request target is not a path or an http(s) URI\n");
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return bad("sluice: the request has more than one Host header field\n");
        }
        (Some(host), None) if !crate::fields::is_host_and_port(host.as_bytes()) => {
            return bad("sluice: the Host header field is not a host and optional port\n");
        }
        (Some(host), None)
            if req.version() == Version::HTTP_2
                && uri.authority().is_some_and(|a| {
                    !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes())
                }) =>
        {
            return bad("sluice: the Host header field differs from :authority\n");
        }
        (None, _) if req.version() == Version::HTTP_11 && uri.authority().is_none() => {
            return bad("sluice: an HTTP/1.1 request needs a Host header field\n");
        }
        _ => {}
    }
    let codings = req.headers().get_all(header::TRANSFER_ENCODING);
    match crate::fields::transfer_coding(codings.iter().map(HeaderValue::as_bytes)) {
        TransferCoding::Absent | TransferCoding::Chunked => {}
        TransferCoding::Malformed | TransferCoding::NotChunkedLast => {
            return bad("sluice: the request's Transfer-Encoding is not a valid list of codings\n");
        }
        TransferCoding::Unsupported => {
            return Some((
                StatusCode::NOT_IMPLEMENTED,
                "sluice: the request's Transfer-Encoding is not `chunked` alone; no other coding is decoded\n",
            ));
        }
    }
    if req.version() == Version::HTTP_2 {
        let lengths = req.headers().get_all(header::CONTENT_LENGTH);
        if crate::fields::content_length(lengths.iter().map(HeaderValue::as_bytes)).is_err() {
            return bad("sluice: the request's content-length fields are not one number\n");
        }
    }
    None
}

/// One `content-length` field for the (equal, checked) values an HTTP/2
/// request carried, so an HTTP/1.1 backend gets one line.
fn merge_lengths(headers: &mut HeaderMap) {
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    if let Ok(Some((n, true))) =
        crate::fields::content_length(lengths.iter().map(HeaderValue::as_bytes))
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// Removes the fields a client may not send on (see `crate::fields`):
/// the proxy's own (`X-Sluice-*`), and those with `_` in their names
/// unless `keep_underscores`.
fn strip_client_fields(headers: &mut HeaderMap, keep_underscores: bool) {
    use crate::fields::ClientField;
    let refused = |name: &HeaderName| match crate::fields::client_field(name.as_str().as_bytes()) {
        ClientField::Ordinary => false,
        ClientField::Reserved => true,
        ClientField::Underscored => !keep_underscores,
    };
    // One pass over the names present, no allocation, for the common case
    // of none.
    if !headers.keys().any(refused) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| refused(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The client of a connection.
pub struct Client {
    pub addr: SocketAddr,
    /// `addr`'s IP as a header value.
    pub ip: HeaderValue,
    /// Its connection's requests; informational responses for it go
    /// through them ([`Activity::send_interim`]).
    pub activity: Arc<Activity>,
}

pub(crate) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map(|end| &authority[1..end])
            .unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn plain(status: StatusCode, text: String, recorder: Option<Recorder>) -> Response<MeteredBody> {
    let mut resp = Response::new(MeteredBody::text(text, recorder));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Which side stopped an exchange by taking too long.
enum Stalled {
    /// No response head within the request timeout after the body.
    Upstream,
    /// The client paused its request body too long.
    Client,
}

/// How a request's exchange ended, before the answer is made. It lives
/// for one match on the stack; boxing the response would cost an
/// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Answered(Response<crate::upstream::Pooled>),
    UpstreamFailed(crate::upstream::Failure),
    UpstreamTimedOut,
    /// The body grew past `limits.max_request_body`.
    TooLarge,
    /// The client's body broke (see `crate::body`), with what hyper said.
    ClientFailed(ClientErrorKind, String),
}

/// Bytes of an HTTP/1 request body read before the backend is contacted
/// (the whole body when it is shorter): a body that breaks within them
/// (a bad chunk-size line, a client that closes early) never reaches a
/// backend. nginx reads whole bodies first; this keeps memory per request
/// small and bodies streaming.
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// The answer to a request whose client broke its own body (see
/// `crate::body`): 400, or 408 for a body paused longer than
/// `timeouts.idle`. It is counted in the route's client errors only. An
/// HTTP/1 connection closes after it: the rest of the body cannot be
/// told from a next request.
fn client_failed_answer(
    route: &crate::routing::Route,
    kind: ClientErrorKind,
    detail: &str,
    version: Version,
) -> Response<MeteredBody> {
    let (status, text) = match kind {
        ClientErrorKind::MalformedBody => (
            StatusCode::BAD_REQUEST,
            format!("sluice: the request body is malformed: {detail}\n"),
        ),
        ClientErrorKind::IncompleteBody => (
            StatusCode::BAD_REQUEST,
            format!("sluice: the request body was cut short: {detail}\n"),
        ),
        ClientErrorKind::BodyTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "sluice: the request body paused for more than {:?}\n",
                route.body_idle_timeout
            ),
        ),
    };
    let mut resp = plain(status, text, None);
    if version != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The message of the error at the end of `error`'s source chain (what
/// went wrong, without the layers it passed through).
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The methods the proxy forwards (answered in `Allow`).
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// Serves one request end to end; never fails (errors become responses).
pub async fn handle(
    state: Arc<ProxyState>,
    mut req: Request<Incoming>,
    client: Client,
) -> Response<MeteredBody> {
    let start = Instant::now();
    // The client's version (the request's is the backend's from routing on).
    let client_version = req.version();
    // Requests a reverse proxy answers itself.
    if req.method() == Method::CONNECT {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "sluice: CONNECT is not supported; this is a reverse proxy\n".into(),
            None,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return resp;
    }
    if req.method() == Method::OPTIONS && req.uri().path() == "*" {
        let mut resp = plain(StatusCode::OK, String::new(), None);
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return resp;
    }
    if let Some((status, problem)) = request_problem(&req) {
        let mut resp = plain(status, problem.to_string(), None);
        if req.version() != Version::HTTP_2 {
            // What follows the head cannot be read as framed.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    if req.version() == Version::HTTP_2 {
        merge_lengths(req.headers_mut());
    }
    let routing = state.store.peek();
    let authority = request_authority(&req);
    let authority_str = authority.as_ref().and_then(|a| a.to_str().ok());
    let host = authority_str.map(strip_port).map(|h| {
        if h.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(h.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(h)
        }
    });
    let Some(route) = routing
        .find(
            state.listener,
            host.as_deref(),
            &crate::routing::normalise_path(req.uri().path()),
        )
        .cloned()
    else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "sluice: no route for host `{}` and path `{}`\n",
                authority_str.map(strip_port).unwrap_or("-"),
                req.uri().path()
            ),
            None,
        );
    };
    let trusted_hops = routing.valid.trusted_hops;
    drop(routing);
    let decision = route.decide(req.headers());
    let backend = route.backend(decision);

    let upgrade = is_upgrade_request(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    strip_client_fields(&mut parts.headers, route.keep_underscore_headers);
    let offered_upgrade = upgrade
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    add_forwarded_headers(
        &mut parts.headers,
        &client,
        authority.as_ref(),
        state.scheme,
        trusted_hops,
    );
    // An HTTP/1.1 client gets the backend's informational responses (103
    // Early Hints) as they come; HTTP/1.0 clients may not (RFC 9110
    // §15.2), and hyper's HTTP/2 server cannot send them.
    if client_version == Version::HTTP_11 {
        client.activity.expect_interim();
        let activity = client.activity.clone();
        parts
            .extensions
            .insert(crate::upstream::Informational(Arc::new(
                move |status, headers| {
                    if status != StatusCode::SWITCHING_PROTOCOLS {
                        activity.send_interim(&interim_head(status, headers));
                    }
                },
            )));
    }
    // Upstream connections are dialled to the backend whatever the request
    // says (see `crate::upstream`): no value a client sends opens one.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match route.protocol {
        Protocol::Http1 => {
            // HTTP/2 splits cookies into fields; HTTP/1.1 takes one
            // (RFC 9113 §8.2.3).
            if parts.version == Version::HTTP_2 {
                join_cookies(&mut parts.headers);
            }
            parts.version = Version::HTTP_11;
            // Origin form; the client's Host (or the backend's, for a client
            // that sent none) in the Host header.
            parts.uri = Uri::from(path_and_query);
            if parts.headers.get(header::HOST) != authority.as_ref() || authority.is_none() {
                let host = authority
                    .clone()
                    .map_or_else(|| HeaderValue::from_str(&backend.url.authority()), Ok);
                if let Ok(v) = host {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        Protocol::Http2 => {
            // `:authority` is the backend's (an h2 request may not carry a
            // Host that differs from it, RFC 9113 §8.3.1); the client's
            // is in X-Forwarded-Host.
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            let scheme = match backend.url.scheme {
                crate::config::Scheme::Http => "http",
                crate::config::Scheme::Https => "https",
            };
            parts.uri = match Uri::builder()
                .scheme(scheme)
                .authority(backend.url.authority().as_str())
                .path_and_query(path_and_query)
                .build()
            {
                Ok(uri) => uri,
                Err(_) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "sluice: bad request target\n".to_string(),
                        None,
                    );
                }
            };
        }
    }

    // Limits the proxy answers itself; such answers count on the backend
    // chosen (the client got them) and in sluice_rejected_total.
    let refuse = |status: StatusCode, reason: RejectReason, text: String| {
        state.store.metrics().record_rejected(&route.name, reason);
        let recorder = Recorder {
            series: backend.series(decision).clone(),
            errors: backend.metrics.clone(),
            code: status.as_u16(),
            start,
            grpc: None,
            permit: None,
        };
        plain(status, text, Some(recorder))
    };
    let Some(permit) = route.admit() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::MaxRequestsInFlight,
            format!(
                "sluice: route {} has {} requests in flight, its limit\n",
                route.name, route.max_in_flight
            ),
        );
    };
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            RejectReason::BodyTooLarge,
            format!(
                "sluice: the request body is larger than {} bytes, the limit\n",
                route.max_body.unwrap_or_default()
            ),
        )
    };
    // The declared body length, read once for the body limit and mirroring
    // (and not at all on routes with neither).
    let declared = (route.max_body.is_some() || route.mirror.is_some())
        .then(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .flatten();
    if let Some(max) = route.max_body
        && declared.is_some_and(|n| n > max)
    {
        return too_large();
    }
    let set_cookie = route.affinity.as_ref().and_then(|a| {
        a.response_cookie(
            &parts.headers,
            decision.by_weight().then(|| decision.is_canary()),
            route.split.canary_weight_bp(),
            state.scheme == "https",
        )
        .cloned()
    });
    let (mut body, progress) = UpstreamBody::new(body, route.max_body);
    let mut copy_job = None;
    if let Some(mirror) = &route.mirror
        && !upgrade
        && !decision.is_canary()
        && let Some(place) = mirror.pick(&parts.method, declared)
    {
        let copy_body = if progress.is_sent() {
            crate::mirror::CopyBody::Empty
        } else {
            let (tee, copy_body) = crate::mirror::Tee::new(mirror.max_body);
            body.tee(tee);
            copy_body
        };
        copy_job = Some(crate::mirror::PendingCopy::new(
            route.clone(),
            head_copy(&parts.method, &parts.uri, parts.version, &parts.headers, ())
                .into_parts()
                .0,
            copy_body,
            place,
        ));
    }

    let in_flight = InFlight::new(backend.series(decision).clone(), start)
        .with_body(&progress, &route.client_errors);
    // The request timeout runs from the end of the request body, so a
    // slow upload is not charged to the backend; a client that pauses its
    // body longer than `timeouts.idle` gets 408.
    let response_due = async {
        progress.sent().await;
        tokio::time::sleep(route.request_timeout).await;
    };
    let client_stalled = async {
        if progress.is_sent() {
            // Nothing left to send (no body): no timer to keep.
            return std::future::pending().await;
        }
        let every = crate::conn::check_every(route.body_idle_timeout);
        loop {
            tokio::time::sleep(every).await;
            if !progress.is_sent() && progress.idle_for() >= route.body_idle_timeout {
                return;
            }
        }
    };
    tokio::pin!(client_stalled);
    let result = 'exchange: {
        // The start of an HTTP/1 body (the whole of most) is read before
        // the backend is contacted, so a body that breaks there never
        // reaches it. HTTP/2 bodies stream at once: a client may wait for
        // the response head before it sends (gRPC's bidirectional streams).
        if client_version != Version::HTTP_2 && !progress.is_sent() {
            tokio::select! {
                read = body.read_ahead(READ_AHEAD_BYTES) => if let Err(error) = read {
                    break 'exchange Ok(Err(crate::upstream::Failure {
                        kind: UpstreamErrorKind::Protocol,
                        error,
                    }));
                },
                () = &mut client_stalled => break 'exchange Err(Stalled::Client),
            }
        }
        // A request that provably never reached the backend is tried once
        // more on a fresh connection, within the backend's retry budget
        // (the rules are in `crate::upstream`). The copy is for the cases
        // where hyper cannot hand the request back: bodiless requests only.
        backend.retry_budget.note_request();
        let upstream = backend
            .client
            .send(Request::from_parts(parts, body), || backend.take_retry());
        tokio::select! {
            answer = upstream => Ok(answer),
            _ = response_due => Err(Stalled::Upstream),
            () = &mut client_stalled => Err(Stalled::Client),
        }
    };
    if let Some(job) = copy_job {
        job.launch();
    }
    // A body that broke on the client's side is the client's fault, even
    // when it broke the upstream exchange (which hyper then abandons: the
    // connection is closed, never pooled).
    let outcome = match result {
        Ok(Ok(resp)) => Outcome::Answered(resp),
        Ok(Err(_)) if progress.exceeded() => Outcome::TooLarge,
        Ok(Err(failure)) => match progress.client_fault() {
            Some(kind) => Outcome::ClientFailed(kind, innermost_cause(&*failure.error)),
            None => Outcome::UpstreamFailed(failure),
        },
        Err(Stalled::Upstream) => Outcome::UpstreamTimedOut,
        Err(Stalled::Client) => Outcome::ClientFailed(ClientErrorKind::BodyTimeout, String::new()),
    };
    match outcome {
        Outcome::ClientFailed(kind, detail) => {
            tracing::debug!(route = %route.name, kind = kind.as_str(), %detail, "the client's request body failed");
            in_flight.client_failed(&route.client_errors, kind);
            client_failed_answer(&route, kind, &detail, client_version)
        }
        Outcome::TooLarge => {
            // Counted by `too_large` (on the backend chosen, as a limit).
            in_flight.answered_elsewhere();
            too_large()
        }
        Outcome::UpstreamTimedOut => {
            let recorder = in_flight.answered(backend.metrics.clone(), permit);
            upstream_failure(backend, recorder, UpstreamErrorKind::Timeout)
        }
        Outcome::UpstreamFailed(failure) => {
            tracing::debug!(route = %route.name, backend = backend.label.as_str(), error = %failure, "upstream request failed");
            let recorder = in_flight.answered(backend.metrics.clone(), permit);
            upstream_failure(backend, recorder, failure.kind)
        }
        Outcome::Answered(mut resp) => {
            let recorder = in_flight.answered(backend.metrics.clone(), permit);
            let status = resp.status();
            // The proxy speaks its own version to the client (RFC 9110
            // §6.2), whatever the backend's was (an HTTP/1.0 backend's
            // version would otherwise reach an HTTP/1.1 client).
            *resp.version_mut() = Version::HTTP_11;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Relayed only to a request that asked to upgrade, and to
                // a protocol it offered (RFC 9110 §7.8); any other 101 is
                // the backend's error, and dropping it closes the
                // connection it would have taken over.
                let (Some(client_upgrade), Some(offered)) = (client_upgrade, offered_upgrade)
                else {
                    tracing::debug!(route = %route.name, backend = backend.label.as_str(), "101 to a request that asked for no upgrade");
                    return upstream_failure(backend, recorder, UpstreamErrorKind::Protocol);
                };
                if !upgrade_agrees(&offered, resp.headers()) {
                    tracing::debug!(route = %route.name, backend = backend.label.as_str(), "101 to a protocol the request did not offer");
                    return upstream_failure(backend, recorder, UpstreamErrorKind::Protocol);
                }
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                // The tunnel still holds the client's connection: it
                // counts as open and a drain waits for it.
                let held = state.tunnels.enter(Some(state.capacity.carry_on()));
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, held));
                strip_hop_by_hop(resp.headers_mut(), true);
            } else {
                strip_hop_by_hop(resp.headers_mut(), false);
            }
            // A client the weighted split just placed keeps its backend.
            if let Some(cookie) = set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, cookie);
            }
            let grpc = crate::grpc::is_grpc(resp.headers()).then(|| GrpcJudge {
                failure_codes: route.grpc_failure_codes,
                status: crate::grpc::status(resp.headers()),
            });
            let (parts, body) = resp.into_parts();
            let recorder = Recorder {
                code: status.as_u16(),
                grpc,
                ..recorder
            };
            Response::from_parts(parts, MeteredBody::new(body, Some(recorder)))
        }
    }
}

/// A request with a copy of a request's head (method, target, version,
/// headers; no extensions) and `body`.
pub(crate) fn head_copy<B>(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    body: B,
) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = method.clone();
    *copy.uri_mut() = uri.clone();
    *copy.version_mut() = version;
    *copy.headers_mut() = headers.clone();
    copy
}

/// [`head_copy`] of a request, with no body (and where its informational
/// responses go, if it says).
pub(crate) fn bodiless_copy<A>(req: &Request<A>) -> Request<UpstreamBody> {
    let mut copy = head_copy(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
        UpstreamBody::empty(),
    );
    if let Some(sink) = req.extensions().get::<crate::upstream::Informational>() {
        copy.extensions_mut().insert(sink.clone());
    }
    copy
}

pub(crate) fn upstream_failure(
    backend: &Backend,
    recorder: Recorder,
    kind: UpstreamErrorKind,
) -> Response<MeteredBody> {
    backend.metrics.record_upstream_error(kind);
    let (status, what) = match kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
        UpstreamErrorKind::Connect => (StatusCode::BAD_GATEWAY, "could not be reached"),
        UpstreamErrorKind::Tls => (StatusCode::BAD_GATEWAY, "failed the TLS handshake"),
        UpstreamErrorKind::Protocol | UpstreamErrorKind::Reset => {
            (StatusCode::BAD_GATEWAY, "broke the exchange")
        }
    };
    let recorder = Recorder {
        code: status.as_u16(),
        ..recorder
    };
    plain(
        status,
        // The address stays out of the answer (clients need not learn the
        // topology); the log and the metrics name the backend.
        format!("sluice: upstream {} {what}\n", backend.label.as_str()),
        Some(recorder),
    )
}

fn add_forwarded_headers(
    headers: &mut HeaderMap,
    client: &Client,
    authority: Option<&HeaderValue>,
    scheme: &'static str,
    trusted_hops: u32,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let xfp = HeaderName::from_static("x-forwarded-proto");
    let xfh = HeaderName::from_static("x-forwarded-host");
    let real_ip = HeaderName::from_static("x-real-ip");
    let forwarded = HeaderName::from_static("forwarded");
    if trusted_hops == 0 {
        // Nothing the client sent is kept: what the proxy saw, with no
        // formatting per request.
        headers.insert(xff, client.ip.clone());
        headers.insert(xfp, HeaderValue::from_static(scheme));
        match authority {
            Some(a) => headers.insert(xfh, a.clone()),
            None => headers.remove(xfh),
        };
        headers.insert(real_ip, client.ip.clone());
        headers.remove(forwarded);
        return;
    }
    let ip = client.addr.ip().to_string();
    // The rightmost `trusted_hops` entries were added by trusted proxies;
    // anything left of them is the client's word.
    let prior: Vec<String> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let keep = prior.len().min(trusted_hops as usize);
    let mut chain = prior[prior.len() - keep..].to_vec();
    let client = chain.first().cloned().unwrap_or_else(|| ip.clone());
    chain.push(ip);
    if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(xff, v);
    }
    let trusted = trusted_hops > 0;
    if !trusted || !headers.contains_key(&xfp) {
        headers.insert(xfp, HeaderValue::from_static(scheme));
    }
    if !trusted || !headers.contains_key(&xfh) {
        headers.remove(&xfh);
        if let Some(a) = authority {
            headers.insert(xfh, a.clone());
        }
    }
    if (!trusted || !headers.contains_key(&real_ip))
        && let Ok(v) = HeaderValue::from_str(&client)
    {
        headers.insert(real_ip, v);
    }
    if !trusted {
        headers.remove(forwarded);
    }
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _held: Entered,
) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded tunnel closed with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

pub(crate) fn is_draining(state: &ProxyState) -> bool {
    state.draining.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");
    }

    #[test]
    fn a_101_agrees_only_to_an_offered_protocol() {
        let offered = HeaderValue::from_static("websocket, foo/2");
        let answer = |value: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::UPGRADE, HeaderValue::from_static(v));
            }
            upgrade_agrees(&offered, &h)
        };
        assert!(answer(Some("websocket")));
        assert!(answer(Some("WebSocket")));
        assert!(answer(Some("foo/2")));
        assert!(!answer(Some("h2c")));
        assert!(!answer(Some("websocket, h2c")));
        assert!(!answer(Some("foo")));
        assert!(!answer(None));
    }

    #[test]
    fn client_fields_of_the_proxy_and_with_underscores_are_removed() {
        let mut h = HeaderMap::new();
        for name in ["x-sluice-mirror", "x_forwarded_for", "my_header", "accept"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        let mut kept = h.clone();
        strip_client_fields(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
        strip_client_fields(&mut kept, true);
        let mut names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["accept", "my_header"]);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("web.example:8080"), "web.example");
        assert_eq!(strip_port("web.example"), "web.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
