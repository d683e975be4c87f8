//! Writing an answer to an HTTP/1.1 client, and the tunnel after a 101.
//!
//! A backend's answer keeps its status and fields in their order (less
//! what `crate::answer` leaves out, and what the route's
//! `response_headers` remove or set; the fields it sets and adds follow
//! them), then the proxy's framing: the body's
//! length when it is known, else chunked (an HTTP/1.0 client gets the
//! body until the connection closes); none for 1xx, 204 and 304; a
//! response to HEAD keeps the length a GET would get, once. Then `Date`
//! when the backend sent none, and `Connection: close` when the
//! connection ends after it. Trailers reach clients that asked for them
//! (`TE: trailers`). The body is gathered up to 16 KiB and written
//! whenever the backend has nothing more ready, so a small answer is one
//! write and a large one streams.
//!
//! A client that takes no byte of its answer for the stall limit (the
//! route's `timeouts.idle`; the listener's `limits.idle_timeout` for the
//! proxy's own answers) loses its connection, as nginx's `send_timeout`
//! does: a client that never reads cannot hold a connection and a
//! backend's answer for ever. The backend did its part, so the request
//! counts with the status it sent.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::answer::{Answer, AnswerBody, Local, Passed, ResponseField};
use crate::config::ValidHeaderModifier;
use crate::conn::{Entered, LastActivity, Sent, Watched};
use crate::http1::write;
use crate::metrics::{TunnelEnd, Tunnels};
use crate::routing::Route;
use crate::upstream::ResponseHead;
use crate::upstream::h1::Conn as UpstreamConn;

/// Answer bytes gathered before a write.
const GATHER: usize = 16 * 1024;

/// Why an answer was not written whole.
enum Unwritten {
    /// The client's connection failed (or took no byte for the stall
    /// limit: `TimedOut`).
    Client(std::io::Error),
    /// The answer's body broke off.
    Cut,
}

impl From<std::io::Error> for Unwritten {
    fn from(e: std::io::Error) -> Self {
        Unwritten::Client(e)
    }
}

/// What comes of polling an answer's body.
enum Step {
    /// Nothing ready: write what is gathered.
    Flush,
    Frame(Option<Result<http_body::Frame<bytes::Bytes>, crate::BoxError>>),
}

/// What follows an answer on the connection.
pub(super) enum Next {
    KeepAlive,
    Close,
    /// The answer broke off where only the connection's end delimits it
    /// (no length, not chunked: an HTTP/1.0 client's): the connection is
    /// reset, not closed, so the client cannot take what came for all of
    /// it. A chunked answer shows the cut by its missing last chunk, one
    /// with a length by its short body; those connections close.
    Reset,
    /// The request was upgraded: a tunnel to this backend connection,
    /// closed when no byte moved for the route's `timeouts.tunnel_idle`,
    /// and counted on the route's tunnel counters when it ends.
    Tunnel(Box<UpstreamConn>, Duration, Tunnels),
}

/// How an answer is written.
#[derive(Clone, Copy)]
pub(super) struct Reply {
    pub head_request: bool,
    /// The client's HTTP/1.`minor`.
    pub minor: u8,
    /// The connection closes after the answer.
    pub close: bool,
    /// An HTTP/1.0 client keeps the connection if the answer's length is
    /// known.
    pub keep_alive: bool,
    pub wants_trailers: bool,
}

impl Reply {
    /// The answer to a request the proxy could not read: the connection
    /// closes after it.
    pub fn closing() -> Self {
        Self {
            head_request: false,
            minor: 1,
            close: true,
            keep_alive: false,
            wants_trailers: false,
        }
    }
}

/// Where an answer goes: the client's connection, the buffer it is
/// gathered in, and the informational heads not written yet (they go
/// first).
pub(super) struct Writer<'a, S> {
    pub io: Taking<'a, S>,
    pub out: &'a mut Vec<u8>,
    pub interim: &'a mut Vec<u8>,
}

/// The client's connection as an answer is written to it: a write (or
/// flush) that takes no byte for `stall` fails with `TimedOut`. A byte
/// taken is a write that says so, or one the socket's count shows (a TLS
/// flush, see [`Sent`]). The timer is the connection's (see
/// [`crate::conn::until`]), set only when a write waits (a full socket,
/// or the task's scheduling budget spent), so an answer the client takes
/// at once reads no clock.
pub(super) struct Taking<'a, S> {
    pub io: &'a mut S,
    pub timer: Pin<&'a mut tokio::time::Sleep>,
    pub stall: Duration,
    /// While a write waits: when it fails, and the socket's count then.
    pub waiting: Option<(tokio::time::Instant, Option<u64>)>,
}

