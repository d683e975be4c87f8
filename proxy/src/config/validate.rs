//! Validation: every rule of a [`Config`], checked at once, into the
//! [`ValidConfig`] the proxy runs on. Each problem names its field path
//! (`routes[1].canary_weight`); a config with any problem is refused whole.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The prefix of the Sluice route names made of GRPCRoutes, so that a
/// GRPCRoute and an HTTPRoute of one name never share a route (or its
/// metrics): `grpc:NS/NAME/INDEX`. (`:` is in no Kubernetes name.)
pub const GRPC_NAME_PREFIX: &str = "grpc:";

/// Whether `name` is a route name the Gateway API controller
/// ([`crate::gateway`]) writes, `NS/NAME/INDEX`
/// (an HTTPRoute's rule) or `grpc:NS/NAME/INDEX` (a GRPCRoute's).
pub fn is_gateway_route_name(name: &str) -> bool {
    let name = name.strip_prefix(GRPC_NAME_PREFIX).unwrap_or(name);
    let mut parts = name.split('/');
    let (Some(ns), Some(n), Some(i), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let dns = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    dns(ns, 63)
        && dns(n, 253)
        && !i.is_empty()
        && i.len() <= 2
        && i.bytes().all(|b| b.is_ascii_digit())
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

// === validated form ===

/// A route after validation: every field parsed into the types the proxy uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRoute {
    pub name: String,
    /// 0 for `listen`, 1 + i for `listeners[i]`.
    pub listener: usize,
    pub hosts: Vec<String>,
    /// The top-level `path_prefix` (`/` when the route has `matches`).
    pub path_prefix: String,
    /// The route's matches, never empty: one on `path_prefix` when the
    /// config gave none.
    pub matches: Vec<ValidRouteMatch>,
    pub request_headers: Option<ValidHeaderModifier>,
    pub response_headers: Option<ValidHeaderModifier>,
    pub protocol: Protocol,
    /// None only for a route with `direct_response`.
    pub stable: Option<UpstreamUrl>,
    /// The proxy's own answer to the route's requests (then no backend).
    pub direct_response: Option<ValidDirectResponse>,
    pub canary: Option<UpstreamUrl>,
    /// The baseline arm (see [`RouteConfig::baseline`]): with it, the
    /// weighted split gives it `canary_weight_bp` too (so at most 5000).
    pub baseline: Option<UpstreamUrl>,
    pub canary_weight_bp: u32,
    pub canary_match: Vec<ValidMatch>,
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub upstream_idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Longest pause between request body chunks.
    pub body_idle_timeout: Duration,
    /// `timeouts.answer_idle`: the backend's longest pause in its answer's
    /// body.
    pub answer_idle_timeout: Duration,
    /// An upgraded connection moving no byte this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub upstream_tls: UpstreamTls,
    pub grpc_failure_codes: crate::grpc::Codes,
    pub affinity: Option<ValidAffinity>,
    pub mirror: Option<ValidMirror>,
    /// Request fields with `_` in their names are passed on (see
    /// [`UnderscoreHeaders`]).
    pub keep_underscore_headers: bool,
    /// A request the canary provably never started on goes to the stable
    /// (see [`Failover`]).
    pub failover: bool,
}

/// A route's `direct_response` after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDirectResponse {
    pub status: http::StatusCode,
    pub body: String,
}

/// How a match compares the (normalised) path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Whole segments: the path is this or starts with this plus `/`.
    /// Held without a trailing `/` (never `/` itself: that is `Prefix`).
    Segments(String),
}

impl PathMatch {
    /// Whether the normalised `path` holds.
    pub fn holds(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Segments(segments) => path
                .strip_prefix(segments.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// One of a route's matches after validation (see [`RouteMatch`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidRouteMatch {
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<http::Method>,
    /// Names lower-cased; values compared as bytes.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Names and values as written; compared with the percent-decoded
    /// first parameter of that name.
    pub query: Vec<(String, String)>,
    /// `backend: canary`: a request this match wins goes to the canary as
    /// an A/B request.
    pub to_canary: bool,
}

impl ValidRouteMatch {
    /// A match on a path prefix alone: what a route without `matches` has.
    pub fn prefix(path_prefix: &str) -> Self {
        Self {
            path: PathMatch::Prefix(path_prefix.to_string()),
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            to_canary: false,
        }
    }

    /// The prefix of a match on a path prefix alone.
    pub fn plain_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(prefix) if !self.has_conditions() => Some(prefix),
            _ => None,
        }
    }

    /// Whether it has conditions besides a path prefix.
    pub fn has_conditions(&self) -> bool {
        !matches!(self.path, PathMatch::Prefix(_))
            || !self.methods.is_empty()
            || !self.headers.is_empty()
            || !self.query.is_empty()
            || self.to_canary
    }

    /// The same match whatever the order its conditions were written in
    /// (to find duplicates).
    fn canonical(&self) -> Self {
        let mut c = self.clone();
        c.methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        c.methods.dedup();
        c.headers
            .sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        c.headers.dedup();
        c.query.sort();
        c.query.dedup();
        // Where it sends requests is no condition: a second match with
        // the same conditions never wins whichever backend it names.
        c.to_canary = false;
        c
    }
}

