//! Sluice's own HTTP/1.1 client: every request to an HTTP/1.1 backend,
//! plain or TLS, with a body or without, and protocol upgrades.
//!
//! The exchange runs in the request's own task: the head is written
//! (gathered with the first bytes of the body), the body streamed as it
//! comes (by its own length, or chunked with its trailers), and the
//! response head read at the same time, so a backend that answers before
//! it has read the whole body (a 413, an early 200 to a client that waits
//! for the answer before it sends) is heard at once; the rest of that
//! body is then not sent and the connection is not reused. The response
//! body is read from the socket as the client side polls it. There is no
//! connection task, no channel and no hand-off per request.
//!
//! Response heads and bodies are read by [`crate::http1`]: a malformed or
//! ambiguous head is a protocol error (502) and the connection is
//! dropped. Informational responses (1xx but 101) are handed to the
//! caller's `interim` as they come (100 is dropped: the proxy answers
//! `Expect` itself), at most [`MAX_INFORMATIONAL`] of them: more is a
//! protocol error, so no backend has the proxy relay heads without end. A
//! 101 ends the exchange and hands the connection over (a tunnel) when the
//! request asked to upgrade, and is an error otherwise.
//!
//! A connection is reused only after an HTTP/1.1 response whose body had
//! a length or was chunked, without `Connection: close`, after the whole
//! request went out, and with nothing left unread behind the response.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::UpstreamIo;
use crate::BoxError;
use crate::body::UpstreamBody;
use crate::conn::poll_fill;
use crate::fields::Fields;
use crate::http1::framing::{Decoded, Decoder, Framing, ResponseFraming};
use crate::http1::head::{FieldsOf, HeadError, Span, StatusLine, parse_response};
use crate::reuse::Reused;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8192;
/// Bytes asked per read while a long body streams.
const LARGE_READ: usize = 64 * 1024;
/// Request bytes gathered before a write; a larger data frame is written
/// on its own, not copied.
const GATHER: usize = 16 * 1024;
/// Informational heads a response may have before its final one (RFC
/// 9110 sets no limit; a backend sends one or two 103s in practice).
pub const MAX_INFORMATIONAL: usize = 16;
/// A read buffer larger than this is let go of when its connection goes
/// back to the pool.
const KEEP: usize = 16 * 1024;

/// A connection to an HTTP/1.1 backend and its buffers.
pub struct Conn {
    io: UpstreamIo,
    buf: BytesMut,
    spans: Vec<Span>,
    /// Request bytes waiting to be written.
    out: Vec<u8>,
}

