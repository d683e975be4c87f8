//! A differential property test of the proxy's HTTP/1.1 codec
//! (`sluice_proxy::http1`) against a model written apart from it, here:
//! RFC 9112's rules for heads, framing and chunked bodies, spelled out
//! line by line without the codec's code, with `httparse` as a third
//! opinion on every head the model accepts. Both read the same generated
//! and mutated requests and responses, whole and cut into random pieces,
//! and must agree on every one: the same method, target, version, fields,
//! body and trailers, or the same refusal (400, 431, 501, 505; or, for a
//! response, 502). The writers (status lines, fields, chunk framing) are
//! checked by the model reading what they wrote.
//!
//! Where RFC 9112 lets a recipient choose, the model states Sluice's
//! choice (docs/proxy.md, "Ambiguous HTTP/1.1 requests"): an empty element
//! or parameters in a `Transfer-Encoding` list are refused, a chunk line
//! of a response may end in a bare LF (a request's may not).
//!
//! The seed and the number of cases are fixed (`tests/run` runs them);
//! `SLUICE_HTTP1_CASES` and `SLUICE_HTTP1_SEED` change them (`tests/run
//! --long` runs a million cases).

use bytes::BytesMut;
use http::{Method, StatusCode};
use sluice_proxy::http1::framing::{self, Decoded, Decoder, Framing};
use sluice_proxy::http1::head::{self, FieldsOf, HeadError};
use sluice_proxy::http1::write;

// === the model: RFC 9112, written out ===

/// Header fields as `(name, value)`, in order.
type FieldList = Vec<(Vec<u8>, Vec<u8>)>;

/// A message as the model (or the codec) read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    /// `METHOD target` of a request, or the status code of a response.
    start: String,
    minor: u8,
    fields: FieldList,
    body: Vec<u8>,
    trailers: FieldList,
}

/// What a reader made of the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Read(Message),
    /// Refused with this status.
    Refused(u16),
    /// Refused with this status for the line the bytes end in: its part
    /// so far cannot begin a valid line. A reader may refuse it at once or
    /// wait for the line's end (the model only: see [`agree`]).
    RefusedEarly(u16),
    /// The bytes end before the message does.
    Incomplete,
}

/// Whether the codec's verdict is the model's: the same, or, where the
/// model refused a partial last line, a codec that waits for its end.
fn agree(codec: &Verdict, model: &Verdict) -> bool {
    match model {
        Verdict::RefusedEarly(status) => {
            *codec == Verdict::Incomplete || *codec == Verdict::Refused(*status)
        }
        _ => codec == model,
    }
}

const MAX_HEAD: usize = 16 * 1024;
const MAX_FIELDS: usize = 128;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5: field-content is VCHAR, obs-text, SP and HTAB.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// A head as the model reads it, line by line: each line is checked as
/// soon as it is complete, and the part of a line the bytes end in as far
/// as it goes.
enum HeadRead<'a> {
    /// The lines (start line first) and the head's length.
    Lines(Vec<&'a [u8]>, usize),
    Not(Verdict),
}

fn read_head(bytes: &[u8], limit: usize, request: bool) -> HeadRead<'_> {
    let (refuse, too_large) = if request { (400, 431) } else { (502, 502) };
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    loop {
        let Some(lf) = bytes[at..].iter().position(|&b| b == b'\n') else {
            let partial = &bytes[at..bytes.len().min(limit)];
            if has_bare_cr(partial) {
                return HeadRead::Not(Verdict::Refused(refuse));
            }
            if !line_prefix_ok(lines.is_empty(), partial, request) {
                return HeadRead::Not(Verdict::RefusedEarly(refuse));
            }
            let verdict = if bytes.len() >= limit {
                Verdict::Refused(too_large)
            } else {
                Verdict::Incomplete
            };
            return HeadRead::Not(verdict);
        };
        let end = at + lf;
        if end >= limit {
            return HeadRead::Not(Verdict::Refused(too_large));
        }
        // A bare LF ends the line; a CR within it is a bare CR.
        let line = match bytes[at..end].split_last() {
            Some((b'\r', line)) if !line.contains(&b'\r') => line,
            _ => return HeadRead::Not(Verdict::Refused(refuse)),
        };
        at = end + 1;
        if line.is_empty() && !lines.is_empty() {
            return HeadRead::Lines(lines, at);
        }
        let valid = if lines.is_empty() {
            start_line(line, request).is_some()
        } else {
            field_line(line).is_ok()
        };
        if !valid && request && lines.is_empty() && other_major(line) {
            return HeadRead::Not(Verdict::Refused(505));
        }
        if !valid {
            return HeadRead::Not(Verdict::Refused(refuse));
        }
        lines.push(line);
        if lines.len() > MAX_FIELDS + 1 {
            return HeadRead::Not(Verdict::Refused(too_large));
        }
    }
}

