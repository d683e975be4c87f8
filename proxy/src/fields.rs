//! Rules on header fields and request targets that every request path
//! applies the same way (the own HTTP/1.1 path, hyper's HTTP/1.1 and
//! HTTP/2 paths, and the own upstream codec). This module only looks at
//! bytes; it imports nothing of the proxy's.
//!
//! - **Fields a client may not send on.** `X-Sluice-*` is the proxy's own
//!   namespace (`X-Sluice-Mirror: 1` marks its mirror copies, which the
//!   proxy reference, docs/proxy.md, invites backends to treat as free of side effects): a client's
//!   is always dropped. A name with `_` is dropped unless the route keeps
//!   such names ([`ClientField::Underscored`]); the underscore spellings of
//!   the fields the proxy sets or frames by, and of the whole
//!   `X-Forwarded-*` family, are dropped even then
//!   ([`ClientField::Reserved`]), since a backend that maps names
//!   CGI-style reads `X_Forwarded_For` as `X-Forwarded-For`.
//! - **Request trailers** ([`trailer_passes`]) lose what a head would:
//!   the fields above, and the ones the request paths set, frame by or
//!   treat as hop-by-hop (a backend that merges trailers into the head
//!   would read them as the proxy's).
//! - **Hosts.** A Host field, an absolute-form target's authority and an
//!   HTTP/2 `:authority` must each be `host [ ":" port ]` (RFC 3986: a
//!   registered name or IPv4 address, or a bracketed IPv6 address; a port
//!   of digits), so user info (`a@b`) never reaches a backend or a route
//!   match.
//! - **Transfer codings.** A request's `Transfer-Encoding` must be exactly
//!   `chunked` (any case, once): a list that ends in `chunked` after
//!   other codings is 501 (nginx's answer: the proxy decodes none of
//!   them), one that does not end in `chunked` (its length cannot be
//!   told, RFC 9112 §6.3) or is malformed (an empty element, `chunked`
//!   twice, parameters) 400. A response's must be exactly `chunked` too:
//!   any other coding would have to be undone before the proxy re-frames
//!   the body (502).
//! - **Field access.** [`Fields`] is how the rules, the routing and the
//!   A/B rules read a message's fields, whatever holds them: a head the
//!   proxy's own HTTP/1.1 codec parsed, or an `http::HeaderMap`.
//! - **Lengths.** A `Content-Length` is one or more equal decimal numbers
//!   (`5`, `5, 5`, two fields of `5`); anything else is not a length.
//! - **Paths.** An escape of an unreserved character (`%7E`, `%61`) means
//!   that character ([`decode_unreserved`]): the routing reads a request's
//!   path so, and the config's path matches are read the same way.

/// A message's header fields, whatever holds them.
pub trait Fields: Sync {
    /// Calls `each` with every field's name (as received: compare it
    /// without case) and value, in order.
    fn each<'s>(&'s self, each: &mut dyn FnMut(&'s [u8], &'s [u8]));

    /// Calls `each` with the value of every field named `name` (lower
    /// case), in order, until it returns true; whether one did.
    fn values<'s>(&'s self, name: &str, each: &mut dyn FnMut(&'s [u8]) -> bool) -> bool {
        let mut found = false;
        self.each(&mut |field, value| {
            if !found && field.eq_ignore_ascii_case(name.as_bytes()) && each(value) {
                found = true;
            }
        });
        found
    }

    /// The value of the first field named `name` (lower case).
    fn first<'s>(&'s self, name: &str) -> Option<&'s [u8]> {
        let mut first = None;
        self.values(name, &mut |value| {
            first = Some(value);
            true
        });
        first
    }
}

