//! The ambiguities of HTTP/1.1 the proxy refuses (issue #32), one by one,
//! as raw bytes to the real `sluice-proxy`: a request the peers reject as
//! ambiguous is answered 400 (501 for a coding the proxy does not decode)
//! and its connection closed, and nothing of it reaches a backend; a
//! response with the same defect is answered 502 and its upstream
//! connection dropped. Each runs on a route that forwards by weight alone
//! and on one with an A/B rule (every route kind takes the same path).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One backend connection: the bytes it received, and whether the proxy
/// closed it.
type Seen = Arc<Mutex<(Vec<u8>, bool)>>;

/// A backend on raw sockets: it records each connection's bytes and
/// whether the proxy closed it, and answers each request with the bytes
/// [`answer_for`] gives its path's last segment.
struct RawBackend {
    addr: SocketAddr,
    /// (bytes received, closed by the proxy) per connection.
    connections: Arc<Mutex<Vec<Seen>>>,
}

impl RawBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let all = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new((Vec::new(), false)));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(serve(stream, seen));
            }
        });
        Self { addr, connections }
    }

    fn received(&self) -> usize {
        let all = self.connections.lock().unwrap();
        all.iter().map(|c| c.lock().unwrap().0.len()).sum()
    }

    /// The bytes each connection received so far.
    fn each_received(&self) -> Vec<Vec<u8>> {
        let all = self.connections.lock().unwrap();
        all.iter().map(|c| c.lock().unwrap().0.clone()).collect()
    }

    fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Whether the last connection was closed by the proxy.
    fn last_closed(&self) -> bool {
        let all = self.connections.lock().unwrap();
        all.last().is_some_and(|c| c.lock().unwrap().1)
    }
}

/// Answers each request head (requests here have no body) until the
/// proxy closes the connection.
async fn serve(mut stream: TcpStream, seen: Seen) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                seen.lock().unwrap().1 = true;
                return;
            }
            Ok(n) => n,
        };
        seen.lock().unwrap().0.extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let last = target.rsplit('/').next().unwrap_or_default();
            if stream.write_all(answer_for(last)).await.is_err() {
                return;
            }
        }
    }
}

/// The backend's answer for a path: one defect each, or a good one.
fn answer_for(last: &str) -> &'static [u8] {
    match last {
        "differing-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "length-and-coding" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        }
        "coding-not-last" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        }
        "coding-on-1.0" => {
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        }
        "obs-fold" => b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        "bare-cr" => b"HTTP/1.1 200 OK\r\nX-A: a\rX-B: b\r\nContent-Length: 2\r\n\r\nok",
        "bare-lf" => b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\nok",
        "nul" => b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
        "space-before-colon" => b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok",
        "status-600" => b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok",
        "later-minor" => b"HTTP/1.4 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "major-2" => b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nmore\r\n0\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }
}

/// A proxy with a weight-only route (`/own`) and a route with an A/B
/// rule (`/ab`), each to a raw backend of its own.
async fn setup() -> (ChildProxy, RawBackend, RawBackend) {
    let (own, ab) = (RawBackend::start().await, RawBackend::start().await);
    let dead = free_port();
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: own, path_prefix: /own, stable: 'http://{}' }}\n  - {{ name: ab, path_prefix: /ab, stable: 'http://{}', canary: 'http://127.0.0.1:{dead}', canary_match: [{{ header: x-canary, value: always }}] }}\n",
            own.addr, ab.addr
        ),
        &[],
    )
    .await;
    (proxy, own, ab)
}