/// A header modifier after validation (see [`HeaderModifier`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidHeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl ValidHeaderModifier {
    /// Whether `name` (lower case) is one the modifier removes or sets,
    /// so a field of that name from the message is not passed on.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
            || self
                .set
                .iter()
                .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields it writes: `set`'s then `add`'s.
    pub fn written(&self) -> impl Iterator<Item = &(http::HeaderName, http::HeaderValue)> {
        self.set.iter().chain(self.add.iter())
    }

    /// Applies it to a header map: remove, set, add.
    pub fn apply(&self, map: &mut http::HeaderMap) {
        for name in &self.remove {
            map.remove(name);
        }
        for (name, value) in &self.set {
            map.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            map.append(name.clone(), value.clone());
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValidAffinity {
    Cookie {
        name: String,
        max_age: Option<Duration>,
    },
    Header {
        name: http::HeaderName,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidMirror {
    pub percent_bp: u32,
    pub max_body: u64,
    pub methods: Vec<http::Method>,
    pub max_in_flight: usize,
}

/// Whether `name` is an RFC 6265 cookie name (an RFC 9110 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Verification settings of one https upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTlsKey {
    pub ca_file: Option<PathBuf>,
    pub server_name: String,
}

impl ValidRoute {
    /// TLS settings for an upstream of this route (None for http://).
    pub fn tls_for(&self, url: &UpstreamUrl) -> Option<UpstreamTlsKey> {
        (url.scheme == Scheme::Https).then(|| UpstreamTlsKey {
            ca_file: self.upstream_tls.ca_file.clone(),
            server_name: self
                .upstream_tls
                .server_name
                .clone()
                .unwrap_or_else(|| url.host.clone()),
        })
    }

    /// The TLS settings of each https upstream (stable, canary, baseline).
    pub fn upstream_tls_keys(&self) -> impl Iterator<Item = UpstreamTlsKey> + '_ {
        self.stable
            .iter()
            .chain(self.canary.as_ref())
            .chain(self.baseline.as_ref())
            .filter_map(|u| self.tls_for(u))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValidMatch {
    Header {
        name: http::HeaderName,
        value: String,
    },
    Cookie {
        name: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig {
    pub listen: SocketAddr,
    /// Extra listeners: (name, address); a route's `listener` is 1 + its index.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_listen: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
    /// None: no keep-alive pings.
    pub h2_keepalive: Option<Duration>,
    /// See [`Forwarding`].
    pub trusted_hops: u32,
    pub max_connections: usize,
    /// Open plain TCP connections (all `tcp_listeners`), apart from
    /// `max_connections`.
    pub max_tcp_connections: usize,
    pub max_requests_in_flight: usize,
    /// Bytes; None: no limit.
    pub max_request_body: Option<u64>,
    pub h2_max_streams: u32,
    pub tls: Option<TlsConfig>,
    pub routes: Vec<ValidRoute>,
    /// Plain TCP listeners, in config order.
    pub tcp_listeners: Vec<ValidTcpListener>,
}

/// A plain TCP listener after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTcpListener {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: TcpUpstream,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Where a TCP listener forwards to: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpUpstream {
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl TcpUpstream {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains("://") {
            return Err(format!(
                "`{text}` has a scheme; a TCP upstream is host:port, e.g. db-primary:5432"
            ));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "`{text}` has no port; a TCP upstream is host:port, e.g. db-primary:5432"
            ));
        };
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!("`{text}`: `{port}` is not a port (1-65535)"));
            }
            Ok(p) => p,
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            let Some(v6) = inner.strip_suffix(']') else {
                return Err(format!("`{text}`: `{host}` lacks its closing `]`"));
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{text}`: `{v6}` is not an IPv6 address"));
            }
            v6.to_string()
        } else if host.contains(':') {
            return Err(format!(
                "`{text}`: write an IPv6 address in brackets, e.g. [::1]:5432"
            ));
        } else if host.is_empty() || host.contains('*') || !valid_host(host) {
            return Err(format!("`{text}`: `{host}` is not a host name"));
        } else {
            host.to_ascii_lowercase()
        };
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for TcpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Config {
    /// Checks every rule and returns all problems found, each with its field path.
    pub fn validate(&self) -> Result<ValidConfig, ConfigErrors> {
        let mut errs = Collector(Vec::new());
        let listen = parse_addr(&self.listen, "listen", &mut errs);
        let admin_listen = parse_addr(&self.admin.listen, "admin.listen", &mut errs);
        if let Some(addr) = admin_listen
            && !addr.ip().is_loopback()
            && self.admin.token_file.is_none()
        {
            errs.push(
                "admin.token_file",
                format!("required when admin.listen ({addr}) is not a loopback address"),
            );
        }
        // The same port on the same address, or on a wildcard (0.0.0.0,
        // [::]) that takes in the other.
        if let (Some(data), Some(admin)) = (listen, admin_listen)
            && data.port() != 0
            && data.port() == admin.port()
            && (data.ip() == admin.ip()
                || data.ip().is_unspecified()
                || admin.ip().is_unspecified())
        {
            errs.push(
                "admin.listen",
                format!("{admin} takes the port of listen ({data}); the admin API needs an address of its own"),
            );
        }
        let limits = self.validate_limits(&mut errs);
        let listeners = self.validate_listeners(listen, admin_listen, &mut errs);
        let routes = self.validate_routes(&mut errs);
        let tcp_listeners = self.validate_tcp_listeners(listen, admin_listen, &mut errs);
        if !errs.0.is_empty() {
            return Err(ConfigErrors(errs.0));
        }
        Ok(ValidConfig {
            listen: listen.expect("checked"),
            listeners,
            admin_listen: admin_listen.expect("checked"),
            admin_token_file: self.admin.token_file.clone(),
            header_read_timeout: limits.header_read_timeout.expect("checked"),
            max_header_bytes: self.limits.max_header_bytes,
            idle_timeout: limits.idle_timeout.expect("checked"),
            trusted_hops: self.forwarding.trusted_hops,
            max_connections: self.limits.max_connections,
            max_tcp_connections: self.limits.max_tcp_connections,
            max_requests_in_flight: self.limits.max_requests_in_flight,
            max_request_body: limits.max_request_body,
            h2_max_streams: self.limits.h2_max_streams,
            h2_keepalive: limits.h2_keepalive.expect("checked"),
            tls: self.tls.clone(),
            routes,
            tcp_listeners,
        })
    }
}

/// The `limits` section's values that need parsing (None where an error
/// was recorded).
struct ParsedLimits {
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    h2_keepalive: Option<Option<Duration>>,
    max_request_body: Option<u64>,
}

impl Config {
    fn validate_limits(&self, errs: &mut Collector) -> ParsedLimits {
        let header_read_timeout = match parse_duration(&self.limits.header_read_timeout) {
            Ok(d) if d.is_zero() => {
                errs.push("limits.header_read_timeout", "must be greater than 0");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errs.push("limits.header_read_timeout", e);
                None
            }
        };
        let idle_timeout =
            positive_duration(&self.limits.idle_timeout, "limits.idle_timeout", errs);
        let h2_keepalive = match parse_duration(&self.limits.h2_keepalive) {
            Ok(d) => Some((!d.is_zero()).then_some(d)),
            Err(e) => {
                errs.push("limits.h2_keepalive", e);
                None
            }
        };
        for (field, value) in [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_tcp_connections",
                self.limits.max_tcp_connections,
            ),
            (
                "limits.max_requests_in_flight",
                self.limits.max_requests_in_flight,
            ),
            ("limits.h2_max_streams", self.limits.h2_max_streams as usize),
        ] {
            if value == 0 {
                errs.push(field, "must be at least 1");
            }
        }
        let max_request_body = match self.limits.max_request_body.as_deref().map(parse_size) {
            None => None,
            Some(Ok(0)) => {
                errs.push("limits.max_request_body", "must be greater than 0");
                None
            }
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => {
                errs.push("limits.max_request_body", e);
                None
            }
        };
        if self.limits.max_header_bytes < 1024 {
            errs.push(
                "limits.max_header_bytes",
                format!(
                    "{} is below the minimum of 1024",
                    self.limits.max_header_bytes
                ),
            );
        }

        ParsedLimits {
            header_read_timeout,
            idle_timeout,
            h2_keepalive,
            max_request_body,
        }
    }

    /// The extra listeners: (name, address), each name and address used once.
    fn validate_listeners(
        &self,
        listen: Option<SocketAddr>,
        admin_listen: Option<SocketAddr>,
        errs: &mut Collector,
    ) -> Vec<(String, SocketAddr)> {
        let mut listeners = Vec::new();
        let mut addrs: HashSet<SocketAddr> = listen.into_iter().chain(admin_listen).collect();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if !valid_route_name(&l.name) {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
                        l.name
                    ),
                );
            } else if listeners.iter().any(|(n, _)| *n == l.name) {
                errs.push(
                    format!("{at}.name"),
                    format!("`{}` is used by an earlier listener", l.name),
                );
            }
            if let Some(addr) = parse_addr(&l.listen, &format!("{at}.listen"), errs) {
                if addr.port() != 0 && !addrs.insert(addr) {
                    errs.push(
                        format!("{at}.listen"),
                        format!(
                            "{addr} is already used by listen, admin.listen or an earlier listener"
                        ),
                    );
                }
                listeners.push((l.name.clone(), addr));
            }
        }
        listeners
    }

    /// The plain TCP listeners: names unique among all listeners, each
    /// address used once (port 0 aside), upstream and timeouts parsed.
    fn validate_tcp_listeners(
        &self,
        listen: Option<SocketAddr>,
        admin_listen: Option<SocketAddr>,
        errs: &mut Collector,
    ) -> Vec<ValidTcpListener> {
        let mut used: HashSet<SocketAddr> = listen.into_iter().chain(admin_listen).collect();
        used.extend(
            self.listeners
                .iter()
                .filter_map(|l| l.listen.parse::<SocketAddr>().ok()),
        );
        let mut out: Vec<ValidTcpListener> = Vec::new();
        for (i, l) in self.tcp_listeners.iter().enumerate() {
            let at = format!("tcp_listeners[{i}]");
            let before = errs.0.len();
            if !valid_route_name(&l.name) {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
                        l.name
                    ),
                );
            } else if self.listeners.iter().any(|h| h.name == l.name)
                || self.tcp_listeners[..i].iter().any(|t| t.name == l.name)
            {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` is used by an earlier listener; names must be unique across listeners and tcp_listeners",
                        l.name
                    ),
                );
            }
            let addr = parse_addr(&l.listen, &format!("{at}.listen"), errs);
            if let Some(addr) = addr
                && addr.port() != 0
                && !used.insert(addr)
            {
                errs.push(
                    format!("{at}.listen"),
                    format!(
                        "{addr} is already used by listen, admin.listen, a listener or an earlier tcp listener"
                    ),
                );
            }
            let upstream = match TcpUpstream::parse(l.upstream.trim()) {
                Ok(u) => Some(u),
                Err(e) => {
                    errs.push(format!("{at}.upstream"), e);
                    None
                }
            };
            let connect_timeout =
                positive_duration(&l.timeouts.connect, &format!("{at}.timeouts.connect"), errs);
            let idle_timeout =
                positive_duration(&l.timeouts.idle, &format!("{at}.timeouts.idle"), errs);
            if errs.0.len() == before {
                out.push(ValidTcpListener {
                    name: l.name.clone(),
                    listen: addr.expect("checked"),
                    upstream: upstream.expect("checked"),
                    connect_timeout: connect_timeout.expect("checked"),
                    idle_timeout: idle_timeout.expect("checked"),
                });
            }
        }
        out
    }

    /// Every route, each on its listener, with names and selectors unique.
    fn validate_routes(&self, errs: &mut Collector) -> Vec<ValidRoute> {
        let mut names = HashSet::new();
        let mut selectors = HashSet::new();
        let mut routes = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let listener = match &route.listener {
                None => 0,
                Some(name) => match self.listeners.iter().position(|l| &l.name == name) {
                    Some(i) => i + 1,
                    None => {
                        let known: Vec<&str> =
                            self.listeners.iter().map(|l| l.name.as_str()).collect();
                        errs.push(
                            format!("{at}.listener"),
                            format!(
                                "`{name}` is not a listener (listeners: {})",
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                        0
                    }
                },
            };
            if !names.insert(route.name.clone()) {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` is used by an earlier route; names must be unique",
                        route.name
                    ),
                );
            }
            if let Some(mut valid) = validate_route(route, &at, errs) {
                valid.listener = listener;
                let mut hosts = valid.hosts.clone();
                hosts.sort();
                hosts.dedup();
                for (j, m) in valid.matches.iter().enumerate() {
                    if selectors.insert((listener, hosts.clone(), m.canonical())) {
                        continue;
                    }
                    if route.matches.is_empty() {
                        errs.push(
                            format!("{at}.path_prefix"),
                            format!(
                                "an earlier route already has the same hosts and path_prefix `{}`",
                                valid.path_prefix
                            ),
                        );
                    } else {
                        errs.push(
                            format!("{at}.matches[{j}]"),
                            "an earlier route or match already has the same hosts and conditions; \
                             one of them could never be chosen",
                        );
                    }
                }
                routes.push(valid);
            }
        }
        routes
    }
}

fn parse_addr(text: &str, path: &str, errs: &mut Collector) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("`{text}` is not an address like 127.0.0.1:8080"),
            );
            None
        }
    }
}

fn validate_route(route: &RouteConfig, at: &str, errs: &mut Collector) -> Option<ValidRoute> {
    let before = errs.0.len();
    check_route_name(&route.name, at, errs);
    let hosts = validate_hosts(route, at, errs);
    let route_matches = validate_route_matches(route, at, errs);
    let request_headers = route
        .request_headers
        .as_ref()
        .and_then(|m| validate_header_modifier(m, &format!("{at}.request_headers"), errs));
    let response_headers = route
        .response_headers
        .as_ref()
        .and_then(|m| validate_header_modifier(m, &format!("{at}.response_headers"), errs));
    let stable = validate_stable(route, at, errs);
    let direct_response = route
        .direct_response
        .as_ref()
        .and_then(|d| validate_direct_response(route, d, at, errs));
    for (j, m) in route.matches.iter().enumerate() {
        if m.backend == Some(MatchBackend::Canary) && route.canary.is_none() {
            errs.push(
                format!("{at}.matches[{j}].backend"),
                format!("`canary` needs {at}.canary to be set"),
            );
        }
    }
    let canary = optional_upstream(route.canary.as_deref(), &format!("{at}.canary"), errs);
    let baseline = optional_upstream(route.baseline.as_deref(), &format!("{at}.baseline"), errs);
    let weight = validate_canary_weight(route, at, errs);
    let canary_match = validate_canary_match(route, at, errs);
    let affinity = route
        .affinity
        .as_ref()
        .and_then(|a| validate_affinity(a, Some(&route.path_prefix), at, errs));
    let mirror = route
        .mirror
        .as_ref()
        .and_then(|m| validate_mirror(m, at, errs));
    if route.canary.is_none() && route.mirror.is_some() {
        errs.push(
            format!("{at}.mirror"),
            format!("needs {at}.canary to be set (the copies go to the canary)"),
        );
    }
    let timeouts = validate_route_timeouts(&route.timeouts, at, errs);
    let uses_https = [&stable, &canary, &baseline]
        .into_iter()
        .any(|u| u.as_ref().is_some_and(|u| u.scheme == Scheme::Https));
    check_upstream_tls(route.upstream_tls.as_ref(), uses_https, at, errs);
    let grpc_failure_codes = validate_grpc_failure_codes(route, at, errs);
    if errs.0.len() > before {
        return None;
    }
    let timeouts = timeouts?;
    Some(ValidRoute {
        name: route.name.clone(),
        listener: 0,
        hosts,
        path_prefix: route.path_prefix.clone(),
        matches: route_matches,
        request_headers,
        response_headers,
        protocol: route.protocol,
        stable,
        direct_response,
        canary,
        baseline,
        canary_weight_bp: weight?,
        canary_match,
        connect_timeout: timeouts.connect,
        upstream_idle_timeout: timeouts.upstream_idle,
        request_timeout: timeouts.request,
        body_idle_timeout: timeouts.body_idle,
        answer_idle_timeout: timeouts.answer_idle,
        tunnel_idle_timeout: timeouts.tunnel_idle,
        upstream_tls: route.upstream_tls.clone().unwrap_or_default(),
        grpc_failure_codes,
        affinity,
        mirror,
        keep_underscore_headers: route.underscore_headers == UnderscoreHeaders::Keep,
        failover: route.failover == Failover::Stable,
    })
}

/// A route's name: a plain one, or `NS/NAME/RULE_INDEX`, a route made of
/// an HTTPRoute's rule (`--gateway-api`).
fn check_route_name(name: &str, at: &str, errs: &mut Collector) {
    if !valid_route_name(name) && !is_gateway_route_name(name) {
        errs.push(
            format!("{at}.name"),
            format!(
                "`{name}` must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        );
    }
}

/// A route's hosts, trimmed and in lower case.
fn validate_hosts(route: &RouteConfig, at: &str, errs: &mut Collector) -> Vec<String> {
    let mut hosts = Vec::new();
    for (j, host) in route.hosts.iter().enumerate() {
        let h = host.trim().to_ascii_lowercase();
        // `*` only as a whole first label (`*.example.com`: any one or
        // more labels before it); anywhere else it would match only a Host
        // that holds a `*` itself.
        let name = h.strip_prefix("*.").unwrap_or(&h);
        if h == "*" {
            errs.push(
                format!("{at}.hosts[{j}]"),
                "`*` is not a host pattern; leave `hosts` out to match every host",
            );
        } else if name.contains('*') {
            errs.push(
                format!("{at}.hosts[{j}]"),
                format!("`{host}`: `*` may only be a whole first label, as in `*.example.com`"),
            );
        } else if !valid_host(name) {
            errs.push(
                format!("{at}.hosts[{j}]"),
                format!("`{host}` is not a host name"),
            );
        }
        hosts.push(h);
    }
    hosts
}

/// A route's path matches: its `matches`, or else one made of its
/// `path_prefix` (the two are mutually exclusive).
fn validate_route_matches(
    route: &RouteConfig,
    at: &str,
    errs: &mut Collector,
) -> Vec<ValidRouteMatch> {
    if !route.path_prefix.starts_with('/') {
        errs.push(
            format!("{at}.path_prefix"),
            format!("`{}` must start with '/'", route.path_prefix),
        );
    }
    if !route.matches.is_empty() && route.path_prefix != "/" {
        errs.push(
            format!("{at}.path_prefix"),
            format!(
                "`{}` and {at}.matches are mutually exclusive; write the prefix in each match (matches[].path_prefix)",
                route.path_prefix
            ),
        );
    }
    let mut route_matches: Vec<ValidRouteMatch> = route
        .matches
        .iter()
        .enumerate()
        .filter_map(|(j, m)| validate_route_match(m, &format!("{at}.matches[{j}]"), errs))
        .collect();
    if route.matches.is_empty() {
        route_matches.push(ValidRouteMatch::prefix(&crate::fields::decode_unreserved(
            &route.path_prefix,
        )));
    }
    route_matches
}

/// A route's `stable` URL: required, unless the route answers itself
/// (`direct_response`), which excludes it.
fn validate_stable(route: &RouteConfig, at: &str, errs: &mut Collector) -> Option<UpstreamUrl> {
    match (&route.direct_response, route.stable.as_str()) {
        (None, "") => {
            errs.push(
                format!("{at}.stable"),
                format!("is required (the backend's URL), unless {at}.direct_response is set"),
            );
            None
        }
        (Some(_), "") => None,
        (Some(_), _) => {
            errs.push(
                format!("{at}.stable"),
                format!(
                    "and {at}.direct_response are mutually exclusive: the proxy answers a direct-response route itself"
                ),
            );
            None
        }
        (None, text) => match UpstreamUrl::parse(text) {
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(format!("{at}.stable"), e);
                None
            }
        },
    }
}

/// An optional upstream URL (`canary`, `baseline`) at `path`.
fn optional_upstream(text: Option<&str>, path: &str, errs: &mut Collector) -> Option<UpstreamUrl> {
    match UpstreamUrl::parse(text?) {
        Ok(u) => Some(u),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

/// A route's `canary_weight` in basis points, and the rules between the
/// weight, the canary, the baseline and the A/B rules.
fn validate_canary_weight(route: &RouteConfig, at: &str, errs: &mut Collector) -> Option<u32> {
    if route.baseline.is_some() && route.canary.is_none() {
        errs.push(
            format!("{at}.baseline"),
            format!("needs {at}.canary to be set (the baseline arm is judged against a canary)"),
        );
    }
    let weight = match percent_to_bp(route.canary_weight) {
        Ok(bp) => Some(bp),
        Err(e) => {
            errs.push(format!("{at}.canary_weight"), e);
            None
        }
    };
    if route.baseline.is_some() && weight.is_some_and(|w| w > WEIGHT_SCALE_BP / 2) {
        errs.push(
            format!("{at}.canary_weight"),
            format!(
                "{} is over 50 while {at}.baseline is set (the baseline arm gets the canary's share too, so the two together take at most 100)",
                route.canary_weight
            ),
        );
    }
    if route.canary.is_none() && weight.is_some_and(|w| w > 0) {
        errs.push(
            format!("{at}.canary_weight"),
            format!(
                "{} needs {at}.canary to be set (there is no canary to send traffic to)",
                route.canary_weight
            ),
        );
    }
    if route.canary.is_none() && !route.canary_match.is_empty() {
        errs.push(
            format!("{at}.canary_match"),
            format!("rules need {at}.canary to be set"),
        );
    }
    weight
}

/// A route's A/B rules (`canary_match`): each one header or one cookie,
/// held to the rules of `matches` (a field name and value a request can
/// carry, no `host`; a cookie name that is a token and a value with no
/// `;`, space or control character), so that no rule is accepted that
/// could never match, or match over one protocol only.
fn validate_canary_match(route: &RouteConfig, at: &str, errs: &mut Collector) -> Vec<ValidMatch> {
    let mut matches = Vec::new();
    for (j, rule) in route.canary_match.iter().enumerate() {
        let mp = format!("{at}.canary_match[{j}]");
        match (&rule.header, &rule.cookie) {
            (Some(h), None) => {
                let name = header_name(h, &format!("{mp}.header"), errs).filter(|n| {
                    // As in `matches`: an HTTP/2 client sends its host as
                    // `:authority`, so a rule on Host would hold for
                    // HTTP/1.1 clients only.
                    let host = *n == http::header::HOST;
                    if host {
                        errs.push(
                            format!("{mp}.header"),
                            format!("`{h}`: a request's host is not an A/B rule; give the canary its own route with `hosts`"),
                        );
                    }
                    !host
                });
                let value = field_value(&rule.value, &format!("{mp}.value"), errs);
                if let (Some(name), Some(_)) = (name, value) {
                    matches.push(ValidMatch::Header {
                        name,
                        value: rule.value.clone(),
                    });
                }
            }
            (None, Some(c)) => {
                let name_ok = valid_cookie_name(c);
                if !name_ok {
                    errs.push(
                        format!("{mp}.cookie"),
                        format!("`{c}` is not a cookie name (a token: letters, digits and !#$%&'*+-.^_`|~)"),
                    );
                }
                let value_ok = rule
                    .value
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b',');
                if !value_ok {
                    errs.push(
                        format!("{mp}.value"),
                        format!(
                            "{:?} is not a cookie value (visible characters but `;` and `,`)",
                            rule.value
                        ),
                    );
                }
                if name_ok && value_ok {
                    matches.push(ValidMatch::Cookie {
                        name: c.clone(),
                        value: rule.value.clone(),
                    });
                }
            }
            (Some(_), Some(_)) => errs.push(&mp, "set either `header` or `cookie`, not both"),
            (None, None) => errs.push(&mp, "set one of `header` or `cookie`"),
        }
    }
    matches
}

