//! Phase 3 of a request, for both protocols: check it, find its route,
//! decide its backend.
//!
//! A client's request head reaches this phase as a [`ClientRequest`],
//! whichever protocol carried it (the own HTTP/1.1 codec, or hyper's
//! HTTP/2 server). Requests refused here are never forwarded; the answer
//! says why ([`Refusal`]):
//! - `CONNECT` is 405 and `OPTIONS *` 200, both with `Allow`: a reverse
//!   proxy answers them itself (and after a `CONNECT` an HTTP/1.1
//!   connection closes: what follows its head is no request). So is `OPTIONS http://host` (an absolute
//!   target with an empty path), which is `OPTIONS *` for that host (RFC
//!   9112 §3.2.4), once its target and Host pass the checks below.
//! - A method is upper-case letters, `-` and `_` (nginx's rule): `get` is
//!   a method of its own to the RFC, but a backend that compares methods
//!   without case would read it as `GET`. 400.
//! - The target is origin-form (`/…`), or an `http`/`https` absolute URI
//!   whose authority is a host and optional port and whose path starts
//!   with `/` or is empty (then it is `/`, RFC 9110 §4.2.3: `http://a?q`
//!   reaches the backend as `/?q`) (HTTP/2: `:scheme`, `:authority`,
//!   `:path` alike); `*` is for OPTIONS only. 400 otherwise: a backend never gets `GET ?a=1` or
//!   `Host: a@other-host` (the rules on hosts are `crate::fields`').
//! - HTTP/1 (RFC 9112 §3.2): one Host field, a host and optional port; an
//!   HTTP/1.1 request needs one even when its absolute-form target names
//!   the authority, which then replaces it (HTTP/1.0 may leave Host out).
//!   HTTP/2: a Host field, when sent, is one valid host
//!   that agrees with `:authority` (RFC 9113 §8.3.1), and a request has
//!   one of them (RFC 9110 §7.2); `content-length` fields are equal
//!   numbers (a list in one field, `3, 3`, which HTTP/1.1 takes as one
//!   length, is reset by the `h2` library before it gets here); no field value starts or ends with a space or tab (RFC 9113
//!   §8.2.1: such a request is malformed). 400. An HTTP/2 request with
//!   more than 128 fields (a client's cookie crumbs counted as the one
//!   field an HTTP/1.1 backend gets) is 431, as an HTTP/1.x head is.
//! - No route for the host (port and case ignored), the normalised path
//!   and the route matches' other conditions (method, fields, query;
//!   `crate::routing`): 404.
//! - A target too long for a `protocol: http2` route's `:path` once
//!   escaped (`crate::fields::h2_path`): 414, in
//!   `sluice_refused_requests_total` and no backend's series.
//! - A route with `direct_response`: its status and body, from here,
//!   without a backend; counted in no backend's series, but in
//!   `sluice_direct_responses_total{route, code}` (the 404 in
//!   `sluice_unrouted_requests_total`).
//!
//! Then the backend is decided (A/B rules, then affinity, then the exact
//! weighted split: [`crate::routing::Route::decide`]), and the request
//! takes a place among its route's requests in flight and has its declared
//! length checked against `limits.max_request_body` (413, counted on the
//! backend chosen, as the client got it).
//!
//! A request the route has no place for is answered 503 before any backend
//! is chosen: it is the proxy's own refusal, counted in
//! `sluice_rejected_total{reason="max_requests_in_flight"}` only, on no
//! backend's series (charged to the arm the split would have picked, a
//! slow stable filling the places would make a healthy canary fail the
//! gate), and it takes no turn from the split.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, StatusCode, Version};

use crate::fields::Fields;
use crate::record::{Permit, Recorder};
use crate::routing::{Route, SplitDecision};
use crate::store::Store;

/// A client's request target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`.
    Origin(&'a str),
    /// `scheme://authority/path?query` (an HTTP/2 request is one).
    Absolute {
        scheme: &'a str,
        authority: &'a str,
        path_and_query: &'a str,
    },
    /// `*`.
    Asterisk,
    /// Anything else (an authority-form target, a relative path).
    Other,
}

