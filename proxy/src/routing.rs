//! The immutable routing table the request path reads through `ArcSwap`.
//!
//! A route has one or more *matches* (alternatives: a request that
//! satisfies any one belongs to the route); a route without `matches` in
//! its config has one, on its `path_prefix`. A match holds when all its
//! conditions do:
//! - the listener is the route's, and the route's `hosts` contain the
//!   request host (port and case ignored; `*.suffix` is one or more labels
//!   before `.suffix`), or the route has no hosts;
//! - the normalised path ([`normalise_path`]) starts with the match's
//!   `path_prefix` (a plain string prefix, as Envoy's and nginx's
//!   `location`: `/api` also takes `/apis`; write `/api/` plus an exact
//!   `/api` for whole segments), or equals its `path_exact`, or is its
//!   `path_segments` or starts with it plus `/` (never `/apix`);
//! - the method is one of its `methods` (when it has any);
//! - for each of its `headers`, some field of that name (any case) has
//!   exactly that value (case-sensitive); for `cookie`, the request's
//!   cookie fields joined with `; ` have it (HTTP/2 clients may split
//!   them, HTTP/1.1 clients send one: the same answer for both);
//! - for each of its `query` parameters, the *first* parameter of that
//!   name (case-sensitive) in the query string has exactly that value,
//!   both compared after percent-decoding (`+` stays `+`).
//!
//! **Precedence.** Among the (route, match) pairs that hold, the first in
//! this order wins (the Gateway API's order; the host first, as nginx
//! picks a server before a location and Envoy a virtual host before a
//! route):
//! 1. the route naming the request's host most specifically: an exact
//!    name, then a wildcard by the length of its suffix (`*.a.example`
//!    before `*.example`), then a route for any host;
//! 2. an exact path beats any prefix;
//! 3. a longer prefix beats a shorter one (`path_segments` is a prefix
//!    of its length, without a trailing `/`);
//! 4. a match with `methods` beats one without;
//! 5. more header conditions beat fewer;
//! 6. more query conditions beat fewer;
//! 7. then config order (routes, then a route's matches).
//!
//! For a table without conditions (no route has `matches` beyond a prefix)
//! the lookup is a scan of the routes by prefix length, reading neither
//! the method, the fields nor the query; it stops at the first hit when
//! no route names hosts, or at the first route naming the host exactly. The query string is read only when a match whose other
//! conditions hold has query conditions, and without allocating.
//! No route matching is the route phase's 404; a route with
//! `direct_response` is answered there too, without a backend.
//!
//! The winning match decides the backend first: one with `backend:
//! canary` sends the request to the canary as an A/B request
//! ([`Route::decide`]), so an A/B condition ranks by its own headers
//! like any other match; a route without such matches decides as before.

use std::cmp::Reverse;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{
    Config, PathMatch, Protocol, UpstreamUrl, ValidConfig, ValidHeaderModifier, ValidMatch,
    ValidRoute, ValidRouteMatch, bp_to_percent,
};
use crate::fields::{Fields, decode_unreserved, hex_value};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{
    BackendLabel, BackendMetrics, ClientErrors, Decision, Metrics, RejectReason, Series,
};
use crate::record::Permit;
use crate::split::{Arm, SplitState};
use crate::upstream::{BackendClients, ClientPool, PoolKey};

/// One backend of a route with its pooled client and metric handles.
pub struct Backend {
    pub label: BackendLabel,
    pub url: UpstreamUrl,
    pub client: BackendClients,
    pub metrics: BackendMetrics,
    /// Requests chosen by the weighted split (all stable traffic).
    pub weighted: Arc<Series>,
    /// Requests sent here by an A/B rule (canaries of routes with rules),
    /// and the stable's share of them: A/B requests that failed over to it.
    pub matched: Option<Arc<Series>>,
    /// Requests sent here by session affinity (routes with `affinity`).
    pub affine: Option<Arc<Series>>,
    pub pool_key: PoolKey,
    /// Retries allowed: 20% of requests, plus 10 (as Linkerd's budget).
    pub retry_budget: Arc<RetryBudget>,
}

/// A route's `direct_response` with its `sluice_direct_responses_total`.
pub struct DirectResponse {
    pub answer: crate::config::ValidDirectResponse,
    pub counted: Counter,
}

/// How many retries a backend may still make: at most 20% of its
/// requests plus 10, over the last 10 to 20 seconds (two windows of 10 s),
/// as Linkerd's budget. A backend's budget outlives reloads that keep it.
pub struct RetryBudget {
    /// The current window's number (seconds since the process's clock
    /// origin / 10).
    window: AtomicU64,
    /// Requests and retries, by window number modulo 2.
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

/// A retry budget's window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window: AtomicU64::new(Self::window_now()),
            requests: Default::default(),
            retries: Default::default(),
        }
    }
}