/// The minor version of an `HTTP/1.x` version (RFC 9112 §2.3: `HTTP/`
/// DIGIT `.` DIGIT), later minor versions read as 1 (RFC 9110 §2.5: as
/// the highest minor version the recipient implements).
fn minor_of(version: &[u8]) -> Option<u8> {
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => {
            Some((*d > b'0') as u8)
        }
        _ => None,
    }
}

/// A request line whose only fault is an HTTP major version of 2 to 9
/// (RFC 9110 §15.6.6: 505 HTTP Version Not Supported).
fn other_major(line: &[u8]) -> bool {
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return false;
    };
    let as_1_1 = [method, target, b"HTTP/1.1"].join(&b' ');
    matches!(version, [b'H', b'T', b'T', b'P', b'/', b'2'..=b'9', b'.', d] if d.is_ascii_digit())
        && start_line(&as_1_1, true).is_some()
}

/// A request line (`METHOD SP target SP HTTP/1.x`: the method, the
/// target, the minor version) or a status line (`HTTP/1.x SP code [SP
/// reason]`: the code as text, an empty target, the minor version).
fn start_line(line: &[u8], request: bool) -> Option<(&[u8], &[u8], u8)> {
    if !request {
        let (version, rest) = line.split_at_checked(8)?;
        let minor = minor_of(version)?;
        let [b' ', a, b, c, reason @ ..] = rest else {
            return None;
        };
        let code = [*a, *b, *c];
        let reason_ok = match reason {
            [] => true,
            [b' ', text @ ..] => text
                .iter()
                .all(|&x| x == b'\t' || (0x20..0x7f).contains(&x) || x >= 0x80),
            _ => false,
        };
        // RFC 9110 §15: a status code is 100 to 599.
        let ok =
            code.iter().all(u8::is_ascii_digit) && (b'1'..=b'5').contains(&code[0]) && reason_ok;
        return ok.then_some((&line[9..12], &[][..], minor));
    }
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return None;
    };
    let minor = minor_of(version)?;
    let ok = !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && !target.is_empty()
        && target.iter().all(|b| (0x21..=0x7e).contains(b))
        // RFC 9112 §3.2: no form of request target has a fragment.
        && !target.contains(&b'#');
    ok.then_some((method, target, minor))
}

/// Whether the part of a line the bytes end in can still begin a valid
/// line: the start line (`start`) or a field line.
fn line_prefix_ok(start: bool, partial: &[u8], request: bool) -> bool {
    // A CR last is the start of its CRLF: the line before it is whole.
    if let Some((b'\r', line)) = partial.split_last() {
        return if start {
            start_line(line, request).is_some() || (request && other_major(line))
        } else {
            line.is_empty() || field_line(line).is_ok()
        };
    }
    if !start {
        return match partial.iter().position(|&b| b == b':') {
            None => partial.iter().all(|&b| is_tchar(b)),
            Some(colon) => {
                field_line(partial).is_ok()
                    || (colon > 0
                        && field_line(&partial[..=colon]).is_ok()
                        && partial[colon + 1..].iter().all(|&b| is_field_byte(b)))
            }
        };
    }
    if !request {
        let shape = b"HTTP/1.9 999 ";
        return partial.iter().zip(shape).all(|(&b, &s)| match s {
            b'9' => b.is_ascii_digit(),
            _ => b == s,
        }) && (partial.len() <= shape.len()
            || partial[shape.len()..]
                .iter()
                .all(|&x| x == b'\t' || (0x20..0x7f).contains(&x) || x >= 0x80));
    }
    let parts: Vec<&[u8]> = partial.split(|&b| b == b' ').collect();
    // `HTTP/` DIGIT `.` DIGIT so far, its major 1 to 9 (2 to 9 are
    // answered 505 once the line is whole).
    let version_ok = |v: &[u8]| {
        v.len() <= 8
            && v.iter()
                .zip(b"HTTP/9.9")
                .enumerate()
                .all(|(i, (&b, &s))| match (i, s) {
                    (5, _) => (b'1'..=b'9').contains(&b),
                    (_, b'9') => b.is_ascii_digit(),
                    _ => b == s,
                })
    };
    match parts[..] {
        [method] => method.iter().all(|&b| is_tchar(b)),
        [method, target] => {
            !method.is_empty()
                && method.iter().all(|&b| is_tchar(b))
                && target.iter().all(|b| (0x21..=0x7e).contains(b))
        }
        [method, target, version] => {
            !method.is_empty()
                && method.iter().all(|&b| is_tchar(b))
                && !target.is_empty()
                && target.iter().all(|b| (0x21..=0x7e).contains(b))
                && version_ok(version)
        }
        _ => false,
    }
}

