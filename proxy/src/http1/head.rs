//! Request and response heads (and trailer sections): parsed with
//! `httparse`, then checked against the rules the module docs list. A
//! head's fields stay where they are in the buffer ([`Span`]); nothing is
//! copied or allocated per field.

use http::{Method, StatusCode};

use crate::fields::Fields;

/// The most header fields a head (or trailer section) may have.
pub const MAX_FIELDS: usize = crate::fields::MAX_FIELDS;
/// The largest response head (and trailer section) read.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Positions of one header field in the buffer it was parsed from.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
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

/// A head's fields: where they lie in the buffer they were parsed from.
#[derive(Clone, Copy)]
pub struct FieldsOf<'a> {
    pub base: &'a [u8],
    pub spans: &'a [Span],
}

impl<'a> FieldsOf<'a> {
    pub fn new(base: &'a [u8], spans: &'a [Span]) -> Self {
        Self { base, spans }
    }

    /// `(name, value)` of each field, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + use<'a> {
        let base = self.base;
        self.spans.iter().map(move |s| s.of(base))
    }
}

impl Fields for FieldsOf<'_> {
    fn each<'s>(&'s self, each: &mut dyn FnMut(&'s [u8], &'s [u8])) {
        for (name, value) in self.iter() {
            each(name, value);
        }
    }

    fn values<'s>(&'s self, name: &str, each: &mut dyn FnMut(&'s [u8]) -> bool) -> bool {
        self.iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name.as_bytes()) && each(v))
    }

    fn first<'s>(&'s self, name: &str) -> Option<&'s [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

impl crate::reuse::Shelved for Vec<Span> {
    fn shelf() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<Self>>> {
        thread_local! {
            static SHELF: std::cell::RefCell<Vec<Vec<Span>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        &SHELF
    }

    fn clear(&mut self) {
        Vec::clear(self);
    }

    fn room(&self) -> usize {
        self.capacity() * std::mem::size_of::<Span>()
    }
}

/// Why bytes are not a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Over the size limit or [`MAX_FIELDS`] fields.
    TooLarge,
    /// Not a well-formed head: what is wrong with it.
    Malformed(&'static str),
    /// A request line, well-formed otherwise, of HTTP major version 2 to
    /// 9 (`HTTP/2.0` to `HTTP/9.9`): answered 505.
    Version,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("the head is too large"),
            HeadError::Malformed(what) => f.write_str(what),
            HeadError::Version => f.write_str("the HTTP major version is 2 to 9"),
        }
    }
}

/// A parsed request line and the length of its whole head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: Method,
    /// Where the request target lies in the buffer.
    pub target: (usize, usize),
    /// HTTP/1.`minor` (0 or 1: a later minor version is read as 1).
    pub minor: u8,
    /// Bytes of the head, its blank line included.
    pub len: usize,
}

/// A parsed status line and the length of its whole head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusLine {
    pub status: StatusCode,
    pub minor: u8,
    pub len: usize,
}

