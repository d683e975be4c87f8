//! Sluice's own HTTP/1.1 server path, for the most common exchange: a
//! `GET` or `HEAD` without a body, on a plain-TCP client connection, to a
//! route that forwards by weight alone to plain-TCP HTTP/1.1 backends.
//!
//! Such a request is served in the connection's own task from the bytes
//! it arrived in: its head is parsed with `httparse`, checked, copied to
//! the backend with the hop-by-hop fields, the client's `X-Sluice-*` and
//! the names with `_` dropped (see [`crate::fields`]) and the forwarding
//! fields added (no header map, no URI parse), and the response head is
//! copied back the same way. Routing, the exact split, the route's
//! in-flight limit, retries, timeouts and every metric are the ones the
//! general path uses ([`crate::server::handle`]); the upstream exchange is
//! the own codec's ([`crate::h1`]).
//!
//! Anything else is handed to hyper with the bytes read so far, and the
//! connection stays with hyper from then on: another method, a body
//! (`Content-Length` or `Transfer-Encoding`), `Expect`, `Upgrade`, `TE`,
//! HTTP/1.0 or HTTP/2 (prior knowledge), a target that is not a plain
//! origin-form path, a `Connection` field naming anything but `close` or
//! `keep-alive`, a missing, repeated or malformed `Host`, a route with A/B
//! rules, session affinity, mirroring or an HTTP/2 or TLS backend, a field
//! with `_` in its name on a route that keeps such fields, a route at its
//! in-flight limit, `trusted_hops` above 0, no route at all, a head
//! over [`MAX_FIELDS`] fields or `limits.max_header_bytes`, and
//! anything `httparse` refuses. hyper then answers exactly as it would
//! have from the start (400, 404, 431, 503 and so on), so every rule of
//! the general path holds for those requests unchanged.
//!
//! The responses are those of the general path: `HTTP/1.1`, the
//! backend's fields less the hop-by-hop ones (and those its `Connection`
//! names), the body framed by `Content-Length` when its length is known
//! and chunked otherwise (trailers are not passed on: the client did not
//! ask for them with `TE: trailers`), `Date` when the backend sent none,
//! and `Connection: close` when the client asked for it or a drain runs.
//! A response to `HEAD` keeps the backend's `Content-Length` (once: the
//! codec checked it is one number, and a HEAD response whose length is
//! not is a 502); 204 and 304 carry none. Informational responses (103
//! Early Hints, but 100: no client here asked for it) go to the client as
//! they come, ahead of the final one.
//!
//! Time limits are those of [`crate::conn`]: the first request head must
//! be complete within `limits.header_read_timeout` of the connection's start,
//! a later one within `limits.header_read_timeout` of its first byte; a
//! connection idle between requests for `limits.idle_timeout` is closed, and so
//! is an idle one when a drain starts (a request in flight finishes first,
//! with `Connection: close`). A client that closes its connection while
//! its request waits for the backend is counted as 499, as on the general
//! path; but an end of input after pipelined requests (more were buffered,
//! or this one came before the previous answer) is a half-close: every
//! request already read is answered, then the connection closes.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body::Body;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{GrpcJudge, InFlight, MeteredBody, Recorder};
use crate::conn::{ConnLimits, Entered};
use crate::fields::ClientField;
use crate::h1::{BodyLength, Span};
use crate::metrics::UpstreamErrorKind;
use crate::routing::Route;
use crate::server::ProxyState;

/// The most header fields a request head served here may have; a head
/// with more goes to hyper.
pub const MAX_FIELDS: usize = 64;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 4096;
/// Response bytes gathered before a write.
const GATHER: usize = 16 * 1024;

/// Serves one plain-TCP client connection: here while its requests
/// qualify, then by hyper (see the module docs).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    entered: Entered,
    limits: ConnLimits,
) {
    let max_head = state.store.peek().valid.max_header_bytes;
    let mut conn = ClientConn {
        io: stream,
        buf: BytesMut::new(),
        out: Vec::new(),
        upstream_head: Vec::new(),
        fields: Vec::new(),
        response_fields: Vec::new(),
        ip: peer.ip().to_string(),
        max_head,
        read_closed: false,
    };
    let opened = Instant::now();
    if let Ended::HandOver { pipelined } = conn.run(&state, &entered, limits, opened).await {
        let ClientConn { io, buf, .. } = conn;
        let prefix = crate::server::Prefix {
            bytes: buf.freeze(),
            pipelined,
        };
        crate::server::serve_hyper(io, prefix, peer, state, &builder, entered, limits).await;
    }
}