/// Whether a line still waiting for its end already has a CR that is
/// not the start of its CRLF: a reader refuses as soon as the bytes it
/// has cannot begin a valid message, and waits only while they can.
fn has_bare_cr(partial: &[u8]) -> bool {
    partial
        .iter()
        .position(|&b| b == b'\r')
        .is_some_and(|cr| cr + 1 < partial.len())
}

/// A field line: `name ":" OWS value OWS` (no whitespace before the
/// colon, no obs-fold).
fn field_line(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), u16> {
    let colon = line.iter().position(|&b| b == b':').ok_or(400u16)?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(400);
    }
    let value = line[colon + 1..]
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == b'\t')
        .collect::<Vec<u8>>();
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    let value = value[..end].to_vec();
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(400);
    }
    Ok((name.to_vec(), value))
}

fn fields_of(lines: &[&[u8]]) -> Result<FieldList, u16> {
    if lines.len() > MAX_FIELDS {
        return Err(431);
    }
    lines.iter().map(|line| field_line(line)).collect()
}

fn values<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// Comma-separated list elements, OWS trimmed (empty ones kept).
fn elements(value: &[u8]) -> Vec<Vec<u8>> {
    value
        .split(|&b| b == b',')
        .map(|e| {
            let s = e
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(e.len());
            let t = e
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(s, |i| i + 1);
            e[s..t.max(s)].to_vec()
        })
        .collect()
}

/// `Transfer-Encoding`: Ok(true) for `chunked` alone; Err(501) for
/// codings before a final `chunked`; Err(400) otherwise.
fn coding(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<Result<(), u16>> {
    let list: Vec<Vec<u8>> = values(fields, "transfer-encoding")
        .flat_map(elements)
        .collect();
    if list.is_empty() && values(fields, "transfer-encoding").next().is_none() {
        return None;
    }
    if list
        .iter()
        .any(|e| e.is_empty() || !e.iter().all(|&b| is_tchar(b)))
    {
        return Some(Err(400));
    }
    let chunked = list
        .iter()
        .filter(|e| e.eq_ignore_ascii_case(b"chunked"))
        .count();
    let last_chunked = list
        .last()
        .is_some_and(|e| e.eq_ignore_ascii_case(b"chunked"));
    Some(match (chunked, last_chunked, list.len()) {
        (1, true, 1) => Ok(()),
        (1, true, _) => Err(501),
        _ => Err(400),
    })
}

/// `Content-Length`: equal decimal numbers; Err when not.
fn length(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for value in values(fields, "content-length") {
        for e in elements(value) {
            if e.is_empty() || e.len() > 19 || !e.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(&e).unwrap().parse().map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A chunked body's data and trailers.
type Chunked = (Vec<u8>, FieldList);

/// The size of a chunk from its size line: 1 to 16 hex digits, optional
/// whitespace (BWS), then extensions after `;` with no control character
/// but HTAB. `partial`: the line's end has not come (None: it cannot be
/// one).
fn chunk_size_line(line: &[u8], partial: bool) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let ext = &rest[ws..];
    let shaped = digits <= 16
        && (digits > 0 || (partial && rest.is_empty()))
        && (ext.is_empty() || ext[0] == b';')
        && !ext.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f));
    if !shaped {
        return None;
    }
    Some(u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).unwrap_or(0))
}