/// Room for the fields of one head, not initialised (httparse writes the
/// ones it finds).
fn field_room<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_FIELDS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Parses the request head at the start of `buf` (at most `max_len`
/// bytes of it), its fields' positions into `spans`. None: not complete
/// yet.
pub fn parse_request(
    buf: &[u8],
    max_len: usize,
    spans: &mut Vec<Span>,
) -> Result<Option<RequestLine>, HeadError> {
    let window = &buf[..buf.len().min(max_len)];
    match parse_request_in(window, max_len, spans) {
        // RFC 9110 §2.5: a message of a later minor version of a major
        // version the recipient implements is processed as its highest
        // minor version. `httparse` reads only 1.0 and 1.1: the head is
        // read again from a copy with the minor digit taken as 1 (a copy
        // per attempt, for such requests alone; the positions are the
        // same in both).
        Err(HeadError::Malformed(why)) if why == NOT_1_0_OR_1_1 => {
            match other_version(window) {
                OtherVersion::LaterMinor(at) => {
                    parse_request_in(&as_minor_1(window, at), max_len, spans)
                }
                // 505 for a line that is well-formed but for its major
                // version: the line alone is read again as HTTP/1.1.
                OtherVersion::Major { at, end } => {
                    let mut probe = window[..end].to_vec();
                    probe[at..at + 3].copy_from_slice(b"1.1");
                    probe.extend_from_slice(b"\r\n");
                    match parse_request_in(&probe, probe.len(), &mut Vec::new()) {
                        Err(other) => Err(other),
                        Ok(_) => Err(HeadError::Version),
                    }
                }
                OtherVersion::Incomplete if window.len() >= max_len => Err(HeadError::TooLarge),
                OtherVersion::Incomplete => Ok(None),
                OtherVersion::Neither => Err(HeadError::Malformed(why)),
            }
        }
        parsed => parsed,
    }
}

/// [`parse_request`] of `window` (the buffer's first `max_len` bytes at
/// most), as `httparse` reads it.
fn parse_request_in(
    window: &[u8],
    max_len: usize,
    spans: &mut Vec<Span>,
) -> Result<Option<RequestLine>, HeadError> {
    let mut room = field_room();
    let mut req = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, window, &mut room)
    {
        Ok(httparse::Status::Complete(len)) => {
            check_line_ends(&window[..len])?;
            let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
                .map_err(|_| HeadError::Malformed("the method is not a token"))?;
            let target = req.path.unwrap_or_default().as_bytes();
            if let Some(defect) = crate::fields::target_defect(target) {
                return Err(HeadError::Malformed(defect));
            }
            record_spans(window, req.headers, spans);
            Ok(Some(RequestLine {
                method,
                target: offset_in(window, target),
                minor: req.version.unwrap_or_default(),
                len,
            }))
        }
        Ok(httparse::Status::Partial) if window.len() >= max_len => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(refused(e)),
    }
}

/// An HTTP version's shape: `HTTP/` DIGIT `.` DIGIT (RFC 9112 §2.3), of
/// major version 1 to 9 (`9` stands for any digit of that range, `D`
/// for any digit).
const VERSION_SHAPE: &[u8] = b"HTTP/9.D";

/// Whether `version` is all or the start of a version of
/// [`VERSION_SHAPE`].
fn version_so_far(version: &[u8]) -> bool {
    version.len() <= VERSION_SHAPE.len()
        && version
            .iter()
            .zip(VERSION_SHAPE)
            .all(|(&b, &shape)| match shape {
                b'9' => (b'1'..=b'9').contains(&b),
                b'D' => b.is_ascii_digit(),
                _ => b == shape,
            })
}

/// Where a head's start line begins: after any empty lines (RFC 9112
/// §2.2: skipped, as `httparse` does).
fn start_of_line(window: &[u8]) -> usize {
    let mut at = 0;
    while window[at..].starts_with(b"\r\n") {
        at += 2;
    }
    at
}

/// Whether `version` is `HTTP/1.2` to `HTTP/1.9`, read as 1.1.
fn is_later_minor(version: &[u8]) -> bool {
    matches!(
        version,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9']
    )
}

/// A copy of `window` with the minor version digit at `at` set to 1.
fn as_minor_1(window: &[u8], at: usize) -> Vec<u8> {
    let mut copy = window.to_vec();
    copy[at] = b'1';
    copy
}

/// What a request line's version is when `httparse` did not read it.
#[derive(Debug, PartialEq, Eq)]
enum OtherVersion {
    /// `HTTP/1.2` to `HTTP/1.9`: where its minor digit is.
    LaterMinor(usize),
    /// `HTTP/2.0` to `HTTP/9.9`: where its major digit is, and where the
    /// line ends (after its LF).
    Major { at: usize, end: usize },
    /// The line has not ended, and what has come of it can still be a
    /// line of one of the above.
    Incomplete,
    /// Anything else: the head is malformed, as `httparse` said.
    Neither,
}

