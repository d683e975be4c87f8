//! HTTP/2 client connections (prior knowledge, or ALPN `h2` over TLS),
//! served on the `h2` crate directly: each stream's head (phase 2) runs
//! the shared phases in a future of its own, polled in the connection's
//! task as an HTTP/1.1 request is, and its answer streams back under
//! HTTP/2's flow control.
//!
//! - The connection is supervised by `crate::conn`: the first request's
//!   head within `limits.header_read_timeout`, GOAWAY after
//!   `limits.idle_timeout` without a stream, at most `limits.h2_max_streams`
//!   streams at once, keep-alive PINGs every `limits.h2_keepalive` (a
//!   connection whose PING is not answered within 20 s is closed), and
//!   GOAWAY at its first frame once a drain has begun (SIGTERM, before
//!   the listeners close).
//! - Windows of 512 KiB per stream and 4 MiB per connection (see
//!   [`STREAM_WINDOW`]), frames of 16 KiB, at most 400 KiB of an answer
//!   buffered per stream before the proxy stops reading it from the
//!   backend.
//! - A response to HEAD never has a body, the proxy's own answers
//!   included; a backend's reset code reaches the client; trailers lose
//!   the fields HTTP/2 forbids. The `h2` crate bounds resets (rapid reset)
//!   and header blocks (CONTINUATION floods) itself.
//! - A body streams to the backend at once, never waited for (a client may
//!   wait for the response head before it sends: gRPC's bidirectional
//!   streams). What of it came with its head, up to 16 KiB, is read ahead
//!   into one buffer first, so that a body that came whole can be sent
//!   again (`crate::body`); the client gets window back as the proxy reads
//!   its data.
//! - A client that resets its stream while it waits is counted as 499 on
//!   the backend it waited for, as an HTTP/1.1 client that goes away; one
//!   that resets it while the answer streams stops the answer.
//! - Informational responses (103 Early Hints) from the backend reach the
//!   client as they come, before the final answer.
//! - Answers carry `date`, and the `content-length` of a body whose length
//!   is known.
//! - A client that gives an answer's stream no window for the stall limit
//!   (the route's `timeouts.idle`; `limits.idle_timeout` for the proxy's
//!   own answers) gets the stream reset (`CANCEL`), as an HTTP/1.1 client
//!   that takes no byte of its answer loses its connection: a client that
//!   never reads cannot hold a backend's answer for ever. The backend did
//!   its part, so the request counts with the status it sent.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::CatchUnwind;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;

use super::ProxyState;
use crate::answer::{Answer, AnswerBody, Local, Passed, ResponseField};
use crate::body::{H2Incoming, UpstreamBody};
use crate::config::ValidConfig;
use crate::conn::{Activity, ConnLimits, Entered, RequestGuard, supervise};
use crate::fields::Fields;
use crate::forward::{Client, Exchange};
use crate::route::{BodyKind, ClientRequest, Summary, Target};
use crate::upstream::ResponseHead;

/// Flow-control windows for clients' request bodies: a stream may have
/// 512 KiB in flight, the connection 4 MiB, so an upload whose backend
/// stopped reading holds back at most an eighth of the connection's window
/// and the other streams' bodies keep flowing (with equal windows one
/// stalled upload stopped every body on the connection). At most 4 MiB
/// per connection is held for bodies the backends have not taken, plus
/// what was read ahead: at most 32 KiB a stream, in one buffer, until the
/// answer's head (`limits.h2_max_streams` of them).
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// How long an unanswered keep-alive PING keeps a connection open.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 settings every client connection gets.
#[derive(Clone)]
pub struct Settings {
    builder: h2::server::Builder,
    keepalive: Option<Duration>,
}

