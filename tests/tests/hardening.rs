//! The proxy under clients that misbehave: silent or slow connections,
//! idle ones, many Host values, and readers of the admin API without the
//! token. Real sockets and the real `sluice-proxy` binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers (with the length it read) only once it has
/// the whole request body.
async fn body_reader() -> SocketAddr {
    serve_http(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(n.to_string())))
    })
    .await
}

/// A proxy binary with 1 s header and idle timeouts and an admin token.
async fn strict_proxy(upstream: &BackendHandle, extra: &str) -> (ChildProxy, String) {
    let dir = TempDir::new("hardening");
    let token_file = dir.path.join("token");
    let token = "s3cret-token-for-tests";
    std::fs::write(&token_file, token).unwrap();
    let routes = format!(
        "  - {{ name: web, stable: '{}' }}\n  - {{ name: grpc, path_prefix: /grpc, protocol: http2, stable: '{}' }}\n",
        upstream.url(),
        upstream.url()
    );
    let proxy = ChildProxy::start_with(
        &routes,
        &format!("  token_file: {}\n", token_file.display()),
        &format!("limits:\n  header_read_timeout: 1s\n  idle_timeout: 1s\n{extra}"),
        &[],
    )
    .await;
    std::mem::forget(dir);
    (proxy, token.to_string())
}

#[tokio::test]
async fn a_connection_without_a_complete_request_head_is_closed_in_every_protocol() {
    let upstream = backend("stable").await;
    let (proxy, _) = strict_proxy(&upstream, "").await;
    let cases: [(&str, &[u8]); 4] = [
        ("nothing at all", b""),
        ("a partial HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "an HTTP/2 preface and no request",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        ),
        ("half an HTTP/1 head", b"GET / HTTP/1.1\r\nHost: web\r\n"),
    ];
    for (what, sent) in cases {
        for addr in [proxy.addr, proxy.admin] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(sent).await.unwrap();
            let (closed, _) = closed_within(&mut stream, Duration::from_secs(6)).await;
            assert!(
                closed,
                "{what} on {addr}: still open after 6 s (timeout 1 s)"
            );
        }
    }
    // A client that keeps to the timeout is served.
    let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_silent_client_after_the_tls_handshake_is_closed() {
    let upstream = backend("stable").await;
    let dir = TempDir::new("hardening-tls");
    let ca = TestCa::new("sluice hardening CA");
    let (cert, key, _) = ca.write_leaf(&dir.path, "server", &["localhost"]);
    let (proxy, _) = strict_proxy(
        &upstream,
        &format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let mut tls = tls_connect(&ca.cert_pem, proxy.addr).await;
    let (closed, _) = closed_within(&mut tls, Duration::from_secs(6)).await;
    assert!(
        closed,
        "a TLS client that sends no request is still connected after 6 s"
    );
}

/// HTTP/2 frames as (type, flags, stream, payload), read until `until`
/// returns true, the peer closes, or 6 s pass.
async fn read_frames(
    stream: &mut tokio::net::TcpStream,
    mut until: impl FnMut(u8, u8, u32) -> bool,
) -> Vec<(u8, u8, u32)> {
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let mut head = [0u8; 9];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            _ => return frames,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return frames;
        }
        if kind == 4 && flags & 1 == 0 {
            // Acknowledge the server's SETTINGS, as a client must.
            stream
                .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                .await
                .unwrap();
        }
        frames.push((kind, flags, id));
        if until(kind, flags, id) {
            return frames;
        }
    }
}

/// `limits.h2_keepalive`: an HTTP/2 connection gets PINGs (not
/// acknowledgements) at that interval.
#[tokio::test]
async fn http2_connections_get_keep_alive_pings() {
    let upstream = backend("stable").await;
    let proxy = ChildProxy::start_with(
        &format!("  - {{ name: web, stable: '{}' }}\n", upstream.url()),
        "",
        "limits:\n  h2_keepalive: 1s\n",
        &[],
    )
    .await;
    let mut h2 = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let frames = read_frames(&mut h2, |kind, flags, _| kind == 6 && flags & 1 == 0).await;
    assert!(
        frames
            .last()
            .is_some_and(|&(kind, flags, id)| (kind, flags, id) == (6, 0, 0)),
        "no PING within 6 s (keep-alive every 1 s): {frames:?}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_http2_ones_get_goaway() {
    let upstream = backend("stable").await;
    let (proxy, _) = strict_proxy(&upstream, "").await;

    // HTTP/1.1 keep-alive: one request, then silence.
    let mut h1 = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let (closed, seen) = closed_within(&mut h1, Duration::from_secs(6)).await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    assert!(
        closed,
        "an idle HTTP/1.1 connection is still open after 6 s (idle timeout 1 s)"
    );

    // HTTP/2 with prior knowledge: one GET (HPACK: :method GET, :scheme
    // http, :path /, :authority web), then silence: GOAWAY, then close.
    let mut h2 = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let block = [0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'];
    let mut headers = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    h2.write_all(&headers).await.unwrap();
    let frames = read_frames(&mut h2, |kind, _, _| kind == 7).await;
    assert!(
        frames.iter().any(|&(kind, _, id)| kind == 1 && id == 1),
        "no response HEADERS: {frames:?}"
    );
    assert_eq!(
        frames.last().map(|f| f.0),
        Some(7),
        "no GOAWAY after the idle timeout: {frames:?}"
    );
}

#[tokio::test]
async fn the_routes_api_needs_the_token_for_reads_too() {
    let upstream = backend("stable").await;
    let (proxy, token) = strict_proxy(&upstream, "").await;
    let client = h1_client();
    let admin = |path: &str, auth: Option<&str>| {
        let mut req = http::Request::get(format!("http://{}{path}", proxy.admin));
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        req.body(http_body_util::Full::default()).unwrap()
    };
    for path in ["/routes", "/routes/web"] {
        for auth in [None, Some("Bearer wrong"), Some("s3cret-token-for-tests")] {
            let (status, headers, body) = send(&client, admin(path, auth)).await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            // RFC 9110 §11.6.1: the 401 names the scheme it wants.
            assert!(
                headers
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer ")),
                "{path} with {auth:?}: {headers:?}"
            );
            assert!(
                !String::from_utf8_lossy(&body).contains(&upstream.url()),
                "{path} leaks the upstream to {auth:?}"
            );
        }
        let bearer = format!("Bearer {token}");
        let (status, _, body) = send(&client, admin(path, Some(&bearer))).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path} with the token");
        assert!(String::from_utf8_lossy(&body).contains(&upstream.url()));
    }
    for path in ["/metrics", "/healthz", "/readyz", "/version"] {
        let (status, _, _) = send(&client, admin(path, None)).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path} stays open");
    }
    // `sluice rollout` with a wrong token names --token-file, not --admin.
    let dir = TempDir::new("wrong-token");
    let wrong = dir.path.join("token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = std::process::Command::new(bin("sluice"))
        .args(["rollout", "--admin", &format!("http://{}", proxy.admin)])
        .args([
            "--route",
            "web",
            "--canary",
            "http://127.0.0.1:9",
            "--token-file",
        ])
        .arg(&wrong)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--token-file: the proxy at") && stderr.contains("refused the admin token"),
        "{stderr}"
    );
}