/// A route's timeouts, each positive.
struct RouteTimeouts {
    connect: Duration,
    request: Duration,
    body_idle: Duration,
    answer_idle: Duration,
    upstream_idle: Duration,
    tunnel_idle: Duration,
}

/// `timeouts` parsed; every bad one is reported before `None` is returned.
fn validate_route_timeouts(
    timeouts: &Timeouts,
    at: &str,
    errs: &mut Collector,
) -> Option<RouteTimeouts> {
    let connect = positive_duration(&timeouts.connect, &format!("{at}.timeouts.connect"), errs);
    let request = positive_duration(&timeouts.request, &format!("{at}.timeouts.request"), errs);
    let body_idle = positive_duration(&timeouts.idle, &format!("{at}.timeouts.idle"), errs);
    let answer_idle = positive_duration(
        &timeouts.answer_idle,
        &format!("{at}.timeouts.answer_idle"),
        errs,
    );
    let upstream_idle = positive_duration(
        &timeouts.upstream_idle,
        &format!("{at}.timeouts.upstream_idle"),
        errs,
    );
    let tunnel_idle = positive_duration(
        &timeouts.tunnel_idle,
        &format!("{at}.timeouts.tunnel_idle"),
        errs,
    );
    Some(RouteTimeouts {
        connect: connect?,
        request: request?,
        body_idle: body_idle?,
        answer_idle: answer_idle?,
        upstream_idle: upstream_idle?,
        tunnel_idle: tunnel_idle?,
    })
}

