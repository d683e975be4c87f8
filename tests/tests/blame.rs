//! A backend is charged only for what it did: crafted requests on real
//! 127.0.0.1 sockets, against the real `sluice-proxy` binary, for the
//! findings of the cold review of proxy-31 that still applied.
//!
//! - A client that leaves before anything of its request was written to
//!   the backend is no 499 on it (counted as
//!   `sluice_client_errors_total{kind="left_before_sent"}`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sluice_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

/// An HTTP/2 connection to the proxy (prior knowledge).
async fn h2_connect(proxy: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
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

    let m = eventually(
        "both requests to be counted as clients that left",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin).await;
            let left = m.sum(
                "sluice_client_errors_total",
                &[("route", "r"), ("kind", "left_before_sent")],
            );
            (left == 2.0).then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "r")]),
        0.0,
        "a request never written was counted on its backend"
    );
}
