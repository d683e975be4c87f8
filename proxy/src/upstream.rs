//! Upstream connections: per serving thread pools, keyed by backend.
//!
//! Each backend ([`PoolKey`]: its address and everything that shapes a
//! connection) has one [`Upstream`], and that has one slot per serving
//! thread. A request takes an idle HTTP/1.1 connection of its own thread's
//! slot (the most recently used one), or dials a new one, so a request
//! costs no cross-thread wake-up and no shared lock. An HTTP/2 backend has
//! one multiplexed connection per thread.
//!
//! A bodiless request to a plain-TCP HTTP/1.1 backend (no upgrade) goes
//! through Sluice's own codec ([`crate::h1`]) in the request's own task;
//! its idle connections have no task, and a sweeper per slot closes them.
//! Every other request uses a hyper client connection whose task runs on
//! the same thread.
//!
//! Nothing a client sends reaches this module's keys: the connection is
//! always dialled to the backend's address, whatever the request's Host.
//!
//! - An HTTP/1.1 connection goes back to its slot when the response body
//!   has been read to its end; a response abandoned half-way closes it.
//! - A pooled connection idle for `timeouts.upstream_idle` is closed by its
//!   own task (one timer per connection, none per request).
//! - [`BackendClients::send`] retries once, on a fresh connection, a
//!   request that provably never reached the backend: the connect failed,
//!   the pooled connection was found closed before the request was written
//!   (hyper hands the request back), or an HTTP/2 backend refused the
//!   stream (`REFUSED_STREAM`, which promises it did no work; an idempotent
//!   request cut by the backend's GOAWAY too). A bodiless
//!   idempotent request is also retried when a reused HTTP/1.1 connection
//!   closed before any byte of the response came: the stale keep-alive
//!   race, where the server closed the connection as the request went out.
//!   Anything else, and every request whose body may have been read, is
//!   never retried. Retries come from a budget (see
//!   [`crate::routing::RetryBudget`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::config::{Protocol, UpstreamTlsKey, UpstreamUrl};
use crate::metrics::UpstreamErrorKind;
use crate::tls::{ConnectError, UpstreamIo};

/// Everything that shapes an upstream connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<UpstreamTlsKey>,
}

/// A request extension: where the backend's informational (1xx)
/// responses go, as they come (HTTP/1.1 backends; neither the own codec
/// nor hyper's client hands over 100, which the proxy's server answers
/// itself).
#[derive(Clone)]
pub struct Informational(pub Arc<InformationalSink>);

/// What an [`Informational`] calls with each response's status and fields.
pub type InformationalSink = dyn Fn(http::StatusCode, &http::HeaderMap) + Send + Sync;

/// Idle HTTP/1.1 connections kept per backend and serving thread at most.
const MAX_IDLE_PER_SLOT: usize = 1024;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub struct Failure {
    pub kind: UpstreamErrorKind,
    pub error: crate::body::BoxError,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// How one attempt ended, when it did not get a response.
enum Missed {
    /// The request never left: it is handed back.
    Unsent(Box<Request<UpstreamBody>>, Failure),
    /// The request may have reached the backend; `again` is the request
    /// to send once more when the rules in the module docs allow it.
    Sent {
        failure: Failure,
        again: Option<Box<Request<UpstreamBody>>>,
    },
}

/// How an own-codec exchange failed, for the retry rules.
enum OwnMiss {
    /// Nothing of the request was written.
    Unwritten(Failure),
    /// Closed after the request was written, before any byte of a
    /// response: the stale keep-alive race.
    ClosedUnanswered(Failure),
    /// Anything else: the request may have been acted on.
    Broken(Failure),
}

impl From<crate::h1::SendError> for OwnMiss {
    fn from(e: crate::h1::SendError) -> Self {
        let failure = |error: crate::body::BoxError| Failure {
            kind: UpstreamErrorKind::Protocol,
            error,
        };
        match e {
            crate::h1::SendError::Unwritten(e) => OwnMiss::Unwritten(failure(e.into())),
            crate::h1::SendError::ClosedUnanswered(e) => {
                OwnMiss::ClosedUnanswered(failure(e.into()))
            }
            e @ crate::h1::SendError::Protocol(_) => OwnMiss::Broken(failure(e.into())),
        }
    }
}

/// The connections of one backend, one slot per serving thread.
pub struct Upstream {
    key: PoolKey,
    /// Plain-TCP HTTP/1.1: bodiless requests use [`crate::h1`].
    own_codec: bool,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of Sluice's own HTTP/1.1 codec ([`crate::h1`]).
    own: Mutex<OwnPool>,
    /// The multiplexed HTTP/2 connection.
    h2: Mutex<Option<H2Conn>>,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    streams: Arc<Streams>,
}

/// The exchanges running on an HTTP/2 connection, and since when it has
/// had none.
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    mark: IdleMark,
}

