//! Conformance of the proxy's own HTTP/1.1 server path (`proxy/src/fast.rs`),
//! which serves bodiless GET and HEAD requests on plain-TCP connections
//! and hands everything else to hyper.
//!
//! Clients here write raw bytes and read raw bytes, so the exact head a
//! backend receives and the exact head a client gets are checked: fields
//! dropped and added, body framing, `Date`, `Connection: close`,
//! pipelining across a hand-over to hyper, the requests hyper must answer,
//! time limits on later request heads, and a client that leaves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend on raw sockets: it records every request head it reads
/// (with any body bytes a Content-Length announces) and answers each
/// path with fixed bytes; `/echo` answers with the head it read.
struct RawBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

fn answer_for(target: &str, head: &str) -> Vec<u8> {
    let path = target.split('?').next().unwrap_or_default();
    let fixed: &[u8] = match path {
        "/length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Up: 1\r\n\r\nhello",
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n",
        "/no-content" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Up: 204\r\n\r\n",
        "/not-modified" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"v1\"\r\n\r\n",
        "/until-close" => b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nread until close",
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 9\r\n\r\n",
        "/repeated-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        "/odd-status" => b"HTTP/1.1 299 Whatever\r\nContent-Length: 2\r\n\r\nok",
        "/slow" => b"",
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    };
    if path == "/echo" {
        let mut out =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len()).into_bytes();
        out.extend_from_slice(head.as_bytes());
        return out;
    }
    fixed.to_vec()
}

async fn raw_backend() -> RawBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, seen.clone()));
        }
    });
    RawBackend { addr, heads }
}

async fn answer(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
        seen.lock().unwrap().push(head.clone());
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        if stream.write_all(&answer_for(&path, &head)).await.is_err() {
            return;
        }
        if path == "/until-close" {
            return;
        }
    }
}

async fn proxy_for(backend: &RawBackend, top: &str) -> ChildProxy {
    ChildProxy::start_with(
        &format!("  - {{ name: fast, stable: 'http://{}' }}\n", backend.addr),
        "",
        top,
        &[],
    )
    .await
}

/// Reads until `want` appears `times` times in what came, or 5 s pass.
async fn read_until(stream: &mut TcpStream, want: &str, times: usize) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    while String::from_utf8_lossy(&seen).matches(want).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!(
                "wanted {times} × {want:?}, got {other:?} after {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A fresh connection to the proxy with `request` written on it.
async fn sent(proxy: &ChildProxy, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

/// `request` on a fresh connection, and what came back until the proxy
/// closed it (5 s at most): (closed, text).
async fn answer_to_the_end(proxy: &ChildProxy, request: &[u8]) -> (bool, String) {
    let mut stream = sent(proxy, request).await;
    let (closed, bytes) = closed_within(&mut stream, Duration::from_secs(5)).await;
    (closed, String::from_utf8_lossy(&bytes).into_owned())
}

/// One request on a fresh connection; the response bytes (a response
/// that keeps the connection open is read up to its end by length).
async fn exchange(proxy: &ChildProxy, request: &str, want: &str) -> String {
    let mut stream = sent(proxy, request.as_bytes()).await;
    read_until(&mut stream, want, 1).await
}

/// The response with its `date` value replaced by `<date>` (and checked
/// to be an HTTP date).
fn undated(response: &str) -> String {
    let mut out = Vec::new();
    for line in response.split("\r\n") {
        match line.strip_prefix("date: ") {
            Some(value) => {
                assert!(
                    httpdate::parse_http_date(value).is_ok(),
                    "not an HTTP date: {value}"
                );
                out.push("date: <date>".to_string());
            }
            None => out.push(line.to_string()),
        }
    }
    out.join("\r\n")
}

/// The head a backend gets: the client's request line and fields, less
/// the hop-by-hop ones, and forwarding fields with what the proxy saw
/// (a client's own are never passed on).
#[tokio::test]
async fn the_backend_gets_the_clients_fields_without_hop_by_hop_or_forged_forwarding_ones() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    let response = exchange(
        &proxy,
        "GET /echo?q=1&r=%20 HTTP/1.1\r\nHost: Fast.Example:8080\r\nAccept: text/plain\r\nX-Forwarded-For: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\naccept: */*\r\n\r\n",
        "x-real-ip: 127.0.0.1\r\n\r\n",
    )
    .await;
    let seen = backend.heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0],
        "GET /echo?q=1&r=%20 HTTP/1.1\r\nHost: Fast.Example:8080\r\nAccept: text/plain\r\naccept: */*\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: Fast.Example:8080\r\nx-real-ip: 127.0.0.1\r\n\r\n",
        "client got: {response}"
    );
}