impl RetryBudget {
    fn window_at(at: std::time::Instant) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        at.saturating_duration_since(origin).as_secs() / BUDGET_WINDOW.as_secs()
    }

    fn window_now() -> u64 {
        Self::window_at(std::time::Instant::now())
    }

    /// The slot of the window of `at`, after clearing what went out of
    /// the two windows counted.
    fn slot(&self, at: std::time::Instant) -> usize {
        let now = Self::window_at(at);
        let seen = self.window.load(Ordering::Relaxed);
        if seen != now
            && self
                .window
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The slot of `now` held the window before `seen` (or older).
            let stale: &[usize] = if now == seen + 1 {
                &[(now % 2) as usize]
            } else {
                &[0, 1]
            };
            for &i in stale {
                self.requests[i].store(0, Ordering::Relaxed);
                self.retries[i].store(0, Ordering::Relaxed);
            }
        }
        (now % 2) as usize
    }

    /// A request was made at `at` (its start: no clock read per request).
    pub fn note_request(&self, at: std::time::Instant) {
        self.requests[self.slot(at)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_retry(&self) -> bool {
        let slot = self.slot(std::time::Instant::now());
        let requests =
            self.requests[0].load(Ordering::Relaxed) + self.requests[1].load(Ordering::Relaxed);
        let taken =
            self.retries[0].load(Ordering::Relaxed) + self.retries[1].load(Ordering::Relaxed);
        if taken >= requests / 5 + 10 {
            return false;
        }
        self.retries[slot].fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Backend {
    /// A retry from the retry budget, counted when taken.
    pub fn take_retry(&self) -> bool {
        let allowed = self.retry_budget.try_retry();
        if allowed {
            self.metrics.record_retry();
        }
        allowed
    }

    /// The series a request sent here for `decision` is counted in.
    pub fn series(&self, decision: SplitDecision) -> &Arc<Series> {
        match decision {
            SplitDecision::CanaryByMatch => self.matched.as_ref(),
            SplitDecision::StableByAffinity
            | SplitDecision::CanaryByAffinity
            | SplitDecision::BaselineByAffinity => self.affine.as_ref(),
            SplitDecision::Stable
            | SplitDecision::CanaryByWeight
            | SplitDecision::BaselineByWeight => None,
        }
        .unwrap_or(&self.weighted)
    }
}

pub struct Route {
    pub name: String,
    /// The listener it serves (0: `listen`).
    pub listener: usize,
    pub hosts: Vec<String>,
    /// What a table without conditions routes on: the prefix of the
    /// route's one match (its `path_prefix`, or its one `matches` entry).
    pub path_prefix: String,
    /// The route's matches (never empty; see the module docs).
    pub matches: Vec<ValidRouteMatch>,
    /// Changes to the head every backend of the route gets.
    pub request_headers: Option<ValidHeaderModifier>,
    /// Changes to the head of the backend's answers the client gets.
    pub response_headers: Option<ValidHeaderModifier>,
    pub protocol: Protocol,
    /// None only for a route with `direct_response` (see [`Route::stable`]).
    stable_backend: Option<Backend>,
    /// The proxy's own answer to every request of the route: the route
    /// phase answers it, and the request never reaches a backend.
    pub direct_response: Option<DirectResponse>,
    pub canary: Option<Backend>,
    /// The baseline arm (only with a canary): the weighted split gives it
    /// the canary's share too; A/B rules and mirror copies never go to it.
    pub baseline: Option<Backend>,
    pub split: Arc<SplitState>,
    pub canary_match: Vec<ValidMatch>,
    pub request_timeout: Duration,
    pub body_idle_timeout: Duration,
    /// `timeouts.answer_idle`: a backend's longest pause in its answer's
    /// body (see `crate::record`).
    pub answer_idle_timeout: Duration,
    /// `timeouts.tunnel_idle`: an upgraded connection (WebSocket) moving
    /// no byte either way this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub grpc_failure_codes: crate::grpc::Codes,
    /// Requests in flight on this route (kept across reloads by name).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: usize,
    /// `limits.max_request_body` in bytes.
    pub max_body: Option<u64>,
    pub affinity: Option<crate::affinity::Affinity>,
    pub mirror: Option<crate::mirror::Mirror>,
    /// Requests that failed by their client's fault, by kind.
    pub client_errors: ClientErrors,
    /// Request fields with `_` in their names are passed on
    /// (`underscore_headers: keep`).
    pub keep_underscore_headers: bool,
    /// A request the canary provably never started on goes to the stable.
    pub failover: bool,
    /// Requests that went to the stable so.
    pub failovers: Counter,
    /// Upgraded connections (WebSocket) that ended, by how.
    pub tunnels: crate::metrics::Tunnels,
    /// Requests refused at `limits.max_requests_in_flight`.
    pub rejected_in_flight: Counter,
    /// Requests refused for a body over `limits.max_request_body`.
    pub rejected_too_large: Counter,
}

/// Which backend a request goes to, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitDecision {
    /// By the weighted split (or a route without a canary).
    Stable,
    CanaryByWeight,
    CanaryByMatch,
    StableByAffinity,
    CanaryByAffinity,
    /// By the three-way split of a route with a baseline arm.
    BaselineByWeight,
    /// A client's cookie, or its header's hash, names the baseline arm.
    BaselineByAffinity,
}

impl SplitDecision {
    /// Whether the weighted split placed the request (a new client, for
    /// cookie affinity).
    pub fn by_weight(self) -> bool {
        matches!(
            self,
            Self::Stable | Self::CanaryByWeight | Self::BaselineByWeight
        )
    }

    pub fn is_baseline(self) -> bool {
        matches!(self, Self::BaselineByWeight | Self::BaselineByAffinity)
    }

    /// The backend the weighted split placed the request on (a new
    /// client, for cookie affinity), or None when a rule or affinity did.
    pub fn placed(self) -> Option<crate::affinity::Assigned> {
        use crate::affinity::Assigned;
        match self {
            Self::Stable => Some(Assigned::Stable),
            Self::CanaryByWeight => Some(Assigned::Canary),
            Self::BaselineByWeight => Some(Assigned::Baseline),
            Self::CanaryByMatch
            | Self::StableByAffinity
            | Self::CanaryByAffinity
            | Self::BaselineByAffinity => None,
        }
    }

    pub fn is_canary(self) -> bool {
        matches!(
            self,
            Self::CanaryByWeight | Self::CanaryByMatch | Self::CanaryByAffinity
        )
    }
}

impl Route {
    /// The stable backend. Every route has one but a direct-response
    /// route, which the route phase answers itself: no request of it ever
    /// reaches the phases that pick a backend.
    pub fn stable(&self) -> &Backend {
        self.stable_backend
            .as_ref()
            .expect("a direct-response route is answered in the route phase, without a backend")
    }

    /// A place for one more request in flight, or None at the limit.
    pub fn admit(&self) -> Option<Permit> {
        Permit::take(&self.in_flight, self.max_in_flight)
    }

    /// Chooses the backend for a request that won the route's match `at`:
    /// that match's `backend: canary` first, then A/B rules, then session
    /// affinity (none of them counted toward the weight), then the exact
    /// weighted split.
    pub fn decide(&self, at: usize, headers: &dyn Fields) -> SplitDecision {
        if self.canary.is_none() {
            return SplitDecision::Stable;
        }
        if self.matches.get(at).is_some_and(|m| m.to_canary) {
            return SplitDecision::CanaryByMatch;
        }
        if self
            .canary_match
            .iter()
            .any(|rule| rule_matches(rule, headers))
        {
            return SplitDecision::CanaryByMatch;
        }
        if let Some(affinity) = &self.affinity {
            match affinity.assigned(headers, self.split.canary_weight_bp()) {
                Some(crate::affinity::Assigned::Canary) => {
                    return SplitDecision::CanaryByAffinity;
                }
                Some(crate::affinity::Assigned::Stable) => {
                    return SplitDecision::StableByAffinity;
                }
                Some(crate::affinity::Assigned::Baseline) => {
                    return SplitDecision::BaselineByAffinity;
                }
                None => {}
            }
        }
        if self.baseline.is_some() {
            return match self.split.next_arm() {
                Arm::Stable => SplitDecision::Stable,
                Arm::Canary => SplitDecision::CanaryByWeight,
                Arm::Baseline => SplitDecision::BaselineByWeight,
            };
        }
        if self.split.next_is_canary() {
            SplitDecision::CanaryByWeight
        } else {
            SplitDecision::Stable
        }
    }

    pub fn backend(&self, decision: SplitDecision) -> &Backend {
        if let Some(canary) = self.canary.as_ref().filter(|_| decision.is_canary()) {
            canary
        } else if let Some(baseline) = self.baseline.as_ref().filter(|_| decision.is_baseline()) {
            baseline
        } else {
            self.stable()
        }
    }
}

fn rule_matches(rule: &ValidMatch, fields: &dyn Fields) -> bool {
    match rule {
        ValidMatch::Header { name, value } => {
            fields.values(name.as_str(), &mut |v| v == value.as_bytes())
        }
        ValidMatch::Cookie { name, value } => {
            crate::affinity::cookies(fields, name, &mut |v| v == value)
        }
    }
}

/// What of a request the matches may look at besides its host and path.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a http::Method,
    /// The target's path and query as sent (the query is read only when
    /// a match asks).
    pub path_and_query: &'a str,
    pub fields: &'a dyn Fields,
}

impl<'a> RequestFacts<'a> {
    fn query(&self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map_or("", |(_, query)| query)
    }
}

/// One match of one route, in the order of precedence.
struct Entry {
    route: Arc<Route>,
    /// Index into `route.matches`.
    at: usize,
}

impl Entry {
    fn condition(&self) -> &ValidRouteMatch {
        &self.route.matches[self.at]
    }
}

/// A validated, ready-to-serve routing table and the config it came from.
pub struct Routing {
    pub config: Config,
    pub valid: ValidConfig,
    /// Longest prefix first, then config order: the lookup order of a
    /// table without conditions.
    routes: Vec<Arc<Route>>,
    /// Every (route, match), in the order of precedence; empty when no
    /// match has conditions beyond a path prefix (then `routes` is
    /// searched, as always).
    entries: Vec<Entry>,
    /// Whether any route names hosts (else the first hit is the answer).
    any_hosts: bool,
    /// `sluice_unrouted_requests_total`.
    pub unrouted: Counter,
}

impl Routing {
    /// Builds a table, reusing pooled clients, retry budgets and the split
    /// counters of routes whose weight did not change.
    pub fn build(
        config: Config,
        valid: ValidConfig,
        previous: Option<&Routing>,
        pool: &ClientPool,
        metrics: &Metrics,
    ) -> Self {
        let mut routes: Vec<Arc<Route>> = valid
            .routes
            .iter()
            .map(|r| {
                let old = previous.and_then(|p| p.route_by_name(&r.name));
                Arc::new(build_route(r, &valid, old.map(|o| &**o), pool, metrics))
            })
            .collect();
        // A route gone is no longer at any weight: its gauge goes too (a
        // dashboard or gate would read the last weight for ever). Its
        // counters stay, as counters do until the process restarts.
        for gone in previous
            .into_iter()
            .flat_map(|p| &p.valid.routes)
            .filter(|old| !valid.routes.iter().any(|r| r.name == old.name))
        {
            metrics.forget_canary_weight(&gone.name);
        }
        let conditional = routes.iter().any(|r| plain_prefix(&r.matches).is_none());
        let mut entries = Vec::new();
        if conditional {
            for route in &routes {
                for at in 0..route.matches.len() {
                    entries.push(Entry {
                        route: route.clone(),
                        at,
                    });
                }
            }
            // A stable sort: config order breaks the remaining ties.
            entries.sort_by_key(precedence);
        }
        // Longest prefix first, then config order (the host's rank is
        // weighed at lookup: [`Routing::find`]).
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        let any_hosts = routes.iter().any(|r| !r.hosts.is_empty());
        Self {
            config,
            valid,
            routes,
            entries,
            any_hosts,
            unrouted: metrics.unrouted(),
        }
    }

    pub fn pool_keys(&self) -> Vec<PoolKey> {
        self.routes
            .iter()
            .flat_map(|r| {
                r.stable_backend
                    .iter()
                    .map(|b| b.pool_key.clone())
                    .chain(r.canary.as_ref().map(|c| c.pool_key.clone()))
                    .chain(r.baseline.as_ref().map(|b| b.pool_key.clone()))
            })
            .collect()
    }

    pub fn route_by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The route of `listener` serving `host` (port already stripped, any
    /// case) and the normalised `path`, for a request like `facts` (see
    /// the module docs for the order).
    pub fn find<'t>(
        &'t self,
        listener: usize,
        host: Option<&str>,
        path: &str,
        facts: &RequestFacts<'_>,
    ) -> Option<&'t Arc<Route>> {
        self.find_match(listener, host, path, facts)
            .map(|(route, _)| route)
    }

    /// [`Routing::find`], with the winning match of the route (an index
    /// into its `matches`).
    pub fn find_match<'t>(
        &'t self,
        listener: usize,
        host: Option<&str>,
        path: &str,
        facts: &RequestFacts<'_>,
    ) -> Option<(&'t Arc<Route>, usize)> {
        // The most specific host first (the Gateway API's hostname order,
        // as nginx picks its server before a location): among the routes
        // that hold, the best host rank wins, then the table's order. An
        // exact name is the best rank there is, so the scan stops at the
        // first one; a table without hosts stops at the first hit.
        let mut best: Option<(HostRank, &'t Arc<Route>, usize)> = None;
        let any_hosts = self.any_hosts;
        let mut consider = |route: &'t Arc<Route>, at: usize| -> bool {
            let Some(rank) = host_rank(route, host) else {
                return false;
            };
            if best.as_ref().is_none_or(|(b, ..)| rank > *b) {
                best = Some((rank, route, at));
            }
            rank.is_best() || !any_hosts
        };
        if self.entries.is_empty() {
            for r in &self.routes {
                if r.listener == listener
                    && path.starts_with(r.path_prefix.as_str())
                    && consider(r, 0)
                {
                    break;
                }
            }
        } else {
            for e in &self.entries {
                if e.route.listener == listener
                    && condition_holds(e.condition(), path, facts)
                    && consider(&e.route, e.at)
                {
                    break;
                }
            }
        }
        best.map(|(_, r, at)| (r, at))
    }
}

