//! The backends' side of the forward phase: connections, per serving
//! thread pools keyed by backend, and the rules for sending a request
//! again.
//!
//! Each backend ([`PoolKey`]: its address and everything that shapes a
//! connection) has one [`Upstream`], and that has one slot per serving
//! thread. A request takes an idle connection of its own thread's slot
//! (the most recently used one) or dials a new one, so a request costs no
//! cross-thread wake-up and no shared lock.
//!
//! - **HTTP/1.1 backends**, plain or TLS, go through Sluice's own client
//!   ([`h1`]) in the request's own task. Idle connections have no task: a
//!   checkout looks at the socket first (no system call unless the backend
//!   closed or wrote meanwhile), and a sweeper per slot closes connections
//!   idle for `timeouts.upstream_idle`. A connection goes back to its slot
//!   when its response body has been read to the end; one abandoned
//!   half-way is closed.
//! - **HTTP/2 backends** go through hyper's client ([`h2`]): one
//!   multiplexed connection per thread, closed by its own task after
//!   `timeouts.upstream_idle` without a stream.
//!
//! Nothing a client sends reaches this module's keys: the connection is
//! always dialled to the backend's address, whatever the request's Host.
//!
//! **Sending again.** [`BackendClients::send`] sends a request once more,
//! on a fresh connection, when it provably never reached the backend: the
//! connect failed (refused, timed out, TLS), the connection was found
//! closed before anything of the request was written, or an HTTP/2 backend
//! refused the stream (`REFUSED_STREAM`, which promises it did no work) or
//! turned it away with GOAWAY (a stream above the GOAWAY's last stream
//! identifier, which RFC 9113 §6.8 says was not processed, or one the
//! connection could no longer open after it). A bodiless
//! idempotent request is also sent again when a reused HTTP/1.1
//! connection closed before any byte of the response came: the stale
//! keep-alive race, where the server closed the connection as the request
//! went out. A request whose body was streamed is sent again only when
//! the whole body was read ahead (so it can be sent from its start). Any
//! other request is never sent again. Retries come from a budget (see
//! `crate::routing::RetryBudget`). A failure says whether the request
//! provably never started on the backend ([`Failure::unstarted`]): the
//! forward phase may then give it to another backend (a failover).

pub mod h1;
pub mod h2;
pub mod idle;
pub mod io;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;

use crate::BoxError;
use crate::body::UpstreamBody;
use crate::config::{Protocol, UpstreamTlsKey, UpstreamUrl};
use crate::fields::Fields;
use crate::metrics::UpstreamErrorKind;
use idle::IdleMark;
use io::{ConnectError, UpstreamIo};

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
    pub error: BoxError,
    /// The request provably never started on the backend: nothing of it
    /// was written, or an HTTP/2 backend refused its stream.
    pub unstarted: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendFailure {
    /// The backend's side failed.
    Upstream(Failure),
    /// The request body failed (the client broke it, or it grew past its
    /// limit): not the backend's doing.
    Body(BoxError),
}

/// How one attempt missed.
#[derive(Debug)]
pub(crate) enum Missed {
    /// Nothing of the request reached the backend.
    Unsent(Failure),
    /// The request may have reached the backend; `retry`: the rules in
    /// the module docs allow sending it again.
    Sent { failure: Failure, retry: bool },
    /// The request body failed.
    Body(BoxError),
}

/// A request's head as its backend's protocol takes it.
pub enum Head {
    /// The whole HTTP/1.1 head: request line, fields, blank line.
    H1(crate::reuse::Reused<Vec<u8>>),
    /// An HTTP/2 request's head (`:authority` the backend's).
    H2(http::request::Parts),
}

/// A request on its way to a backend.
pub struct Request<'s, 'b> {
    pub method: Method,
    pub head: Head,
    /// None once handed to hyper's HTTP/2 client, unless it was read
    /// ahead whole: hyper then gets a copy, and this stays to be sent
    /// again (see [`UpstreamBody::copy_whole`]).
    pub body: Option<UpstreamBody<'b>>,
    /// The request had a body to send.
    pub has_body: bool,
    /// HTTP/1.1: the body goes chunked (the head says so).
    pub chunked: bool,
    /// The request asked to upgrade: a 101 hands the connection over.
    pub upgrade: bool,
    /// Where informational responses go.
    pub interim: &'s mut h1::Interim<'s>,
    /// When the request began: an HTTP/1.1 connection's idle marks are
    /// taken from it (no clock read per request).
    pub start: std::time::Instant,
    /// Set once anything of the request may have reached the backend: a
    /// byte written to an HTTP/1.1 connection, or the request handed to
    /// hyper's HTTP/2 client (and not handed back).
    pub written: &'s AtomicBool,
}