impl<'a> Target<'a> {
    /// Reads an HTTP/1.1 request target (visible ASCII).
    pub fn parse(target: &'a str) -> Self {
        if target.starts_with('/') {
            return Target::Origin(target);
        }
        if target == "*" {
            return Target::Asterisk;
        }
        let Some((scheme, rest)) = target.split_once("://") else {
            return Target::Other;
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        Target::Absolute {
            scheme,
            authority: &rest[..end],
            path_and_query: &rest[end..],
        }
    }

    /// The path and query a backend gets: an absolute target's empty path
    /// is `/` (RFC 9110 §4.2.3), its query kept (`http://a?q` is `/?q`);
    /// `/` for a target with no path.
    pub fn path_and_query(&self) -> Cow<'a, str> {
        match self {
            Target::Origin(p) => Cow::Borrowed(p),
            Target::Absolute { path_and_query, .. } if path_and_query.starts_with('/') => {
                Cow::Borrowed(path_and_query)
            }
            Target::Absolute { path_and_query, .. } if !path_and_query.is_empty() => {
                Cow::Owned(format!("/{path_and_query}"))
            }
            _ => Cow::Borrowed("/"),
        }
    }

    /// The path alone (`/` for an empty one).
    pub fn path(&self) -> &'a str {
        let pq = match self {
            Target::Origin(p)
            | Target::Absolute {
                path_and_query: p, ..
            } => *p,
            _ => "/",
        };
        match pq.split_once('?').map_or(pq, |(path, _)| path) {
            "" => "/",
            path => path,
        }
    }
}

/// How the client's request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Of a length not told in advance (HTTP/1.1 chunked, or an HTTP/2
    /// body without `content-length`).
    Streamed,
}

/// A client's request head, as every phase reads it.
pub struct ClientRequest<'a> {
    pub method: &'a Method,
    /// The client's HTTP version.
    pub version: Version,
    pub target: Target<'a>,
    pub fields: &'a dyn Fields,
    /// What the phases read of `fields` again and again, read once.
    pub summary: Summary<'a>,
    pub body: BodyKind,
    /// The protocols an HTTP/1.1 upgrade offers (never `h2c`).
    pub upgrade: Option<&'a [u8]>,
}

/// The fields every request's phases look at, read in one pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary<'a> {
    /// The first Host field, and how many there are.
    pub host: Option<&'a [u8]>,
    pub hosts: usize,
    /// The first Connection field, and how many there are.
    pub connection: Option<&'a [u8]>,
    pub connections: usize,
    /// The first Upgrade field, and how many there are.
    pub upgrade: Option<&'a [u8]>,
    pub upgrades: usize,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `TE: trailers`.
    pub trailers: bool,
}

impl<'a> Summary<'a> {
    /// Reads `fields` once.
    pub fn of(fields: &'a dyn Fields) -> Self {
        let mut s = Self::default();
        fields.each(&mut |name, value| match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                s.host.get_or_insert(value);
                s.hosts += 1;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                s.connection.get_or_insert(value);
                s.connections += 1;
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                s.upgrade.get_or_insert(value);
                s.upgrades += 1;
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                s.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            2 if name.eq_ignore_ascii_case(b"te") => {
                s.trailers |= crate::fields::has_token(value, "trailers");
            }
            _ => {}
        });
        s
    }

    /// Calls `each` with every value of the request's Connection fields.
    pub fn each_connection(&self, fields: &'a dyn Fields, each: &mut dyn FnMut(&'a [u8])) {
        match (self.connection, self.connections) {
            (Some(only), 1) => each(only),
            (None, _) => {}
            _ => {
                fields.values("connection", &mut |v| {
                    each(v);
                    false
                });
            }
        }
    }
}

impl<'a> ClientRequest<'a> {
    /// The host the client asked for, `host[:port]`: the target's
    /// authority, else the Host field.
    pub fn authority(&self) -> Option<&'a str> {
        match self.target {
            Target::Absolute { authority, .. } => Some(authority),
            _ => self.summary.host.and_then(|h| std::str::from_utf8(h).ok()),
        }
    }
}

