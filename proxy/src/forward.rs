//! Phase 4 of a request, for both protocols: send it to the backend the
//! route phase decided, and wait for the answer's head.
//!
//! - **The head a backend gets** ([`upstream_head`]): the client's method,
//!   path and fields, less the hop-by-hop ones (and those `Connection`
//!   names; `TE: trailers` is kept, gRPC needs it), `Expect` (the proxy
//!   answers it itself), the client's framing fields (the proxy frames the
//!   body itself: its length when known, else chunked) and the fields a
//!   client may not send on (`crate::fields`: `X-Sluice-*`, names with `_`
//!   unless the route keeps them). An HTTP/1.1 backend gets the client's
//!   Host (the target's authority for an absolute-form target or an
//!   HTTP/2 client, the backend's own for an HTTP/1.0 client that sent
//!   none), and one `cookie` field for an HTTP/2 client's several; an
//!   HTTP/2 backend gets its own address as `:authority`. Then the
//!   forwarding fields: with `trusted_hops: 0` whatever the client sent is
//!   replaced by what the proxy saw (`X-Forwarded-For` and `X-Real-IP` the
//!   peer, `X-Forwarded-Proto` the listener's scheme, `X-Forwarded-Host`
//!   the authority; `Forwarded` dropped); behind N trusted proxies the
//!   rightmost N `X-Forwarded-For` entries are kept and the peer appended,
//!   and the other fields those proxies set are passed on.
//! - **The route's `request_headers`** change what is left of the
//!   client's fields before the forwarding fields are added: the fields
//!   it removes or sets are dropped, then its `set` and `add` fields
//!   follow. Every head of the request gets them: either arm, a failover
//!   to the stable, a retry (the same head) and a mirror copy. Trailers
//!   are not changed.
//! - **Trailers** a client sends go on less the same fields
//!   (`crate::fields::trailer_passes`); a section of more than 128 fields
//!   fails the body as malformed, over either protocol.
//! - **The body.** The first 16 KiB of an HTTP/1 request body (the whole
//!   of most) are read before the backend is contacted, so a body that
//!   breaks there never reaches it, and a body read whole can be sent
//!   again. HTTP/2 bodies stream at once: a client may wait for the
//!   response head before it sends (gRPC's bidirectional streams); only
//!   what has already come of one (up to 16 KiB) is read first, without
//!   waiting, so a body that came whole with its head (a unary gRPC call)
//!   can be sent again too.
//! - **Time.** `timeouts.request` runs from the end of the request body to
//!   the response head (504); a client that keeps the proxy waiting for
//!   its body longer than `timeouts.idle` gets 408 (its fault, not the
//!   backend's), and a backend that stops taking the body that long is a
//!   504 on the backend (`crate::body::Progress::stall`).
//! - **Mirroring.** A request the stable serves may be picked for a copy
//!   (`crate::mirror`): the body is copied as it streams, and the copy is
//!   sent once the stable has answered. Only requests the stable serves
//!   are copied: never a canary's, nor a baseline arm's.
//! - **Sending again** follows `crate::upstream`'s rules, from the
//!   backend's retry budget.
//! - **Failover.** A request the canary (or a baseline arm, alike)
//!   provably never started on (its
//!   connect was refused or failed, its connection closed before anything
//!   of the request was written, or an HTTP/2 canary refused the stream)
//!   goes to the stable instead, when its route has `failover: stable`
//!   (the default), its body can be sent again (none, or read ahead
//!   whole), and the stable's retry budget allows one more request. The
//!   canary is still charged the failure (its 502 or 504 and its upstream
//!   error are recorded as if the client had got them), so the gate sees
//!   a crashing canary exactly as before; the client gets the stable's
//!   answer, counted on the stable with the decision that sent it to the
//!   canary (an A/B request stays `decision="match"`, never joining the
//!   stable's weighted traffic the gate compares with; a sticky one stays
//!   `affinity`); `sluice_failovers_total{route}` counts it.
//!
//! The outcome ([`Outcome`]) is what the answer phase turns into the
//! client's answer; every request leaves here with exactly one thing that
//! will record it (`crate::record`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::{HeaderValue, StatusCode, Version};

