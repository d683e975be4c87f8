//! The proxy's plain TCP listeners (`tcp_listeners`), over real sockets on
//! 127.0.0.1: bytes through unchanged both ways, half-close, backpressure
//! on large transfers, a refused upstream, the idle timeout, the
//! `sluice_tcp_*` metrics, hot reload adding and removing a listener, bad
//! configs refused naming the field, TCP's own connection cap
//! (`limits.max_tcp_connections`, apart from HTTP's `max_connections`) and
//! TCP served on threads of its own.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with one HTTP route (to `http`) and the given `tcp_listeners`
/// entries (YAML list items), on ephemeral ports.
fn config(http: &BackendHandle, tcp_items: &str) -> String {
    format!(
        "{}tcp_listeners:\n{tcp_items}",
        proxy_yaml(&format!("  - name: web\n    stable: {}\n", http.url()))
    )
}

fn tcp_item(name: &str, listen: &str, upstream: SocketAddr, extra: &str) -> String {
    format!("  - name: {name}\n    listen: {listen}\n    upstream: {upstream}\n{extra}")
}

async fn proxy_with(http: &BackendHandle, tcp_items: &str) -> ProxyHandle {
    start_proxy(&config(http, tcp_items)).await
}

fn addr_of(proxy: &ProxyHandle, name: &str) -> SocketAddr {
    proxy
        .tcp_listener_addr(name)
        .unwrap_or_else(|| panic!("tcp listener {name} is serving"))
}

/// Reads exactly `n` bytes.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .expect("bytes within 10 s")
        .expect("read");
    buf
}

#[tokio::test]
async fn bytes_go_through_unchanged_and_are_counted() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let proxy = proxy_with(&http, &tcp_item("raw", "127.0.0.1:0", echo, "")).await;
    let mut stream = TcpStream::connect(addr_of(&proxy, "raw")).await.unwrap();
    // Not HTTP, and bytes an HTTP parser would choke on.
    let message: Vec<u8> = b"\x00\xffPRI * HTTP/2.0\r\n\r\nGET / HTTP/1.1\r\n"
        .iter()
        .copied()
        .chain(0..=255u8)
        .collect();
    stream.write_all(&message).await.unwrap();
    assert_eq!(read_n(&mut stream, message.len()).await, message);
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum("sluice_tcp_active_connections", &[("listener", "raw")]),
        1.0
    );
    stream.shutdown().await.unwrap();
    let (closed, rest) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed && rest.is_empty(),
        "the echo's close reaches the client"
    );
    let n = message.len() as f64;
    eventually(
        "the connection to be counted",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin_addr).await;
            let upstream = echo.to_string();
            (m.sum(
                "sluice_tcp_connections_total",
                &[
                    ("listener", "raw"),
                    ("upstream", upstream.as_str()),
                    ("outcome", "closed"),
                ],
            ) == 1.0)
                .then_some(m)
        },
    )
    .await;
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_tcp_bytes_total",
            &[("listener", "raw"), ("direction", "to_upstream")]
        ),
        n
    );
    assert_eq!(
        m.sum(
            "sluice_tcp_bytes_total",
            &[("listener", "raw"), ("direction", "to_client")]
        ),
        n
    );
    assert_eq!(
        m.sum("sluice_tcp_active_connections", &[("listener", "raw")]),
        0.0
    );
    // The HTTP route still answers on its own listener.
    let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(status, 200);
    proxy.shutdown().await;
}