/// The prefix of a route whose one match is a path prefix alone.
fn plain_prefix(matches: &[ValidRouteMatch]) -> Option<&str> {
    match matches {
        [only] => only.plain_prefix(),
        _ => None,
    }
}

/// How specifically a route names a request's host, higher first: an
/// exact name, then a wildcard by the length of what it names (the
/// Gateway API's "characters in a matching non-wildcard hostname, then in
/// a matching hostname"), then a route for any host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostRank {
    AnyHost,
    Wildcard(usize),
    Exact,
}

impl HostRank {
    fn is_best(self) -> bool {
        self == HostRank::Exact
    }
}

/// The rank of `route` for `host`, or None when it does not serve it. A
/// host written fully qualified (`shop.example.`, one trailing dot) is the
/// same host, as DNS and nginx read it.
fn host_rank(route: &Route, host: Option<&str>) -> Option<HostRank> {
    if route.hosts.is_empty() {
        return Some(HostRank::AnyHost);
    }
    let host = host?;
    let host = host.strip_suffix('.').unwrap_or(host);
    route
        .hosts
        .iter()
        .filter(|pattern| host_matches(pattern, host))
        .map(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => HostRank::Wildcard(suffix.len()),
            None => HostRank::Exact,
        })
        .max()
}

/// The sort key of a (route, match), lower first: a prefix (not exact)
/// path, its length (longer first), no methods, the header and query
/// conditions (more first). The host's rank comes before all of these,
/// at lookup.
type Precedence = (bool, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>);