/// A second proxy on a port the first already serves refuses to start
/// (SO_REUSEPORT would otherwise let it take part of the traffic with its
/// own weights), naming the port; the first keeps all the traffic.
#[tokio::test]
async fn a_second_proxy_on_the_same_port_refuses_to_start() {
    let stable = backend("stable").await;
    let first = ChildProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        &[],
    )
    .await;
    let dir = TempDir::new("second");
    let config = dir.path.join("second.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}\nadmin:\n  listen: 127.0.0.1:{}\nroutes:\n  - {{ name: web, stable: '{}' }}\n",
            first.addr,
            free_port(),
            stable.url()
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new(bin("sluice-proxy"))
        .args(["--config", config.to_str().unwrap(), "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second proxy is still running on {}", first.addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&first.addr.to_string()) && stderr.contains("already listening"),
        "{stderr}"
    );
    let (status, _, _) = get(&format!("http://{}/", first.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// An idle proxy leaves its config file alone: it reads it again only when
/// the directory sees a change (its own reads used to wake the watcher,
/// which read the file again, ten times a second).
#[tokio::test]
async fn an_idle_proxy_does_not_reread_its_config() {
    use notify::Watcher;
    let stable = backend("stable").await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = opens.clone();
    let config = proxy.config_path.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && matches!(
                e.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            )
            && e.paths.iter().any(|p| p == &config)
        {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    watcher
        .watch(
            proxy.config_path.parent().unwrap(),
            notify::RecursiveMode::NonRecursive,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        opens.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the idle proxy opened its config file"
    );
    // A change is still seen.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, text.replace("name: web", "name: web2")).unwrap();
    eventually("the change to apply", Duration::from_secs(10), || async {
        let m = scrape(proxy.admin).await;
        (m.sum("sluice_config_reloads_total", &[("result", "success")]) >= 1.0).then_some(())
    })
    .await;
}

/// Forwarding headers from clients are not trusted by default: the
/// upstream sees what the proxy saw, and none of the rest of the
/// `X-Forwarded-*` family. Behind N trusted proxies
/// (`forwarding.trusted_hops`), the rightmost N hops are kept, and the
/// other fields those proxies set pass.
#[tokio::test]
async fn forwarding_headers_are_trusted_only_as_configured() {
    let echo = start_echo().await;
    let route = format!("  - {{ name: web, stable: 'http://{echo}' }}\n");
    let client = h1_client();
    let spoofed = |addr: SocketAddr| {
        http::Request::get(format!("http://{addr}/"))
            .header(http::header::HOST, "shop.example")
            .header("x-forwarded-for", "1.2.3.4, 5.6.7.8")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "admin.internal")
            .header("forwarded", "for=1.2.3.4;proto=https")
            .header("x-real-ip", "1.2.3.4")
            .header("x-forwarded-ssl", "on")
            .header("x-forwarded-prefix", "/shop")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let seen = |body: &[u8]| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["headers"].clone()
    };

    let untrusting = ChildProxy::start(&route, &[]).await;
    let (status, _, body) = send(&client, spoofed(untrusting.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let h = seen(&body);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "shop.example", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("x-forwarded-ssl").is_none(), "{h}");
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");

    let behind_one =
        ChildProxy::start_with(&route, "", "forwarding:\n  trusted_hops: 1\n", &[]).await;
    let (status, _, body) = send(&client, spoofed(behind_one.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let h = seen(&body);
    assert_eq!(h["x-forwarded-for"], "5.6.7.8, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "admin.internal", "{h}");
    assert_eq!(h["forwarded"], "for=1.2.3.4;proto=https", "{h}");
    assert_eq!(h["x-forwarded-ssl"], "on", "{h}");
    assert_eq!(h["x-forwarded-prefix"], "/shop", "{h}");
    // A field the `Connection` names is hop-by-hop, a forwarding one too.
    let mut raw = tokio::net::TcpStream::connect(behind_one.addr)
        .await
        .unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close, X-Forwarded-Prefix\r\nX-Forwarded-Prefix: /x\r\nX-Forwarded-Ssl: on\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, answer) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let h = echoed(&String::from_utf8_lossy(&answer))["headers"].clone();
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");
    assert_eq!(h["x-forwarded-ssl"], "on", "{h}");
}

/// `limits.max_connections`: a connection over the limit is closed at once
/// and counted; a place freed is a place for the next.
#[tokio::test]
async fn connections_over_the_limit_are_closed_and_counted() {
    let stable = backend("stable").await;
    let proxy = ChildProxy::start_with(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        "",
        "limits:\n  max_connections: 3\n",
        &["--workers", "2"],
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(c);
    }
    let mut fourth = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    let (closed, seen) = closed_within(&mut fourth, Duration::from_secs(3)).await;
    assert!(
        closed && seen.is_empty(),
        "the fourth connection was served: {}",
        String::from_utf8_lossy(&seen)
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_connections_rejected_total", &[]), 1.0);
    assert_eq!(m.sum("sluice_open_connections", &[]), 3.0);
    drop(open.pop());
    eventually(
        "a freed place to serve a new connection",
        Duration::from_secs(5),
        || async {
            let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.ok()?;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
}

/// `limits.max_requests_in_flight`: with 2 allowed per route and an
/// upstream that takes 1 s, 6 concurrent requests get 2 answers and 4
/// immediate 503s, counted in sluice_rejected_total.
#[tokio::test]
async fn requests_over_the_routes_limit_are_answered_503() {
    let slow = serve_http(|_req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"slow",
        )))
    })
    .await;
    let proxy = ChildProxy::start_with(
        &format!("  - {{ name: web, stable: 'http://{slow}' }}\n"),
        "",
        "limits:\n  max_requests_in_flight: 2\n",
        &[],
    )
    .await;
    let url = format!("http://{}/", proxy.addr);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.unwrap().0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, refused), (2, 4), "{statuses:?}");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_rejected_total",
            &[("route", "web"), ("reason", "max_requests_in_flight")]
        ),
        4.0
    );
    // The places come back once the answers are done.
    let (status, _, _) = get(&url).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// `limits.max_request_body`: a declared or a streamed (chunked) body over
/// the limit is answered 413 and counted; one under it goes through.
#[tokio::test]
async fn request_bodies_over_the_limit_are_answered_413() {
    // An upstream that answers only once it has read the whole body, so
    // the cap is always reached before any answer.
    let echo = body_reader().await;
    let proxy = ChildProxy::start_with(
        &format!("  - {{ name: web, stable: 'http://{echo}' }}\n"),
        "",
        "limits:\n  max_request_body: 1KiB\n",
        &[],
    )
    .await;
    let client = h1_client();
    let post = |body: Vec<u8>| {
        http::Request::post(format!("http://{}/", proxy.addr))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let (status, _, _) = send(&client, post(vec![b'a'; 512])).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&client, post(vec![b'a'; 2048])).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "declared length");
    // Chunked, no length: the proxy finds out while streaming.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        raw.write_all(b"400\r\n").await.unwrap();
        raw.write_all(&[b'b'; 0x400]).await.unwrap();
        raw.write_all(b"\r\n").await.unwrap();
    }
    let _ = raw.write_all(b"0\r\n\r\n").await;
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut head))
        .await
        .expect("an answer to the chunked upload")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "chunked");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_rejected_total",
            &[("route", "web"), ("reason", "body_too_large")]
        ),
        2.0
    );
}

