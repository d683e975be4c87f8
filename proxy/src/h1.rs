//! Sluice's own HTTP/1.1 upstream codec, for the most common exchange: a
//! request without a body (GET, HEAD, DELETE, ...) to a plain-TCP HTTP/1.1
//! backend, and no protocol upgrade.
//!
//! The exchange runs in the request's own task: the request head is
//! written, the response head read and parsed (with `httparse`) there, and
//! the response body is read from the socket as the client side polls it.
//! There is no connection task, no channel and no hand-off per request.
//! Requests with a body, upgrades, TLS and HTTP/2 backends go through
//! hyper's client connections (`crate::upstream`).
//!
//! Framing follows RFC 9112 §6.3, in this order:
//! 1. A response to HEAD, and every 1xx, 204 and 304 response, ends at
//!    its head. Informational responses (1xx other than 101) are read and
//!    handed to the caller's `interim` as they come (100 is dropped: the
//!    proxy's server answers `Expect` itself); a 101 to a request that
//!    asked for no upgrade is an error.
//! 2. `Transfer-Encoding`: exactly `chunked` is a chunked body (chunk
//!    extensions are ignored, trailers are passed on; a chunk-size line or
//!    the end of a chunk may end in a bare LF, as nginx and HAProxy
//!    accept). Any other coding (`chunked, gzip`, `gzip, chunked`) is a
//!    protocol error: the proxy re-frames bodies and would have to undo
//!    it. A `Content-Length` next to a `Transfer-Encoding` is dropped, and
//!    the connection is not reused (it may be a smuggling attempt).
//! 3. `Content-Length`: that many bytes. Several values must all be equal;
//!    anything else is a protocol error (502). The field is checked on
//!    every response without `Transfer-Encoding`, HEAD, 204 and 304 too
//!    (a HEAD response passes its length on: `abc` or `5` and `7` would
//!    reach the client).
//! 4. Otherwise the body runs until the backend closes.
//!
//! A connection is reused only after an HTTP/1.1 response whose body had a
//! length or was chunked, without `Connection: close`, and with nothing
//! left unread behind the response. A response head over
//! [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] fields is a protocol error.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fields::{LengthError, TransferCoding};

/// The largest response head (and trailer section) read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a response head (or trailer section) may have.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8192;

/// A plain-TCP connection to an HTTP/1.1 backend and its read buffer.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Reused for every request head written on this connection.
    head: Vec<u8>,
    /// Reused for the header positions of every head read.
    spans: Vec<Span>,
}

