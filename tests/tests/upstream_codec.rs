//! Conformance of the proxy's own HTTP/1.1 upstream codec (`proxy/src/h1.rs`),
//! which carries bodiless requests to plain HTTP/1.1 backends.
//!
//! The backend here is written on raw sockets and answers each request
//! path with exact bytes, so every framing rule of RFC 9112 §6.3 is
//! exercised as a real server would send it: content-length, chunked
//! (with extensions and trailers), close-delimited, informational
//! responses, HEAD, 204 and 304, responses split across many writes, and
//! malformed or ambiguous responses. The backend counts the connections it
//! accepts, so connection reuse is checked from the outside too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend does for one request.
enum Step {
    Send(&'static [u8]),
    /// Sends these bytes one at a time, pausing between them.
    Trickle(&'static [u8]),
    Send1MiB,
    Close,
}

/// The answer to each path.
fn script(path: &str) -> Vec<Step> {
    use Step::*;
    match path {
        "/length" => vec![Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-case: length\r\n\r\nhello",
        )],
        "/chunked" => vec![Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )],
        "/trailers" => vec![Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n4\r\nbody\r\n0\r\nx-checksum: 1f2e\r\n\r\n",
        )],
        "/until-close" => vec![
            Send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nread until "),
            Send(b"the backend closes"),
            Close,
        ],
        "/informational" => vec![Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )],
        "/head" => vec![Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ncontent-type: text/html\r\n\r\n",
        )],
        "/no-content" => vec![Send(b"HTTP/1.1 204 No Content\r\nx-case: 204\r\n\r\n")],
        "/not-modified" => vec![Send(
            b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 10\r\n\r\n",
        )],
        "/trickle" => vec![Trickle(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-case: trickle\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )],
        "/large" => vec![Send1MiB],
        "/http10" => vec![Send(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold!")],
        "/connection-close" => vec![Send(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye",
        )],
        "/smuggled" => vec![Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )],
        "/extra-bytes" => vec![Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nunasked",
        )],
        "/repeated-length" => vec![Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\nabc",
        )],
        "/bad-length" => vec![Send(b"HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n")],
        "/differing-lengths" => vec![Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        )],
        "/garbage" => vec![Send(b"this is not HTTP at all\r\n\r\n")],
        "/huge-head" => vec![Send(&HUGE_HEAD)],
        "/switching" => vec![Send(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        )],
        "/truncated" => vec![Send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"), Close],
        "/bad-chunk" => vec![Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        )],
        "/closed-unanswered" => vec![Close],
        _ => vec![Send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")],
    }
}

/// A response head of about 70 KiB: one header field over the 64 KiB limit.
static HUGE_HEAD: [u8; 72 * 1024] = {
    let mut head = [b'a'; 72 * 1024];
    let start = b"HTTP/1.1 200 OK\r\nx-big: ";
    let mut i = 0;
    while i < start.len() {
        head[i] = start[i];
        i += 1;
    }
    let end = b"\r\ncontent-length: 0\r\n\r\n";
    let mut j = 0;
    while j < end.len() {
        head[72 * 1024 - end.len() + j] = end[j];
        j += 1;
    }
    head
};

/// The scripted backend: the address, the connections it accepted, and
/// the requests it read (`METHOD path` per line of the request heads).
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn scripted_backend() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (accepted, seen) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer(stream, seen.clone()));
        }
    });
    Scripted {
        addr,
        connections,
        requests,
    }
}

/// Answers the bodiless requests of one connection from the script.
async fn answer(mut stream: TcpStream, seen: Arc<std::sync::Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        seen.lock().unwrap().push(format!("{method} {path}"));
        for step in script(path) {
            let written = match step {
                Step::Send(bytes) => stream.write_all(bytes).await,
                Step::Trickle(bytes) => {
                    let mut result = Ok(());
                    for b in bytes {
                        result = stream.write_all(&[*b]).await;
                        if result.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    result
                }
                Step::Send1MiB => {
                    let body = large_body();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    match stream.write_all(head.as_bytes()).await {
                        Ok(()) => stream.write_all(&body).await,
                        e => e,
                    }
                }
                Step::Close => return,
            };
            if written.is_err() {
                return;
            }
        }
    }
}

fn large_body() -> Vec<u8> {
    (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// One client connection to the proxy, used for every request of a test
/// (so the proxy's upstream connection reuse is what the backend counts).
struct OneConnection(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl OneConnection {
    async fn open(addr: SocketAddr) -> Self {
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Self(sender)
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
        self.0.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "codec.test")
            .body(Full::default())?;
        let resp = self.0.send_request(req).await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    async fn get(&mut self, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        self.request(Method::GET, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

async fn proxy_for(backend: &Scripted) -> ChildProxy {
    ChildProxy::start(
        &format!("  - {{ name: codec, stable: 'http://{}' }}\n", backend.addr),
        &[],
    )
    .await
}

/// Well-formed framings: each body arrives whole and the connection
/// is reused after every response that allows it, and only then.
#[tokio::test]
async fn every_framing_of_a_response_body_is_read_and_reuse_follows_the_rules() {
    let backend = scripted_backend().await;
    let proxy = proxy_for(&backend).await;
    let mut client = OneConnection::open(proxy.addr).await;
    let accepted = || backend.connections.load(Ordering::SeqCst);

    let (status, headers, body) = client.get("/length").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(headers["x-case"], "length");
    assert_eq!(headers["content-length"], "5");

    let (status, _, body) = client.get("/chunked").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));

    let (status, _, body) = client.get("/informational").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

    let (status, headers, body) = client.request(Method::HEAD, "/head").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "1234", "HEAD keeps the length");
    assert!(body.is_empty());

    let (status, headers, body) = client.get("/no-content").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["x-case"], "204");
    assert!(body.is_empty());

    let (status, headers, body) = client.get("/not-modified").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers["etag"], "\"v1\"");
    assert!(body.is_empty());

    let (status, headers, body) = client.get("/trickle").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"abcdefg"[..]));
    assert_eq!(headers["x-case"], "trickle");

    let (status, _, body) = client.get("/large").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == large_body(), "the 1 MiB body arrived changed");

    let (status, _, body) = client.get("/repeated-length").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"abc"[..]));
    assert_eq!(
        accepted(),
        1,
        "every response so far allowed the connection to be reused"
    );

    // Responses after which the connection must not carry another
    // request: each of the next requests needs a new one.
    let mut expected = 1;
    for (path, want) in [
        ("/until-close", &b"read until the backend closes"[..]),
        ("/http10", &b"old!"[..]),
        ("/connection-close", &b"bye"[..]),
        ("/extra-bytes", &b"ok"[..]),
    ] {
        let (status, _, body) = client.get(path).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, want), "{path}");
        let (status, _, body) = client.get("/length").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        expected += 1;
        assert_eq!(
            accepted(),
            expected,
            "the request after {path} went on a new connection"
        );
    }
    let seen = backend.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 17, "{seen:?}");
    assert!(seen.contains(&"HEAD /head".to_string()));
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_requests_total", &[("route", "codec")]), 17.0);
}