impl Request<'_, '_> {
    /// Whether the request can be sent again from its start (see the
    /// module docs).
    pub fn resendable(&self) -> bool {
        match &self.body {
            Some(body) => body.can_resend(),
            None => !self.has_body,
        }
    }

    /// Starts the body over, to send the request again.
    pub fn rewind(&mut self) {
        if let Some(body) = &mut self.body {
            body.rewind();
        }
    }
}

/// A response's head, as its backend's protocol gave it.
pub enum ResponseHead {
    H1(h1::ResponseHead),
    H2(http::response::Parts),
}

impl ResponseHead {
    pub fn status(&self) -> StatusCode {
        match self {
            ResponseHead::H1(h) => h.status,
            ResponseHead::H2(p) => p.status,
        }
    }

    /// Whether it has a `Connection` field.
    pub fn has_connection(&self) -> bool {
        match self {
            ResponseHead::H1(h) => h.connection,
            ResponseHead::H2(p) => p.headers.contains_key(http::header::CONNECTION),
        }
    }

    /// Whether it is a gRPC response (`content-type: application/grpc…`,
    /// not gRPC-Web: see [`crate::grpc::is_grpc_content_type`]).
    pub fn is_grpc(&self) -> bool {
        match self {
            ResponseHead::H1(h) => h.grpc,
            ResponseHead::H2(p) => crate::grpc::is_grpc(&p.headers),
        }
    }

    /// Whether it is judged by gRPC's status rules, and the `grpc-status`
    /// its head carries: a gRPC response always; a gRPC-Web one only when
    /// its head carries a status (a trailers-only answer), its status
    /// being otherwise a frame inside the body (see `crate::grpc`).
    pub fn grpc_judged(&self) -> Option<Option<u32>> {
        let web = match self {
            ResponseHead::H1(h) => h.grpc_web,
            ResponseHead::H2(p) => p
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| crate::grpc::is_grpc_web_content_type(v.as_bytes())),
        };
        if self.is_grpc() {
            Some(crate::grpc::status(self))
        } else if web {
            crate::grpc::status(self).map(Some)
        } else {
            None
        }
    }

    /// The length the head declared (HTTP/1.1; a HEAD answer passes it on).
    pub fn declared_length(&self) -> Option<u64> {
        match self {
            ResponseHead::H1(h) => h.framing.declared,
            ResponseHead::H2(p) => p
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        }
    }
}

impl Fields for ResponseHead {
    fn each<'s>(&'s self, each: &mut dyn FnMut(&'s [u8], &'s [u8])) {
        match self {
            ResponseHead::H1(h) => {
                for (name, value) in h.fields().iter() {
                    each(name, value);
                }
            }
            ResponseHead::H2(p) => p.headers.each(each),
        }
    }

    fn values<'s>(&'s self, name: &str, each: &mut dyn FnMut(&'s [u8]) -> bool) -> bool {
        match self {
            ResponseHead::H1(h) => h
                .fields()
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name.as_bytes()) && each(v)),
            ResponseHead::H2(p) => Fields::values(&p.headers, name, each),
        }
    }
}

/// A backend's answer.
pub struct Response {
    pub head: ResponseHead,
    pub body: Pooled,
    /// A 101 to an upgrade: the connection to tunnel.
    pub upgraded: Option<Box<h1::Conn>>,
}

/// The connections of one backend, one slot per serving thread.
pub struct Upstream {
    key: PoolKey,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Why its TLS handshakes fail, logged now and then.
    tls_warnings: io::TlsWarnings,
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections.
    h1: Mutex<H1Pool>,
    /// The multiplexed HTTP/2 connection.
    h2: Mutex<Option<h2::H2Conn>>,
}

/// Idle HTTP/1.1 connections of one slot. They have no task of their
/// own: a sweeper task (one per slot, while the slot has idle connections)
/// closes the ones idle for `timeouts.upstream_idle` or closed by the
/// backend, and a checkout looks at the socket before reusing one.
#[derive(Default)]
struct H1Pool {
    /// The most recently used last, with when each was given back.
    idle: Vec<(Box<h1::Conn>, u64)>,
    sweeping: bool,
}