/// The HTTP/2 server's settings from the configured limits.
pub fn builder(valid: &ValidConfig) -> Settings {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(u32::try_from(valid.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(valid.h2_max_streams);
    Settings {
        builder,
        keepalive: valid.h2_keepalive,
    }
}

/// Serves one HTTP/2 connection until it closes, a time limit, or a drain.
pub async fn serve<I>(
    io: I,
    client: Client,
    state: Arc<ProxyState>,
    settings: &Settings,
    entered: Entered,
    limits: ConnLimits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let peer = client.addr;
    let conn = Box::pin(Connection {
        phase: Phase::Handshake(settings.builder.handshake(io)),
        shared: Arc::new(Shared {
            state,
            client,
            idle: limits.idle_timeout,
            far: tokio::time::Instant::now() + crate::conn::FAR_OFF,
        }),
        activity: activity.clone(),
        keepalive: settings.keepalive.map(KeepAlive::new),
        closing: false,
        streams: FuturesUnordered::new(),
    });
    supervise(
        conn,
        Connection::graceful_shutdown,
        entered,
        activity,
        limits,
        peer,
    )
    .await;
}

/// What a connection's streams share.
struct Shared {
    state: Arc<ProxyState>,
    client: Client,
    /// The stall limit of the proxy's own answers (`limits.idle_timeout`;
    /// see the module docs).
    idle: Duration,
    /// A deadline far off (a year after the connection began), where each
    /// stream's timer starts: the first deadline moves it.
    far: tokio::time::Instant,
}

/// One client connection, as a future that accepts its streams and serves
/// them, until the connection and its streams have ended.
///
/// The streams are polled in the connection's own task (a
/// `FuturesUnordered`), not spawned: a stream's wake-ups and the frames it
/// queues then need no switch between tasks, and its answer's frames go
/// out in the write of the same wake-up. Measured at 5% more HTTP/2
/// requests per CPU-second than a task per stream (`docs/benchmarks.md`).
struct Connection<I> {
    phase: Phase<I>,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    keepalive: Option<KeepAlive>,
    /// A graceful shutdown was asked for (perhaps before the handshake
    /// ended).
    closing: bool,
    /// The streams being served, each with a panic in it kept to it (logged
    /// by the panic hook, as a task's would be), so that the connection's
    /// other streams go on.
    streams: FuturesUnordered<CatchUnwind<AssertUnwindSafe<Served>>>,
}

/// One stream's future (see [`stream`]), boxed once, whole: pushing it
/// then moves a pointer, not the stream's state (some KiB).
type Served = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Phase<I> {
    Handshake(h2::server::Handshake<I, Bytes>),
    Serving(h2::server::Connection<I, Bytes>),
    /// The connection has ended (how, until it is reported); its streams
    /// may still be finishing.
    Ended(Option<Result<(), h2::Error>>),
}

impl<I> Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// GOAWAY: no new streams; the connection ends when its streams have.
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        self.closing = true;
        if let Phase::Serving(conn) = &mut self.phase {
            conn.graceful_shutdown();
        }
    }
}

impl<I> Future for Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Phase::Handshake(handshake) = &mut this.phase {
            let mut conn = ready!(Pin::new(handshake).poll(cx))?;
            if this.closing {
                conn.graceful_shutdown();
            }
            if let Some(keepalive) = &mut this.keepalive {
                keepalive.pings = conn.ping_pong();
            }
            this.phase = Phase::Serving(conn);
        }
        if let Phase::Serving(conn) = &mut this.phase {
            // Draining (from SIGTERM on, through `--drain-delay`): GOAWAY,
            // so the client finishes its streams here and opens new ones on
            // a new connection, which the load balancer sends elsewhere,
            // before the listeners close.
            if !this.closing && this.shared.state.is_draining() {
                this.closing = true;
                conn.graceful_shutdown();
            }
            if let Some(keepalive) = &mut this.keepalive
                && keepalive.poll_timed_out(cx)
            {
                tracing::debug!(peer = %this.shared.client.addr, "keep-alive PING unanswered; closing");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            }
            let ended = loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let guard = this.activity.begin();
                        let served: Served =
                            Box::pin(stream(this.shared.clone(), req, respond, guard));
                        this.streams.push(AssertUnwindSafe(served).catch_unwind());
                    }
                    Poll::Ready(Some(Err(e))) => break Some(Err(e)),
                    Poll::Ready(None) => break Some(Ok(())),
                    Poll::Pending => break None,
                }
            };
            if let Some(ended) = ended {
                // The `h2` connection is dropped at once: that fails and
                // wakes every stream still in flight (not all of its errors
                // do so on their own: a failed write does not), so each sees
                // the end as a reset and records it, and the socket closes
                // now rather than with the last stream.
                this.phase = Phase::Ended(Some(ended));
                this.keepalive = None;
            }
        }
        // The frames the streams queue now go out when the `h2` connection
        // is polled again: it wakes this task for that.
        while let Poll::Ready(Some(_)) = this.streams.poll_next_unpin(cx) {}
        match &mut this.phase {
            Phase::Ended(ended) if this.streams.is_empty() => {
                Poll::Ready(ended.take().unwrap_or(Ok(())))
            }
            _ => Poll::Pending,
        }
    }
}

