//! How a message's body is delimited (RFC 9112 §6), and the decoder that
//! reads a body by it from a buffer the caller fills.
//!
//! Requests (strict: an ambiguous request is refused, never guessed at):
//! 1. `Transfer-Encoding` and `Content-Length` together: 400.
//! 2. `Transfer-Encoding` on HTTP/1.0: 400 (§6.1). Exactly `chunked`: a
//!    chunked body. Codings before a final `chunked`: 501 (none is
//!    decoded). A list not ending in `chunked`, or malformed: 400.
//! 3. `Content-Length`: equal decimal numbers (`5`, `5, 5`, two fields of
//!    `5`), that many bytes; anything else 400.
//! 4. Neither: no body.
//!
//! Responses (a defect is a 502 and the connection is dropped):
//! 1. `Transfer-Encoding` and `Content-Length` together, or
//!    `Transfer-Encoding` on HTTP/1.0 (§6.1): refused.
//! 2. `Content-Length` must be a length (checked on every response, HEAD,
//!    204 and 304 too: a HEAD answer passes its length on).
//! 3. A response to HEAD, and every 1xx, 204 and 304, ends at its head.
//! 4. `Transfer-Encoding`: exactly `chunked` is a chunked body; any other
//!    coding is refused (the proxy would have to undo it to re-frame).
//! 5. `Content-Length`: that many bytes; else the body runs until the
//!    connection closes.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::head::{FieldsOf, HeadError, Span, parse_trailers};
use crate::fields::{Fields, FramingFields, LengthError, TransferCoding};

/// How a body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a request's framing is refused: the status to answer and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// A request's body framing from its fields (the rules in the module docs).
pub fn request(fields: &dyn Fields, minor: u8) -> Result<Framing, Refused> {
    let coding = crate::fields::transfer_coding_in(fields);
    let length = crate::fields::content_length_in(fields);
    if coding != TransferCoding::Absent {
        if !matches!(length, Ok(None)) {
            return Err(bad(
                "the request has both Transfer-Encoding and Content-Length",
            ));
        }
        if minor == 0 {
            return Err(bad("an HTTP/1.0 request has a Transfer-Encoding"));
        }
    }
    match coding {
        TransferCoding::Absent => {}
        TransferCoding::Chunked => return Ok(Framing::Chunked),
        TransferCoding::Malformed => {
            return Err(bad(
                "the request's Transfer-Encoding is not a valid list of codings",
            ));
        }
        TransferCoding::NotChunkedLast => {
            return Err(bad(
                "the request's Transfer-Encoding does not end in `chunked`, so its length cannot be told",
            ));
        }
        TransferCoding::Unsupported => {
            return Err(Refused {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: "the request's Transfer-Encoding is not `chunked` alone; no other coding is decoded",
            });
        }
    }
    match length {
        Ok(None | Some((0, _))) => Ok(Framing::Empty),
        Ok(Some((n, _))) => Ok(Framing::Length(n)),
        Err(LengthError::NotANumber) => Err(bad("the request's Content-Length is not a number")),
        Err(LengthError::Differing) => {
            Err(bad("the request has Content-Length values that differ"))
        }
    }
}

/// A response's framing, and the length it declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFraming {
    pub framing: Framing,
    /// The `Content-Length` it gave (checked).
    pub declared: Option<u64>,
}

/// A response's body framing from its fields (the rules in the module
/// docs); Err says what is wrong with it.
pub fn response(
    fields: &dyn Fields,
    status: StatusCode,
    head_request: bool,
    minor: u8,
) -> Result<ResponseFraming, &'static str> {
    let mut read = FramingFields::default();
    fields.each(&mut |name, value| {
        read.push(name, value);
    });
    response_of(&read, status, head_request, minor)
}