/// The sort key of a (route, match) (see the module docs).
fn precedence(entry: &Entry) -> Precedence {
    let m = entry.condition();
    let (prefix, len) = match &m.path {
        PathMatch::Exact(p) => (false, p.len()),
        PathMatch::Prefix(p) | PathMatch::Segments(p) => (true, p.len()),
    };
    (
        prefix,
        Reverse(len),
        m.methods.is_empty(),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
    )
}

/// Whether a match's conditions other than the host hold.
fn condition_holds(m: &ValidRouteMatch, path: &str, facts: &RequestFacts<'_>) -> bool {
    m.path.holds(path)
        && (m.methods.is_empty() || m.methods.iter().any(|method| method == facts.method))
        && m.headers.iter().all(|(name, value)| {
            if *name == http::header::COOKIE {
                cookie_fields_are(facts.fields, value.as_bytes())
            } else {
                facts
                    .fields
                    .values(name.as_str(), &mut |v| v == value.as_bytes())
            }
        })
        && (m.query.is_empty() || {
            let query = facts.query();
            m.query
                .iter()
                .all(|(name, value)| first_param_is(query, name, value))
        })
}

/// Whether the request's `Cookie` fields, joined with `; ` (as RFC 9113
/// §8.2.3 rejoins the crumbs an HTTP/2 client may split them into), are
/// `value`: the same answer for an HTTP/1.1 client's one field and an
/// HTTP/2 client's several.
fn cookie_fields_are(fields: &dyn Fields, value: &[u8]) -> bool {
    let mut rest = value;
    let mut first = true;
    let mut seen = false;
    let mut differs = false;
    fields.values("cookie", &mut |crumb| {
        if !first {
            match rest.strip_prefix(b"; ") {
                Some(after) => rest = after,
                None => differs = true,
            }
        }
        first = false;
        seen = true;
        match rest.strip_prefix(crumb) {
            Some(after) if !differs => rest = after,
            _ => differs = true,
        }
        differs
    });
    seen && !differs && rest.is_empty()
}