/// One exchange on an HTTP/2 connection, until its response body ends or
/// is dropped.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.mark.0.store(IdleMark::now_ms(), Ordering::Relaxed);
        }
    }
}

/// Idle connections of Sluice's own codec. They have no task of their
/// own: a sweeper task (one per slot, while the slot has idle connections)
/// closes the ones idle for `timeouts.upstream_idle` or closed by the
/// backend, and a checkout looks at the socket before reusing one.
#[derive(Default)]
struct OwnPool {
    /// The most recently used last, with when each was given back.
    idle: Vec<(Box<crate::h1::Conn>, u64)>,
    sweeping: bool,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    mark: Arc<IdleMark>,
}

/// When a pooled connection was last given back (milliseconds since the
/// process's clock origin), or [`IdleMark::IN_USE`].
struct IdleMark(AtomicU64);

impl IdleMark {
    const IN_USE: u64 = u64::MAX;

    fn now_ms() -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn idle_for(&self) -> Duration {
        match self.0.load(Ordering::Relaxed) {
            Self::IN_USE => Duration::ZERO,
            since => Duration::from_millis(Self::now_ms().saturating_sub(since)),
        }
    }
}

impl Upstream {
    fn new(key: &PoolKey, slots: usize) -> Self {
        let tls = key.tls.as_ref().map(|t| {
            let config = crate::tls::client_config(t, key.protocol == Protocol::Http2)
                .unwrap_or_else(|e| {
                    // Checked before the table was built; a file broken since
                    // then makes every handshake fail (502, kind="tls"): fail
                    // closed.
                    tracing::error!(error = %e, "upstream TLS settings unusable; every handshake to this upstream fails");
                    crate::tls::fail_closed_config(key.protocol == Protocol::Http2)
                });
            let name = ServerName::try_from(t.server_name.clone()).expect("validated server name");
            (tokio_rustls::TlsConnector::from(config), name)
        });
        Self {
            key: key.clone(),
            own_codec: key.protocol == Protocol::Http1 && key.tls.is_none(),
            tls,
            slots: (0..slots).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self) -> (usize, &Slot) {
        let i = crate::worker::slot() % self.slots.len();
        (i, &self.slots[i])
    }

    /// A TCP connection to the backend.
    async fn dial_tcp(&self) -> Result<TcpStream, ConnectError> {
        let url = &self.key.url;
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(
            self.key.connect_timeout,
            TcpStream::connect((host, url.port)),
        )
        .await
        .map_err(|_| ConnectError::TcpTimeout)?
        .map_err(|e| ConnectError::Tcp(Box::new(e)))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A TCP (and TLS) connection to the backend.
    async fn dial(&self) -> Result<UpstreamIo, ConnectError> {
        let timeout = self.key.connect_timeout;
        let tcp = self.dial_tcp().await?;
        match &self.tls {
            None => Ok(UpstreamIo::Plain(TokioIo::new(tcp))),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                let stream = tokio::time::timeout(timeout, handshake)
                    .await
                    .map_err(|_| ConnectError::TlsTimeout)?
                    .map_err(ConnectError::Tls)?;
                Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
            }
        }
    }

    /// A new HTTP/1.1 connection, its task spawned on this thread.
    async fn connect_h1(&self) -> Result<Idle, Failure> {
        let io = self.dial().await.map_err(connect_failure)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(protocol_failure)?;
        let mark = Arc::new(IdleMark(AtomicU64::new(IdleMark::IN_USE)));
        let watched = mark.clone();
        drive(conn.with_upgrades(), self.key.idle_timeout, move || {
            watched.idle_for()
        });
        Ok(Idle { sender, mark })
    }

    /// The most recently used open idle connection of this thread, if any.
    fn checkout(&self, slot: &Slot) -> Option<Idle> {
        let mut idle = slot.idle.lock().expect("pool lock");
        while let Some(candidate) = idle.pop() {
            if candidate.sender.is_closed() || candidate.mark.idle_for() >= self.key.idle_timeout {
                continue;
            }
            candidate.mark.0.store(IdleMark::IN_USE, Ordering::Relaxed);
            return Some(candidate);
        }
        None
    }

    fn give_back(&self, slot: usize, conn: Idle) {
        if conn.sender.is_closed() {
            return;
        }
        conn.mark.0.store(IdleMark::now_ms(), Ordering::Relaxed);
        let mut idle = self.slots[slot].idle.lock().expect("pool lock");
        // Checkouts take from the top; connections that closed at the
        // bottom (their idle timeout, the server) are swept out here.
        if idle.first().is_some_and(|c| c.sender.is_closed()) {
            idle.retain(|c| !c.sender.is_closed());
        }
        if idle.len() < MAX_IDLE_PER_SLOT {
            idle.push(conn);
        }
    }

    async fn attempt_h1(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        fresh: bool,
    ) -> Result<Response<Pooled>, Missed> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        if self.own_codec && !upgrade && req.body().is_end_stream() {
            return self.attempt_own(req, fresh).await;
        }
        let (slot_index, slot) = self.slot();
        let (mut conn, reused) = loop {
            // A pooled connection is ready at once unless its task is still
            // winding up the last response; one that closes meanwhile (a
            // response that said `Connection: close`) is passed over.
            match (!fresh).then(|| self.checkout(slot)).flatten() {
                Some(mut c) => {
                    let now = std::future::poll_fn(|cx| Poll::Ready(c.sender.poll_ready(cx))).await;
                    let ready = match now {
                        Poll::Ready(r) => r.is_ok(),
                        // Still winding up: wait a little, never forever.
                        Poll::Pending => matches!(
                            tokio::time::timeout(
                                self.key.connect_timeout,
                                std::future::poll_fn(|cx| c.sender.poll_ready(cx))
                            )
                            .await,
                            Ok(Ok(()))
                        ),
                    };
                    if ready {
                        break (c, true);
                    }
                }
                None => match self.connect_h1().await {
                    Ok(c) => break (c, false),
                    Err(f) => return Err(Missed::Unsent(Box::new(req), f)),
                },
            }
        };
        let head_request = req.method() == Method::HEAD;
        // The copy for the stale keep-alive race (hyper does not hand back
        // a request it wrote).
        let again =
            (reused && !upgrade && req.body().is_end_stream() && is_idempotent(req.method()))
                .then(|| Box::new(crate::server::bodiless_copy(&req)));
        let mut req = req;
        if let Some(sink) = req.extensions().get::<Informational>().cloned() {
            hyper::ext::on_informational(&mut req, move |res| {
                if res.status() != http::StatusCode::CONTINUE {
                    (sink.0)(res.status(), res.headers());
                }
            });
        }
        let sent = conn.sender.try_send_request(req).await;
        match sent {
            Ok(mut resp) => {
                if let Err(problem) = check_framing(&mut resp, head_request) {
                    // `conn` is dropped here: the connection is closed.
                    return Err(Missed::Sent {
                        failure: Failure {
                            kind: UpstreamErrorKind::Protocol,
                            error: problem.into(),
                        },
                        again: None,
                    });
                }
                let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let hold = if upgraded {
                    Hold::Nothing
                } else {
                    Hold::GiveBack(GiveBack {
                        upstream: self.clone(),
                        slot: slot_index,
                        conn,
                    })
                };
                let mut pooled = resp.map(|body| Pooled {
                    body: Source::Hyper(body),
                    hold,
                });
                pooled.body_mut().maybe_give_back(false);
                Ok(pooled)
            }
            // The stale keep-alive race: a reused connection that the
            // backend closed before answering anything.
            Err(e) => Err(missed(e, again, hyper::Error::is_incomplete_message)),
        }
    }