/// `upstream_tls` applies to `https://` upstreams only, and names its
/// server by a DNS name or an IP address.
fn check_upstream_tls(tls: Option<&UpstreamTls>, uses_https: bool, at: &str, errs: &mut Collector) {
    let Some(tls) = tls else {
        return;
    };
    if !uses_https {
        errs.push(
            format!("{at}.upstream_tls"),
            "applies to https:// upstreams only; stable, canary and baseline are http://",
        );
    }
    if let Some(name) = &tls.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        errs.push(
            format!("{at}.upstream_tls.server_name"),
            format!("`{name}` is not a DNS name or IP address"),
        );
    }
}

/// The gRPC status codes a route counts as failures (the default set
/// unless `grpc_failure_codes` names them).
fn validate_grpc_failure_codes(
    route: &RouteConfig,
    at: &str,
    errs: &mut Collector,
) -> crate::grpc::Codes {
    match &route.grpc_failure_codes {
        None => crate::grpc::Codes::default(),
        Some(list) => match crate::grpc::Codes::resolve(list) {
            Ok(codes) => codes,
            Err(bad) => {
                for (j, message) in bad {
                    errs.push(format!("{at}.grpc_failure_codes[{j}]"), message);
                }
                crate::grpc::Codes::default()
            }
        },
    }
}

