//! A backend is charged only for what it did: crafted requests on real
//! 127.0.0.1 sockets, against the real `sluice-proxy` binary, for the
//! findings of the cold review of proxy-31 that still applied.
//!
//! - A client that leaves before anything of its request was written to
//!   the backend is no 499 on it (counted as
//!   `sluice_client_errors_total{kind="left_before_sent"}`).
//! - An HTTP/2 body that grows past `limits.max_request_body` is the
//!   client's doing whether it breaks before the backend's answer (413) or
//!   after it (the answer is cut, counted as a 413 rejection): never a
//!   502 or a reset charged to the backend.
//! - A backend that stops taking a request body is the backend's fault
//!   (504, counted on it), not the client's (408).
//! - A backend that sends informational heads without end gets a 502.
//! - Request trailers are filtered like header fields: `X-Sluice-*`,
//!   hop-by-hop, framing and forwarding names never reach a backend.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy's metrics once `name{labels}` sums to `value`; the test
/// fails after 5 s saying it waited for `what`.
async fn counted(
    admin: SocketAddr,
    what: &str,
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
) -> Scrape {
    eventually(what, Duration::from_secs(5), || async {
        let m = scrape(admin).await;
        (m.sum(name, labels) == value).then_some(m)
    })
    .await
}

/// A route `r` on every path to `backend`, with more settings `extra`
/// (`, key: value`).
fn route(backend: SocketAddr, extra: &str) -> String {
    format!("  - {{ name: r, path_prefix: /, stable: 'http://{backend}'{extra} }}\n")
}

/// A backend address whose connects hang: its listener's accept queue is
/// full and it never accepts, so the kernel drops further SYNs. Keep the
/// returned listener and connections alive while it is used.
async fn unreachable_backend() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let mut hung = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connect to the filled listener failed: {e}"),
            Err(_) => {
                hung = true;
                break;
            }
        }
    }
    assert!(hung, "the listener's accept queue never filled");
    (addr, listener, held)
}

/// A client that leaves while the proxy still dials the backend (nothing
/// of its request was written) is not a 499 on that backend: neither an
/// HTTP/1.1 client that closes its connection after a GET nor an HTTP/2
/// client that resets its stream.
#[tokio::test]
async fn a_client_gone_before_its_request_was_written_charges_no_backend() {
    let (backend, _listener, _held) = unreachable_backend().await;
    let proxy = ChildProxy::start(&route(backend, ", timeouts: { connect: 10s }"), &[]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Time for the proxy to route it and start dialling.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    let mut client = h2_connect(proxy.addr).await;
    let req = http::Request::get("http://a/y").body(()).unwrap();
    let (answer, _) = client.send_request(req, true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Dropping the only handle on the stream resets it (CANCEL).
    drop(answer);

    let m = counted(
        proxy.admin,
        "both requests to be counted as clients that left",
        "sluice_client_errors_total",
        &[("route", "r"), ("kind", "left_before_sent")],
        2.0,
    )
    .await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "r")]),
        0.0,
        "a request never written was counted on its backend"
    );
}

/// An HTTP/2 backend that answers `/early` with its head at once, then
/// reads the request body, and everything else once the body is read;
/// `/early-silent` sends nothing after the body ends, and `/early-deaf`
/// never reads the body.
async fn h2_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let early = path.contains("/early");
                        let mut body = req.into_body();
                        let mut sending = None;
                        if early {
                            sending = respond.send_response(http::Response::new(()), false).ok();
                        }
                        if path.ends_with("/early-deaf") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        while let Some(Ok(data)) = body.data().await {
                            let _ = body.flow_control().release_capacity(data.len());
                        }
                        if path.ends_with("/early-silent") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        let sending = match sending {
                            Some(s) => Some(s),
                            None => respond.send_response(http::Response::new(()), false).ok(),
                        };
                        if let Some(mut s) = sending {
                            let _ = s.send_data(Bytes::from_static(b"done"), true);
                        }
                    });
                }
            });
        }
    });
    addr
}