/// HTTP semantics a proxy must keep: HTTP/1.1 trailers pass (the
/// `Trailer` field is not hop-by-hop); cookies from an HTTP/2 client reach
/// an HTTP/1.1 upstream as one field; paths with `//` or dot-segments are
/// routed as normalised (as nginx does); CONNECT and `OPTIONS *` get
/// deliberate answers; HTTP/2 requests have HTTP/1.x's field bound.
#[tokio::test]
async fn trailers_cookies_paths_and_odd_methods_are_handled_deliberately() {
    // An HTTP/1.1 upstream that answers with a trailer and reports the
    // cookie fields it got.
    let upstream = serve_http(|req: http::Request<hyper::body::Incoming>| async move {
        let cookies: Vec<String> = req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .collect();
        let body = format!("{}|{}", req.uri().path(), cookies.join("||"));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
            Ok(hyper::body::Frame::data(bytes::Bytes::from(body))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        http::Response::builder()
            .header(http::header::TRAILER, "x-checksum")
            .body(http_body_util::StreamBody::new(futures::stream::iter(
                frames,
            )))
            .unwrap()
    })
    .await;
    let other = backend("other").await;
    let routes = format!(
        "  - {{ name: admin, path_prefix: /admin, stable: 'http://{upstream}' }}\n  - {{ name: rest, stable: '{}' }}\n",
        other.url()
    );
    let proxy = ChildProxy::start(&routes, &[]).await;

    // Trailers reach an HTTP/1.1 client.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(b"GET /admin HTTP/1.1\r\nHost: web\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.contains("x-checksum: abc123"), "{text}");

    // Routed on the normalised path, forwarded as sent.
    for path in ["//admin/x", "/public/../admin/x", "/./admin/x"] {
        let (status, _, body) = get(&format!("http://{}{path}", proxy.addr)).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(
            body.starts_with(&format!("{path}|")),
            "{path} went elsewhere: {body}"
        );
    }

    // Two cookie fields over HTTP/2 become one over HTTP/1.1.
    let req = http::Request::get(format!("http://{}/admin", proxy.addr))
        .header(http::header::COOKIE, "a=1")
        .header(http::header::COOKIE, "b=2")
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, body) = send(&h2_client(), req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&body), "/admin|a=1; b=2");

    // CONNECT: refused, saying why, and the connection closed: what the
    // client sent after it (here a request meant for the far host, through
    // the tunnel it hoped for) is never read as a request of its own.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\
          GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await
    .unwrap();
    let (closed, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(closed, "the connection stayed open after CONNECT: {text}");
    assert!(
        text.starts_with("http/1.1 405") && text.contains("allow:"),
        "{text}"
    );
    assert_eq!(text.matches("http/1.1 ").count(), 1, "{text}");
    // OPTIONS *: the methods, not forwarded.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(b"OPTIONS * HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(
        text.starts_with("http/1.1 200") && text.contains("allow: get"),
        "{text}"
    );
    // A method that is not upper-case, over HTTP/2: refused before routing.
    let req = http::Request::builder()
        .method(http::Method::from_bytes(b"fetch").unwrap())
        .uri(format!("http://{}/admin", proxy.addr))
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, _) = send(&h2_client(), req).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // HTTP/2 has the HTTP/1.x bound of 128 fields (431), on the fields a
    // backend gets: 60 cookie crumbs go on as one field, so 80 others and
    // them pass, and 129 others do not.
    let crowded = |fields: usize, cookies: usize| {
        let mut req = http::Request::get(format!("http://{}/admin", proxy.addr));
        for i in 0..fields {
            req = req.header(format!("x-f{i}"), "1");
        }
        for i in 0..cookies {
            req = req.header(http::header::COOKIE, format!("c{i}=1"));
        }
        req.body(http_body_util::Full::default()).unwrap()
    };
    let (status, _, body) = send(&h2_client(), crowded(80, 60)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).ends_with("c58=1; c59=1"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = send(&h2_client(), crowded(129, 0)).await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The proxy's answer, not the backend's (whose own bound is 100).
    assert!(
        String::from_utf8_lossy(&body).contains("more than 128 fields"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "rest")]),
        0.0,
        "OPTIONS * or CONNECT was forwarded"
    );
    // The refusals count by their answer; OPTIONS * is none.
    for (code, count) in [("400", 1.0), ("405", 1.0), ("431", 1.0), ("200", 0.0)] {
        assert_eq!(
            m.sum("sluice_refused_requests_total", &[("code", code)]),
            count,
            "{code}"
        );
    }
}