/// A chunked body from `bytes`: Ok(None) when it ends early. `bare_lf`:
/// chunk lines may end in LF (a response's).
fn chunked(bytes: &[u8], bare_lf: bool) -> Result<Option<Chunked>, Verdict> {
    let refused = Verdict::Refused(400);
    let mut at = 0;
    let mut data = Vec::new();
    let line = |at: usize| -> Result<Option<(&[u8], usize)>, Verdict> {
        let Some(lf) = bytes[at..].iter().position(|&b| b == b'\n') else {
            return if has_bare_cr(&bytes[at..]) || bytes.len() - at > 4096 {
                Err(Verdict::Refused(400))
            } else {
                Ok(None)
            };
        };
        let end = at + lf;
        if end > at && bytes[end - 1] == b'\r' {
            return Ok(Some((&bytes[at..end - 1], end + 1)));
        }
        if bare_lf {
            Ok(Some((&bytes[at..end], end + 1)))
        } else {
            Err(Verdict::Refused(400))
        }
    };
    loop {
        let Some((size_line, next)) = line(at)? else {
            let partial = bytes[at..].strip_suffix(b"\r").unwrap_or(&bytes[at..]);
            return match chunk_size_line(partial, true) {
                Some(_) => Ok(None),
                None => Err(Verdict::RefusedEarly(400)),
            };
        };
        let Some(size) = chunk_size_line(size_line, false) else {
            return Err(refused);
        };
        at = next;
        if size == 0 {
            break;
        }
        let size = size as usize;
        if bytes.len() - at < size {
            return Ok(None);
        }
        data.extend_from_slice(&bytes[at..at + size]);
        at += size;
        match &bytes[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] if bare_lf => at += 1,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(refused),
        }
    }
    // Trailers: field lines, then an empty line.
    let mut trailers = Vec::new();
    loop {
        let Some((line, next)) = line(at)? else {
            return if line_prefix_ok(false, &bytes[at..], true) {
                Ok(None)
            } else {
                Err(Verdict::RefusedEarly(400))
            };
        };
        at = next;
        if line.is_empty() {
            // Trailers are compared by name (lower case) and value.
            trailers.sort();
            return Ok(Some((data, trailers)));
        }
        if line.contains(&b'\r') || trailers.len() >= MAX_FIELDS {
            return Err(refused);
        }
        let Ok((name, value)) = field_line(line) else {
            return Err(refused);
        };
        trailers.push((name.to_ascii_lowercase(), value));
    }
}

/// The model's reading of a request.
fn model_request(bytes: &[u8]) -> Verdict {
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let mut start = 0;
    while bytes[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let (lines, head_len) = match read_head(&bytes[start..], MAX_HEAD - start, true) {
        HeadRead::Lines(lines, len) => (lines, len),
        HeadRead::Not(verdict) => return verdict,
    };
    let (method, target, minor) = start_line(lines[0], true).expect("checked");
    let fields = match fields_of(&lines[1..]) {
        Ok(f) => f,
        Err(status) => return Verdict::Refused(status),
    };
    let body_bytes = &bytes[start + head_len..];
    let has_te = values(&fields, "transfer-encoding").next().is_some();
    let has_cl = values(&fields, "content-length").next().is_some();
    if has_te && (has_cl || minor == 0) {
        return Verdict::Refused(400);
    }
    let (body, trailers) = match coding(&fields) {
        Some(Err(status)) => return Verdict::Refused(status),
        Some(Ok(())) => match chunked(body_bytes, false) {
            Ok(Some(found)) => found,
            Ok(None) => return Verdict::Incomplete,
            Err(verdict) => return verdict,
        },
        None => match length(&fields) {
            Err(()) => return Verdict::Refused(400),
            Ok(n) => {
                let n = n.unwrap_or(0) as usize;
                if body_bytes.len() < n {
                    return Verdict::Incomplete;
                }
                (body_bytes[..n].to_vec(), Vec::new())
            }
        },
    };
    let start = format!(
        "{} {}",
        String::from_utf8_lossy(method),
        String::from_utf8_lossy(target)
    );
    Verdict::Read(Message {
        start,
        minor,
        fields,
        body,
        trailers,
    })
}

/// The model's reading of a response to a GET (HEAD when `head`).
fn model_response(bytes: &[u8], head: bool) -> Verdict {
    let (lines, head_len) = match read_head(bytes, 64 * 1024, false) {
        HeadRead::Lines(lines, len) => (lines, len),
        HeadRead::Not(verdict) => return verdict,
    };
    let (code, _, minor) = start_line(lines[0], false).expect("checked");
    let code: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
    let Ok(fields) = fields_of(&lines[1..]) else {
        return Verdict::Refused(502);
    };
    let Ok(declared) = length(&fields) else {
        return Verdict::Refused(502);
    };
    // RFC 9112 §6.1: Transfer-Encoding on HTTP/1.0 is faulty framing.
    if minor == 0 && values(&fields, "transfer-encoding").next().is_some() {
        return Verdict::Refused(502);
    }
    let coding = coding(&fields);
    if coding.is_some() && declared.is_some() {
        return Verdict::Refused(502);
    }
    let body_bytes = &bytes[head_len..];
    let no_body = head || (100..200).contains(&code) || code == 204 || code == 304;
    let (body, trailers) = match coding {
        _ if no_body => (Vec::new(), Vec::new()),
        Some(Ok(())) => match chunked(body_bytes, true) {
            Ok(Some(found)) => found,
            Ok(None) => return Verdict::Incomplete,
            Err(Verdict::RefusedEarly(_)) => return Verdict::RefusedEarly(502),
            Err(_) => return Verdict::Refused(502),
        },
        Some(Err(_)) => return Verdict::Refused(502),
        None => match declared {
            Some(n) if body_bytes.len() < n as usize => return Verdict::Incomplete,
            Some(n) => (body_bytes[..n as usize].to_vec(), Vec::new()),
            // Until the connection closes: all of it.
            None => (body_bytes.to_vec(), Vec::new()),
        },
    };
    Verdict::Read(Message {
        start: code.to_string(),
        minor,
        fields,
        body,
        trailers,
    })
}

// === the codec under test ===

/// Trailers as the model gives them: by name (lower case), sorted.
fn map_fields(map: &http::HeaderMap) -> FieldList {
    let mut fields: FieldList = map
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    fields.sort();
    fields
}

/// Decodes a body with `decoder` from `rest` (fed in pieces cut at
/// `cuts`), as the proxy reads one: the data and trailers, or how it ended.
fn decode_body(
    mut decoder: Decoder,
    rest: &[u8],
    cuts: &mut dyn Iterator<Item = usize>,
    eof_ends: bool,
) -> Result<Option<(Vec<u8>, FieldList)>, ()> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf).map_err(|_| ())? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(t) => return Ok(Some((body, map_fields(&t)))),
            Decoded::End => return Ok(Some((body, Vec::new()))),
            Decoded::More if fed == rest.len() => {
                if eof_ends && decoder.at_eof().is_ok() {
                    return Ok(Some((body, Vec::new())));
                }
                return Ok(None);
            }
            Decoded::More => {
                let n = cuts.next().unwrap_or(rest.len()).clamp(1, rest.len() - fed);
                buf.extend_from_slice(&rest[fed..fed + n]);
                fed += n;
            }
        }
    }
}