/// Keep-alive PINGs: one every interval, and a connection whose PING goes
/// unanswered for [`PING_TIMEOUT`] is closed.
struct KeepAlive {
    every: Duration,
    pings: Option<h2::PingPong>,
    /// The next PING, or the deadline of the one in flight.
    timer: Pin<Box<tokio::time::Sleep>>,
    in_flight: bool,
}

impl KeepAlive {
    fn new(every: Duration) -> Self {
        Self {
            every,
            pings: None,
            timer: Box::pin(tokio::time::sleep(every)),
            in_flight: false,
        }
    }

    /// Sends PINGs when due and reads their answers; true when one went
    /// unanswered too long.
    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pings) = &mut self.pings else {
            return false;
        };
        if self.in_flight {
            match pings.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.in_flight = false;
                    let next = tokio::time::Instant::now() + self.every;
                    self.timer.as_mut().reset(next);
                }
                Poll::Ready(Err(_)) => {
                    self.pings = None;
                    return false;
                }
                Poll::Pending => {}
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            if self.in_flight {
                self.pings = None;
                return true;
            }
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                self.pings = None;
                return false;
            }
            self.in_flight = true;
            let deadline = tokio::time::Instant::now() + PING_TIMEOUT;
            self.timer.as_mut().reset(deadline);
            // Registers the wake-up for the answer and the deadline.
            return self.poll_timed_out(cx);
        }
        false
    }
}

/// One stream, in a task of its own: the phases, then its answer.
async fn stream(
    shared: Arc<Shared>,
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    guard: RequestGuard,
) {
    let Shared {
        state,
        client,
        idle,
        far,
    } = &*shared;
    let head_request = req.method() == Method::HEAD;
    let respond = Mutex::new(respond);
    let Some((response, stall)) = handle(state, req, client, *far, &respond).await else {
        return;
    };
    let mut respond = respond.into_inner().expect("the stream's lock");
    let (parts, body) = response.into_parts();
    // A response to HEAD has no body, the proxy's own answers included
    // (their length stays in the head, as a GET's would be).
    let end = head_request || body.is_end_stream();
    let Ok(send) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        pipe(body, send, stall.unwrap_or(*idle)).await;
    }
    drop(guard);
}

/// Streams an answer's body to the client under flow control: a frame
/// read from the backend is sent as the stream gets window for it (see
/// [`send_within_window`]), and the next frame is read only then, so the
/// backend is read no faster than the client takes it; a reset by the
/// client stops it (dropping the body records it). Capacity is asked for
/// only with a frame in hand, so a body that waits pins none of the
/// connection's window.
async fn pipe(mut body: AnswerBody, mut send: h2::SendStream<Bytes>, stall: Duration) {
    loop {
        let frame = std::future::poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let data = match frame {
            // Reset by the client.
            None => return,
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                send.send_reset(reset_reason(&*e));
                return;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        drop_connection_fields(&mut trailers);
                        if send.send_trailers(trailers).is_err() {
                            send.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        return;
                    }
                    continue;
                }
            },
        };
        let end = body.is_end_stream();
        if !send_within_window(&mut send, data, end, stall).await || end {
            return;
        }
    }
}