/// 24 MiB each way at once through an echo: the client writes without
/// reading for a while, so the echo and the proxy must hold back (bounded
/// buffers) rather than lose or reorder anything.
#[tokio::test]
async fn large_transfers_flow_both_ways_at_once_in_order() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let proxy = proxy_with(&http, &tcp_item("bulk", "127.0.0.1:0", echo, "")).await;
    let stream = TcpStream::connect(addr_of(&proxy, "bulk")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    const TOTAL: usize = 24 * 1024 * 1024;
    let pattern = |i: usize| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        let mut chunk = vec![0u8; 256 * 1024];
        while sent < TOTAL {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            write.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        write.shutdown().await.unwrap();
    });
    // Let the writer run ahead until every buffer on the way is full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "24 MiB cannot all be buffered");
    let mut received = 0usize;
    let mut buf = vec![0u8; 100_003];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf))
            .await
            .expect("echo keeps flowing")
            .unwrap();
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(received + j), "byte {} differs", received + j);
        }
        received += n;
    }
    writer.await.unwrap();
    assert_eq!(received, TOTAL);
    let m = scrape(proxy.admin_addr).await;
    for direction in ["to_upstream", "to_client"] {
        assert_eq!(
            m.sum(
                "sluice_tcp_bytes_total",
                &[("listener", "bulk"), ("direction", direction)]
            ),
            TOTAL as f64,
            "{direction}"
        );
    }
    proxy.shutdown().await;
}

