//! An A/B request (a `canary_match` rule) that the canary never started and
//! that failed over to the stable stays A/B traffic: it is counted on the
//! stable with `decision="match"`, never in the stable's `decision="weight"`
//! series, which the gate reads as the reference the canary is judged
//! against.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice_tests::*;

#[tokio::test]
async fn an_ab_request_failed_over_to_the_stable_is_not_weighted_stable_traffic() {
    let stable = backend("stable").await;
    let dead = free_port();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: {}\n    canary: http://127.0.0.1:{dead}\n    canary_weight: 0\n    canary_match:\n      - header: x-canary\n        value: always\n",
        stable.url()
    )))
    .await;
    let client = h1_client();
    for i in 0..4 {
        let req = Request::get(format!("http://{}/ab/{i}", proxy.addr))
            .header("x-canary", "always")
            .body(Full::<Bytes>::default())
            .unwrap();
        let (status, headers, _) = send(&client, req).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "the stable answers in the canary's place"
        );
        assert_eq!(headers["x-backend"], "stable");
    }
    // Two plain requests: weighted, on the stable (the weight is 0).
    for i in 0..2 {
        let (status, _, _) = get(&format!("http://{}/plain/{i}", proxy.addr))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let m = eventually(
        "the four failovers to be counted",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum("sluice_failovers_total", &[("route", "web")]) == 4.0).then_some(m)
        },
    )
    .await;
    let count = |backend: &str, decision: &str, class: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", backend),
                ("decision", decision),
                ("classification", class),
            ],
        )
    };
    assert_eq!(
        count("stable", "weight", "success"),
        2.0,
        "only the plain requests are weighted stable traffic"
    );
    assert_eq!(
        count("stable", "match", "success"),
        4.0,
        "the A/B requests the stable served stay A/B traffic"
    );
    assert_eq!(
        count("canary", "match", "failure"),
        4.0,
        "the canary is still charged the requests it refused"
    );
    assert_eq!(
        count("canary", "weight", "success") + count("canary", "weight", "failure"),
        0.0
    );
}

/// A sticky request (header affinity) that failed over stays
/// `decision="affinity"` on the stable, as the canary's share of it was.
#[tokio::test]
async fn a_sticky_request_failed_over_to_the_stable_keeps_its_affinity_decision() {
    let stable = backend("stable").await;
    let dead = free_port();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: {}\n    canary: http://127.0.0.1:{dead}\n    canary_weight: 100\n    affinity: {{ header: x-user }}\n",
        stable.url()
    )))
    .await;
    let client = h1_client();
    for i in 0..3 {
        let req = Request::get(format!("http://{}/{i}", proxy.addr))
            .header("x-user", format!("user-{i}"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let (status, headers, _) = send(&client, req).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-backend"], "stable");
    }
    let m = eventually(
        "the three failovers to be counted",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum("sluice_failovers_total", &[("route", "web")]) == 3.0).then_some(m)
        },
    )
    .await;
    let stable_by = |decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", "stable"),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(stable_by("affinity"), 3.0);
    assert_eq!(stable_by("weight"), 0.0);
}