/// Whether the first parameter named `name` in `query` (both percent-
/// decoded) is there and has the value `value`.
fn first_param_is(query: &str, name: &str, value: &str) -> bool {
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decoded_eq(n, name) {
            return decoded_eq(v, value);
        }
    }
    false
}

/// Whether `encoded`, percent-decoded, is `plain`. A `%` not followed by
/// two hex digits stands for itself (as browsers and Envoy read it).
fn decoded_eq(encoded: &str, plain: &str) -> bool {
    let mut want = plain.bytes();
    let bytes = encoded.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                i += 3;
                hex_value(h) << 4 | hex_value(l)
            }
            (b, ..) => {
                i += 1;
                b
            }
        };
        if want.next() != Some(b) {
            return false;
        }
    }
    want.next().is_none()
}

/// One backend of route `r`, its retry budget kept from `old` (the
/// route's previous version) when the backend is the same.
fn build_backend(
    r: &ValidRoute,
    label: BackendLabel,
    url: &UpstreamUrl,
    old: Option<&Route>,
    pool: &ClientPool,
    metrics: &Metrics,
) -> Backend {
    let pool_key = PoolKey {
        url: url.clone(),
        protocol: r.protocol,
        connect_timeout: r.connect_timeout,
        idle_timeout: r.upstream_idle_timeout,
        tls: r.tls_for(url),
    };
    // The stable counts A/B requests the canary never started and that
    // failed over to it (`decision="match"`, never weighted traffic).
    let has_rules = (label == BackendLabel::Canary
        || (label == BackendLabel::Stable && r.failover))
        && (!r.canary_match.is_empty() || r.matches.iter().any(|m| m.to_canary));
    let affine = r
        .affinity
        .is_some()
        .then(|| metrics.series(&r.name, label, Decision::Affinity));
    let old_backend = old.and_then(|o| match label {
        BackendLabel::Stable => o.stable_backend.as_ref(),
        BackendLabel::Canary => o.canary.as_ref(),
        BackendLabel::Baseline => o.baseline.as_ref(),
    });
    let retry_budget = old_backend
        .filter(|b| b.pool_key == pool_key)
        .map(|b| b.retry_budget.clone())
        .unwrap_or_default();
    Backend {
        label,
        url: url.clone(),
        client: pool.get(&pool_key),
        metrics: metrics.backend(&r.name, label),
        weighted: metrics.series(&r.name, label, Decision::Weight),
        matched: has_rules.then(|| metrics.series(&r.name, label, Decision::Match)),
        affine,
        pool_key,
        retry_budget,
    }
}

/// Route `r` of a new table; `old` is its previous version, if any.
fn build_route(
    r: &ValidRoute,
    valid: &ValidConfig,
    old: Option<&Route>,
    pool: &ClientPool,
    metrics: &Metrics,
) -> Route {
    let stable_backend = r
        .stable
        .as_ref()
        .map(|u| build_backend(r, BackendLabel::Stable, u, old, pool, metrics));
    let canary = r
        .canary
        .as_ref()
        .map(|u| build_backend(r, BackendLabel::Canary, u, old, pool, metrics));
    let baseline = r
        .baseline
        .as_ref()
        .map(|u| build_backend(r, BackendLabel::Baseline, u, old, pool, metrics));
    // A new weight, canary or baseline starts the count again.
    let split = old
        .filter(|old| {
            old.split.canary_weight_bp() == r.canary_weight_bp
                && old.canary.as_ref().map(|b| &b.url) == r.canary.as_ref()
                && old.baseline.as_ref().map(|b| &b.url) == r.baseline.as_ref()
        })
        .map(|old| old.split.clone())
        .unwrap_or_else(|| Arc::new(SplitState::new(r.canary_weight_bp)));
    metrics.set_canary_weight(&r.name, bp_to_percent(r.canary_weight_bp));
    // Validation allows affinity only on a route with a stable backend.
    let affinity = r
        .affinity
        .as_ref()
        .zip(r.stable.as_ref())
        .map(|(a, stable)| {
            crate::affinity::Affinity::new(
                a,
                &r.path_prefix,
                stable,
                r.canary.as_ref(),
                r.baseline.as_ref(),
            )
        });
    let mirror = r.mirror.as_ref().zip(canary.as_ref()).map(|(m, c)| {
        let to = crate::mirror::MirrorTo {
            route: &r.name,
            canary: &c.client,
            errors: c.metrics.clone(),
            url: &c.url,
            grpc_failure_codes: r.grpc_failure_codes,
            request_timeout: r.request_timeout,
            answer_idle_timeout: r.answer_idle_timeout,
        };
        let kept = old
            .and_then(|o| o.mirror.as_ref())
            .filter(|_| old.and_then(|o| o.canary.as_ref()).map(|b| &b.url) == Some(&c.url));
        let series = metrics.series(&r.name, BackendLabel::Canary, Decision::Mirror);
        crate::mirror::Mirror::new(m, to, kept, series, metrics)
    });
    Route {
        name: r.name.clone(),
        listener: r.listener,
        hosts: r.hosts.clone(),
        path_prefix: plain_prefix(&r.matches)
            .unwrap_or(&r.path_prefix)
            .to_string(),
        matches: r.matches.clone(),
        request_headers: r.request_headers.clone(),
        response_headers: r.response_headers.clone(),
        protocol: r.protocol,
        stable_backend,
        direct_response: r.direct_response.as_ref().map(|d| DirectResponse {
            counted: metrics.direct_responses(&r.name, d.status.as_u16()),
            answer: d.clone(),
        }),
        canary,
        baseline,
        split,
        canary_match: r.canary_match.clone(),
        request_timeout: r.request_timeout,
        body_idle_timeout: r.body_idle_timeout,
        answer_idle_timeout: r.answer_idle_timeout,
        tunnel_idle_timeout: r.tunnel_idle_timeout,
        grpc_failure_codes: r.grpc_failure_codes,
        in_flight: old.map(|o| o.in_flight.clone()).unwrap_or_default(),
        max_in_flight: valid.max_requests_in_flight,
        max_body: valid.max_request_body,
        affinity,
        mirror,
        client_errors: metrics.client_errors(&r.name),
        keep_underscore_headers: r.keep_underscore_headers,
        failover: r.failover,
        failovers: metrics.failovers(&r.name),
        tunnels: metrics.tunnels(&r.name),
        rejected_in_flight: metrics.rejected(&r.name, RejectReason::MaxRequestsInFlight),
        rejected_too_large: metrics.rejected(&r.name, RejectReason::BodyTooLarge),
    }
}