impl Upstream {
    /// The upstream for `key`, verifying with `config` (https upstreams).
    fn new(key: &PoolKey, slots: usize, config: Option<Arc<rustls::ClientConfig>>) -> Self {
        let tls = key.tls.as_ref().zip(config).map(|(t, config)| {
            let name = ServerName::try_from(t.server_name.clone()).expect("validated server name");
            (tokio_rustls::TlsConnector::from(config), name)
        });
        Self {
            key: key.clone(),
            tls,
            tls_warnings: io::TlsWarnings::default(),
            slots: (0..slots).map(|_| Slot::default()).collect(),
        }
    }

    /// Whether it verifies with `config`.
    fn verifies_with(&self, config: Option<&Arc<rustls::ClientConfig>>) -> bool {
        match (&self.tls, config) {
            (Some((connector, _)), Some(config)) => Arc::ptr_eq(connector.config(), config),
            (None, None) => true,
            _ => false,
        }
    }

    fn slot(&self) -> (usize, &Slot) {
        let i = crate::worker::slot() % self.slots.len();
        (i, &self.slots[i])
    }

    /// A TCP (and TLS) connection to the backend.
    async fn dial(&self) -> Result<UpstreamIo, ConnectError> {
        let url = &self.key.url;
        let dialled = io::dial(
            &url.host,
            url.port,
            self.key.connect_timeout,
            self.tls.as_ref(),
        )
        .await;
        if let Err(e) = &dialled
            && self.tls.is_some()
        {
            self.tls_warnings
                .note(&format!("{}:{}", url.host, url.port), e);
        }
        dialled
    }

    /// An HTTP/1.1 connection of this thread's slot (the slot's index, the
    /// connection, and whether it was pooled): a pooled one unless
    /// `fresh`, else a new one.
    async fn h1_conn(
        &self,
        fresh: bool,
        now: u64,
    ) -> Result<(usize, Box<h1::Conn>, bool), Failure> {
        let (slot_index, slot) = self.slot();
        if let Some(conn) = (!fresh).then(|| self.checkout(slot, now)).flatten() {
            return Ok((slot_index, conn, true));
        }
        // Boxed: a connect (and TLS handshake) is rare next to the pooled
        // connection's reuse, and kept inline its state (over 1 KiB) would
        // be part of, and copied with, every request's.
        let io = Box::pin(self.dial()).await.map_err(connect_failure)?;
        Ok((slot_index, h1::Conn::new(io), false))
    }

    /// The most recently used idle connection that is still open and not
    /// idle too long.
    fn checkout(&self, slot: &Slot, now: u64) -> Option<Box<h1::Conn>> {
        let mut pool = slot.h1.lock().expect("pool lock");
        while let Some((mut conn, since)) = pool.idle.pop() {
            if Duration::from_millis(now.saturating_sub(since)) < self.key.idle_timeout
                && conn.still_open()
            {
                return Some(conn);
            }
        }
        None
    }

    /// Puts `conn` back in `slot`'s pool, idle since `now` (ms).
    fn give_back(self: &Arc<Self>, slot: usize, conn: Box<h1::Conn>, now: u64) {
        let mut pool = self.slots[slot].h1.lock().expect("pool lock");
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
        pool.idle.push((conn, now));
    }

    /// One HTTP/1.1 exchange, in this task.
    async fn attempt_h1(
        self: &Arc<Self>,
        req: &mut Request<'_, '_>,
        fresh: bool,
    ) -> Result<Response, Missed> {
        let now = IdleMark::ms_at(req.start);
        let (slot, conn, reused) = self.h1_conn(fresh, now).await.map_err(Missed::Unsent)?;
        let Head::H1(head) = &req.head else {
            unreachable!("an HTTP/1.1 backend gets an HTTP/1.1 head");
        };
        let bodiless = !req.has_body;
        let outgoing = req.body.as_mut().map(|body| h1::Outgoing {
            body,
            chunked: req.chunked,
        });
        let head_request = req.method == Method::HEAD;
        let exchanged = conn
            .exchange(
                head,
                outgoing,
                head_request,
                req.upgrade,
                req.interim,
                req.written,
            )
            .await;
        let failure = |kind, error: BoxError, unstarted| Failure {
            kind,
            error,
            unstarted,
        };
        // A connection closed or reset before an answer is `reset` (as one
        // cut during the answer is); a message that breaks HTTP/1.1 is
        // `protocol`.
        let reset = UpstreamErrorKind::Reset;
        match exchanged {
            Ok(exchanged) => Ok(self.h1_response(slot, exchanged, now)),
            Err(h1::SendError::Unwritten(e)) => Err(Missed::Unsent(failure(reset, e.into(), true))),
            // The stale keep-alive race.
            Err(h1::SendError::ClosedUnanswered(e)) => Err(Missed::Sent {
                failure: failure(reset, e.into(), false),
                retry: reused && bodiless && !req.upgrade && is_idempotent(&req.method),
            }),
            Err(h1::SendError::Body(e)) => Err(Missed::Body(e)),
            Err(e @ h1::SendError::Protocol(_)) => Err(Missed::Sent {
                failure: failure(UpstreamErrorKind::Protocol, e.into(), false),
                retry: false,
            }),
        }
    }