/// The codec's reading of a request, its head fed in pieces.
fn codec_request(bytes: &[u8], cuts: &mut dyn Iterator<Item = usize>) -> Verdict {
    if bytes.is_empty() {
        return Verdict::Incomplete;
    }
    let mut spans = Vec::new();
    let mut end = 0;
    let line = loop {
        end = (end + cuts.next().unwrap_or(bytes.len())).clamp(1, bytes.len());
        match head::parse_request(&bytes[..end], MAX_HEAD, &mut spans) {
            Ok(Some(line)) => break line,
            Ok(None) if end == bytes.len() => return Verdict::Incomplete,
            Ok(None) => {}
            Err(HeadError::TooLarge) => return Verdict::Refused(431),
            Err(HeadError::Malformed(_)) => return Verdict::Refused(400),
            Err(HeadError::Version) => return Verdict::Refused(505),
        }
    };
    let fields = FieldsOf::new(bytes, &spans);
    let framing = match framing::request(&fields, line.minor) {
        Ok(f) => f,
        Err(refused) => return Verdict::Refused(refused.status.as_u16()),
    };
    let (body, trailers) =
        match decode_body(Decoder::new(framing, true), &bytes[line.len..], cuts, false) {
            Ok(Some(found)) => found,
            Ok(None) => return Verdict::Incomplete,
            Err(()) => return Verdict::Refused(400),
        };
    let target = String::from_utf8_lossy(&bytes[line.target.0..line.target.1]);
    Verdict::Read(Message {
        start: format!("{} {target}", line.method),
        minor: line.minor,
        fields: fields
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect(),
        body,
        trailers,
    })
}

/// The codec's reading of a response to a GET (HEAD when `head`).
fn codec_response(
    bytes: &[u8],
    head_request: bool,
    cuts: &mut dyn Iterator<Item = usize>,
) -> Verdict {
    let mut spans = Vec::new();
    let line = match head::parse_response(bytes, &mut spans) {
        Ok(Some(line)) => line,
        Ok(None) => return Verdict::Incomplete,
        Err(_) => return Verdict::Refused(502),
    };
    let fields = FieldsOf::new(bytes, &spans);
    let Ok(framed) = framing::response(&fields, line.status, head_request, line.minor) else {
        return Verdict::Refused(502);
    };
    let decoder = Decoder::new(framed.framing, false);
    let until_close = framed.framing == Framing::UntilClose;
    let (body, trailers) = match decode_body(decoder, &bytes[line.len..], cuts, until_close) {
        Ok(Some(found)) => found,
        Ok(None) => return Verdict::Incomplete,
        Err(()) => return Verdict::Refused(502),
    };
    Verdict::Read(Message {
        start: line.status.as_u16().to_string(),
        minor: line.minor,
        fields: fields
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect(),
        body,
        trailers,
    })
}

