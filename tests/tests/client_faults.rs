//! Conformance of the proxy's request paths (HTTP/1.1 through its own
//! codec, HTTP/2 through hyper's server) to the rules of issue #31: a
//! client's fault is never charged to a backend, and nothing careful peers
//! (nginx, HAProxy) refuse is forwarded.
//!
//! Every probe is raw bytes to the real `sluice-proxy` binary, with
//! backends on raw sockets that record every byte they get. Each probe
//! runs on two routes: `own`, which forwards by weight alone, and `ab`,
//! which has an A/B rule and a canary (the route phase decides by headers
//! before anything is forwarded). Checked: the answer, the bytes each
//! backend got (none for a client's fault), and the metrics (the backend's
//! counts unchanged, `sluice_client_errors_total` grown).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one backend connection received, and whether the proxy closed it.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    /// Complete requests read (and answered).
    requests: usize,
    closed: bool,
}

/// A backend on raw sockets: each connection's bytes are recorded; each
/// request (its body read by its framing) gets the answer [`answer_for`]
/// picks by the last segment of its path.
struct RawBackend {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
    /// `/early-hints` holds its final response until this is notified.
    release: Arc<tokio::sync::Notify>,
}

impl RawBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let release = Arc::new(tokio::sync::Notify::new());
        let (all, gate) = (connections.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Seen::default()));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(serve(stream, seen, gate.clone()));
            }
        });
        Self {
            addr,
            connections,
            release,
        }
    }

    /// Connections accepted so far.
    fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Every byte received, all connections in order of acceptance.
    fn received(&self) -> String {
        let all = self.connections.lock().unwrap();
        let bytes: Vec<u8> = all
            .iter()
            .flat_map(|c| c.lock().unwrap().bytes.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last connection's complete requests and whether it has been
    /// closed.
    fn last(&self) -> Option<(usize, bool)> {
        let all = self.connections.lock().unwrap();
        let last = all.last()?.lock().unwrap();
        Some((last.requests, last.closed))
    }
}

/// A backend connection that records every byte it reads.
struct Recording {
    stream: TcpStream,
    seen: Arc<Mutex<Seen>>,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        let mut seen = self.seen.lock().unwrap();
        seen.bytes.extend_from_slice(&buf.filled()[before..]);
        if matches!(polled, std::task::Poll::Ready(_)) && buf.filled().len() == before {
            seen.closed = true;
        }
        polled
    }
}

