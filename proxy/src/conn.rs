//! Connection supervision: every client connection, in every protocol and
//! over TLS, is bounded in time.
//!
//! - A connection that has not produced one complete request head within
//!   `limits.header_read_timeout` is closed. This covers a client that
//!   connects and sends nothing (before hyper even knows HTTP/1 from
//!   HTTP/2), a partial HTTP/2 preface, and silence after a TLS handshake.
//!   Later request heads on an HTTP/1 connection are bounded by hyper's
//!   own header timer.
//! - A connection with no request in flight for `limits.idle_timeout` is
//!   shut down gracefully: an idle HTTP/1 keep-alive connection is closed,
//!   an HTTP/2 connection gets GOAWAY. Keep-alive pings do not count as
//!   activity; requests (until their response body ends) do.
//!   If the client does not complete the graceful close (an HTTP/2 client
//!   that never answers the GOAWAY's PING), the connection is closed after
//!   another idle timeout.
//! - A client that half-closes its connection (ends its input) after
//!   pipelining HTTP/1.1 requests gets them answered before the connection
//!   closes. hyper reads an end of input during a request as a client gone
//!   and drops that request, so [`ClientIo`] keeps the end from hyper while
//!   a request without a body, read from bytes that came before the
//!   previous answer, is in flight. A lone request whose client closes is
//!   still dropped and counted 499 (nothing on the wire tells a half-close
//!   from a close, and nginx reads it so too), and so is a request with a
//!   body that is the last before the end: the end may be cutting its body,
//!   and hyper reads bodies ahead of the request path, so only hyper can
//!   tell (a cut body is then the client's fault, see `crate::body`).
//! - A drain shuts every connection down gracefully and waits, up to the
//!   drain timeout, for them to finish. Upgraded connections (WebSocket
//!   and other tunnels) are tracked apart, in [`ProxyState::tunnels`]:
//!   a drain waits for them too, within the same timeout, and cuts the
//!   ones still open when it runs out.
//!
//! [`ProxyState::tunnels`]: crate::server::ProxyState::tunnels

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

/// How often to check a timeout of `timeout`: a quarter of it, between
/// 10 ms and 1 s, so the check is late by at most that much.
pub fn check_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The client connections open in the whole process, against
/// `limits.max_connections`.
pub struct Capacity {
    open: AtomicUsize,
    max: usize,
    metrics: Arc<crate::Metrics>,
}

impl Capacity {
    pub fn new(max: usize, metrics: Arc<crate::Metrics>) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// A place for one more connection, or None (counted) when all are taken.
    pub fn try_open(self: &Arc<Self>) -> Option<Opened> {
        let taken = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.record_connection_rejected();
            return None;
        }
        self.metrics.connection_opened(true);
        Some(Opened(self.clone()))
    }

    /// A place for a connection that already had one and is carried on
    /// in another form (an upgraded tunnel): counted, never refused.
    pub fn carry_on(self: &Arc<Self>) -> Opened {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.metrics.connection_opened(true);
        Opened(self.clone())
    }
}

/// One open connection (see [`Capacity::try_open`]).
pub struct Opened(Arc<Capacity>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.connection_opened(false);
    }
}

/// The live connections of a listener, and the signal that drains them.
pub struct Connections {
    draining: watch::Sender<bool>,
    live: Arc<Live>,
}

struct Live {
    count: AtomicUsize,
    none: Notify,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            live: Arc::new(Live {
                count: AtomicUsize::new(0),
                none: Notify::new(),
            }),
        }
    }
}

impl Connections {
    /// Counts a new connection until the returned guard is dropped (which
    /// also gives back its place, if it holds one).
    pub fn enter(&self, opened: Option<Opened>) -> Entered {
        self.live.count.fetch_add(1, Ordering::SeqCst);
        Entered {
            live: self.live.clone(),
            draining: self.draining.subscribe(),
            _opened: opened,
        }
    }

    /// Asks every connection to finish gracefully; waits until none is
    /// left, or `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        let _ = self.draining.send(true);
        let none_left = async {
            loop {
                let notified = self.live.none.notified();
                if self.live.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, none_left).await.is_err() {
            tracing::warn!(
                left = self.live.count.load(Ordering::SeqCst),
                "drain timeout reached; closing the remaining connections"
            );
        }
    }
}

/// One live connection (see [`Connections::enter`]).
pub struct Entered {
    live: Arc<Live>,
    draining: watch::Receiver<bool>,
    _opened: Option<Opened>,
}

impl Entered {
    /// The drain signal: true once a drain has started.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.clone()
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.live.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.live.none.notify_waiters();
        }
    }
}