/// An HTTP/2 client's body that grows past `limits.max_request_body`
/// (no `content-length`, so only its bytes tell) is 413 when the backend
/// had not answered yet, and when it had, the answer is cut and counted
/// as a 413 rejection; neither is a failure or an upstream error on the
/// backend.
#[tokio::test]
async fn an_http2_body_past_the_cap_is_never_charged_to_the_backend() {
    let backend = h2_backend().await;
    let proxy = ChildProxy::start_with(
        &route(backend, ", protocol: http2"),
        "",
        "limits:\n  max_request_body: 1KiB\n",
        &[],
    )
    .await;
    let big = Bytes::from(vec![b'x'; 4096]);

    let mut client = h2_connect(proxy.addr).await;
    let req = http::Request::post("http://a/wait").body(()).unwrap();
    let (answer, mut send) = client.send_request(req, false).unwrap();
    send.send_data(big.clone(), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(answer.status(), 413, "before the backend answered");

    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://a/early").body(()).unwrap();
    let (answer, mut send) = client.send_request(req, false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("a head in time")
        .expect("a head");
    assert_eq!(answer.status(), 200);
    send.send_data(big, true).unwrap();
    let mut body = answer.into_body();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            match data {
                Ok(data) => got.extend_from_slice(&data),
                Err(_) => return Err(got),
            }
        }
        Ok(got)
    })
    .await
    .expect("the answer's end in time");
    assert!(read.is_err(), "the answer was not cut: {read:?}");

    let m = counted(
        proxy.admin,
        "both bodies to be counted as too large",
        "sluice_rejected_total",
        &[("route", "r"), ("reason", "body_too_large")],
        2.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "r"), ("classification", "failure")]
        ),
        0.0,
        "a body past the cap was a failure of the backend"
    );
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("route", "r")]),
        0.0,
        "a body past the cap was an upstream error"
    );
}

/// A backend that reads a request head and then neither reads the body
/// nor answers: it holds its connections open.
async fn deaf_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = stream;
                if read_head(&mut stream, &mut Vec::new()).await.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// A backend that stops taking the request body while the client keeps
/// sending is the backend's fault: 504, a failure and a timeout on the
/// backend, and no `body_timeout` blamed on the client.
#[tokio::test]
async fn a_backend_that_stops_reading_the_body_is_not_the_clients_fault() {
    let backend = deaf_backend().await;
    let proxy = ChildProxy::start(&route(backend, ", timeouts: { idle: 1s }"), &[]).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let total: usize = 256 << 20;
    // The client sends as fast as the proxy takes it; the kernel's buffers
    // fill well before the end.
    let sender = tokio::spawn(async move {
        let head = format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'y'; 64 << 10];
        for _ in 0..total / piece.len() {
            writer.write_all(&piece).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    let mut piece = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut piece).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&piece[..n]),
                _ => break,
            }
        }
    })
    .await;
    sender.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504 "), "answer: {text:?}");
    let m = counted(
        proxy.admin,
        "the backend's timeout to be counted",
        "sluice_requests_total",
        &[
            ("route", "r"),
            ("code", "504"),
            ("classification", "failure"),
        ],
        1.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "r"), ("kind", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("sluice_client_errors_total", &[("route", "r")]),
        0.0,
        "the client was blamed for the backend's stall"
    );
}

/// A backend that sends `count` informational (103) heads, then a 200.
async fn hinting_backend(count: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut stream, &mut buf).await.is_none() {
                    return;
                }
                let hint = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
                let mut out = hint.repeat(count);
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                let _ = stream.write_all(&out).await;
                let _ = stream.read(&mut [0u8; 1024]).await;
            });
        }
    });
    addr
}

