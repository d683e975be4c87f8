//! The proxy's configuration format (YAML on disk, JSON on the admin API):
//! the types a user writes, their defaults, and the parsers of their
//! values (durations, sizes, weights, upstream URLs). Checking the rules
//! and building the [`ValidConfig`] the proxy runs on is
//! the `validate` submodule's part.
//!
//! Parsing and validation are two steps on purpose: serde catches type errors
//! (with the field path in its message), then [`Config::validate`] checks
//! every rule and reports *all* problems at once, each naming its field path
//! such as `routes[1].canary_weight`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Weights are held in basis points: 10000 = 100 %.
pub const WEIGHT_SCALE_BP: u32 = 10_000;

/// The whole proxy configuration, as written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Data-plane listener, e.g. `127.0.0.1:8080`.
    pub listen: String,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Which forwarding headers from clients are trusted.
    #[serde(default, skip_serializing_if = "Forwarding::is_default")]
    pub forwarding: Forwarding,
    /// TLS on the data-plane listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// More data-plane listeners besides `listen` (one per port of a
    /// multi-port Service, say). A route serves the listener it names in
    /// `listener`; routes without one serve `listen`. Fixed at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// Plain TCP (L4) listeners: each connection is forwarded byte for
    /// byte to one upstream, without any HTTP (a database port, TLS
    /// passed through, ...). Added, removed and changed on reload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_listeners: Vec<TcpListenerConfig>,
}

/// Forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`,
/// `X-Real-IP`) from clients. With `trusted_hops: 0` (the default) the
/// proxy trusts none: it replaces them with what it saw. With N > 0 the
/// proxy sits behind N trusted proxies (a load balancer, say): the
/// rightmost N `X-Forwarded-For` entries are kept and the peer appended,
/// and the other headers are passed on as those proxies set them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    #[serde(default)]
    pub trusted_hops: u32,
}

impl Forwarding {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// An extra data-plane listener (plain HTTP/1.1 and h2c, like `listen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: String,
}

/// A plain TCP listener (see [`crate::tcp`]): every client connection is
/// forwarded to `upstream` as bytes, in both directions, with no HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpListenerConfig {
    /// Names the listener in metrics (`listener` label) and errors; unique
    /// among `listeners` and `tcp_listeners`.
    pub name: String,
    /// Address to listen on, e.g. `0.0.0.0:5432`.
    pub listen: String,
    /// `host:port` to forward to (a name is resolved at each connect),
    /// e.g. `db-primary.prod.svc:5432`; no scheme.
    pub upstream: String,
    #[serde(default, skip_serializing_if = "TcpTimeouts::is_default")]
    pub timeouts: TcpTimeouts,
}

/// Time limits of a TCP listener's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpTimeouts {
    /// Resolving and connecting to the upstream; when it runs out the
    /// client's connection is closed.
    #[serde(default = "default_connect_timeout")]
    pub connect: String,
    /// A connection with no byte in either direction for this long is
    /// closed on both sides (as Envoy's TCP proxy, 1 hour by default).
    #[serde(default = "default_tcp_idle_timeout")]
    pub idle: String,
}

impl Default for TcpTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            idle: default_tcp_idle_timeout(),
        }
    }
}

impl TcpTimeouts {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_tcp_idle_timeout() -> String {
    "1h".to_string()
}

/// Certificate files of the data-plane listener (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// How `https://` upstreams of a route are verified.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// CA bundle (PEM) to verify upstreams with; the system roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate; the upstream host otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// File holding the bearer token that admin writes must present.
    /// Required when `listen` is not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".to_string()
}

/// Protections for the data-plane listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Time a client has to send a complete HTTP/1 request head.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: String,
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Interval of HTTP/2 keep-alive pings to clients; `0s` turns them off.
    #[serde(default = "default_h2_keepalive")]
    pub h2_keepalive: String,
    /// Open client connections per proxy (all listeners); a connection over
    /// it is closed at once and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections of the plain TCP listeners (`tcp_listeners`, all
    /// of them), counted apart from `max_connections` so idle TCP
    /// connections never take the places of HTTP clients; over it, a TCP
    /// connection is closed at once (`outcome="rejected"`).
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// Requests in flight per route; more are answered 503 and counted.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// Largest request body, e.g. `10MiB`; larger ones are answered 413.
    /// Unset: no limit (bodies stream, so memory does not grow with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<String>,
    /// Concurrent streams per HTTP/2 client connection.
    #[serde(default = "default_h2_max_streams")]
    pub h2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            idle_timeout: default_idle_timeout(),
            h2_keepalive: default_h2_keepalive(),
            max_connections: default_max_connections(),
            max_tcp_connections: default_max_tcp_connections(),
            max_requests_in_flight: default_max_requests_in_flight(),
            max_request_body: None,
            h2_max_streams: default_h2_max_streams(),
        }
    }
}

fn default_header_read_timeout() -> String {
    "10s".to_string()
}

fn default_max_connections() -> usize {
    10_000
}

fn default_max_tcp_connections() -> usize {
    1_000
}

fn default_max_requests_in_flight() -> usize {
    10_000
}

fn default_h2_max_streams() -> u32 {
    256
}

fn default_idle_timeout() -> String {
    "60s".to_string()
}

fn default_h2_keepalive() -> String {
    "30s".to_string()
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

/// Upstream protocol of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 to the upstream (the client may still speak HTTP/2 to us).
    #[default]
    Http1,
    /// Prior-knowledge HTTP/2 (h2c) to the upstream, as gRPC servers need.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The shorthand for one match on a path prefix; set `matches`
    /// instead for more (the two are mutually exclusive unless this is
    /// the default `/`).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Alternatives (OR): a request that satisfies any one belongs to the
    /// route. Empty: one match, on `path_prefix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Changes to the request fields sent to the backend (both arms,
    /// retries and mirror copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Changes to the fields of the backend's answer head the client gets
    /// (never to the proxy's own answers, nor to trailers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    #[serde(default)]
    pub protocol: Protocol,
    /// The stable backend's URL; empty (left out) only for a route with
    /// `direct_response`: exactly one of the two is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stable: String,
    /// The proxy answers the route's requests itself, with this status and
    /// body, and no backend (instead of `stable`; such a route has no
    /// canary, baseline, mirror or affinity). Counted as the proxy's own
    /// answers are (as its 404): in no backend's series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// A *baseline arm*: a fresh copy of the stable's version, started with
    /// the canary at the canary's size, so the gate can judge the canary
    /// against a peer of the same age instead of the long-running stable
    /// (as Kayenta does). Only with `canary`. The weighted split gives it
    /// the canary's share too: `canary_weight` percent each, the stable the
    /// rest, so `canary_weight` is at most 50 while it is set. A/B rules and
    /// mirror copies never go to it. Its metrics carry `backend="baseline"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Percent of requests for the canary, 0..=100, at most two decimals.
    #[serde(default)]
    pub canary_weight: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_match: Vec<MatchRule>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// gRPC statuses that count as a failure of the upstream (names or
    /// numbers); default UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_failure_codes: Option<Vec<crate::grpc::CodeRef>>,
    /// The extra listener (by name) this route serves; `listen` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Sticky sessions: a client stays on the backend it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityConfig>,
    /// A copy of some of the stable's requests goes to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// What becomes of request header fields whose names contain `_`.
    #[serde(default, skip_serializing_if = "UnderscoreHeaders::is_default")]
    pub underscore_headers: UnderscoreHeaders,
    /// Where a request goes that the canary provably never started on.
    #[serde(default, skip_serializing_if = "Failover::is_default")]
    pub failover: Failover,
}