impl<S: Sent> Taking<'_, S> {
    /// After a write had to wait: Ready(TimedOut) once it has waited
    /// `stall` without a byte taken.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let sent = self.io.sent();
        let at = match self.waiting {
            Some((at, seen)) if seen == sent => at,
            // The first wait, or bytes went out meanwhile.
            _ => {
                let at = tokio::time::Instant::now() + self.stall;
                self.waiting = Some((at, sent));
                at
            }
        };
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no byte of its answer for {:?}", self.stall),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// What a write or flush came to: Pending is checked against the
    /// stall limit, anything else ends the wait.
    fn took<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Sent + Unpin> AsyncWrite for Taking<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write(cx, buf);
        self.took(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write_vectored(cx, bufs);
        self.took(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut *self.io).poll_flush(cx);
        self.took(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Sent + Unpin> Writer<'_, S> {
    /// Writes `answer`; what follows it on the connection. A backend's
    /// answer gets `route`'s `response_headers`, its `timeouts.idle` as the
    /// stall limit, and its `timeouts.tunnel_idle` for a tunnel.
    pub async fn answer(mut self, answer: Answer, reply: Reply, route: &Route) -> Next {
        match answer {
            Answer::Local(local) => self.local(local, reply).await,
            Answer::Passed(passed) => {
                self.io.stall = route.body_idle_timeout;
                self.passed(passed, reply, route).await
            }
        }
    }

    /// Writes an answer the proxy made itself. Its body is left out when
    /// the request was HEAD (the length stays, as for a GET); dropped
    /// unsent, the body still records its metrics.
    pub async fn local(mut self, local: Local, mut reply: Reply) -> Next {
        reply.close |= local.close;
        let out = self.start_head();
        write::status_line(out, local.status);
        write::field(out, b"content-type", b"text/plain; charset=utf-8");
        if local.allow {
            write::field(out, b"allow", crate::answer::ALLOWED.as_bytes());
        }
        let length = local.body.size_hint().exact().unwrap_or(0);
        write::content_length(out, length);
        end_head(out, false, &reply, true);
        let body = (!reply.head_request).then_some(local.body);
        self.send(body, false, false, &reply).await
    }

    /// Writes a backend's answer (see the module docs); a 101 becomes a
    /// tunnel.
    async fn passed(mut self, passed: Passed, mut reply: Reply, route: &Route) -> Next {
        let modifier = route.response_headers.as_ref();
        let Passed {
            head,
            body,
            set_cookie,
            tunnel,
        } = passed;
        let status = head.status();
        let no_body = reply.head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = match &head {
            ResponseHead::H1(h) => match h.framing.framing {
                crate::http1::framing::Framing::Length(n) => Some(n),
                crate::http1::framing::Framing::Empty => Some(0),
                _ => None,
            },
            ResponseHead::H2(_) => body.size_hint().exact(),
        };
        // An HTTP/1.0 client reads a body of unknown length to the end of
        // the connection.
        let chunked = length.is_none() && reply.minor == 1;
        reply.close |= length.is_none() && reply.minor == 0 && !no_body;
        let out = self.start_head();
        write::status_line(out, status);
        let dated = passed_fields(
            out,
            &head,
            reply.head_request && !no_content(status),
            chunked && reply.wants_trailers && !no_body,
            modifier,
        );
        if let Some(cookie) = set_cookie {
            write::field(out, b"set-cookie", cookie.as_bytes());
        }
        if tunnel.is_some() {
            if let Some(offered) = crate::fields::Fields::first(&head, "upgrade") {
                write::field(out, b"upgrade", offered);
            }
            write::field(out, b"connection", b"upgrade");
        } else if !no_body {
            match length {
                Some(n) => write::content_length(out, n),
                None if chunked => write::field(out, b"transfer-encoding", b"chunked"),
                None => {}
            }
        }
        end_head(out, dated, &reply, length.is_some() || no_body);
        if let Some(upstream) = tunnel {
            drop(body);
            return match self.flush_out().await {
                Ok(()) => Next::Tunnel(upstream, route.tunnel_idle_timeout, route.tunnels.clone()),
                Err(_) => Next::Close,
            };
        }
        let body = (!no_body).then_some(body);
        let until_close = length.is_none() && !chunked;
        self.send(body, chunked, until_close, &reply).await
    }

    /// The answer's buffer, with the informational heads that could not
    /// be written yet in front.
    fn start_head(&mut self) -> &mut Vec<u8> {
        self.out.clear();
        self.out.append(self.interim);
        self.out
    }

    /// Writes the head gathered in `out` and `body` after it; what
    /// follows on the connection. `until_close`: the body is delimited by
    /// the connection's end.
    async fn send(
        mut self,
        body: Option<AnswerBody>,
        chunked: bool,
        until_close: bool,
        reply: &Reply,
    ) -> Next {
        let written = match body {
            Some(body) => self.write_body(body, chunked, reply.wants_trailers).await,
            None => self.flush_out().await.map_err(Unwritten::Client),
        };
        match written {
            Ok(()) if !reply.close => Next::KeepAlive,
            Ok(()) => Next::Close,
            Err(Unwritten::Cut) if until_close => Next::Reset,
            Err(Unwritten::Cut) => Next::Close,
            Err(Unwritten::Client(e)) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    tracing::debug!(error = %e, "closing the connection");
                }
                Next::Close
            }
        }
    }

    async fn flush_out(&mut self) -> std::io::Result<()> {
        self.io.write_all(self.out).await?;
        self.out.clear();
        self.io.flush().await
    }

    /// Writes the head gathered in `out` and `body` after it, chunked or
    /// not; what is gathered is written whenever the body has nothing
    /// ready. Err: the client is gone or the body broke off (the
    /// connection is then closed).
    async fn write_body(
        &mut self,
        mut body: AnswerBody,
        chunked: bool,
        wants_trailers: bool,
    ) -> Result<(), Unwritten> {
        let (io, out) = (&mut self.io, &mut *self.out);
        let mut ended = false;
        loop {
            let step = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
            })
            .await;
            let frame = match step {
                Step::Flush => {
                    io.write_all(out).await?;
                    out.clear();
                    io.flush().await?;
                    continue;
                }
                Step::Frame(None) => break,
                Step::Frame(Some(Err(_))) => {
                    // What came is sent; the cut shows as the connection's
                    // end (see `Next::Reset`).
                    let _ = io.write_all(out).await;
                    let _ = io.flush().await;
                    return Err(Unwritten::Cut);
                }
                Step::Frame(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if chunked {
                        let trailers = frame.trailers_ref().filter(|_| wants_trailers);
                        write::last_chunk(out, trailers);
                        ended = true;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                write::chunk_size_line(out, data.len());
            }
            if out.len() + data.len() <= GATHER {
                out.extend_from_slice(&data);
            } else {
                let mut both = (&out[..]).chain(data);
                io.write_all_buf(&mut both).await?;
                out.clear();
            }
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        if chunked && !ended {
            write::last_chunk(out, None);
        }
        io.write_all(out).await?;
        out.clear();
        Ok(io.flush().await?)
    }
}