/// The request timeout starts when the request body has been sent: an
/// upload slower than the timeout is not a 504 charged to the backend. A
/// client that pauses its body longer than `timeouts.idle` gets 408, and
/// that is not an upstream error either; a client still sending bytes
/// (a slow trailer section) has not paused.
#[tokio::test]
async fn slow_uploads_are_not_charged_to_the_backend_and_stalled_ones_get_408() {
    let echo = body_reader().await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: web, stable: 'http://{echo}', timeouts: {{ request: 1s, idle: 1s }} }}\n"
        ),
        &[],
    )
    .await;
    // 2.4 s of upload in 6 pieces, each pause under the idle timeout.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 60\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        raw.write_all(&[b'x'; 10]).await.unwrap();
    }
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "a slow upload: {text}");

    // A chunked upload whose last chunk line and trailer section come in
    // 6 pieces over 2.4 s: bytes keep coming, though none makes a data
    // frame, so the client has not paused.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    for piece in ["0\r\nX-", "Sum", "mary: ", "4", "2\r\n", "\r\n"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        raw.write_all(piece.as_bytes()).await.unwrap();
    }
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "a slow trailer section: {text}"
    );

    // 10 bytes of 100, then silence.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789")
        .await
        .unwrap();
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(6)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "a stalled upload: {text}");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_requests_total", &[("code", "504")]), 0.0);
}

/// Reads what the proxy sends until it closes or fails, for at most
/// `within`: the bytes read, and whether the connection ended in time.
async fn drain_within(
    raw: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> (u64, bool) {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, raw.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got += n as u64,
            Err(_) => return (got, false),
        }
    }
}