/// Trailers of a chunked response reach an HTTP/2 client as trailers, and
/// an HTTP/1.1 client that takes them.
#[tokio::test]
async fn trailers_of_a_chunked_response_reach_the_client() {
    let backend = scripted_backend().await;
    let proxy = proxy_for(&backend).await;
    let resp = h2_client()
        .request(
            Request::get(format!("http://{}/trailers", proxy.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "1f2e");
    assert_eq!(&collected.to_bytes()[..], b"body");
    // An HTTP/1.1 client gets them when it said it takes them (`TE:
    // trailers`), with the `Trailer` field that announces them; one that
    // did not gets neither.
    for (te, trailers) in [("TE: trailers\r\n", true), ("", false)] {
        let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET /trailers HTTP/1.1\r\nHost: a\r\n{te}Connection: close\r\n\r\n");
        raw.write_all(request.as_bytes()).await.unwrap();
        let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert_eq!(
            text.contains("\r\ntrailer: x-checksum"),
            trailers,
            "{te:?}: {text}"
        );
        assert_eq!(
            text.contains("\r\nx-checksum: 1f2e"),
            trailers,
            "{te:?}: {text}"
        );
    }
}

/// Malformed, ambiguous or oversized response heads are 502 of kind
/// `protocol`, never passed on; the connection they came on is not reused.
/// A response with both `Transfer-Encoding` and `Content-Length` is one
/// (issue #32: the same defects a request is refused for).
#[tokio::test]
async fn malformed_responses_are_502_and_never_passed_on() {
    let backend = scripted_backend().await;
    let proxy = proxy_for(&backend).await;
    let mut client = OneConnection::open(proxy.addr).await;
    let paths = [
        "/bad-length",
        "/differing-lengths",
        "/garbage",
        "/huge-head",
        "/switching",
        "/smuggled",
    ];
    for path in paths {
        let (status, _, body) = client.get(path).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}: {body:?}");
        assert_eq!(&body[..], b"sluice: upstream stable broke the exchange\n");
    }
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "codec"), ("kind", "protocol")]
        ),
        paths.len() as f64
    );
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "codec")]),
        0.0,
        "a backend that answered badly may have done the work: no retry"
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), paths.len());
}

/// A body cut short by the backend, or a chunk size that is not hex: the
/// client gets the head, then its response ends in an error, and it counts
/// as a failure, and as a reset or a protocol error (the misframed one).
#[tokio::test]
async fn a_body_cut_short_or_misframed_fails_the_response_and_is_counted() {
    let backend = scripted_backend().await;
    let proxy = proxy_for(&backend).await;
    for path in ["/truncated", "/bad-chunk"] {
        // The client gets the head the backend sent, then a failed body.
        let mut client = OneConnection::open(proxy.addr).await;
        client.0.ready().await.unwrap();
        let resp = client
            .0
            .send_request(
                Request::get(path)
                    .header("host", "codec.test")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{path}: no response head: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let body = resp.into_body().collect().await;
        assert!(body.is_err(), "{path}: the client got a complete body");
    }
    let m = eventually("both failures recorded", Duration::from_secs(5), || async {
        let m = scrape(proxy.admin).await;
        (m.sum("sluice_upstream_errors_total", &[("kind", "reset")]) == 1.0
            && m.sum("sluice_upstream_errors_total", &[("kind", "protocol")]) == 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("classification", "failure")]),
        2.0
    );
    // The proxy still serves on fresh connections.
    let (status, _, body) = OneConnection::open(proxy.addr).await.get("/length").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
}

/// A reused connection the backend closes without answering: a GET is
/// sent again on a new connection (the stale keep-alive race), once.
#[tokio::test]
async fn a_get_on_a_connection_closed_unanswered_is_retried_once() {
    let backend = scripted_backend().await;
    let proxy = proxy_for(&backend).await;
    let mut client = OneConnection::open(proxy.addr).await;
    assert_eq!(client.get("/length").await.0, StatusCode::OK);
    // Reuses the pooled connection; the backend closes it unanswered, and
    // the retry on a new connection meets the same script: 502.
    let (status, _, _) = client.get("/closed-unanswered").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let seen = backend.requests.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "GET /length",
            "GET /closed-unanswered",
            "GET /closed-unanswered"
        ],
        "one first attempt and exactly one retry"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "codec")]),
        1.0
    );
}