/// `httparse`'s reading of a head the model accepted: its fields must be
/// the model's.
fn httparse_agrees(bytes: &[u8], model: &Message, request: bool) -> bool {
    // `httparse` reads HTTP/1.0 and 1.1 only: a later minor version is
    // shown to it as 1.1, as the model reads it.
    let mut bytes = bytes.to_vec();
    let skipped = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line_end = skipped
        + bytes[skipped..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(0);
    let version_at = if request {
        line_end.saturating_sub(8)
    } else {
        skipped
    };
    if let [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor, ..] = &mut bytes[version_at..]
        && (b'2'..=b'9').contains(minor)
    {
        *minor = b'1';
    }
    let bytes = &bytes[..];
    let mut room = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
    let fields = if request {
        let mut req = httparse::Request::new(&mut room);
        match req.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => req.headers.to_vec(),
            _ => return false,
        }
    } else {
        let mut resp = httparse::Response::new(&mut room);
        match resp.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => resp.headers.to_vec(),
            _ => return false,
        }
    };
    let fields: FieldList = fields
        .iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect();
    fields == model.fields
}

// === generated messages ===

/// xorshift64*: a small deterministic generator.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, options: &'a [T]) -> &'a T {
        &options[self.below(options.len())]
    }

    /// `min` to `min + extra` bytes from `alphabet`.
    fn bytes(&mut self, min: usize, extra: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = min + self.below(extra + 1);
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }

    /// Cut sizes for feeding a reader in pieces (all at once, often).
    fn cuts(&mut self) -> Vec<usize> {
        if self.chance(40) {
            return Vec::new();
        }
        (0..64).map(|_| 1 + self.below(24)).collect()
    }
}

const TOKEN: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~";
const VALUE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 -=;,./:\"()\t\x80\xff";
const PATH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~/%?=&:@!$'()*+,;";

/// An HTTP version: mostly 1.1, some 1.0, and now and then a later minor
/// (read as 1.1) or another major version (a request's is answered 505,
/// a response's 502).
fn version(dice: &mut Dice) -> String {
    match dice.below(100) {
        0..=84 => "HTTP/1.1".into(),
        85..=94 => "HTTP/1.0".into(),
        95..=97 => format!("HTTP/1.{}", 2 + dice.below(8)),
        _ => format!("HTTP/{}.{}", 2 + dice.below(8), dice.below(10)),
    }
}

/// A well-formed message: a start line, fields, and a body framed by a
/// length, chunked (with extensions and trailers), or (a response) not.
fn generate(dice: &mut Dice, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if request {
        let method = dice.pick(&[
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "X-CUSTOM",
        ]);
        let target = format!("/{}", String::from_utf8(dice.bytes(0, 30, PATH)).unwrap());
        let version = version(dice);
        out.extend_from_slice(format!("{method} {target} {version}\r\n").as_bytes());
    } else {
        let code = dice.pick(&[200, 201, 204, 299, 304, 404, 500, 103]);
        let version = version(dice);
        out.extend_from_slice(format!("{version} {code} Reason\r\n").as_bytes());
    }
    for _ in 0..dice.below(8) {
        let name = dice.bytes(1, 12, TOKEN);
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            continue;
        }
        let value = dice.bytes(0, 20, VALUE);
        let ows = *dice.pick(&["", " ", "\t", "  "]);
        write::field(
            &mut out,
            &name,
            &[ows.as_bytes(), value.as_slice()].concat(),
        );
    }
    let body = dice.bytes(0, 60, VALUE);
    match dice.below(3) {
        0 if !body.is_empty() || dice.chance(30) => {
            write::content_length(&mut out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        }
        1 => {
            write::field(&mut out, b"Transfer-Encoding", b"chunked");
            out.extend_from_slice(b"\r\n");
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = (1 + dice.below(20)).min(rest.len());
                write::chunk_size_line(&mut out, n);
                if dice.chance(15) {
                    // An extension: `;name=value` before the line end.
                    out.truncate(out.len() - 2);
                    out.extend_from_slice(b";ext=1\r\n");
                }
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            let mut trailers = http::HeaderMap::new();
            if dice.chance(30) {
                trailers.insert("x-sum", http::HeaderValue::from_static("9"));
            }
            write::last_chunk(&mut out, Some(&trailers));
        }
        _ => {
            out.extend_from_slice(b"\r\n");
            if !request {
                out.extend_from_slice(&body);
            }
        }
    }
    out
}