/// The path a request is routed on, normalised as Envoy's
/// `normalize_path` and nginx do:
/// 1. percent-escapes of unreserved characters (RFC 3986 §2.3: letters,
///    digits, `-`, `.`, `_`, `~`) are decoded, as RFC 3986 §6.2.2.2 says
///    they mean the same path: `/ap%69` is `/api`, `%2e%2e` is `..`;
///    every other escape stays as sent (`%2F` is never a separator, `%25`
///    never a `%`), so no path is decoded twice;
/// 2. runs of `/` become one;
/// 3. `.` and `..` segments are resolved (never above the root).
///
/// So `//admin`, `/public/../admin` and `/x/%2e%2e/ad%6din` are routed as
/// `/admin`. `;` is an ordinary character (`/admin;x` is not `/admin`),
/// as it is to Envoy and nginx. The request itself is forwarded as the
/// client sent it: the route chosen is the one that owns the path a
/// decoding backend serves, and the backend sees the exact target.
pub fn normalise_path(path: &str) -> std::borrow::Cow<'_, str> {
    let decoded = decode_unreserved(path);
    let path = decoded.as_ref();
    let needs = path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..");
    if !needs {
        return decoded;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" if i != last => {}
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty()
        || (matches!(segments.last(), Some(&".") | Some(&"..")) && !normal.ends_with('/'))
    {
        normal.push('/');
    }
    std::borrow::Cow::Owned(normal)
}