use crate::body::{Progress, Stall, UpstreamBody};
use crate::config::Protocol;
use crate::fields::{ClientField, ConnectionNames};
use crate::metrics::{ClientErrorKind, UpstreamErrorKind};
use crate::mirror::CopyHead;
use crate::record::{InFlight, Recorder};
use crate::reuse::Reused;
use crate::route::{BodyKind, ClientRequest, Routed, Target};
use crate::routing::Backend;
use crate::upstream::h1::Interim;
use crate::upstream::{Failure, Head, Request, Response, SendFailure};

/// Bytes of an HTTP/1 request body read before the backend is contacted
/// (the whole body when it is shorter). nginx reads whole bodies first;
/// this keeps memory per request small and bodies streaming.
pub const READ_AHEAD_BYTES: usize = 16 * 1024;

/// The client of a connection, as the request heads show it.
pub struct Client {
    pub addr: SocketAddr,
    /// `addr`'s IP as a field value, formatted once per connection.
    pub ip: HeaderValue,
    /// `https` on a TLS listener, else `http`.
    pub scheme: &'static str,
}

impl Client {
    pub fn new(addr: SocketAddr, scheme: &'static str) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a field value");
        Self { addr, ip, scheme }
    }
}

/// How a request's exchange ended, for the answer phase. It lives for one
/// match on the stack; boxing the response would cost an allocation per
/// request.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The backend answered.
    Answered {
        response: Response,
        recorder: Recorder,
    },
    /// The backend failed or took too long (`kind` says which): the proxy
    /// answers 502 or 504, counted on the backend.
    Failed {
        kind: UpstreamErrorKind,
        recorder: Recorder,
    },
    /// The client broke its own body (counted in the route's client
    /// errors): 400, or 408 for a body paused too long.
    ClientFault {
        kind: ClientErrorKind,
        detail: String,
    },
    /// The body grew past `limits.max_request_body`: 413, counted on the
    /// backend chosen as a limit.
    TooLarge { recorder: Recorder },
    /// The client went away before an answer (counted: a 499, or its
    /// fault when its body had not all come).
    Gone,
}

/// A request's way to its backend.
pub struct Exchange<'r, 'b> {
    pub routed: &'r Routed,
    pub req: &'r ClientRequest<'r>,
    pub client: &'r Client,
    pub body: UpstreamBody<'b>,
    pub progress: Progress,
    pub interim: &'r mut Interim<'r>,
    /// The connection's timer, for the request timeout (see
    /// [`crate::conn::until`]).
    pub timer: Pin<&'r mut tokio::time::Sleep>,
}

/// The watch for a client gone (see [`forward`]).
pub type Gone<'g> = dyn Future<Output = Option<ClientErrorKind>> + Send + 'g;

/// What stopped an attempt before its answer.
enum Stop {
    /// No response head within the request timeout after the body.
    TimedOut,
    /// The client paused its request body too long.
    ClientStalled,
    /// The backend stopped taking the request body too long.
    BackendStalled,
    /// The client went away, by its fault or not (see [`forward`]).
    Gone(Option<ClientErrorKind>),
}