/// One alternative of a route's `matches`: every condition set must hold.
///
/// - `path_prefix` / `path_exact` / `path_segments`: at most one; none
///   means the prefix `/`. A prefix is a plain string prefix of the
///   normalised path (as the top-level `path_prefix`); an exact path
///   equals it; `path_segments: /api` holds for `/api` and `/api/…`,
///   never `/apix` (a trailing `/` in the value changes nothing), and
///   ranks as a prefix of its length without that `/`.
/// - `methods`: the request's method is one of these (upper-case tokens).
/// - `headers`: every one holds: some field of that name (any case) has
///   exactly that value (case-sensitive).
/// - `query`: every one holds: the first parameter of that name (case-
///   sensitive) has exactly that value, both compared after percent-
///   decoding (`+` is not a space: RFC 3986 queries, not HTML forms).
///   A name appears once in a match (two values could never both be the
///   first).
/// - `backend: canary`: a request this match wins goes to the route's
///   canary as an A/B request (`decision="match"`), taking no turn from
///   the split; only on a route with a canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_segments: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<MatchBackend>,
}

/// Where a match sends the requests it wins, instead of the route's
/// usual decision (A/B rules, affinity, the split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchBackend {
    /// The route's canary, as an A/B request.
    Canary,
}

/// A route's answer made by the proxy itself (see
/// [`RouteConfig::direct_response`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectResponse {
    /// 200..=599.
    pub status: u16,
    /// The answer's body (`text/plain`); empty when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A header field or query parameter: its name and value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// Changes to a message's header fields, applied in this order: `remove`
/// drops every field of each name, `set` replaces every field of its name
/// with one, `add` appends a field (keeping those already there). A name
/// may not be both set and removed, nor set twice; the fields the proxy
/// owns (framing, hop-by-hop, forwarding, `Host`, `X-Sluice-*`) cannot be
/// touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A route's failover (`failover`). `stable` (the default): a request the
/// canary provably never started on (its connect was refused or failed,
/// its connection closed before the request was written, or its HTTP/2
/// stream was refused with `REFUSED_STREAM`) goes to the stable instead,
/// within the stable's retry budget, when its body can be sent again; the
/// canary is still charged the failure, so the gate sees it as before,
/// and `sluice_failovers_total{route}` counts it. A baseline arm fails
/// over alike. `off`: the client gets the proxy's 502.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    #[default]
    Stable,
    Off,
}

impl Failover {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Request header fields whose names contain `_` (a route's
/// `underscore_headers`). `drop` (the default, as nginx does): they never
/// reach the backend, because a backend that maps names CGI-style (`-`
/// and `_` both become `_`) would read a client's `X_Forwarded_For` as the
/// proxy's `X-Forwarded-For`. `keep`: they are passed on, except the
/// underscore spellings of the fields the proxy sets or frames by
/// (forwarding fields, `Host`, `Content-Length`, `Transfer-Encoding`,
/// hop-by-hop fields, `X-Sluice-*`), which are always dropped. A/B rules
/// and header affinity read the client's fields either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    #[default]
    Drop,
    Keep,
}

impl UnderscoreHeaders {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Session affinity of a route: set exactly one of `cookie` or `header`.
///
/// - `cookie`: the proxy assigns a client without the cookie by the exact
///   weighted split and sets the cookie on that response; a request whose
///   cookie names a backend still in the route goes there (`decision=
///   "affinity"`) and does not count toward the weight.
/// - `header`: the value of an existing header (a user id) is hashed into
///   10,000 buckets; bucket < weight (in basis points) means canary. The
///   hash is fixed (FNV-1a), so the assignment survives restarts, and a
///   growing weight only moves users from stable to canary.
/// - With a baseline arm (`baseline`), either kind can name it: a cookie
///   `baseline.<hash>`, or a hashed bucket in `w..2w` (see
///   [`crate::affinity`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Lifetime of the cookie (`Max-Age`); a session cookie when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// Traffic mirroring: `percent` of the requests the stable serves are
/// copied to the canary, fire and forget. The client only ever gets the
/// stable's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorConfig {
    /// 0..=100, at most two decimals; exact over any run of requests.
    pub percent: f64,
    /// Requests with a larger body are not mirrored (counted in
    /// `sluice_mirror_skipped_total{reason="body_too_large"}`).
    #[serde(default = "default_mirror_max_body")]
    pub max_body: String,
    /// Methods that may be mirrored; the idempotent ones by default (GET,
    /// HEAD, OPTIONS, TRACE, PUT, DELETE). Add POST or PATCH explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Mirror requests in flight at most; a copy over it is dropped and
    /// counted (`reason="queue_full"`).
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
}

fn default_mirror_max_body() -> String {
    "64KiB".to_string()
}

fn default_mirror_in_flight() -> usize {
    512
}

fn default_path_prefix() -> String {
    "/".to_string()
}

/// An A/B rule: a request whose header (or cookie) equals `value` goes to the canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// TCP connect timeout to an upstream.
    #[serde(default = "default_connect_timeout")]
    pub connect: String,
    /// Time from the end of the request body (sent upstream) to the
    /// response head, so a slow upload is not charged to the backend.
    /// Bodies may stream for longer (gRPC streams, downloads).
    #[serde(default = "default_request_timeout")]
    pub request: String,
    /// Longest pause between chunks of a request body the client sends;
    /// a longer one is answered 408.
    #[serde(default = "default_body_idle_timeout")]
    pub idle: String,
    /// Longest pause a backend may make in its answer's body, once its
    /// head has come; a longer one cuts the answer, as a `timeout` on the
    /// backend. Long enough for streams that send now and then (gRPC
    /// server streams, server-sent events with keep-alives).
    #[serde(default = "default_answer_idle_timeout")]
    pub answer_idle: String,
    /// How long an idle pooled upstream connection is kept: below the
    /// keep-alive of common servers (Node 5 s), so the proxy closes it
    /// before the server does and never sends on a connection the server
    /// is closing.
    #[serde(default = "default_upstream_idle_timeout")]
    pub upstream_idle: String,
    /// Longest time an upgraded connection (a WebSocket after its 101)
    /// may move no byte either way before the proxy closes both sides.
    #[serde(default = "default_tunnel_idle_timeout")]
    pub tunnel_idle: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
            idle: default_body_idle_timeout(),
            answer_idle: default_answer_idle_timeout(),
            upstream_idle: default_upstream_idle_timeout(),
            tunnel_idle: default_tunnel_idle_timeout(),
        }
    }
}