/// A GET to the proxy on a fresh connection: everything it answered
/// until it closed (or 5 s).
async fn get_all(proxy: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (_, bytes) = closed_within(&mut stream, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A few informational heads pass; a backend that sends more than the
/// proxy keeps track of (the proxy would hold them all for a client that
/// does not read) is a 502 and a protocol error on the backend.
#[tokio::test]
async fn endless_informational_heads_are_a_502() {
    let (few, many) = (hinting_backend(3).await, hinting_backend(1000).await);
    let routes = format!(
        "  - {{ name: few, path_prefix: /few, stable: 'http://{few}' }}\n  - {{ name: many, path_prefix: /many, stable: 'http://{many}' }}\n"
    );
    let proxy = ChildProxy::start(&routes, &[]).await;
    let text = get_all(proxy.addr, "/few").await;
    assert_eq!(text.matches("HTTP/1.1 103 ").count(), 3, "{text}");
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    let text = get_all(proxy.addr, "/many").await;
    assert!(
        text.contains("HTTP/1.1 502 ") && !text.contains("HTTP/1.1 200 OK"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    let m = eventually("the 502 to be counted", Duration::from_secs(5), || async {
        let m = scrape(proxy.admin).await;
        (m.sum(
            "sluice_upstream_errors_total",
            &[("route", "many"), ("kind", "protocol")],
        ) == 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "many"), ("code", "502")]
        ),
        1.0
    );
}

/// A backend that records every byte it gets and answers each request
/// (read with [`read_request`]) with a 200.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let all = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let all = all.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut piece = [0u8; 4096];
                loop {
                    match stream.read(&mut piece).await {
                        Ok(n) if n > 0 => {
                            buf.extend_from_slice(&piece[..n]);
                            all.lock().unwrap().extend_from_slice(&piece[..n]);
                        }
                        _ => return,
                    }
                    // A chunked body ends with its trailer section's blank
                    // line.
                    if buf.windows(5).any(|w| w == b"\r\n0\r\n") && buf.ends_with(b"\r\n\r\n") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        buf.clear();
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Request trailers reach the backend, less the names a client may not
/// send on as header fields: `X-Sluice-*`, hop-by-hop and framing fields,
/// forwarding fields and names with `_`. From an HTTP/1.1 client and from
/// an HTTP/2 client alike.
#[tokio::test]
async fn request_trailers_are_filtered_like_header_fields() {
    let (backend, seen) = recording_backend().await;
    let proxy = ChildProxy::start(&route(backend, ""), &[]).await;
    let refused = [
        "x-sluice-mirror",
        "connection",
        "keep-alive",
        "content-length",
        "host",
        "x-forwarded-for",
        "x-real-ip",
        "x_forwarded_for",
    ];

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 9\r\nX-Sluice-Mirror: 1\r\nConnection: close\r\nKeep-Alive: 5\r\nContent-Length: 5\r\nHost: b\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));

    let mut client = h2_connect(proxy.addr).await;
    let req = http::Request::post("http://a/y").body(()).unwrap();
    let (answer, mut send) = client.send_request(req, false).unwrap();
    send.send_data(Bytes::from_static(b"hello"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", "10".parse().unwrap());
    trailers.insert("x-sluice-mirror", "1".parse().unwrap());
    trailers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    trailers.insert("x_forwarded_for", "6.6.6.6".parse().unwrap());
    send.send_trailers(trailers).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(answer.status(), 200);

    let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    let sections: Vec<&str> = got
        .split("\r\n0\r\n")
        .skip(1)
        .map(|rest| rest.split("\r\n\r\n").next().unwrap_or_default())
        .collect();
    assert_eq!(sections.len(), 2, "two chunked bodies: {got}");
    assert_eq!(sections[0], "x-sum: 9", "HTTP/1.1 client's trailers");
    assert_eq!(sections[1], "x-sum: 10", "HTTP/2 client's trailers");
    for name in refused {
        assert!(
            sections.iter().all(|s| !s.contains(name)),
            "{name} reached the backend in a trailer: {sections:?}"
        );
    }
}

/// A backend that answers every request head it reads with a 200, and
/// counts them.
async fn counting_backend() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count: Arc<Mutex<usize>> = Arc::default();
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut stream, &mut buf).await.is_some() {
                    *counted.lock().unwrap() += 1;
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// An HTTP/2 request with neither `:authority` nor a Host field is 400
/// and never reaches a backend, as an HTTP/1.1 request without Host is;
/// with either, it is forwarded.
#[tokio::test]
async fn an_http2_request_without_an_authority_is_400() {
    let (backend, count) = counting_backend().await;
    let proxy = ChildProxy::start(&route(backend, ""), &[]).await;
    let mut client = h2_connect(proxy.addr).await;
    for (uri, host, status) in [
        ("/none", None, 400),
        ("/host", Some("a.example"), 200),
        ("http://a.example/authority", None, 200),
    ] {
        let mut req = http::Request::get(uri);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let (answer, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(answer.status(), status, "{uri}");
        client = client.ready().await.unwrap();
    }
    assert_eq!(*count.lock().unwrap(), 2);
}

/// A backend that answers by its path: `/stall` sends its head and 10 of
/// 1,000 bytes, then nothing; `/drip` sends a chunk every 300 ms, eight
/// in all; `/big` sends 4 MiB at once.
async fn answering_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let sent = if path.ends_with("/stall") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                            .await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    } else if path.ends_with("/drip") {
                        let mut sent = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .await;
                        for _ in 0..8 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            sent = sent.and(stream.write_all(b"1\r\nx\r\n").await);
                        }
                        sent.and(stream.write_all(b"0\r\n\r\n").await)
                    } else {
                        let mut answer =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n".to_vec();
                        answer.resize(answer.len() + (4 << 20), b'b');
                        stream.write_all(&answer).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A backend that stops in the middle of its answer's body has it cut
/// after `timeouts.answer_idle`: the HTTP/1.1 client's connection closes
/// and the HTTP/2 client's stream is reset, each counted as a failure and
/// an upstream `timeout` on the backend. A backend that sends parts more
/// often than that, and a client that reads its answer slowly (the proxy
/// waits on it, not on the backend), are not cut.
#[tokio::test]
async fn a_backend_that_stalls_in_its_answers_body_is_cut_and_charged() {
    let backend = answering_backend().await;
    let proxy = ChildProxy::start(&route(backend, ", timeouts: { answer_idle: 500ms }"), &[]).await;

    let mut h1 = TcpStream::connect(proxy.addr).await.unwrap();
    h1.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), h1.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "the HTTP/1.1 client still waits 5 s into a stalled answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.ends_with("0123456789"),
        "{text:?}"
    );

    let mut h2 = h2_connect(proxy.addr).await;
    let (answer, _) = h2
        .send_request(http::Request::get("http://a/stall").body(()).unwrap(), true)
        .unwrap();
    let mut body = answer.await.unwrap().into_body();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut got = 0;
        loop {
            match body.data().await {
                Some(Ok(data)) => got += data.len(),
                Some(Err(e)) => return Err((got, e)),
                None => return Ok(got),
            }
        }
    })
    .await
    .expect("the HTTP/2 client still waits 5 s into a stalled answer");
    assert!(
        ended.as_ref().is_err_and(|(got, _)| *got == 10),
        "the stalled answer's stream was not reset after its 10 bytes: {ended:?}"
    );

    let m = counted(
        proxy.admin,
        "both stalled answers to be counted on the backend",
        "sluice_upstream_errors_total",
        &[("route", "r"), ("kind", "timeout")],
        2.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "r"),
                ("code", "200"),
                ("classification", "failure")
            ]
        ),
        2.0
    );

    // A drip with pauses shorter than the limit, and a big answer read
    // only after three limits' time, come whole and count as successes.
    let (status, _, drip) = get(&format!("http://{}/drip", proxy.addr)).await.unwrap();
    assert_eq!((status.as_u16(), drip.len()), (200, 8));
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut big = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut big))
        .await
        .expect("the big answer in time")
        .unwrap();
    assert!(
        big.ends_with(&[b'b'; 1024]) && big.len() > 4 << 20,
        "{}",
        big.len()
    );
    let m = counted(
        proxy.admin,
        "the drip and the big answer to be counted",
        "sluice_requests_total",
        &[
            ("route", "r"),
            ("code", "200"),
            ("classification", "success"),
        ],
        2.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "r"), ("kind", "timeout")]
        ),
        2.0,
        "a paced or slowly read answer was cut"
    );
}