    fn h1_response(self: &Arc<Self>, slot: usize, exchanged: h1::Exchanged, now: u64) -> Response {
        let (body, upgraded) = match exchanged.answered {
            h1::Answered::Body(body) => (body, None),
            h1::Answered::Upgraded(conn) => (h1::Body1::empty(), Some(conn)),
        };
        let mut body = Pooled {
            body: Source::H1(body),
            hold: Hold::H1 {
                upstream: self.clone(),
                slot,
                since: now,
            },
        };
        body.give_back_spare();
        Response {
            head: ResponseHead::H1(exchanged.head),
            body,
            upgraded,
        }
    }

    /// This thread's HTTP/2 connection, dialled if there is none open.
    async fn h2_conn(&self, fresh: bool) -> Result<h2::H2Conn, Failure> {
        let (_, slot) = self.slot();
        if !fresh {
            let current = slot.h2.lock().expect("pool lock");
            if let Some(c) = current.as_ref().filter(|c| c.is_open()) {
                return Ok(c.clone());
            }
        }
        let io = self.dial().await.map_err(connect_failure)?;
        let conn = h2::handshake(io, self.key.idle_timeout)
            .await
            .map_err(|e| protocol_failure(e.into()))?;
        *slot.h2.lock().expect("pool lock") = Some(conn.clone());
        Ok(conn)
    }