    /// One exchange with Sluice's own codec, in this task.
    async fn attempt_own(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        fresh: bool,
    ) -> Result<Response<Pooled>, Missed> {
        let (slot, conn, reused) = match self.own_conn(fresh).await {
            Ok(c) => c,
            Err(f) => return Err(Missed::Unsent(Box::new(req), f)),
        };
        let sink = req.extensions().get::<Informational>().cloned();
        let mut interim = |head: &crate::h1::RawHead, spans: &[crate::h1::Span]| {
            if let Some(sink) = &sink {
                (sink.0)(head.status, &crate::h1::header_map_of(head, spans));
            }
        };
        match conn.exchange(&req, &mut interim).await {
            Ok(exchanged) => Ok(exchanged
                .response
                .map(|()| self.own_pooled(slot, exchanged.body))),
            Err(e) => Err(match OwnMiss::from(e) {
                OwnMiss::Unwritten(failure) => Missed::Unsent(Box::new(req), failure),
                // The stale keep-alive race, as for hyper's connections.
                OwnMiss::ClosedUnanswered(failure) => Missed::Sent {
                    failure,
                    again: (reused && is_idempotent(req.method())).then(|| Box::new(req)),
                },
                OwnMiss::Broken(failure) => Missed::Sent {
                    failure,
                    again: None,
                },
            }),
        }
    }