/// Asks `client` (connected to `proxy`, whose route's backend is an
/// [`endless_backend`] with `timeouts.idle: 1s`) for the answer, reads
/// none of it for 4 s, then reads: the proxy must have closed the
/// connection, and counted the backend's 200 as a success with no
/// upstream error.
async fn an_answer_left_unread_is_cut(
    what: &str,
    mut client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    proxy: &ChildProxy,
) {
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (got, ended) = drain_within(&mut client, Duration::from_secs(10)).await;
    println!(
        "{what}: read {got} bytes after 4 s of reading nothing; the connection ended: {ended}"
    );
    assert!(
        ended && got < ENDLESS_LENGTH / 16,
        "{what}: the proxy kept sending: {got} bytes, ended {ended}"
    );
    let admin = proxy.admin;
    eventually(
        "the answer counted as the backend's 200",
        Duration::from_secs(5),
        || async move {
            let m = scrape(admin).await;
            (m.sum(
                "sluice_requests_total",
                &[("code", "200"), ("classification", "success")],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;
    let m = scrape(admin).await;
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0, "{what}");
}

/// The route of the two tests below: an endless backend, a 1 s limit.
fn endless_route(endless: SocketAddr) -> String {
    format!("  - {{ name: web, stable: 'http://{endless}', timeouts: {{ idle: 1s }} }}\n")
}

/// A client that takes no byte of its answer for the route's
/// `timeouts.idle` loses its connection (nginx's `send_timeout`), and the
/// backend, which did its part, is counted with the status it sent. The
/// backend always has more ready, so without the limit the client would
/// hold the connection as long as it liked, and get the rest on reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_none_of_its_answer_loses_the_connection() {
    let proxy = ChildProxy::start(&endless_route(endless_backend().await), &[]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window, so that little of the answer waits in the kernel.
    socket.set_recv_buffer_size(4096).unwrap();
    let raw = socket.connect(proxy.addr).await.unwrap();
    an_answer_left_unread_is_cut("plain", raw, &proxy).await;
}

/// A proxy with `routes` whose listener speaks TLS, with a certificate for
/// `localhost` from a CA of its own; the CA, and the directory that holds
/// the files (kept while the proxy runs).
async fn tls_proxy(routes: &str) -> (ChildProxy, TestCa, TempDir) {
    let dir = TempDir::new("hardening-tls");
    let ca = TestCa::new("sluice hardening CA");
    let (cert, key, _) = ca.write_leaf(&dir.path, "server", &["localhost"]);
    let proxy = ChildProxy::start_with(
        routes,
        "",
        &format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
        &[],
    )
    .await;
    (proxy, ca, dir)
}

/// The same over TLS, where a flush writes records until the socket is
/// full and says only that it waits. (A slow TLS reader whose flush makes
/// progress is not cut: the proxy's unit test
/// `progress_the_socket_counts_restarts_the_stall_limit`, as the kernel's
/// buffers make it unsteady end to end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_takes_none_of_its_answer_loses_the_connection() {
    let (proxy, ca, _dir) = tls_proxy(&endless_route(endless_backend().await)).await;
    let tls = tls_connect(&ca.cert_pem, proxy.addr).await;
    an_answer_left_unread_is_cut("TLS", tls, &proxy).await;
}

/// Over TLS, HTTP/2 is what the handshake negotiates (ALPN `h2`, RFC 9113
/// §3.3), never what the first bytes look like: a client that negotiated
/// nothing and sends HTTP/2's preface is speaking HTTP/1.1, with a request
/// line of `HTTP/2.0` (505).
#[tokio::test]
async fn over_tls_http2_needs_alpn_not_a_preface() {
    let stable = backend("stable").await;
    let (proxy, ca, _dir) = tls_proxy(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    ))
    .await;
    let mut tls = tls_connect(&ca.cert_pem, proxy.addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    // The preface, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (_, seen) = closed_within(&mut tls, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 505"), "{text:?}");
}

/// A request whose backend cannot be reached (no byte was written) is tried
/// once more, whatever its method, within a budget of 20% of the backend's
/// requests plus 10.
#[tokio::test]
async fn unreachable_backends_get_one_retry_within_the_budget() {
    let dead = free_port();
    let proxy = ChildProxy::start(
        &format!("  - {{ name: web, stable: 'http://127.0.0.1:{dead}' }}\n"),
        &[],
    )
    .await;
    let url = format!("http://{}/", proxy.addr);
    let post = http::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    assert_eq!(
        send(&h1_client(), post).await.unwrap().0,
        StatusCode::BAD_GATEWAY
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_retries_total",
            &[("route", "web"), ("backend", "stable")]
        ),
        1.0,
        "a POST that never reached the backend (connect refused) is retried once"
    );
    for _ in 0..100 {
        assert_eq!(get(&url).await.unwrap().0, StatusCode::BAD_GATEWAY);
    }
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_retries_total",
            &[("route", "web"), ("backend", "stable")]
        ),
        30.0,
        "the budget after 101 requests: 101 / 5 + 10"
    );
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "web"), ("kind", "connect")]
        ),
        101.0,
        "one error per request, however often it was tried"
    );
}

/// Opens a WebSocket tunnel through the proxy at `addr` and checks that it
/// echoes.
async fn open_tunnel(addr: SocketAddr) -> tokio::net::TcpStream {
    let (mut stream, head) = websocket_handshake(addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(tunnel_echoes(&mut stream, b"hello").await);
    stream
}

async fn tunnel_echoes(stream: &mut tokio::net::TcpStream, message: &[u8]) -> bool {
    if stream.write_all(message).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; message.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_get_the_drain_timeout_then_are_cut() {
    let echo = start_echo().await;
    let mut proxy = ChildProxy::start(
        &format!("  - {{ name: ws, stable: 'http://{echo}' }}\n"),
        &["--drain-delay", "300ms", "--drain-timeout", "3s"],
    )
    .await;
    let mut tunnel = open_tunnel(proxy.addr).await;
    let open = scrape(proxy.admin)
        .await
        .sum("sluice_open_connections", &[]);
    assert_eq!(open, 1.0, "an open tunnel counts as an open connection");
    let signalled = Instant::now();
    proxy.signal("TERM");
    // Past the drain delay the listener is closed, yet the tunnel lives on
    // and the proxy waits for it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "the listener closes after the drain delay"
    );
    assert!(
        tunnel_echoes(&mut tunnel, b"still there during the drain").await,
        "a tunnel is cut before the drain timeout"
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited while a tunnel was open and the drain timeout had not passed"
    );
    // At the drain timeout the tunnel is cut and the proxy exits.
    let (closed, _) = closed_within(&mut tunnel, Duration::from_secs(6)).await;
    assert!(closed, "the tunnel outlived the drain timeout");
    let cut_after = signalled.elapsed();
    assert!(
        cut_after >= Duration::from_millis(3000),
        "the tunnel was cut {cut_after:?} after SIGTERM, before the 300 ms delay + 3 s timeout"
    );
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.code().is_some(),
        "the proxy ended by a signal: {status:?}"
    );
}