    /// One HTTP/2 exchange. The body goes to hyper (pumped when it reads
    /// from the own downstream: see [`h2`]).
    async fn attempt_h2(&self, req: &mut Request<'_, '_>, fresh: bool) -> Result<Response, Missed> {
        let conn = self.h2_conn(fresh).await.map_err(Missed::Unsent)?;
        let Head::H2(parts) = &req.head else {
            unreachable!("an HTTP/2 backend gets an HTTP/2 head");
        };
        // The head again, for a stream the backend turns away (hyper does
        // not hand back a request it sent).
        let parts = copy_parts(parts);
        // hyper takes the body away: one read ahead whole goes as a copy,
        // so that it can be sent again (a stream the backend refuses is
        // retried, or failed over). A body with nothing left to send
        // (none, or read and sent whole) goes as hyper's own empty one:
        // the head then ends the stream (END_STREAM on HEADERS), not an
        // empty DATA frame after it.
        let unsent = |body: &UpstreamBody<'_>| !body.is_end_stream();
        let body = match req.body.as_ref().and_then(UpstreamBody::copy_whole) {
            Some(copy) => Ok(Some(copy)
                .filter(unsent)
                .unwrap_or_else(UpstreamBody::empty)),
            None => req
                .body
                .take()
                .filter(unsent)
                .unwrap_or_else(UpstreamBody::empty)
                .into_static(),
        };
        // Handed to hyper: it may write the head at any time now.
        req.written.store(true, Ordering::SeqCst);
        let mut rest = None;
        let result = match body {
            Ok(body) => {
                let request = http::Request::from_parts(parts, h2::H2Body::Direct(body));
                h2::send(conn, request).await
            }
            Err(mut body) => {
                let (pumped, frames, complete) = h2::pumped();
                let mut frames = Some(frames);
                let request = http::Request::from_parts(parts, pumped);
                let result = {
                    let sent = h2::send(conn, request);
                    let pump = h2::pump(&mut body, &mut frames, complete);
                    tokio::pin!(sent, pump);
                    // The pump runs until the body's end or the answer's
                    // head, whichever comes first (see `h2`).
                    let mut pumping = true;
                    loop {
                        tokio::select! {
                            answer = &mut sent => break answer,
                            pumped = &mut pump, if pumping => {
                                pumping = false;
                                if let Err(e) = pumped {
                                    break Err(h2::Miss::Body(e));
                                }
                            }
                        }
                    }
                };
                // An answer before the body's end: the stream stays open
                // until the answer has been relayed.
                rest = h2::rest(frames);
                result
            }
        };
        // Nothing reached the backend, or what did it promised not to have
        // worked on (a refused stream, one above a GOAWAY's last): a client
        // that leaves now, while the request is tried again or fails over,
        // left before anything was sent (never a 499 on a backend).
        if matches!(
            &result,
            Err(h2::Miss::Unsent(_))
                | Err(h2::Miss::Sent {
                    turned: h2::Turned { refused: true, .. } | h2::Turned { cut: true, .. },
                    ..
                })
        ) {
            req.written.store(false, Ordering::SeqCst);
        }
        let (response, guard) = result.map_err(|miss| match miss {
            h2::Miss::Unsent(error) => Missed::Unsent(Failure {
                unstarted: true,
                ..protocol_failure(error.into())
            }),
            h2::Miss::Sent { error, turned } => Missed::Sent {
                retry: turned.refused || turned.cut,
                failure: Failure {
                    kind: turned.kind,
                    error: error.into(),
                    unstarted: turned.refused || turned.cut,
                },
            },
            h2::Miss::Body(e) => Missed::Body(e),
        })?;
        let (parts, body) = response.into_parts();
        // RFC 9110 §15: a status code is 100 to 599 (the own HTTP/1.1
        // codec refuses the rest as it parses). Dropping the body resets
        // the stream.
        if parts.status.as_u16() > 599 {
            return Err(Missed::Sent {
                retry: false,
                failure: protocol_failure("the status code is not 100 to 599".into()),
            });
        }
        Ok(Response {
            head: ResponseHead::H2(parts),
            body: Pooled {
                body: Source::H2(body),
                hold: Hold::Stream {
                    _guard: guard,
                    _rest: rest,
                },
            },
            upgraded: None,
        })
    }

    async fn attempt(
        self: &Arc<Self>,
        req: &mut Request<'_, '_>,
        fresh: bool,
    ) -> Result<Response, Missed> {
        match self.key.protocol {
            Protocol::Http1 => self.attempt_h1(req, fresh).await,
            // Boxed: hyper's exchange is large, and every request's state
            // would keep room for it.
            Protocol::Http2 => Box::pin(self.attempt_h2(req, fresh)).await,
        }
    }
}

/// A copy of a request head (no extensions).
pub fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = http::Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Closes the idle HTTP/1.1 connections of one slot that have been idle
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
        let mut pool = upstream.slots[slot].h1.lock().expect("pool lock");
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

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
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
        unstarted: true,
    }
}

fn protocol_failure(error: BoxError) -> Failure {
    Failure {
        kind: UpstreamErrorKind::Protocol,
        error,
        unstarted: false,
    }
}

/// What a response body holds of its connection.
enum Hold {
    /// Where an HTTP/1.1 connection goes when the body ends, and its
    /// idle mark (its request's start).
    H1 {
        upstream: Arc<Upstream>,
        slot: usize,
        since: u64,
    },
    /// An HTTP/2 exchange, counted until the body ends or is dropped,
    /// and the request stream when the answer came before the request
    /// body's end (see [`h2`]).
    Stream {
        _guard: h2::StreamGuard,
        _rest: Option<h2::Rest>,
    },
    Nothing,
}

/// An upstream response body; an HTTP/1.1 connection goes back to its
/// pool once this body has been read to its end (one abandoned half-way
/// is dropped, which closes it).
pub struct Pooled {
    body: Source,
    hold: Hold,
}

/// Who reads a response body.
enum Source {
    /// Sluice's own HTTP/1.1 client, in the reader's task.
    H1(h1::Body1),
    /// hyper's HTTP/2 client.
    H2(hyper::body::Incoming),
}