/// Checks route settings on their own (for control planes that bring
/// them): errors name the field under `affinity.` / `mirror.`.
pub fn check_affinity(affinity: &AffinityConfig) -> Result<ValidAffinity, ConfigErrors> {
    let mut errs = Collector(Vec::new());
    match validate_affinity(affinity, None, "", &mut errs) {
        Some(valid) if errs.0.is_empty() => Ok(valid),
        _ => Err(ConfigErrors(strip_leading_dot(errs.0))),
    }
}

/// See [`check_affinity`].
pub fn check_mirror(mirror: &MirrorConfig) -> Result<ValidMirror, ConfigErrors> {
    let mut errs = Collector(Vec::new());
    match validate_mirror(mirror, "", &mut errs) {
        Some(valid) if errs.0.is_empty() => Ok(valid),
        _ => Err(ConfigErrors(strip_leading_dot(errs.0))),
    }
}

fn strip_leading_dot(errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| FieldError {
            path: e.path.trim_start_matches('.').to_string(),
            ..e
        })
        .collect()
}

fn validate_affinity(
    affinity: &AffinityConfig,
    path: Option<&str>,
    at: &str,
    errs: &mut Collector,
) -> Option<ValidAffinity> {
    let at = format!("{at}.affinity");
    match (&affinity.cookie, &affinity.header) {
        (Some(cookie), None) => {
            if let Some(path) = path
                && !path.bytes().all(|b| b.is_ascii_graphic() && b != b';')
            {
                errs.push(
                    format!("{at}.cookie"),
                    format!("the route's path_prefix `{path}` cannot be a cookie's Path (it holds a space, `;` or a control character)"),
                );
                return None;
            }
            if !valid_cookie_name(cookie) {
                errs.push(
                    format!("{at}.cookie"),
                    format!("`{cookie}` is not a valid cookie name (a token: letters, digits and !#$%&'*+-.^_`|~)"),
                );
                return None;
            }
            let max_age = match &affinity.max_age {
                None => None,
                Some(text) => Some(positive_duration(text, &format!("{at}.max_age"), errs)?),
            };
            Some(ValidAffinity::Cookie {
                name: cookie.clone(),
                max_age,
            })
        }
        (None, Some(header)) => {
            if affinity.max_age.is_some() {
                errs.push(format!("{at}.max_age"), "applies to `cookie` affinity only");
            }
            match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => Some(ValidAffinity::Header { name }),
                Err(_) => {
                    errs.push(
                        format!("{at}.header"),
                        format!("`{header}` is not a header name"),
                    );
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            errs.push(&at, "set either `cookie` or `header`, not both");
            None
        }
        (None, None) => {
            errs.push(&at, "set one of `cookie` or `header`");
            None
        }
    }
}

/// The methods mirrored when `mirror.methods` is unset: the idempotent ones.
pub const MIRROR_DEFAULT_METHODS: [http::Method; 6] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::OPTIONS,
    http::Method::TRACE,
    http::Method::PUT,
    http::Method::DELETE,
];