/// How the connection's life here ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Closed (by either side, a time limit or a drain).
    Closed,
    /// A request this path does not serve: hyper takes over (the request
    /// came before the previous answer went out when `pipelined`).
    HandOver { pipelined: bool },
}

/// What became of one request.
enum Served {
    /// Answered; the connection may carry another.
    KeepAlive,
    Close,
}

struct ClientConn {
    io: TcpStream,
    /// Bytes from the client not yet consumed.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
    /// The request head for the backend.
    upstream_head: Vec<u8>,
    /// Where the request's fields lie in `buf`.
    fields: Vec<Span>,
    /// Where the response's fields lie in its head.
    response_fields: Vec<Span>,
    /// The client's IP, formatted once.
    ip: String,
    max_head: usize,
    /// The client has closed its side (a half-close after pipelined
    /// requests): the requests already read are answered, then the
    /// connection closes.
    read_closed: bool,
}

/// A parsed request head: its length and where its parts lie in the
/// buffer (fields in [`ClientConn::fields`]).
struct Head {
    len: usize,
    head_method: bool,
    /// The client sent it before it had the previous response.
    pipelined: bool,
    target: (usize, usize),
}

/// A request head's check: served here, or not.
struct Checked {
    /// The Host field's value.
    host: (usize, usize),
    /// The client asked to close after this response.
    close: bool,
    /// Fields with `_` in their names were left out of the backend's head
    /// (a route that keeps them hands the request to hyper).
    underscored: bool,
}

impl ClientConn {
    async fn run(
        &mut self,
        state: &ProxyState,
        entered: &Entered,
        limits: ConnLimits,
        opened: Instant,
    ) -> Ended {
        let mut drain_signal = entered.drain_signal();
        let drain = drain_signal.wait_for(|d| *d);
        tokio::pin!(drain);
        let mut served = 0u64;
        loop {
            // Bytes already here came before the last response went out.
            let pipelined = served > 0 && !self.buf.is_empty();
            let head = match self
                .read_head(served == 0, opened, limits, &mut drain)
                .await
            {
                Ok(Some(head)) => Head { pipelined, ..head },
                Ok(None) => return Ended::Closed,
                Err(HandOver) => return Ended::HandOver { pipelined },
            };
            let Some(checked) = self.check(&head, state.scheme) else {
                return Ended::HandOver { pipelined };
            };
            match self.forward(state, entered, &head, &checked).await {
                Ok(Served::KeepAlive) => {
                    served += 1;
                    self.trim();
                }
                Ok(Served::Close) => {
                    let _ = self.io.shutdown().await;
                    return Ended::Closed;
                }
                Err(HandOver) => return Ended::HandOver { pipelined },
            }
        }
    }

    /// Lets go of buffer room a large exchange left, so an idle
    /// keep-alive connection holds little memory.
    fn trim(&mut self) {
        const KEEP: usize = 2 * READ_SIZE;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
    }