impl Pooled {
    /// Gives an HTTP/1.1 connection back once its body has been read.
    fn give_back_spare(&mut self) {
        if let Source::H1(body) = &mut self.body
            && let Some(conn) = body.take_spare()
            && let Hold::H1 {
                upstream,
                slot,
                since,
            } = std::mem::replace(&mut self.hold, Hold::Nothing)
        {
            upstream.give_back(slot, conn, since);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.body {
            Source::H1(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if polled.is_ready() {
                    self.give_back_spare();
                }
                polled
            }
            Source::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::H1(b) => b.is_end_stream(),
            Source::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::H1(b) => b.size_hint(),
            Source::H2(b) => b.size_hint(),
        }
    }
}

/// The connections of one backend, shared by every serving thread.
#[derive(Clone)]
pub struct BackendClients(Arc<Upstream>);

impl BackendClients {
    /// Sends `req` to the backend. `may_retry` takes a retry from the
    /// budget (it is called only when the rules in the module docs allow
    /// sending the request again).
    pub async fn send(
        &self,
        req: &mut Request<'_, '_>,
        may_retry: impl FnOnce() -> bool,
    ) -> Result<Response, SendFailure> {
        let failure = match self.0.attempt(req, false).await {
            Ok(response) => return Ok(response),
            Err(Missed::Body(e)) => return Err(SendFailure::Body(e)),
            Err(Missed::Unsent(failure)) if req.resendable() => failure,
            Err(Missed::Sent {
                failure,
                retry: true,
            }) if req.resendable() => failure,
            Err(Missed::Unsent(failure) | Missed::Sent { failure, .. }) => {
                return Err(SendFailure::Upstream(failure));
            }
        };
        if !may_retry() {
            return Err(SendFailure::Upstream(failure));
        }
        tracing::debug!(error = %failure, "the backend did not take the request; sending it again on a fresh connection");
        req.rewind();
        match self.0.attempt(req, true).await {
            Ok(response) => Ok(response),
            Err(Missed::Body(e)) => Err(SendFailure::Body(e)),
            Err(Missed::Unsent(failure) | Missed::Sent { failure, .. }) => {
                Err(SendFailure::Upstream(failure))
            }
        }
    }

    /// The backend's protocol.
    pub fn protocol(&self) -> Protocol {
        self.0.key.protocol
    }
}

/// Upstreams by [`PoolKey`], shared across routing tables, and the TLS
/// verification of each upstream TLS setting.
pub struct ClientPool {
    slots: usize,
    clients: Mutex<Pools>,
}

#[derive(Default)]
struct Pools {
    upstreams: HashMap<PoolKey, BackendClients>,
    /// By TLS setting.
    tls: HashMap<UpstreamTlsKey, Verification>,
}

/// How upstreams of one TLS setting are verified.
#[derive(Default)]
struct Verification {
    /// The `ca_file`'s bytes when last read (None: none, or unreadable).
    seen: Option<Vec<u8>>,
    /// The bytes the configurations are built from: the last good ones
    /// (the outer None: there never were any, so they fail closed).
    good: Option<Option<Vec<u8>>>,
    /// The configurations, without and with ALPN `h2`, once asked for.
    configs: [Option<Arc<rustls::ClientConfig>>; 2],
}

impl Default for ClientPool {
    fn default() -> Self {
        Self::new(0)
    }
}

fn read_ca(tls: &UpstreamTlsKey) -> Option<Vec<u8>> {
    std::fs::read(tls.ca_file.as_ref()?).ok()
}

impl Pools {
    /// The configuration upstreams of `tls` verify with. The `ca_file` is
    /// read, and when its bytes changed since, checked: bytes that build
    /// are the new good ones (the configurations are built again); bytes
    /// that do not leave the last good ones, for every upstream of the
    /// setting, with or without `h2` (see [`ClientPool::get`]).
    fn verification(&mut self, tls: &UpstreamTlsKey, http2: bool) -> Arc<rustls::ClientConfig> {
        let bytes = read_ca(tls);
        let fresh = !self.tls.contains_key(tls);
        let v = self.tls.entry(tls.clone()).or_default();
        if fresh || (tls.ca_file.is_some() && v.seen != bytes) {
            v.seen.clone_from(&bytes);
            let server = tls.server_name.as_str();
            if v.good.as_ref() == Some(&bytes) {
                // The good bytes again (after a bad read): nothing to build.
            } else {
                // Built without `h2` to check the bytes, and kept as such.
                match crate::tls::client_config_from(tls, bytes.as_deref(), false) {
                    Ok(built) => {
                        if v.good.is_some() {
                            tracing::info!(
                                server,
                                "an upstream ca_file changed; new connections verify with it"
                            );
                        }
                        v.good = Some(bytes);
                        v.configs = [Some(built), None];
                    }
                    Err(e) if v.good.is_some() => {
                        tracing::error!(server, error = %e, "an upstream ca_file changed and cannot be used; the last good one keeps verifying");
                    }
                    Err(e) => {
                        // Checked before the table was built; a file broken
                        // since then makes every handshake fail (502,
                        // kind="tls").
                        tracing::error!(server, error = %e, "upstream TLS settings unusable; every handshake to this upstream fails");
                    }
                }
            }
        }
        let good = v.good.clone();
        v.configs[usize::from(http2)]
            .get_or_insert_with(|| match good {
                Some(bytes) => crate::tls::client_config_from(tls, bytes.as_deref(), http2)
                    .unwrap_or_else(|_| crate::tls::fail_closed_config(http2)),
                None => crate::tls::fail_closed_config(http2),
            })
            .clone()
    }
}

impl ClientPool {
    /// A pool for `threads` dedicated serving threads (0: the caller's runtime only).
    pub fn new(threads: usize) -> Self {
        Self {
            slots: threads + 1,
            clients: Mutex::default(),
        }
    }