/// The version of the request line at the start of `window`: its third
/// part (`METHOD SP target SP version`; `httparse` has read the first two,
/// and the line has no other space or CR).
fn other_version(whole: &[u8]) -> OtherVersion {
    let start = start_of_line(whole);
    let window = &whole[start..];
    let (line, end) = match memchr::memchr(b'\n', window) {
        Some(lf) => match window[..lf].strip_suffix(b"\r") {
            Some(line) => (line, Some(start + lf + 1)),
            None => return OtherVersion::Neither,
        },
        None => (window.strip_suffix(b"\r").unwrap_or(window), None),
    };
    if memchr::memchr(b'\r', line).is_some() {
        return OtherVersion::Neither;
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return OtherVersion::Neither;
    };
    if !version_so_far(version) {
        return OtherVersion::Neither;
    }
    let Some(end) = end else {
        // Only a whole line says the version is all there is of it.
        return OtherVersion::Incomplete;
    };
    if version.len() < VERSION_SHAPE.len() {
        return OtherVersion::Neither;
    }
    let at = offset_in(whole, version).0;
    if is_later_minor(version) {
        OtherVersion::LaterMinor(at + 7)
    } else if version[5] != b'1' {
        OtherVersion::Major { at: at + 5, end }
    } else {
        OtherVersion::Neither
    }
}

/// Parses the response head at the start of `buf` (at most
/// [`MAX_RESPONSE_HEAD`] bytes), its fields' positions into `spans`.
/// None: not complete yet.
pub fn parse_response(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<StatusLine>, HeadError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
    match parse_response_in(window, spans) {
        // A later minor version is read as 1.1, as a request's is (see
        // [`parse_request`]); a status line starts with its version, after
        // any empty lines (skipped, as `httparse` does).
        Err(HeadError::Malformed(why)) if why == NOT_1_0_OR_1_1 => {
            let at = start_of_line(window);
            match window.get(at..at + VERSION_SHAPE.len()) {
                Some(version) if is_later_minor(version) => {
                    parse_response_in(&as_minor_1(window, at + 7), spans)
                }
                _ => Err(HeadError::Malformed(why)),
            }
        }
        parsed => parsed,
    }
}

/// [`parse_response`] of `window`, as `httparse` reads it.
fn parse_response_in(
    window: &[u8],
    spans: &mut Vec<Span>,
) -> Result<Option<StatusLine>, HeadError> {
    let mut room = field_room();
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, &mut room)
    {
        Ok(httparse::Status::Complete(len)) => {
            check_line_ends(&window[..len])?;
            let code = resp.code.unwrap_or_default();
            // RFC 9110 §15: a status code is 100 to 599.
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.as_u16() <= 599)
                .ok_or(HeadError::Malformed("the status code is not 100 to 599"))?;
            record_spans(window, resp.headers, spans);
            Ok(Some(StatusLine {
                status,
                minor: resp.version.unwrap_or_default(),
                len,
            }))
        }
        Ok(httparse::Status::Partial) if window.len() >= MAX_RESPONSE_HEAD => {
            Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(refused(e)),
    }
}

/// Parses the trailer section at the start of `buf` (after a last chunk),
/// its fields' positions into `spans`: its length, or None when not
/// complete. `strict`: its lines must end in CRLF (a request's).
pub fn parse_trailers(
    buf: &[u8],
    spans: &mut Vec<Span>,
    strict: bool,
) -> Result<Option<usize>, HeadError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::parse_headers(window, &mut fields) {
        Ok(httparse::Status::Complete((len, found))) => {
            if strict {
                check_line_ends(&buf[..len])?;
            }
            record_spans(buf, found, spans);
            Ok(Some(len))
        }
        Ok(httparse::Status::Partial) if window.len() >= MAX_RESPONSE_HEAD => {
            Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(refused(e)),
    }
}

/// `httparse`'s version error: a version neither 1.0 nor 1.1.
const NOT_1_0_OR_1_1: &str = "the HTTP version is not HTTP/1.x";