/// An answer the proxy gives itself instead of forwarding.
pub struct Refusal {
    pub status: StatusCode,
    pub text: Cow<'static, str>,
    /// The answer names the methods the proxy forwards (`Allow`).
    pub allow: bool,
    /// Counts the answer on the backend chosen (a declared body over
    /// `limits.max_request_body`).
    pub recorder: Option<Recorder>,
}

impl Refusal {
    fn new(status: StatusCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            text: text.into(),
            allow: false,
            recorder: None,
        }
    }

    fn bad(text: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, text)
    }
}

/// The methods the proxy forwards (answered in `Allow`).
pub const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// Whether the request is one the proxy answers itself or refuses (the
/// rules in the module docs), before it is routed.
pub fn check(req: &ClientRequest<'_>) -> Result<(), Refusal> {
    if !req
        .method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(Refusal::bad(
            "sluice: the method is not upper-case letters, `-` and `_`\n",
        ));
    }
    if *req.method == Method::CONNECT {
        return Err(Refusal {
            allow: true,
            ..Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "sluice: CONNECT is not supported; this is a reverse proxy\n",
            )
        });
    }
    let options = || {
        Err(Refusal {
            allow: true,
            ..Refusal::new(StatusCode::OK, "")
        })
    };
    if *req.method == Method::OPTIONS && req.target == Target::Asterisk {
        return options();
    }
    check_target(&req.target, req.version)?;
    check_hosts(req)?;
    // `OPTIONS http://host`: `OPTIONS *` for that host, once checked.
    if *req.method == Method::OPTIONS
        && matches!(req.target, Target::Absolute { path_and_query, .. } if path_and_query.is_empty())
    {
        return options();
    }
    if req.version == Version::HTTP_2 {
        // As an HTTP/1.1 target is (`crate::http1::head`): `:path` may
        // carry any byte HPACK can, and an HTTP/1.1 backend must get
        // visible ASCII in its request line.
        if let Some(defect) = crate::fields::target_defect(req.target.path_and_query().as_bytes()) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("sluice: {defect}\n"),
            ));
        }
        if crate::fields::content_length_in(req.fields).is_err() {
            return Err(Refusal::bad(
                "sluice: the request's content-length fields are not one number\n",
            ));
        }
        let (mut padded, mut fields, mut cookies) = (false, 0usize, 0usize);
        req.fields.each(&mut |name, value| {
            padded |= matches!(value.first().zip(value.last()), Some((a, z))
                if matches!(a, b' ' | b'\t') || matches!(z, b' ' | b'\t'));
            fields += 1;
            cookies += usize::from(name.eq_ignore_ascii_case(b"cookie"));
        });
        if padded {
            return Err(Refusal::bad(
                "sluice: a field value starts or ends with a space or tab\n",
            ));
        }
        // The HTTP/1.x bound (`crate::fields::MAX_FIELDS`), on the
        // field lines a client sent, not its pseudo-header fields (as an
        // HTTP/1.x head's request line is not counted), and with its
        // cookie crumbs (RFC 9113 §8.2.3) as one field: an HTTP/1.1
        // backend gets them joined.
        if fields - cookies.saturating_sub(1) > crate::fields::MAX_FIELDS {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "sluice: the request has more than {} fields\n",
                    crate::fields::MAX_FIELDS
                ),
            ));
        }
    }
    Ok(())
}

fn check_target(target: &Target<'_>, version: Version) -> Result<(), Refusal> {
    match target {
        Target::Origin(_) => Ok(()),
        Target::Absolute {
            scheme,
            authority,
            path_and_query,
        } => {
            if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
                return Err(Refusal::bad(
                    "sluice: the request target is not a path or an http(s) URI\n",
                ));
            }
            if !crate::fields::is_host_and_port(authority.as_bytes()) {
                return Err(Refusal::bad(
                    "sluice: the request target's authority is not a host and optional port\n",
                ));
            }
            // An HTTP/1.x target's empty path stands for `/` (see
            // `Target::path_and_query`); an HTTP/2 `:path` of an `http(s)`
            // URI is never empty (RFC 9113 §8.3.1).
            let empty_path = version != Version::HTTP_2
                && (path_and_query.is_empty() || path_and_query.starts_with('?'));
            if !(empty_path || path_and_query.starts_with('/')) {
                return Err(Refusal::bad(
                    "sluice: the request target's path does not start with `/`\n",
                ));
            }
            Ok(())
        }
        Target::Asterisk => Err(Refusal::bad(
            "sluice: the request target is not a path starting with `/`\n",
        )),
        Target::Other => Err(Refusal::bad(
            "sluice: the request target is not a path or an http(s) URI\n",
        )),
    }
}