fn default_connect_timeout() -> String {
    "1s".to_string()
}

fn default_request_timeout() -> String {
    "30s".to_string()
}

fn default_upstream_idle_timeout() -> String {
    "4s".to_string()
}

/// An hour, as the plain TCP listeners' `idle`: long enough for any
/// WebSocket that pings now and then, short enough that a tunnel whose
/// peers vanished without a FIN does not hold its two sockets for ever.
fn default_tunnel_idle_timeout() -> String {
    "1h".to_string()
}

/// Five minutes, as Envoy's stream idle timeout: a stream that sends
/// less often than that is rare, and a backend that hangs mid-answer
/// holds its client no longer.
fn default_answer_idle_timeout() -> String {
    "5m".to_string()
}

fn default_body_idle_timeout() -> String {
    "60s".to_string()
}

// === errors ===

/// One problem in a configuration, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl ConfigErrors {
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

mod validate;

pub use validate::*;

/// Runs a config parse so that a panic in it (a bug) becomes an error:
/// a reload never takes the watcher that runs it down with it, and the
/// last good config keeps serving.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, ConfigErrors>) -> Result<T, ConfigErrors> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ConfigErrors::single(
                "",
                format!(
                    "internal error while reading the config ({why}); please report it with the config"
                ),
            ))
        }
    }
}

// === parsing helpers ===

/// Parses durations such as `500ms`, `1s`, `1.5s`, `2m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; use a number with a unit, e.g. 500ms, 1s, 2m".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "`{text}` is not a duration; use a number with a unit, e.g. 500ms, 1s, 2m"
            ));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{text}` is not a duration: bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            "" => {
                return Err(format!(
                    "`{text}` has no unit; write e.g. {number}s or {number}ms"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}` has unknown unit `{other}`; use ms, s, m or h"
                ));
            }
        };
        total += seconds;
    }
    if !total.is_finite() || total > MAX_DURATION_SECS {
        return Err(format!(
            "`{text}` is too long; a duration is at most 8760h (a year)"
        ));
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("`{text}` is not a duration: {e}"))
}

/// The longest duration [`parse_duration`] accepts: a year. Anything
/// longer is a typo, and would overflow timers.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses sizes such as `1024`, `512KiB`, `10MiB`, `1GiB` (also `KB`,
/// `MB`, `GB` as powers of 1000) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; use e.g. 1048576, 512KiB, 10MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    let ms = d.as_millis();
    if ms == 0 && us == 0 {
        "0ms".to_string()
    } else if !us.is_multiple_of(1000) {
        format!("{}ms", us as f64 / 1000.0)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 && ms.is_multiple_of(100) {
        format!("{}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// Turns a percent with at most two decimals into basis points.
pub fn percent_to_bp(percent: f64) -> Result<u32, String> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(format!("{percent} is not in 0..=100"));
    }
    let scaled = percent * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err(format!("{percent} has more than two decimals"));
    }
    Ok(rounded as u32)
}

/// Basis points back to percent.
pub fn bp_to_percent(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

/// The text of an authority's port (`h:99999` gives `99999`, `[::1]`
/// none), as written: `http` reads a port over 65535 as no port at all.
pub fn port_text(authority: &str) -> Option<&str> {
    match authority.rfind(']') {
        Some(end) => authority[end + 1..].strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, port)| port),
    }
}