/// A defect at a random place, or one of the ambiguities the proxy must
/// refuse.
fn mutate(dice: &mut Dice, mut bytes: Vec<u8>) -> Vec<u8> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |i| i + 2);
    let anywhere = dice.below(bytes.len().max(1));
    let in_head = 1 + dice.below(head_end.max(2) - 1);
    let insert = |bytes: &mut Vec<u8>, at: usize, what: &[u8]| {
        let at = at.min(bytes.len());
        bytes.splice(at..at, what.iter().copied());
    };
    match dice.below(15) {
        0 => insert(&mut bytes, in_head, b"\n"),
        1 => insert(&mut bytes, in_head, b"\r"),
        2 => insert(&mut bytes, in_head, b"\0"),
        3 => insert(&mut bytes, head_end, b"X-Folded: a\r\n b\r\n"),
        4 => insert(&mut bytes, head_end, b"Host : a\r\n"),
        5 => insert(
            &mut bytes,
            head_end,
            b"Content-Length: 3\r\nContent-Length: 4\r\n",
        ),
        6 => insert(
            &mut bytes,
            head_end,
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        ),
        7 => {
            let coding = *dice.pick::<&[u8]>(&[
                b"Transfer-Encoding: chunked, gzip\r\n",
                b"Transfer-Encoding: gzip, chunked\r\n",
                b"Transfer-Encoding: gzip\r\n",
                b"Transfer-Encoding: ,chunked\r\n",
                b"Transfer-Encoding: chunked;q=1\r\n",
            ]);
            insert(&mut bytes, head_end, coding);
        }
        8 => {
            let size =
                *dice.pick::<&[u8]>(&[b"zz", b"0x5", b"-1", b"123456789012345678", b"", b"5\x0c"]);
            insert(&mut bytes, head_end, b"Transfer-Encoding: chunked\r\n");
            let body_at = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(bytes.len(), |i| i + 4);
            bytes.truncate(body_at);
            bytes.extend_from_slice(size);
            bytes.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        }
        9 => {
            if let Some(b) = bytes.get_mut(anywhere) {
                *b = dice.next() as u8;
            }
        }
        10 => {
            if anywhere < bytes.len() {
                bytes.remove(anywhere);
            }
        }
        11 => insert(&mut bytes, anywhere, &[dice.next() as u8]),
        12 => bytes.truncate(anywhere),
        13 => {
            // A fragment in a request's target (or a reason phrase).
            let at = bytes.iter().position(|&b| b == b' ').map_or(0, |i| i + 2);
            insert(&mut bytes, at, b"#frag");
        }
        _ => {
            // Each line end a bare LF: a whole message in LFs only.
            bytes = String::from_utf8_lossy(&bytes)
                .replace("\r\n", "\n")
                .into_bytes();
        }
    }
    bytes
}