fn check_hosts(req: &ClientRequest<'_>) -> Result<(), Refusal> {
    let (first, count) = (req.summary.host, req.summary.hosts);
    let target_authority = match req.target {
        Target::Absolute { authority, .. } => Some(authority),
        _ => None,
    };
    match first {
        Some(_) if count > 1 => Err(Refusal::bad(
            "sluice: the request has more than one Host header field\n",
        )),
        Some(host) if !crate::fields::is_host_and_port(host) => Err(Refusal::bad(
            "sluice: the Host header field is not a host and optional port\n",
        )),
        Some(host)
            if req.version == Version::HTTP_2
                && target_authority.is_some_and(|a| !a.as_bytes().eq_ignore_ascii_case(host)) =>
        {
            Err(Refusal::bad(
                "sluice: the Host header field differs from :authority\n",
            ))
        }
        // RFC 9112 §3.2: a 400 for any HTTP/1.1 request without Host, even
        // one whose absolute-form target names the authority (nginx's
        // answer too).
        None if req.version == Version::HTTP_11 => Err(Refusal::bad(
            "sluice: an HTTP/1.1 request needs a Host header field\n",
        )),
        // RFC 9110 §7.2: a client sends its authority as `:authority` or
        // Host; an HTTP/2 request with neither gets no backend's Host.
        None if req.version == Version::HTTP_2 && target_authority.is_none() => Err(Refusal::bad(
            "sluice: an HTTP/2 request needs :authority or a Host header field\n",
        )),
        _ => Ok(()),
    }
}

/// Where a request goes.
pub struct Routed {
    pub route: Arc<Route>,
    pub decision: SplitDecision,
    /// The request's place among the route's requests in flight.
    pub permit: Permit,
    /// When the request's head was read.
    pub start: Instant,
    /// `forwarding.trusted_hops`.
    pub trusted_hops: u32,
    /// A client the weighted split just placed keeps its backend
    /// (cookie affinity): the answer sets this cookie.
    pub set_cookie: Option<HeaderValue>,
}

/// A target an HTTP/2 route cannot send (too long for a `:path` once
/// escaped, `crate::fields::h2_path`) is the client's 414: no backend is
/// charged for a request it could not be sent.
fn check_sendable(store: &Store, route: &Route, req: &ClientRequest<'_>) -> Result<(), Refusal> {
    if route.protocol == crate::config::Protocol::Http2
        && crate::fields::too_long_for_h2(&req.target.path_and_query())
    {
        store
            .metrics()
            .record_refused(StatusCode::URI_TOO_LONG.as_u16());
        return Err(Refusal::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "sluice: the request target is longer than an HTTP/2 backend's path may be ({} bytes, escaped)\n",
                crate::fields::MAX_H2_PATH
            ),
        ));
    }
    Ok(())
}

