//! Upstream connections: per serving thread pools of hyper client
//! connections, keyed by backend.
//!
//! Each backend ([`PoolKey`]: its address and everything that shapes a
//! connection) has one [`Upstream`], and that has one slot per serving
//! thread. A request takes an idle HTTP/1.1 connection of its own thread's
//! slot (the most recently used one), or dials a new one; the connection's
//! task runs on that same thread, so a request costs no cross-thread
//! wake-up, no spawned task and no shared lock. An HTTP/2 backend has one
//! multiplexed connection per thread.
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
use crate::config::{Protocol, UpstreamUrl};
use crate::metrics::UpstreamErrorKind;
use crate::tls::{ConnectError, UpstreamIo, UpstreamTlsKey};

/// Everything that shapes an upstream connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<UpstreamTlsKey>,
}

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
    /// The request may have reached the backend; `retryable` says
    /// whether a copy of it may be sent again (see the module docs).
    Sent { failure: Failure, retryable: bool },
}

/// The connections of one backend, one slot per serving thread.
pub struct Upstream {
    key: PoolKey,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
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
            tls,
            slots: (0..slots).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self) -> (usize, &Slot) {
        let i = crate::worker::slot() % self.slots.len();
        (i, &self.slots[i])
    }

    /// A TCP (and TLS) connection to the backend.
    async fn dial(&self) -> Result<UpstreamIo, ConnectError> {
        let url = &self.key.url;
        let timeout = self.key.connect_timeout;
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, url.port)))
            .await
            .map_err(|_| ConnectError::TcpTimeout)?
            .map_err(|e| ConnectError::Tcp(Box::new(e)))?;
        let _ = tcp.set_nodelay(true);
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
        let bodiless_idempotent = req.body().is_end_stream() && is_idempotent(req.method());
        let sent = conn.sender.try_send_request(req).await;
        match sent {
            Ok(resp) => {
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
                let mut pooled = resp.map(|body| Pooled { body, hold });
                pooled.body_mut().maybe_give_back(false);
                Ok(pooled)
            }
            // The stale keep-alive race: a reused connection that the
            // backend closed before answering anything.
            Err(e) => Err(missed(e, |error| {
                reused && error.is_incomplete_message() && bodiless_idempotent
            })),
        }
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
        let bodiless = req.body().is_end_stream();
        let idempotent = is_idempotent(req.method());
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| Pooled {
                body,
                hold: Hold::Stream { _guard: guard },
            })),
            Err(e) => Err(missed(e, |error| {
                h2_turned_away(error, idempotent) && bodiless
            })),
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

/// How a request hyper did not get an answer for missed: handed back
/// unsent, or sent, and then retryable only if `retryable` says so of the
/// error.
fn missed(
    mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
    retryable: impl FnOnce(&hyper::Error) -> bool,
) -> Missed {
    match e.take_message() {
        Some(req) => Missed::Unsent(Box::new(req), protocol_failure(e.into_error())),
        None => {
            let error = e.into_error();
            Missed::Sent {
                retryable: retryable(&error),
                failure: protocol_failure(error),
            }
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
    body: Incoming,
    hold: Hold,
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
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
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
        self.body.size_hint()
    }
}

/// The connections of one backend, shared by every serving thread.
#[derive(Clone)]
pub struct BackendClients(Arc<Upstream>);

impl BackendClients {
    /// Sends `req` to the backend. `copy` is a copy of a bodiless request
    /// for the retries that need one; `may_retry` takes a retry from the
    /// budget (it is called only when a retry is allowed by the rules in
    /// the module docs).
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        copy: Option<Request<UpstreamBody>>,
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
            Err(Missed::Sent { failure, retryable }) => match copy {
                Some(copy) if retryable && may_retry() => {
                    tracing::debug!(error = %failure, "the backend did not take the request; retrying on a fresh connection");
                    self.finish(self.0.attempt(copy, true).await)
                }
                _ => Err(failure),
            },
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