/// Sends the request (see the module docs). `gone` resolves when the
/// client has gone away (never, for a protocol that drops the request
/// instead): with the client's fault, when it was one (it broke the
/// protocol), or None (it left: a 499 on the backend, once the request
/// reached it).
pub async fn forward(exchange: Exchange<'_, '_>, gone: Pin<&mut Gone<'_>>) -> Outcome {
    let Exchange {
        routed,
        req,
        client,
        mut body,
        progress,
        interim,
        mut timer,
    } = exchange;
    let route = &routed.route;
    let backend = route.backend(routed.decision);
    // Set by the upstream side once anything of the request may have
    // reached the backend (a client gone before that is no 499 on it).
    let written = AtomicBool::new(false);
    let (head, copy_head) = upstream_head(req, routed, backend, client, wants_copy(req, routed));
    if route.keep_underscore_headers {
        body.keep_underscore_names();
    }
    let mut copy_job = None;
    if let (Some(copy_head), Some(mirror)) = (copy_head, &route.mirror)
        && let Some(place) = mirror.pick(req.method, declared(req))
    {
        let copy_body = if progress.has_body() {
            let (tee, copy_body) = crate::body::Tee::new(mirror.max_body);
            body.tee(tee);
            copy_body
        } else {
            crate::body::CopyBody::Empty
        };
        copy_job = Some(mirror.copy(copy_head, copy_body, place));
    }
    let in_flight = InFlight::new(
        backend.series(routed.decision).clone(),
        routed.start,
        &written,
        &route.client_errors,
    )
    .with_body(&progress, &route.client_errors, &route.rejected_too_large);
    let mut upstream = Request {
        method: req.method.clone(),
        head,
        has_body: progress.has_body(),
        body: Some(body),
        chunked: req.body == BodyKind::Streamed,
        upgrade: req.upgrade.is_some(),
        interim,
        start: routed.start,
        written: &written,
    };
    let mut gone = gone;
    // A request without a body keeps no room for the watch of its body.
    let stalled = async {
        if progress.has_body() {
            Box::pin(body_stalled(&progress, route.body_idle_timeout)).await
        } else {
            std::future::pending::<Stall>().await
        }
    };
    tokio::pin!(stalled);
    let read_ahead_first = match req.version {
        _ if progress.is_sent() => ReadAhead::No,
        Version::HTTP_2 => ReadAhead::Arrived,
        _ => ReadAhead::Wait,
    };
    let waits = Waits {
        progress: &progress,
        timer: timer.as_mut(),
        stalled: stalled.as_mut(),
        gone: gone.as_mut(),
    };
    let result = attempt(backend, &mut upstream, routed, read_ahead_first, waits).await;
    let result = blame_body(result, &progress);
    if let Some(job) = copy_job {
        job.launch();
    }
    let fails_over = match &result {
        Ok(Err(SendFailure::Upstream(failure))) => may_fail_over(routed, failure, &upstream),
        _ => false,
    };
    if !fails_over {
        return outcome(result, in_flight, backend, routed, &progress);
    }
    // The canary is charged what the client would have got from it.
    if let Ok(Err(SendFailure::Upstream(failure))) = result {
        tracing::debug!(route = %route.name, error = %failure, "the canary never started the request; failing over to the stable");
        backend.metrics.record_upstream_error(failure.kind);
        let recorder = in_flight.answered(backend.metrics.clone(), None);
        Recorder {
            code: failure_status(failure.kind).0.as_u16(),
            ..recorder
        }
        .record_now();
    }
    route.failovers.inc();
    let stable = route.stable();
    upstream.head = upstream_head(req, routed, stable, client, false).0;
    upstream.rewind();
    // Counted as what it was (A/B, affinity or weighted traffic), so an A/B
    // request never joins the weighted stable series the gate compares with.
    let in_flight = InFlight::new(
        stable.series(routed.decision).clone(),
        routed.start,
        &written,
        &route.client_errors,
    )
    .with_body(&progress, &route.client_errors, &route.rejected_too_large);
    let waits = Waits {
        progress: &progress,
        timer: timer.as_mut(),
        stalled: stalled.as_mut(),
        gone: gone.as_mut(),
    };
    let result = attempt(stable, &mut upstream, routed, ReadAhead::No, waits).await;
    let result = blame_body(result, &progress);
    outcome(result, in_flight, stable, routed, &progress)
}