impl Fields for http::HeaderMap {
    fn each<'s>(&'s self, each: &mut dyn FnMut(&'s [u8], &'s [u8])) {
        for (name, value) in self {
            each(name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn values<'s>(&'s self, name: &str, each: &mut dyn FnMut(&'s [u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| each(v.as_bytes()))
    }
}

/// Methods whose requests carry a body as a rule: one without is sent
/// with `content-length: 0` (RFC 9110 §8.6), as nginx and hyper do, and
/// so is its mirror copy.
pub fn expects_body(method: &http::Method) -> bool {
    use http::Method;
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Whether the comma-separated list `value` has `token` (any case).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The field names `Connection` fields list (a message's own hop-by-hop
/// fields, not passed on): the first few inline, since one message in
/// many names any, the rest, if ever, on the heap.
#[derive(Default)]
pub struct ConnectionNames<'a> {
    first: [&'a [u8]; 4],
    count: usize,
    more: Vec<&'a [u8]>,
}

impl<'a> ConnectionNames<'a> {
    /// Adds the names of one `Connection` value, a comma-separated list,
    /// but those `skip` says (and empty members).
    pub fn add_list(&mut self, value: &'a [u8], skip: impl Fn(&[u8]) -> bool) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.is_empty() || skip(token) {
                continue;
            }
            if let Some(slot) = self.first.get_mut(self.count) {
                *slot = token;
                self.count += 1;
            } else {
                self.more.push(token);
            }
        }
    }

    /// Whether `name` is listed (any case).
    pub fn lists(&self, name: &[u8]) -> bool {
        self.first[..self.count]
            .iter()
            .chain(&self.more)
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// What the request paths do with a client's header field, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientField {
    /// Passed on (subject to the paths' own hop-by-hop and forwarding rules).
    Ordinary,
    /// `X-Sluice-*`, or the underscore spelling of a field the proxy sets
    /// or frames by: never passed on.
    Reserved,
    /// A name with `_`: passed on only on routes with
    /// `underscore_headers: keep`.
    Underscored,
}

/// The most fields a client's request head or trailer section may have,
/// over either protocol (431 for a head, a malformed body for trailers),
/// and an HTTP/1.x backend's response head or trailers (502).
pub const MAX_FIELDS: usize = 128;

/// The proxy's own field namespace.
const PROXY_PREFIX: &[u8] = b"x-sluice-";

/// The forwarding fields' family: the proxy sets `X-Forwarded-For`,
/// `-Proto` and `-Host`, and passes on the others (`-Ssl`, `-Port`,
/// `-Prefix`, …) only from trusted proxies (`forwarding.trusted_hops`).
const FORWARDED_PREFIX: &[u8] = b"x-forwarded-";

/// Whether `name` (any case) is of the `X-Forwarded-*` family.
pub fn is_forwarded_family(name: &[u8]) -> bool {
    name.len() >= FORWARDED_PREFIX.len()
        && name[..FORWARDED_PREFIX.len()].eq_ignore_ascii_case(FORWARDED_PREFIX)
}

/// Fields whose underscore spellings are never passed on: what the proxy
/// sets (forwarding; the `X-Forwarded-*` family is reserved whole, by
/// [`FORWARDED_PREFIX`]), frames by, or treats as hop-by-hop.
const RESERVED_SPELLINGS: [&[u8]; 11] = [
    b"x-real-ip",
    b"forwarded",
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
    b"trailer",
];

/// What becomes of a client's field named `name` (any case).
pub fn client_field(name: &[u8]) -> ClientField {
    let underscored = name.contains(&b'_');
    let dashed = |i: usize| -> u8 {
        match name[i] {
            b'_' => b'-',
            b => b.to_ascii_lowercase(),
        }
    };
    let spelled =
        |known: &[u8]| name.len() >= known.len() && (0..known.len()).all(|i| dashed(i) == known[i]);
    if spelled(PROXY_PREFIX) || (underscored && spelled(FORWARDED_PREFIX)) {
        return ClientField::Reserved;
    }
    if !underscored {
        return ClientField::Ordinary;
    }
    if RESERVED_SPELLINGS
        .iter()
        .any(|known| known.len() == name.len() && spelled(known))
    {
        ClientField::Reserved
    } else {
        ClientField::Underscored
    }
}

/// Fields only a head may carry, which no trailer section passes on, a
/// client's or a backend's: hop-by-hop, framing and routing fields.
const HEAD_ONLY: [&[u8]; 10] = [
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"trailer",
    b"http2-settings",
    b"content-length",
];

/// What a client's trailer section does not pass on either: `Expect` and
/// the forwarding fields (the `X-Forwarded-*` family too), which only a
/// head may carry, set by the proxy or a trusted one.
const NOT_CLIENT_TRAILERS: [&[u8]; 3] = [b"expect", b"x-real-ip", b"forwarded"];

/// Whether a route's header modifier may not touch the field `name`
/// (any case): the proxy owns it, setting it itself (`Host`, forwarding
/// fields, `X-Sluice-*`) or framing the message and the connection by it
/// (`Content-Length`, `Transfer-Encoding`, hop-by-hop fields, `Proxy-*`,
/// `Trailer`), or answering it itself (`Expect`, `HTTP2-Settings`).
/// Their underscore spellings (`X_Forwarded_For`, `Content_Length`,
/// `x_sluice_*`) too: the proxy drops those from clients
/// ([`client_field`]) as backends behind CGI-style servers read them as
/// the dashed names, so a route may not send them either.
pub fn proxy_owned_field(name: &[u8]) -> bool {
    if name.contains(&b'_') {
        let dashed: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        return client_field(name) == ClientField::Reserved || dashed_owned(&dashed);
    }
    dashed_owned(name)
}

/// [`proxy_owned_field`] for a name spelled with `-`.
fn dashed_owned(name: &[u8]) -> bool {
    const OWNED: [&[u8]; 12] = [
        b"expect",
        b"http2-settings",
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"upgrade",
        b"trailer",
        b"forwarded",
        b"x-real-ip",
    ];
    let starts = |prefix: &[u8]| {
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    OWNED.iter().any(|n| n.eq_ignore_ascii_case(name))
        || starts(b"proxy-")
        || is_forwarded_family(name)
        || starts(PROXY_PREFIX)
        || name.first() == Some(&b':')
}

/// Whether a client's trailer field named `name` goes on to a backend
/// (see the module docs); `keep_underscores`: the route keeps names with
/// `_`.
pub fn trailer_passes(name: &[u8], keep_underscores: bool) -> bool {
    if !answer_trailer_passes(name)
        || is_forwarded_family(name)
        || NOT_CLIENT_TRAILERS
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    {
        return false;
    }
    match client_field(name) {
        ClientField::Ordinary => true,
        ClientField::Underscored => keep_underscores,
        ClientField::Reserved => false,
    }
}

/// What is wrong with a request target's bytes, if anything, for an
/// HTTP/1.1 request line (an HTTP/1.1 client's, or the one an HTTP/2
/// `:path` becomes): a byte that is not visible ASCII, or a fragment
/// (`#`), which no form of request target has (RFC 9112 §3.2); routed with
/// it, `/admin#/../x` would pass a path rule as `/x` and reach a backend
/// that reads `/admin`.
pub fn target_defect(target: &[u8]) -> Option<&'static str> {
    if !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Some("the request target has a byte that is not visible ASCII")
    } else if target.contains(&b'#') {
        Some("the request target has a fragment (`#`)")
    } else {
        None
    }
}

/// Whether a backend's trailer field named `name` goes on to the client:
/// not one only a head may carry (RFC 9110 §6.5.1: framing, routing and
/// hop-by-hop fields), nor a pseudo-field.
pub fn answer_trailer_passes(name: &[u8]) -> bool {
    name.first() != Some(&b':') && !HEAD_ONLY.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether `value` is `uri-host [ ":" port ]` (RFC 3986): a registered
/// name or IPv4 address (unreserved characters, sub-delims and `%`), or an
/// IPv6 address in brackets, then optionally `:` and up to five digits. No
/// user info, path, space or second colon, and no empty label in a name
/// (`a..b`, `.a`; one final dot, `a.`, is the root's and allowed).
pub fn is_host_and_port(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &value[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let labels_ok = |name: &[u8]| {
        let name = name.strip_suffix(b".").unwrap_or(name);
        !name.is_empty() && name.split(|&b| b == b'.').all(|label| !label.is_empty())
    };
    !host.is_empty()
        && (host[0] == b'[' || (host.iter().all(|&b| is_reg_name_byte(b)) && labels_ok(host)))
        && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// RFC 3986's unreserved characters, sub-delims and `%`: what a
/// registered name may hold.
pub fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// RFC 3986's unreserved characters, sub-delims, `:` and `%`: what both a
/// host and a path may hold.
pub fn is_uri_common(b: u8) -> bool {
    is_reg_name_byte(b) || b == b':'
}

/// What a message's `Transfer-Encoding` fields say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferCoding {
    /// No `Transfer-Encoding` field.
    Absent,
    /// Exactly `chunked`.
    Chunked,
    /// A list that is not one (an empty element, `chunked` more than
    /// once, parameters, spaces within an element).
    Malformed,
    /// Codings before a final `chunked` (`gzip, chunked`, `identity,
    /// chunked`): the proxy decodes none of them.
    Unsupported,
    /// A list whose last coding is not `chunked` (`gzip`, `chunked,
    /// gzip`): a request's length cannot be told (RFC 9112 §6.3).
    NotChunkedLast,
}

/// Reads the values of every `Transfer-Encoding` field of a message.
pub fn transfer_coding<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> TransferCoding {
    let mut reader = CodingReader::default();
    for value in values {
        reader.push(value);
    }
    reader.coding()
}

/// The `Transfer-Encoding` of a message's fields.
pub fn transfer_coding_in(fields: &dyn Fields) -> TransferCoding {
    let mut reader = CodingReader::default();
    fields.values("transfer-encoding", &mut |value| {
        reader.push(value);
        false
    });
    reader.coding()
}

/// A message's framing fields (`Transfer-Encoding`, `Content-Length`),
/// read while its fields go by once.
#[derive(Default)]
pub struct FramingFields {
    coding: CodingReader,
    length: LengthReader,
}

impl FramingFields {
    /// Takes one field in; whether it was a framing field.
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> bool {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.coding.push(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            self.length.push(value);
        } else {
            return false;
        }
        true
    }

    pub fn coding(&self) -> TransferCoding {
        self.coding.coding()
    }

    /// As [`content_length`] says.
    pub fn length(&self) -> Result<Option<(u64, bool)>, LengthError> {
        self.length.length()
    }
}

/// Reads `Transfer-Encoding` values one at a time.
#[derive(Default)]
struct CodingReader {
    seen: bool,
    malformed: bool,
    chunked: usize,
    others: bool,
    last_chunked: bool,
}

impl CodingReader {
    fn push(&mut self, value: &[u8]) {
        self.seen = true;
        for element in value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            if element.is_empty()
                || !element
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                self.malformed = true;
            }
            self.last_chunked = element.eq_ignore_ascii_case(b"chunked");
            if self.last_chunked {
                self.chunked += 1;
            } else {
                self.others = true;
            }
        }
    }

    fn coding(&self) -> TransferCoding {
        match (self.seen, self.chunked, self.others) {
            (false, ..) => TransferCoding::Absent,
            _ if self.malformed => TransferCoding::Malformed,
            (true, 2.., _) => TransferCoding::Malformed,
            (true, 1, false) => TransferCoding::Chunked,
            _ if !self.last_chunked => TransferCoding::NotChunkedLast,
            _ => TransferCoding::Unsupported,
        }
    }
}

/// Why `Content-Length` fields are not a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthError {
    /// A value (or list element) is not a decimal number.
    NotANumber,
    /// Values differ.
    Differing,
}

/// The length the `Content-Length` fields' values give (None: no field),
/// and whether it was given more than once.
pub fn content_length<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<(u64, bool)>, LengthError> {
    let mut reader = LengthReader::default();
    for value in values {
        reader.push(value);
    }
    reader.length()
}

/// The length a message's `Content-Length` fields give (see
/// [`content_length`]).
pub fn content_length_in(fields: &dyn Fields) -> Result<Option<(u64, bool)>, LengthError> {
    let mut reader = LengthReader::default();
    fields.values("content-length", &mut |value| {
        reader.push(value);
        false
    });
    reader.length()
}

/// Reads `Content-Length` values one at a time.
#[derive(Default)]
struct LengthReader {
    length: Option<u64>,
    repeated: bool,
    error: Option<LengthError>,
}

impl LengthReader {
    fn push(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let Some(n) =
                (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten()
            else {
                self.error.get_or_insert(LengthError::NotANumber);
                return;
            };
            match self.length {
                Some(l) if l != n => {
                    self.error.get_or_insert(LengthError::Differing);
                }
                Some(_) => self.repeated = true,
                None => self.length = Some(n),
            }
        }
    }

    fn length(&self) -> Result<Option<(u64, bool)>, LengthError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.length.map(|n| (n, self.repeated))),
        }
    }
}