    /// Reads until a complete request head is buffered. None: the
    /// connection is to close (the client closed it, a time limit, or a
    /// drain while idle).
    async fn read_head(
        &mut self,
        first: bool,
        opened: Instant,
        limits: ConnLimits,
        drain: &mut Pin<&mut impl Future>,
    ) -> Result<Option<Head>, HandOver> {
        let mut head_started = (!self.buf.is_empty()).then(Instant::now);
        loop {
            if !self.buf.is_empty()
                && let Some(head) = self.parse()?
            {
                return Ok(Some(head));
            }
            if self.read_closed {
                // A half-closed client sends no more: what is left (if
                // anything) is no request.
                return Ok(None);
            }
            let deadline = match head_started {
                Some(start) => start + limits.header_read_timeout,
                None if first => opened + limits.header_read_timeout,
                None => Instant::now() + limits.idle_timeout,
            };
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
                self.buf.reserve(READ_SIZE);
            }
            let idle = self.buf.is_empty();
            tokio::select! {
                biased;
                read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf) => match read {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {
                        head_started.get_or_insert_with(Instant::now);
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    tracing::debug!(partial = !idle, "no complete request head in time; closing");
                    return Ok(None);
                }
                _ = drain.as_mut(), if idle => return Ok(None),
            }
        }
    }

    /// Parses the head at the front of the buffer. None: not complete.
    fn parse(&mut self) -> Result<Option<Head>, HandOver> {
        let mut room = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let window = &self.buf[..self.buf.len().min(self.max_head)];
        match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, window, &mut room)
        {
            Ok(httparse::Status::Complete(len)) => {
                let head_method = match req.method {
                    Some("GET") => false,
                    Some("HEAD") => true,
                    _ => return Err(HandOver),
                };
                if req.version != Some(1) {
                    return Err(HandOver);
                }
                let target = req.path.unwrap_or_default().as_bytes();
                crate::h1::record_spans(&self.buf, req.headers, &mut self.fields);
                Ok(Some(Head {
                    len,
                    head_method,
                    pipelined: false,
                    target: crate::h1::offset_in(&self.buf, target),
                }))
            }
            Ok(httparse::Status::Partial) if window.len() < self.max_head => Ok(None),
            // Too large, too many fields, or malformed: hyper answers.
            _ => Err(HandOver),
        }
    }

    /// Whether the request is one this path serves (see the module docs),
    /// and, in the same pass over its fields, the request head for the
    /// backend in `upstream_head`: the client's request line and fields,
    /// less the hop-by-hop and forwarding ones, then the forwarding fields
    /// as the proxy saw the request (the same ones, and the same values,
    /// as [`crate::server::handle`] sends with `trusted_hops: 0`).
    fn check(&mut self, head: &Head, scheme: &str) -> Option<Checked> {
        let target = &self.buf[head.target.0..head.target.1];
        if target.first() != Some(&b'/') || !target.iter().all(|&b| is_target_byte(b)) {
            return None;
        }
        let out = &mut self.upstream_head;
        out.clear();
        out.extend_from_slice(if head.head_method { b"HEAD " } else { b"GET " });
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut host = None;
        let mut close = false;
        let mut underscored = false;
        for (name, value) in crate::h1::head_fields(&self.buf, &self.fields) {
            match classify(name) {
                Field::Host => {
                    if host.is_some() || !crate::fields::is_host_and_port(value) {
                        return None;
                    }
                    host = Some(value);
                    put_field(out, name, value);
                }
                Field::Connection => {
                    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                            return None;
                        }
                    }
                }
                Field::Refused => return None,
                Field::Dropped | Field::Forwarding => {}
                Field::Other => match crate::fields::client_field(name) {
                    ClientField::Ordinary => put_field(out, name, value),
                    ClientField::Reserved => {}
                    ClientField::Underscored => underscored = true,
                },
            }
        }
        let host = host?;
        put_field(out, b"x-forwarded-for", self.ip.as_bytes());
        put_field(out, b"x-forwarded-proto", scheme.as_bytes());
        put_field(out, b"x-forwarded-host", host);
        put_field(out, b"x-real-ip", self.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        Some(Checked {
            host: crate::h1::offset_in(&self.buf, host),
            close,
            underscored,
        })
    }

    /// Forwards a checked request and writes the response. Err: the route
    /// is not one this path serves (nothing was sent).
    async fn forward(
        &mut self,
        state: &ProxyState,
        entered: &Entered,
        head: &Head,
        checked: &Checked,
    ) -> Result<Served, HandOver> {
        let start = Instant::now();
        let (route, decision, permit) = {
            let routing = state.store.peek();
            if routing.valid.trusted_hops != 0 {
                return Err(HandOver);
            }
            let authority = ascii(&self.buf[checked.host.0..checked.host.1]);
            let host = crate::server::strip_port(authority);
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(host.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(host)
            };
            let target = ascii(&self.buf[head.target.0..head.target.1]);
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            let route = routing
                .find(
                    state.listener,
                    Some(&host),
                    &crate::routing::normalise_path(path),
                )
                .filter(|route| serves(route))
                .filter(|route| !(checked.underscored && route.keep_underscore_headers))
                .ok_or(HandOver)?
                .clone();
            drop(routing);
            let permit = route.admit().ok_or(HandOver)?;
            let decision = route.decide(&http::HeaderMap::new());
            (route, decision, permit)
        };
        self.buf.advance(head.len);

        let backend = route.backend(decision);
        let in_flight = InFlight::new(backend.series(decision).clone(), start);
        backend.retry_budget.note_request();
        let upstream_head = &self.upstream_head;
        // Informational responses (103 Early Hints) go to the client as
        // they come, ahead of the final one; what the socket does not take
        // at once goes with the final head.
        let (io, out) = (&self.io, &mut self.out);
        let mut interim = |response: &crate::h1::RawHead, spans: &[Span]| {
            interim_head(out, response, spans);
            write_now(io, out);
        };
        let send = backend.client.send_raw(
            |out| out.extend_from_slice(upstream_head),
            head.head_method,
            &mut self.response_fields,
            &mut interim,
            || backend.take_retry(),
        );
        let gone = client_gone(
            &self.io,
            &mut self.buf,
            self.max_head,
            &mut self.read_closed,
            head.pipelined,
        );
        let result = tokio::select! {
            biased;
            answer = send => Some(answer),
            _ = tokio::time::sleep(route.request_timeout) => None,
            _ = gone => {
                // Dropping the request counts it as 499.
                drop(in_flight);
                return Ok(Served::Close);
            }
        };
        // Decided now, so a drain that started while the backend worked
        // is announced in this response.
        let close = checked.close || entered.is_draining();
        let recorder = in_flight.answered(backend.metrics.clone(), permit);
        let result = result
            .ok_or(UpstreamErrorKind::Timeout)
            .and_then(|answer| {
                answer.map_err(|failure| {
                    tracing::debug!(route = %route.name, backend = backend.label.as_str(), error = %failure, "upstream request failed");
                    failure.kind
                })
            });
        let written = match result {
            Err(kind) => {
                let local = crate::server::upstream_failure(backend, recorder, kind);
                self.write_local(local, head.head_method, close).await
            }
            Ok((response, body)) => {
                let length = response.body_length();
                let grpc = self.write_response_head(&response, head.head_method, close, &route);
                let recorder = Recorder {
                    code: response.status.as_u16(),
                    grpc,
                    ..recorder
                };
                self.write_body(
                    MeteredBody::new(body, Some(recorder)),
                    length == BodyLength::Unknown,
                )
                .await
            }
        };
        Ok(match written {
            Ok(()) if !close => Served::KeepAlive,
            _ => Served::Close,
        })
    }

    /// The response head for the client from the backend's (see the module
    /// docs), in `out`; the gRPC judge when the response is gRPC.
    fn write_response_head(
        &mut self,
        response: &crate::h1::RawHead,
        head_method: bool,
        close: bool,
        route: &Route,
    ) -> Option<GrpcJudge> {
        // `out` may hold informational heads not yet written.
        let out = &mut self.out;
        status_line(out, response.status);
        let spans = &self.response_fields;
        let named = connection_named(response, spans);
        // A HEAD response passes on the length a GET would have had, once
        // (the codec checked that all its values agree).
        let mut head_length = response.declared_length();
        let no_content = response.status == StatusCode::NO_CONTENT
            || response.status == StatusCode::NOT_MODIFIED;
        let mut dated = false;
        let mut grpc = false;
        for (name, value) in response.fields(spans) {
            let keep = match response_field(name) {
                ResponseField::HopByHop => false,
                ResponseField::ContentLength => {
                    if let Some(n) = head_length.take().filter(|_| head_method && !no_content) {
                        put_field(out, name, itoa(n, &mut [0; 20]));
                    }
                    false
                }
                ResponseField::Date => {
                    dated = true;
                    true
                }
                ResponseField::ContentType => {
                    grpc = value.starts_with(b"application/grpc");
                    true
                }
                ResponseField::Other => !named.iter().any(|n| n.eq_ignore_ascii_case(name)),
            };
            if keep {
                put_field(out, name, value);
            }
        }
        match response.body_length() {
            BodyLength::Exactly(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa(n, &mut [0; 20]));
                out.extend_from_slice(b"\r\n");
            }
            BodyLength::Unknown => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            BodyLength::None => {}
        }
        end_head(out, dated, close);
        grpc.then(|| {
            let headers = crate::h1::header_map_of(response, spans);
            GrpcJudge {
                failure_codes: route.grpc_failure_codes,
                status: crate::grpc::status(&headers),
            }
        })
    }

    /// Writes a response the proxy made itself (an upstream failure).
    /// Its body is left out when the request was HEAD (the length stays,
    /// as for a GET); dropped unsent, the body still records its metrics.
    async fn write_local(
        &mut self,
        response: Response<MeteredBody>,
        head_method: bool,
        close: bool,
    ) -> std::io::Result<()> {
        let (parts, body) = response.into_parts();
        // `out` may hold informational heads not yet written.
        let out = &mut self.out;
        status_line(out, parts.status);
        for (name, value) in &parts.headers {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        let length = body.size_hint().exact();
        if let Some(n) = length {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        end_head(out, parts.headers.contains_key(http::header::DATE), close);
        if head_method {
            drop(body);
            self.io.write_all(&self.out).await?;
            self.out.clear();
            return Ok(());
        }
        self.write_body(body, length.is_none()).await
    }

    /// Writes the head gathered in `out` and `body` after it, chunked or
    /// not; what is gathered is written whenever the body has nothing
    /// ready. Err: the client is gone or the body broke off (the
    /// connection is then closed, as hyper does).
    async fn write_body(&mut self, mut body: MeteredBody, chunked: bool) -> std::io::Result<()> {
        loop {
            let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !self.out.is_empty() => Poll::Ready(Next::Flush),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
            })
            .await;
            let frame = match next {
                Next::Flush => {
                    self.io.write_all(&self.out).await?;
                    self.out.clear();
                    continue;
                }
                Next::Frame(None) => break,
                Next::Frame(Some(Err(e))) => {
                    // What came is sent; the cut shows as a closed connection.
                    let _ = self.io.write_all(&self.out).await;
                    return Err(std::io::Error::other(e));
                }
                Next::Frame(Some(Ok(frame))) => frame,
            };
            // Trailers are dropped (the client did not ask with TE).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                chunk_size_line(&mut self.out, data.len());
            }
            if self.out.len() + data.len() <= GATHER {
                self.out.extend_from_slice(&data);
            } else {
                let mut both = (&self.out[..]).chain(data);
                self.io.write_all_buf(&mut both).await?;
                self.out.clear();
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.io.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }
}

