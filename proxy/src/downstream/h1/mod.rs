//! Every HTTP/1.1 (and 1.0) client connection, plain or TLS, served by the
//! proxy's own codec (`crate::http1`) in the connection's own task: the
//! request head is read (phase 2), the shared phases run on it (route,
//! forward, answer, record), and the answer is written back, its body
//! streamed as it comes ([`write`]).
//!
//! - **Heads.** A head must be complete within `limits.header_read_timeout`
//!   of the connection's start (the first) or of its first byte (later
//!   ones), and fit `limits.max_header_bytes` and 128 fields (else 431;
//!   414 when the request line alone does not fit). A
//!   malformed head (the rules are `crate::http1`'s) is answered 400, and
//!   a request framed ambiguously 400 (501 for a transfer coding the proxy
//!   does not decode); the connection then closes and nothing reaches a
//!   backend.
//! - **Bodies** are read as the forward phase asks for them, by their
//!   length or chunked (trailers passed on). A client that sent `Expect:
//!   100-continue` gets `100 Continue` when the proxy first reads its body
//!   (after routing), and a request refused before that closes the
//!   connection instead.
//! - **Keep-alive.** The connection carries another request unless the
//!   client asked to close (`Connection: close`, or HTTP/1.0 without
//!   `keep-alive`), a drain runs, the answer's length could not be told to
//!   an HTTP/1.0 client, the request body was not read to its end (an
//!   early answer, a client fault), or the answer broke off. A connection
//!   idle between requests for `limits.idle_timeout` is closed, and so is
//!   an idle one when a drain starts.
//! - **Lingering close.** A connection closed with the request body not
//!   read to its end (an early answer, a refusal) is half-closed after the
//!   answer, and what the client still sends is read and thrown away until
//!   it closes its side, for at most [`LINGER`] (nginx's
//!   `lingering_close`): closing a socket with unread bytes makes the
//!   kernel reset the connection, and a client still sending its body
//!   would lose the end of the answer it had not read yet.
//! - **Pipelining and half-close.** Pipelined requests are answered in
//!   order. A client that closes its connection while its request waits is
//!   counted as 499 on the backend it waited for; but an end of input after
//!   pipelined requests (more were buffered, or this one came before the
//!   previous answer) is a half-close: every request already read is
//!   answered, then the connection closes.
//! - **Upgrades.** A request that asks to upgrade (WebSocket; never `h2c`,
//!   which would let a backend speak HTTP/2 past the routing) and gets a
//!   101 for a protocol it offered becomes a tunnel: bytes are copied both
//!   ways until either side closes, or no byte moved either way for the
//!   route's `timeouts.tunnel_idle` (then both sides are closed). Tunnels
//!   count as open connections and get the drain timeout.
//! - **Informational answers** (103 Early Hints) reach HTTP/1.1 clients as
//!   they come, ahead of the final one; HTTP/1.0 clients may not get them
//!   (RFC 9110 §15.2).

mod inbound;
mod write;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::ProxyState;
use crate::body::UpstreamBody;
use crate::conn::{ConnLimits, Entered};
use crate::fields::Fields;
use crate::forward::{Client, Exchange, Outcome};
use crate::http1::framing::Framing;
use crate::http1::head::{FieldsOf, HeadError, RequestLine, Span};
use crate::route::{BodyKind, ClientRequest, Routed, Summary, Target};
use inbound::{BODY_READ_SIZE, Inbound, READ_SIZE};
use write::{Next, Reply, Writer};

/// Serves one client connection (plain or TLS) whose first bytes,
/// `prefix`, were read already, until it closes, a time limit, or a drain.
pub async fn serve<S>(
    io: S,
    prefix: BytesMut,
    client: Client,
    state: Arc<ProxyState>,
    entered: Entered,
    limits: ConnLimits,
    opened: Instant,
) where
    S: AsyncRead + AsyncWrite + crate::conn::Sent + crate::conn::Reset + Unpin + Send + 'static,
{
    let max_head = state.store.peek().valid.max_header_bytes;
    let mut conn = Conn {
        inbound: Mutex::new(Inbound {
            io,
            buf: prefix,
            read_closed: false,
            interim: Vec::new(),
        }),
        unread_body: false,
        read_size: READ_SIZE,
        out: Vec::new(),
        head_bytes: Vec::new(),
        head_spans: Vec::new(),
        timer: Box::pin(crate::conn::far_off()),
        stall: limits.idle_timeout,
        client,
        max_head,
    };
    match conn.run(&state, &entered, limits, opened).await {
        Next::Close => {
            let inbound = conn.inbound.get_mut().expect("inbound lock");
            // Bounded: a TLS close_notify waits on a client that reads.
            let _ = tokio::time::timeout(LINGER, inbound.io.shutdown()).await;
            if conn.unread_body && !inbound.read_closed {
                linger(&mut inbound.io).await;
            }
        }
        Next::Reset => {
            // Dropped at the end of this function, not shut down: a
            // shutdown would send a FIN before the reset.
            let inbound = conn.inbound.get_mut().expect("inbound lock");
            crate::conn::Reset::reset_on_close(&inbound.io);
        }
        Next::Tunnel(upstream, idle, ended) => {
            // The tunnel still holds the client's connection: it counts as
            // open and a drain waits for it.
            drop(entered);
            let held = state.tunnels.enter(Some(state.capacity.carry_on()));
            let inbound = conn.inbound.into_inner().expect("inbound lock");
            write::tunnel(inbound.io, inbound.buf, upstream, idle, ended, held).await;
        }
        Next::KeepAlive => {}
    }
}