/// What an `httparse` error says of the head.
fn refused(e: httparse::Error) -> HeadError {
    HeadError::Malformed(match e {
        httparse::Error::TooManyHeaders => return HeadError::TooLarge,
        httparse::Error::HeaderName => {
            "a field name is not a token, has whitespace before its colon, or a line is folded (obs-fold)"
        }
        httparse::Error::HeaderValue => {
            "a field value has a control character (NUL, a bare CR, ...)"
        }
        httparse::Error::NewLine => "a line does not end where it should",
        httparse::Error::Status => "the status line is not `HTTP/1.x SP code SP reason`",
        httparse::Error::Token => {
            "the request line is not `METHOD SP target SP HTTP/1.x` (one space apart)"
        }
        httparse::Error::Version => NOT_1_0_OR_1_1,
    })
}

/// Every line of a complete head ends in CRLF: no bare LF (which
/// `httparse` accepts as a line end) and no bare CR.
fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    let mut line_ends = 0;
    for lf in memchr::memchr_iter(b'\n', head) {
        if lf == 0 || head[lf - 1] != b'\r' {
            return Err(HeadError::Malformed("a line ends in a bare LF"));
        }
        line_ends += 1;
    }
    // Each LF has its own CR before it: any other CR is a bare one.
    if memchr::memchr_iter(b'\r', head).count() != line_ends {
        return Err(HeadError::Malformed("a bare CR"));
    }
    Ok(())
}