/// `timeouts.tunnel_idle`: a WebSocket tunnel that moves no byte either
/// way for it is closed on both sides and gives its place back, while one
/// that keeps talking (for three times the limit) is never cut.
#[tokio::test]
async fn a_silent_websocket_tunnel_is_closed_after_tunnel_idle_and_a_talking_one_is_not() {
    const IDLE: Duration = Duration::from_millis(600);
    let echo = start_echo().await;
    let routes = format!(
        "  - {{ name: ws, stable: 'http://{echo}', timeouts: {{ tunnel_idle: {}ms }} }}\n",
        IDLE.as_millis()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let mut silent = open_tunnel(proxy.addr).await;
    let silent_since = Instant::now();
    let mut talking = open_tunnel(proxy.addr).await;
    let open = scrape(proxy.admin_addr)
        .await
        .sum("sluice_open_connections", &[]);
    assert_eq!(open, 2.0, "both tunnels count as open connections");
    let talker = tokio::spawn(async move {
        let until = Instant::now() + IDLE * 3;
        let mut messages = 0;
        while Instant::now() < until {
            tokio::time::sleep(IDLE / 3).await;
            let message = format!("message {messages}");
            assert!(
                tunnel_echoes(&mut talking, message.as_bytes()).await,
                "a tunnel that talked every {:?} was cut after {messages} messages",
                IDLE / 3
            );
            messages += 1;
        }
        talking
    });
    let (closed, seen) = closed_within(&mut silent, IDLE * 5).await;
    let after = silent_since.elapsed();
    assert!(
        closed,
        "a silent tunnel outlived tunnel_idle by {:?}",
        IDLE * 4
    );
    assert!(seen.is_empty(), "the silent tunnel got bytes: {seen:?}");
    assert!(
        after >= IDLE,
        "the silent tunnel was closed {after:?} after its last byte, before tunnel_idle ({IDLE:?})"
    );
    let mut talking = talker.await.expect("the talking tunnel");
    assert!(
        tunnel_echoes(&mut talking, b"still open").await,
        "the talking tunnel was cut"
    );
    eventually(
        "the closed tunnel to give its place back",
        Duration::from_secs(5),
        || async {
            let open = scrape(proxy.admin_addr)
                .await
                .sum("sluice_open_connections", &[]);
            (open == 1.0).then_some(())
        },
    )
    .await;
    // Each ended tunnel is counted once, by how it ended.
    let tunnels = |outcome| async move {
        scrape(proxy.admin_addr).await.sum(
            "sluice_tunnels_total",
            &[("route", "ws"), ("outcome", outcome)],
        )
    };
    assert_eq!(tunnels("idle_timeout").await, 1.0, "the silent tunnel");
    assert_eq!(tunnels("closed").await, 0.0, "the talking tunnel is open");
    assert_eq!(tunnels("error").await, 0.0);
    drop(talking);
    eventually(
        "the tunnel its client closed to count as closed",
        Duration::from_secs(5),
        || async { (tunnels("closed").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(tunnels("idle_timeout").await, 1.0);
    assert_eq!(tunnels("error").await, 0.0);
}

/// An HTTP/1.1 upstream written on raw sockets, to misbehave precisely:
/// it answers the first request of each connection, then closes the
/// connection on the second without answering (a server closing a
/// keep-alive connection just as a request goes out); a POST it reads
/// whole and then closes without answering (it may have processed it).
/// Counts the requests it read: (GETs, POSTs).
async fn closing_upstream() -> (
    SocketAddr,
    std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ));
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for nth in 0.. {
                    // One request head (and a Content-Length body).
                    let Some((head, _)) = read_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    let head = head.to_ascii_lowercase();
                    if head.starts_with("post") {
                        seen.1.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    seen.0.fetch_add(1, Ordering::SeqCst);
                    if nth == 1 {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// The stale keep-alive race: a reused connection closed by the backend
/// before it answered a GET is retried on a fresh one (the client gets
/// 200); a POST the backend read and dropped is never retried (502).
#[tokio::test]
async fn a_closed_keep_alive_connection_is_retried_for_a_get_and_never_for_a_post() {
    use std::sync::atomic::Ordering;
    let (upstream, seen) = closing_upstream().await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: web, stable: 'http://{upstream}' }}\n"),
        &[],
    )
    .await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let get = || {
        http::Request::get(&url)
            .body(http_body_util::Full::default())
            .unwrap()
    };
    assert_eq!(send(&client, get()).await.unwrap().0, StatusCode::OK);
    // Sent on the pooled connection, which the backend closes unanswered.
    let (status, _, body) = send(&client, get()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(seen.0.load(Ordering::SeqCst), 3, "two GETs and one retry");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "web")]),
        1.0
    );
    assert_eq!(m.sum("sluice_requests_total", &[("code", "200")]), 2.0);
    // A POST on the pooled connection: the backend reads it and closes.
    let post = http::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"charge the card",
        )))
        .unwrap();
    assert_eq!(
        send(&client, post).await.unwrap().0,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        seen.1.load(Ordering::SeqCst),
        1,
        "a POST the backend may have processed was sent again"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "web")]),
        1.0
    );
    // Closed before an answer: a reset, not a malformed message.
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "web"), ("kind", "reset")]
        ),
        1.0
    );
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 1.0);
}

#[tokio::test]
async fn a_refused_http2_stream_is_retried_on_a_fresh_connection() {
    use std::sync::atomic::Ordering;
    let (upstream, streams) = h2_refusing_backend("stable", 1).await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: grpc, protocol: http2, stable: 'http://{upstream}' }}\n"),
        &[],
    )
    .await;
    let url = format!("http://{}/svc/Method", proxy.addr);
    let (status, _, body) = get(&url).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(
        streams.load(Ordering::SeqCst),
        2,
        "refused once, then served"
    );
    // A POST whose body was read ahead whole is sent again too, whole.
    streams.store(0, Ordering::SeqCst);
    let post = http::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    let (status, _, body) = send(&h1_client(), post).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"payload"[..]));
    assert_eq!(streams.load(Ordering::SeqCst), 2, "refused, then served");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "grpc")]),
        2.0
    );
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("route", "grpc")]),
        0.0
    );
}