/// Finds the route of a checked request on `listener` and decides its
/// backend (see the module docs).
pub fn route(
    store: &Store,
    listener: usize,
    req: &ClientRequest<'_>,
    secure: bool,
    start: Instant,
) -> Result<Routed, Refusal> {
    let routing = store.peek();
    let authority = req.authority();
    let host = authority.map(strip_port).map(|h| {
        if h.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(h.to_ascii_lowercase())
        } else {
            Cow::Borrowed(h)
        }
    });
    let path = req.target.path();
    let path_and_query = req.target.path_and_query();
    let facts = crate::routing::RequestFacts {
        method: req.method,
        path_and_query: &path_and_query,
        fields: req.fields,
    };
    let Some((route, at)) = routing
        .find_match(
            listener,
            host.as_deref(),
            &crate::routing::normalise_path(path),
            &facts,
        )
        .map(|(route, at)| (route.clone(), at))
    else {
        routing.unrouted.inc();
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "sluice: no route for host `{}` and path `{path}`\n",
                authority.map(strip_port).unwrap_or("-"),
            ),
        ));
    };
    let trusted_hops = routing.valid.trusted_hops;
    drop(routing);
    check_sendable(store, &route, req)?;
    if let Some(direct) = &route.direct_response {
        // The proxy's own answer, on no backend's series:
        // `sluice_direct_responses_total` only.
        direct.counted.inc();
        return Err(Refusal::new(
            direct.answer.status,
            direct.answer.body.clone(),
        ));
    }
    let Some(permit) = route.admit() else {
        // The proxy's own refusal: on no backend's series (see the module docs).
        route.rejected_in_flight.inc();
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "sluice: route {} has {} requests in flight, its limit\n",
                route.name, route.max_in_flight
            ),
        ));
    };
    let decision = route.decide(at, req.fields);
    if let (Some(max), BodyKind::Length(n)) = (route.max_body, req.body)
        && n > max
    {
        route.rejected_too_large.inc();
        let backend = route.backend(decision);
        let recorder = Recorder {
            series: backend.series(decision).clone(),
            errors: backend.metrics.clone(),
            code: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
            start,
            grpc: None,
            permit: None,
            body: None,
        };
        return Err(Refusal {
            recorder: Some(recorder),
            ..Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, too_large_text(max))
        });
    }
    let set_cookie = route.affinity.as_ref().and_then(|a| {
        a.response_cookie(
            req.fields,
            decision.placed(),
            route.split.canary_weight_bp(),
            secure,
        )
        .cloned()
    });
    Ok(Routed {
        route,
        decision,
        permit,
        start,
        trusted_hops,
        set_cookie,
    })
}

/// The answer's text for a body over `limits.max_request_body`.
pub fn too_large_text(max: u64) -> String {
    format!("sluice: the request body is larger than {max} bytes, the limit\n")
}