/// The request is not one this path serves.
struct HandOver;

/// The field names a response's `Connection` lists: the backend's own
/// hop-by-hop fields.
fn connection_named<'a>(response: &'a crate::h1::RawHead, spans: &'a [Span]) -> Vec<&'a [u8]> {
    response
        .fields(spans)
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Appends an informational response head for the client: the backend's
/// status and fields, less the hop-by-hop ones and any length.
fn interim_head(out: &mut Vec<u8>, response: &crate::h1::RawHead, spans: &[Span]) {
    status_line(out, response.status);
    let named = connection_named(response, spans);
    for (name, value) in response.fields(spans) {
        let keep = match response_field(name) {
            ResponseField::HopByHop | ResponseField::ContentLength => false,
            ResponseField::Date | ResponseField::ContentType => true,
            ResponseField::Other => !named.iter().any(|n| n.eq_ignore_ascii_case(name)),
        };
        if keep {
            put_field(out, name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes what of `out` the socket takes now, without waiting; the rest
/// stays in `out` (to go with what follows; a broken connection shows
/// there).
fn write_now(io: &TcpStream, out: &mut Vec<u8>) {
    while !out.is_empty() {
        match io.try_write(out) {
            Ok(n) => {
                out.drain(..n);
            }
            Err(_) => return,
        }
    }
}

enum Next {
    Flush,
    Frame(Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>),
}

/// Resolves when the client closes its connection (or it fails) while a
/// request waits; bytes it sends meanwhile (a pipelined request) are kept.
/// The end of its input after pipelined requests (more are buffered, or
/// this one was sent before the previous answer) is a half-close, not a
/// client gone: `read_closed` is set, and the requests already read are
/// answered. A lone request's client that closes is gone (a 499): nothing
/// on the wire tells a half-close from a close, and nginx and hyper read
/// it so too.
async fn client_gone(
    io: &TcpStream,
    buf: &mut BytesMut,
    limit: usize,
    read_closed: &mut bool,
    pipelined: bool,
) {
    loop {
        if buf.len() >= limit || *read_closed {
            // Enough pipelined bytes to look at later, or no more to come:
            // read no more.
            return std::future::pending().await;
        }
        if io.readable().await.is_err() {
            return;
        }
        buf.reserve(READ_SIZE);
        match io.try_read_buf(buf) {
            Ok(0) if buf.is_empty() && !pipelined => return,
            Ok(0) => *read_closed = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Whether this path serves `route`'s requests: weight alone decides, no
/// request is copied, and every backend takes the own codec.
fn serves(route: &Route) -> bool {
    route.protocol == crate::config::Protocol::Http1
        && route.canary_match.is_empty()
        && route.affinity.is_none()
        && route.mirror.is_none()
        && route.stable.client.takes_raw()
        && route.canary.as_ref().is_none_or(|c| c.client.takes_raw())
}

/// Request fields, by what this path does with them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    Connection,
    /// Hop-by-hop fields dropped: `Keep-Alive`, `Proxy-Connection`.
    Dropped,
    /// Set by the proxy from what it saw (`trusted_hops: 0`).
    Forwarding,
    /// The request goes to hyper: a body, an upgrade, `Expect`, `TE`.
    Refused,
    Other,
}

fn classify(name: &[u8]) -> Field {
    const TABLE: [(&[u8], Field); 14] = [
        (b"host", Field::Host),
        (b"connection", Field::Connection),
        (b"keep-alive", Field::Dropped),
        (b"proxy-connection", Field::Dropped),
        (b"x-forwarded-for", Field::Forwarding),
        (b"x-forwarded-proto", Field::Forwarding),
        (b"x-forwarded-host", Field::Forwarding),
        (b"x-real-ip", Field::Forwarding),
        (b"forwarded", Field::Forwarding),
        (b"content-length", Field::Refused),
        (b"transfer-encoding", Field::Refused),
        (b"upgrade", Field::Refused),
        (b"expect", Field::Refused),
        (b"te", Field::Refused),
    ];
    look_up(name, &TABLE, Field::Other)
}

/// Response fields, by what this path does with them.
#[derive(Clone, Copy)]
enum ResponseField {
    /// Never passed on: `Connection`, `Keep-Alive`, `Proxy-Connection`,
    /// `TE`, `Transfer-Encoding`, `Upgrade` (the body's framing is the
    /// proxy's own).
    HopByHop,
    ContentLength,
    Date,
    ContentType,
    Other,
}

fn response_field(name: &[u8]) -> ResponseField {
    const TABLE: [(&[u8], ResponseField); 9] = [
        (b"connection", ResponseField::HopByHop),
        (b"keep-alive", ResponseField::HopByHop),
        (b"proxy-connection", ResponseField::HopByHop),
        (b"te", ResponseField::HopByHop),
        (b"transfer-encoding", ResponseField::HopByHop),
        (b"upgrade", ResponseField::HopByHop),
        (b"content-length", ResponseField::ContentLength),
        (b"date", ResponseField::Date),
        (b"content-type", ResponseField::ContentType),
    ];
    look_up(name, &TABLE, ResponseField::Other)
}

/// What `table` says of the field `name` (any case), else `otherwise`.
fn look_up<T: Copy>(name: &[u8], table: &[(&[u8], T)], otherwise: T) -> T {
    table
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map_or(otherwise, |&(_, kind)| kind)
}

/// The bytes a request target served here may have: RFC 3986's
/// unreserved, sub-delims, `:`, `@`, `/`, `?` and `%` (anything else goes
/// to hyper, which decides).
fn is_target_byte(b: u8) -> bool {
    crate::fields::is_uri_common(b) || matches!(b, b'@' | b'/' | b'?')
}

/// `bytes` as text; callers pass bytes checked to be ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `Date` (unless `dated`), `Connection: close` (when `close`) and the
/// blank line.
fn end_head(out: &mut Vec<u8>, dated: bool, close: bool) {
    if !dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn chunk_size_line(out: &mut Vec<u8>, size: usize) {
    use std::io::Write;
    let _ = write!(out, "{size:x}\r\n");
}

/// `n` in decimal, in `room`.
fn itoa(mut n: u64, room: &mut [u8; 20]) -> &[u8] {
    let mut at = room.len();
    loop {
        at -= 1;
        room[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &room[at..];
        }
    }
}

/// Appends the current time as an HTTP date, formatted once a second
/// per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_are_classified_in_any_case() {
        assert!(classify(b"Host") == Field::Host);
        assert!(classify(b"CONTENT-LENGTH") == Field::Refused);
        assert!(classify(b"Te") == Field::Refused);
        assert!(classify(b"X-Forwarded-For") == Field::Forwarding);
        assert!(classify(b"Keep-Alive") == Field::Dropped);
        assert!(classify(b"x-te") == Field::Other);
        assert!(classify(b"hos") == Field::Other);
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn dates_have_the_http_form() {
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