/// Each framing of a backend's response reaches the client as the general
/// path sends it: lengths kept or normalised, unknown lengths chunked
/// (trailers dropped: the client did not ask for them), no length on 204
/// and 304, the length a GET would get on HEAD, hop-by-hop fields (and
/// those the backend's Connection names) dropped, `Date` added only when
/// missing.
#[tokio::test]
async fn response_heads_and_bodies_are_framed_for_the_client() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    let cases: [(&str, &str, &str); 8] = [
        (
            "GET /length",
            "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Up: 1\r\ncontent-length: 5\r\n\r\nhello",
            "hello",
        ),
        (
            "HEAD /head",
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\ndate: <date>\r\n\r\n",
            "\r\n\r\n",
        ),
        (
            "GET /no-content",
            "HTTP/1.1 204 No Content\r\nX-Up: 204\r\ndate: <date>\r\n\r\n",
            "\r\n\r\n",
        ),
        (
            "GET /not-modified",
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\ndate: <date>\r\n\r\n",
            "\r\n\r\n",
        ),
        (
            "GET /until-close",
            "HTTP/1.1 200 OK\r\nX-Kept: yes\r\ntransfer-encoding: chunked\r\ndate: <date>\r\n\r\n10\r\nread until close\r\n0\r\n\r\n",
            "0\r\n\r\n",
        ),
        (
            "GET /chunked",
            // No `TE: trailers`: neither the trailers nor `Trailer`.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: <date>\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            "0\r\n\r\n",
        ),
        (
            "GET /repeated-length",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ndate: <date>\r\n\r\nabc",
            "abc",
        ),
        (
            "GET /odd-status",
            "HTTP/1.1 299 \r\ncontent-length: 2\r\ndate: <date>\r\n\r\nok",
            "\r\n\r\nok",
        ),
    ];
    for (request, expected, end) in cases {
        let response = exchange(
            &proxy,
            &format!("{request} HTTP/1.1\r\nHost: fast.test\r\n\r\n"),
            end,
        )
        .await;
        assert_eq!(undated(&response), expected, "{request}");
    }
    // All on one connection too: each response ends where it should.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut all = String::new();
    for (request, _, _) in cases {
        all.push_str(&format!("{request} HTTP/1.1\r\nHost: fast.test\r\n\r\n"));
    }
    stream.write_all(all.as_bytes()).await.unwrap();
    let together = read_until(&mut stream, "HTTP/1.1 ", cases.len()).await;
    let together = read_until_more(&mut stream, together, "\r\n\r\nok").await;
    let expected: String = cases.iter().map(|(_, e, _)| *e).collect();
    assert_eq!(undated(&together), expected);
}

/// Keeps reading until `text` ends with `end` (5 s at most).
async fn read_until_more(stream: &mut TcpStream, mut text: String, end: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    while !text.ends_with(end) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            other => panic!("wanted the end {end:?}, got {other:?} after {text:?}"),
        }
    }
    text
}

/// Pipelined requests are answered in order, also when one in the middle
/// (a POST with a body) hands the connection to hyper.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_a_hand_over() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /echo?n=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?n=2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo?n=3 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /echo?n=4 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_until(&mut stream, "x-real-ip: 127.0.0.1\r\n\r\n", 4).await;
    let order: Vec<usize> = (1..=4)
        .map(|n| {
            text.find(&format!("/echo?n={n} "))
                .expect("every request answered")
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let seen = backend.heads.lock().unwrap().clone();
    let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "GET /echo?n=1 HTTP/1.1",
            "GET /echo?n=2 HTTP/1.1",
            "POST /echo?n=3 HTTP/1.1",
            "GET /echo?n=4 HTTP/1.1"
        ]
    );
}