    /// One exchange of a raw request head (see [`BackendClients::send_raw`]);
    /// on failure, whether the rules allow sending it again.
    async fn attempt_raw(
        self: &Arc<Self>,
        write_head: &impl Fn(&mut Vec<u8>),
        head_request: bool,
        spans: &mut Vec<crate::h1::Span>,
        interim: &mut crate::h1::Interim<'_>,
        fresh: bool,
    ) -> Result<(crate::h1::RawHead, Pooled), (Failure, bool)> {
        let (slot, mut conn, reused) = self.own_conn(fresh).await.map_err(|f| (f, true))?;
        write_head(conn.head_buf());
        match conn.exchange_raw(head_request, spans, interim).await {
            Ok(exchanged) => Ok((exchanged.head, self.own_pooled(slot, exchanged.body))),
            Err(e) => Err(match OwnMiss::from(e) {
                OwnMiss::Unwritten(failure) => (failure, true),
                OwnMiss::ClosedUnanswered(failure) => (failure, reused),
                OwnMiss::Broken(failure) => (failure, false),
            }),
        }
    }

    /// An own-codec connection of this thread's slot (the slot's index, the
    /// connection, and whether it was pooled): a pooled one unless
    /// `fresh`, else a new one.
    async fn own_conn(&self, fresh: bool) -> Result<(usize, Box<crate::h1::Conn>, bool), Failure> {
        let (slot_index, slot) = self.slot();
        if let Some(conn) = (!fresh).then(|| self.checkout_own(slot)).flatten() {
            return Ok((slot_index, conn, true));
        }
        match self.dial_tcp().await {
            Ok(tcp) => Ok((slot_index, crate::h1::Conn::new(tcp), false)),
            Err(e) => Err(connect_failure(e)),
        }
    }

    /// A response body of the own codec, which gives its connection back
    /// to `slot` once read to its end.
    fn own_pooled(self: &Arc<Self>, slot: usize, body: crate::h1::Body1) -> Pooled {
        let mut pooled = Pooled {
            body: Source::Own(body),
            hold: Hold::Own {
                upstream: self.clone(),
                slot,
            },
        };
        pooled.give_back_spare();
        pooled
    }

    /// The most recently used idle connection of the own codec that is
    /// still open and not idle too long.
    fn checkout_own(&self, slot: &Slot) -> Option<Box<crate::h1::Conn>> {
        let mut pool = slot.own.lock().expect("pool lock");
        let now = IdleMark::now_ms();
        while let Some((mut conn, since)) = pool.idle.pop() {
            if Duration::from_millis(now.saturating_sub(since)) < self.key.idle_timeout
                && conn.still_open()
            {
                return Some(conn);
            }
        }
        None
    }

    fn give_back_own(self: &Arc<Self>, slot: usize, conn: Box<crate::h1::Conn>) {
        let mut pool = self.slots[slot].own.lock().expect("pool lock");
        if pool.idle.len() >= MAX_IDLE_PER_SLOT {
            return;
        }
        if !pool.sweeping {
            // The sweeper runs on this thread's runtime, where the
            // connection's socket is registered.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            pool.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self), slot));
        }
        pool.idle.push((conn, IdleMark::now_ms()));
    }

