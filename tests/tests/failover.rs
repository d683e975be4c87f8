//! A crashed canary costs users nothing it need not (issue #32): a request
//! the canary provably never started on (its connect refused, its HTTP/2
//! stream refused) goes to the stable instead, within the stable's retry
//! budget; the client gets the stable's answer, the canary is still
//! charged the failure (so the gate sees it exactly as before), and
//! `sluice_failovers_total{route}` counts it. A route with `failover: off`
//! answers 502 as before. The real binary, real sockets.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice_tests::*;

/// What the clients got: statuses and the backends that answered.
async fn send_all(requests: Vec<Request<Full<Bytes>>>) -> Vec<(StatusCode, Option<String>)> {
    let client = h1_client();
    let mut got = Vec::new();
    for req in requests {
        let (status, headers, _) = send(&client, req).await.unwrap();
        let backend = headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string());
        got.push((status, backend));
    }
    got
}

#[tokio::test]
async fn a_request_the_canary_never_started_goes_to_the_stable_and_still_charges_the_canary() {
    let stable = backend("stable").await;
    let dead = free_port();
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: web, stable: '{}', canary: 'http://127.0.0.1:{dead}', canary_weight: 50 }}\n  - {{ name: off, path_prefix: /off, stable: '{}', canary: 'http://127.0.0.1:{dead}', canary_weight: 50, failover: off }}\n",
            stable.url(),
            stable.url()
        ),
        &[],
    )
    .await;
    // GETs, small POSTs (read ahead whole) and a POST larger than the
    // read-ahead (nothing of it left the proxy: the connect failed first).
    let requests = |prefix: &str| {
        let mut all = Vec::new();
        for i in 0..30 {
            let url = format!("http://{}{prefix}/{i}", proxy.addr);
            let body = match i % 3 {
                0 => None,
                1 => Some(Bytes::from_static(b"a small body")),
                _ => Some(Bytes::from(vec![b'x'; 100_000])),
            };
            all.push(match body {
                None => Request::get(url).body(Full::default()).unwrap(),
                Some(body) => Request::post(url).body(Full::new(body)).unwrap(),
            });
        }
        all
    };
    let got = send_all(requests("")).await;
    assert!(
        got.iter()
            .all(|(status, backend)| *status == StatusCode::OK
                && backend.as_deref() == Some("stable")),
        "every client got the stable's answer: {got:?}"
    );
    let m = scrape(proxy.admin).await;
    let canary_failures = m.sum(
        "sluice_requests_total",
        &[
            ("route", "web"),
            ("backend", "canary"),
            ("classification", "failure"),
        ],
    );
    assert_eq!(
        canary_failures, 15.0,
        "the exact split's canary half, each charged"
    );
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("backend", "canary"), ("code", "502")]
        ),
        15.0
    );
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "web"), ("backend", "canary"), ("kind", "connect")]
        ),
        15.0
    );
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "web")]), 15.0);
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("backend", "stable"), ("code", "200")]
        ),
        30.0,
        "the stable answered every request, its own and the canary's"
    );

    // Turned off: the canary's requests get the proxy's 502.
    let got = send_all(requests("/off")).await;
    let refused = got
        .iter()
        .filter(|(status, _)| *status == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(refused, 15, "{got:?}");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "off")]), 0.0);
}

#[tokio::test]
async fn a_stream_an_http2_canary_refused_goes_to_the_stable() {
    let (stable, stable_streams) = h2_refusing_backend("stable", 0).await;
    let (canary, canary_streams) = h2_refusing_backend("canary", usize::MAX).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: grpc, protocol: http2, stable: 'http://{stable}', canary: 'http://{canary}', canary_weight: 100 }}\n"
        ),
        &[],
    )
    .await;
    // Bodiless GETs, and POSTs whose bodies were read ahead whole: each
    // can be sent again, so each goes to the stable, the body whole.
    let requests = (0..10)
        .map(|i| {
            let (method, body) = match i % 2 {
                0 => (http::Method::GET, Bytes::new()),
                _ => (http::Method::POST, Bytes::from(format!("payload {i}"))),
            };
            Request::builder()
                .method(method)
                .uri(format!("http://{}/svc/{i}", proxy.addr))
                .body(Full::new(body))
                .unwrap()
        })
        .collect::<Vec<_>>();
    let client = h1_client();
    for (i, req) in requests.into_iter().enumerate() {
        let (status, headers, body) = send(&client, req).await.unwrap();
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(headers["x-backend"], "stable", "request {i}");
        let sent = if i % 2 == 0 {
            String::new()
        } else {
            format!("payload {i}")
        };
        assert_eq!(
            body,
            sent.as_bytes(),
            "request {i}: the body the stable read"
        );
    }
    assert_eq!(stable_streams.load(Ordering::SeqCst), 10);
    assert!(
        canary_streams.load(Ordering::SeqCst) >= 10,
        "every request was offered to the canary first"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "grpc")]), 10.0);
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "grpc"),
                ("backend", "canary"),
                ("classification", "failure")
            ]
        ),
        10.0
    );
}