/// What an attempt came to.
type Attempted = Result<Result<Response, SendFailure>, Stop>;

/// A backend failure that followed the request body's own failure is the
/// body's: hyper's HTTP/2 client resets the stream when the body it sends
/// fails (broken by the client, or past `limits.max_request_body`) and
/// reports the reset, not the body's error.
fn blame_body(result: Attempted, progress: &Progress) -> Attempted {
    match result {
        Ok(Err(SendFailure::Upstream(failure)))
            if progress.exceeded() || progress.client_fault().is_some() =>
        {
            Ok(Err(SendFailure::Body(failure.error)))
        }
        other => other,
    }
}

/// Whether a request that failed on its backend goes to the stable
/// instead (see the module docs); takes the stable's budget when it does.
fn may_fail_over(routed: &Routed, failure: &Failure, upstream: &Request<'_, '_>) -> bool {
    failure.unstarted
        && routed.route.failover
        && ((routed.decision.is_canary() && routed.route.canary.is_some())
            || (routed.decision.is_baseline() && routed.route.baseline.is_some()))
        && upstream.resendable()
        && routed.route.stable().retry_budget.try_retry()
}

/// The status the proxy answers for a backend failure of `kind`, and
/// what happened, in words.
pub fn failure_status(kind: UpstreamErrorKind) -> (StatusCode, &'static str) {
    match kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
        UpstreamErrorKind::Connect => (StatusCode::BAD_GATEWAY, "could not be reached"),
        UpstreamErrorKind::Tls => (StatusCode::BAD_GATEWAY, "failed the TLS handshake"),
        UpstreamErrorKind::Protocol | UpstreamErrorKind::Reset => {
            (StatusCode::BAD_GATEWAY, "broke the exchange")
        }
    }
}

/// Whether a request may be copied to the canary: its route mirrors, the
/// stable serves it (neither the canary nor a baseline arm), and it is no
/// upgrade.
fn wants_copy(req: &ClientRequest<'_>, routed: &Routed) -> bool {
    routed.route.mirror.is_some()
        && !routed.decision.is_canary()
        && !routed.decision.is_baseline()
        && req.upgrade.is_none()
}

/// The body length the client declared.
fn declared(req: &ClientRequest<'_>) -> Option<u64> {
    match req.body {
        BodyKind::Length(n) => Some(n),
        BodyKind::None => Some(0),
        BodyKind::Streamed => None,
    }
}

/// Resolves when the client or the backend has held the body up for
/// `limit` (never for a request whose body is all sent).
async fn body_stalled(progress: &Progress, limit: Duration) -> Stall {
    if progress.is_sent() {
        return std::future::pending().await;
    }
    let every = crate::conn::check_every(limit);
    loop {
        tokio::time::sleep(every).await;
        if let Some(stall) = progress.stall(limit) {
            return stall;
        }
    }
}

fn stalled_stop(stall: Stall) -> Stop {
    match stall {
        Stall::Client => Stop::ClientStalled,
        Stall::Backend => Stop::BackendStalled,
    }
}

/// What an attempt waits on besides its answer.
struct Waits<'w, 'g, S> {
    progress: &'w Progress,
    timer: Pin<&'w mut tokio::time::Sleep>,
    /// Resolves when the client or the backend held the body up too long.
    stalled: Pin<&'w mut S>,
    /// Resolves when the client has gone away.
    gone: Pin<&'w mut Gone<'g>>,
}

/// How much of the request body an attempt reads before it contacts the
/// backend (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadAhead {
    /// Up to [`READ_AHEAD_BYTES`], waiting for it (HTTP/1).
    Wait,
    /// Up to [`READ_AHEAD_BYTES`] of what has already come (HTTP/2).
    Arrived,
    No,
}