/// A proxy whose route stalls past 300 ms in an answer (`timeouts.answer_idle`)
/// to an HTTP/2 backend (see [`h2_backend`]), and an HTTP/2 client of it.
async fn bidirectional_proxy() -> (ChildProxy, h2::client::SendRequest<Bytes>) {
    let backend = h2_backend().await;
    let proxy = ChildProxy::start(
        &route(
            backend,
            ", protocol: http2, timeouts: { answer_idle: 300ms, idle: 10s }",
        ),
        &[],
    )
    .await;
    let client = h2_connect(proxy.addr).await;
    (proxy, client)
}

/// A POST to `path` whose body is still to come, and its answer's head
/// (within 5 s), with the stream to send the body on.
async fn early_answer(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> (http::Response<h2::RecvStream>, h2::SendStream<Bytes>) {
    let req = http::Request::post(format!("http://a{path}"))
        .body(())
        .unwrap();
    let (answer, send) = client.send_request(req, false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the head in time")
        .unwrap();
    (answer, send)
}

/// While an HTTP/2 client still sends its body after the answer began
/// (a bidirectional stream, whose server waits for the client's next
/// message), the answer's pauses are the client's pacing: not cut by
/// `timeouts.answer_idle`, and counted as the success it is.
#[tokio::test]
async fn an_answer_waiting_on_a_bidirectional_streams_client_is_not_cut() {
    let (proxy, mut client) = bidirectional_proxy().await;
    let (answer, mut send) = early_answer(&mut client, "/early").await;
    assert_eq!(answer.status(), 200);
    // Six messages, 200 ms apart: 1.2 s with no part of the answer.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send.send_data(Bytes::from_static(b"message"), false)
            .unwrap();
    }
    send.send_data(Bytes::new(), true).unwrap();
    let mut body = answer.into_body();
    let mut got = Vec::new();
    while let Some(data) = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the answer's end in time")
    {
        got.extend_from_slice(&data.expect("the answer was cut"));
    }
    assert_eq!(got, b"done");
    let m = counted(
        proxy.admin,
        "the stream to be counted",
        "sluice_requests_total",
        &[("route", "r")],
        1.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "r"), ("classification", "success")]
        ),
        1.0
    );
}