// === request targets ===

/// The unreserved character `%hl` stands for, if it stands for one.
fn unreserved_escape(h: u8, l: u8) -> Option<u8> {
    if !(h.is_ascii_hexdigit() && l.is_ascii_hexdigit()) {
        return None;
    }
    let b = hex_value(h) << 4 | hex_value(l);
    (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')).then_some(b)
}

/// `path` with its escapes of unreserved characters decoded (borrowed
/// when it has none: the common case costs one scan for `%`). Config
/// paths are read so too, so `path_prefix: /%7Eme` still meets `/~me`.
pub fn decode_unreserved(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let any = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && unreserved_escape(w[1], w[2]).is_some());
    if !any {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => unreserved_escape(h, l),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII replaced ASCII escapes: still UTF-8.
    std::borrow::Cow::Owned(String::from_utf8(out).expect("ASCII for ASCII"))
}

/// The longest `:path` an HTTP/2 backend is sent: the `http` library's
/// bound on a path and query.
pub const MAX_H2_PATH: usize = 65534;

/// The `:path` an HTTP/2 backend gets for `target`, an HTTP/1.1 client's
/// path and query (or an HTTP/2 client's `:path`): as sent when it is a
/// path the `http` library takes, which is nearly always. Else `"`, `<`,
/// `>` and `` ` `` are percent-encoded (an HTTP/1.1 client may send them
/// raw, and an HTTP/1.1 backend gets them as sent; escaped they mean the
/// same, RFC 3986 §2.1), and failing that every byte RFC 3986 does not
/// allow. `%` stays as sent: nothing is escaped twice. None: not even
/// escaped is it one (longer than [`MAX_H2_PATH`]).
pub fn h2_path(target: &str) -> Option<http::uri::PathAndQuery> {
    let take = |t: &str| http::uri::PathAndQuery::try_from(t).ok();
    let rfc3986 = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%[]".contains(&b);
    take(target)
        .or_else(|| take(&escape(target, |b| !b"\"<>`".contains(&b))))
        .or_else(|| take(&escape(target, rfc3986)))
}

/// Whether `target` is too long to reach an HTTP/2 backend ([`h2_path`]):
/// a target of up to a third of [`MAX_H2_PATH`] never is, escaped or not.
pub fn too_long_for_h2(target: &str) -> bool {
    target.len() > MAX_H2_PATH / 3 && h2_path(target).is_none()
}

/// `target` with every byte that is not `kept` percent-encoded.
fn escape(target: &str, kept: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(target.len() + 8);
    for b in target.bytes() {
        if kept(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of the hex digit `digit` (one of `0-9a-fA-F`).
pub fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_byte_an_http2_path_may_not_carry_is_escaped() {
        // Every byte from `!` to `~` (the visible ASCII an HTTP/1.1 target
        // may have), in a path and in a query, gives an HTTP/2 `:path`;
        // those the library takes go as sent.
        for b in b'!'..=b'~' {
            if b == b'#' {
                continue; // refused before routing
            }
            let c = b as char;
            for target in [format!("/a{c}b"), format!("/a?q={c}")] {
                let path = h2_path(&target).unwrap_or_else(|| panic!("{target}"));
                let sent = path.as_str() == target;
                let escaped = path.as_str() == target.replace(c, &format!("%{b:02X}"));
                assert!(sent || escaped, "{target} as {path}");
            }
        }
        let path = |t: &str| h2_path(t).unwrap().as_str().to_string();
        // As sent: what the library takes, JSON in a path among it.
        assert_eq!(path("/api/{id}|x?f={\"a\":1}"), "/api/{id}|x?f={%22a%22:1}");
        assert_eq!(path("/api/{id}|\\^"), "/api/{id}|\\^");
        assert_eq!(path("/a<b>`?q=\"1\"<"), "/a%3Cb%3E%60?q=%221%22%3C");
        assert_eq!(path("/a%2F;b=c?x=[1]&y=@"), "/a%2F;b=c?x=[1]&y=@");
        // Escaped, a target up to a third of the bound always goes.
        let third = format!("/{}", "<".repeat(MAX_H2_PATH / 3 - 1));
        assert!(!too_long_for_h2(&third) && h2_path(&third).is_some());
        let over = format!("/{}", "<".repeat(MAX_H2_PATH / 3 + 1));
        assert!(too_long_for_h2(&over) && h2_path(&over).is_none());
        let long = format!("/{}", "a".repeat(MAX_H2_PATH - 1));
        assert!(!too_long_for_h2(&long));
        assert!(too_long_for_h2(&format!("{long}a")));
    }

    #[test]
    fn trailers_pass_unless_a_head_would_drop_them_or_only_a_head_may_carry_them() {
        for name in ["X-Sum", "grpc-status", "Server-Timing"] {
            assert!(trailer_passes(name.as_bytes(), false), "{name}");
        }
        for name in [
            "X-Sluice-Mirror",
            "Connection",
            "TE",
            "Transfer-Encoding",
            "Content-Length",
            "Host",
            "Trailer",
            "X-Forwarded-For",
            "X-Forwarded-Ssl",
            "x-forwarded-prefix",
            "Forwarded",
            "X_Forwarded_For",
            "X_Forwarded_Port",
        ] {
            assert!(!trailer_passes(name.as_bytes(), true), "{name}");
        }
        assert!(!trailer_passes(b"x_custom", false));
        assert!(trailer_passes(b"x_custom", true));
        // A backend's trailers lose only what a head alone may carry.
        for name in [
            "X-Sum",
            "grpc-status",
            "X-Forwarded-For",
            "x_custom",
            "Expect",
        ] {
            assert!(answer_trailer_passes(name.as_bytes()), "{name}");
        }
        for name in [
            "Connection",
            "Keep-Alive",
            "TE",
            "Transfer-Encoding",
            "Content-Length",
            "Host",
            "Trailer",
            "Upgrade",
            ":status",
        ] {
            assert!(!answer_trailer_passes(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn the_proxys_fields_and_underscore_spellings_are_told_apart() {
        for name in ["X-Sluice-Mirror", "x-sluice-anything", "X_Sluice_Mirror"] {
            assert_eq!(
                client_field(name.as_bytes()),
                ClientField::Reserved,
                "{name}"
            );
        }
        for name in [
            "X_Forwarded_For",
            "x_real_ip",
            "X_FORWARDED_HOST",
            "content_length",
            "Transfer_Encoding",
            "HOST_",
            // The whole X-Forwarded-* family.
            "x_forwarded_for_app",
            "X_Forwarded_Ssl",
        ] {
            let expected = if name == "HOST_" {
                ClientField::Underscored
            } else {
                ClientField::Reserved
            };
            assert_eq!(client_field(name.as_bytes()), expected, "{name}");
        }
        for name in ["my_header", "x_forwarded", "_"] {
            assert_eq!(
                client_field(name.as_bytes()),
                ClientField::Underscored,
                "{name}"
            );
        }
        for name in ["X-Forwarded-For", "accept", "x-sluice", "x-sluic-e"] {
            assert_eq!(
                client_field(name.as_bytes()),
                ClientField::Ordinary,
                "{name}"
            );
        }
    }

    #[test]
    fn hosts_are_a_host_and_an_optional_port() {
        for good in [
            "a",
            "web.example",
            "Fast.Example:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]",
            "host:",
            "under_score.example",
        ] {
            assert!(is_host_and_port(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a@b",
            "user@a.example",
            "a.example/x",
            "a b",
            "a:b:c",
            "a:8o",
            "a:123456",
            ":80",
            "[::1",
            "[::1]x",
            "[]",
            "[a@b]",
            "a\tb",
        ] {
            assert!(!is_host_and_port(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn transfer_codings_are_chunked_alone_or_refused() {
        let coding = |values: &[&str]| transfer_coding(values.iter().map(|v| v.as_bytes()));
        assert_eq!(coding(&[]), TransferCoding::Absent);
        for chunked in [&["chunked"][..], &["Chunked"], &[" chunked "]] {
            assert_eq!(coding(chunked), TransferCoding::Chunked, "{chunked:?}");
        }
        for unsupported in [
            &["gzip, chunked"][..],
            &["identity, chunked"],
            &["gzip", "chunked"],
        ] {
            assert_eq!(
                coding(unsupported),
                TransferCoding::Unsupported,
                "{unsupported:?}"
            );
        }
        for not_last in [
            &["chunked, gzip"][..],
            &["identity"],
            &["gzip"],
            &["chunked", "gzip"],
        ] {
            assert_eq!(
                coding(not_last),
                TransferCoding::NotChunkedLast,
                "{not_last:?}"
            );
        }
        for malformed in [
            &[",chunked"][..],
            &["chunked,"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["chunked;q=1"],
            &["chun ked"],
            &[""],
        ] {
            assert_eq!(
                coding(malformed),
                TransferCoding::Malformed,
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn lengths_are_equal_decimal_numbers() {
        let length = |values: &[&str]| content_length(values.iter().map(|v| v.as_bytes()));
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&["5"]), Ok(Some((5, false))));
        assert_eq!(length(&["5, 5"]), Ok(Some((5, true))));
        assert_eq!(length(&["3", "3"]), Ok(Some((3, true))));
        assert_eq!(length(&["5", "7"]), Err(LengthError::Differing));
        for bad in [
            "abc",
            "-1",
            "+5",
            "0x5",
            "",
            "5,",
            "1 2",
            "99999999999999999999",
        ] {
            assert_eq!(length(&[bad]), Err(LengthError::NotANumber), "{bad}");
        }
    }
}