    /// This thread's HTTP/2 connection, dialled if there is none open.
    async fn h2_conn(&self, fresh: bool) -> Result<H2Conn, Failure> {
        let (_, slot) = self.slot();
        if !fresh {
            let current = slot.h2.lock().expect("pool lock");
            if let Some(c) = current.as_ref().filter(|c| !c.sender.is_closed()) {
                return Ok(c.clone());
            }
        }
        let io = self.dial().await.map_err(connect_failure)?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let (sender, conn) = builder.handshake(io).await.map_err(protocol_failure)?;
        let streams = Arc::new(Streams {
            open: std::sync::atomic::AtomicUsize::new(0),
            mark: IdleMark(AtomicU64::new(IdleMark::now_ms())),
        });
        let watched = streams.clone();
        // Idle while no exchange runs; requests that hold the sender of a
        // connection closed meanwhile dial a new one.
        drive(conn, self.key.idle_timeout, move || {
            if watched.open.load(Ordering::Relaxed) == 0 {
                watched.mark.idle_for()
            } else {
                Duration::ZERO
            }
        });
        let conn = H2Conn { sender, streams };
        *slot.h2.lock().expect("pool lock") = Some(conn.clone());
        Ok(conn)
    }

    async fn attempt_h2(
        &self,
        req: Request<UpstreamBody>,
        fresh: bool,
    ) -> Result<Response<Pooled>, Missed> {
        let H2Conn {
            mut sender,
            streams,
        } = match self.h2_conn(fresh).await {
            Ok(c) => c,
            Err(f) => return Err(Missed::Unsent(Box::new(req), f)),
        };
        let guard = StreamGuard::new(&streams);
        let idempotent = is_idempotent(req.method());
        // The copy for a stream the backend turns away (hyper does not
        // hand back a request it sent).
        let again = req
            .body()
            .is_end_stream()
            .then(|| Box::new(crate::server::bodiless_copy(&req)));
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| Pooled {
                body: Source::Hyper(body),
                hold: Hold::Stream { _guard: guard },
            })),
            Err(e) => Err(missed(e, again, |error| h2_turned_away(error, idempotent))),
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        fresh: bool,
    ) -> Result<Response<Pooled>, Missed> {
        match self.key.protocol {
            Protocol::Http1 => self.attempt_h1(req, fresh).await,
            Protocol::Http2 => self.attempt_h2(req, fresh).await,
        }
    }
}

/// The framing rules of the own codec (`crate::h1`) that hyper's client
/// does not apply, so a response gets the same answer on every path: a
/// `Content-Length` that is not one number (hyper does not read it on a
/// response to HEAD, which passes it on), and a `Transfer-Encoding` other
/// than `chunked` alone (the proxy would have to undo it). Repeated equal
/// lengths become one field.
fn check_framing(resp: &mut Response<Incoming>, head_request: bool) -> Result<(), &'static str> {
    use crate::fields::TransferCoding;
    let status = resp.status();
    let headers = resp.headers_mut();
    let codings = headers.get_all(http::header::TRANSFER_ENCODING);
    let coding = crate::fields::transfer_coding(codings.iter().map(http::HeaderValue::as_bytes));
    let has_body = !(head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED);
    match coding {
        TransferCoding::Absent => {
            let lengths = headers.get_all(http::header::CONTENT_LENGTH);
            match crate::fields::content_length(lengths.iter().map(http::HeaderValue::as_bytes)) {
                Err(crate::fields::LengthError::NotANumber) => {
                    return Err("the response's Content-Length is not a number");
                }
                Err(crate::fields::LengthError::Differing) => {
                    return Err("the response has differing Content-Length values");
                }
                Ok(Some((n, true))) => {
                    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
                }
                Ok(_) => {}
            }
        }
        TransferCoding::Chunked => {}
        TransferCoding::Malformed
        | TransferCoding::Unsupported
        | TransferCoding::NotChunkedLast
            if has_body =>
        {
            return Err(
                "the response's Transfer-Encoding is not `chunked` alone (the proxy would have to undo another coding)",
            );
        }
        TransferCoding::Malformed
        | TransferCoding::Unsupported
        | TransferCoding::NotChunkedLast => {}
    }
    Ok(())
}

/// How a request hyper did not get an answer for missed: handed back
/// unsent, or sent, and then sent `again` only if `retryable` says so of
/// the error.
fn missed(
    mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
    again: Option<Box<Request<UpstreamBody>>>,
    retryable: impl FnOnce(&hyper::Error) -> bool,
) -> Missed {
    match e.take_message() {
        Some(req) => Missed::Unsent(Box::new(req), protocol_failure(e.into_error())),
        None => {
            let error = e.into_error();
            Missed::Sent {
                again: again.filter(|_| retryable(&error)),
                failure: protocol_failure(error),
            }
        }
    }
}