/// A parsed upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                return Err(format!(
                    "`{text}` has scheme `{other}`; use http:// or https://"
                ));
            }
            None => return Err(format!("`{text}` needs a scheme, e.g. http://{text}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{text}`: user info in upstream URLs is not supported"
            ));
        }
        match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => {}
            Some(p) => {
                return Err(format!(
                    "`{text}`: an upstream is scheme://host:port only, without a path (found `{p}`)"
                ));
            }
        }
        let host = authority.host().trim_matches(|c| c == '[' || c == ']');
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        // `http` reads a port over 65535 as none at all (which would be
        // the scheme's default): the port's text is read here instead.
        let port = match port_text(authority.as_str()) {
            None => match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            },
            Some(port) => match port.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("`{text}`: `{port}` is not a port (1-65535)")),
            },
        };
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` with IPv6 brackets as needed.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Config {
    /// Parses YAML text. Type errors carry serde's field path.
    /// Parses YAML strictly: a field no part of the config knows is an
    /// error naming its path (a typo, or a field of a newer Sluice).
    ///
    /// Each unknown field's error says where it is (`at line L column C`,
    /// where its value starts). YAML merge keys (`<<: *anchor`) are applied
    /// first, as Kubernetes' YAML reader does; an unknown field that came
    /// in through one has no line (it is written under its anchor), and in
    /// a file with one a type error names its field but no line.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let (config, unknown) = Self::read_yaml(text)?;
        if unknown.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors(
            unknown
                .into_iter()
                .enumerate()
                .map(|(i, (path, segments))| {
                    // Each place is a walk of the text: the first ones only.
                    let at = (i < LOCATED)
                        .then(|| yaml_locate::line_of(text, &segments))
                        .flatten()
                        .map(|(line, column)| format!(" at line {line} column {column}"))
                        .unwrap_or_default();
                    FieldError {
                        path,
                        message: format!(
                            "unknown field{at} (a typo, or a field of a newer Sluice)"
                        ),
                    }
                })
                .collect(),
        ))
    }

    /// Parses YAML, ignoring fields it does not know and returning their
    /// paths: how a proxy reads a config its operator wrote, so that an
    /// operator one version ahead (a new optional field) never stops an
    /// older proxy's updates. The caller logs what was ignored.
    pub fn from_yaml_lenient(text: &str) -> Result<(Self, Vec<String>), ConfigErrors> {
        let (config, unknown) = Self::read_yaml(text)?;
        Ok((config, unknown.into_iter().map(|(path, _)| path).collect()))
    }

    /// The config and its unknown fields (their paths as shown, and as
    /// keys and indexes), merge keys applied.
    fn read_yaml(text: &str) -> Result<(Self, UnknownFields), ConfigErrors> {
        let mut unknown = Vec::new();
        let mut seen = |path: serde_ignored::Path<'_>| {
            unknown.push((field_path(&path), yaml_locate::steps(&path)));
        };
        let to_errors = |e: serde_yaml_ng::Error| ConfigErrors::single("", e.to_string());
        let config = if let Some(value) = yaml_locate::merged(text).map_err(to_errors)? {
            // Read again as text, as any file is (the same scalars take the
            // same types, and errors name their field); its lines are the
            // merged text's, not the file's, so they are left out.
            let merged = serde_yaml_ng::to_string(&value).map_err(to_errors)?;
            serde_ignored::deserialize(serde_yaml_ng::Deserializer::from_str(&merged), &mut seen)
                .map_err(|e: serde_yaml_ng::Error| {
                    let mut text = e.to_string();
                    if let Some(at) = e.location() {
                        let place = format!(" at line {} column {}", at.line(), at.column());
                        if text.ends_with(&place) {
                            text.truncate(text.len() - place.len());
                        }
                    }
                    ConfigErrors::single("", text)
                })?
        } else {
            serde_ignored::deserialize(serde_yaml_ng::Deserializer::from_str(text), &mut seen)
                .map_err(to_errors)?
        };
        Ok((config, unknown))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serializes")
    }
}

/// How many unknown fields are given their line (each is a walk of the
/// whole text).
const LOCATED: usize = 20;

/// Unknown fields: each one's path as shown, and as keys and indexes.
type UnknownFields = Vec<(String, Vec<yaml_locate::Step>)>;

/// Where a field is in a YAML text, for errors that serde gives no place.
mod yaml_locate {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// One step of a path: a mapping's key or a sequence's index.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Step {
        Key(String),
        Index(usize),
    }

    /// serde_ignored's path as steps (an `Option`'s or a newtype's content
    /// is no step).
    pub fn steps(path: &serde_ignored::Path<'_>) -> Vec<Step> {
        use serde_ignored::Path;
        match path {
            Path::Root => Vec::new(),
            Path::Seq { parent, index } => {
                let mut out = steps(parent);
                out.push(Step::Index(*index));
                out
            }
            Path::Map { parent, key } => {
                let mut out = steps(parent);
                out.push(Step::Key(key.clone()));
                out
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => steps(parent),
        }
    }

    /// Whether the text has a YAML merge key (`<<`) anywhere.
    /// The text's document with its merge keys applied, when it has one
    /// (an error: the text has `<<` and is no YAML document, such as one
    /// with a key twice; said as such, not as a `<<` that is no field).
    pub fn merged(text: &str) -> Result<Option<serde_yaml_ng::Value>, serde_yaml_ng::Error> {
        if !text.contains("<<") {
            return Ok(None);
        }
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        if !has_merge_key(&value) {
            return Ok(None);
        }
        value.apply_merge()?;
        Ok(Some(value))
    }

    fn has_merge_key(value: &serde_yaml_ng::Value) -> bool {
        fn walk(v: &serde_yaml_ng::Value) -> bool {
            match v {
                serde_yaml_ng::Value::Mapping(m) => {
                    m.iter().any(|(k, v)| k.as_str() == Some("<<") || walk(v))
                }
                serde_yaml_ng::Value::Sequence(s) => s.iter().any(walk),
                serde_yaml_ng::Value::Tagged(t) => walk(&t.value),
                _ => false,
            }
        }
        walk(value)
    }

    /// The line and column (from 1) where the value at `steps` starts.
    /// The YAML is walked again, and stopped there by an error, which the
    /// YAML reader marks with the place it has reached.
    pub fn line_of(text: &str, steps: &[Step]) -> Option<(usize, usize)> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        match (Walk { steps }).deserialize(de) {
            Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
            _ => None,
        }
    }

    const FOUND: &str = "sluice: found";

    struct Walk<'s> {
        steps: &'s [Step],
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl Walk<'_> {
        /// A scalar: the place sought when the steps end here, else the
        /// path goes no further.
        fn scalar<E: serde::de::Error>(self) -> Result<(), E> {
            if self.steps.is_empty() {
                Err(E::custom(FOUND))
            } else {
                Ok(())
            }
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping or a sequence")
        }

        // At the end of the steps, the value's first event stops the walk
        // (the reader marks the error with that event's place).
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
            self.scalar()
        }

        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
            self.scalar()
        }

        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
            self.scalar()
        }

        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
            self.scalar()
        }

        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            self.scalar()
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.scalar()
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
            self.scalar()
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            if self.steps.is_empty() {
                return Err(serde::de::Error::custom(FOUND));
            }
            while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
                let matches = match (&self.steps[0], &key) {
                    (Step::Key(want), serde_yaml_ng::Value::String(k)) => want == k,
                    (Step::Key(want), other) => {
                        serde_yaml_ng::to_string(other).is_ok_and(|k| k.trim_end() == want.as_str())
                    }
                    (Step::Index(_), _) => false,
                };
                if matches {
                    return map.next_value_seed(Walk {
                        steps: &self.steps[1..],
                    });
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            if self.steps.is_empty() {
                return Err(serde::de::Error::custom(FOUND));
            }
            let mut i = 0;
            loop {
                if self.steps[0] == Step::Index(i) {
                    seq.next_element_seed(Walk {
                        steps: &self.steps[1..],
                    })?;
                    return Ok(());
                }
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
    }
}

/// `routes.0.name` (serde_ignored's path) as `routes[0].name`.
pub fn field_path(path: &serde_ignored::Path<'_>) -> String {
    let mut out = String::new();
    // serde_ignored shows an `Option`'s content as `?`: not a field.
    for part in path.to_string().split('.').filter(|p| *p != "?") {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Deserializes `value` and refuses fields `T` does not know, naming them.
pub fn strict_from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, String> {
    let mut unknown = Vec::new();
    let parsed: T = serde_ignored::deserialize(value, |path| unknown.push(field_path(&path)))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(format!("unknown field {}", unknown.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_route_names() {
        assert!(is_gateway_route_name("default/web/0"));
        assert!(is_gateway_route_name("team-a/web.v2/15"));
        assert!(!is_gateway_route_name("default/web"));
        assert!(!is_gateway_route_name("Default/web/0"));
        assert!(!is_gateway_route_name("a/b/c/1"));
        assert!(is_gateway_route_name("grpc:default/echo/0"));
        assert!(!is_gateway_route_name("grpc:default/echo"));
        assert!(!is_gateway_route_name("http:default/echo/0"));
    }

    #[test]
    fn mirroring_needs_a_canary_and_affinity_one_kind() {
        let errors = Config::from_yaml(
            "listen: 127.0.0.1:1\nroutes:\n  - name: web\n    stable: http://127.0.0.1:2\n    mirror: { percent: 5 }\n    affinity: {}\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("routes[0].mirror: needs routes[0].canary"),
            "{errors}"
        );
        assert!(
            errors.contains("routes[0].affinity: set one of `cookie` or `header`"),
            "{errors}"
        );
    }

    /// A small deterministic generator for the no-panic tests.
    struct Dice(u64);

    impl Dice {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }

        /// A string of 0..12 pieces that look like parts of numbers and units.
        fn text(&mut self) -> String {
            const PIECES: &[&str] = &[
                "0",
                "1",
                "9",
                "99999999999999999999",
                ".",
                "..",
                "5",
                "ms",
                "s",
                "m",
                "h",
                "d",
                "-",
                "+",
                "e",
                "1e400",
                " ",
                "%",
                ",",
                "µ",
                "NaN",
                "inf",
                "\u{0}",
                "18446744073709551616",
            ];
            let n = self.next() % 12;
            (0..n).map(|_| self.pick(PIECES)).collect()
        }
    }

    #[test]
    fn no_input_panics_the_duration_parser() {
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let text = dice.text();
            let _ = parse_duration(&text);
        }
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse_duration("1e400s").is_err());
        assert_eq!(
            parse_duration("8760h").unwrap(),
            Duration::from_secs(31_536_000)
        );
    }

    #[test]
    fn no_config_text_panics_the_parser() {
        let mut dice = Dice(0xdead_beef_cafe_f00d);
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        const VALUES: &[&str] = &[
            "99999999999999999999h",
            "-1",
            "1e400",
            "",
            "~",
            "[]",
            "{}",
            "\"\"",
            "0",
            "0ms",
            "http://",
            "https://[::1",
            "127.0.0.1:99999",
            "NaN",
            "101",
            "x: y: z",
            "- a",
            "&a",
            "*a",
        ];
        for _ in 0..3_000 {
            // Replace the values of a few lines with odd ones.
            let mut text = String::new();
            for line in &lines {
                if dice.next().is_multiple_of(5)
                    && let Some((key, _)) = line.split_once(':')
                {
                    text.push_str(&format!("{key}: {}\n", dice.pick(VALUES)));
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            let _ = Config::from_yaml(&text);
            let _ = Config::from_yaml_lenient(&text);
        }
    }

    #[test]
    fn a_panicking_parse_is_an_error_not_a_dead_caller() {
        let result: Result<(), ConfigErrors> = guarded(|| panic!("boom in the parser"));
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("internal error") && message.contains("boom in the parser"),
            "{message}"
        );
    }

    const EXAMPLE: &str = r#"
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
routes:
  - name: web
    hosts: [web.example]
    path_prefix: /
    protocol: http1
    stable: http://127.0.0.1:9001
    canary: http://127.0.0.1:9002
    canary_weight: 10
    canary_match:
      - header: x-canary
        value: always
      - cookie: canary
        value: always
    timeouts: { connect: 1s, request: 30s }
"#;

    #[test]
    fn example_config_is_valid() {
        let cfg = Config::from_yaml(EXAMPLE).unwrap();
        let valid = cfg.validate().unwrap();
        assert_eq!(valid.routes[0].canary_weight_bp, 1000);
        assert_eq!(valid.routes[0].canary_match.len(), 2);
        assert_eq!(valid.routes[0].request_timeout, Duration::from_secs(30));
        assert_eq!(
            valid.routes[0].tunnel_idle_timeout,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn every_error_is_listed_with_its_field_path() {
        let text = r#"
listen: nowhere
routes:
  - name: Web
    stable: ftp://x
    canary_weight: 150
  - name: api
    stable: http://127.0.0.1:1
    canary: http://127.0.0.1:2
    canary_weight: 33.333
    timeouts: { connect: 5, request: 0s, tunnel_idle: forever }
    grpc_failure_codes: [INTERNAL, BROKEN, 14]
"#;
        let errs = Config::from_yaml(text).unwrap().validate().unwrap_err();
        let text = errs.to_string();
        for expected in [
            "listen: `nowhere` is not an address",
            "routes[0].name: `Web`",
            "routes[0].stable: `ftp://x` has scheme `ftp`",
            "routes[0].canary_weight: 150 is not in 0..=100",
            "routes[1].canary_weight: 33.333 has more than two decimals",
            "routes[1].timeouts.connect: `5` has no unit",
            "routes[1].timeouts.request: must be greater than 0",
            "routes[1].timeouts.tunnel_idle: `forever`",
            "routes[1].grpc_failure_codes[1]: `BROKEN` is not a gRPC status code; use one of OK, CANCELLED,",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn an_upstream_port_is_1_to_65535_or_the_schemes_default() {
        for (text, port) in [
            ("http://h", 80),
            ("https://h", 443),
            ("http://h:1", 1),
            ("http://h:65535", 65535),
            ("http://[::1]:8080", 8080),
        ] {
            assert_eq!(UpstreamUrl::parse(text).unwrap().port, port, "{text}");
        }
        for (text, port) in [
            ("http://h:0", "0"),
            ("http://h:65536", "65536"),
            ("http://127.0.0.1:99999", "99999"),
            ("https://h:123456789012", "123456789012"),
        ] {
            let err = UpstreamUrl::parse(text).unwrap_err();
            assert_eq!(err, format!("`{text}`: `{port}` is not a port (1-65535)"));
        }
        let text =
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://127.0.0.1:99999' }\n";
        let errs = Config::from_yaml(text).unwrap().validate().unwrap_err();
        assert!(
            errs.to_string()
                .contains("routes[0].stable: `http://127.0.0.1:99999`: `99999` is not a port"),
            "{errs}"
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = Config::from_yaml("listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h\n    canary_weight: lots\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("routes[0].canary_weight"), "{err}");
        let err = Config::from_yaml("listen: 127.0.0.1:1\nroutez: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("routez: unknown field"), "{err}");
        let err = Config::from_yaml("listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h\n    timeouts: {connct: 1s}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routes[0].timeouts.connct: unknown field"),
            "{err}"
        );
    }

    /// Every unknown field is named with the line and column of its value.
    #[test]
    fn unknown_fields_say_where_they_are() {
        let text = "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h\n    canary_weigth: 10\n    timeouts: { conect: 1s }\n  - name: b\n    path_prefix: /b\n    stable: http://h\n    mirror:\n      percent: 5\n      max_bodyy: 1KiB\n";
        let err = Config::from_yaml(text).unwrap_err().to_string();
        for wanted in [
            "routes[0].canary_weigth: unknown field at line 5 column 20 ",
            "routes[0].timeouts.conect: unknown field at line 6 column 25 ",
            "routes[1].mirror.max_bodyy: unknown field at line 12 column 18 ",
        ] {
            assert!(err.contains(wanted), "{wanted} in {err}");
        }
    }

    /// YAML merge keys are applied, as Kubernetes' YAML reader applies
    /// them; an unknown field still says where it is.
    #[test]
    fn merge_keys_are_applied() {
        let text = "listen: 127.0.0.1:1\nroutes:\n  - &web\n    name: a\n    stable: http://h\n    timeouts: { connect: 3s }\n  - <<: *web\n    name: b\n    path_prefix: /b\n";
        let config = Config::from_yaml(text).unwrap();
        assert_eq!(config.routes[1].name, "b");
        assert_eq!(config.routes[1].timeouts.connect, "3s");
        assert_eq!(config.routes[1].stable, config.routes[0].stable);
        let err = Config::from_yaml(&format!("{text}    retriez: 2\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routes[1].retriez: unknown field at line 10 column 14 "),
            "{err}"
        );
        // Scalars take the types they take in any file, and a type error
        // names its field (its line would be the merged text's: left out).
        let config = Config::from_yaml(&format!(
            "{text}  - {{ name: 123, stable: http://h, path_prefix: /c }}\n"
        ))
        .unwrap();
        assert_eq!(config.routes[2].name, "123");
        let err = Config::from_yaml(&format!("{text}    canary_weight: lots\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routes[1].canary_weight: invalid type") && !err.contains(" at line "),
            "{err}"
        );
        // A key given twice is said to be, not hidden behind the merge.
        let err = Config::from_yaml(&format!("{text}    name: c\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate entry"), "{err}");
    }

    /// A config written by an operator one version ahead, with fields this
    /// proxy does not know: read leniently, the known part is used and the
    /// unknown fields are named.
    #[test]
    fn unknown_fields_are_named_and_ignored_when_lenient() {
        let text = "listen: 127.0.0.1:1\nretries: {budget: 0.2}\nroutes:\n  - name: a\n    stable: http://h\n    canary: http://c\n    outlier_detection: {}\n    canary_weight: 5\n";
        let (config, unknown) = Config::from_yaml_lenient(text).unwrap();
        assert_eq!(unknown, ["retries", "routes[0].outlier_detection"]);
        assert_eq!(config.routes[0].canary_weight, 5.0);
        assert!(config.validate().is_ok());
        assert!(Config::from_yaml(text).is_err(), "strict for files");
    }

    #[test]
    fn underscore_headers_are_dropped_unless_a_route_keeps_them() {
        let text = "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://h:1' }\n  - { name: b, path_prefix: /b, stable: 'http://h:2', underscore_headers: keep }\n";
        let valid = Config::from_yaml(text).unwrap().validate().unwrap();
        assert!(!valid.routes[0].keep_underscore_headers);
        assert!(valid.routes[1].keep_underscore_headers);
        let err = Config::from_yaml(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://h:1', underscore_headers: allow }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("routes[0].underscore_headers")
                && err.contains("unknown variant `allow`, expected `drop` or `keep`"),
            "{err}"
        );
    }

    const MATCHES: &str = r#"
listen: 127.0.0.1:1
routes:
  - name: shop
    hosts: [shop.example]
    matches:
      - path_prefix: /api
        methods: [GET, POST]
        headers: [{name: x-env, value: beta}]
        query: [{name: v, value: "2"}]
      - path_exact: /api/login
    request_headers:
      set: [{name: x-a, value: "1"}]
      add: [{name: x-b, value: "2"}]
      remove: [x-c]
    response_headers:
      set: [{name: x-d, value: "3"}]
    stable: http://127.0.0.1:2
"#;

    #[test]
    fn matches_and_modifiers_parse_validate_and_serialize_back() {
        let config = Config::from_yaml(MATCHES).unwrap();
        let valid = config.validate().unwrap();
        let route = &valid.routes[0];
        assert_eq!(route.matches.len(), 2);
        assert_eq!(
            route.matches[0].methods,
            [http::Method::GET, http::Method::POST]
        );
        assert_eq!(route.matches[1].path, PathMatch::Exact("/api/login".into()));
        assert_eq!(route.request_headers.as_ref().unwrap().remove[0], "x-c");
        assert_eq!(route.response_headers.as_ref().unwrap().set.len(), 1);
        assert_eq!(Config::from_yaml(&config.to_yaml()).unwrap(), config);
        // A route without them serializes as before.
        let plain = Config::from_yaml(EXAMPLE).unwrap().to_yaml();
        for field in ["matches", "request_headers", "response_headers"] {
            assert!(!plain.contains(field), "{plain}");
        }
        let valid = Config::from_yaml(EXAMPLE).unwrap().validate().unwrap();
        assert_eq!(
            valid.routes[0].matches,
            [ValidRouteMatch::prefix("/")],
            "a route without matches has one on its path_prefix"
        );
    }

    fn errors_of(yaml: &str) -> String {
        Config::from_yaml(yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_bad_match_and_modifier_is_named_by_its_path() {
        let text = r#"
listen: 127.0.0.1:1
routes:
  - name: a
    path_prefix: /x
    matches:
      - { path_prefix: api }
      - { path_prefix: /a, path_exact: /a }
      - { path_exact: "/a b" }
      - { methods: [get, "G T", CONNECT] }
      - headers: [{name: "x env", value: a}, {name: x-ok, value: " padded"}]
      - query: [{name: "", value: a}, {name: "a&b", value: "x"}, {name: "a&b", value: "y"}]
    request_headers:
      set: [{name: content-length, value: "1"}, {name: x-a, value: "1"}, {name: x-a, value: "2"}, {name: x-b, value: "1"}]
      add: [{name: x-forwarded-for, value: "1"}, {name: proxy-authorization, value: "1"}, {name: x-c, value: "bad\nvalue"}]
      remove: [X-Sluice-Mirror, x-b, "bad name", Host]
    response_headers:
      remove: [transfer-encoding, connection]
    stable: http://127.0.0.1:2
"#;
        let errors = errors_of(text);
        for expected in [
            "routes[0].path_prefix: `/x` and routes[0].matches are mutually exclusive",
            "routes[0].matches[0].path_prefix: `api` must start with '/'",
            "routes[0].matches[1]: set one of `path_prefix`, `path_exact` and `path_segments`, not more",
            "routes[0].matches[2].path_exact: `/a b` holds a space",
            "routes[0].matches[3].methods[0]: `get` must be upper case (`GET`)",
            "routes[0].matches[3].methods[1]: `G T` is not a method",
            "routes[0].matches[3].methods[2]: `CONNECT` never reaches a route",
            "routes[0].matches[4].headers[0].name: `x env` is not a header field name",
            "routes[0].matches[4].headers[1].value: \" padded\" starts or ends with a space",
            "routes[0].matches[5].query[0].name: must not be empty",
            "routes[0].matches[5].query[2].name: `a&b` is already a condition of this match",
            "routes[0].request_headers.set[0].name: `content-length` is a field the proxy sets",
            "routes[0].request_headers.set[2].name: `x-a` is already set by routes[0].request_headers.set[1]",
            "routes[0].request_headers.set[3].name: `x-b` is also removed by routes[0].request_headers.remove[1]",
            "routes[0].request_headers.add[0].name: `x-forwarded-for` is a field the proxy sets",
            "routes[0].request_headers.add[1].name: `proxy-authorization` is a field the proxy sets",
            "routes[0].request_headers.add[2].value: \"bad\\nvalue\" holds a control character",
            "routes[0].request_headers.remove[0]: `x-sluice-mirror` is a field the proxy sets",
            "routes[0].request_headers.remove[2]: `bad name` is not a header field name",
            "routes[0].request_headers.remove[3]: `host` is a field the proxy sets",
            "routes[0].response_headers.remove[0]: `transfer-encoding` is a field the proxy sets",
            "routes[0].response_headers.remove[1]: `connection` is a field the proxy sets",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn identical_hosts_and_match_on_two_routes_are_refused() {
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, hosts: [x.example], matches: [{path_prefix: /api, methods: [GET, POST], headers: [{name: X-Env, value: b}]}], stable: 'http://h:1' }\n  - { name: b, hosts: [x.example], matches: [{path_exact: /api}, {path_prefix: /api, methods: [POST, GET], headers: [{name: x-env, value: b}]}], stable: 'http://h:2' }\n  - { name: c, hosts: [x.example], path_prefix: /api/v2, stable: 'http://h:3' }\n  - { name: d, hosts: [x.example], matches: [{path_prefix: /api/v2}], stable: 'http://h:4' }\n",
        );
        assert!(
            errors.contains("routes[1].matches[1]: an earlier route or match already has the same hosts and conditions"),
            "{errors}"
        );
        assert!(
            errors.contains("routes[3].matches[0]: an earlier route"),
            "{errors}"
        );
        assert!(!errors.contains("routes[1].matches[0]"), "{errors}");
        assert!(!errors.contains("routes[2]"), "{errors}");
    }

    #[test]
    fn a_baseline_arm_needs_a_canary_a_url_and_a_weight_of_at_most_50() {
        let ok = Config::from_yaml(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://h:1', canary: 'http://h:2', baseline: 'http://h:3', canary_weight: 50 }\n",
        )
        .unwrap();
        let valid = ok.validate().unwrap();
        assert_eq!(valid.routes[0].baseline.as_ref().unwrap().port, 3);
        assert_eq!(valid.routes[0].canary_weight_bp, 5000);
        assert!(ok.to_yaml().contains("baseline: http://h:3"));
        let plain = Config::from_yaml(EXAMPLE).unwrap();
        assert!(!plain.to_yaml().contains("baseline"));
        assert_eq!(plain.validate().unwrap().routes[0].baseline, None);
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://h:1', canary: 'http://h:2', baseline: 'http://h:3', canary_weight: 50.01 }\n  - { name: b, path_prefix: /b, stable: 'http://h:1', baseline: 'http://h:3' }\n  - { name: c, path_prefix: /c, stable: 'http://h:1', canary: 'http://h:2', baseline: 'ftp://h:3' }\n",
        );
        for expected in [
            "routes[0].canary_weight: 50.01 is over 50 while routes[0].baseline is set",
            "routes[1].baseline: needs routes[1].canary to be set",
            "routes[2].baseline: `ftp://h:3` has scheme `ftp`",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let cfg =
            Config::from_yaml("listen: 127.0.0.1:1\nadmin: { listen: 0.0.0.0:9901 }\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("admin.token_file: required"), "{err}");
    }

    #[test]
    fn the_admin_api_needs_an_address_of_its_own() {
        let err = errors_of("listen: 127.0.0.1:18080\nadmin: { listen: 127.0.0.1:18080 }\n");
        assert!(
            err.starts_with("admin.listen: 127.0.0.1:18080 takes the port of listen"),
            "{err}"
        );
        let err = errors_of("listen: 0.0.0.0:18080\nadmin: { listen: 127.0.0.1:18080 }\n");
        assert!(
            err.starts_with("admin.listen: 127.0.0.1:18080 takes the port"),
            "{err}"
        );
        // Ephemeral ports (0) are two different ports.
        let cfg =
            Config::from_yaml("listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\n").unwrap();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_micros(2250)), "2.25ms");
        assert_eq!(format_duration(Duration::from_millis(22_500)), "22.5s");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        for text in ["1.2ms", "2.25ms", "22.5s", "90s", "2m", "1500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn weights_become_basis_points() {
        assert_eq!(percent_to_bp(33.33).unwrap(), 3333);
        assert_eq!(percent_to_bp(0.01).unwrap(), 1);
        assert_eq!(percent_to_bp(100.0).unwrap(), 10_000);
        assert!(percent_to_bp(-1.0).is_err());
        assert!(percent_to_bp(f64::NAN).is_err());
    }

    #[test]
    fn duplicate_names_and_selectors_are_rejected() {
        let text = "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://h:1' }\n  - { name: a, stable: 'http://h:2' }\n";
        let err = Config::from_yaml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routes[1].name: `a` is used by an earlier route"),
            "{err}"
        );
        assert!(err.contains("routes[1].path_prefix"), "{err}");
    }

    #[test]
    fn path_segments_backend_canary_and_direct_response_parse_and_serialize_back() {
        let text = "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    matches:\n      - { path_segments: /api/ }\n      - { path_segments: / }\n      - { path_segments: /b, headers: [{name: x-canary, value: always}], backend: canary }\n    stable: http://h:1\n    canary: http://h:2\n  - name: gone\n    path_prefix: /gone\n    direct_response: { status: 500 }\n  - name: teapot\n    path_prefix: /tea\n    direct_response: { status: 418, body: short and stout }\n";
        let config = Config::from_yaml(text).unwrap();
        let valid = config.validate().unwrap();
        let m = &valid.routes[0].matches;
        assert_eq!(m[0].path, PathMatch::Segments("/api".into()));
        assert_eq!(m[1].path, PathMatch::Prefix("/".into()));
        assert!(m[2].to_canary && !m[0].to_canary);
        assert!(m[0].path.holds("/api") && m[0].path.holds("/api/x"));
        assert!(!m[0].path.holds("/apix") && !m[0].path.holds("/ap"));
        let gone = &valid.routes[1];
        assert!(gone.stable.is_none());
        let direct = gone.direct_response.as_ref().unwrap();
        assert_eq!((direct.status.as_u16(), direct.body.as_str()), (500, ""));
        assert_eq!(
            valid.routes[2].direct_response.as_ref().unwrap().body,
            "short and stout"
        );
        let yaml = config.to_yaml();
        assert!(!yaml.contains("stable: ''"), "{yaml}");
        // Config paths are read as request paths are: escapes of
        // unreserved characters decoded, others kept.
        let escaped = Config::from_yaml("listen: 127.0.0.1:1\nroutes:\n  - { name: a, path_prefix: /%7Eme, stable: 'http://h:1' }\n  - { name: b, matches: [{path_exact: /%61%2F}, {path_segments: /%41/}], stable: 'http://h:2' }\n").unwrap().validate().unwrap();
        assert_eq!(
            escaped.routes[0].matches[0].path,
            PathMatch::Prefix("/~me".into())
        );
        assert_eq!(
            escaped.routes[1].matches[0].path,
            PathMatch::Exact("/a%2F".into())
        );
        assert_eq!(
            escaped.routes[1].matches[1].path,
            PathMatch::Segments("/A".into())
        );
        assert_eq!(Config::from_yaml(&yaml).unwrap(), config);
    }

    #[test]
    fn bad_path_segments_backend_and_direct_response_are_named_by_their_path() {
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    matches:\n      - { path_segments: api }\n      - { path_segments: /a, path_prefix: /a }\n      - { path_exact: /b, backend: canary }\n      - { headers: [{name: Host, value: a.example}] }\n    stable: http://h:1\n  - { name: b, path_prefix: /b }\n  - { name: c, path_prefix: /c, stable: 'http://h:1', direct_response: {status: 500} }\n  - { name: d, path_prefix: /d, direct_response: {status: 101} }\n  - { name: e, path_prefix: /e, direct_response: {status: 204, body: x} }\n  - { name: f, path_prefix: /f, direct_response: {status: 503}, canary: 'http://h:2', canary_weight: 5, affinity: {cookie: s}, mirror: {percent: 5} }\n",
        );
        for expected in [
            "routes[0].matches[0].path_segments: `api` must start with '/'",
            "routes[0].matches[1]: set one of `path_prefix`, `path_exact` and `path_segments`, not more",
            "routes[0].matches[2].backend: `canary` needs routes[0].canary to be set",
            "routes[0].matches[3].headers[0].name: `Host`: match the request's host with the route's `hosts`",
            "routes[1].stable: is required (the backend's URL), unless routes[1].direct_response is set",
            "routes[2].stable: and routes[2].direct_response are mutually exclusive",
            "routes[3].direct_response.status: 101 is not a final status (200-599)",
            "routes[4].direct_response.body: a 204 answer has no body",
            "routes[5].canary: needs a backend; routes[5].direct_response answers without one",
            "routes[5].affinity: needs a backend",
            "routes[5].mirror: needs a backend",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn a_star_in_a_host_is_only_a_whole_first_label() {
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h:1\n    hosts: ['*', 'x.*', 'a.*.test', '*a.test', '*.ok.test', 'Plain.Test']\n",
        );
        for expected in [
            "routes[0].hosts[0]: `*` is not a host pattern; leave `hosts` out",
            "routes[0].hosts[1]: `x.*`: `*` may only be a whole first label",
            "routes[0].hosts[2]: `a.*.test`: `*` may only be a whole first label",
            "routes[0].hosts[3]: `*a.test`: `*` may only be a whole first label",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        assert!(
            !errors.contains("hosts[4]") && !errors.contains("hosts[5]"),
            "{errors}"
        );
    }

    #[test]
    fn ab_rules_that_could_never_match_or_match_one_protocol_only_are_named() {
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h:1\n    canary: http://h:2\n    canary_match:\n      - { header: host, value: ab.test }\n      - { header: x-env, value: \"a\\r\\nb\" }\n      - { header: x-env, value: ' lead' }\n      - { header: 'x env', value: a }\n      - { cookie: 'a,b', value: x }\n      - { cookie: ü, value: x }\n      - { cookie: group, value: 'a b' }\n      - { header: x-ok, value: beta }\n      - { cookie: group, value: beta }\n",
        );
        for expected in [
            "routes[0].canary_match[0].header: `host`: a request's host is not an A/B rule",
            "routes[0].canary_match[1].value: \"a\\r\\nb\" holds a control character",
            "routes[0].canary_match[2].value: \" lead\" starts or ends with a space",
            "routes[0].canary_match[3].header: `x env` is not a header field name",
            "routes[0].canary_match[4].cookie: `a,b` is not a cookie name",
            "routes[0].canary_match[5].cookie: `ü` is not a cookie name",
            "routes[0].canary_match[6].value: \"a b\" is not a cookie value",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        assert!(
            !errors.contains("canary_match[7]") && !errors.contains("canary_match[8]"),
            "{errors}"
        );
    }

    #[test]
    fn modifiers_refuse_the_underscore_spellings_of_proxy_owned_fields() {
        let errors = errors_of(
            "listen: 127.0.0.1:1\nroutes:\n  - name: a\n    stable: http://h:1\n    request_headers:\n      set: [{name: X_Forwarded_For, value: '1'}, {name: Content_Length, value: '1'}, {name: x_ok, value: '1'}]\n      add: [{name: Transfer_Encoding, value: chunked}, {name: x_sluice_route, value: x}]\n      remove: [proxy_authorization, Expect_]\n    response_headers:\n      remove: [x_real_ip]\n",
        );
        for expected in [
            "routes[0].request_headers.set[0].name: `x_forwarded_for` is a field the proxy sets",
            "routes[0].request_headers.set[1].name: `content_length` is a field the proxy sets",
            "routes[0].request_headers.add[0].name: `transfer_encoding` is a field the proxy sets",
            "routes[0].request_headers.add[1].name: `x_sluice_route` is a field the proxy sets",
            "routes[0].request_headers.remove[0]: `proxy_authorization` is a field the proxy sets",
            "routes[0].response_headers.remove[0]: `x_real_ip` is a field the proxy sets",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        assert!(
            !errors.contains("set[2]"),
            "x_ok is no proxy field: {errors}"
        );
        assert!(
            !errors.contains("remove[1]"),
            "expect_ is not expect: {errors}"
        );
    }
}
