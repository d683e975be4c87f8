//! The proxy's own 503s at `limits.max_requests_in_flight` are its refusals,
//! not a backend's failures: they are counted in
//! `sluice_rejected_total{reason="max_requests_in_flight"}` and on no
//! backend's series, so a slow stable filling the route's places never
//! makes a healthy canary show failures (nor the other way round).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use sluice_tests::*;

/// A backend whose answers wait until `release` turns true; how many
/// requests reached it.
async fn held_backend(release: tokio::sync::watch::Receiver<bool>) -> (String, Arc<AtomicUsize>) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let counted = arrived.clone();
    let addr = serve_http(move |_req| {
        let mut release = release.clone();
        let arrived = arrived.clone();
        async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            let _ = release.wait_for(|go| *go).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    (format!("http://{addr}"), counted)
}

#[tokio::test]
async fn requests_refused_at_the_in_flight_limit_count_on_no_backend() {
    let (release, held) = tokio::sync::watch::channel(false);
    let (stable, stable_arrived) = held_backend(held.clone()).await;
    let (canary, canary_arrived) = held_backend(held).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlimits:\n  max_requests_in_flight: 2\n\
         routes:\n  - name: web\n    stable: {stable}\n    canary: {canary}\n    canary_weight: 50\n"
    ))
    .await;
    let url = format!("http://{}/", proxy.addr);
    // Two requests take the route's two places: one on each arm.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.unwrap().0 })
        })
        .collect();
    eventually(
        "both held requests to reach their backends",
        Duration::from_secs(5),
        || async {
            (stable_arrived.load(Ordering::SeqCst) == 1
                && canary_arrived.load(Ordering::SeqCst) == 1)
                .then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = get(&url).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    release.send(true).unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
    let m = eventually(
        "the two answered requests to be counted",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum(
                "sluice_requests_total",
                &[("route", "web"), ("code", "200")],
            ) == 2.0)
                .then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.sum(
            "sluice_rejected_total",
            &[("route", "web"), ("reason", "max_requests_in_flight")]
        ),
        5.0
    );
    for backend in ["stable", "canary"] {
        let series = [("route", "web"), ("backend", backend)];
        assert_eq!(
            m.sum("sluice_requests_total", &series),
            1.0,
            "{backend}: only its answered request counts"
        );
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", backend),
                    ("classification", "failure")
                ]
            ),
            0.0,
            "{backend}: the proxy's refusals are no failure of the backend"
        );
    }
}