/// `request` on a fresh connection; what came back until the proxy
/// closed it (asserted to close within 5 s).
async fn probe(proxy: &ChildProxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (closed, bytes) = closed_within(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(closed, "the proxy kept the connection open after {text:?}");
    text
}

#[tokio::test]
async fn every_ambiguous_request_is_400_closed_and_never_reaches_a_backend() {
    let (proxy, own, ab) = setup().await;
    let mut answered = std::collections::BTreeMap::new();
    for route in ["own", "ab"] {
        let ambiguous: [(&str, String, &str); 20] = [
            (
                "two Host fields",
                format!("GET /{route} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
                "400",
            ),
            (
                "an HTTP major version other than 1",
                format!("GET /{route} HTTP/2.0\r\nHost: a\r\n\r\n"),
                "505",
            ),
            (
                "a version with two minor digits",
                format!("GET /{route} HTTP/1.10\r\nHost: a\r\n\r\n"),
                "400",
            ),
            (
                "a fragment in the target",
                format!("GET /{route}#/../elsewhere HTTP/1.1\r\nHost: a\r\n\r\n"),
                "400",
            ),
            (
                "a fragment in an absolute target",
                format!("GET http://a/{route}#x HTTP/1.1\r\nHost: a\r\n\r\n"),
                "400",
            ),
            (
                "a chunk extension longer than a chunk line may be, in one piece",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;{}\r\nabc\r\n0\r\n\r\n",
                    "e".repeat(8000)
                ),
                "400",
            ),
            (
                "two Content-Lengths that differ",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                ),
                "400",
            ),
            (
                "Content-Length with Transfer-Encoding",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                ),
                "400",
            ),
            (
                "a Transfer-Encoding that does not end in chunked",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                ),
                "400",
            ),
            (
                "a Transfer-Encoding without chunked",
                format!("POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
                "400",
            ),
            (
                "a coding before chunked",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                ),
                "501",
            ),
            (
                "a Transfer-Encoding on HTTP/1.0",
                format!(
                    "POST /{route} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                ),
                "400",
            ),
            (
                "obs-fold",
                format!("GET /{route} HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n"),
                "400",
            ),
            (
                "a bare CR",
                format!("GET /{route} HTTP/1.1\r\nHost: a\rX-B: b\r\n\r\n"),
                "400",
            ),
            (
                "a bare LF",
                format!("GET /{route} HTTP/1.1\r\nHost: a\nX-B: b\r\n\r\n"),
                "400",
            ),
            (
                "a head of bare LFs",
                format!("GET /{route} HTTP/1.1\nHost: a\n\n"),
                "400",
            ),
            (
                "a NUL in a value",
                format!("GET /{route} HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n"),
                "400",
            ),
            (
                "whitespace before a colon",
                format!("GET /{route} HTTP/1.1\r\nHost : a\r\n\r\n"),
                "400",
            ),
            (
                "an invalid chunk size",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"
                ),
                "400",
            ),
            (
                "a chunk line ending in a bare LF",
                format!(
                    "POST /{route} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
                ),
                "400",
            ),
        ];
        for (what, request, status) in ambiguous {
            let text = probe(&proxy, request.as_bytes()).await;
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "{route}, {what}: {text:?}"
            );
            // A defect in a chunked body shows only once the request was
            // routed: the route's client errors count it.
            let in_the_body = [
                "a chunk extension longer than a chunk line may be, in one piece",
                "an invalid chunk size",
                "a chunk line ending in a bare LF",
            ];
            if !in_the_body.contains(&what) {
                *answered.entry(status).or_insert(0.0) += 1.0;
            }
        }
    }
    assert_eq!(
        (
            own.connections(),
            own.received(),
            ab.connections(),
            ab.received()
        ),
        (0, 0, 0, 0),
        "an ambiguous request reached a backend"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_requests_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_client_errors_total", &[]), 6.0);
    // Refused before routing: counted by the answer given, and only there.
    for code in ["400", "405", "431", "501", "505"] {
        assert_eq!(
            m.sum("sluice_refused_requests_total", &[("code", code)]),
            answered.get(code).copied().unwrap_or(0.0),
            "{code}"
        );
    }
}

