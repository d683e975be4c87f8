//! Connection supervision: every client connection, in every protocol and
//! over TLS, is bounded in time, and counted.
//!
//! - A connection that has not produced one complete request head within
//!   `limits.header_read_timeout` is closed. This covers a client that
//!   connects and sends nothing (before the proxy even knows HTTP/1 from
//!   HTTP/2), a partial HTTP/2 preface, and silence after a TLS handshake.
//!   A later HTTP/1.1 request head must be complete within the same time
//!   of its first byte (`crate::downstream::h1`).
//! - A connection with no request in flight for `limits.idle_timeout` is
//!   shut down gracefully: an idle HTTP/1 keep-alive connection is closed,
//!   an HTTP/2 connection gets GOAWAY. Keep-alive pings do not count as
//!   activity; requests (until their response body ends) do. If the
//!   client does not complete the graceful close (an HTTP/2 client that
//!   never answers the GOAWAY's PING), the connection is closed after
//!   another idle timeout.
//! - At most `limits.max_connections` client connections are open in the
//!   whole process ([`Capacity`]); more are closed at once and counted.
//! - A drain shuts every connection down gracefully and waits, up to the
//!   drain timeout, for them to finish. Upgraded connections (WebSocket
//!   and other tunnels) are tracked apart, in `ProxyState::tunnels`: a
//!   drain waits for them too, within the same timeout, and cuts the ones
//!   still open when it runs out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

/// How often to check a timeout of `timeout`: a quarter of it, between
/// 10 ms and 1 s, so the check is late by at most that much.
pub fn check_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
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
        if !self.settle(timeout).await {
            tracing::warn!(
                left = self.live.count.load(Ordering::SeqCst),
                "drain timeout reached; closing the remaining connections"
            );
        }
    }

    /// Waits until no connection is left, or `timeout`; true when none is.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let none_left = async {
            loop {
                let notified = self.live.none.notified();
                if self.live.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, none_left).await.is_ok()
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

/// The requests of one HTTP/2 connection, as the supervisor sees them.
pub struct Activity {
    start: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` of the end of the last request in
    /// flight (the others' ends and every start need no time: the
    /// connection is not idle while a request is in flight).
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request head has arrived; it is in flight until the guard drops
    /// (with its response body).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
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
        // Only the last request in flight needs the time: while another
        // is, the connection is not idle, and that one's end stores it.
        if a.in_flight.load(Ordering::SeqCst) == 1 {
            a.last.store(a.now_ms(), Ordering::SeqCst);
        }
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many bytes a client connection has written to its socket, where a
/// write can make progress without saying so: a TLS stream's flush writes
/// records until the socket is full and then says only `Pending`. None
/// where every write says what it took (a plain TCP stream).
pub trait Sent {
    fn sent(&self) -> Option<u64>;
}

impl Sent for tokio::net::TcpStream {
    fn sent(&self) -> Option<u64> {
        None
    }
}

impl<T: Sent> Sent for tokio_rustls::server::TlsStream<T> {
    fn sent(&self) -> Option<u64> {
        self.get_ref().0.sent()
    }
}

/// A client connection that can end with a reset (RST) instead of a close
/// (FIN): what an answer delimited by the connection's end must get when
/// it broke off, since a close would tell the client it had all of it.
pub trait Reset {
    /// Makes the coming drop of the socket a reset (`SO_LINGER` of zero,
    /// which never blocks). Shutting the socket down would still send a
    /// FIN first: the socket is to be dropped, not shut down.
    fn reset_on_close(&self);
}

impl Reset for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        if let Err(e) = self.set_zero_linger() {
            tracing::debug!(error = %e, "cannot set SO_LINGER to reset the connection");
        }
    }
}

impl<T: Reset> Reset for tokio_rustls::server::TlsStream<T> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl<T: Reset> Reset for Counted<T> {
    fn reset_on_close(&self) {
        self.inner.reset_on_close();
    }
}

/// A socket that counts the bytes written to it (see [`Sent`]): what a
/// TLS stream is layered on.
pub struct Counted<T> {
    inner: T,
    sent: u64,
}

impl<T> Counted<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, sent: 0 }
    }
}

impl<T> Counted<T> {
    /// Counts what a write took.
    fn count(&mut self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.sent += n as u64;
        }
        written
    }
}

impl<T> Sent for Counted<T> {
    fn sent(&self) -> Option<u64> {
        Some(self.sent)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client connection with bytes already read from it (the first bytes
/// the proxy looked at to tell HTTP/2 from HTTP/1.1) put back in front.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// When a byte last moved on a connection, in nanoseconds since it began:
/// what [`Watched`] streams note and an idle limit reads.
pub struct LastActivity {
    start: Instant,
    last_ns: AtomicU64,
}

impl LastActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ns: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        // Nanoseconds (a u64 holds 584 years of them), so the limit never
        // fires before `idle` has fully passed.
        let ns = self.start.elapsed().as_nanos() as u64;
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`: one timer, moved on only
    /// when it fires early, whatever the traffic.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream that notes every byte moved either way as activity (the idle
/// limit of a plain TCP connection or of a tunnel after a 101), and counts
/// the bytes written to it when given a counter. Bytes a TLS stream sends
/// while its write or flush still says `Pending` count too (see [`Sent`]).
pub struct Watched<S> {
    io: S,
    activity: Arc<LastActivity>,
    written: Option<prometheus_client::metrics::counter::Counter>,
    /// What [`Sent`] said last.
    sent: u64,
}

impl<S> Watched<S> {
    pub fn new(
        io: S,
        activity: Arc<LastActivity>,
        written: Option<prometheus_client::metrics::counter::Counter>,
    ) -> Self {
        Self {
            io,
            activity,
            written,
            sent: 0,
        }
    }
}

impl<S: Sent> Watched<S> {
    /// Notes bytes that left the socket under the stream, whatever the
    /// write or flush said.
    fn noted<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        if let Some(sent) = self.io.sent()
            && sent != self.sent
        {
            self.sent = sent;
            self.activity.touch();
        }
        polled
    }