/// How long a closing connection reads and throws away what its client
/// still sends (see the module docs).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and throws away what the client sends until it closes its side,
/// fails, or [`LINGER`] has passed.
async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = io.read(&mut sink).await {}
    })
    .await;
}

struct Conn<S> {
    inbound: Mutex<Inbound<S>>,
    /// The connection closes with a request body not read to its end.
    unread_body: bool,
    /// Bytes asked per head read ([`BODY_READ_SIZE`] once a request had a
    /// body).
    read_size: usize,
    /// The answer being written.
    out: Vec<u8>,
    /// The request head's bytes and where its fields lie (reused).
    head_bytes: Vec<u8>,
    head_spans: Vec<Span>,
    /// The request timeout's timer (see [`crate::conn::until`]), and the
    /// answers' stall limit's.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// How long a client may take no byte of the proxy's own answer
    /// (`limits.idle_timeout`; see `write`).
    stall: std::time::Duration,
    client: Client,
    max_head: usize,
}

/// A request head read from the connection.
struct Head {
    line: RequestLine,
    /// A copy of the head (the connection's buffer, reused).
    bytes: Vec<u8>,
    spans: Vec<Span>,
    /// When its first byte came (the request's start).
    start: Instant,
    /// It came before the previous answer went out.
    pipelined: bool,
}

/// What the request's fields say about its connection and its answer.
struct Facts<'a> {
    /// The client asked to close after this answer.
    close: bool,
    /// An HTTP/1.0 client asked to keep the connection.
    keep_alive: bool,
    expect_continue: bool,
    /// The protocols an upgrade offers (HTTP/1.1, `Connection: upgrade`,
    /// no `h2c`).
    upgrade: Option<&'a [u8]>,
    wants_trailers: bool,
}

impl<'a> Facts<'a> {
    fn of(fields: &'a FieldsOf<'a>, summary: &Summary<'a>, minor: u8) -> Self {
        let (mut close, mut keep_alive, mut upgrade_token) = (false, false, false);
        summary.each_connection(fields, &mut |value| {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        });
        // An upgrade offering h2c is not passed on: a backend that took it
        // would speak HTTP/2 with the client through the tunnel, past the
        // routing. Nor is one offered in several Upgrade lines (a list the
        // proxy would have to join to check and pass on whole; a proxy may
        // decline any upgrade, RFC 9110 §7.8). The request goes on as a
        // plain one.
        let upgrade = summary.upgrade.filter(|offer| {
            minor == 1
                && upgrade_token
                && summary.upgrades == 1
                && !crate::fields::has_token(offer, "h2c")
        });
        Self {
            close: close || (minor == 0 && !keep_alive),
            keep_alive: minor == 0 && keep_alive,
            expect_continue: minor == 1 && summary.expect_continue,
            upgrade,
            wants_trailers: summary.trailers,
        }
    }
}

/// What reading a request head came to.
enum Read {
    Head(Head),
    /// The connection is to close (the client closed it, a time limit, or
    /// a drain while idle).
    Closed,
    /// Not a head the proxy reads: answered with this status, then closed.
    Refused(StatusCode, &'static str),
}

impl<S: AsyncRead + AsyncWrite + crate::conn::Sent + Unpin + Send> Conn<S> {
    /// Where this connection's answers are written.
    fn writer(&mut self) -> Writer<'_, S> {
        let inbound = self.inbound.get_mut().expect("inbound lock");
        Writer {
            io: write::Taking {
                io: &mut inbound.io,
                timer: self.timer.as_mut(),
                stall: self.stall,
                waiting: None,
            },
            out: &mut self.out,
            interim: &mut inbound.interim,
        }
    }