/// Answers each request `read_request` frames (see [`answer_for`]).
async fn serve(stream: TcpStream, seen: Arc<Mutex<Seen>>, release: Arc<tokio::sync::Notify>) {
    let mut conn = Recording { stream, seen };
    let mut buf = Vec::new();
    while let Some((head, _)) = read_request(&mut conn, &mut buf).await {
        conn.seen.lock().unwrap().requests += 1;
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let last = target.rsplit('/').next().unwrap_or_default().to_string();
        if last == "early-hints" {
            let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
            if conn.stream.write_all(hints).await.is_err() {
                return;
            }
            release.notified().await;
        }
        if last == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if conn
            .stream
            .write_all(&answer_for(&last, &head))
            .await
            .is_err()
        {
            return;
        }
        if last.starts_with("switch") {
            // An upgraded connection: hold it until the proxy closes it.
            let mut rest = [0u8; 1024];
            while matches!(conn.read(&mut rest).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

fn answer_for(last: &str, head: &str) -> Vec<u8> {
    let fixed: &[u8] = match last {
        "head-abc" => b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "head-differ" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        "head-repeated" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\n"
        }
        "switch" => {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        }
        "switch-h2c" => {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        }
        "te-chunked-gzip" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "te-gzip-chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "bare-lf" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n6\r\n world\n0\n\n"
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    if last == "echo" {
        let mut out =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len()).into_bytes();
        out.extend_from_slice(head.as_bytes());
        return out;
    }
    fixed.to_vec()
}

/// A proxy with the two routes every probe runs on, each to a backend of
/// its own, and a route that keeps underscore header names.
struct Setup {
    proxy: ChildProxy,
    own: RawBackend,
    ab: RawBackend,
    /// The `ab` route's canary: its A/B rule never matches here.
    ab_canary: RawBackend,
    keep: RawBackend,
}

const ROUTES: [&str; 2] = ["own", "ab"];

impl Setup {
    /// `extra`: more settings of the `own` and `ab` routes (`, key: value`).
    async fn new(extra: &str) -> Self {
        let (own, ab, ab_canary, keep) = (
            RawBackend::start().await,
            RawBackend::start().await,
            RawBackend::start().await,
            RawBackend::start().await,
        );
        let routes = format!(
            "  - {{ name: own, path_prefix: /own, stable: 'http://{}'{extra} }}\n  - {{ name: ab, path_prefix: /ab, stable: 'http://{}', canary: 'http://{}', canary_match: [{{ header: x-canary, value: always }}]{extra} }}\n  - {{ name: keep, path_prefix: /keep, stable: 'http://{}', underscore_headers: keep }}\n",
            own.addr, ab.addr, ab_canary.addr, keep.addr
        );
        let proxy = ChildProxy::start(&routes, &[]).await;
        Self {
            proxy,
            own,
            ab,
            ab_canary,
            keep,
        }
    }

    fn backend(&self, route: &str) -> &RawBackend {
        match route {
            "own" => &self.own,
            "ab" => &self.ab,
            _ => &self.keep,
        }
    }

    /// `request` on a fresh connection (its write side shut after it when
    /// `shut`), and what came back until the proxy closed it (5 s at most).
    async fn probe(&self, request: &[u8], shut: bool) -> String {
        let mut stream = TcpStream::connect(self.proxy.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        if shut {
            stream.shutdown().await.unwrap();
        }
        let (closed, bytes) = closed_within(&mut stream, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(closed, "the proxy kept the connection open after: {text:?}");
        text
    }

    /// Checks that route `route`'s backends were never reached and
    /// nothing was counted against them, and that the route's client
    /// errors are `expected` (kind, count).
    async fn assert_clients_fault(&self, route: &str, expected: &[(&str, f64)]) {
        let m = eventually(
            "the client errors to be counted",
            Duration::from_secs(5),
            || async {
                let m = scrape(self.proxy.admin).await;
                expected
                    .iter()
                    .all(|(kind, n)| {
                        m.sum(
                            "sluice_client_errors_total",
                            &[("route", route), ("kind", kind)],
                        ) == *n
                    })
                    .then_some(m)
            },
        )
        .await;
        assert_eq!(
            m.sum("sluice_requests_total", &[("route", route)]),
            0.0,
            "a client's fault was counted on route {route}'s backends"
        );
        assert_eq!(
            m.sum("sluice_upstream_errors_total", &[("route", route)]),
            0.0,
            "a client's fault was an upstream error on route {route}"
        );
        let backend = self.backend(route);
        assert_eq!(
            (backend.connections(), backend.received()),
            (0, String::new()),
            "route {route}'s backend was reached"
        );
        if route == "ab" {
            assert_eq!(self.ab_canary.connections(), 0);
        }
    }
}

/// A broken request body is the client's fault on either path: 400, the
/// connection closed, nothing sent to a backend, nothing counted against
/// one, and `sluice_client_errors_total` says which fault it was. A body
/// that breaks within its first 16 KiB is read before the backend is
/// contacted.
#[tokio::test]
async fn a_broken_request_body_is_400_and_never_reaches_or_charges_a_backend() {
    let s = Setup::new("").await;
    let malformed: [(&str, &str); 5] = [
        (
            "a chunk-size line that is not hex",
            "zz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "an 18-digit chunk size",
            "123456789012345678\r\nhello\r\n0\r\n\r\n",
        ),
        ("a 0x chunk size", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("a negative chunk size", "-1\r\nhello\r\n0\r\n\r\n"),
        ("chunk data without its CRLF", "5\r\nhelloXX0\r\n\r\n"),
    ];
    for route in ROUTES {
        for (what, body) in malformed {
            let request = format!(
                "POST /{route}/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let text = s.probe(request.as_bytes(), false).await;
            assert!(
                text.starts_with("HTTP/1.1 400 ") && text.contains("request body is malformed"),
                "{route}, {what}: {text}"
            );
        }
        // A client that half-closes before its body's end still gets its
        // answer.
        let cut: [(&str, String); 2] = [
            (
                "10 of 100 bytes",
                format!(
                    "POST /{route}/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789"
                ),
            ),
            (
                "half a chunk",
                format!(
                    "POST /{route}/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
                ),
            ),
        ];
        for (what, request) in cut {
            let text = s.probe(request.as_bytes(), true).await;
            assert!(
                text.starts_with("HTTP/1.1 400 ") && text.contains("request body was cut short"),
                "{route}, {what}: {text}"
            );
        }
        s.assert_clients_fault(route, &[("malformed_body", 5.0), ("incomplete_body", 2.0)])
            .await;
    }
}

/// A client that goes away in the middle of its body is its own fault,
/// not a 499 on the backend it was headed for.
#[tokio::test]
async fn a_client_that_leaves_mid_body_is_its_own_fault_not_a_499() {
    let s = Setup::new("").await;
    for route in ROUTES {
        let mut stream = TcpStream::connect(s.proxy.addr).await.unwrap();
        stream
            .write_all(
                format!("POST /{route}/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123")
                    .as_bytes(),
            )
            .await
            .unwrap();
        // Time for the proxy to route it and wait on the body.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
        s.assert_clients_fault(route, &[("incomplete_body", 1.0)])
            .await;
    }
}

/// When the body breaks after the proxy began streaming it (past the
/// part read ahead), the upstream exchange is abandoned: the backend's
/// connection is closed (never reused) with the request unfinished (the
/// backend got part of it, or nothing when the break came before the
/// first write), and nothing is counted against the backend.
#[tokio::test]
async fn a_body_broken_after_it_began_streaming_abandons_the_exchange_uncharged() {
    let s = Setup::new("").await;
    let chunk = format!("3e8\r\n{}\r\n", "x".repeat(1000));
    for route in ROUTES {
        let backend = s.backend(route);
        let long = format!(
            "POST /{route}/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n{}",
            "y".repeat(40_000)
        );
        let chunked = format!(
            "POST /{route}/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}zz\r\n",
            chunk.repeat(40)
        );
        for (what, request, shut, answer) in [
            (
                "a Content-Length body cut at 40 of 100 kB",
                long,
                true,
                "cut short",
            ),
            (
                "a chunked body broken after 40 kB",
                chunked,
                false,
                "is malformed",
            ),
        ] {
            let before = backend.connections();
            let text = s.probe(request.as_bytes(), shut).await;
            assert!(
                text.starts_with("HTTP/1.1 400 ") && text.contains(answer),
                "{route}, {what}: {text}"
            );
            let complete = eventually(
                "the proxy to close the backend's connection",
                Duration::from_secs(5),
                || async {
                    let (requests, closed) = backend.last()?;
                    (backend.connections() == before + 1 && closed).then_some(requests)
                },
            )
            .await;
            assert_eq!(complete, 0, "{route}, {what}: the whole request went on");
        }
        let m = scrape(s.proxy.admin).await;
        assert_eq!(m.sum("sluice_requests_total", &[("route", route)]), 0.0);
        assert_eq!(
            m.sum("sluice_upstream_errors_total", &[("route", route)]),
            0.0
        );
        assert_eq!(
            m.sum("sluice_client_errors_total", &[("route", route)]),
            2.0
        );
    }
}

/// A body paused longer than `timeouts.idle` is answered 408, and counted
/// as the client's, never reaching the backend.
#[tokio::test]
async fn a_body_paused_too_long_is_408_and_the_clients_fault() {
    let s = Setup::new(", timeouts: { idle: 1s }").await;
    for route in ROUTES {
        let mut stream = TcpStream::connect(s.proxy.addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST /{route}/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (_, seen) = closed_within(&mut stream, Duration::from_secs(6)).await;
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 408 "), "{route}: {text}");
        s.assert_clients_fault(route, &[("body_timeout", 1.0)])
            .await;
    }
}

/// `X-Sluice-*` (the proxy's own fields: `X-Sluice-Mirror` marks its
/// mirror copies) never reaches a backend from a client, and neither do
/// names with `_` unless the route keeps them; the underscore spellings
/// of the forwarding fields never do, and no `X-Forwarded-*` field the
/// proxy does not set reaches one from an untrusted client.
#[tokio::test]
async fn the_proxys_fields_and_underscore_names_from_clients_never_reach_a_backend() {
    let s = Setup::new("").await;
    let fields = "X-Sluice-Mirror: 1\r\nx-sluice-anything: x\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nMy_Header: 1\r\nAccept: */*\r\nX-Forwarded-Ssl: on\r\nx-forwarded-PREFIX: /admin\r\nX_Forwarded_Port: 443\r\n";
    let requests = |route: &str| {
        [
            format!("GET /{route}/echo HTTP/1.1\r\nHost: a\r\n{fields}Connection: close\r\n\r\n"),
            format!(
                "POST /{route}/echo HTTP/1.1\r\nHost: a\r\n{fields}Content-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
        ]
    };
    for route in ["own", "ab", "keep"] {
        for request in requests(route) {
            let text = s.probe(request.as_bytes(), false).await;
            assert!(text.starts_with("HTTP/1.1 200 "), "{route}: {text}");
            let got = text.to_ascii_lowercase();
            let got = got.split_once("\r\n\r\n").unwrap().1;
            for gone in [
                "x-sluice-mirror",
                "x-sluice-anything",
                "x_forwarded_for",
                "x_real_ip",
                "x-forwarded-ssl",
                "x-forwarded-prefix",
                "x_forwarded_port",
            ] {
                assert!(
                    !got.contains(gone),
                    "{route}: {gone} reached the backend: {got}"
                );
            }
            assert!(
                got.contains("accept: */*") && got.contains("x-forwarded-for: 127.0.0.1"),
                "{route}: {got}"
            );
            assert_eq!(
                got.contains("my_header: 1"),
                route == "keep",
                "{route}: underscore names pass only where kept: {got}"
            );
        }
    }
}

/// A request target or authority with user info, a bad port, another
/// scheme or no leading `/` is 400 and never forwarded, on either path
/// (absolute-form targets always go to hyper's path).
#[tokio::test]
async fn targets_and_authorities_that_are_not_host_and_port_are_400() {
    let s = Setup::new("").await;
    for route in ROUTES {
        for (what, request, why) in [
            (
                "user info in an absolute-form target",
                format!("GET http://a@other-host/{route}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "authority is not a host",
            ),
            (
                "a port that is not a number",
                format!("GET http://other-host:8o/{route}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "authority is not a host",
            ),
            (
                "a scheme other than http(s)",
                format!("GET ftp://other-host/{route}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "not a path or an http(s) URI",
            ),
            (
                "an asterisk for GET",
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
                "not a path",
            ),
            (
                "user info in Host",
                format!("GET /{route}/x HTTP/1.1\r\nHost: a@x.example\r\n\r\n"),
                "Host header field is not a host",
            ),
            (
                "an empty label in Host",
                format!("GET /{route}/x HTTP/1.1\r\nHost: a..x.example\r\n\r\n"),
                "Host header field is not a host",
            ),
            (
                "a Host that starts with a dot",
                format!("GET /{route}/x HTTP/1.1\r\nHost: .x.example\r\n\r\n"),
                "Host header field is not a host",
            ),
            (
                "an empty label in the target's authority",
                format!("GET http://x..example/{route}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "authority is not a host",
            ),
            (
                "a method in lower case",
                format!("get /{route}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "method is not upper-case",
            ),
        ] {
            let text = s.probe(request.as_bytes(), false).await;
            assert!(
                text.starts_with("HTTP/1.1 400 ") && text.contains(why),
                "{route}, {what}: {text}"
            );
        }
        let m = scrape(s.proxy.admin).await;
        assert_eq!(m.sum("sluice_requests_total", &[("route", route)]), 0.0);
        assert_eq!(s.backend(route).connections(), 0);
    }
}

/// An HTTP/2 request (prior knowledge) to `uri` with `extra` header
/// fields and `body`: the status the proxy answered, or the reason it
/// reset the stream with.
async fn h2_request(
    proxy: SocketAddr,
    uri: &str,
    extra: &[(&str, &str)],
    body: &'static [u8],
) -> Result<http::StatusCode, Option<h2::Reason>> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(uri);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let (answer, mut send) = client
        .send_request(req.body(()).unwrap(), body.is_empty())
        .unwrap();
    if !body.is_empty() {
        send.send_data(bytes::Bytes::from_static(body), true)
            .unwrap();
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer in time");
    answer.map(|a| a.status()).map_err(|e| e.reason())
}

/// HTTP/2: `:authority` with user info or an empty label, a `:path` that
/// is not a path, a field value padded with spaces or tabs (RFC 9113
/// §8.2.1) and a Host that disagrees with `:authority` are refused (400, or a
/// stream reset with PROTOCOL_ERROR where the HTTP/2 layer itself finds
/// the request malformed, RFC 9113 §8.1.1); `content-length` fields that
/// differ too. Equal ones reach the backend as one.
#[tokio::test]
async fn http2_authorities_paths_and_lengths_are_checked() {
    let s = Setup::new("").await;
    let addr = s.proxy.addr;
    for route in ROUTES {
        for (what, uri, extra) in [
            (
                "user info in :authority",
                format!("http://a@h.example/{route}/x"),
                vec![],
            ),
            (
                "a :path of only a query",
                "http://h.example?a=1".to_string(),
                vec![],
            ),
            (
                "a Host that is not :authority",
                format!("http://h.example/{route}/x"),
                vec![("host", "other.example")],
            ),
            (
                "content-length fields that differ",
                format!("http://h.example/{route}/x"),
                vec![("content-length", "5"), ("content-length", "7")],
            ),
            (
                "a field value with a leading space",
                format!("http://h.example/{route}/x"),
                vec![("x-a", " padded")],
            ),
            (
                "a field value with a trailing tab",
                format!("http://h.example/{route}/x"),
                vec![("x-a", "padded\t")],
            ),
            (
                "an empty label in :authority",
                format!("http://h..example/{route}/x"),
                vec![],
            ),
        ] {
            let answer = h2_request(addr, &uri, &extra, b"hello").await;
            assert!(
                matches!(
                    answer,
                    Ok(http::StatusCode::BAD_REQUEST) | Err(Some(h2::Reason::PROTOCOL_ERROR))
                ),
                "{route}, {what}: {answer:?}"
            );
        }
        assert_eq!(s.backend(route).connections(), 0, "{route}");
        let status = h2_request(
            addr,
            &format!("http://h.example/{route}/echo"),
            &[("content-length", "5"), ("content-length", "5")],
            b"hello",
        )
        .await;
        assert_eq!(status, Ok(http::StatusCode::OK), "{route}");
        let got = s.backend(route).received().to_ascii_lowercase();
        assert_eq!(
            got.matches("content-length:").count(),
            1,
            "{route}: equal lengths become one field: {got}"
        );
    }
}

/// A HEAD response's `Content-Length` is passed on, so it is checked: not
/// a number, or two values that differ, is 502 and the backend's
/// connection is closed; equal values reach the client as one.
#[tokio::test]
async fn a_head_response_with_an_invalid_content_length_is_502_and_its_connection_dropped() {
    let s = Setup::new("").await;
    for route in ROUTES {
        let backend = s.backend(route);
        for bad in ["head-abc", "head-differ"] {
            let text = s
                .probe(
                    format!("HEAD /{route}/{bad} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                    false,
                )
                .await;
            assert!(
                text.starts_with("HTTP/1.1 502 ") && !text.contains("sluice:"),
                "{route}, {bad}: {text}"
            );
            eventually(
                "the proxy to close the backend's connection",
                Duration::from_secs(5),
                || async { backend.last()?.1.then_some(()) },
            )
            .await;
        }
        let text = s
            .probe(
                format!(
                    "HEAD /{route}/head-repeated HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
                false,
            )
            .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{route}: {text}");
        let lower = text.to_ascii_lowercase();
        assert_eq!(
            lower.matches("content-length").count(),
            1,
            "{route}: {text}"
        );
        assert!(lower.contains("content-length: 5\r\n"), "{route}: {text}");
        let m = scrape(s.proxy.admin).await;
        assert_eq!(
            m.sum(
                "sluice_upstream_errors_total",
                &[("route", route), ("kind", "protocol")]
            ),
            2.0
        );
    }
}

/// A 101 goes to a client only when it asked to upgrade to that
/// protocol; any other is the backend's error (502).
#[tokio::test]
async fn a_101_the_request_did_not_ask_for_is_502() {
    let s = Setup::new("").await;
    for route in ROUTES {
        for (what, request) in [
            (
                "a POST with a body",
                format!(
                    "POST /{route}/switch HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
                ),
            ),
            (
                "a GET asking for no upgrade",
                format!("GET /{route}/switch HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            ),
            (
                "a websocket upgrade answered with h2c",
                format!(
                    "GET /{route}/switch-h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"
                ),
            ),
        ] {
            let text = s.probe(request.as_bytes(), false).await;
            assert!(
                text.starts_with("HTTP/1.1 502 ") && !text.contains(" 101 "),
                "{route}, {what}: {text}"
            );
        }
        // The upgrade the client asked for is relayed.
        let mut stream = TcpStream::connect(s.proxy.addr).await.unwrap();
        stream
            .write_all(
                format!("GET /{route}/switch HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "{route}");
    }
}

/// A request `Transfer-Encoding` other than `chunked` alone is refused
/// (501 for a coding the proxy does not decode, 400 for a malformed
/// list) and never forwarded; a response coded other than `chunked`
/// alone is 502 on every path.
#[tokio::test]
async fn transfer_codings_other_than_chunked_alone_are_refused() {
    let s = Setup::new("").await;
    for route in ROUTES {
        for (coding, status) in [
            ("Transfer-Encoding: gzip, chunked", "501"),
            ("Transfer-Encoding: identity, chunked", "501"),
            ("Transfer-Encoding: ,chunked", "400"),
            ("Transfer-Encoding: chunked, chunked", "400"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                "400",
            ),
        ] {
            let request = format!(
                "POST /{route}/x HTTP/1.1\r\nHost: a\r\n{coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let text = s.probe(request.as_bytes(), false).await;
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "{route}, {coding}: {text}"
            );
        }
        assert_eq!(s.backend(route).connections(), 0, "{route}");
        let m = scrape(s.proxy.admin).await;
        assert_eq!(m.sum("sluice_requests_total", &[("route", route)]), 0.0);
        // Responses: the own codec (GET) and hyper's client (POST).
        for request in [
            format!(
                "GET /{route}/te-chunked-gzip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            ),
            format!(
                "GET /{route}/te-gzip-chunked HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            ),
            format!(
                "POST /{route}/te-chunked-gzip HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
            format!(
                "POST /{route}/te-gzip-chunked HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
        ] {
            let text = s.probe(request.as_bytes(), false).await;
            assert!(
                text.starts_with("HTTP/1.1 502 ") && !text.contains("hello"),
                "{route}, {request}: {text}"
            );
        }
    }
}

/// A client that pipelines requests and then half-closes its connection
/// gets every answer before the connection closes (a request with a body
/// is answered when another request follows it: one last before the end
/// may have its body cut by it, and only hyper can tell); a body the
/// half-close cuts is answered 400 at once.
#[tokio::test]
async fn a_half_close_after_pipelined_requests_gets_every_answer() {
    let s = Setup::new("").await;
    for route in ROUTES {
        let get = |n: u32| format!("GET /{route}/{n}/slow HTTP/1.1\r\nHost: a\r\n\r\n");
        let post =
            format!("POST /{route}/post/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
        let cut =
            format!("POST /{route}/cut HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123");
        for (what, requests, answers) in [
            ("three GETs", format!("{}{}{}", get(1), get(2), get(3)), 3),
            (
                "a GET, a POST, a GET",
                format!("{}{post}{}", get(1), get(2)),
                3,
            ),
        ] {
            let text = s.probe(requests.as_bytes(), true).await;
            assert_eq!(
                text.matches("HTTP/1.1 200 OK").count(),
                answers,
                "{route}, {what}: {text}"
            );
        }
        let text = s.probe(format!("{}{cut}", get(1)).as_bytes(), true).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.contains("HTTP/1.1 400 "),
            "{route}, a cut body last: {text}"
        );
        let m = scrape(s.proxy.admin).await;
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[("route", route), ("code", "499")]
            ),
            0.0,
            "{route}"
        );
    }
}

/// A chunked request whose body is empty (`0` and the blank line, read
/// ahead whole with the head) reaches the backend with its last chunk,
/// with or without `Expect: 100-continue`: the backend reads a whole
/// request and answers, and the connection's next request is read as one.
/// (Without the last chunk the backend
/// waits for the rest of the body: a 504 charged to it, or, from one that
/// answers early, the next request read as chunk data.)
#[tokio::test]
async fn an_empty_chunked_body_reaches_the_backend_with_its_last_chunk() {
    let s = Setup::new(", timeouts: { request: 2s }").await;
    for route in ROUTES {
        for (round, expect) in ["", "Expect: 100-continue\r\n"].into_iter().enumerate() {
            let requests = format!(
                "POST /{route}/empty HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{expect}\r\n0\r\n\r\nGET /{route}/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            );
            let text = s.probe(requests.as_bytes(), false).await;
            assert_eq!(
                text.matches("HTTP/1.1 200 OK").count(),
                2,
                "{route} {expect:?}: {text}"
            );
            let received = s.backend(route).received();
            assert!(
                received.contains("\r\n\r\n0\r\n\r\nGET "),
                "{route} {expect:?}: the backend got {received:?}"
            );
            let read: usize = s
                .backend(route)
                .connections
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.lock().unwrap().requests)
                .sum();
            assert_eq!(read, 2 * (round + 1), "{route} {expect:?}: requests read");
        }
    }
    let m = scrape(s.proxy.admin).await;
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
}

/// Chunk lines that end in a bare LF are accepted, as nginx and HAProxy
/// do: the client gets the whole body, never a hang.
#[tokio::test]
async fn bare_lf_chunk_lines_in_a_response_are_accepted() {
    let s = Setup::new("").await;
    for route in ROUTES {
        let text = s
            .probe(
                format!("GET /{route}/bare-lf HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
                false,
            )
            .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{route}: {text}");
        let body: String = text
            .split_once("\r\n\r\n")
            .unwrap()
            .1
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        assert_eq!(body, "hello world", "{route}: {text}");
    }
}

/// An informational response (103 Early Hints) reaches an HTTP/1.1
/// client as it comes, before the final response exists, on either path
/// and whichever upstream client carries the request (the own codec for a
/// GET, hyper's for a POST).
#[tokio::test]
async fn early_hints_reach_an_http11_client_before_the_final_response() {
    let s = Setup::new("").await;
    for route in ROUTES {
        for request in [
            format!("GET /{route}/early-hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            format!(
                "POST /{route}/early-hints HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
        ] {
            let mut stream = TcpStream::connect(s.proxy.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("{request}: no 103 before the final response"))
                    .unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            assert_eq!(
                String::from_utf8_lossy(&seen).to_ascii_lowercase(),
                "http/1.1 103 early hints\r\nlink: </s.css>; rel=preload\r\n\r\n",
                "{request}"
            );
            s.backend(route).release.notify_one();
            let (_, rest) = closed_within(&mut stream, Duration::from_secs(5)).await;
            let rest = String::from_utf8_lossy(&rest);
            assert!(
                rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("ok"),
                "{request}: {rest}"
            );
        }
    }
}

/// An informational response (103 Early Hints) from an HTTP/1.1 backend
/// reaches an HTTP/2 client as an informational HEADERS frame, before the
/// final response exists, with its fields and without hop-by-hop ones.
#[tokio::test]
async fn early_hints_reach_an_http2_client_before_the_final_response() {
    let s = Setup::new("").await;
    for route in ROUTES {
        let tcp = TcpStream::connect(s.proxy.addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://h.example/{route}/early-hints"))
            .body(())
            .unwrap();
        let (mut answer, _) = client.send_request(req, true).unwrap();
        let hint = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| answer.poll_informational(cx)),
        )
        .await
        .unwrap_or_else(|_| panic!("{route}: no 103 before the final response"))
        .expect("an informational response")
        .unwrap();
        assert_eq!(hint.status().as_u16(), 103, "{route}");
        assert_eq!(
            hint.headers().get("link").map(|v| v.to_str().unwrap()),
            Some("</s.css>; rel=preload"),
            "{route}"
        );
        s.backend(route).release.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("the final response in time")
            .unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK, "{route}");
        let mut body = answer.into_body();
        let data = body.data().await.expect("a body").unwrap();
        assert_eq!(&data[..], b"ok", "{route}");
    }
}

/// An HTTP/2 request body streams to the backend at once, not read ahead
/// (a client may wait for the response head before it sends, as gRPC's
/// bidirectional streams do), also on a route to an HTTP/1.1 backend.
#[tokio::test]
async fn an_http2_body_is_not_read_ahead() {
    let early = serve_http(|_req: http::Request<hyper::body::Incoming>| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"answered before the body",
        )))
    })
    .await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: early, stable: 'http://{early}' }}\n"),
        &[],
    )
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://h.example/stream")
        .body(())
        .unwrap();
    // Headers only: the body is still to come.
    let (answer, _body) = client.send_request(req, false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the response head before the request body")
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
}

/// A status code past 599 is not HTTP's (RFC 9110 §15): from an HTTP/1.1
/// backend (the own codec, above) and from an HTTP/2 one alike, the
/// client gets 502 and the backend is charged a protocol error.
#[tokio::test]
async fn a_status_past_599_from_an_http2_backend_is_502() {
    let backend = serve_http(|_req| async {
        http::Response::builder()
            .status(600)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"odd")))
            .unwrap()
    })
    .await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: h2, path_prefix: /, stable: 'http://{backend}', protocol: http2 }}\n"
        ),
        &[],
    )
    .await;
    let (status, _, body) = get(&format!("http://{}/x", proxy.addr)).await.unwrap();
    assert_eq!(status, http::StatusCode::BAD_GATEWAY, "{body:?}");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "h2"), ("kind", "protocol")]
        ),
        1.0
    );
}