fn no_content(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Writes a backend's fields the client gets, changed by the route's
/// `response_headers` (`modifier`: the fields it removes or sets are
/// dropped, its own follow); `pass_length`: the length it declared goes
/// on (once: a response to HEAD). Whether it had `Date`.
fn passed_fields(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    pass_length: bool,
    trailers: bool,
    modifier: Option<&ValidHeaderModifier>,
) -> bool {
    let mut length = pass_length.then(|| head.declared_length()).flatten();
    let mut dated = false;
    crate::answer::each_passed_field(head, head.has_connection(), &mut |kind, name, value| {
        if modifier.is_some_and(|m| m.drops(name)) {
            return;
        }
        match kind {
            ResponseField::ContentLength => {
                if let Some(n) = length.take() {
                    write::field(out, name, write::itoa(n, &mut [0; 20]));
                }
            }
            ResponseField::Date => {
                dated = true;
                write::field(out, name, value);
            }
            ResponseField::HopByHop => {}
            // `Trailer` announces trailers: none come to this client.
            ResponseField::Other if !trailers && name.eq_ignore_ascii_case(b"trailer") => {}
            ResponseField::Other => write::field(out, name, value),
        }
    });
    for (name, value) in modifier.into_iter().flat_map(|m| m.written()) {
        dated |= *name == http::header::DATE;
        write::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    dated
}

/// `Date` (unless `dated`), the connection's fate, and the blank line.
/// `framed`: the answer's end can be told without closing.
fn end_head(out: &mut Vec<u8>, dated: bool, reply: &Reply, framed: bool) {
    if !dated {
        write::date_field(out);
    }
    if reply.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if reply.minor == 0 && reply.keep_alive && framed {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies bytes both ways between an upgraded client connection and its
/// backend until either closes, no byte moved either way for `idle` (then
/// both sides are closed), or the drain cuts it (with `held`): first what
/// each side sent past the 101 (`client_rest`, and what the backend
/// connection had buffered). How it ended is counted on `ended`; a tunnel
/// the drain cuts is not counted (the process is ending).
pub(super) async fn tunnel<S>(
    client: S,
    client_rest: BytesMut,
    upstream: Box<UpstreamConn>,
    idle: Duration,
    ended: Tunnels,
    _held: Entered,
) where
    S: AsyncRead + AsyncWrite + Sent + Unpin,
{
    let (upstream, upstream_rest) = (*upstream).into_parts();
    let activity = LastActivity::new();
    let mut client = Watched::new(client, activity.clone(), None);
    let mut upstream = Watched::new(upstream, activity.clone(), None);
    let started = async {
        upstream.write_all(&client_rest).await?;
        client.write_all(&upstream_rest).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    tokio::select! {
        // The copy first: bytes already waiting count before the limit.
        biased;
        copied = started => match copied {
            Ok(_) => ended.record(TunnelEnd::Closed),
            Err(e) => {
                tracing::debug!(error = %e, "upgraded tunnel closed with an error");
                ended.record(TunnelEnd::Error);
            }
        },
        () = activity.idle_for(idle) => {
            tracing::debug!(?idle, "upgraded tunnel idle; closing both sides");
            ended.record(TunnelEnd::IdleTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    /// A socket that never says it took anything (every write and flush
    /// waits, as a TLS flush does), while its count of bytes sent moves
    /// as long as `trickle` adds to it.
    #[derive(Default)]
    struct Trickle {
        sent: Arc<AtomicU64>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Trickle {
        /// 12 times 50 ms of bytes going out (600 ms), then none.
        fn trickle(&self) -> tokio::task::JoinHandle<()> {
            let (sent, waker) = (self.sent.clone(), self.waker.clone());
            tokio::spawn(async move {
                for _ in 0..12 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    sent.fetch_add(100, Ordering::SeqCst);
                    if let Some(w) = waker.lock().unwrap().take() {
                        w.wake();
                    }
                }
            })
        }
    }

    impl Sent for Trickle {
        fn sent(&self) -> Option<u64> {
            Some(self.sent.load(Ordering::SeqCst))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Bytes that leave through the socket while a flush waits restart
    /// the stall limit; once they stop, the flush fails after it.
    #[tokio::test]
    async fn progress_the_socket_counts_restarts_the_stall_limit() {
        let mut socket = Trickle::default();
        let trickle = socket.trickle();
        let mut timer = Box::pin(crate::conn::far_off());
        let mut taking = Taking {
            io: &mut socket,
            timer: timer.as_mut(),
            stall: Duration::from_millis(200),
            waiting: None,
        };
        let start = std::time::Instant::now();
        let flushed = taking.flush().await;
        let waited = start.elapsed();
        trickle.await.unwrap();
        let error = flushed.expect_err("a socket that stopped taking bytes");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        // Not before the bytes stopped (600 ms), and about 200 ms after.
        assert!(
            waited >= Duration::from_millis(700),
            "cut after {waited:?}, while bytes still went out"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    /// A tunnel's idle limit counts the same progress: bytes that leave
    /// through the socket while a flush waits are activity.
    #[tokio::test]
    async fn progress_the_socket_counts_keeps_a_tunnel_from_idling() {
        let socket = Trickle::default();
        let trickle = socket.trickle();
        let activity = LastActivity::new();
        let mut watched = Watched::new(socket, activity.clone(), None);
        let start = std::time::Instant::now();
        tokio::select! {
            _ = watched.flush() => panic!("the socket never takes a flush"),
            () = activity.idle_for(Duration::from_millis(200)) => {}
        }
        let waited = start.elapsed();
        trickle.await.unwrap();
        assert!(
            waited >= Duration::from_millis(700),
            "idle after {waited:?}, while bytes still went out"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