/// One attempt at a backend: the read-ahead, then the exchange, against
/// the request timeout, a stalled client and a client gone.
async fn attempt<S: Future<Output = Stall>>(
    backend: &Backend,
    upstream: &mut Request<'_, '_>,
    routed: &Routed,
    read_ahead: ReadAhead,
    waits: Waits<'_, '_, S>,
) -> Attempted {
    let Waits {
        progress,
        timer,
        mut stalled,
        mut gone,
    } = waits;
    if let Some(body) = upstream.body.as_mut() {
        let read = match read_ahead {
            ReadAhead::Wait => tokio::select! {
                read = body.read_ahead(READ_AHEAD_BYTES) => read,
                stall = stalled.as_mut() => return Err(stalled_stop(stall)),
                fault = gone.as_mut() => return Err(Stop::Gone(fault)),
            },
            ReadAhead::Arrived => body.read_arrived(READ_AHEAD_BYTES).await,
            ReadAhead::No => Ok(()),
        };
        if let Err(e) = read {
            return Ok(Err(SendFailure::Body(e)));
        }
    }
    backend.retry_budget.note_request(routed.start);
    let timeout = routed.route.request_timeout;
    // The request timeout runs from the end of the request body (its start
    // for a request without one: no clock read).
    let response_due = async {
        let at = if progress.has_body() {
            progress.sent().await;
            std::time::Instant::now() + timeout
        } else {
            routed.start + timeout
        };
        crate::conn::until(timer, at.into()).await;
    };
    let sent = backend.client.send(upstream, || backend.take_retry());
    tokio::select! {
        // The answer first: most wake-ups are its.
        biased;
        answer = sent => Ok(answer),
        () = response_due => Err(Stop::TimedOut),
        stall = stalled => Err(stalled_stop(stall)),
        fault = gone => Err(Stop::Gone(fault)),
    }
}

/// The outcome of an attempt (see [`Outcome`]).
fn outcome(
    result: Attempted,
    in_flight: InFlight<'_>,
    backend: &Backend,
    routed: &Routed,
    progress: &Progress,
) -> Outcome {
    let route = &routed.route;
    let failed = |in_flight: InFlight<'_>, kind| Outcome::Failed {
        kind,
        recorder: in_flight.answered(backend.metrics.clone(), None),
    };
    match result {
        Ok(Ok(response)) => Outcome::Answered {
            response,
            recorder: in_flight.answered(backend.metrics.clone(), None),
        },
        Ok(Err(SendFailure::Body(_))) if progress.exceeded() => {
            route.rejected_too_large.inc();
            in_flight.answered_elsewhere();
            Outcome::TooLarge {
                recorder: Recorder {
                    series: backend.series(routed.decision).clone(),
                    errors: backend.metrics.clone(),
                    code: 413,
                    start: routed.start,
                    grpc: None,
                    permit: None,
                    body: None,
                },
            }
        }
        Ok(Err(SendFailure::Body(error))) => {
            let kind = progress
                .client_fault()
                .unwrap_or(ClientErrorKind::IncompleteBody);
            in_flight.client_failed(&route.client_errors, kind);
            Outcome::ClientFault {
                kind,
                detail: crate::body::innermost_cause(&*error),
            }
        }
        Ok(Err(SendFailure::Upstream(failure))) => {
            tracing::debug!(route = %route.name, backend = backend.label.as_str(), error = %failure, "upstream request failed");
            failed(in_flight, failure.kind)
        }
        Err(Stop::TimedOut | Stop::BackendStalled) => failed(in_flight, UpstreamErrorKind::Timeout),
        Err(Stop::ClientStalled) => {
            in_flight.client_failed(&route.client_errors, ClientErrorKind::BodyTimeout);
            Outcome::ClientFault {
                kind: ClientErrorKind::BodyTimeout,
                detail: String::new(),
            }
        }
        Err(Stop::Gone(fault)) => {
            match fault {
                Some(kind) => in_flight.client_failed(&route.client_errors, kind),
                // A 499 once the request reached the backend.
                None => drop(in_flight),
            }
            Outcome::Gone
        }
    }
}