/// Why an exchange failed before a response head.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request was written: it never reached the backend.
    Unwritten(std::io::Error),
    /// The connection closed (or was reset) after the request went out and
    /// before any byte of a response: the stale keep-alive race on a
    /// reused connection.
    ClosedUnanswered(std::io::Error),
    /// The request body failed (the client broke it, or it grew past its
    /// limit): the exchange is abandoned.
    Body(BoxError),
    /// Anything else: a malformed response, an I/O error part-way.
    Protocol(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unwritten(e) => write!(f, "the request could not be written: {e}"),
            SendError::ClosedUnanswered(e) => {
                write!(f, "the connection closed before a response: {e}")
            }
            SendError::Body(e) => write!(f, "the request body failed: {e}"),
            SendError::Protocol(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

fn protocol(message: impl Into<String>) -> SendError {
    SendError::Protocol(message.into().into())
}

/// Where informational (1xx) responses go as they come.
pub type Interim<'a> = dyn FnMut(StatusCode, &dyn Fields) + Send + 'a;

/// A response head as read: its status, its bytes (status line, fields,
/// blank line), where its fields lie, and how its body is framed.
pub struct ResponseHead {
    pub status: StatusCode,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// A copy of the head (from this thread's shelf: see `crate::reuse`).
    pub bytes: Reused<Vec<u8>>,
    pub spans: Reused<Vec<Span>>,
    pub framing: ResponseFraming,
    /// It has a `Connection` field (whose named fields are not passed on).
    pub connection: bool,
    /// Its `content-type` is gRPC's.
    pub grpc: bool,
    /// Its `content-type` is gRPC-Web's.
    pub grpc_web: bool,
}

impl ResponseHead {
    pub fn fields(&self) -> FieldsOf<'_> {
        FieldsOf::new(&self.bytes, &self.spans)
    }
}

/// What follows a response head.
pub enum Answered {
    /// The body, read from the connection as it is polled.
    Body(Body1),
    /// A 101 to an upgrade: the connection, to tunnel.
    Upgraded(Box<Conn>),
}

/// A response head and what follows it.
pub struct Exchanged {
    pub head: ResponseHead,
    pub answered: Answered,
}

/// The request's body as the exchange writes it.
pub struct Outgoing<'s, 'b> {
    pub body: &'s mut UpstreamBody<'b>,
    /// Chunked on the wire (the head says so); else by its length.
    pub chunked: bool,
}

/// Where the request's bytes are.
struct Sending<'s, 'b> {
    /// The body still to read; None once it has ended (or there is none).
    body: Option<Outgoing<'s, 'b>>,
    /// A large data frame to write after `Conn::out`, and whether CRLF
    /// (the chunk's end) follows it.
    big: Option<(Bytes, bool)>,
    wrote_any: bool,
    /// Set with the first byte written (the request's flag: see
    /// `super::Request::written`).
    written: &'s AtomicBool,
    flushed: bool,
    /// Writing failed: the backend may still have answered (it closes
    /// after an early answer), so the response is read first.
    write_failed: Option<std::io::Error>,
    /// A byte of a response came.
    answered: bool,
    /// Informational heads read so far.
    informational: usize,
}

impl Sending<'_, '_> {
    fn all_written(&self, out: &[u8]) -> bool {
        self.body.is_none() && self.big.is_none() && out.is_empty()
    }
}

impl Conn {
    /// A connection, boxed once for its life (it moves between the pool
    /// and response bodies).
    pub fn new(io: UpstreamIo) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            spans: Vec::new(),
            out: Vec::new(),
        })
    }

    /// The connection and what was read past the 101 (the tunnel's first
    /// bytes from the backend).
    pub fn into_parts(self) -> (UpstreamIo, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether an idle connection is still usable: the backend has neither
    /// closed it nor sent anything unasked. Costs no system call unless
    /// the socket had an event since the last read (a TLS session ticket
    /// is read and kept by the TLS layer).
    pub fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Lets go of a large read buffer before the connection idles.
    fn trim(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
    }

    /// Writes the request `head` and the body (if any) and reads the
    /// response head (informational ones to `interim`), at the same time
    /// (see the module docs). `upgrade`: the request asked to upgrade, and
    /// a 101 hands the connection over.
    pub async fn exchange(
        mut self: Box<Self>,
        head: &[u8],
        body: Option<Outgoing<'_, '_>>,
        head_request: bool,
        upgrade: bool,
        interim: &mut Interim<'_>,
        written: &AtomicBool,
    ) -> Result<Exchanged, SendError> {
        self.out.clear();
        self.out.extend_from_slice(head);
        // A body that has already ended (read ahead whole, or empty) is
        // not polled again; a chunked one still owes its last chunk, or
        // the backend would wait for the rest of a request that is whole.
        let body = match body {
            Some(done) if done.body.is_end_stream() => {
                if done.chunked {
                    crate::http1::write::last_chunk(&mut self.out, None);
                }
                None
            }
            body => body,
        };
        let mut sending = Sending {
            body,
            big: None,
            wrote_any: false,
            written,
            flushed: false,
            write_failed: None,
            answered: false,
            informational: 0,
        };
        let line =
            std::future::poll_fn(|cx| self.poll_exchange(cx, &mut sending, upgrade, interim))
                .await?;
        let request_sent = sending.all_written(&self.out) && sending.write_failed.is_none();
        drop(sending);
        // The head is copied out, so the read buffer stays one piece.
        let mut bytes: Reused<Vec<u8>> = Reused::take();
        bytes.extend_from_slice(&self.buf[..line.len]);
        self.buf.advance(line.len);
        let mut spans: Reused<Vec<Span>> = Reused::take();
        std::mem::swap(&mut self.spans, &mut *spans);
        let fields = FieldsOf::new(&bytes, &spans);
        if line.status == StatusCode::SWITCHING_PROTOCOLS {
            let framing = ResponseFraming {
                framing: Framing::Empty,
                declared: None,
            };
            let head = ResponseHead {
                status: line.status,
                minor: line.minor,
                bytes,
                spans,
                framing,
                connection: true,
                grpc: false,
                grpc_web: false,
            };
            return Ok(Exchanged {
                head,
                answered: Answered::Upgraded(self),
            });
        }
        // One pass over the fields for everything read of them here.
        let mut read = crate::fields::FramingFields::default();
        let (mut connection, mut close) = (false, false);
        let (mut grpc, mut grpc_web) = (false, false);
        for (name, value) in fields.iter() {
            if read.push(name, value) {
                continue;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                connection = true;
                close |= crate::fields::has_token(value, "close");
            } else if name.eq_ignore_ascii_case(b"content-type") {
                grpc = crate::grpc::is_grpc_content_type(value);
                grpc_web = crate::grpc::is_grpc_web_content_type(value);
            }
        }
        let framing =
            crate::http1::framing::response_of(&read, line.status, head_request, line.minor)
                .map_err(protocol)?;
        let reusable =
            line.minor == 1 && request_sent && framing.framing != Framing::UntilClose && !close;
        let body = Body1::new(self, framing.framing, reusable);
        Ok(Exchanged {
            head: ResponseHead {
                status: line.status,
                minor: line.minor,
                bytes,
                spans,
                framing,
                connection,
                grpc,
                grpc_web,
            },
            answered: Answered::Body(body),
        })
    }

    /// Drives the writing of the request and the reading of the response
    /// head, until a final (or 101) head is complete.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        sending: &mut Sending<'_, '_>,
        upgrade: bool,
        interim: &mut Interim<'_>,
    ) -> Poll<Result<StatusLine, SendError>> {
        loop {
            let mut progressed = false;
            if sending.write_failed.is_none() {
                progressed |= self.fill(cx, sending)?;
                progressed |= self.poll_write_out(cx, sending);
            }
            match poll_fill(&mut self.io, &mut self.buf, READ_SIZE, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(closed(sending, None))),
                Poll::Ready(Ok(_)) => {
                    sending.answered = true;
                    progressed = true;
                    if let Some(line) =
                        self.parse_head(upgrade, interim, &mut sending.informational)?
                    {
                        return Poll::Ready(Ok(line));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(closed(sending, Some(e)))),
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Moves ready body frames into `out` (or `big`); whether any came.
    fn fill(
        &mut self,
        cx: &mut Context<'_>,
        sending: &mut Sending<'_, '_>,
    ) -> Result<bool, SendError> {
        let mut progressed = false;
        while sending.big.is_none() && self.out.len() < GATHER {
            let Some(outgoing) = sending.body.as_mut() else {
                break;
            };
            let chunked = outgoing.chunked;
            let frame = match Pin::new(&mut *outgoing.body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Err(e))) => return Err(SendError::Body(e)),
                Poll::Ready(None) => {
                    if chunked {
                        crate::http1::write::last_chunk(&mut self.out, None);
                    }
                    sending.body = None;
                    progressed = true;
                    continue;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            progressed = true;
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if chunked {
                        crate::http1::write::chunk_size_line(&mut self.out, data.len());
                    }
                    if self.out.len() + data.len() <= GATHER {
                        self.out.extend_from_slice(&data);
                        if chunked {
                            self.out.extend_from_slice(b"\r\n");
                        }
                    } else {
                        sending.big = Some((data, chunked));
                    }
                }
                Err(frame) => {
                    if chunked {
                        crate::http1::write::last_chunk(&mut self.out, frame.trailers_ref());
                    }
                    sending.body = None;
                }
            }
        }
        Ok(progressed)
    }

    /// Writes what is gathered, then the large frame, then flushes once
    /// all is out; whether anything was written. A write error stops the
    /// writing (see [`Sending::write_failed`]).
    fn poll_write_out(&mut self, cx: &mut Context<'_>, sending: &mut Sending<'_, '_>) -> bool {
        let mut progressed = false;
        loop {
            if self.out.is_empty() && sending.big.is_none() {
                if sending.body.is_none() && !sending.flushed {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => sending.flushed = true,
                        Poll::Ready(Err(e)) => sending.write_failed = Some(e),
                        Poll::Pending => {}
                    }
                }
                return progressed;
            }
            let written = match &sending.big {
                Some((big, _)) if !self.out.is_empty() => {
                    let bufs = [std::io::IoSlice::new(&self.out), std::io::IoSlice::new(big)];
                    Pin::new(&mut self.io).poll_write_vectored(cx, &bufs)
                }
                Some((big, _)) => Pin::new(&mut self.io).poll_write(cx, big),
                None => Pin::new(&mut self.io).poll_write(cx, &self.out),
            };
            let n = match written {
                Poll::Pending => return progressed,
                Poll::Ready(Ok(0)) => {
                    sending.write_failed = Some(std::io::ErrorKind::WriteZero.into());
                    return progressed;
                }
                Poll::Ready(Err(e)) => {
                    sending.write_failed = Some(e);
                    return progressed;
                }
                Poll::Ready(Ok(n)) => n,
            };
            progressed = true;
            if !sending.wrote_any {
                sending.wrote_any = true;
                sending.written.store(true, Ordering::SeqCst);
            }
            sending.flushed = false;
            let from_out = n.min(self.out.len());
            self.out.drain(..from_out);
            if let Some((big, crlf)) = &mut sending.big {
                big.advance(n - from_out);
                if big.is_empty() {
                    if *crlf {
                        self.out.extend_from_slice(b"\r\n");
                    }
                    sending.big = None;
                }
            }
        }
    }

    /// Parses the response heads at the front of the buffer: informational
    /// ones go to `interim` (100 is dropped), counted in `informational`;
    /// the final one (or a 101 when `upgrade`) is returned, left in the
    /// buffer. None: not complete yet.
    fn parse_head(
        &mut self,
        upgrade: bool,
        interim: &mut Interim<'_>,
        informational: &mut usize,
    ) -> Result<Option<StatusLine>, SendError> {
        loop {
            let line = match parse_response(&self.buf, &mut self.spans) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(HeadError::TooLarge) => {
                    return Err(protocol(
                        "the response head is larger than 64 KiB or has too many fields",
                    ));
                }
                Err(what @ (HeadError::Malformed(_) | HeadError::Version)) => {
                    return Err(protocol(format!("malformed response head: {what}")));
                }
            };
            if line.status == StatusCode::SWITCHING_PROTOCOLS {
                if !upgrade {
                    return Err(protocol(
                        "101 Switching Protocols to a request that asked for no upgrade",
                    ));
                }
                return Ok(Some(line));
            }
            if !line.status.is_informational() {
                return Ok(Some(line));
            }
            *informational += 1;
            if *informational > MAX_INFORMATIONAL {
                return Err(protocol(format!(
                    "more than {MAX_INFORMATIONAL} informational responses before the final one"
                )));
            }
            let head = self.buf.split_to(line.len).freeze();
            if line.status != StatusCode::CONTINUE {
                interim(line.status, &FieldsOf::new(&head, &self.spans));
            }
        }
    }
}

