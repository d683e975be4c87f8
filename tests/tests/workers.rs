//! The exact split and the metrics under the production threading: the
//! real binary with several per-core serving threads, each with its own
//! listener socket, connections and upstream pools, fed by many client
//! connections over HTTP/1.1 and HTTP/2 at once.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice_loadtest::backend::{BackendOptions, Faults};
use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_and_the_metrics_stay_exact_across_serving_threads() {
    // Realistic noise: both backends fail 1% of requests.
    let noisy = |name: &str| BackendOptions {
        faults: Faults {
            error_rate: 0.01,
            ..Faults::default()
        },
        ..BackendOptions::new(name)
    };
    let stable = sluice_loadtest::start_backend(noisy("stable"))
        .await
        .unwrap();
    let canary = sluice_loadtest::start_backend(noisy("canary"))
        .await
        .unwrap();
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: web, stable: '{}', canary: '{}', canary_weight: 12.34 }}\n",
            stable.url(),
            canary.url()
        ),
        &["--workers", "3"],
    )
    .await;
    let url = format!("http://{}/", proxy.addr);
    // 48 HTTP/1.1 connections and 8 HTTP/2 ones, each its own client so
    // the kernel spreads them over the serving threads' sockets.
    const PER_CLIENT: usize = 90;
    let mut tasks = Vec::new();
    for i in 0..56 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = if i < 48 { h1_client() } else { h2_client() };
            let mut codes = Vec::with_capacity(PER_CLIENT);
            for _ in 0..PER_CLIENT {
                let req = Request::get(&url).body(Full::<Bytes>::default()).unwrap();
                let (status, _, _) =
                    tokio::time::timeout(Duration::from_secs(10), send(&client, req))
                        .await
                        .expect("a request through the proxy took over 10 s")
                        .expect("request through the proxy");
                codes.push(status);
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    let total = codes.len() as u64;
    assert_eq!(total, 56 * PER_CLIENT as u64);
    let (s, c) = (stable.stats(), canary.stats());
    assert_eq!(
        s.requests + c.requests,
        total,
        "every request reached one backend once"
    );
    // floor(5040 · 1234 / 10000) = 621: exact, however the threads interleaved.
    assert_eq!(c.requests, total * 1234 / 10_000, "canary requests");
    let errors = codes
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count() as u64;
    assert_eq!(
        errors,
        s.by_status.get(&500).copied().unwrap_or(0) + c.by_status.get(&500).copied().unwrap_or(0)
    );
    assert!(
        errors > 0,
        "the 1% error baseline produced no error in {total} requests"
    );

    let m = scrape(proxy.admin).await;
    for (backend, stats) in [("stable", &s), ("canary", &c)] {
        let labels = [("route", "web"), ("backend", backend)];
        assert_eq!(
            m.sum("sluice_requests_total", &labels),
            stats.requests as f64,
            "{backend}: requests counted across the threads' shards"
        );
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[("route", "web"), ("backend", backend), ("code", "500")]
            ),
            stats.by_status.get(&500).copied().unwrap_or(0) as f64,
            "{backend}: 500s"
        );
        assert_eq!(
            m.sum("sluice_request_duration_seconds_count", &labels),
            stats.requests as f64,
            "{backend}: histogram count"
        );
    }
    assert_eq!(m.sum("sluice_upstream_errors_total", &[]), 0.0);
}

/// The split stays exact across serving threads on every route kind: a
/// route with an A/B rule (requests that match none), one with cookie
/// affinity (clients without a cookie, placed by the split), one that
/// mirrors the stable's requests, and one to HTTP/2 backends; over
/// HTTP/1.1 and HTTP/2 clients at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_stays_exact_across_serving_threads_on_every_route_kind() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let (s, c) = (stable.url(), canary.url());
    let routes = format!(
        "  - {{ name: ab, path_prefix: /ab, stable: '{s}', canary: '{c}', canary_weight: 12.34, canary_match: [{{ header: x-canary, value: always }}] }}\n  - {{ name: sticky, path_prefix: /sticky, stable: '{s}', canary: '{c}', canary_weight: 12.34, affinity: {{ cookie: web-version }} }}\n  - {{ name: mirror, path_prefix: /mirror, stable: '{s}', canary: '{c}', canary_weight: 12.34, mirror: {{ percent: 20 }} }}\n  - {{ name: h2, path_prefix: /h2, protocol: http2, stable: '{s}', canary: '{c}', canary_weight: 12.34 }}\n"
    );
    let proxy = ChildProxy::start(&routes, &["--workers", "3"]).await;
    const ROUTES: [&str; 4] = ["ab", "sticky", "mirror", "h2"];
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 50;
    let mut tasks = Vec::new();
    for route in ROUTES {
        for i in 0..CLIENTS {
            let url = format!("http://{}/{route}/x", proxy.addr);
            tasks.push(tokio::spawn(async move {
                // Each request on a client of its own kind; no cookie is
                // ever sent back, so every request is placed by the split.
                let client = if i % 4 == 0 { h2_client() } else { h1_client() };
                for _ in 0..PER_CLIENT {
                    let req = Request::get(&url).body(Full::<Bytes>::default()).unwrap();
                    let (status, _, _) =
                        tokio::time::timeout(Duration::from_secs(10), send(&client, req))
                            .await
                            .expect("a request through the proxy took over 10 s")
                            .expect("request through the proxy");
                    assert_eq!(status, StatusCode::OK);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    let m = eventually(
        "every answer to be counted",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin).await;
            ROUTES
                .iter()
                .all(|route| {
                    m.sum(
                        "sluice_requests_total",
                        &[("route", route), ("decision", "weight")],
                    ) == total as f64
                })
                .then_some(m)
        },
    )
    .await;
    for route in ROUTES {
        // floor(1000 · 1234 / 10000) = 123: exact, however the threads
        // interleaved.
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[
                    ("route", route),
                    ("backend", "canary"),
                    ("decision", "weight")
                ]
            ),
            (total * 1234 / 10_000) as f64,
            "{route}: canary requests by weight"
        );
    }
}
