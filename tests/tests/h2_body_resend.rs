//! An HTTP/2 client's request with a small body that came whole with its
//! head (a unary gRPC call: HEADERS, then DATA with END_STREAM) is sent
//! again when the backend refuses the stream (`REFUSED_STREAM`, which
//! promises no work was done): retried on the same backend, or failed over
//! from a canary to the stable, as an HTTP/1.1 client's is. A body that has
//! not all come still streams at once, never held back.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use sluice_tests::*;

/// POSTs `body` on a fresh HTTP/2 connection, head and whole body queued
/// before the connection writes (so they leave together, as a unary gRPC
/// call's do); the status, `x-backend` and the answer's body.
async fn post_whole(
    addr: std::net::SocketAddr,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, String, Vec<u8>) {
    post_frames(addr, path, vec![Bytes::from_static(body)]).await
}

/// As [`post_whole`], the body in DATA frames of `frames` (the last one
/// ends the stream).
async fn post_frames(
    addr: std::net::SocketAddr,
    path: &str,
    frames: Vec<Bytes>,
) -> (StatusCode, String, Vec<u8>) {
    let mut client = h2_connect(addr).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (answer, mut sending) = client.send_request(req, false).unwrap();
    let last = frames.len() - 1;
    for (i, frame) in frames.into_iter().enumerate() {
        sending.send_data(frame, i == last).unwrap();
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let status = answer.status();
    let backend = answer
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let read = read_h2_body(&mut answer.into_body()).await;
    (status, backend, read)
}

#[tokio::test]
async fn a_whole_http2_body_is_resent_after_refused_stream() {
    let (stable, _) = h2_refusing_backend("stable", 0).await;
    let (dead_canary, _) = h2_refusing_backend("canary", usize::MAX).await;
    let (flaky_canary, flaky_streams) = h2_refusing_backend("flaky", 1).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: failover, path_prefix: /failover, protocol: http2, stable: 'http://{stable}', canary: 'http://{dead_canary}', canary_weight: 100 }}\n\
         \x20 - {{ name: retry, path_prefix: /retry, protocol: http2, stable: 'http://{flaky_canary}' }}\n"
    )))
    .await;

    // A canary that refuses every stream: the call goes to the stable,
    // its body whole.
    let (status, backend, body) = post_whole(proxy.addr, "/failover/unary", b"unary call").await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "stable"));
    assert_eq!(body, b"unary call");

    // A backend that refuses one stream: sent again to it, body whole.
    let (status, backend, body) = post_whole(proxy.addr, "/retry/unary", b"once more").await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "flaky"));
    assert_eq!(body, b"once more");
    assert_eq!(
        flaky_streams.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "refused once, then answered"
    );

    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum("sluice_failovers_total", &[("route", "failover")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "sluice_upstream_retries_total",
            &[("route", "retry"), ("backend", "stable")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "failover"),
                ("backend", "stable"),
                ("code", "200")
            ]
        ),
        1.0
    );
}

/// A body that came whole however it was framed is sent again whole:
/// 16 KiB and then an empty frame that ends the stream; or a thousand
/// frames of one byte (read ahead into one buffer).
#[tokio::test]
async fn a_whole_http2_body_in_odd_frames_is_resent_whole() {
    let (stable, _) = h2_refusing_backend("stable", 0).await;
    let (dead_canary, _) = h2_refusing_backend("canary", usize::MAX).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: failover, stable: 'http://{stable}', canary: 'http://{dead_canary}', canary_weight: 100, protocol: http2 }}\n"
    )))
    .await;
    let full = Bytes::from(vec![b'x'; 16 * 1024]);
    let (status, backend, body) = post_frames(
        proxy.addr,
        "/at-the-limit",
        vec![full.clone(), Bytes::new()],
    )
    .await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "stable"));
    assert_eq!(body, full);
    let bytes: Vec<Bytes> = (0..1000u32)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8]))
        .collect();
    let expected: Vec<u8> = bytes.iter().flat_map(|b| b.to_vec()).collect();
    let (status, backend, body) = post_frames(proxy.addr, "/tiny-frames", bytes).await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "stable"));
    assert_eq!(body, expected);
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum("sluice_failovers_total", &[("route", "failover")]),
        2.0
    );
}

/// A body still on its way streams at once: the backend gets the first
/// part, and answers, before the client sends the rest.
#[tokio::test]
async fn an_http2_body_not_yet_whole_is_not_held_back() {
    let (first_seen, seen) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let first_seen = std::sync::Arc::new(std::sync::Mutex::new(Some(first_seen)));
    let backend = serve_h2(move |req, mut respond| {
        let first_seen = first_seen.clone();
        async move {
            let mut body = req.into_body();
            let first = body.data().await.unwrap().unwrap();
            let _ = body.flow_control().release_capacity(first.len());
            if let Some(tx) = first_seen.lock().unwrap().take() {
                let _ = tx.send(first.to_vec());
            }
            let answer = http::Response::builder().body(()).unwrap();
            if let Ok(mut sending) = respond.send_response(answer, false) {
                let _ = sending.send_data(first, false);
                let rest = read_h2_body(&mut body).await;
                let _ = sending.send_data(Bytes::from(rest), true);
            }
        }
    })
    .await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: stream, protocol: http2, stable: 'http://{backend}' }}\n"
    )))
    .await;
    let mut client = h2_connect(proxy.addr).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/stream", proxy.addr))
        .body(())
        .unwrap();
    let (answer, mut sending) = client.send_request(req, false).unwrap();
    sending
        .send_data(Bytes::from_static(b"first"), false)
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .expect("the backend gets the first part before the body ends")
        .unwrap();
    assert_eq!(first, b"first");
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the answer's head before the body ends")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    sending
        .send_data(Bytes::from_static(b" rest"), true)
        .unwrap();
    let body = read_h2_body(&mut answer.into_body()).await;
    assert_eq!(body, b"first rest");
}