/// Closes the idle own-codec connections of one slot that have been idle
/// for `timeouts.upstream_idle` or were closed by the backend, until the
/// slot has none (or its upstream is gone).
async fn sweep(upstream: std::sync::Weak<Upstream>, slot: usize) {
    let Some(timeout) = upstream.upgrade().map(|u| u.key.idle_timeout) else {
        return;
    };
    let mut ticks = tokio::time::interval(crate::conn::check_every(timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let mut pool = upstream.slots[slot].own.lock().expect("pool lock");
        let now = IdleMark::now_ms();
        pool.idle.retain_mut(|(conn, since)| {
            Duration::from_millis(now.saturating_sub(*since)) < timeout && conn.still_open()
        });
        if pool.idle.is_empty() {
            pool.sweeping = false;
            return;
        }
    }
}

/// Drives an upstream connection on its own task (on this thread) until
/// it ends, or until `idle_for` reaches `idle_timeout`: dropping it then
/// closes it, and its sender in the pool reads as closed. One timer per
/// connection, none per request.
fn drive<C, E>(conn: C, idle_timeout: Duration, idle_for: impl Fn() -> Duration + Send + 'static)
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        tokio::pin!(conn);
        let mut ticks = tokio::time::interval(crate::conn::check_every(idle_timeout));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return;
                }
                _ = ticks.tick() => {
                    if idle_for() >= idle_timeout {
                        return;
                    }
                }
            }
        }
    });
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether an HTTP/2 backend turned a stream away unprocessed: reset
/// with `REFUSED_STREAM` (always safe to retry, RFC 9113 §8.7), or cut by
/// the backend's GOAWAY (retried for idempotent requests only, as the
/// GOAWAY may have come after the stream was processed).
fn h2_turned_away(error: &hyper::Error, idempotent: bool) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (idempotent && h2.is_go_away() && h2.is_remote());
        }
        source = s.source();
    }
    false
}

fn connect_failure(e: ConnectError) -> Failure {
    let kind = match &e {
        ConnectError::Tls(_) | ConnectError::TlsTimeout => UpstreamErrorKind::Tls,
        ConnectError::TcpTimeout => UpstreamErrorKind::Timeout,
        ConnectError::Tcp(_) => UpstreamErrorKind::Connect,
    };
    Failure {
        kind,
        error: e.into(),
    }
}

fn protocol_failure(e: hyper::Error) -> Failure {
    Failure {
        kind: UpstreamErrorKind::Protocol,
        error: e.into(),
    }
}

/// A connection to give back to its slot when the response body ends.
struct GiveBack {
    upstream: Arc<Upstream>,
    slot: usize,
    conn: Idle,
}

/// What a response body holds of its connection.
enum Hold {
    /// An HTTP/1.1 connection, given back when the body ends.
    GiveBack(GiveBack),
    /// Where an own-codec connection goes when the body ends.
    Own {
        upstream: Arc<Upstream>,
        slot: usize,
    },
    /// An HTTP/2 exchange, counted until the body ends or is dropped.
    Stream {
        _guard: StreamGuard,
    },
    Nothing,
}

/// An upstream response body; an HTTP/1.1 connection goes back to its pool
/// once this body has been read to its end (one abandoned half-way is
/// dropped, which closes it).
pub struct Pooled {
    body: Source,
    hold: Hold,
}

/// Who reads a response body.
enum Source {
    /// A hyper client connection.
    Hyper(Incoming),
    /// Sluice's own codec, in the reader's task.
    Own(crate::h1::Body1),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Own(b) => b.is_end_stream(),
        }
    }
}

impl Pooled {
    /// Gives the HTTP/1.1 connection back once the body is known to be
    /// over: its end was read (`ended`), or its length says so.
    fn maybe_give_back(&mut self, ended: bool) {
        if (ended || self.body.is_end_stream())
            && let Hold::GiveBack(_) = &self.hold
            && let Hold::GiveBack(b) = std::mem::replace(&mut self.hold, Hold::Nothing)
        {
            b.upstream.give_back(b.slot, b.conn);
        }
    }