/// The error for a connection that ended (or failed: `error`) before a
/// response head was complete.
fn closed(sending: &mut Sending<'_, '_>, error: Option<std::io::Error>) -> SendError {
    let error = error.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
    if sending.answered {
        return protocol(format!(
            "the backend closed in the middle of a response head: {error}"
        ));
    }
    if !sending.wrote_any {
        return SendError::Unwritten(error);
    }
    let reset_like = matches!(
        error.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    );
    if reset_like {
        SendError::ClosedUnanswered(error)
    } else {
        SendError::Protocol(error.into())
    }
}

/// A response body read from its connection as it is polled. Once it has
/// been read to its end, a connection that may be reused waits in
/// [`Body1::take_spare`] for its pool; otherwise it is closed.
pub struct Body1 {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    reusable: bool,
    spare: Option<Box<Conn>>,
    /// A failure to report on the next poll (see [`Body1::fail`]).
    failure: Option<BoxError>,
}

impl Body1 {
    fn new(conn: Box<Conn>, framing: Framing, reusable: bool) -> Self {
        let mut body = Self {
            conn: Some(conn),
            decoder: Decoder::new(framing, false),
            reusable,
            spare: None,
            failure: None,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// A body with nothing in it (what follows a 101).
    pub fn empty() -> Self {
        Self {
            conn: None,
            decoder: Decoder::new(Framing::Empty, false),
            reusable: false,
            spare: None,
            failure: None,
        }
    }

    /// The connection, once the body has been read to its end and the
    /// connection may carry another request.
    pub fn take_spare(&mut self) -> Option<Box<Conn>> {
        self.spare.take()
    }

    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            conn.trim();
            self.spare = Some(conn);
        }
    }

    /// Closes the connection and reports `message` on the next poll, not
    /// this one: a reader that gathers frames before it writes first sends
    /// what it has of the response, as it would had the failure come later.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        failure: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.failure = Some(failure);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for Body1 {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(failure) = this.failure.take() {
            return Poll::Ready(Some(Err(failure)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    let malformed =
                        crate::http1::MalformedBody(format!("the response body is malformed: {e}"));
                    return this.fail(cx, Box::new(malformed));
                }
                Ok(Decoded::More) => {}
            }
            // A long body with a length is read in large pieces: fewer
            // reads and writes per byte, as HAProxy's 16 KiB buffers and
            // nginx's proxy buffers do.
            let size = match this.decoder.remaining() {
                Some(n) if n > READ_SIZE as u64 => n.min(LARGE_READ as u64) as usize,
                _ => READ_SIZE,
            };
            match poll_fill(&mut conn.io, &mut conn.buf, size, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => match this.decoder.at_eof() {
                    Ok(_) => {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Err(e) => {
                        return this.fail(cx, format!("reading the response body: {e}").into());
                    }
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return this.fail(cx, format!("reading the response body: {e}").into());
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failure.is_none() && (self.decoder.is_done() || self.conn.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
