//! gRPC-Web calls are judged by their HTTP status: their `grpc-status` is
//! inside the body (a trailer frame, flag 0x80), never in HTTP trailers, so
//! the proxy must not read them as gRPC calls that ended without a status
//! (`UNKNOWN`, a failure). Plain gRPC keeps its `grpc-status` rules.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::Full;
use sluice_tests::*;

/// A gRPC-Web body: one message, then the trailer frame that says OK.
fn grpc_web_ok_body() -> Bytes {
    let trailer = b"grpc-status:0\r\ngrpc-message:\r\n";
    let mut body = BytesMut::from(&grpc_frame(b"hello")[..]);
    body.put_u8(0x80);
    body.put_u32(trailer.len() as u32);
    body.put_slice(trailer);
    body.freeze()
}

/// Answers 200 with the `content-type` the request asks for in `x-ct`:
/// a gRPC-Web body whose in-body trailer says OK; or, asked for a head
/// status in `x-head-status`, a trailers-only answer: that `grpc-status`
/// in the head and no body.
async fn grpc_web_backend() -> std::net::SocketAddr {
    serve_http(|req: Request<hyper::body::Incoming>| async move {
        let content_type = req
            .headers()
            .get("x-ct")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("application/grpc-web+proto"));
        match req.headers().get("x-head-status").cloned() {
            Some(status) => Response::builder()
                .header("content-type", content_type)
                .header("grpc-status", status)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            None => Response::builder()
                .header("content-type", content_type)
                .body(Full::new(grpc_web_ok_body()))
                .unwrap(),
        }
    })
    .await
}

#[tokio::test]
async fn successful_grpc_web_calls_count_as_successes_on_both_arms() {
    let stable = grpc_web_backend().await;
    let canary = grpc_web_backend().await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: http://{stable}\n    canary: http://{canary}\n    canary_weight: 50\n"
    )))
    .await;
    let url = format!("http://{}/pkg.Svc/Call", proxy.addr);
    let kinds = [
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
    ];
    for http2 in [false, true] {
        let client = if http2 { h2_client() } else { h1_client() };
        for kind in kinds {
            let req = Request::post(&url)
                .header("content-type", kind)
                .header("x-ct", kind)
                .body(Full::new(grpc_frame(b"hi")))
                .unwrap();
            let (status, headers, body) = send(&client, req).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], kind);
            assert_eq!(
                body,
                grpc_web_ok_body(),
                "the in-body trailer reaches the client"
            );
        }
    }
    let weighted = |backend: &'static str, class: &'static str| {
        [
            ("route", "web"),
            ("backend", backend),
            ("code", "200"),
            ("classification", class),
            ("decision", "weight"),
        ]
    };
    let m = eventually(
        "the eight gRPC-Web calls to be counted",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum("sluice_requests_total", &[("route", "web")]) == 8.0).then_some(m)
        },
    )
    .await;
    for backend in ["stable", "canary"] {
        assert_eq!(
            m.sum("sluice_requests_total", &weighted(backend, "success")),
            4.0,
            "{backend}: every OK gRPC-Web call is a success"
        );
        assert_eq!(
            m.sum("sluice_requests_total", &weighted(backend, "failure")),
            0.0,
            "{backend}: no OK gRPC-Web call is a failure"
        );
    }

    // Plain gRPC is still judged by grpc-status: a 200 that ends without
    // one is UNKNOWN, a failure.
    let req = Request::post(&url)
        .header("content-type", "application/grpc")
        .header("x-ct", "application/grpc+proto")
        .body(Full::new(grpc_frame(b"hi")))
        .unwrap();
    let (status, _, _) = send(&h2_client(), req).await.unwrap();
    assert_eq!(status, 200);
    eventually(
        "the plain gRPC call without a status to count as a failure",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum(
                "sluice_requests_total",
                &[("route", "web"), ("classification", "failure")],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;

    // A trailers-only gRPC-Web answer carries its status in the head, and
    // is judged by it: UNAVAILABLE is a failure, OK is not.
    for (http2, status) in [(false, "14"), (true, "14"), (false, "0"), (true, "0")] {
        let client = if http2 { h2_client() } else { h1_client() };
        let req = Request::post(&url)
            .header("content-type", "application/grpc-web+proto")
            .header("x-head-status", status)
            .body(Full::new(grpc_frame(b"hi")))
            .unwrap();
        let (code, headers, _) = send(&client, req).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(headers["grpc-status"], status);
    }
    eventually(
        "the two trailers-only UNAVAILABLE gRPC-Web answers to count as failures",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            let count = |class| {
                m.sum(
                    "sluice_requests_total",
                    &[("route", "web"), ("classification", class)],
                )
            };
            (count("failure") == 3.0 && count("success") == 10.0).then_some(())
        },
    )
    .await;
}