/// Sends `data` (and the stream's end after it, when `end`) a part at a
/// time as the client gives the stream window, so none of it waits in the
/// `h2` crate's buffer beyond the window, and a client that takes any of
/// it in time restarts the stall limit. False when the stream ended:
/// reset by the client, or by the proxy (`CANCEL`) when the client gave
/// no window for `stall` (see the module docs). The limit's timer is made
/// only when the client gives no window at once.
async fn send_within_window(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    stall: Duration,
) -> bool {
    if data.is_empty() {
        // An empty frame that ends nothing says nothing: none is queued.
        return !end || send.send_data(data, end).is_ok();
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let room = send.capacity();
        if room == 0 {
            let given = std::future::poll_fn(|cx| {
                if send.poll_reset(cx).is_ready() {
                    return Poll::Ready(false);
                }
                while send.capacity() == 0 {
                    match ready!(send.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Poll::Ready(false),
                    }
                }
                Poll::Ready(true)
            });
            match tokio::time::timeout(stall, given).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(_) => {
                    tracing::debug!(
                        ?stall,
                        "the client gave its answer no window; resetting the stream"
                    );
                    send.send_reset(h2::Reason::CANCEL);
                    return false;
                }
            }
            // The room given, read once below (a client's SETTINGS may
            // lower it again meanwhile).
            continue;
        }
        let part = data.split_to(room.min(data.len()));
        if send.send_data(part, end && data.is_empty()).is_err() {
            return false;
        }
    }
    true
}

