//! The proxy's HTTP/2 server (the `h2` crate, `proxy/src/downstream/h2.rs`)
//! where it differs from a plain relay, each found by a cold review and
//! held here with real clients and raw backends:
//! - a HEAD the proxy answers itself (a 502) has no body on the wire;
//! - an HTTP/2 backend's RST_STREAM code reaches the client;
//! - trailers from an HTTP/1.1 backend lose the fields HTTP/2 forbids
//!   instead of resetting the stream;
//! - an upload whose backend stopped reading does not hold up the other
//!   streams' bodies on the connection;
//! - an HTTP/1.1 backend's head reaches the client without the fields its
//!   `Connection` names (however many), with its values intact and a
//!   `content-length` that says the body's length (a HEAD's too).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `socket` into `seen` until `done` says so: false when the
/// peer closed (or failed) first.
async fn read_until(
    socket: &mut TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut buf = [0u8; 4096];
    while !done(seen) {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A proxy with one route (`route`: its fields after the name, as YAML
/// flow mapping entries) and an HTTP/2 client connected to it.
async fn proxy_with(route: &str) -> (ChildProxy, h2::client::SendRequest<Bytes>) {
    let proxy = ChildProxy::start(&format!("  - {{ name: r, {route} }}\n"), &[]).await;
    let client = h2_connect(proxy.addr).await;
    (proxy, client)
}

/// Sends `req`, ending the stream, and waits up to 5 s for the answer's
/// head.
async fn answer_to(
    client: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> http::Response<h2::RecvStream> {
    let (answer, _) = client.send_request(req, true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_head_the_proxy_answers_itself_has_no_body() {
    let dead = free_port();
    let (_proxy, mut client) = proxy_with(&format!("stable: 'http://127.0.0.1:{dead}'")).await;
    let req = http::Request::head("http://a/x").body(()).unwrap();
    let answer = answer_to(&mut client, req).await;
    assert_eq!(answer.status(), http::StatusCode::BAD_GATEWAY);
    let mut body = answer.into_body();
    assert!(
        body.is_end_stream(),
        "the HEADERS frame of a HEAD's answer ends the stream"
    );
    assert!(body.data().await.is_none());
}

/// An HTTP/2 backend that answers with a head and 3 bytes, then resets
/// the stream with `reason`.
async fn resetting_backend(reason: h2::Reason) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                        continue;
                    };
                    let _ = send.send_data(Bytes::from_static(b"abc"), false);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        send.send_reset(reason);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backends_reset_code_reaches_an_http2_client() {
    for reason in [
        h2::Reason::CANCEL,
        h2::Reason::REFUSED_STREAM,
        h2::Reason::ENHANCE_YOUR_CALM,
    ] {
        let backend = resetting_backend(reason).await;
        let (_proxy, mut client) =
            proxy_with(&format!("stable: 'http://{backend}', protocol: http2")).await;
        let req = http::Request::get("http://a/x").body(()).unwrap();
        let answer = answer_to(&mut client, req).await;
        let mut body = answer.into_body();
        let mut error = None;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .unwrap()
        {
            if let Err(e) = frame {
                error = Some(e);
                break;
            }
        }
        let error = error.expect("the answer is cut, not ended");
        assert_eq!(error.reason(), Some(reason), "{error}");
    }
}

#[tokio::test]
async fn an_http2_client_gets_goaway_as_soon_as_the_drain_starts() {
    let stable = sluice_tests::backend("stable").await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: r, stable: '{}' }}\n", stable.url()),
        &["--drain-delay", "4s", "--drain-timeout", "5s"],
    )
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let get = || http::Request::get("http://a/x").body(()).unwrap();
    assert_eq!(answer_to(&mut client, get()).await.status(), 200);
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request during the drain delay is served, unless the connection
    // was told to go (GOAWAY, no error) before it was sent: the proxy sends
    // GOAWAY once its connection is next woken after the drain began, which
    // may be before this request (a real client then opens a new
    // connection). Either way the connection is closed well before the
    // listener closes.
    match client.send_request(get(), true) {
        Ok((answer, _)) => match tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("an answer within 5 s")
        {
            Ok(answer) => assert_eq!(answer.status(), 200),
            Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
        },
        Err(e) => assert!(
            e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR),
            "{e}"
        ),
    }
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(
        ended.is_ok(),
        "the connection stayed open into the drain delay"
    );
    assert!(
        client.clone().ready().await.is_err(),
        "the client may still open streams on a connection going away"
    );
}

#[tokio::test]
async fn trailers_lose_the_fields_only_a_head_may_carry_and_the_answer_arrives() {
    // Hop-by-hop fields (which HTTP/2 forbids), and framing and routing
    // fields (RFC 9110 §6.5.1), in a backend's trailer section.
    let head_only = [
        "keep-alive: timeout=5",
        "te: gzip",
        "connection: x-checksum",
        "content-length: 99",
        "transfer-encoding: chunked",
        "host: elsewhere",
        "trailer: x-checksum",
    ];
    let backend = fixed_backend(
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n{}\r\n\r\n",
            head_only.join("\r\n")
        ),
        b"",
    )
    .await;
    let (proxy, mut client) = proxy_with(&format!("stable: 'http://{backend}'")).await;
    let req = http::Request::get("http://a/x")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let answer = answer_to(&mut client, req).await;
    let mut body = answer.into_body();
    let mut got = Vec::new();
    while let Some(data) = body.data().await {
        got.extend_from_slice(&data.expect("no reset"));
    }
    assert_eq!(got, b"hello");
    let trailers = body.trailers().await.expect("no reset").expect("trailers");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    // An HTTP/1.1 client gets the same trailer section.
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut text))
        .await
        .expect("the answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&text).to_ascii_lowercase();
    let (_, trailer_section) = text
        .split_once("\r\n0\r\n")
        .unwrap_or_else(|| panic!("a chunked answer: {text:?}"));
    assert_eq!(trailer_section, "x-checksum: 42\r\n\r\n", "{text:?}");
}