    /// The upstream for `key`, reusing the existing one (and its
    /// connections) unless its verification changed. An upstream
    /// `ca_file` is read again at every call (every configuration applied)
    /// and by [`ClientPool::cas_changed`]: new contents that build make new
    /// upstreams (new connections verify with them; open ones finish with
    /// the old table), and contents that no longer build leave the last
    /// good configuration of that TLS setting verifying, for every
    /// upstream of it, old or new.
    pub fn get(&self, key: &PoolKey) -> BackendClients {
        let mut pools = self.clients.lock().expect("pool lock");
        let config = key
            .tls
            .as_ref()
            .map(|t| pools.verification(t, key.protocol == Protocol::Http2));
        if let Some(existing) = pools.upstreams.get(key)
            && existing.0.verifies_with(config.as_ref())
        {
            return existing.clone();
        }
        let fresh = BackendClients(Arc::new(Upstream::new(key, self.slots, config)));
        pools.upstreams.insert(key.clone(), fresh.clone());
        fresh
    }

    /// Whether the table should be built again for its upstreams' CAs:
    /// some upstream `ca_file` in use now holds other bytes than when it
    /// was last read, or some upstream verifies with another configuration
    /// than its TLS setting's current one. The second happens when a file
    /// changes while one table is built: each pool key reads it, so keys
    /// of one setting read before the change keep the old contents, and
    /// the file then holds the bytes last seen.
    pub fn cas_changed(&self) -> bool {
        let pools = self.clients.lock().expect("pool lock");
        let file_changed = pools
            .tls
            .iter()
            .any(|(tls, known)| tls.ca_file.is_some() && read_ca(tls) != known.seen);
        file_changed
            || pools.upstreams.iter().any(|(key, upstream)| {
                let Some(known) = key.tls.as_ref().and_then(|tls| pools.tls.get(tls)) else {
                    return false;
                };
                // A slot emptied since this upstream was made (new contents
                // empty the `h2` one, whichever protocol read them) is
                // stale too.
                known.configs[usize::from(key.protocol == Protocol::Http2)]
                    .as_ref()
                    .is_none_or(|current| !upstream.0.verifies_with(Some(current)))
            })
    }