/// The reset code for a backend's answer that broke: the backend's own
/// (an HTTP/2 backend's RST_STREAM: CANCEL, REFUSED_STREAM,
/// ENHANCE_YOUR_CALM reach gRPC clients as such), else INTERNAL_ERROR.
fn reset_reason(error: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2) and the others
/// only a head may carry (see `crate::fields::answer_trailer_passes`)
/// from a backend's trailers: the peer would reset the stream for some,
/// and read the others as a head's.
fn drop_connection_fields(trailers: &mut HeaderMap) {
    let dropped: Vec<http::HeaderName> = trailers
        .keys()
        .filter(|name| !crate::fields::answer_trailer_passes(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in dropped {
        trailers.remove(name);
    }
}

/// Serves one stream's phases: its answer, with the route's stall limit
/// for a backend's (see the module docs), or None when the client reset
/// the stream before there was one.
async fn handle(
    state: &ProxyState,
    req: Request<h2::RecvStream>,
    client: &Client,
    far: tokio::time::Instant,
    respond: &Mutex<h2::server::SendResponse<Bytes>>,
) -> Option<(Response<AnswerBody>, Option<Duration>)> {
    let start = Instant::now();
    let (parts, recv) = req.into_parts();
    let target = match (parts.uri.scheme_str(), parts.uri.authority()) {
        // `OPTIONS *` (RFC 9113 §8.3.1), answered as on HTTP/1.1.
        _ if parts.method == Method::OPTIONS
            && parts.uri.path_and_query().map(|p| p.as_str()) == Some("*") =>
        {
            Target::Asterisk
        }
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
    let declared = parts
        .headers
        .first("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    let body_kind = match declared {
        _ if recv.is_end_stream() => BodyKind::None,
        Some(n) => BodyKind::Length(n),
        None => BodyKind::Streamed,
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
    if let Err(refusal) = state.check(&req) {
        return Some((local(crate::answer::refused(refusal)), None));
    }
    let secure = state.scheme == "https";
    let routed = match crate::route::route(&state.store, state.listener, &req, secure, start) {
        Ok(routed) => routed,
        Err(refusal) => return Some((local(crate::answer::refused(refusal)), None)),
    };
    let mut incoming = H2Incoming::new(recv, declared);
    // `expect: 100-continue`: `100 Continue` when the body is first read
    // (sent by `gone` below, which the stream's task polls).
    let expecting = (req.summary.expect_continue && body_kind != BodyKind::None)
        .then(|| Arc::new(crate::body::Continue::default()));
    if let Some(expecting) = &expecting {
        incoming = incoming.expecting(expecting.clone());
    }
    let (body, progress) = UpstreamBody::h2(incoming, routed.route.max_body);
    let mut interim = |status: StatusCode, fields: &dyn Fields| {
        let mut head = Response::new(());
        *head.status_mut() = status;
        copy_passed_fields(fields, true, None, head.headers_mut());
        let _ = respond
            .lock()
            .expect("the stream's lock")
            .send_informational(head);
    };
    // Streams run at once: each has a timer of its own, first set far off
    // (from the connection's start: no clock read per stream).
    let timer = std::pin::pin!(tokio::time::sleep_until(far));
    let exchange = Exchange {
        routed: &routed,
        req: &req,
        client,
        body,
        progress,
        interim: &mut interim,
        timer,
    };
    let gone = std::future::poll_fn(|cx| {
        let mut respond = respond.lock().expect("the stream's lock");
        if let Some(expecting) = &expecting
            && expecting.poll_asked(cx)
        {
            let mut head = Response::new(());
            *head.status_mut() = StatusCode::CONTINUE;
            let _ = respond.send_informational(head);
        }
        respond.poll_reset(cx).map(|reset| match reset {
            // The stream (or its connection) ended with a protocol error:
            // the `h2` crate found the client breaking HTTP/2's rules (a
            // malformed frame, a flow-control overflow, a rapid reset), or
            // the client says so. The client's fault, not a 499 on the
            // backend (see `crate::forward::forward`).
            Ok(reason) if crate::body::is_protocol_error(reason) => {
                Some(crate::metrics::ClientErrorKind::Protocol)
            }
            // The client let go (CANCEL, NO_ERROR, ...), or its connection
            // is gone.
            _ => None,
        })
    });
    let gone = std::pin::pin!(gone);
    let outcome = crate::forward::forward(exchange, gone).await;
    match crate::answer::answer(outcome, &routed, None)? {
        Answer::Passed(passed) => Some((
            passed_response(passed, head_request, routed.route.response_headers.as_ref()),
            Some(routed.route.body_idle_timeout),
        )),
        Answer::Local(answer) => Some((local(answer), None)),
    }
}

/// The fields of a response head as a client gets them (see
/// `crate::answer`): less the hop-by-hop and framing ones. `shared`: the
/// bytes the fields lie in (an HTTP/1.1 backend's head), so that every
/// value is a slice of them rather than an allocation of its own. Gives
/// the head's `content-length` value, as such a slice, when it is a
/// plain number (the answer's length may reuse it).
fn copy_passed_fields(
    fields: &dyn Fields,
    has_connection: bool,
    shared: Option<&Bytes>,
    into: &mut HeaderMap,
) -> Option<HeaderValue> {
    let slice = |value: &[u8]| {
        let shared = shared?;
        let start = (value.as_ptr() as usize).checked_sub(shared.as_ptr() as usize)?;
        (start + value.len() <= shared.len()).then(|| shared.slice(start..start + value.len()))
    };
    let mut length = None;
    crate::answer::each_passed_field(fields, has_connection, &mut |kind, name, value| {
        if kind == ResponseField::ContentLength {
            if is_plain_number(value) {
                length = slice(value).map(HeaderValue::from_maybe_shared);
            }
            return;
        }
        let value = match slice(value) {
            Some(bytes) => HeaderValue::from_maybe_shared(bytes),
            None => HeaderValue::from_bytes(value),
        };
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name), value) {
            into.append(name, value);
        }
    });
    length.and_then(Result::ok)
}

/// Digits with no leading zero (or a lone `0`): a length as written by
/// `HeaderValue::from(n)`, so either can stand for the other.
fn is_plain_number(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 19
        && value.iter().all(u8::is_ascii_digit)
        && (value[0] != b'0' || value.len() == 1)
}

/// `date`, and the length of a body whose length is known: `written`, the
/// backend's own `content-length` value, when it says the same length.
fn finish_head(headers: &mut HeaderMap, body: &AnswerBody, written: Option<HeaderValue>) {
    headers
        .entry(http::header::DATE)
        .or_insert_with(crate::http1::write::date_value);
    if !body.is_end_stream()
        && let Some(n) = body.size_hint().exact()
    {
        headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| length_value(n, written));
    }
}

/// `n` as a `content-length` value: `written` when it says `n`.
fn length_value(n: u64, written: Option<HeaderValue>) -> HeaderValue {
    match written {
        Some(v) if v.to_str().ok().and_then(|s| s.parse().ok()) == Some(n) => v,
        _ => HeaderValue::from(n),
    }
}

/// The proxy's own answer.
fn local(answer: Local) -> Response<AnswerBody> {
    let mut headers = HeaderMap::new();
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
    finish_head(&mut headers, &answer.body, None);
    let mut resp = Response::new(answer.body);
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = headers;
    resp
}

/// A backend's answer (see `crate::answer`): its fields less the
/// hop-by-hop and framing ones, changed by the route's `response_headers`
/// (`modifier`); a response to HEAD keeps its length.
fn passed_response(
    passed: Passed,
    head_request: bool,
    modifier: Option<&crate::config::ValidHeaderModifier>,
) -> Response<AnswerBody> {
    let Passed {
        head,
        body,
        set_cookie,
        ..
    } = passed;
    let status = head.status();
    let declared = head.declared_length();
    let has_connection = head.has_connection();
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    // Room for the backend's fields and the two the proxy may add (`date`,
    // `content-length`, which is taken out and put back): the map is then
    // allocated once, not grown (and rehashed) past its first 6 entries.
    let fields = match &head {
        ResponseHead::H1(h) => h.spans.len(),
        ResponseHead::H2(p) => p.headers.len(),
    };
    *resp.headers_mut() = HeaderMap::with_capacity(fields + 2);
    let headers = resp.headers_mut();
    let written = match head {
        // The values are slices of one exact-size copy of the head. Not
        // of the head's own buffer: the client connection's HPACK table
        // keeps values it indexes (a `date`, a request id) as long as the
        // connection lives, and a shelf buffer's room (up to 16 KiB) would
        // be kept with them, for each such answer.
        ResponseHead::H1(h) => {
            let shared = Bytes::copy_from_slice(&h.bytes);
            let fields = crate::http1::head::FieldsOf::new(&shared, &h.spans);
            copy_passed_fields(&fields, has_connection, Some(&shared), headers)
        }
        ResponseHead::H2(p) => copy_passed_fields(&p.headers, has_connection, None, headers),
    };
    if let Some(modifier) = modifier {
        modifier.apply(headers);
    }
    if head_request && let Some(n) = declared {
        headers.insert(
            http::header::CONTENT_LENGTH,
            length_value(n, written.clone()),
        );
    }
    if let Some(cookie) = set_cookie {
        headers.append(http::header::SET_COOKIE, cookie);
    }
    finish_head(headers, &body, written);
    let (parts, ()) = resp.into_parts();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_length_is_reused_only_when_it_says_the_same_number() {
        for (value, plain) in [
            (&b"0"[..], true),
            (b"18", true),
            (b"18446744073709551615", false),
            (b"1844674407370955161", true),
            (b"018", false),
            (b"00", false),
            (b"", false),
            (b"1 8", false),
            (b"+18", false),
            (b"18 ", false),
        ] {
            assert_eq!(is_plain_number(value), plain, "{value:?}");
        }
        // Reused: the very bytes the backend wrote, not a new value.
        let written = HeaderValue::from_static("18");
        let reused = length_value(18, Some(written.clone()));
        assert_eq!(reused.as_bytes().as_ptr(), written.as_bytes().as_ptr());
        assert_eq!(length_value(19, Some(written)), "19");
        assert_eq!(length_value(7, None), "7");
    }
}