/// The requests of one connection, as the supervisor sees them.
pub struct Activity {
    start: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` of the last request start or end.
    last: AtomicU64,
    /// The order of the connection's reads and writes ([`ClientIo`]): a
    /// counter, the last read asked for and the last write made.
    io_seq: AtomicU64,
    last_read: AtomicU64,
    last_write: AtomicU64,
    /// The request in flight was read from bytes that came before the
    /// previous answer went out (it was pipelined).
    pipelined: AtomicBool,
    /// The first request was pipelined (on the own path, before the
    /// connection came to hyper).
    first_pipelined: AtomicBool,
    /// The request in flight has a body: an end of input may cut it (hyper
    /// decodes bodies ahead of their reader, so no one here can tell when
    /// it has all come), and hyper must see it.
    has_body: AtomicBool,
    /// The connection's task, while [`ClientIo`] keeps an end of input
    /// from hyper: woken when the requests in flight are over.
    held_end: Mutex<Option<Waker>>,
    holding: AtomicBool,
    /// Informational heads for the HTTP/1.1 request in flight.
    interim: InterimHeads,
}

/// Informational (1xx) response heads on their way to an HTTP/1.1 client
/// of hyper's server, which cannot send them itself. [`ClientIo`] writes
/// them only where no byte of another response can be cut: when hyper
/// asks it to flush (hyper has nothing buffered then), or before hyper's
/// next bytes when nothing was written since such a flush (those bytes
/// start the final head). Heads that cannot be placed so by the time the
/// final head is on its way are dropped ([`Activity::settle_interim`]).
#[derive(Default)]
struct InterimHeads {
    bytes: Mutex<Vec<u8>>,
    /// `bytes` is not empty.
    pending: AtomicBool,
    /// A request in flight may still send heads.
    open: AtomicBool,
    /// hyper has flushed and written nothing since.
    flushed: AtomicBool,
    /// The connection's task, woken to write heads that came.
    task: futures::task::AtomicWaker,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            io_seq: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            pipelined: AtomicBool::new(false),
            first_pipelined: AtomicBool::new(false),
            has_body: AtomicBool::new(false),
            held_end: Mutex::new(None),
            holding: AtomicBool::new(false),
            interim: InterimHeads::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request head has arrived; it is in flight until the guard drops
    /// (with its response body).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        // hyper parsed this head without reading since the last answer
        // went out: its bytes came before it.
        let pipelined = if self.requests.fetch_add(1, Ordering::SeqCst) > 0 {
            self.last_read.load(Ordering::SeqCst) < self.last_write.load(Ordering::SeqCst)
        } else {
            self.first_pipelined.load(Ordering::SeqCst)
        };
        self.pipelined.store(pipelined, Ordering::SeqCst);
        self.has_body.store(false, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.last.store(self.now_ms(), Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// The connection's first request was pipelined behind requests the
    /// own path answered.
    pub fn first_pipelined(&self) {
        self.first_pipelined.store(true, Ordering::SeqCst);
    }

    /// The request in flight may send informational heads
    /// ([`Activity::send_interim`]) until [`Activity::settle_interim`].
    pub fn expect_interim(&self) {
        self.interim.open.store(true, Ordering::SeqCst);
    }

    /// An informational response head for the client, written as soon as
    /// it can be (see [`InterimHeads`]).
    pub fn send_interim(&self, head: &[u8]) {
        let heads = &self.interim;
        if !heads.open.load(Ordering::SeqCst) {
            return;
        }
        heads
            .bytes
            .lock()
            .expect("interim lock")
            .extend_from_slice(head);
        heads.pending.store(true, Ordering::SeqCst);
        heads.task.wake();
    }

    /// The final response head is next: no more informational heads, and
    /// those that could not be written yet are dropped unless they can
    /// still go first (hyper has nothing buffered).
    pub fn settle_interim(&self) {
        let heads = &self.interim;
        heads.open.store(false, Ordering::SeqCst);
        if heads.pending.load(Ordering::SeqCst) && !heads.flushed.load(Ordering::SeqCst) {
            heads.bytes.lock().expect("interim lock").clear();
            heads.pending.store(false, Ordering::SeqCst);
        }
    }

    /// The request just begun has a body.
    pub fn with_body(&self) {
        self.has_body.store(true, Ordering::SeqCst);
    }

    fn note_io(&self, at: &AtomicU64) {
        at.store(
            self.io_seq.fetch_add(1, Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
    }

    /// Whether an end of input that came now is kept from hyper: a
    /// pipelined request without a body is in flight. Then `waker` is woken
    /// when it is over.
    fn hold_end(&self, waker: &Waker) -> bool {
        if self.in_flight.load(Ordering::SeqCst) == 0
            || !self.pipelined.load(Ordering::SeqCst)
            || self.has_body.load(Ordering::SeqCst)
        {
            return false;
        }
        *self.held_end.lock().expect("waker lock") = Some(waker.clone());
        self.holding.store(true, Ordering::SeqCst);
        true
    }

    /// How long the connection has had no request in flight (zero while
    /// one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = self.last.load(Ordering::SeqCst);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

/// Keeps a request in flight (see [`Activity::begin`]).
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last.store(a.now_ms(), Ordering::SeqCst);
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && a.holding.swap(false, Ordering::SeqCst)
        {
            // The connection's task reads the held end of input now.
            if let Some(waker) = a.held_end.lock().expect("waker lock").take() {
                waker.wake();
            }
        }
    }
}

/// A client connection as hyper reads it: first the bytes the own path
/// already read (`prefix`), then the socket; and an end of input kept
/// from hyper while a pipelined HTTP/1.1 request is in flight (see the
/// module docs). Reads and writes are noted in the connection's
/// [`Activity`] to tell pipelined requests (a head hyper parsed without
/// reading since the last answer went out).
pub struct ClientIo<T> {
    prefix: Bytes,
    inner: T,
    activity: Arc<Activity>,
    /// HTTP/2 (its preface came first): hyper's own rules stand.
    http2: Option<bool>,
    /// The client's input has ended; hyper is told once no pipelined
    /// request is in flight.
    ended: bool,
}

/// The HTTP/2 connection preface's start.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> ClientIo<T> {
    pub fn new(inner: T, prefix: Bytes, activity: Arc<Activity>) -> Self {
        Self {
            prefix,
            inner,
            activity,
            http2: None,
            ended: false,
        }
    }
}

/// The protocol the first bytes of a connection show: HTTP/2 if they
/// start its preface (or could); None before any byte.
fn protocol_of(first: &[u8]) -> Option<bool> {
    let n = first.len().min(H2_PREFACE.len());
    (n > 0).then(|| first[..n] == H2_PREFACE[..n])
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.activity.note_io(&this.activity.last_read);
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            if this.http2.is_none() {
                this.http2 = protocol_of(&this.prefix[..n]);
            }
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if !this.ended {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    this.ended = true;
                }
                Poll::Ready(Ok(())) => {
                    if this.http2.is_none() {
                        this.http2 = protocol_of(&buf.filled()[before..]);
                    }
                    return Poll::Ready(Ok(()));
                }
                other => return other,
            }
        }
        if this.http2 != Some(true) && this.activity.hold_end(cx.waker()) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> ClientIo<T> {
    /// Writes the informational heads waiting, if hyper has nothing
    /// buffered (see [`InterimHeads`]).
    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let heads = &self.activity.interim;
        if !heads.pending.load(Ordering::SeqCst) || !heads.flushed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        let mut bytes = heads.bytes.lock().expect("interim lock");
        while !bytes.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    bytes.drain(..n);
                }
                other => return other.map_ok(|_| ()),
            }
        }
        heads.pending.store(false, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    /// hyper writes: the heads waiting go first when they may.
    fn wrote(&self, written: &Poll<std::io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.note_io(&self.activity.last_write);
            self.activity.interim.flushed.store(false, Ordering::SeqCst);
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_interim(cx))?;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_interim(cx))?;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes only with nothing buffered: informational heads may
    /// go now (it polls this on every turn of its connection's loop, so
    /// waking the task sends them).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let heads = &this.activity.interim;
        heads.flushed.store(true, Ordering::SeqCst);
        if heads.open.load(Ordering::SeqCst) {
            heads.task.register(cx.waker());
        }
        std::task::ready!(this.poll_interim(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it ends.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The time limits of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Drives `conn` to its end under the limits (see the module docs).
/// `shutdown` starts its graceful shutdown (hyper's `graceful_shutdown`).
pub async fn supervise<C, E>(
    mut conn: Pin<Box<C>>,
    shutdown: fn(Pin<&mut C>),
    entered: Entered,
    activity: Arc<Activity>,
    limits: ConnLimits,
    peer: std::net::SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut draining = entered.draining.clone();
    // Made once: a wait made anew on every wake-up of the connection's
    // task would register and unregister with the drain signal each time.
    let drain_started = draining.wait_for(|d| *d);
    tokio::pin!(drain_started);
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let every = check_every(limits.idle_timeout);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When a graceful shutdown began, if one did.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            // The connection first: most wake-ups are its.
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = &mut first_request, if activity.requests.load(Ordering::SeqCst) == 0 => {
                tracing::debug!(%peer, timeout = ?limits.header_read_timeout, "no complete request head in time; closing");
                break;
            }
            _ = &mut drain_started, if closing.is_none() => {
                shutdown(conn.as_mut());
                closing = Some(Instant::now());
            }
            _ = ticks.tick() => {
                let idle = activity.idle_for() >= limits.idle_timeout;
                match closing {
                    None if idle => {
                        tracing::debug!(%peer, timeout = ?limits.idle_timeout, "idle; closing");
                        shutdown(conn.as_mut());
                        closing = Some(Instant::now());
                    }
                    // A graceful shutdown waits on the client (an HTTP/2
                    // GOAWAY's PING); one that stays idle for another
                    // idle timeout is closed outright.
                    Some(since) if idle && since.elapsed() >= limits.idle_timeout => {
                        tracing::debug!(%peer, "no graceful close from the client; closing");
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    drop(entered);
}