/// [`response`], from framing fields already read; `minor`: the
/// response's HTTP/1.`minor`.
pub fn response_of(
    read: &FramingFields,
    status: StatusCode,
    head_request: bool,
    minor: u8,
) -> Result<ResponseFraming, &'static str> {
    let coding = read.coding();
    if minor == 0 && coding != TransferCoding::Absent {
        return Err("an HTTP/1.0 response has a Transfer-Encoding");
    }
    let declared = match read.length() {
        Ok(length) => length.map(|(n, _)| n),
        Err(LengthError::NotANumber) => {
            return Err("the response's Content-Length is not a number");
        }
        Err(LengthError::Differing) => {
            return Err("the response has Content-Length values that differ");
        }
    };
    if coding != TransferCoding::Absent && declared.is_some() {
        return Err("the response has both Transfer-Encoding and Content-Length");
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match coding {
        _ if no_body => Framing::Empty,
        TransferCoding::Chunked => Framing::Chunked,
        TransferCoding::Absent => declared.map_or(Framing::UntilClose, |n| match n {
            0 => Framing::Empty,
            n => Framing::Length(n),
        }),
        TransferCoding::Malformed
        | TransferCoding::Unsupported
        | TransferCoding::NotChunkedLast => {
            return Err(
                "the response's Transfer-Encoding is not `chunked` alone (the proxy would have to undo another coding)",
            );
        }
    };
    Ok(ResponseFraming { framing, declared })
}

/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and its blank line.
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Body bytes (never empty).
    Data(Bytes),
    /// The trailer section of a chunked body; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

/// Why a body is not one; the message says what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Reads a body by its framing from a buffer the caller fills.
#[derive(Clone, Debug)]
pub struct Decoder {
    state: State,
    /// Chunk lines must end in CRLF (a request's); else a bare LF is
    /// accepted too (a response's).
    strict: bool,
    spans: Vec<Span>,
}

impl Decoder {
    pub fn new(framing: Framing, strict: bool) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        Self {
            state,
            strict,
            spans: Vec::new(),
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes left of a body with a length (None: not known).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes the next part of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(_) | State::UntilClose | State::Chunked(Chunk::Data(_))
                    if buf.is_empty() =>
                {
                    return Ok(Decoded::More);
                }
                State::Length(left) => {
                    let (data, left) = take_up_to(buf, left);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                State::Chunked(Chunk::Data(left)) => {
                    let (data, left) = take_up_to(buf, left);
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Decoded::Data(data));
                }
                State::Chunked(Chunk::Size) => {
                    let Some((content, next)) = self.line_end(buf)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..content])?;
                    buf.advance(next);
                    self.state = State::Chunked(match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    });
                }
                State::Chunked(Chunk::DataEnd) => match self.data_end(buf)? {
                    Some(n) => {
                        buf.advance(n);
                        self.state = State::Chunked(Chunk::Size);
                    }
                    None => return Ok(Decoded::More),
                },
                State::Chunked(Chunk::Trailers) => return self.trailers(buf),
            }
        }
    }

    /// The connection ended: the body's end, if it may end so.
    pub fn at_eof(&mut self) -> Result<Decoded, DecodeError> {
        match self.state {
            State::Done => Ok(Decoded::End),
            State::UntilClose => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(DecodeError(
                "the connection closed before the end of the body",
            )),
        }
    }

    /// The first line in `buf`: where its content ends and the next line
    /// starts; None when it is not complete yet.
    fn line_end(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
        let Some(lf) = memchr::memchr(b'\n', buf) else {
            // Room for the line and its CR.
            if buf.len() > MAX_CHUNK_LINE + 1 {
                return Err(DecodeError("a chunk-size line is too long"));
            }
            // A CR not followed by LF is refused at once, not waited on.
            if memchr::memchr(b'\r', buf).is_some_and(|cr| cr + 1 < buf.len()) {
                return Err(DecodeError("a chunk-size line has a bare CR"));
            }
            return Ok(None);
        };
        let end = if lf > 0 && buf[lf - 1] == b'\r' {
            lf - 1
        } else if self.strict {
            return Err(DecodeError("a chunk-size line ends in a bare LF"));
        } else {
            lf
        };
        // The same limit whether the line came in pieces or in one read.
        if end > MAX_CHUNK_LINE {
            return Err(DecodeError("a chunk-size line is too long"));
        }
        Ok(Some((end, lf + 1)))
    }

    /// The line end after a chunk's data: its length, None when not all
    /// here yet.
    fn data_end(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        match buf {
            [b'\r', b'\n', ..] => Ok(Some(2)),
            [b'\n', ..] if !self.strict => Ok(Some(1)),
            [] | [b'\r'] => Ok(None),
            _ => Err(DecodeError("chunk data is not followed by CRLF")),
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let blank = match &buf[..] {
            [b'\r', b'\n', ..] => 2,
            [b'\n', ..] if !self.strict => 1,
            [] | [b'\r'] => return Ok(Decoded::More),
            _ => 0,
        };
        if blank > 0 {
            buf.advance(blank);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        let len = match parse_trailers(buf, &mut self.spans, self.strict) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(Decoded::More),
            Err(HeadError::TooLarge) => {
                return Err(DecodeError("the trailer section is too large"));
            }
            Err(HeadError::Malformed(_) | HeadError::Version) => {
                return Err(DecodeError("the trailer section is malformed"));
            }
        };
        let section = buf.split_to(len).freeze();
        let mut trailers = HeaderMap::with_capacity(self.spans.len());
        for (name, value) in FieldsOf::new(&section, &self.spans).iter() {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                return Err(DecodeError("a trailer field is not valid"));
            };
            trailers.append(name, value);
        }
        self.state = State::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are left then.
fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    (buf.split_to(take).freeze(), left - take as u64)
}