    async fn run(
        &mut self,
        state: &ProxyState,
        entered: &Entered,
        limits: ConnLimits,
        opened: Instant,
    ) -> Next {
        let mut drain_signal = entered.drain_signal();
        let drain = drain_signal.wait_for(|d| *d);
        tokio::pin!(drain);
        let mut served = 0u64;
        loop {
            // Bytes already here came before the last answer went out.
            let pipelined =
                served > 0 && !self.inbound.get_mut().expect("inbound lock").buf.is_empty();
            let head = match self
                .read_head(served == 0, opened, limits, drain.as_mut())
                .await
            {
                Read::Head(head) => Head { pipelined, ..head },
                Read::Closed => return Next::Close,
                Read::Refused(status, why) => return self.refuse(state, status, why).await,
            };
            let next = self.serve_one(state, entered, &head).await;
            self.head_bytes = head.bytes;
            self.head_spans = head.spans;
            match next {
                Next::KeepAlive => {
                    served += 1;
                    self.trim();
                }
                other => return other,
            }
        }
    }

    /// Answers a request that could not be read as one (its head or its
    /// framing) and closes the connection; counted in
    /// `sluice_refused_requests_total`.
    async fn refuse(&mut self, state: &ProxyState, status: StatusCode, why: &str) -> Next {
        state.store.metrics().record_refused(status.as_u16());
        let local = crate::answer::unreadable(status, why);
        self.writer().local(local, Reply::closing()).await
    }

    /// Lets go of buffer room a large exchange left, so an idle
    /// keep-alive connection holds little memory.
    fn trim(&mut self) {
        const KEEP: usize = 2 * READ_SIZE;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        let inbound = self.inbound.get_mut().expect("inbound lock");
        if inbound.buf.is_empty() && inbound.buf.capacity() > 2 * BODY_READ_SIZE {
            inbound.buf = BytesMut::new();
        }
    }