fn validate_mirror(mirror: &MirrorConfig, at: &str, errs: &mut Collector) -> Option<ValidMirror> {
    let at = format!("{at}.mirror");
    let before = errs.0.len();
    let percent_bp = match percent_to_bp(mirror.percent) {
        Ok(bp) => bp,
        Err(e) => {
            errs.push(format!("{at}.percent"), e);
            0
        }
    };
    let max_body = match parse_size(&mirror.max_body) {
        Ok(n) => n,
        Err(e) => {
            errs.push(format!("{at}.max_body"), e);
            0
        }
    };
    let methods = match &mirror.methods {
        None => MIRROR_DEFAULT_METHODS.to_vec(),
        Some(list) => {
            let mut methods = Vec::new();
            for (j, m) in list.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                match upper.as_str() {
                    "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
                    | "TRACE" => methods.push(
                        http::Method::from_bytes(upper.as_bytes()).expect("a standard method"),
                    ),
                    _ => errs.push(
                        format!("{at}.methods[{j}]"),
                        format!("`{m}` is not a method the proxy forwards (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE)"),
                    ),
                }
            }
            if list.is_empty() {
                errs.push(format!("{at}.methods"), "must name at least one method");
            }
            methods
        }
    };
    if mirror.max_in_flight == 0 {
        errs.push(format!("{at}.max_in_flight"), "must be greater than 0");
    }
    (errs.0.len() == before).then_some(ValidMirror {
        percent_bp,
        max_body,
        methods,
        max_in_flight: mirror.max_in_flight,
    })
}