/// A POST whose body an HTTP/2 backend read before it failed the stream
/// (`INTERNAL_ERROR`, not `REFUSED_STREAM`) may have been acted on: it is
/// never sent again, neither retried nor failed over to the stable,
/// though its body was read ahead whole and could be.
#[tokio::test]
async fn a_post_an_http2_backend_read_then_failed_is_never_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let streams = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    let failing = serve_h2(move |req, mut respond| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            read_h2_body(&mut req.into_body()).await;
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    })
    .await;
    let (stable, stable_streams) = h2_refusing_backend("stable", 0).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: alone, path_prefix: /alone, protocol: http2, stable: 'http://{failing}' }}\n  - {{ name: split, protocol: http2, stable: 'http://{stable}', canary: 'http://{failing}', canary_weight: 100 }}\n"
        ),
        &[],
    )
    .await;
    for path in ["/alone/charge", "/split/charge"] {
        let post = http::Request::post(format!("http://{}{path}", proxy.addr))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"charge the card",
            )))
            .unwrap();
        let (status, _, _) = send(&h1_client(), post).await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}");
    }
    assert_eq!(streams.load(Ordering::SeqCst), 2, "one stream per POST");
    assert_eq!(stable_streams.load(Ordering::SeqCst), 0, "failed over");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_upstream_retries_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_failovers_total", &[]), 0.0);
    // The backend reset the stream: `reset`, not `protocol`.
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "reset")]),
        2.0
    );
}

/// An HTTP/2 backend whose first `turn_away` connections answer the
/// first stream they see with SETTINGS and then `answer` (raw frames),
/// then close; later connections echo each request's body (as
/// [`h2_refusing_backend`]). Its address, and how many streams it turned
/// away.
async fn h2_raw_backend(
    turn_away: usize,
    answer: Vec<u8>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (echo, _) = h2_refusing_backend("echo", 0).await;
    let turned = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = turned.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            connections += 1;
            if connections > turn_away {
                // Later connections go to the echo backend, byte for byte.
                let mut to = tokio::net::TcpStream::connect(echo).await.unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut to).await;
                });
                continue;
            }
            let turned = turned.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if socket.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Frames until the first HEADERS (type 1).
                loop {
                    let mut head = [0u8; 9];
                    if socket.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    if socket.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if head[3] == 1 {
                        break;
                    }
                }
                turned.fetch_add(1, Ordering::SeqCst);
                let mut frames = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
                frames.extend_from_slice(&answer);
                let _ = socket.write_all(&frames).await;
                let _ = socket.shutdown().await;
                // Read on until the proxy closes, so the close is clean.
                let mut sink = [0u8; 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, counted)
}

/// A GOAWAY frame naming `last` as the last stream processed (0: none,
/// RFC 9113 §6.8), `NO_ERROR`.
fn goaway(last: u32) -> Vec<u8> {
    let mut frame = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&last.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame
}

/// A stream an HTTP/2 backend turns away with GOAWAY, unprocessed (above
/// the GOAWAY's last stream identifier), promises no work was done, as
/// `REFUSED_STREAM` does: a POST is sent again on a fresh connection, and
/// as a canary's it fails over to the stable, its body whole both times.
/// A POST on a stream the GOAWAY counts as processed, cut by the close
/// that follows, may have been acted on: it is never sent again.
#[tokio::test]
async fn a_post_an_http2_backend_turned_away_with_goaway_is_sent_again() {
    use std::sync::atomic::Ordering;
    let (once, turned_once) = h2_raw_backend(1, goaway(0)).await;
    let (always, turned_always) = h2_raw_backend(usize::MAX, goaway(0)).await;
    let (processed, turned_processed) = h2_raw_backend(usize::MAX, goaway(i32::MAX as u32)).await;
    let (stable, stable_streams) = h2_refusing_backend("stable", 0).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: alone, path_prefix: /alone, protocol: http2, stable: 'http://{once}' }}\n  - {{ name: processed, path_prefix: /processed, protocol: http2, stable: 'http://{stable}', canary: 'http://{processed}', canary_weight: 100 }}\n  - {{ name: split, protocol: http2, stable: 'http://{stable}', canary: 'http://{always}', canary_weight: 100 }}\n"
        ),
        &[],
    )
    .await;
    for path in ["/alone/order", "/split/order"] {
        let post = http::Request::post(format!("http://{}{path}", proxy.addr))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"one order",
            )))
            .unwrap();
        let (status, _, body) = send(&h1_client(), post).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"one order"[..]),
            "{path}"
        );
    }
    let post = http::Request::post(format!("http://{}/processed/order", proxy.addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"one order",
        )))
        .unwrap();
    let (status, _, _) = send(&h1_client(), post).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "cut after the GOAWAY");
    assert_eq!(turned_once.load(Ordering::SeqCst), 1, "turned away once");
    assert!(
        turned_always.load(Ordering::SeqCst) >= 1,
        "the canary's GOAWAY"
    );
    assert_eq!(turned_processed.load(Ordering::SeqCst), 1, "never resent");
    assert_eq!(stable_streams.load(Ordering::SeqCst), 1, "failed over once");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_upstream_retries_total", &[("route", "alone")]),
        1.0
    );
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "split")]), 1.0);
    assert_eq!(
        m.sum("sluice_failovers_total", &[("route", "processed")]),
        0.0
    );
    // Turned away or cut, the canary was closed on: `reset`.
    for route in ["split", "processed"] {
        assert_eq!(
            m.sum(
                "sluice_upstream_errors_total",
                &[("route", route), ("kind", "reset")]
            ),
            1.0,
            "{route}: {:?}",
            m.0.iter()
                .filter(|s| s.name == "sluice_upstream_errors_total")
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "protocol")]),
        0.0
    );
}

/// An answer that breaks HTTP/2's rules (a HEADERS frame without
/// `:status`, which the proxy's HTTP/2 library refuses) is the backend's
/// `protocol` error, a 502; a stream the backend resets is `reset` (see
/// the INTERNAL_ERROR test above).
#[tokio::test]
async fn an_http2_answer_without_status_is_a_protocol_error() {
    // HEADERS on stream 1, END_STREAM | END_HEADERS: `x: y` only.
    let block = [0x00, 0x01, b'x', 0x01, b'y'];
    let mut answer = vec![0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1];
    answer.extend_from_slice(&block);
    let (backend, streams) = h2_raw_backend(usize::MAX, answer).await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: odd, protocol: http2, stable: 'http://{backend}' }}\n"),
        &[],
    )
    .await;
    let (status, _, body) = get(&format!("http://{}/x", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 1);
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "odd"), ("kind", "protocol")]
        ),
        1.0
    );
}