/// A request field, by what [`upstream_head`] does with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    /// Hop-by-hop: `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Transfer-Encoding`, `Upgrade`.
    HopByHop,
    /// The proxy frames the body itself: its framing field goes where
    /// the client's first was.
    Framing,
    /// The proxy answers `Expect` itself.
    Expect,
    Xff,
    /// The other forwarding fields.
    Forwarding,
    Cookie,
    Other,
}

fn classify(name: &[u8]) -> Field {
    // The rest of the `X-Forwarded-*` family (`-Proto`, `-Host`, `-Ssl`,
    // …) is `Forwarding` by its prefix, below.
    const TABLE: [(&[u8], Field); 14] = [
        (b"host", Field::Host),
        (b"connection", Field::HopByHop),
        (b"keep-alive", Field::HopByHop),
        (b"proxy-connection", Field::HopByHop),
        (b"te", Field::HopByHop),
        (b"transfer-encoding", Field::HopByHop),
        (b"upgrade", Field::HopByHop),
        (b"content-length", Field::Framing),
        (b"expect", Field::Expect),
        (b"x-forwarded-for", Field::Xff),
        (b"x-real-ip", Field::Forwarding),
        (b"forwarded", Field::Forwarding),
        (b"cookie", Field::Cookie),
        (b"http2-settings", Field::HopByHop),
    ];
    match TABLE
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
    {
        Some(&(_, kind)) => kind,
        // The rest of the family (`-Proto` and `-Host`, which the proxy
        // sets, and `-Ssl`, `-Port`, `-Prefix`, …, which a backend's
        // framework may read as its scheme, port or path prefix): only a
        // trusted proxy's pass.
        None if crate::fields::is_forwarded_family(name) => Field::Forwarding,
        None => Field::Other,
    }
}

/// The field names the client's `Connection` lists (its own hop-by-hop
/// fields), but the tokens the proxy reads itself.
fn connection_named<'a>(req: &ClientRequest<'a>) -> ConnectionNames<'a> {
    let mut named = ConnectionNames::default();
    req.summary.each_connection(req.fields, &mut |value| {
        named.add_list(value, |t| {
            t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"upgrade")
        });
    });
    named
}