/// Why an exchange failed before a response head.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request was written: it never reached the backend.
    Unwritten(std::io::Error),
    /// The connection closed (or was reset) after the request was written
    /// and before any byte of a response: the stale keep-alive race on a
    /// reused connection.
    ClosedUnanswered(std::io::Error),
    /// Anything else: a broken or malformed response, an I/O error
    /// part-way.
    Protocol(crate::body::BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unwritten(e) => write!(f, "the request could not be written: {e}"),
            SendError::ClosedUnanswered(e) => {
                write!(f, "the connection closed before a response: {e}")
            }
            SendError::Protocol(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

fn protocol(message: impl Into<String>) -> SendError {
    SendError::Protocol(message.into().into())
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Conn {
    /// A connection, boxed once for its life (it moves between the pool
    /// and response bodies).
    pub fn new(io: TcpStream) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            spans: Vec::new(),
        })
    }

    /// Whether an idle connection is still usable: the backend has neither
    /// closed it nor sent anything unasked. Costs no system call unless
    /// the socket had an event since the last read.
    pub fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the head of `req` (which has no body) and reads the response
    /// head (informational ones to `interim`). The response's body reads
    /// the rest from this connection.
    pub async fn exchange(
        mut self: Box<Self>,
        req: &Request<crate::body::UpstreamBody>,
        interim: &mut Interim<'_>,
    ) -> Result<Exchanged, SendError> {
        encode_head(req, &mut self.head);
        let mut spans = std::mem::take(&mut self.spans);
        let (mut conn, parsed) = self
            .send_head(req.method() == http::Method::HEAD, &mut spans, interim)
            .await?;
        let mut headers = header_map(&parsed.bytes, &spans)?;
        conn.spans = spans;
        // What the framing rules changed: a Content-Length beside a
        // Transfer-Encoding goes, repeated equal lengths become one.
        if parsed.smuggled {
            headers.remove(header::CONTENT_LENGTH);
        }
        if let (Some(n), true) = (parsed.declared, parsed.repeated_length) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let mut response = Response::new(());
        *response.status_mut() = parsed.status;
        *response.version_mut() = if parsed.http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        *response.headers_mut() = headers;
        Ok(Exchanged {
            response,
            body: Body1::new(conn, parsed.framing, parsed.reusable),
        })
    }

    /// The buffer for the next request head, emptied: the caller writes a
    /// complete head (request line, fields, blank line) for
    /// [`Conn::exchange_raw`].
    pub fn head_buf(&mut self) -> &mut Vec<u8> {
        self.head.clear();
        &mut self.head
    }

    /// Writes the head in [`Conn::head_buf`] (a request without a body)
    /// and reads the response head, leaving its fields as positions in
    /// `spans` (no header map is built); informational responses before it
    /// go to `interim` as they come. The response's body reads the rest
    /// from this connection.
    pub async fn exchange_raw(
        self: Box<Self>,
        head_request: bool,
        spans: &mut Vec<Span>,
        interim: &mut Interim<'_>,
    ) -> Result<RawExchanged, SendError> {
        let (conn, parsed) = self.send_head(head_request, spans, interim).await?;
        Ok(RawExchanged {
            head: RawHead {
                status: parsed.status,
                bytes: parsed.bytes,
                framing: parsed.framing,
                declared: parsed.declared,
            },
            body: Body1::new(conn, parsed.framing, parsed.reusable),
        })
    }

    /// Writes `self.head` and reads the response head (informational
    /// ones to `interim`).
    async fn send_head(
        mut self: Box<Self>,
        head_request: bool,
        spans: &mut Vec<Span>,
        interim: &mut Interim<'_>,
    ) -> Result<(Box<Self>, Parsed), SendError> {
        let mut written = 0;
        while written < self.head.len() {
            match self.io.write(&self.head[written..]).await {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(if written == 0 {
                        SendError::Unwritten(e)
                    } else {
                        SendError::Protocol(e.into())
                    });
                }
                Ok(n) => written += n,
                Err(e) if written == 0 => return Err(SendError::Unwritten(e)),
                Err(e) => return Err(SendError::Protocol(e.into())),
            }
        }
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(parsed) = parse_head(&mut self.buf, spans, head_request, interim)? {
                    return Ok((self, parsed));
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
                self.buf.reserve(READ_SIZE);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if !answered => {
                    return Err(SendError::ClosedUnanswered(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(0) => {
                    return Err(protocol(
                        "the backend closed in the middle of a response head",
                    ));
                }
                Ok(_) => {}
                Err(e)
                    if !answered
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(SendError::ClosedUnanswered(e));
                }
                Err(e) => return Err(SendError::Protocol(e.into())),
            }
        }
    }
}

/// Where informational (1xx) response heads go as they come: the head and
/// its fields' positions.
pub type Interim<'a> = dyn FnMut(&RawHead, &[Span]) + Send + 'a;

/// A response head read by [`Conn::exchange_raw`]: its status, its bytes
/// (status line, fields, blank line) and how its body is framed.
pub struct RawHead {
    pub status: StatusCode,
    pub bytes: Bytes,
    framing: Framing,
    /// The `Content-Length` it gave (checked; when no `Transfer-Encoding`).
    declared: Option<u64>,
}