    /// Notes what a write took.
    fn wrote(&mut self, polled: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        let polled = self.noted(polled);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            if let Some(written) = &self.written {
                written.inc_by(n as u64);
            }
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Sent + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.noted(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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

/// How far off [`far_off`] is.
pub const FAR_OFF: Duration = Duration::from_secs(365 * 24 * 3600);

/// A sleep far off, for [`until`]: the first deadline moves it.
pub fn far_off() -> tokio::time::Sleep {
    tokio::time::sleep(FAR_OFF)
}

/// Resolves once `at` has passed, on `timer`: a sleep a connection's
/// requests use in turn, one at a time, for their deadlines (from
/// [`far_off`]). It is moved only when it fires before the deadline of the
/// request waiting on it, and deadlines of consecutive requests only
/// grow, so a request costs a comparison, not a timer of its own (which
/// tokio inserts into and removes from its wheel each time); the timer
/// fires about once per timeout, whatever the request rate. (An HTTP/1.1
/// answer's stall limit moves it too, to a deadline of its own, when a
/// write to the client waits: a later deadline here is then found earlier
/// or later, and either is handled.)
pub async fn until(mut timer: Pin<&mut tokio::time::Sleep>, at: tokio::time::Instant) {
    loop {
        if timer.deadline() > at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().await;
        if tokio::time::Instant::now() >= at {
            return;
        }
        timer.as_mut().reset(at);
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

/// Reads more of a connection into `buf`, with room for at least `size`
/// bytes (reserved when less than half of it is spare): `Ready(Ok(0))` at
/// its end. Both HTTP/1.1 readers, the client's and the backend's, fill
/// their buffers through here.
pub(crate) fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    size: usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
    let read = tokio::io::AsyncReadExt::read_buf(io, buf);
    tokio::pin!(read);
    std::future::Future::poll(read, cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection is idle from the end of its last request in flight,
    /// whichever of its requests ends last, and never while one is.
    #[test]
    fn idleness_counts_from_the_end_of_the_last_request_in_flight() {
        for last_begun_ends_last in [true, false] {
            let activity = Activity::new();
            let first = activity.begin();
            let second = activity.begin();
            std::thread::sleep(Duration::from_millis(60));
            let (early, late) = if last_begun_ends_last {
                (first, second)
            } else {
                (second, first)
            };
            drop(early);
            assert_eq!(activity.idle_for(), Duration::ZERO, "one still in flight");
            std::thread::sleep(Duration::from_millis(60));
            assert_eq!(activity.idle_for(), Duration::ZERO, "one still in flight");
            drop(late);
            let idle = activity.idle_for();
            assert!(
                idle < Duration::from_millis(50),
                "idle for {idle:?} just after the last request ended (last begun ends last: {last_begun_ends_last})"
            );
            std::thread::sleep(Duration::from_millis(60));
            assert!(activity.idle_for() >= Duration::from_millis(50));
        }
    }
}