    /// Reads until a complete request head is buffered (see the module
    /// docs for its time limits).
    async fn read_head(
        &mut self,
        first: bool,
        opened: Instant,
        limits: ConnLimits,
        mut drain: Pin<&mut impl Future>,
    ) -> Read {
        let read_size = self.read_size;
        let inbound = self.inbound.get_mut().expect("inbound lock");
        let mut head_started = (!inbound.buf.is_empty()).then(Instant::now);
        let mut spans = std::mem::take(&mut self.head_spans);
        loop {
            if !inbound.buf.is_empty() {
                match crate::http1::head::parse_request(&inbound.buf, self.max_head, &mut spans) {
                    Ok(Some(line)) => {
                        // Copied out: the buffer stays one piece, and the
                        // body reader may append to it meanwhile.
                        let mut bytes = std::mem::take(&mut self.head_bytes);
                        bytes.clear();
                        bytes.extend_from_slice(&inbound.buf[..line.len]);
                        inbound.buf.advance(line.len);
                        let start = head_started.unwrap_or_else(Instant::now);
                        return Read::Head(Head {
                            line,
                            bytes,
                            spans,
                            start,
                            pipelined: false,
                        });
                    }
                    Ok(None) => {}
                    // The request line alone over the limit is the
                    // target's fault (RFC 9112 §3: 414), as nginx has it.
                    Err(HeadError::TooLarge)
                        if !inbound.buf[..inbound.buf.len().min(self.max_head)]
                            .contains(&b'\n') =>
                    {
                        return Read::Refused(
                            StatusCode::URI_TOO_LONG,
                            "the request line is longer than limits.max_header_bytes",
                        );
                    }
                    Err(HeadError::TooLarge) => {
                        return Read::Refused(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "the request head is larger than limits.max_header_bytes or has more than 128 fields",
                        );
                    }
                    Err(HeadError::Malformed(why)) => {
                        return Read::Refused(StatusCode::BAD_REQUEST, why);
                    }
                    Err(HeadError::Version) => {
                        return Read::Refused(
                            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                            "HTTP/1.x is served here (and HTTP/2: with ALPN `h2` over TLS, with its preface over plain TCP), not this request line's major version",
                        );
                    }
                }
            }
            if inbound.read_closed {
                // A half-closed client sends no more: what is left (if
                // anything) is no request.
                return Read::Closed;
            }
            let deadline = match head_started {
                Some(start) => start + limits.header_read_timeout,
                None if first => opened + limits.header_read_timeout,
                None => Instant::now() + limits.idle_timeout,
            };
            let idle = inbound.buf.is_empty();
            if idle && inbound.buf.capacity() < read_size {
                // The whole room for the head, not what a request before
                // left of it (an empty buffer takes it back in place).
                inbound.buf.reserve(read_size);
            }
            let read = std::future::poll_fn(|cx| {
                crate::conn::poll_fill(&mut inbound.io, &mut inbound.buf, read_size, cx)
            });
            tokio::select! {
                biased;
                read = read => match read {
                    Ok(0) | Err(_) => return Read::Closed,
                    Ok(_) => {
                        head_started.get_or_insert_with(Instant::now);
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    tracing::debug!(partial = !idle, "no complete request head in time; closing");
                    return Read::Closed;
                }
                _ = drain.as_mut(), if idle => return Read::Closed,
            }
        }
    }

    /// Serves one request: the phases, then the answer.
    async fn serve_one(&mut self, state: &ProxyState, entered: &Entered, head: &Head) -> Next {
        let line = &head.line;
        let fields = FieldsOf::new(&head.bytes, &head.spans);
        let summary = Summary::of(&fields);
        let facts = Facts::of(&fields, &summary, line.minor);
        let mut reply = Reply {
            head_request: line.method == Method::HEAD,
            minor: line.minor,
            close: facts.close,
            keep_alive: facts.keep_alive,
            wants_trailers: facts.wants_trailers,
        };
        let framing = match crate::http1::framing::request(&fields, line.minor) {
            Ok(framing) => framing,
            Err(refused) => return self.refuse(state, refused.status, refused.reason).await,
        };
        // Checked to be visible ASCII by the parser.
        let target = std::str::from_utf8(&head.bytes[line.target.0..line.target.1]).unwrap_or("");
        let req = ClientRequest {
            method: &line.method,
            version: if line.minor == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            target: Target::parse(target),
            fields: &fields,
            summary,
            body: match framing {
                Framing::Length(n) => BodyKind::Length(n),
                Framing::Chunked => BodyKind::Streamed,
                Framing::Empty | Framing::UntilClose => BodyKind::None,
            },
            upgrade: facts.upgrade,
        };
        // A body not read cannot be told from a next request.
        let unread_body = framing != Framing::Empty;
        if unread_body {
            self.read_size = BODY_READ_SIZE;
        }
        if let Err(refusal) = state.check(&req) {
            self.unread_body = unread_body;
            // What follows a CONNECT's head may be the tunnel the client
            // hoped for (a TLS hello, a request for the far host), which
            // must never be read as a request to this proxy's backends.
            reply.close |= unread_body
                || refusal.status == StatusCode::BAD_REQUEST
                || *req.method == Method::CONNECT;
            return self
                .writer()
                .local(crate::answer::refused(refusal), reply)
                .await;
        }
        let secure = state.scheme == "https";
        let routed =
            match crate::route::route(&state.store, state.listener, &req, secure, head.start) {
                Ok(routed) => routed,
                Err(refusal) => {
                    self.unread_body = unread_body;
                    reply.close |= unread_body;
                    return self
                        .writer()
                        .local(crate::answer::refused(refusal), reply)
                        .await;
                }
            };
        let (outcome, body_read) = self
            .exchange(
                &routed,
                &req,
                framing,
                facts.expect_continue,
                head.pipelined,
            )
            .await;
        let Some(answer) = crate::answer::answer(outcome, &routed, req.upgrade) else {
            // The client is gone (counted as such).
            return Next::Close;
        };
        self.unread_body = !body_read;
        // Draining (from SIGTERM on, through `--drain-delay`): each answer
        // closes its connection, so clients move to new ones, which the
        // load balancer sends elsewhere, before the listeners close.
        reply.close |= !body_read || entered.is_draining() || state.is_draining();
        self.writer().answer(answer, reply, &routed.route).await
    }

    /// The forward phase for one request, the client's connection lent to
    /// it (its body, a watch for a client gone, informational heads);
    /// whether the request body was read to its end.
    async fn exchange(
        &mut self,
        routed: &Routed,
        req: &ClientRequest<'_>,
        framing: Framing,
        expect_continue: bool,
        pipelined: bool,
    ) -> (Outcome, bool) {
        let inbound = &self.inbound;
        let mut reader = inbound::BodyReader::new(inbound, framing, expect_continue);
        let (body, progress) = UpstreamBody::client(&mut reader, routed.route.max_body);
        let http11 = req.version == Version::HTTP_11;
        let mut interim = |status: StatusCode, fields: &dyn Fields| {
            if http11 {
                inbound::interim(inbound, status, fields);
            }
        };
        let gone = inbound::gone(inbound, &progress, self.max_head, pipelined);
        tokio::pin!(gone);
        let exchange = Exchange {
            routed,
            req,
            client: &self.client,
            body,
            progress: progress.clone(),
            interim: &mut interim,
            timer: self.timer.as_mut(),
        };
        let outcome = crate::forward::forward(exchange, gone).await;
        (outcome, progress.is_sent())
    }
}