/// How a response body reaches a client, from the framing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Exactly(u64),
    /// An unknown length (chunked or close-delimited upstream).
    Unknown,
}

impl RawHead {
    /// The header fields, as `(name, value)`, in the order received.
    pub fn fields<'a>(&'a self, spans: &'a [Span]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        head_fields(&self.bytes, spans)
    }

    /// The length a `Content-Length` field gave (the one a response to
    /// HEAD passes on), checked to be one number.
    pub fn declared_length(&self) -> Option<u64> {
        self.declared
    }

    pub fn body_length(&self) -> BodyLength {
        match self.framing {
            Framing::Empty => BodyLength::None,
            Framing::Length(n) => BodyLength::Exactly(n),
            Framing::Chunked | Framing::UntilClose => BodyLength::Unknown,
        }
    }
}

/// A response head read raw and the body that reads the rest.
pub struct RawExchanged {
    pub head: RawHead,
    pub body: Body1,
}

/// The fields at `spans` of the head in `base`, as `(name, value)`.
pub(crate) fn head_fields<'a>(
    base: &'a [u8],
    spans: &'a [Span],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone {
    spans.iter().map(move |s| s.of(base))
}

/// The fields of a raw response head as a map (fields that are not valid
/// header values are left out).
pub fn header_map_of(head: &RawHead, spans: &[Span]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(spans.len());
    for (name, value) in head.fields(spans) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// A response head and the body that reads the rest.
pub struct Exchanged {
    pub response: Response<()>,
    pub body: Body1,
}

/// Writes `METHOD target HTTP/1.1`, the header fields and the blank line.
/// Header names and values come from `http` types, which hold no CR or LF.
fn encode_head(req: &Request<crate::body::UpstreamBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head as parsed, before any header map is built.
struct Parsed {
    status: StatusCode,
    http11: bool,
    /// The whole head: status line, fields and the blank line.
    bytes: Bytes,
    framing: Framing,
    /// A `Content-Length` came beside a `Transfer-Encoding` (and is void).
    smuggled: bool,
    /// The `Content-Length` given (checked), without `Transfer-Encoding`.
    declared: Option<u64>,
    /// The length was given more than once (all equal).
    repeated_length: bool,
    reusable: bool,
}

/// Positions of one header field in a head buffer.
#[derive(Clone, Copy, Default)]
pub struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl Span {
    /// The field's name and value in `base`, the buffer it was parsed from.
    pub fn of(self, base: &[u8]) -> (&[u8], &[u8]) {
        (
            &base[self.name.0..self.name.1],
            &base[self.value.0..self.value.1],
        )
    }
}

pub(crate) fn offset_in(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// The part of `buf` a head (or trailer section) must fit in.
fn limited(buf: &[u8]) -> &[u8] {
    &buf[..buf.len().min(MAX_HEAD_BYTES)]
}

/// Records where each of `fields` (parsed from `base`) lies in `base`.
pub(crate) fn record_spans(base: &[u8], fields: &[httparse::Header<'_>], spans: &mut Vec<Span>) {
    spans.clear();
    spans.extend(fields.iter().map(|field| Span {
        name: offset_in(base, field.name.as_bytes()),
        value: offset_in(base, field.value),
    }));
}

/// Room for the header fields of one head, not initialised (httparse
/// writes the ones it finds).
fn field_room<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses the header fields of a complete head or trailer section
/// (`bytes` holds exactly that section) into a map, sharing `bytes`.
fn header_map(bytes: &Bytes, spans: &[Span]) -> Result<HeaderMap, SendError> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(&bytes[span.name.0..span.name.1])
            .map_err(|_| protocol("a response header name is not valid"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(span.value.0..span.value.1))
            .map_err(|_| {
                protocol(format!(
                    "the value of response header `{name}` is not valid"
                ))
            })?;
        map.append(name, value);
    }
    Ok(map)
}

/// Parses a response head at the start of `buf`, handing informational
/// responses to `interim` (but 100: no client of this codec asked for
/// it). None: the head is not complete yet.
fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_request: bool,
    interim: &mut Interim<'_>,
) -> Result<Option<Parsed>, SendError> {
    loop {
        let mut fields = field_room();
        let mut parsed = httparse::Response::new(&mut []);
        let (len, code, minor) = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, limited(buf), &mut fields)
        {
            Ok(httparse::Status::Complete(len)) => {
                record_spans(buf, parsed.headers, spans);
                (
                    len,
                    parsed.code.unwrap_or_default(),
                    parsed.version.unwrap_or_default(),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(protocol(format!(
                    "the response head is larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(protocol(format!(
                    "the response head has more than {MAX_HEADERS} header fields"
                )));
            }
            Err(e) => return Err(protocol(format!("malformed response head: {e}"))),
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| protocol(format!("response status {code} is not valid")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(protocol(
                "101 Switching Protocols to a request that asked for no upgrade",
            ));
        }
        if status.is_informational() {
            let head = buf.split_to(len).freeze();
            if status != StatusCode::CONTINUE {
                let head = RawHead {
                    status,
                    bytes: head,
                    framing: Framing::Empty,
                    declared: None,
                };
                interim(&head, spans);
            }
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let head = buf.split_to(len).freeze();
        let framed = framing(head_fields(&head, spans), status, head_request)?;
        let http11 = minor == 1;
        let reusable = http11
            && !framed.smuggled
            && framed.framing != Framing::UntilClose
            && !head_fields(&head, spans).any(|(name, value)| {
                name.eq_ignore_ascii_case(b"connection") && has_token(value, "close")
            });
        return Ok(Some(Parsed {
            status,
            http11,
            bytes: head,
            framing: framed.framing,
            smuggled: framed.smuggled,
            declared: framed.declared,
            repeated_length: framed.repeated_length,
            reusable,
        }));
    }
}

/// Whether the comma-separated list `value` has `token` (any case).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body is framed, from its head's fields.
struct Framed {
    framing: Framing,
    smuggled: bool,
    declared: Option<u64>,
    repeated_length: bool,
}

/// How the body of a response with `status` (to a HEAD request or not) is
/// delimited, from its header `fields` (the rules are in the module docs);
/// whether it carried both `Transfer-Encoding` and `Content-Length` (the
/// length is then void), the length given, and whether it was given more
/// than once.
fn framing<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    status: StatusCode,
    head_request: bool,
) -> Result<Framed, SendError> {
    let named = |wanted: &'static [u8]| {
        fields
            .clone()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value)
    };
    let coding = crate::fields::transfer_coding(named(b"transfer-encoding"));
    let length = match coding {
        TransferCoding::Absent => {
            crate::fields::content_length(named(b"content-length")).map_err(|e| match e {
                LengthError::NotANumber => {
                    protocol("the response's Content-Length is not a number")
                }
                LengthError::Differing => {
                    protocol("the response has differing Content-Length values")
                }
            })?
        }
        _ => None,
    };
    let smuggled = coding != TransferCoding::Absent && named(b"content-length").next().is_some();
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match coding {
        _ if no_body => Framing::Empty,
        TransferCoding::Chunked => Framing::Chunked,
        TransferCoding::Malformed
        | TransferCoding::Unsupported
        | TransferCoding::NotChunkedLast => {
            return Err(protocol(
                "the response's Transfer-Encoding is not `chunked` alone (the proxy would have to undo another coding)",
            ));
        }
        TransferCoding::Absent => length.map_or(Framing::UntilClose, |(n, _)| Framing::Length(n)),
    };
    Ok(Framed {
        framing,
        smuggled,
        declared: length.map(|(n, _)| n),
        repeated_length: length.is_some_and(|(_, repeated)| repeated),
    })
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and its blank line.
    Trailers,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// A response body read from its connection as it is polled. Once it has
/// been read to its end, a connection that may be reused waits in
/// [`Body1::take_spare`] for its pool; otherwise it is closed.
pub struct Body1 {
    conn: Option<Box<Conn>>,
    state: State,
    reusable: bool,
    spare: Option<Box<Conn>>,
    /// A failure to report on the next poll (see [`Body1::fail`]).
    failure: Option<String>,
    /// The size the body declared (for the size hint).
    length: Option<u64>,
}

impl Body1 {
    fn new(conn: Box<Conn>, framing: Framing, reusable: bool) -> Self {
        let (state, length) = match framing {
            Framing::Empty => (State::Done, Some(0)),
            Framing::Length(0) => (State::Done, Some(0)),
            Framing::Length(n) => (State::Length(n), Some(n)),
            Framing::Chunked => (State::Chunked(Chunk::Size), None),
            Framing::UntilClose => (State::UntilClose, None),
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            reusable,
            spare: None,
            failure: None,
            length,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The connection, once the body has been read to its end and the
    /// connection may carry another request.
    pub fn take_spare(&mut self) -> Option<Box<Conn>> {
        self.spare.take()
    }

    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            self.spare = Some(conn);
        }
    }

    /// Closes the connection and reports `message` on the next poll, not
    /// this one: the reader (hyper's connection to the client) then first
    /// sends what it has of the response, head and data, as it would had
    /// the failure come later.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        message: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        self.failure = Some(message.to_string());
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Reads more into the connection's buffer: Ready(Ok(0)) at its end.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < READ_SIZE / 2 {
        conn.buf.reserve(READ_SIZE);
    }
    let read = conn.io.read_buf(&mut conn.buf);
    tokio::pin!(read);
    std::future::Future::poll(read, cx)
}

/// Up to `left` bytes from the front of `buf`, and how many are left then.
fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    (buf.split_to(take).freeze(), left - take as u64)
}