/// RFC 9110 §2.5: a later minor version of HTTP/1 is read as 1.1, both a
/// client's request and a backend's response; the backend is sent
/// HTTP/1.1, and the client answered in it.
#[tokio::test]
async fn a_later_minor_version_is_served_as_http_1_1() {
    let (proxy, own, ab) = setup().await;
    for (route, backend) in [("own", &own), ("ab", &ab)] {
        let text = probe(
            &proxy,
            format!("GET /{route}/later-minor HTTP/1.3\r\nHost: a\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(
            text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\nok"),
            "{route}: {text:?}"
        );
        let sent = backend.each_received().swap_remove(0);
        assert!(
            sent.starts_with(format!("GET /{route}/later-minor HTTP/1.1\r\n").as_bytes()),
            "{route}: {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_requests_total", &[("code", "200")]), 2.0);
    assert_eq!(m.sum("sluice_refused_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn every_ambiguous_response_is_502_and_its_connection_dropped() {
    let (proxy, own, ab) = setup().await;
    let defects = [
        "differing-lengths",
        "length-and-coding",
        "coding-not-last",
        "coding-on-1.0",
        "obs-fold",
        "bare-cr",
        "bare-lf",
        "nul",
        "space-before-colon",
        "status-600",
        "major-2",
    ];
    for (route, backend) in [("own", &own), ("ab", &ab)] {
        for defect in defects {
            let before = backend.connections();
            let text = probe(
                &proxy,
                format!("GET /{route}/{defect} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert!(
                text.starts_with("HTTP/1.1 502 ") && !text.contains("abc"),
                "{route}, {defect}: {text:?}"
            );
            eventually(
                "the proxy to drop the backend's connection",
                Duration::from_secs(5),
                || async {
                    (backend.connections() == before + 1 && backend.last_closed()).then_some(())
                },
            )
            .await;
        }
        let m = scrape(proxy.admin).await;
        assert_eq!(
            m.sum(
                "sluice_upstream_errors_total",
                &[("route", route), ("kind", "protocol")]
            ),
            defects.len() as f64,
            "{route}"
        );
        assert_eq!(
            m.sum("sluice_upstream_retries_total", &[("route", route)]),
            0.0,
            "a backend that answered badly may have done the work: no retry"
        );
    }
}

/// A defect in a response's body comes after its head went to the client:
/// the answer is cut (the client's connection closes before the body's
/// end), the backend's connection is dropped, and the request counts as
/// a failure of the backend, with a protocol error (not a reset).
#[tokio::test]
async fn an_invalid_chunk_size_in_a_response_cuts_the_answer_and_drops_the_connection() {
    let (proxy, own, _) = setup().await;
    let text = probe(
        &proxy,
        b"GET /own/bad-chunk HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200 ") && !text.ends_with("0\r\n\r\n") && !text.contains("more"),
        "{text:?}"
    );
    eventually(
        "the proxy to drop the backend's connection",
        Duration::from_secs(5),
        || async { own.last_closed().then_some(()) },
    )
    .await;
    let m = eventually(
        "the failure to be counted",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin).await;
            (m.sum("sluice_upstream_errors_total", &[("kind", "protocol")]) == 1.0).then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "own"), ("classification", "failure")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "reset")]),
        0.0
    );
}

/// `request` on a fresh connection; what came back until the connection
/// ended, and how: `Ok(())` for a close (FIN), the error for a reset.
async fn until_end(proxy: &ChildProxy, request: &[u8]) -> (String, std::io::Result<()>) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => panic!("the proxy kept the connection open after {seen:?}"),
            Ok(Ok(0)) => return (String::from_utf8_lossy(&seen).into_owned(), Ok(())),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (String::from_utf8_lossy(&seen).into_owned(), Err(e)),
        }
    }
}

/// An HTTP/1.0 client reads an answer of unknown length to the
/// connection's end, so a close would tell it the answer was whole: when
/// the backend's answer breaks off, the proxy resets the connection
/// instead. An HTTP/1.1 client of the same answer sees the cut by the
/// missing last chunk, and its connection closes as before.
#[tokio::test]
async fn an_answer_read_to_the_close_that_breaks_off_ends_in_a_reset() {
    let (proxy, _, _) = setup().await;
    for route in ["own", "ab"] {
        let (text, end) = until_end(
            &proxy,
            format!("GET /{route}/bad-chunk HTTP/1.0\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{route}: {text:?}");
        assert!(
            !text.contains("transfer-encoding") && !text.contains("content-length"),
            "{route}: an HTTP/1.0 client's answer of unknown length has no framing: {text:?}"
        );
        assert_eq!(
            end.as_ref().map_err(std::io::Error::kind),
            Err(std::io::ErrorKind::ConnectionReset),
            "{route}: the cut answer ended as if whole: {text:?}"
        );
    }
    let (text, end) = until_end(&proxy, b"GET /own/bad-chunk HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.contains("transfer-encoding: chunked"),
        "{text:?}"
    );
    assert!(!text.ends_with("0\r\n\r\n"), "{text:?}");
    assert!(end.is_ok(), "a chunked answer's cut closes: {end:?}");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "protocol")]),
        3.0
    );
}