/// The host of `host[:port]` (an IPv6 address without its brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map(|end| &authority[1..end])
            .unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("web.example:8080"), "web.example");
        assert_eq!(strip_port("web.example"), "web.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn targets_are_read_by_their_form() {
        assert_eq!(Target::parse("/a?b"), Target::Origin("/a?b"));
        assert_eq!(Target::parse("*"), Target::Asterisk);
        assert_eq!(
            Target::parse("http://a.example:8/x?y"),
            Target::Absolute {
                scheme: "http",
                authority: "a.example:8",
                path_and_query: "/x?y"
            }
        );
        assert_eq!(Target::parse("http://a.example").path_and_query(), "/");
        assert_eq!(Target::parse("http://a.example").path(), "/");
        assert_eq!(
            Target::parse("http://a.example?q=1").path_and_query(),
            "/?q=1"
        );
        assert_eq!(Target::parse("http://a.example?q=1").path(), "/");
        assert_eq!(Target::parse("example.com:443"), Target::Other);
        assert_eq!(Target::parse("/a/b?c=d").path(), "/a/b");
    }

    fn checked(
        method: Method,
        version: Version,
        target: &str,
        fields: &[(&str, &str)],
    ) -> Option<u16> {
        let mut map = http::HeaderMap::new();
        for (name, value) in fields {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let req = ClientRequest {
            method: &method,
            version,
            target: Target::parse(target),
            fields: &map,
            summary: Summary::of(&map),
            body: BodyKind::None,
            upgrade: None,
        };
        check(&req).err().map(|r| r.status.as_u16())
    }

    #[test]
    fn targets_and_hosts_are_checked_before_routing() {
        let v11 = Version::HTTP_11;
        assert_eq!(checked(Method::GET, v11, "/x", &[("host", "a")]), None);
        assert_eq!(checked(Method::GET, v11, "/x", &[]), Some(400));
        assert_eq!(checked(Method::GET, Version::HTTP_10, "/x", &[]), None);
        let host = [("host", "a")];
        assert_eq!(checked(Method::GET, v11, "http://a@b/x", &host), Some(400));
        assert_eq!(checked(Method::GET, v11, "ftp://b/x", &host), Some(400));
        assert_eq!(checked(Method::GET, v11, "http://b:8o/x", &host), Some(400));
        assert_eq!(checked(Method::GET, v11, "http://b/x", &host), None);
        // RFC 9112 §3.2: Host is needed even when the target names one.
        assert_eq!(checked(Method::GET, v11, "http://b/x", &[]), Some(400));
        assert_eq!(checked(Method::GET, v11, "*", &[("host", "a")]), Some(400));
        assert_eq!(
            checked(Method::OPTIONS, v11, "*", &[("host", "a")]),
            Some(200)
        );
        // An empty path is `/`; for OPTIONS it is `*` (RFC 9112 §3.2.4),
        // once its authority and Host pass.
        assert_eq!(checked(Method::GET, v11, "http://b", &host), None);
        assert_eq!(checked(Method::GET, v11, "http://b?q=1", &host), None);
        assert_eq!(checked(Method::OPTIONS, v11, "http://b", &host), Some(200));
        assert_eq!(checked(Method::OPTIONS, v11, "http://b?q", &host), None);
        assert_eq!(
            checked(Method::OPTIONS, v11, "http://a@b", &host),
            Some(400)
        );
        assert_eq!(checked(Method::OPTIONS, v11, "http://b", &[]), Some(400));
        // Not so for HTTP/2, whose `:path` is never empty for http(s).
        assert_eq!(
            checked(Method::GET, Version::HTTP_2, "http://b?q=1", &[]),
            Some(400)
        );
        assert_eq!(checked(Method::CONNECT, v11, "a:443", &[]), Some(405));
        assert_eq!(
            checked(Method::GET, v11, "/x", &[("host", "a"), ("host", "a")]),
            Some(400)
        );
        assert_eq!(
            checked(Method::GET, v11, "/x", &[("host", "a@b")]),
            Some(400)
        );
        let v2 = Version::HTTP_2;
        assert_eq!(
            checked(Method::GET, v2, "http://a/x", &[("host", "b")]),
            Some(400)
        );
        assert_eq!(
            checked(
                Method::GET,
                v2,
                "http://a/x",
                &[("content-length", "5"), ("content-length", "7")]
            ),
            Some(400)
        );
    }

    /// An HTTP/2 request has HTTP/1.x's bound of 128 fields: 128 pass and
    /// 129 do not, repeated names counted each time, a client's cookie
    /// crumbs together as one.
    #[test]
    fn http2_requests_have_the_http1_field_bound() {
        let named = |n: usize, prefix: &str| -> Vec<(String, &'static str)> {
            (0..n).map(|i| (format!("{prefix}{i}"), "1")).collect()
        };
        let same = |n: usize, name: &str| -> Vec<(String, &'static str)> {
            (0..n).map(|_| (name.to_string(), "1")).collect()
        };
        let check_of = |version: Version, target: &str, lists: &[Vec<(String, &'static str)>]| {
            let all: Vec<(&str, &str)> = lists
                .iter()
                .flatten()
                .map(|(n, v)| (n.as_str(), *v))
                .collect();
            checked(Method::GET, version, target, &all)
        };
        let v2 =
            |lists: &[Vec<(String, &'static str)>]| check_of(Version::HTTP_2, "http://a/x", lists);
        assert_eq!(v2(&[named(128, "x-f")]), None);
        assert_eq!(v2(&[named(129, "x-f")]), Some(431));
        assert_eq!(v2(&[same(129, "x-same")]), Some(431));
        assert_eq!(v2(&[named(127, "x-f"), same(50, "cookie")]), None);
        assert_eq!(v2(&[named(128, "x-f"), same(1, "cookie")]), Some(431));
        // HTTP/1.x heads are bounded by their parser, not here.
        assert_eq!(
            check_of(
                Version::HTTP_11,
                "/x",
                &[same(1, "host"), named(200, "x-f")]
            ),
            None
        );
    }
}