fn cases() -> (u64, usize) {
    let seed = std::env::var("SLUICE_HTTP1_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1e55_c0de_cafe);
    let cases = std::env::var("SLUICE_HTTP1_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    (seed, cases)
}

/// Runs `check` on generated messages, half of them mutated; returns how
/// many each reader refused, to show the defects were met.
fn run(request: bool, check: &mut dyn FnMut(&[u8], &mut Dice) -> Verdict) -> (usize, usize) {
    let (seed, cases) = cases();
    let mut dice = Dice(seed | 1);
    let (mut read, mut refused) = (0, 0);
    for case in 0..cases {
        let mut bytes = generate(&mut dice, request);
        if case % 2 == 1 {
            bytes = mutate(&mut dice, bytes);
        }
        match check(&bytes, &mut dice) {
            Verdict::Read(_) => read += 1,
            Verdict::Refused(_) | Verdict::RefusedEarly(_) => refused += 1,
            Verdict::Incomplete => {}
        }
    }
    (read, refused)
}

#[test]
fn the_request_codec_agrees_with_the_model_on_generated_and_mutated_requests() {
    let (read, refused) = run(true, &mut |bytes, dice| {
        let model = model_request(bytes);
        let cuts = dice.cuts();
        let codec = codec_request(bytes, &mut cuts.into_iter());
        assert!(
            agree(&codec, &model),
            "the codec and the model disagree on {:?}: codec {codec:?}, model {model:?}",
            String::from_utf8_lossy(bytes)
        );
        if let Verdict::Read(message) = &model {
            let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert!(
                httparse_agrees(&bytes[..head_end], message, true),
                "httparse reads other fields in {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        codec
    });
    assert!(
        read > 100 && refused > 100,
        "read {read}, refused {refused}"
    );
}

#[test]
fn the_response_codec_agrees_with_the_model_on_generated_and_mutated_responses() {
    let (read, refused) = run(false, &mut |bytes, dice| {
        let head = dice.chance(10);
        let model = model_response(bytes, head);
        let cuts = dice.cuts();
        let codec = codec_response(bytes, head, &mut cuts.into_iter());
        assert!(
            agree(&codec, &model),
            "the codec and the model disagree on {:?} (HEAD: {head}): codec {codec:?}, model {model:?}",
            String::from_utf8_lossy(bytes)
        );
        codec
    });
    assert!(
        read > 100 && refused > 100,
        "read {read}, refused {refused}"
    );
}

/// What the writers write, the model reads back as written: status
/// lines, fields, lengths, chunk framing and trailers.
#[test]
fn what_the_writers_write_the_model_reads_back() {
    let (seed, cases) = cases();
    let mut dice = Dice(seed.rotate_left(17) | 1);
    for _ in 0..cases {
        let status = StatusCode::from_u16(*dice.pick(&[200, 201, 299, 404, 502])).unwrap();
        // The client's version: the status line says HTTP/1.1 either way
        // (RFC 9110 §6.2), but an HTTP/1.0 client gets no chunked coding.
        let client_minor = if dice.chance(90) { 1 } else { 0 };
        let mut out = Vec::new();
        write::status_line(&mut out, status);
        let mut fields = Vec::new();
        for _ in 0..dice.below(6) {
            let name = dice.bytes(1, 10, TOKEN);
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                continue;
            }
            let value = dice.bytes(0, 15, b"abc xyz09=;,");
            let value = value.trim_ascii().to_vec();
            write::field(&mut out, &name, &value);
            fields.push((name, value));
        }
        let frames: Vec<Vec<u8>> = (0..dice.below(5))
            .map(|_| dice.bytes(1, 40, VALUE))
            .collect();
        let body: Vec<u8> = frames.concat();
        let mut trailers = Vec::new();
        // HTTP/1.0 has no chunked coding.
        if client_minor == 0 || dice.chance(50) {
            write::content_length(&mut out, body.len() as u64);
            fields.push((
                b"content-length".to_vec(),
                body.len().to_string().into_bytes(),
            ));
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        } else {
            write::field(&mut out, b"transfer-encoding", b"chunked");
            fields.push((b"transfer-encoding".to_vec(), b"chunked".to_vec()));
            out.extend_from_slice(b"\r\n");
            for frame in &frames {
                write::chunk_size_line(&mut out, frame.len());
                out.extend_from_slice(frame);
                out.extend_from_slice(b"\r\n");
            }
            let mut map = http::HeaderMap::new();
            if dice.chance(50) {
                map.insert("x-checksum", http::HeaderValue::from_static("1f2e"));
                trailers.push((b"x-checksum".to_vec(), b"1f2e".to_vec()));
            }
            write::last_chunk(&mut out, Some(&map));
        }
        let expected = Message {
            start: status.as_u16().to_string(),
            minor: 1,
            fields,
            body,
            trailers,
        };
        assert_eq!(
            model_response(&out, false),
            Verdict::Read(expected),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// The model itself reads the RFC's own examples as the RFC says.
#[test]
fn the_model_reads_the_rfcs_examples() {
    let Verdict::Read(m) = model_request(
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;e=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n",
    ) else {
        panic!("a chunked request")
    };
    assert_eq!(
        (m.start.as_str(), &m.body[..]),
        ("POST /x", &b"Wikipedia"[..])
    );
    assert_eq!(m.trailers, [(b"x-t".to_vec(), b"1".to_vec())]);
    assert_eq!(
        model_request(b"GET / HTTP/1.1\nHost: a\n\n"),
        Verdict::Refused(400)
    );
    assert_eq!(
        model_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        Verdict::Refused(501)
    );
    assert_eq!(
        model_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
            false
        ),
        Verdict::Read(Message {
            start: "200".into(),
            minor: 1,
            fields: vec![(b"Transfer-Encoding".to_vec(), b"chunked".to_vec())],
            body: b"hello".to_vec(),
            trailers: Vec::new(),
        })
    );
    let _ = Method::GET;
}