/// RFC 9110 §4.2.3 and RFC 9112 §3.2.4: an absolute-form target with an
/// empty path asks for `/` (its query kept), and `OPTIONS` of one asks
/// about the server as a whole, as `OPTIONS *` does (which the proxy
/// answers itself). Its authority is still checked.
#[tokio::test]
async fn an_absolute_target_with_an_empty_path_is_for_the_root() {
    let backend = RawBackend::start().await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: all, stable: 'http://{}' }}\n", backend.addr),
        &[],
    )
    .await;
    for (target, line) in [
        ("http://b.test", "GET / HTTP/1.1\r\n"),
        ("http://b.test?x=1", "GET /?x=1 HTTP/1.1\r\n"),
        ("HTTP://b.test:80", "GET / HTTP/1.1\r\n"),
    ] {
        let before = backend.each_received();
        let text = probe(
            &proxy,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{target}: {text:?}");
        // What the backend received since, on whichever connection.
        let sent: Vec<u8> = backend
            .each_received()
            .into_iter()
            .enumerate()
            .flat_map(|(i, bytes)| bytes[before.get(i).map_or(0, Vec::len)..].to_vec())
            .collect();
        let sent = String::from_utf8_lossy(&sent).to_ascii_lowercase();
        assert!(
            sent.starts_with(&line.to_ascii_lowercase()),
            "{target}: {sent:?}"
        );
        let authority = target
            .split("://")
            .nth(1)
            .unwrap()
            .split('?')
            .next()
            .unwrap();
        assert!(
            sent.contains(&format!("\r\nhost: {}\r\n", authority.to_ascii_lowercase())),
            "{target}: the target's authority replaces Host: {sent:?}"
        );
    }
    let received = backend.received();
    let text = probe(
        &proxy,
        b"OPTIONS http://b.test HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.to_ascii_lowercase().contains("\r\nallow: "),
        "{text:?}"
    );
    let text = probe(
        &proxy,
        b"OPTIONS http://u@b.test HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert_eq!(
        backend.received(),
        received,
        "an OPTIONS reached the backend"
    );
}

/// RFC 9112 §3: a request line longer than the head may be is the
/// target's fault, 414; a head too large in its fields stays 431. Both
/// are refused before routing, counted by code, and reach no backend.
#[tokio::test]
async fn a_request_line_over_the_head_limit_is_414() {
    let (proxy, own, _) = setup().await;
    let long = "a".repeat(65_600);
    let text = probe(
        &proxy,
        format!("GET /own/{long} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 414 "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("request line"), "{text:?}");
    let text = probe(
        &proxy,
        format!("GET /own/x HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 431 "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert_eq!(own.received(), 0);
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_refused_requests_total", &[("code", "414")]),
        1.0
    );
    assert_eq!(
        m.sum("sluice_refused_requests_total", &[("code", "431")]),
        1.0
    );
}

/// RFC 9110 §10.1.4: `TE` is hop-by-hop, and whoever sends it must name
/// it in `Connection`. A client's `TE: trailers` reaches an HTTP/1.1
/// backend with `Connection: te`.
#[tokio::test]
async fn te_trailers_goes_to_a_backend_with_its_connection_option() {
    let (proxy, own, _) = setup().await;
    let text = probe(
        &proxy,
        b"GET /own/x HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
    let sent = own.each_received().swap_remove(0);
    let sent = String::from_utf8_lossy(&sent).to_ascii_lowercase();
    assert!(sent.contains("\r\nte: trailers\r\n"), "{sent:?}");
    assert!(sent.contains("\r\nconnection: te\r\n"), "{sent:?}");
}