/// Requests this path does not serve get the general path's answers, on
/// the same connection.
#[tokio::test]
async fn requests_it_does_not_serve_get_the_general_paths_answers() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    // HTTP/1.0: served, answered as HTTP/1.1 (RFC 9110 §6.2) and closed.
    let (closed, text) =
        answer_to_the_end(&proxy, b"GET /length HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(
        closed && text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("hello"),
        "{text}"
    );
    // Two Host fields, or none on HTTP/1.1: 400, never forwarded.
    let two = exchange(
        &proxy,
        "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "Host header field\n",
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400 "), "{two}");
    let none = exchange(&proxy, "GET /echo HTTP/1.1\r\n\r\n", "Host header field\n").await;
    assert!(none.starts_with("HTTP/1.1 400 "), "{none}");
    // A head over the limit: 431.
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    let (_, text) = answer_to_the_end(&proxy, big.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    // Expect: 100-continue on a GET, a Connection field naming another
    // field, and a target with characters outside the plain set that
    // hyper accepts are all served (by hyper) with the backend's answer;
    // one it refuses gets 400.
    for request in [
        "GET /length HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        "GET /length HTTP/1.1\r\nHost: a\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n",
        "GET /length?q={|}^ HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let response = exchange(&proxy, request, "hello").await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{request}: {response}"
        );
    }
    // HTTP/2 with prior knowledge: the server's SETTINGS frame answers.
    let mut stream = sent(
        &proxy,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame))
        .await
        .expect("an HTTP/2 frame in time")
        .unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame first: {frame:?}");
    // No route: 404 naming the host and path.
    let lost = exchange(&proxy, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "\r\n\r\n").await;
    assert!(lost.starts_with("HTTP/1.1 404 "), "{lost}");
}

/// A client that asks to close gets `Connection: close` and the end of
/// the connection after the response.
#[tokio::test]
async fn a_client_asking_to_close_gets_connection_close_and_the_end() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    let (closed, text) = answer_to_the_end(
        &proxy,
        b"GET /length HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
    )
    .await;
    assert!(closed, "still open after {text}");
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-Up: 1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
    );
}

/// A later request head on a keep-alive connection must also be complete
/// within `limits.header_read_timeout` of its first byte; an idle
/// connection is closed after `limits.idle_timeout`.
#[tokio::test]
async fn a_later_request_head_and_an_idle_connection_are_bounded_in_time() {
    let backend = raw_backend().await;
    let proxy = proxy_for(
        &backend,
        "limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n",
    )
    .await;
    let mut stream = sent(&proxy, b"GET /length HTTP/1.1\r\nHost: a\r\n\r\n").await;
    read_until(&mut stream, "hello", 1).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /length HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (closed, bytes) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed && bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "a partial head was closed after {took:?}, not about 1 s"
    );

    let mut stream = sent(&proxy, b"GET /length HTTP/1.1\r\nHost: a\r\n\r\n").await;
    read_until(&mut stream, "hello", 1).await;
    let started = Instant::now();
    let (closed, _) = closed_within(&mut stream, Duration::from_secs(6)).await;
    let took = started.elapsed();
    assert!(
        closed && took >= Duration::from_millis(1900),
        "an idle connection was closed after {took:?} (closed: {closed}), not about 2 s"
    );
}

/// A client that closes its connection while its request waits for the
/// backend is counted as 499 (a failure), on the backend it waited for.
#[tokio::test]
async fn a_client_that_leaves_while_its_request_waits_is_counted_499() {
    let backend = raw_backend().await;
    let proxy = proxy_for(&backend, "").await;
    let stream = sent(&proxy, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
    eventually(
        "the backend to get the request",
        Duration::from_secs(5),
        || {
            let seen = backend.heads.lock().unwrap().len();
            async move { (seen == 1).then_some(()) }
        },
    )
    .await;
    drop(stream);
    eventually("the 499 to be counted", Duration::from_secs(5), || async {
        let m = scrape(proxy.admin).await;
        (m.sum(
            "sluice_requests_total",
            &[
                ("route", "fast"),
                ("code", "499"),
                ("classification", "failure"),
            ],
        ) == 1.0)
            .then_some(())
    })
    .await;
}

/// An answer the proxy makes itself (here 502: the backend is down) has
/// no body when the request was HEAD, so the next response on the
/// connection is read from the right place.
#[tokio::test]
async fn a_local_answer_to_head_has_no_body() {
    let dead = free_port();
    let proxy = ChildProxy::start(
        &format!("  - {{ name: fast, stable: 'http://127.0.0.1:{dead}' }}\n"),
        &[],
    )
    .await;
    let mut stream = sent(
        &proxy,
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let text = read_until(&mut stream, "HTTP/1.1 502 ", 2).await;
    let text = read_until_more(&mut stream, text, "could not be reached\n").await;
    let second = text[1..].find("HTTP/1.1 502 ").expect("two answers") + 1;
    assert!(
        text[..second].ends_with("\r\n\r\n") && !text[..second].contains("sluice:"),
        "the HEAD answer carried a body: {text:?}"
    );
    assert_eq!(text.matches("could not be reached").count(), 1, "{text:?}");
}