    /// Gives an own-codec connection back once its body has been read.
    fn give_back_spare(&mut self) {
        if let Source::Own(body) = &mut self.body
            && let Some(conn) = body.take_spare()
            && let Hold::Own { upstream, slot } = std::mem::replace(&mut self.hold, Hold::Nothing)
        {
            upstream.give_back_own(slot, conn);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let body = match &mut self.body {
            Source::Own(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if polled.is_ready() {
                    self.give_back_spare();
                }
                return polled;
            }
            Source::Hyper(body) => body,
        };
        let polled = Pin::new(body).poll_frame(cx).map_err(Into::into);
        match &polled {
            // A chunked or close-delimited body has no length to tell its
            // end by: its end is the end of the frames, or trailers (the
            // last frame there can be; the reader may stop polling then).
            Poll::Ready(None) => self.maybe_give_back(true),
            Poll::Ready(Some(Ok(frame))) => self.maybe_give_back(frame.is_trailers()),
            Poll::Ready(Some(Err(_))) => self.hold = Hold::Nothing,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::Hyper(b) => b.size_hint(),
            Source::Own(b) => b.size_hint(),
        }
    }
}

/// The connections of one backend, shared by every serving thread.
#[derive(Clone)]
pub struct BackendClients(Arc<Upstream>);

impl BackendClients {
    /// Sends `req` to the backend. `may_retry` takes a retry from the
    /// budget (it is called only when a retry is allowed by the rules in
    /// the module docs).
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        may_retry: impl FnOnce() -> bool,
    ) -> Result<Response<Pooled>, Failure> {
        match self.0.attempt(req, false).await {
            Ok(resp) => Ok(resp),
            Err(Missed::Unsent(req, failure)) => {
                if may_retry() {
                    tracing::debug!(error = %failure, "request never reached the backend; retrying on a fresh connection");
                    self.finish(self.0.attempt(*req, true).await)
                } else {
                    Err(failure)
                }
            }
            Err(Missed::Sent { failure, again }) => match again {
                Some(again) if may_retry() => {
                    tracing::debug!(error = %failure, "the backend did not take the request; retrying on a fresh connection");
                    self.finish(self.0.attempt(*again, true).await)
                }
                _ => Err(failure),
            },
        }
    }

    /// Whether [`BackendClients::send_raw`] serves this backend: a
    /// plain-TCP HTTP/1.1 one.
    pub fn takes_raw(&self) -> bool {
        self.0.own_codec
    }

    /// Sends an idempotent request without a body (GET or HEAD) whose
    /// head `write_head` writes, through the own codec, by the same retry
    /// rules as [`BackendClients::send`]. The response's fields are left
    /// as positions in `spans`; informational responses before it go to
    /// `interim`.
    pub async fn send_raw(
        &self,
        write_head: impl Fn(&mut Vec<u8>),
        head_request: bool,
        spans: &mut Vec<crate::h1::Span>,
        interim: &mut crate::h1::Interim<'_>,
        may_retry: impl FnOnce() -> bool,
    ) -> Result<(crate::h1::RawHead, Pooled), Failure> {
        match self
            .0
            .attempt_raw(&write_head, head_request, spans, interim, false)
            .await
        {
            Ok(answer) => Ok(answer),
            Err((failure, again)) => {
                if !(again && may_retry()) {
                    return Err(failure);
                }
                tracing::debug!(error = %failure, "the backend did not take the request; retrying on a fresh connection");
                self.0
                    .attempt_raw(&write_head, head_request, spans, interim, true)
                    .await
                    .map_err(|(failure, _)| failure)
            }
        }
    }

    fn finish(
        &self,
        attempt: Result<Response<Pooled>, Missed>,
    ) -> Result<Response<Pooled>, Failure> {
        attempt.map_err(|missed| match missed {
            Missed::Unsent(_, failure) | Missed::Sent { failure, .. } => failure,
        })
    }
}

/// Upstreams by [`PoolKey`], shared across routing tables.
pub struct ClientPool {
    slots: usize,
    clients: Mutex<HashMap<PoolKey, BackendClients>>,
}

impl Default for ClientPool {
    fn default() -> Self {
        Self::new(0)
    }
}

impl ClientPool {
    /// A pool for `threads` dedicated serving threads (0: the caller's runtime only).
    pub fn new(threads: usize) -> Self {
        Self {
            slots: threads + 1,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream for `key`, reusing the existing one (and its connections).
    pub fn get(&self, key: &PoolKey) -> BackendClients {
        let mut map = self.clients.lock().expect("pool lock");
        map.entry(key.clone())
            .or_insert_with(|| BackendClients(Arc::new(Upstream::new(key, self.slots))))
            .clone()
    }

    /// Drops upstreams no longer used by the current table.
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut map = self.clients.lock().expect("pool lock");
        map.retain(|k, _| keep.contains(k));
    }
}