/// Where `part` (a slice of `base`) lies in `base`.
fn offset_in(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// Records where each of `fields` (parsed from `base`) lies in `base`.
fn record_spans(base: &[u8], fields: &[httparse::Header<'_>], spans: &mut Vec<Span>) {
    spans.clear();
    spans.extend(fields.iter().map(|field| Span {
        name: offset_in(base, field.name.as_bytes()),
        value: offset_in(base, field.value),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> Result<Option<RequestLine>, HeadError> {
        parse_request(bytes, 64 * 1024, &mut Vec::new())
    }

    #[test]
    fn a_well_formed_request_head_is_parsed_in_place() {
        let bytes = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept:\t*/* \r\n\r\nbody";
        let mut spans = Vec::new();
        let line = parse_request(bytes, 1024, &mut spans).unwrap().unwrap();
        assert_eq!(line.method, Method::GET);
        assert_eq!(&bytes[line.target.0..line.target.1], b"/a?b=1");
        assert_eq!((line.minor, line.len), (1, bytes.len() - 4));
        let fields: Vec<_> = FieldsOf::new(bytes, &spans).iter().collect();
        assert_eq!(
            fields,
            [(&b"Host"[..], &b"x"[..]), (&b"Accept"[..], &b"*/*"[..])]
        );
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn heads_with_ambiguous_line_ends_or_fields_are_refused() {
        for (what, bytes) in [
            ("bare LF", &b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"[..]),
            ("only LFs", b"GET / HTTP/1.1\nHost: x\n\n"),
            ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n"),
            ("NUL", b"GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n"),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n"),
            ("two spaces", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("HTTP/1.10", b"GET / HTTP/1.10\r\nHost: x\r\n\r\n"),
            ("HTTP/0.9", b"GET / HTTP/0.9\r\nHost: x\r\n\r\n"),
            ("HTTPS/1.2", b"GET / HTTPS/1.2\r\nHost: x\r\n\r\n"),
            ("HTTP/1.2, bare LF", b"GET / HTTP/1.2\nHost: x\r\n\r\n"),
            (
                "HTTP/1.2, then a bare LF",
                b"GET / HTTP/1.2\r\nHost: x\nY: z\r\n\r\n",
            ),
            ("HTTP/2.0 cut short", b"GET / HTTP/2.\r\nHost: x\r\n\r\n"),
            (
                "non-ASCII target",
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ] {
            assert!(
                matches!(request(bytes), Err(HeadError::Malformed(_))),
                "{what}: {:?}",
                request(bytes)
            );
        }
    }

    #[test]
    fn a_later_minor_version_is_read_as_1_1_and_another_major_is_its_own_error() {
        let bytes = b"PUT /v HTTP/1.7\r\nHost: x\r\n\r\n";
        let mut spans = Vec::new();
        let line = parse_request(bytes, 1024, &mut spans).unwrap().unwrap();
        assert_eq!(line.method, Method::PUT);
        assert_eq!(&bytes[line.target.0..line.target.1], b"/v");
        assert_eq!((line.minor, line.len), (1, bytes.len()));
        let fields: Vec<_> = FieldsOf::new(bytes, &spans).iter().collect();
        assert_eq!(fields, [(&b"Host"[..], &b"x"[..])]);
        let bytes = b"\r\nGET / HTTP/1.2\r\n\r\n";
        let line = request(bytes).unwrap().unwrap();
        assert_eq!((line.target, line.minor), ((6, 7), 1));
        // Not complete yet: more is waited for, whatever the version.
        for partial in [
            &b"GET / HTTP/1.2"[..],
            b"GET / HTTP/1.2\r",
            b"GET / HTTP/1.2\r\nHost: x\r\n",
            b"GET / HTTP/2",
            b"GET / HTTP/3.0\r",
            b"\r\n\r\nGET / HTTP/1.3\r\n",
        ] {
            assert_eq!(request(partial), Ok(None), "{partial:?}");
        }
        // Once the line is whole, its major version is known.
        for major in [
            &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/9.1\r\n",
            b"\r\nGET / HTTP/3.0\r\n",
        ] {
            assert_eq!(request(major), Err(HeadError::Version), "{major:?}");
        }
        // A line with another fault is malformed, whatever its version,
        // and at once when no more bytes can mend it.
        for bad in [
            &b"GET /#f HTTP/2.0\r\n"[..],
            b"GET  / HTTP/2.0\r\n",
            b"GET / HTTP/1.5\r ",
            b"GET / HTTP/2\r ",
            b"GET / HTTP/1.5 ",
            b"GET / HTTP/0",
            b"GET / HTTP/0.",
            b"GET / HTTP/1.5 x",
        ] {
            assert!(
                matches!(request(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let spaces = format!("GET / HTTP/1.5{}", " ".repeat(200));
        assert!(matches!(
            parse_request(spaces.as_bytes(), 100, &mut Vec::new()),
            Err(HeadError::Malformed(_))
        ));
        // Waiting for the line's end stops at the head's limit.
        let long = format!("GET /{} HTTP/1.2", "a".repeat(40));
        assert_eq!(
            parse_request(long.as_bytes(), long.len(), &mut Vec::new()),
            Err(HeadError::TooLarge)
        );
        let line = parse_response(b"HTTP/1.3 204 No\r\nA: b\r\n\r\n", &mut spans)
            .unwrap()
            .unwrap();
        assert_eq!((line.status, line.minor), (StatusCode::NO_CONTENT, 1));
        let line = parse_response(b"\r\nHTTP/1.2 200 OK\r\n\r\n", &mut spans)
            .unwrap()
            .unwrap();
        assert_eq!((line.status, line.minor), (StatusCode::OK, 1));
        assert!(matches!(
            parse_response(b"HTTP/2.0 200 OK\r\n\r\n", &mut spans),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn heads_over_the_limits_are_too_large() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_request(long.as_bytes(), 1024, &mut Vec::new()),
            Err(HeadError::TooLarge)
        );
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(request(many.as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_heads_follow_the_same_rules() {
        let mut spans = Vec::new();
        let line = parse_response(b"HTTP/1.0 299 \r\nA: b\r\n\r\n", &mut spans)
            .unwrap()
            .unwrap();
        assert_eq!((line.status.as_u16(), line.minor), (299, 0));
        for bad in [
            &b"HTTP/1.1 200 OK\nA: b\n\n"[..],
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            b"HTTP/1.1 099 X\r\n\r\n",
            b"not http\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad, &mut spans),
                    Err(HeadError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