/// Calls `emit` with each field a backend gets (the rules in the module
/// docs), in order: the client's that pass, then the forwarding fields.
/// `host`: what a Host field says (None: the client's passes unchanged);
/// `one_cookie`: an HTTP/2 client's `cookie` fields go as one (to an
/// HTTP/1.1 backend, RFC 9113 §8.2.3); `framing`: the proxy's framing
/// field, where the client's first was (else after the forwarding ones).
fn each_forwarded_field(
    req: &ClientRequest<'_>,
    routed: &Routed,
    client: &Client,
    host: Option<&[u8]>,
    one_cookie: bool,
    mut framing: Option<(&[u8], &[u8])>,
    emit: &mut dyn FnMut(&[u8], &[u8]),
) {
    let keep_underscores = routed.route.keep_underscore_headers;
    let modifier = routed.route.request_headers.as_ref();
    let trusted = routed.trusted_hops > 0;
    let named = connection_named(req);
    let join_cookies = one_cookie && req.version == Version::HTTP_2;
    let mut cookies: Option<Vec<u8>> = None;
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut present = [false; 3];
    if let Some(host) = host {
        emit(b"host", host);
    }
    req.fields.each(&mut |name, value| match classify(name) {
        Field::Host if host.is_none() => emit(name, value),
        Field::Framing => {
            if let Some((name, value)) = framing.take() {
                emit(name, value);
            }
        }
        Field::Host | Field::HopByHop | Field::Expect => {}
        Field::Xff => xff.extend(
            value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|e| !e.is_empty()),
        ),
        // A trusted proxy's, unless the `Connection` it came with names
        // it (hop-by-hop).
        Field::Forwarding if trusted && !named.lists(name) => {
            for (i, known) in [&b"x-forwarded-proto"[..], b"x-forwarded-host", b"x-real-ip"]
                .iter()
                .enumerate()
            {
                present[i] |= name.eq_ignore_ascii_case(known);
            }
            emit(name, value);
        }
        Field::Forwarding => {}
        Field::Cookie if join_cookies => match &mut cookies {
            Some(joined) => {
                joined.extend_from_slice(b"; ");
                joined.extend_from_slice(value);
            }
            None => cookies = Some(value.to_vec()),
        },
        Field::Cookie | Field::Other => {
            if named.lists(name) || modifier.is_some_and(|m| m.drops(name)) {
                return;
            }
            match crate::fields::client_field(name) {
                ClientField::Ordinary => emit(name, value),
                ClientField::Underscored if keep_underscores => emit(name, value),
                ClientField::Underscored | ClientField::Reserved => {}
            }
        }
    });
    if let Some(joined) = cookies
        && !modifier.is_some_and(|m| m.drops(b"cookie"))
    {
        emit(b"cookie", &joined);
    }
    if let Some(modifier) = modifier {
        for (name, value) in modifier.written() {
            emit(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    forwarding_fields(req, routed, client, &xff, present, emit);
    if let Some((name, value)) = framing {
        emit(name, value);
    }
}

/// The forwarding fields a backend gets (see the module docs): `xff` the
/// client's `X-Forwarded-For` entries, `present` whether it sent
/// `X-Forwarded-Proto`, `-Host` and `X-Real-IP` (read only with trusted
/// hops).
fn forwarding_fields(
    req: &ClientRequest<'_>,
    routed: &Routed,
    client: &Client,
    xff: &[&[u8]],
    present: [bool; 3],
    emit: &mut dyn FnMut(&[u8], &[u8]),
) {
    let trusted = routed.trusted_hops > 0;
    let ip = client.ip.as_bytes();
    let authority = req.authority().map(str::as_bytes);
    if !trusted {
        emit(b"x-forwarded-for", ip);
        emit(b"x-forwarded-proto", client.scheme.as_bytes());
        if let Some(authority) = authority {
            emit(b"x-forwarded-host", authority);
        }
        emit(b"x-real-ip", ip);
        return;
    }
    // The rightmost `trusted_hops` entries were added by trusted proxies;
    // anything left of them is the client's word.
    let keep = xff.len().min(routed.trusted_hops as usize);
    let chain = &xff[xff.len() - keep..];
    let mut joined = Vec::new();
    for entry in chain {
        joined.extend_from_slice(entry);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip);
    emit(b"x-forwarded-for", &joined);
    if !present[0] {
        emit(b"x-forwarded-proto", client.scheme.as_bytes());
    }
    if !present[1]
        && let Some(authority) = authority
    {
        emit(b"x-forwarded-host", authority);
    }
    if !present[2] {
        emit(b"x-real-ip", chain.first().copied().unwrap_or(ip));
    }
}

/// The head `backend` gets for the client's request (see the module
/// docs), and, when `copy`, the same head for a mirrored copy (without
/// its framing).
pub fn upstream_head(
    req: &ClientRequest<'_>,
    routed: &Routed,
    backend: &Backend,
    client: &Client,
    copy: bool,
) -> (Head, Option<CopyHead>) {
    match backend.client.protocol() {
        Protocol::Http1 => {
            let (head, copy) = h1_head(req, routed, backend, client, copy);
            (Head::H1(head), copy.map(CopyHead::H1))
        }
        Protocol::Http2 => {
            let parts = h2_head(req, routed, backend, client);
            let copy = copy.then(|| crate::upstream::copy_parts(&parts));
            (Head::H2(parts), copy.map(CopyHead::H2))
        }
    }
}

fn h1_head(
    req: &ClientRequest<'_>,
    routed: &Routed,
    backend: &Backend,
    client: &Client,
    copy: bool,
) -> (Reused<Vec<u8>>, Option<Vec<u8>>) {
    let mut length = [0; 20];
    let framing: Option<(&[u8], &[u8])> = match req.body {
        BodyKind::Length(n) => Some((b"content-length", crate::http1::write::itoa(n, &mut length))),
        BodyKind::Streamed => Some((b"transfer-encoding", b"chunked")),
        BodyKind::None if crate::fields::expects_body(req.method) => {
            Some((b"content-length", b"0"))
        }
        BodyKind::None => None,
    };
    let mut head = h1_fields(req, routed, backend, client, framing);
    if let Some(offered) = req.upgrade {
        crate::http1::write::field(&mut head, b"upgrade", offered);
        let connection: &[u8] = if req.summary.trailers {
            b"upgrade, te"
        } else {
            b"upgrade"
        };
        crate::http1::write::field(&mut head, b"connection", connection);
    }
    head.extend_from_slice(b"\r\n");
    // A copy's body is whole: its head gets its own length (`crate::mirror`).
    let copy = copy.then(|| h1_fields(req, routed, backend, client, None));
    (head, copy.map(|c| c.to_vec()))
}

/// The request line and fields of an HTTP/1.1 head (no blank line).
fn h1_fields(
    req: &ClientRequest<'_>,
    routed: &Routed,
    backend: &Backend,
    client: &Client,
    framing: Option<(&[u8], &[u8])>,
) -> Reused<Vec<u8>> {
    use crate::http1::write;
    let mut out: Reused<Vec<u8>> = Reused::take();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.path_and_query().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The Host: the client's as it sent it for an origin-form target, the
    // authority for an absolute one (or an HTTP/2 client's), the backend's
    // for a client that sent none.
    let backend_authority;
    let host = match req.target {
        Target::Absolute { authority, .. } => Some(authority.as_bytes()),
        _ if req.summary.host.is_some() => None,
        _ => {
            backend_authority = backend.url.authority();
            Some(backend_authority.as_bytes())
        }
    };
    each_forwarded_field(
        req,
        routed,
        client,
        host,
        true,
        framing,
        &mut |name, value| write::field(&mut out, name, value),
    );
    // TE is hop-by-hop: whoever sends it names it in Connection (RFC 9110
    // §10.1.4); an upgrade's Connection names both (`h1_head`).
    if req.summary.trailers {
        write::field(&mut out, b"te", b"trailers");
        if req.upgrade.is_none() {
            write::field(&mut out, b"connection", b"te");
        }
    }
    out
}

fn h2_head(
    req: &ClientRequest<'_>,
    routed: &Routed,
    backend: &Backend,
    client: &Client,
) -> http::request::Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = req.method.clone();
    parts.version = Version::HTTP_2;
    let scheme = match backend.url.scheme {
        crate::config::Scheme::Http => "http",
        crate::config::Scheme::Https => "https",
    };
    // The route phase refused a target with no `:path` (too long).
    let path = crate::fields::h2_path(&req.target.path_and_query())
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // `:authority` is the backend's (an h2 request may not carry a Host
    // that differs from it, RFC 9113 §8.3.1); the client's is in
    // X-Forwarded-Host.
    parts.uri = http::Uri::builder()
        .scheme(scheme)
        .authority(backend.url.authority().as_str())
        .path_and_query(path)
        .build()
        // Not reached: the scheme and authority are the backend URL's.
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let headers = &mut parts.headers;
    // No Host: the fields go after `:authority`, which is the backend's.
    each_forwarded_field(
        req,
        routed,
        client,
        Some(b""),
        false,
        None,
        &mut |name, value| {
            if name.eq_ignore_ascii_case(b"host") {
                return;
            }
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        },
    );
    if req.summary.trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if let BodyKind::Length(n) = req.body {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    parts
}