/// A mirrored copy whose backend stalls in its answer's body is cut after
/// `timeouts.answer_idle` too, and counted as a failure and a timeout on
/// the canary under `decision="mirror"`: a blue/green release judged on
/// copies does not pass a canary that hangs mid-answer.
#[tokio::test]
async fn a_mirrored_copy_that_stalls_in_its_answer_is_a_failure() {
    let (stable, canary) = (answering_backend().await, answering_backend().await);
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: r, stable: 'http://{stable}', canary: 'http://{canary}', canary_weight: 0, mirror: {{ percent: 100 }}, timeouts: {{ answer_idle: 500ms }} }}\n"
        ),
        &[],
    )
    .await;
    let mut h1 = TcpStream::connect(proxy.addr).await.unwrap();
    h1.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), h1.read_to_end(&mut got)).await;
    let m = counted(
        proxy.admin,
        "the copy's stall to be counted on the canary",
        "sluice_requests_total",
        &[
            ("route", "r"),
            ("backend", "canary"),
            ("decision", "mirror"),
            ("classification", "failure"),
        ],
        1.0,
    )
    .await;
    // The two counters are not one atomic write: the timeout is waited
    // for too (it once lagged the request's count by a scrape in CI).
    let _ = counted(
        proxy.admin,
        "the copy's stall to be counted as a timeout on the canary",
        "sluice_upstream_errors_total",
        &[("route", "r"), ("backend", "canary"), ("kind", "timeout")],
        1.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "r"),
                ("backend", "canary"),
                ("decision", "mirror")
            ]
        ),
        1.0,
        "one copy, counted once"
    );
}