/// The size of a chunk from its size line: 1 to 16 hex digits, then
/// optional whitespace and extensions (`;` and what follows, ignored, with
/// no control character but HTAB).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    // Whitespace (BWS) may come before the extensions' `;`: SP and HTAB.
    let spaces = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[spaces..];
    if digits.is_empty() || digits.len() > 16 {
        return Err(DecodeError("a chunk size is not 1 to 16 hex digits"));
    }
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(DecodeError("a chunk size is not 1 to 16 hex digits"));
    }
    if rest.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return Err(DecodeError("a chunk extension has a control character"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| DecodeError("a chunk size is not hex"))?;
    u64::from_str_radix(text, 16).map_err(|_| DecodeError("a chunk size is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(text: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(": ").unwrap();
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// Decodes `input` whole: the body and the trailers, or the error.
    fn decode_all(
        framing: Framing,
        strict: bool,
        input: &[u8],
    ) -> Result<(Vec<u8>, Option<HeaderMap>), DecodeError> {
        let mut decoder = Decoder::new(framing, strict);
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t))),
                Decoded::End => return Ok((body, None)),
                Decoded::More => {
                    return decoder.at_eof().map(|_| (body, None));
                }
            }
        }
    }

    #[test]
    fn request_framing_refuses_every_ambiguity() {
        let framing = |text: &str, minor| request(&headers(text), minor);
        assert_eq!(framing("", 1), Ok(Framing::Empty));
        assert_eq!(framing("content-length: 5", 1), Ok(Framing::Length(5)));
        assert_eq!(
            framing("content-length: 5\r\ncontent-length: 5", 1),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("transfer-encoding: Chunked", 1),
            Ok(Framing::Chunked)
        );
        for (text, minor, status) in [
            ("content-length: 5\r\ncontent-length: 6", 1, 400),
            ("content-length: 5, 6", 1, 400),
            ("content-length: abc", 1, 400),
            ("content-length: +5", 1, 400),
            ("transfer-encoding: chunked\r\ncontent-length: 5", 1, 400),
            ("transfer-encoding: chunked", 0, 400),
            ("transfer-encoding: chunked, gzip", 1, 400),
            ("transfer-encoding: gzip", 1, 400),
            ("transfer-encoding: ,chunked", 1, 400),
            ("transfer-encoding: gzip, chunked", 1, 501),
        ] {
            assert_eq!(
                framing(text, minor).map_err(|r| r.status.as_u16()),
                Err(status),
                "{text}"
            );
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |text: &str, status: u16, head| {
            response(
                &headers(text),
                StatusCode::from_u16(status).unwrap(),
                head,
                1,
            )
        };
        // HTTP/1.0 has no Transfer-Encoding (§6.1): a response with one is
        // refused, whatever its coding or status.
        for (text, status, head) in [
            ("transfer-encoding: chunked", 200, false),
            ("transfer-encoding: chunked", 204, false),
            ("transfer-encoding: gzip", 200, true),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(response(&headers(text), status, head, 0).is_err(), "{text}");
        }
        assert_eq!(
            response(&headers("content-length: 5"), StatusCode::OK, false, 0)
                .unwrap()
                .framing,
            Framing::Length(5)
        );
        assert_eq!(
            framing("content-length: 5, 5", 200, true),
            Ok(ResponseFraming {
                framing: Framing::Empty,
                declared: Some(5)
            })
        );
        assert_eq!(
            framing("", 200, false).unwrap().framing,
            Framing::UntilClose
        );
        assert_eq!(framing("", 204, false).unwrap().framing, Framing::Empty);
        assert_eq!(
            framing("transfer-encoding: chunked", 200, false)
                .unwrap()
                .framing,
            Framing::Chunked
        );
        // No body to undo: a HEAD or 304 answer with another coding passes.
        assert!(framing("transfer-encoding: gzip, chunked", 200, true).is_ok());
        assert!(framing("transfer-encoding: gzip", 304, false).is_ok());
        for (text, head) in [
            ("content-length: abc", true),
            ("content-length: 5\r\ncontent-length: 7", true),
            ("transfer-encoding: chunked\r\ncontent-length: 3", false),
            ("transfer-encoding: chunked, gzip", false),
            ("transfer-encoding: gzip, chunked", false),
        ] {
            assert!(framing(text, 200, head).is_err(), "{text}");
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, trailers) = decode_all(
            Framing::Chunked,
            true,
            b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 9\r\n\r\n",
        )
        .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "9");
        let (body, trailers) =
            decode_all(Framing::Chunked, true, b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!((body, trailers), (b"abc".to_vec(), None));
    }

    #[test]
    fn bare_lf_chunk_lines_pass_only_where_lenient() {
        let input = b"5\nhello\n6\r\n world\n0\n\n";
        assert_eq!(
            decode_all(Framing::Chunked, false, input).unwrap().0,
            b"hello world"
        );
        assert!(decode_all(Framing::Chunked, true, input).is_err());
    }

    #[test]
    fn invalid_chunks_are_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"123456789012345678\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\x00\r\nhello\r\n0\r\n\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            for strict in [true, false] {
                assert!(
                    decode_all(Framing::Chunked, strict, bad).is_err(),
                    "{:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        let long = format!("{}\r\n", "1".repeat(MAX_CHUNK_LINE + 10));
        assert!(decode_all(Framing::Chunked, false, long.as_bytes()).is_err());
        // A long extension, its line whole in one read, is as long a line.
        let extended = |len: usize| format!("3;{}\r\nabc\r\n0\r\n\r\n", "a".repeat(len - 2));
        assert!(decode_all(Framing::Chunked, true, extended(MAX_CHUNK_LINE).as_bytes()).is_ok());
        assert!(
            decode_all(
                Framing::Chunked,
                true,
                extended(MAX_CHUNK_LINE + 1).as_bytes()
            )
            .is_err()
        );
        assert!(decode_all(Framing::Chunked, true, extended(8000).as_bytes()).is_err());
        // And the same lines a byte at a time: the same verdicts.
        let in_pieces = |input: &[u8]| {
            let mut decoder = Decoder::new(Framing::Chunked, true);
            let mut buf = BytesMut::new();
            for &b in input {
                buf.extend_from_slice(&[b]);
                loop {
                    match decoder.decode(&mut buf)? {
                        Decoded::End | Decoded::Trailers(_) => return Ok(()),
                        Decoded::More => break,
                        Decoded::Data(_) => {}
                    }
                }
            }
            decoder.at_eof().map(|_| ())
        };
        assert!(in_pieces(extended(MAX_CHUNK_LINE).as_bytes()).is_ok());
        assert!(in_pieces(extended(MAX_CHUNK_LINE + 1).as_bytes()).is_err());
    }

    #[test]
    fn lengths_and_closes_end_bodies() {
        assert_eq!(
            decode_all(Framing::Length(3), true, b"abcdef").unwrap().0,
            b"abc"
        );
        assert!(decode_all(Framing::Length(10), true, b"abc").is_err());
        assert_eq!(
            decode_all(Framing::UntilClose, false, b"all of it")
                .unwrap()
                .0,
            b"all of it"
        );
        assert!(decode_all(Framing::Chunked, true, b"5\r\nhel").is_err());
    }

    #[test]
    fn bodies_split_anywhere_decode_the_same() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX: y\r\n\r\n";
        for cut in 0..input.len() {
            let mut decoder = Decoder::new(Framing::Chunked, true);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut body = Vec::new();
            let mut rest = &input[cut..];
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::More => {
                        assert!(!rest.is_empty(), "stuck at cut {cut}");
                        buf.extend_from_slice(&rest[..1]);
                        rest = &rest[1..];
                    }
                    Decoded::Trailers(_) | Decoded::End => break,
                }
            }
            assert_eq!(body, b"hello world", "cut {cut}");
            assert!(decoder.is_done());
        }
    }
}