/// An upstream that greets, closes its sending half, then reads until the
/// client's end and reports how many bytes it got.
async fn greet_then_count() -> (SocketAddr, tokio::sync::mpsc::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                stream.write_all(b"hello, then no more").await.unwrap();
                stream.shutdown().await.unwrap();
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await.unwrap();
                let _ = tx.send(got.len()).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn half_close_is_passed_on_in_each_direction() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let (greeter, mut counts) = greet_then_count().await;
    let items = format!(
        "{}{}",
        tcp_item("echo", "127.0.0.1:0", echo, ""),
        tcp_item("greeter", "127.0.0.1:0", greeter, "")
    );
    let proxy = proxy_with(&http, &items).await;

    // Client -> upstream: the client's FIN reaches the echo, which then
    // still sends back everything and closes.
    let mut stream = TcpStream::connect(addr_of(&proxy, "echo")).await.unwrap();
    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    let (closed, seen) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the echo closed after the client's FIN reached it");
    assert_eq!(seen, b"last words");

    // Upstream -> client: the greeter's FIN reaches the client, which can
    // still send, and the greeter receives it all.
    let mut stream = TcpStream::connect(addr_of(&proxy, "greeter"))
        .await
        .unwrap();
    let (closed, seen) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the greeter's FIN reached the client");
    assert_eq!(seen, b"hello, then no more");
    let after = vec![7u8; 100_000];
    stream.write_all(&after).await.unwrap();
    stream.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), counts.recv())
        .await
        .expect("the greeter reports")
        .unwrap();
    assert_eq!(got, after.len(), "bytes sent after the upstream's FIN");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_closes_the_client_and_is_counted() {
    let http = backend("stable").await;
    let nothing: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy_with(&http, &tcp_item("gone", "127.0.0.1:0", nothing, "")).await;
    let mut stream = TcpStream::connect(addr_of(&proxy, "gone")).await.unwrap();
    let (closed, seen) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed && seen.is_empty(), "closed without a byte");
    let upstream = nothing.to_string();
    let m = eventually(
        "the failure to be counted",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum(
                "sluice_tcp_connections_total",
                &[("listener", "gone"), ("outcome", "connect_error")],
            ) == 1.0)
                .then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_tcp_upstream_errors_total",
            &[
                ("listener", "gone"),
                ("upstream", upstream.as_str()),
                ("kind", "refused")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "sluice_tcp_connections_total",
            &[("listener", "gone"), ("outcome", "closed")]
        ),
        0.0,
        "every outcome is shown, at 0 until it happens"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unresolvable_upstream_is_counted_as_resolve() {
    let http = backend("stable").await;
    let proxy = start_proxy(&config(
        &http,
        "  - name: typo\n    listen: 127.0.0.1:0\n    upstream: no-such-host.invalid:5432\n",
    ))
    .await;
    let mut stream = TcpStream::connect(addr_of(&proxy, "typo")).await.unwrap();
    let (closed, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    eventually("the resolve error", Duration::from_secs(5), || async {
        let m = scrape(proxy.admin_addr).await;
        let resolve = m.sum(
            "sluice_tcp_upstream_errors_total",
            &[("listener", "typo"), ("kind", "resolve")],
        );
        let timeout = m.sum(
            "sluice_tcp_upstream_errors_total",
            &[("listener", "typo"), ("kind", "timeout")],
        );
        // A resolver without network may be slower than the connect timeout.
        (resolve + timeout == 1.0).then_some(())
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let proxy = proxy_with(
        &http,
        &tcp_item(
            "idle",
            "127.0.0.1:0",
            echo,
            "    timeouts: { idle: 400ms }\n",
        ),
    )
    .await;
    let addr = addr_of(&proxy, "idle");
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    quiet.write_all(b"once").await.unwrap();
    assert_eq!(read_n(&mut quiet, 4).await, b"once");
    // The busy one talks every 100 ms for 1.2 s: three idle timeouts long.
    for i in 0..12u8 {
        busy.write_all(&[i]).await.unwrap();
        assert_eq!(read_n(&mut busy, 1).await, [i]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (closed, _) = closed_within(&mut quiet, Duration::from_millis(10)).await;
    assert!(closed, "the quiet connection was closed by now");
    busy.write_all(b"still here").await.unwrap();
    assert_eq!(read_n(&mut busy, 10).await, b"still here");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_tcp_connections_total",
            &[("listener", "idle"), ("outcome", "idle_timeout")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

/// The real binary, with its file watch and serving threads: a reload
/// adds a TCP listener, changes its upstream (new connections go to the
/// new one, an open connection stays with the old), and removes it (the
/// port stops accepting; the open connection carries on).
#[tokio::test]
async fn a_reload_adds_changes_and_removes_a_tcp_listener() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let (greeter, _counts) = greet_then_count().await;
    let proxy = ChildProxy::start(
        &format!("  - name: web\n    stable: {}\n", http.url()),
        &["--workers", "2"],
    )
    .await;
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let reload = |upstream: Option<SocketAddr>| {
        let text = match upstream {
            Some(u) => format!(
                "{original}tcp_listeners:\n{}",
                tcp_item("side", &listen, u, "")
            ),
            None => original.clone(),
        };
        std::fs::write(&proxy.config_path, text).unwrap();
    };
    assert!(TcpStream::connect(&listen).await.is_err(), "not yet served");

    reload(Some(echo));
    let mut kept = eventually(
        "the added listener to echo",
        Duration::from_secs(10),
        || {
            let listen = listen.clone();
            async move {
                let mut s = TcpStream::connect(&listen).await.ok()?;
                s.write_all(b"ping").await.ok()?;
                let mut buf = [0u8; 4];
                tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                (&buf == b"ping").then_some(s)
            }
        },
    )
    .await;

    reload(Some(greeter));
    eventually(
        "new connections to reach the new upstream",
        Duration::from_secs(10),
        || {
            let listen = listen.clone();
            async move {
                let mut s = TcpStream::connect(&listen).await.ok()?;
                let (_, seen) = closed_within(&mut s, Duration::from_secs(2)).await;
                (seen == b"hello, then no more").then_some(())
            }
        },
    )
    .await;
    kept.write_all(b"old").await.unwrap();
    assert_eq!(
        read_n(&mut kept, 3).await,
        b"old",
        "the open connection stays"
    );

    reload(None);
    eventually(
        "the removed listener to stop accepting",
        Duration::from_secs(10),
        || {
            let listen = listen.clone();
            async move { TcpStream::connect(&listen).await.is_err().then_some(()) }
        },
    )
    .await;
    kept.write_all(b"carry on").await.unwrap();
    assert_eq!(read_n(&mut kept, 8).await, b"carry on");
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_config_reloads_total", &[("result", "success")]),
        3.0
    );
    assert_eq!(
        m.sum("sluice_config_reloads_total", &[("result", "failure")]),
        0.0
    );
}

/// A reload whose TCP address is taken is refused whole, naming the
/// field, and the config before it keeps serving.
#[tokio::test]
async fn a_reload_onto_a_taken_port_is_refused_naming_the_field() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let proxy = proxy_with(&http, &tcp_item("a", "127.0.0.1:0", echo, "")).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let text = config(
        &http,
        &format!(
            "{}{}",
            tcp_item("a", "127.0.0.1:0", echo, ""),
            tcp_item("b", &taken_addr.to_string(), echo, "")
        ),
    );
    let Err(err) = proxy
        .store
        .replace(sluice_proxy::Config::from_yaml(&text).unwrap())
    else {
        panic!("the reload onto {taken_addr} was accepted");
    };
    let err = err.to_string();
    assert!(
        err.starts_with(&format!(
            "tcp_listeners[1].listen: cannot listen on {taken_addr}"
        )),
        "{err}"
    );
    assert_eq!(proxy.tcp_listener_addr("b"), None);
    let mut s = TcpStream::connect(addr_of(&proxy, "a")).await.unwrap();
    s.write_all(b"ok").await.unwrap();
    assert_eq!(read_n(&mut s, 2).await, b"ok");
    // Closed first: an open connection would hold shutdown for its drain
    // timeout (30 s).
    drop(s);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_tcp_listener_configs_are_refused_naming_each_field() {
    let dir = TempDir::new("tcp-check");
    let file = dir.path.join("bad.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:18080\nadmin: { listen: 127.0.0.1:19901 }\n\
         listeners:\n  - { name: extra, listen: 127.0.0.1:18081 }\n\
         tcp_listeners:\n\
         \x20 - { name: extra, listen: 127.0.0.1:18082, upstream: 'db:5432' }\n\
         \x20 - { name: db, listen: 127.0.0.1:18080, upstream: 'tcp://db:5432' }\n\
         \x20 - { name: Cache, listen: nowhere, upstream: 'cache', timeouts: { connect: 0s, idle: 5 } }\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "tcp_listeners[0].name: `extra` is used by an earlier listener",
        "tcp_listeners[1].listen: 127.0.0.1:18080 is already used",
        "tcp_listeners[1].upstream: `tcp://db:5432` has a scheme",
        "tcp_listeners[2].name: `Cache` must be",
        "tcp_listeners[2].listen: `nowhere` is not an address",
        "tcp_listeners[2].upstream: `cache` has no port",
        "tcp_listeners[2].timeouts.connect: must be greater than 0",
        "tcp_listeners[2].timeouts.idle: `5` has no unit",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // A field no TCP listener has is a typo, named with its path.
    std::fs::write(
        &file,
        "listen: 127.0.0.1:18080\ntcp_listeners:\n  - { name: db, listen: 127.0.0.1:18082, upstrem: 'db:1' }\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tcp_listeners[0]"), "{stderr}");
    assert!(
        stderr.contains("upstrem") || stderr.contains("upstream"),
        "{stderr}"
    );
}

/// At shutdown an open TCP connection gets the drain timeout, then is
/// closed and counted.
#[tokio::test]
async fn shutdown_closes_open_connections_after_the_drain_timeout() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let text = config(&http, &tcp_item("raw", "127.0.0.1:0", echo, ""));
    let proxy = sluice_proxy::start(
        sluice_proxy::Config::from_yaml(&text).unwrap(),
        sluice_proxy::StartOptions {
            drain_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let metrics = proxy.store.metrics().clone();
    let mut s = TcpStream::connect(addr_of(&proxy, "raw")).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    assert_eq!(read_n(&mut s, 2).await, b"hi");
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    let (closed, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "closed once the drain timeout ran out");
    eventually(
        "the cut connection to be counted",
        Duration::from_secs(5),
        || {
            let m = Scrape::parse(&metrics.encode());
            async move {
                (m.sum(
                    "sluice_tcp_connections_total",
                    &[("listener", "raw"), ("outcome", "shutdown")],
                ) == 1.0)
                    .then_some(())
            }
        },
    )
    .await;
}

/// TCP connections have their own cap: at `limits.max_tcp_connections`
/// the next one is closed without a byte and counted `rejected`, while
/// HTTP clients still get in (TCP does not take `max_connections`' places);
/// a closed TCP connection gives its place back. A cap of 0 is refused
/// naming the field.
#[tokio::test]
async fn the_tcp_cap_refuses_the_next_connection_and_leaves_http_its_places() {
    let http = backend("stable").await;
    let echo = start_tcp_echo().await;
    let text = format!(
        "limits:\n  max_connections: 2\n  max_tcp_connections: 2\n{}",
        config(&http, &tcp_item("raw", "127.0.0.1:0", echo, ""))
    );
    let proxy = start_proxy(&text).await;
    let addr = addr_of(&proxy, "raw");
    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[i; 3]).await.unwrap();
        assert_eq!(read_n(&mut s, 3).await, [i; 3], "connection {i} forwarded");
        open.push(s);
    }
    // The third: accepted by the kernel, then closed by the proxy at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"hello").await;
    let (closed, got) = closed_within(&mut third, Duration::from_secs(5)).await;
    assert!(closed, "the connection over the cap is closed");
    assert!(got.is_empty(), "nothing forwarded over the cap: {got:?}");
    let upstream = echo.to_string();
    let outcome = |m: &Scrape, o: &str| {
        m.sum(
            "sluice_tcp_connections_total",
            &[
                ("listener", "raw"),
                ("upstream", upstream.as_str()),
                ("outcome", o),
            ],
        )
    };
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(outcome(&m, "rejected"), 1.0);
    assert_eq!(
        m.sum("sluice_tcp_active_connections", &[("listener", "raw")]),
        2.0
    );
    assert_eq!(
        m.sum("sluice_connections_rejected_total", &[]),
        0.0,
        "a TCP refusal is not an HTTP client's"
    );
    // Both TCP places are taken; HTTP's max_connections (2) is all HTTP's.
    for _ in 0..3 {
        let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
        assert_eq!(status, 200, "HTTP is accepted while TCP is at its cap");
    }
    // A TCP connection that ends gives its place back.
    let mut first = open.remove(0);
    first.shutdown().await.unwrap();
    let (closed, _) = closed_within(&mut first, Duration::from_secs(5)).await;
    assert!(closed);
    eventually(
        "the closed connection to be counted",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (outcome(&m, "closed") == 1.0).then_some(())
        },
    )
    .await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(b"back").await.unwrap();
    assert_eq!(read_n(&mut again, 4).await, b"back");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(outcome(&m, "rejected"), 1.0, "no more refusals");
    drop((open, again));
    proxy.shutdown().await;

    let dir = TempDir::new("tcp-cap");
    let file = dir.path.join("zero.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:18080\nlimits: { max_tcp_connections: 0 }\nroutes:\n  - { name: web, stable: 'http://127.0.0.1:1' }\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("limits.max_tcp_connections: must be at least 1"),
        "{stderr}"
    );
}

/// TCP listeners run on threads of their own: with the runtime that
/// started the proxy (the binary's admin runtime) blocked, bytes still go
/// through a TCP listener (to an echo on a plain thread). Were TCP served
/// on that runtime, nothing would move until it was free again.
#[tokio::test(flavor = "current_thread")]
async fn tcp_is_forwarded_while_the_starting_runtime_is_busy() {
    use std::io::{Read, Write};
    let http = backend("stable").await;
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = proxy_with(&http, &tcp_item("raw", "127.0.0.1:0", echo_addr, "")).await;
    let addr = addr_of(&proxy, "raw");
    // From here the test's own (single-threaded) runtime is blocked.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || w.write_all(&payload))
    };
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got)
        .expect("the bytes come back while the starting runtime is blocked");
    writer.join().unwrap().unwrap();
    assert_eq!(got, payload);
    drop(s);
    proxy.shutdown().await;
}