/// Whether `host` is `pattern`'s host; `*.suffix` is one DNS label or
/// more before `.suffix`, so `a@x.example` (user info, refused before
/// routing anyway) is never a name under `x.example`.
fn host_matches(pattern: &str, host: &str) -> bool {
    // A pattern written fully qualified is the same name too.
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let host = host.as_bytes();
        let Some(labels_end) = host.len().checked_sub(suffix.len() + 1) else {
            return false;
        };
        labels_end > 0
            && host.ends_with(suffix.as_bytes())
            && host[labels_end] == b'.'
            && host[..labels_end]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    } else {
        pattern.eq_ignore_ascii_case(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[tokio::test]
    async fn a_host_with_its_trailing_dot_is_the_same_host() {
        let t = table(
            "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nroutes:\n  - { name: exact, hosts: [secure.example], stable: 'http://127.0.0.1:1' }\n  - { name: dotted, hosts: [dotted.example.], stable: 'http://127.0.0.1:1' }\n  - { name: wild, hosts: ['*.wild.example'], stable: 'http://127.0.0.1:1' }\n  - { name: any, stable: 'http://127.0.0.1:1' }\n",
        );
        let name = |host: &str| find(&t, Some(host), "/").map(|r| r.name.clone());
        for (host, route) in [
            ("secure.example", "exact"),
            ("secure.example.", "exact"),
            ("secure.example..", "any"),
            ("a.wild.example.", "wild"),
            ("a.wild.example", "wild"),
            ("wild.example.", "any"),
            ("dotted.example", "dotted"),
            ("dotted.example.", "dotted"),
        ] {
            assert_eq!(name(host).as_deref(), Some(route), "{host}");
        }
    }

    #[test]
    fn paths_are_normalised_for_routing_as_nginx_does() {
        for (raw, normal) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/public/../admin/x", "/admin/x"),
            ("/./admin", "/admin"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/", "/a/"),
            ("/..", "/"),
            ("/ap%69", "/api"),
            ("/%2e%2e/api", "/api"),
            ("/x/%2E%2e/api", "/api"),
            ("/%61%7A%30%2D%5F%7e", "/az0-_~"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb/%2e%2e", "/"),
            ("/%25%36%39", "/%2569"),
            ("/a%2", "/a%2"),
            ("/a%zz", "/a%zz"),
            ("/admin;x", "/admin;x"),
            // `\` is no separator (docs/proxy.md).
            ("/pub\\..\\admin", "/pub\\..\\admin"),
            ("/pub/..\\admin", "/pub/..\\admin"),
        ] {
            assert_eq!(normalise_path(raw), normal, "{raw}");
        }
    }

    fn table(yaml: &str) -> Routing {
        let config = Config::from_yaml(yaml).unwrap();
        let valid = config.validate().unwrap();
        let metrics = Metrics::new();
        let pool = ClientPool::default();
        Routing::build(config, valid, None, &pool, &metrics)
    }

    /// A GET of `path` without fields.
    fn find<'t>(t: &'t Routing, host: Option<&str>, path: &str) -> Option<&'t Arc<Route>> {
        let fields = HeaderMap::new();
        t.find(
            0,
            host,
            path,
            &RequestFacts {
                method: &http::Method::GET,
                path_and_query: path,
                fields: &fields,
            },
        )
    }

    #[tokio::test]
    async fn only_a_table_with_conditions_builds_the_match_list() {
        let plain = table(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://127.0.0.1:1' }\n  - { name: b, hosts: [b.example], path_prefix: /b, stable: 'http://127.0.0.1:2' }\n  - { name: c, matches: [{path_prefix: /c}], stable: 'http://127.0.0.1:3' }\n  - { name: gone, path_prefix: /gone, direct_response: {status: 500} }\n",
        );
        assert!(
            plain.entries.is_empty(),
            "today's lookup for prefixes alone (a direct response is no condition)"
        );
        assert!(
            find(&plain, None, "/gone/x")
                .unwrap()
                .direct_response
                .is_some()
        );
        assert_eq!(find(&plain, None, "/c/x").unwrap().name, "c");
        let conditional = table(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: a, stable: 'http://127.0.0.1:1' }\n  - { name: c, matches: [{path_exact: /c}, {path_prefix: /d}], stable: 'http://127.0.0.1:3' }\n",
        );
        let order: Vec<(&str, usize)> = conditional
            .entries
            .iter()
            .map(|e| (e.route.name.as_str(), e.at))
            .collect();
        assert_eq!(order, [("c", 0), ("c", 1), ("a", 0)]);
        assert_eq!(find(&conditional, None, "/c").unwrap().name, "c");
        assert_eq!(find(&conditional, None, "/c/x").unwrap().name, "a");
    }

    #[test]
    fn cookie_conditions_compare_the_fields_joined() {
        let crumbs = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append("cookie", v.parse().unwrap());
            }
            map
        };
        assert!(cookie_fields_are(&crumbs(&["a=1; b=2"]), b"a=1; b=2"));
        assert!(cookie_fields_are(&crumbs(&["a=1", "b=2"]), b"a=1; b=2"));
        assert!(!cookie_fields_are(&crumbs(&["b=2", "a=1"]), b"a=1; b=2"));
        assert!(!cookie_fields_are(
            &crumbs(&["a=1", "b=2", "c=3"]),
            b"a=1; b=2"
        ));
        assert!(!cookie_fields_are(&crumbs(&["a=1"]), b"a=1; b=2"));
        assert!(!cookie_fields_are(&crumbs(&["a=1", "b=2"]), b"a=1;b=2"));
        assert!(!cookie_fields_are(&crumbs(&[]), b""));
        assert!(cookie_fields_are(&crumbs(&[""]), b""));
    }

    #[test]
    fn query_values_are_compared_percent_decoded_first_occurrence() {
        assert!(first_param_is("v=2", "v", "2"));
        assert!(first_param_is("a=1&v=2&v=3", "v", "2"));
        assert!(!first_param_is("v=3&v=2", "v", "2"));
        assert!(first_param_is("%76=%32", "v", "2"));
        assert!(first_param_is("q=a%20b", "q", "a b"));
        assert!(!first_param_is("q=a+b", "q", "a b"));
        assert!(first_param_is("q=100%", "q", "100%"));
        assert!(first_param_is("q=%e2%82%ac", "q", "€"));
        assert!(!first_param_is("V=2", "v", "2"), "names are case-sensitive");
        assert!(first_param_is("flag&v=", "v", ""));
        assert!(first_param_is("flag", "flag", ""));
        assert!(!first_param_is("", "v", ""));
        assert!(!first_param_is("v=22", "v", "2"));
    }

    #[tokio::test]
    async fn longest_prefix_and_host_routing() {
        let t = table(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: root, stable: 'http://127.0.0.1:1' }\n  - { name: api, path_prefix: /api, stable: 'http://127.0.0.1:2' }\n  - { name: api-v2, path_prefix: /api/v2, stable: 'http://127.0.0.1:3' }\n  - { name: shop, hosts: [shop.example], stable: 'http://127.0.0.1:4' }\n  - { name: wild, hosts: ['*.wild.example'], path_prefix: /x, stable: 'http://127.0.0.1:5' }\n",
        );
        let name = |h: Option<&str>, p: &str| find(&t, h, p).map(|r| r.name.clone());
        assert_eq!(name(None, "/"), Some("root".into()));
        assert_eq!(name(Some("a"), "/api/v1"), Some("api".into()));
        assert_eq!(name(Some("a"), "/api/v2/x"), Some("api-v2".into()));
        assert_eq!(name(Some("shop.example"), "/"), Some("shop".into()));
        assert_eq!(name(Some("other"), "/"), Some("root".into()));
        assert_eq!(name(Some("a.wild.example"), "/x"), Some("wild".into()));
        assert_eq!(name(Some("wild.example"), "/x"), Some("root".into()));
        assert_eq!(name(Some("a.b.wild.example"), "/x"), Some("wild".into()));
        // The host first: a route naming it beats a longer any-host prefix.
        assert_eq!(name(Some("shop.example"), "/api/v2/x"), Some("shop".into()));
        assert_eq!(name(Some("SHOP.example"), "/api"), Some("shop".into()));
        for not_a_name in [
            "a@x.wild.example",
            "a@wild.example",
            "a b.wild.example",
            ".wild.example",
        ] {
            assert_eq!(
                name(Some(not_a_name), "/x"),
                Some("root".into()),
                "{not_a_name}"
            );
        }
    }

    /// The Gateway API's hostname order: an exact name, then the longer
    /// wildcard, then any host, before the path; then the longest prefix.
    #[tokio::test]
    async fn the_most_specific_host_wins_before_the_path() {
        let t = table(
            "listen: 127.0.0.1:1\nroutes:\n  - { name: wild-api, hosts: ['*.example.com'], path_prefix: /api, stable: 'http://127.0.0.1:1' }\n  - { name: foo, hosts: [foo.example.com], stable: 'http://127.0.0.1:2' }\n  - { name: wild-w, hosts: ['*.example.com'], path_prefix: /w, stable: 'http://127.0.0.1:3' }\n  - { name: foo-w, hosts: [foo.example.com], path_prefix: /w, stable: 'http://127.0.0.1:4' }\n  - { name: deep, hosts: ['*.b.example.com'], stable: 'http://127.0.0.1:5' }\n  - { name: any, path_prefix: /api/v1, stable: 'http://127.0.0.1:6' }\n",
        );
        let name = |h: Option<&str>, p: &str| find(&t, h, p).map(|r| r.name.clone());
        assert_eq!(name(Some("foo.example.com"), "/api"), Some("foo".into()));
        assert_eq!(name(Some("foo.example.com"), "/w/x"), Some("foo-w".into()));
        assert_eq!(
            name(Some("bar.example.com"), "/api"),
            Some("wild-api".into())
        );
        assert_eq!(name(Some("bar.example.com"), "/w"), Some("wild-w".into()));
        assert_eq!(name(Some("a.b.example.com"), "/api"), Some("deep".into()));
        assert_eq!(name(Some("other.org"), "/api/v1/x"), Some("any".into()));
        assert_eq!(name(Some("bar.example.com"), "/x"), None, "no route holds");
        assert_eq!(
            name(Some("bar.example.com"), "/api/v1"),
            Some("wild-api".into())
        );
    }

    #[tokio::test]
    async fn a_baseline_arm_takes_the_canary_share_and_a_change_of_it_restarts_the_count() {
        let with = "listen: 127.0.0.1:1\nroutes:\n  - { name: web, stable: 'http://127.0.0.1:1', canary: 'http://127.0.0.1:2', baseline: 'http://127.0.0.1:3', canary_weight: 25, canary_match: [{ header: x-canary, value: always }] }\n";
        let without = "listen: 127.0.0.1:1\nroutes:\n  - { name: web, stable: 'http://127.0.0.1:1', canary: 'http://127.0.0.1:2', canary_weight: 25, canary_match: [{ header: x-canary, value: always }] }\n";
        let metrics = Metrics::new();
        let pool = ClientPool::default();
        let build = |yaml: &str, old: Option<&Routing>| {
            let config = Config::from_yaml(yaml).unwrap();
            let valid = config.validate().unwrap();
            Routing::build(config, valid, old, &pool, &metrics)
        };
        let first = build(with, None);
        let route = first.route_by_name("web").unwrap();
        let plain = HeaderMap::new();
        let mut rule = HeaderMap::new();
        rule.insert("x-canary", "always".parse().unwrap());
        let mut decisions = Vec::new();
        for _ in 0..4 {
            decisions.push(route.decide(0, &plain));
            assert_eq!(route.decide(0, &rule), SplitDecision::CanaryByMatch);
        }
        assert_eq!(
            decisions,
            [
                SplitDecision::Stable,
                SplitDecision::CanaryByWeight,
                SplitDecision::Stable,
                SplitDecision::BaselineByWeight
            ],
            "the A/B requests in between take no turn"
        );
        assert_eq!(
            route.backend(SplitDecision::BaselineByWeight).label,
            BackendLabel::Baseline
        );
        assert_eq!(route.backend(SplitDecision::BaselineByWeight).url.port, 3);
        let same = build(with, Some(&first));
        assert!(Arc::ptr_eq(
            &same.route_by_name("web").unwrap().split,
            &route.split
        ));
        let removed = build(without, Some(&same));
        let plain_route = removed.route_by_name("web").unwrap();
        assert!(!Arc::ptr_eq(&plain_route.split, &route.split));
        assert!(plain_route.baseline.is_none());
        let decisions: Vec<SplitDecision> = (0..4).map(|_| plain_route.decide(0, &plain)).collect();
        assert_eq!(
            decisions,
            [
                SplitDecision::Stable,
                SplitDecision::Stable,
                SplitDecision::Stable,
                SplitDecision::CanaryByWeight
            ]
        );
        let added = build(with, Some(&removed));
        assert!(!Arc::ptr_eq(
            &added.route_by_name("web").unwrap().split,
            &plain_route.split
        ));
    }

    #[tokio::test]
    async fn cookie_and_header_rules_pick_the_canary() {
        let t = table(
            "listen: 127.0.0.1:1\nroutes:\n  - name: web\n    stable: http://127.0.0.1:1\n    canary: http://127.0.0.1:2\n    canary_match:\n      - { header: x-canary, value: always }\n      - { cookie: canary, value: always }\n",
        );
        let route = find(&t, None, "/").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(route.decide(0, &h), SplitDecision::Stable);
        h.insert("cookie", "a=b; canary=always".parse().unwrap());
        assert_eq!(route.decide(0, &h), SplitDecision::CanaryByMatch);
        let mut h = HeaderMap::new();
        h.insert("x-canary", "always".parse().unwrap());
        assert_eq!(route.decide(0, &h), SplitDecision::CanaryByMatch);
        h.insert("x-canary", "never".parse().unwrap());
        assert_eq!(route.decide(0, &h), SplitDecision::Stable);
    }
}