/// A backend that answers every request with `head` and, unless it was a
/// HEAD, `body`; it keeps the connection for more.
async fn fixed_backend(head: String, body: &'static [u8]) -> SocketAddr {
    let head: std::sync::Arc<str> = head.into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let head = head.clone();
            tokio::spawn(async move {
                loop {
                    let mut seen = Vec::new();
                    if !read_until(&mut socket, &mut seen, |s| {
                        s.windows(4).any(|w| w == b"\r\n\r\n")
                    })
                    .await
                    {
                        return;
                    }
                    let mut answer = head.as_bytes().to_vec();
                    if !seen.starts_with(b"HEAD ") {
                        answer.extend_from_slice(body);
                    }
                    if socket.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    backend
}

#[tokio::test]
async fn a_backends_head_reaches_an_http2_client_less_what_connection_names() {
    // The length as the backend spells it: the client gets it as a plain
    // number either way.
    for length in ["11", "011"] {
        a_backends_head_reaches_an_http2_client(length).await;
    }
}

async fn a_backends_head_reaches_an_http2_client(length: &str) {
    let backend = fixed_backend(
        format!(
            "HTTP/1.1 200 OK\r\nServer: raw/1\r\nConnection: x-a, x-b,, X-C, x-d, x-e\r\n\
             X-A: 1\r\nx-b: 2\r\nx-c: 3\r\nx-d: 4\r\nx-e: 5\r\nKeep-Alive: timeout=5\r\n\
             Content-Length: {length}\r\nX-Kept: one\r\nx-kept: two\r\nContent-Type: text/plain\r\n\r\n"
        ),
        b"hello world",
    )
    .await;
    let (_proxy, mut client) = proxy_with(&format!("stable: 'http://{backend}'")).await;
    for method in [http::Method::GET, http::Method::HEAD, http::Method::GET] {
        let req = http::Request::builder()
            .method(method.clone())
            .uri("http://a/x")
            .body(())
            .unwrap();
        let answer = answer_to(&mut client, req).await;
        assert_eq!(answer.status(), http::StatusCode::OK);
        let headers = answer.headers().clone();
        for gone in [
            "x-a",
            "x-b",
            "x-c",
            "x-d",
            "x-e",
            "keep-alive",
            "connection",
        ] {
            assert!(headers.get(gone).is_none(), "{method} {gone}: {headers:?}");
        }
        let kept: Vec<_> = headers.get_all("x-kept").iter().collect();
        assert_eq!(kept, ["one", "two"], "{method}");
        assert_eq!(headers["server"], "raw/1");
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["content-length"], "11", "{method}");
        assert!(headers.contains_key("date"));
        let mut body = answer.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            got.extend_from_slice(&data.expect("no reset"));
        }
        let want: &[u8] = if method == http::Method::HEAD {
            b""
        } else {
            b"hello world"
        };
        assert_eq!(got, want, "{method}");
    }
}

/// A backend that, for `/stall`, reads the head and then nothing (its
/// socket buffers fill); anything else it answers 200 after reading a
/// 5-byte body.
async fn stalling_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                if !read_until(&mut socket, &mut seen, |s| {
                    s.windows(4).any(|w| w == b"\r\n\r\n")
                })
                .await
                {
                    return;
                }
                if String::from_utf8_lossy(&seen).contains("/stall") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                if !read_until(&mut socket, &mut seen, |s| s.len() >= end + 5).await {
                    return;
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_upload_does_not_hold_up_other_streams_bodies() {
    let backend = stalling_backend().await;
    let (_proxy, mut client) = proxy_with(&format!(
        "stable: 'http://{backend}', timeouts: {{ idle: 30s }}"
    ))
    .await;
    // Stream A: 16 MiB to a backend that reads none of it, sent as far as
    // flow control lets it go.
    let req = http::Request::post("http://a/stall").body(()).unwrap();
    let (_stalled, mut upload) = client.send_request(req, false).unwrap();
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..256 {
            upload.reserve_capacity(chunk.len());
            match tokio::time::timeout(
                Duration::from_secs(20),
                std::future::poll_fn(|cx| upload.poll_capacity(cx)),
            )
            .await
            {
                Ok(Some(Ok(n))) if n > 0 => {
                    if upload
                        .send_data(chunk.slice(..n.min(chunk.len())), false)
                        .is_err()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    // Let A take all the window it can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Stream B: 5 bytes to a backend that reads them and answers.
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://a/echo").body(()).unwrap();
    let (answer, mut body) = client.send_request(req, false).unwrap();
    body.reserve_capacity(5);
    body.send_data(Bytes::from_static(b"hello"), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("stream B was answered while A stalled")
        .unwrap();
    // (With equal stream and connection windows B waited for A's backend
    // to give up: `timeouts.idle`, 30 s here.)
    assert_eq!(answer.status(), http::StatusCode::OK);
    feeder.abort();
}