/// After a bidirectional stream's client has sent its last message, or
/// while its backend takes none of them, the backend's silence in the
/// answer is the backend's: the stream is cut after `timeouts.answer_idle`
/// and counted as a failure and a timeout on it.
#[tokio::test]
async fn a_bidirectional_streams_backend_silent_after_the_upload_or_deaf_to_it_is_cut() {
    let (proxy, mut client) = bidirectional_proxy().await;
    for (path, body) in [
        // Three messages, 200 ms apart, then the end: silence after it.
        ("/early-silent", Bytes::from_static(b"message")),
        // A body far past the backend's window, which it never reads.
        ("/early-deaf", Bytes::from(vec![b'x'; 256 << 10])),
    ] {
        let (answer, mut send) = early_answer(&mut client, path).await;
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                send.reserve_capacity(body.len());
                if send.send_data(body.clone(), false).is_err() {
                    return;
                }
            }
            let _ = send.send_data(Bytes::new(), true);
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut body = answer.into_body();
        let ended = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .unwrap_or_else(|_| panic!("{path}: still waiting 5 s into a silent answer"));
        assert!(
            matches!(ended, Some(Err(_))),
            "{path}: the answer was not reset: {ended:?}"
        );
        sender.abort();
        client = client.ready().await.unwrap();
    }
    let m = counted(
        proxy.admin,
        "both streams to be counted as the backend's timeouts",
        "sluice_upstream_errors_total",
        &[("route", "r"), ("kind", "timeout")],
        2.0,
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "r"), ("classification", "failure")]
        ),
        2.0
    );
}

/// An HTTP/2 backend: `/big` answers 32 MiB (as its stream's window
/// allows), `/tick` a part every 200 ms, six in all.
async fn h2_streaming_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let big = req.uri().path().ends_with("/big");
                        let Ok(mut send) = respond.send_response(http::Response::new(()), false)
                        else {
                            return;
                        };
                        if big {
                            let piece = Bytes::from(vec![b'b'; 16 << 10]);
                            for _ in 0..2048 {
                                send.reserve_capacity(piece.len());
                                loop {
                                    match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                                        Some(Ok(n)) if n >= piece.len() => break,
                                        Some(Ok(_)) => continue,
                                        _ => return,
                                    }
                                }
                                if send.send_data(piece.clone(), false).is_err() {
                                    return;
                                }
                            }
                            let _ = send.send_data(Bytes::new(), true);
                        } else {
                            for i in 0..6 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let _ = send.send_data(Bytes::from_static(b"tick"), i == 5);
                            }
                        }
                    });
                }
            });
        }
    });
    addr
}

/// Clients that stop reading big answers from an HTTP/2 backend hold only
/// their own streams' windows: another answer on the same backend
/// connection keeps coming, and is not cut by `timeouts.answer_idle` as a
/// stall of the backend's.
#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_other_answers_from_an_http2_backend() {
    let backend = h2_streaming_backend().await;
    let proxy = ChildProxy::start(
        &route(backend, ", protocol: http2, timeouts: { answer_idle: 1s }"),
        &["--workers", "1"],
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Time for the proxy to fill what the kernel and the windows hold.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        get(&format!("http://{}/tick", proxy.addr)),
    )
    .await
    .expect("the ticking answer in time")
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), 24, "the ticking answer was cut");
    drop(stalled);
}