    /// Drops upstreams (and TLS settings) no longer used by the current
    /// table.
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut pools = self.clients.lock().expect("pool lock");
        pools.upstreams.retain(|k, _| keep.contains(k));
        pools
            .tls
            .retain(|tls, _| keep.iter().any(|k| k.tls.as_ref() == Some(tls)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (made with openssl for this test).
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBozCCAUmgAwIBAgIUF8eSd/UUm/5IoLXNYX8fxhBfDikwCgYIKoZIzj0EAwIw\nHjEcMBoGA1UEAwwTc2x1aWNlIHVuaXQgdGVzdCBDQTAgFw0yNjEyMDYyMzAwMDda\nGA8yMTI2MTExMjIzMDAwN1owHjEcMBoGA1UEAwwTc2x1aWNlIHVuaXQgdGVzdCBD\nQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABC+i3/Bo9oq91lc6Y+3UMlUkuZVF\nDu0hOVzvii56Z4azm67n45zSNRLZJnype8q6fsNk8QOJ5NE3v38kqJXafMqjYzBh\nMB0GA1UdDgQWBBQDKwOwS/UkligwW3ttTDeodf6QbTAfBgNVHSMEGDAWgBQDKwOw\nS/UkligwW3ttTDeodf6QbTAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIC\nBDAKBggqhkjOPQQDAgNIADBFAiEA7bw30dFZQ6y7jh4c7jiycio1ww+CjfO6Hsy/\nEPgCbZICIB6/YnR6KiDDyIeeFuTKpupXfrU56FUzO/lI6t1DH1q+\n-----END CERTIFICATE-----\n";

    /// A TLS setting whose `ca_file` holds [`CA`], in a directory of its
    /// own (`name` and the process id): the directory, the file, the setting.
    fn ca_setting(name: &str) -> (std::path::PathBuf, std::path::PathBuf, UpstreamTlsKey) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.crt");
        std::fs::write(&file, CA).unwrap();
        let tls = UpstreamTlsKey {
            ca_file: Some(file.clone()),
            server_name: "web.internal".into(),
        };
        (dir, file, tls)
    }

    /// A CA file that cannot be read for a moment and then holds the same
    /// bytes again keeps its configurations (and so its upstreams and
    /// their connections); one that no longer parses keeps the last good
    /// one for both protocols, a protocol not asked for before included.
    #[test]
    fn a_ca_file_read_badly_once_or_broken_keeps_the_last_good_verification() {
        let (dir, file, tls) = ca_setting("sluice-ca");
        let mut pools = Pools::default();
        let good = pools.verification(&tls, false);
        std::fs::remove_file(&file).unwrap();
        assert!(Arc::ptr_eq(&good, &pools.verification(&tls, false)));
        std::fs::write(&file, CA).unwrap();
        assert!(
            Arc::ptr_eq(&good, &pools.verification(&tls, false)),
            "the same bytes again built a new configuration"
        );
        std::fs::write(&file, "not a certificate").unwrap();
        assert!(Arc::ptr_eq(&good, &pools.verification(&tls, false)));
        let h2 = pools.verification(&tls, true);
        assert_eq!(h2.alpn_protocols, [b"h2".to_vec()]);
        let fail_closed = crate::tls::fail_closed_config(true);
        assert_eq!(
            format!("{fail_closed:?}"),
            format!("{:?}", crate::tls::fail_closed_config(true))
        );
        // The configurations differ only in their roots.
        assert_ne!(
            format!("{h2:?}"),
            format!("{fail_closed:?}"),
            "the h2 configuration of a broken file failed closed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A CA file that changes while a table is built, between two pool
    /// keys of one TLS setting, leaves the first key verifying with the
    /// old contents; the next poll says so, and the next build gives that
    /// key the new contents.
    #[test]
    fn a_ca_file_changed_within_one_build_is_caught_by_the_next_poll() {
        let (dir, file, tls) = ca_setting("sluice-ca-race");
        let key = |port| PoolKey {
            url: crate::config::UpstreamUrl::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
            protocol: Protocol::Http1,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            tls: Some(tls.clone()),
        };
        let config = |clients: &BackendClients| clients.0.tls.as_ref().unwrap().0.config().clone();
        // The same certificate with other line breaks: other bytes that
        // still build.
        let contents = [CA.to_string(), CA.replace('\n', "\r\n")];
        // The second key of the same protocol, then of the other one (which
        // keeps a configuration of its own).
        for (i, protocol) in [Protocol::Http1, Protocol::Http2].into_iter().enumerate() {
            std::fs::write(&file, &contents[i % 2]).unwrap();
            let (first, mut second) = (key(9001), key(9002));
            second.protocol = protocol;
            let pool = ClientPool::new(0);
            let old = pool.get(&first);
            std::fs::write(&file, &contents[(i + 1) % 2]).unwrap();
            let new = pool.get(&second);
            assert!(
                pool.cas_changed(),
                "a key left on the old contents of its CA file went unnoticed ({protocol:?})"
            );
            let rebuilt = pool.get(&first);
            assert!(!Arc::ptr_eq(&old.0, &rebuilt.0));
            assert!(!pool.cas_changed());
            if protocol == Protocol::Http1 {
                assert!(Arc::ptr_eq(&config(&rebuilt), &config(&new)));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