fn positive_duration(text: &str, path: &str, errs: &mut Collector) -> Option<Duration> {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => {
            errs.push(path, "must be greater than 0");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

/// One of a route's `matches` (see [`RouteMatch`]); `at` is its path.
fn validate_route_match(m: &RouteMatch, at: &str, errs: &mut Collector) -> Option<ValidRouteMatch> {
    let before = errs.0.len();
    let path = validate_match_path(m, at, errs);
    let methods = validate_methods(m, at, errs);
    let headers = validate_header_conditions(m, at, errs);
    let query = validate_query_conditions(m, at, errs);
    (errs.0.len() == before).then_some(ValidRouteMatch {
        path,
        methods,
        headers,
        query,
        to_canary: m.backend == Some(MatchBackend::Canary),
    })
}

/// A match's path: at most one of `path_prefix`, `path_exact` and
/// `path_segments` (none: every path), read as requests' paths are.
fn validate_match_path(m: &RouteMatch, at: &str, errs: &mut Collector) -> PathMatch {
    match (&m.path_prefix, &m.path_exact, &m.path_segments) {
        (Some(prefix), None, None) => {
            check_match_path("path_prefix", prefix, at, errs);
            PathMatch::Prefix(crate::fields::decode_unreserved(prefix).into_owned())
        }
        (None, Some(exact), None) => {
            check_match_path("path_exact", exact, at, errs);
            PathMatch::Exact(crate::fields::decode_unreserved(exact).into_owned())
        }
        (None, None, Some(segments)) => {
            check_match_path("path_segments", segments, at, errs);
            // As requests' paths are routed: `%7E` and `~` are one path.
            match crate::fields::decode_unreserved(segments).trim_end_matches('/') {
                "" => PathMatch::Prefix("/".into()),
                whole => PathMatch::Segments(whole.to_string()),
            }
        }
        (None, None, None) => PathMatch::Prefix("/".into()),
        _ => {
            errs.push(
                at,
                "set one of `path_prefix`, `path_exact` and `path_segments`, not more",
            );
            PathMatch::Prefix("/".into())
        }
    }
}

/// A path of a match (`field` at `at`): absolute, printable, without
/// query or fragment.
fn check_match_path(field: &str, path: &str, at: &str, errs: &mut Collector) {
    if !path.starts_with('/') {
        errs.push(
            format!("{at}.{field}"),
            format!("`{path}` must start with '/'"),
        );
    } else if !path.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push(
            format!("{at}.{field}"),
            format!(
                "`{path}` holds a space or a character a request path never has (percent-encode it)"
            ),
        );
    } else if path.contains('?') || path.contains('#') {
        errs.push(
            format!("{at}.{field}"),
            format!("`{path}` holds `?` or `#`; a path match is on the path alone (use `query` for parameters)"),
        );
    }
}

/// A match's `methods`: upper-case tokens, not `CONNECT`.
fn validate_methods(m: &RouteMatch, at: &str, errs: &mut Collector) -> Vec<http::Method> {
    let mut methods = Vec::new();
    for (k, method) in m.methods.iter().enumerate() {
        let mp = format!("{at}.methods[{k}]");
        let token = !method.is_empty() && method.bytes().all(is_token_byte);
        if !token {
            errs.push(
                mp,
                format!("`{method}` is not a method (a token such as GET)"),
            );
        } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
            errs.push(
                mp,
                format!(
                    "`{method}` must be upper case (`{}`): methods are case-sensitive",
                    method.to_ascii_uppercase()
                ),
            );
        } else if method == "CONNECT" {
            errs.push(
                mp,
                "`CONNECT` never reaches a route: the proxy answers it 405 itself",
            );
        } else {
            methods.push(http::Method::from_bytes(method.as_bytes()).expect("a token"));
        }
    }
    methods
}

/// A match's header conditions: a field name (not Host) and a value.
fn validate_header_conditions(
    m: &RouteMatch,
    at: &str,
    errs: &mut Collector,
) -> Vec<(http::HeaderName, String)> {
    let mut headers = Vec::new();
    for (k, h) in m.headers.iter().enumerate() {
        let hp = format!("{at}.headers[{k}]");
        let name = header_name(&h.name, &format!("{hp}.name"), errs).filter(|n| {
            // An HTTP/2 client sends its host as `:authority`, not Host:
            // a match on the field would hold for one protocol only.
            let host = *n == http::header::HOST;
            if host {
                errs.push(
                    format!("{hp}.name"),
                    format!("`{}`: match the request's host with the route's `hosts`, not a header condition", h.name),
                );
            }
            !host
        });
        let value = field_value(&h.value, &format!("{hp}.value"), errs);
        if let (Some(name), Some(_)) = (name, value) {
            headers.push((name, h.value.clone()));
        }
    }
    headers
}