/// The first line in `buf`: where its content ends (before CRLF, or a
/// bare LF) and where the next line starts.
fn line_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.iter().position(|&b| b == b'\n')?;
    let content = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((content, lf + 1))
}

/// The size of a chunk from its size line (extensions ignored; a bare CR
/// anywhere is refused).
fn chunk_size(line: &[u8]) -> Option<u64> {
    if line.contains(&b'\r') {
        return None;
    }
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 16 || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl Body for Body1 {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(failure) = this.failure.take() {
            return Poll::Ready(Some(Err(failure.into())));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Decode what is buffered; break out to read more.
            match this.state {
                State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let (data, left) = take_up_to(&mut conn.buf, left);
                        this.state = State::Length(left);
                        if left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::Size) => match line_end(&conn.buf) {
                    Some((content, end)) => {
                        let Some(size) = chunk_size(&conn.buf[..content]) else {
                            return this.fail(cx, "a malformed chunk size in the response body");
                        };
                        conn.buf.advance(end);
                        this.state = State::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    None if conn.buf.len() > MAX_CHUNK_LINE => {
                        return this.fail(cx, "a chunk-size line in the response body is too long");
                    }
                    None => {}
                },
                State::Chunked(Chunk::Data(left)) => {
                    if !conn.buf.is_empty() {
                        let (data, left) = take_up_to(&mut conn.buf, left);
                        this.state = State::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::DataEnd) => {
                    // CRLF, or a bare LF (see the module docs).
                    let end = match conn.buf.first() {
                        Some(b'\n') => Some(1),
                        Some(b'\r') if conn.buf.len() >= 2 => (conn.buf[1] == b'\n').then_some(2),
                        Some(b'\r') | None => Some(0),
                        Some(_) => None,
                    };
                    match end {
                        None => {
                            return this
                                .fail(cx, "a chunk in the response body does not end in CRLF");
                        }
                        Some(0) => {}
                        Some(n) => {
                            conn.buf.advance(n);
                            this.state = State::Chunked(Chunk::Size);
                            continue;
                        }
                    }
                }
                State::Chunked(Chunk::Trailers) => {
                    let blank = if conn.buf.starts_with(b"\r\n") {
                        2
                    } else {
                        usize::from(conn.buf.starts_with(b"\n"))
                    };
                    if blank > 0 {
                        conn.buf.advance(blank);
                        this.finish();
                        return Poll::Ready(None);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(limited(&conn.buf), &mut fields) {
                        Ok(httparse::Status::Complete((len, found))) => {
                            record_spans(&conn.buf, found, &mut conn.spans);
                            let section = conn.buf.split_to(len).freeze();
                            let trailers = match header_map(&section, &conn.spans) {
                                Ok(t) => t,
                                Err(e) => return this.fail(cx, &e.to_string()),
                            };
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if conn.buf.len() >= MAX_HEAD_BYTES => {
                            return this.fail(cx, "the response's trailer section is too large");
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(e) => {
                            return this.fail(cx, &format!("malformed response trailers: {e}"));
                        }
                    }
                }
            }
            match poll_fill(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, State::UntilClose) {
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(
                        cx,
                        "the backend closed the connection before the end of the response body",
                    );
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return this.fail(cx, &format!("reading the response body: {e}"));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failure.is_none() && (matches!(self.state, State::Done) || self.conn.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match (self.state, self.length) {
            (State::Done, _) => SizeHint::with_exact(0),
            (State::Length(left), Some(_)) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(head: &str, status: u16, head_request: bool) -> Result<Framed, SendError> {
        let fields: Vec<(&[u8], &[u8])> = head
            .split("\r\n")
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        framing(
            fields.iter().copied(),
            StatusCode::from_u16(status).unwrap(),
            head_request,
        )
    }

    #[test]
    fn a_head_response_length_is_checked_and_passed_on_once() {
        let head = framed("content-length: 5, 5\r\ncontent-length: 5", 200, true).unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!((head.declared, head.repeated_length), (Some(5), true));
        for bad in [
            "content-length: abc",
            "content-length: 5\r\ncontent-length: 7",
        ] {
            assert!(framed(bad, 200, true).is_err(), "{bad}");
        }
        // Beside a Transfer-Encoding the length is void, not checked.
        let head = framed(
            "transfer-encoding: chunked\r\ncontent-length: abc",
            200,
            true,
        )
        .unwrap();
        assert!(head.smuggled && head.declared.is_none());
    }

    #[test]
    fn only_chunked_alone_frames_a_response_body() {
        assert_eq!(
            framed("transfer-encoding: Chunked", 200, false)
                .unwrap()
                .framing,
            Framing::Chunked
        );
        for coding in [
            "chunked, gzip",
            "gzip, chunked",
            "identity",
            "chunked, chunked",
        ] {
            assert!(
                framed(&format!("transfer-encoding: {coding}"), 200, false).is_err(),
                "{coding}"
            );
        }
        // No body to undo: a HEAD or 304 answer with another coding passes.
        assert!(framed("transfer-encoding: gzip, chunked", 200, true).is_ok());
        assert!(framed("transfer-encoding: gzip, chunked", 304, false).is_ok());
    }

    #[test]
    fn chunk_lines_end_in_crlf_or_a_bare_lf() {
        assert_eq!(line_end(b"5\r\nhello"), Some((1, 3)));
        assert_eq!(line_end(b"5\nhello"), Some((1, 2)));
        assert_eq!(line_end(b"5"), None);
        assert_eq!(chunk_size(b"1f"), Some(31));
        assert_eq!(chunk_size(b"5 ; name=value"), Some(5));
        for bad in [
            &b"zz"[..],
            b"0x5",
            b"-1",
            b"",
            b"5\rx",
            b"12345678901234567",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