/// A proxy with one route, `echo`, to an echo backend; and the backend's
/// address.
async fn echo_proxy() -> (SocketAddr, ChildProxy) {
    let echo = start_echo().await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: echo, stable: 'http://{echo}' }}\n"),
        &[],
    )
    .await;
    (echo, proxy)
}

/// The echo backend's report (JSON) in a raw HTTP/1 response.
fn echoed(response: &str) -> serde_json::Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// RFC 9112 §3.2: an HTTP/1 request with two Host fields, a Host that is
/// not a host and port, or (on HTTP/1.1) no Host, even with an
/// absolute-form target, is answered 400 by the proxy and never
/// forwarded, so a backend cannot read a different Host than the one the
/// proxy routed by. HTTP/1.0 may leave Host out, and an absolute-form
/// target's authority replaces the Host sent.
#[tokio::test]
async fn ambiguous_invalid_or_missing_host_fields_are_400_and_never_forwarded() {
    let (echo, proxy) = echo_proxy().await;
    let exchange = |head: &'static [u8]| async move {
        let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        raw.write_all(head).await.unwrap();
        let (closed, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
        assert!(closed, "the proxy kept the connection open after: {seen:?}");
        String::from_utf8_lossy(&seen).to_string()
    };
    let refused: [(&[u8], &str); 6] = [
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "needs a Host",
        ),
        (
            b"GET http://app.example/abs HTTP/1.1\r\nConnection: close\r\n\r\n",
            "needs a Host",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n",
            "not a host and optional port",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example/x\r\nConnection: close\r\n\r\n",
            "not a host and optional port",
        ),
    ];
    for (head, why) in refused {
        let text = exchange(head).await;
        assert!(
            text.starts_with("HTTP/1.1 400") && text.contains(why),
            "{}: {text}",
            String::from_utf8_lossy(head)
        );
    }
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "echo")]),
        0.0,
        "a refused request was forwarded"
    );

    // HTTP/1.0 without Host: forwarded with the backend's authority.
    // Answered as HTTP/1.1, the version the proxy conforms to (RFC 9110
    // §6.2).
    let text = exchange(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(echoed(&text)["headers"]["host"], echo.to_string());
    // Absolute form: the target's authority replaces the Host sent.
    let text = exchange(
        b"GET http://app.example:8080/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(echoed(&text)["headers"]["host"], "app.example:8080");
    // An IPv6 literal with a port is a Host.
    let text = exchange(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_requests_total", &[("route", "echo")]), 3.0);
}

/// An HTTP/1.1 target may carry bytes a URI may not: an HTTP/2 backend
/// gets those its `:path` cannot carry (`<`, `>`, `` ` ``, `"` in a query)
/// percent-encoded, which means the same (RFC 3986 §2.1), and the rest as
/// sent; never a 502 charged to it for a path it was never sent. One too
/// long for a `:path` once escaped is the client's 414.
#[tokio::test]
async fn targets_with_bytes_no_uri_may_carry_reach_an_http2_backend_escaped() {
    let echo = start_echo().await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: h2, protocol: http2, stable: 'http://{echo}' }}\n"),
        &[],
    )
    .await;
    for (target, path, query) in [
        ("/a<b>", "/a%3Cb%3E", None),
        ("/x?q=\"1\"|{}", "/x", Some("q=%221%22|{}")),
        ("/a`b\\c^d?e>f", "/a%60b\\c^d", Some("e%3Ef")),
        ("/api/{id}|x", "/api/{id}|x", None),
        ("/plain?a=1&b=%2F", "/plain", Some("a=1&b=%2F")),
    ] {
        let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        raw.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&seen).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "{target}: {text}");
        let echoed = echoed(&text);
        assert_eq!(echoed["version"], "HTTP/2.0", "{target}");
        assert_eq!(echoed["path"], path, "{target}");
        assert_eq!(echoed["query"].as_str(), query, "{target}");
    }
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "<".repeat(21_845)
    );
    raw.write_all(long.as_bytes()).await.unwrap();
    let (_, seen) = closed_within(&mut raw, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 414"), "a long target: {text}");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
    assert_eq!(m.sum("sluice_requests_total", &[]), 5.0);
    assert_eq!(m.sum("sluice_requests_total", &[("code", "200")]), 5.0);
    assert_eq!(
        m.sum("sluice_refused_requests_total", &[("code", "414")]),
        1.0
    );
}

/// An upgrade that offers h2c, alone or in a list, is not passed on: a
/// backend that took it would speak HTTP/2 with the client through a
/// tunnel, past the proxy's routing and metrics (h2c smuggling). Nor is an
/// offer in several Upgrade lines. The request goes on as a plain one; a
/// websocket upgrade still tunnels.
#[tokio::test]
async fn an_upgrade_offering_h2c_is_forwarded_as_a_plain_request() {
    let (_, proxy) = echo_proxy().await;
    for offer in [
        "h2c",
        "websocket, h2c",
        "H2C , websocket",
        "foo\r\nUpgrade: websocket",
        "websocket\r\nUpgrade: h2c",
    ] {
        let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {offer}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // The echo answers JSON ending in `}`; read until then.
        while !seen.ends_with(b"}") {
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "`{offer}`: no full answer: {}",
                        String::from_utf8_lossy(&seen)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "`{offer}`: closed after {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200"), "`{offer}`: {text}");
        let body = echoed(&text);
        let headers = &body["headers"];
        assert!(
            headers.get("upgrade").is_none() && headers.get("http2-settings").is_none(),
            "`{offer}` reached the backend: {headers}"
        );
    }
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
}