/// A match's query conditions: a non-empty name, once each.
fn validate_query_conditions(
    m: &RouteMatch,
    at: &str,
    errs: &mut Collector,
) -> Vec<(String, String)> {
    let mut query = Vec::new();
    for (k, q) in m.query.iter().enumerate() {
        let qp = format!("{at}.query[{k}]");
        // Names and values are compared percent-decoded, so any character
        // can be matched (`&` as `%26`); only an empty name never can.
        if q.name.is_empty() {
            errs.push(format!("{qp}.name"), "must not be empty");
        } else if query
            .iter()
            .any(|(name, _): &(String, String)| *name == q.name)
        {
            errs.push(
                format!("{qp}.name"),
                format!(
                    "`{}` is already a condition of this match; one value per parameter",
                    q.name
                ),
            );
        }
        query.push((q.name.clone(), q.value.clone()));
    }
    query
}

/// A route's `direct_response`: a status a final answer may have, a body
/// only where the status allows one, and none of the settings that need
/// a backend.
fn validate_direct_response(
    route: &RouteConfig,
    d: &DirectResponse,
    at: &str,
    errs: &mut Collector,
) -> Option<ValidDirectResponse> {
    let before = errs.0.len();
    let dp = format!("{at}.direct_response");
    let status = http::StatusCode::from_u16(d.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()));
    if status.is_none() {
        errs.push(
            format!("{dp}.status"),
            format!(
                "{} is not a final status (200-599); the proxy answers with it",
                d.status
            ),
        );
    }
    if let Some(s) = status
        && (s == http::StatusCode::NO_CONTENT || s == http::StatusCode::NOT_MODIFIED)
        && d.body.as_ref().is_some_and(|b| !b.is_empty())
    {
        errs.push(
            format!("{dp}.body"),
            format!("a {} answer has no body", s.as_u16()),
        );
    }
    let needs_backend = [
        ("canary", route.canary.is_some()),
        ("baseline", route.baseline.is_some()),
        ("mirror", route.mirror.is_some()),
        ("affinity", route.affinity.is_some()),
        ("canary_match", !route.canary_match.is_empty()),
        ("upstream_tls", route.upstream_tls.is_some()),
    ];
    for (field, set) in needs_backend {
        if set {
            errs.push(
                format!("{at}.{field}"),
                format!("needs a backend; {dp} answers without one (remove one of the two)"),
            );
        }
    }
    (errs.0.len() == before).then(|| ValidDirectResponse {
        status: status.expect("checked above"),
        body: d.body.clone().unwrap_or_default(),
    })
}

/// A route's `request_headers` / `response_headers`; `at` is its path.
fn validate_header_modifier(
    m: &HeaderModifier,
    at: &str,
    errs: &mut Collector,
) -> Option<ValidHeaderModifier> {
    let before = errs.0.len();
    let owned = |name: &http::HeaderName, path: &str, errs: &mut Collector| {
        if crate::fields::proxy_owned_field(name.as_str().as_bytes()) {
            errs.push(
                path,
                format!(
                    "`{name}` is a field the proxy sets or frames messages by (Host, Content-Length, \
                     Transfer-Encoding, Connection, Keep-Alive, TE, Upgrade, Trailer, Proxy-*, \
                     Expect, HTTP2-Settings, X-Forwarded-*, Forwarded, X-Real-IP, X-Sluice-*); \
                     a route cannot change it"
                ),
            );
            false
        } else {
            true
        }
    };
    let pairs = |list: &[NameValue], field: &str, errs: &mut Collector| {
        let mut out = Vec::new();
        for (k, nv) in list.iter().enumerate() {
            let np = format!("{at}.{field}[{k}].name");
            let name = header_name(&nv.name, &np, errs).filter(|n| owned(n, &np, errs));
            let value = field_value(&nv.value, &format!("{at}.{field}[{k}].value"), errs);
            if let (Some(name), Some(value)) = (name, value) {
                out.push((k, name, value));
            }
        }
        out
    };
    let set = pairs(&m.set, "set", errs);
    let add = pairs(&m.add, "add", errs);
    let mut remove = Vec::new();
    for (k, text) in m.remove.iter().enumerate() {
        let rp = format!("{at}.remove[{k}]");
        if let Some(name) = header_name(text, &rp, errs).filter(|n| owned(n, &rp, errs)) {
            remove.push((k, name));
        }
    }
    for (i, (k, name, _)) in set.iter().enumerate() {
        if let Some((first, _, _)) = set[..i].iter().find(|(_, n, _)| n == name) {
            errs.push(
                format!("{at}.set[{k}].name"),
                format!("`{name}` is already set by {at}.set[{first}]; set a name once"),
            );
        }
        if let Some((r, _)) = remove.iter().find(|(_, n)| n == name) {
            errs.push(
                format!("{at}.set[{k}].name"),
                format!(
                    "`{name}` is also removed by {at}.remove[{r}]; set it or remove it, not both"
                ),
            );
        }
    }
    (errs.0.len() == before).then(|| ValidHeaderModifier {
        set: set.into_iter().map(|(_, n, v)| (n, v)).collect(),
        add: add.into_iter().map(|(_, n, v)| (n, v)).collect(),
        remove: remove.into_iter().map(|(_, n)| n).collect(),
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(text: &str, path: &str, errs: &mut Collector) -> Option<http::HeaderName> {
    if text.is_empty() || !text.bytes().all(is_token_byte) {
        errs.push(
            path,
            format!(
                "`{text}` is not a header field name (a token: letters, digits and !#$%&'*+-.^_`|~)"
            ),
        );
        return None;
    }
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            errs.push(path, format!("`{text}` is not a header field name"));
            None
        }
    }
}

/// A field value: visible characters, spaces and tabs inside (no control
/// characters, no line breaks), none at either end, where parsers strip
/// them.
fn field_value(text: &str, path: &str, errs: &mut Collector) -> Option<http::HeaderValue> {
    if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        errs.push(
            path,
            format!(
                "{text:?} holds a control character or line break; a header field value cannot"
            ),
        );
        return None;
    }
    if text.starts_with([' ', '\t']) || text.ends_with([' ', '\t']) {
        errs.push(
            path,
            format!("{text:?} starts or ends with a space or tab, which a received field value never does"),
        );
        return None;
    }
    match http::HeaderValue::from_str(text) {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(path, format!("{text:?} is not a header field value"));
            None
        }
    }
}
