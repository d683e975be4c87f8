//! A route's baseline arm (`baseline`) through the real proxy on
//! 127.0.0.1: a third backend that the exact split gives the canary's
//! share, with its own `backend="baseline"` series; cookie and header
//! affinity can name it; A/B rules and mirror copies never reach it; a
//! weight over 50 with it is refused naming the field (file and admin
//! API); the admin API and a reload add and remove it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use sluice_tests::*;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Three backends answering with their names in `x-backend`.
async fn three_backends() -> (BackendHandle, BackendHandle, BackendHandle) {
    (
        backend("stable").await,
        backend("canary").await,
        backend("baseline").await,
    )
}

/// Route `web` with a baseline arm at `weight`, plus `extra` YAML lines
/// (indented by four).
fn baseline_route(
    stable: &BackendHandle,
    canary: &BackendHandle,
    baseline: &BackendHandle,
    weight: f64,
    extra: &str,
) -> String {
    format!(
        "  - name: web\n    stable: {}\n    canary: {}\n    baseline: {}\n    canary_weight: {weight}\n{extra}",
        stable.url(),
        canary.url(),
        baseline.url()
    )
}

/// floor and ceil of n·w/W.
fn bounds(n: u64, weight_bp: u64) -> (u64, u64) {
    let exact = n * weight_bp;
    (exact / 10_000, exact.div_ceil(10_000))
}

/// Sends `req` and returns the backend that answered and the response's
/// `set-cookie`, if any.
async fn answered_by(client: &Client, req: Request<Full<Bytes>>) -> (String, Option<String>) {
    let (status, headers, _) = send(client, req).await.expect("request through the proxy");
    assert_eq!(status, StatusCode::OK);
    let backend = headers["x-backend"].to_str().unwrap().to_string();
    let cookie = headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (backend, cookie)
}

async fn backend_of(client: &Client, url: &str) -> String {
    answered_by(client, Request::get(url).body(Full::default()).unwrap())
        .await
        .0
}

async fn put_route(admin: std::net::SocketAddr, body: serde_json::Value) -> (StatusCode, String) {
    let (status, answer) = put_json(&format!("http://{admin}/routes/web"), body, None).await;
    let text = answer["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| answer.to_string());
    (status, text)
}

async fn routes(admin: std::net::SocketAddr) -> serde_json::Value {
    let (_, _, body) = get(&format!("http://{admin}/routes")).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn canary_and_baseline_each_get_exactly_their_share_after_every_request() {
    let (stable, canary, baseline) = three_backends().await;
    let proxy = start_proxy(&proxy_yaml(&baseline_route(
        &stable, &canary, &baseline, 10.0, "",
    )))
    .await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    for (weight, weight_bp) in [(10.0, 1000u64), (33.33, 3333), (50.0, 5000), (0.0, 0)] {
        let (status, body) = put_route(proxy.admin_addr, json!({ "canary_weight": weight })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (mut to_canary, mut to_baseline, mut last) = (0u64, 0u64, String::new());
        for n in 1..=300u64 {
            let backend = backend_of(&client, &url).await;
            match backend.as_str() {
                "canary" => to_canary += 1,
                "baseline" => to_baseline += 1,
                other => assert_eq!(other, "stable"),
            }
            let (lo, hi) = bounds(n, weight_bp);
            assert!(
                (lo..=hi).contains(&to_canary) && (lo..=hi).contains(&to_baseline),
                "weight {weight}: after {n} requests canary {to_canary}, baseline {to_baseline}, expected each in {lo}..={hi}"
            );
            if backend != "stable" {
                assert_ne!(
                    backend, last,
                    "weight {weight}, request {n}: canary and baseline picks alternate"
                );
                last = backend;
            }
        }
    }
    // 300 at each weight. At 33.33% the two arms together got
    // floor(300 * 6666 / 10000) = 199: the canary 100, the baseline 99.
    assert_eq!(canary.stats().requests, 30 + 100 + 150);
    assert_eq!(baseline.stats().requests, 30 + 99 + 150);
    assert_eq!(stable.stats().requests, 1200 - 280 - 279);
}

/// The production threading: the binary with two serving threads, many
/// HTTP/1.1 and HTTP/2 connections at once; the counts stay exact and
/// `/metrics` holds the baseline's series with the canary's labels and
/// buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_way_split_and_its_metrics_stay_exact_across_two_serving_threads() {
    let (stable, canary, baseline) = three_backends().await;
    let routes = format!(
        "{}  - {{ name: plain, path_prefix: /plain, stable: '{}', canary: '{}', canary_weight: 10 }}\n",
        baseline_route(&stable, &canary, &baseline, 12.34, ""),
        stable.url(),
        canary.url()
    );
    let proxy = ChildProxy::start(&routes, &["--workers", "2"]).await;
    const CLIENTS: usize = 40;
    const PER_CLIENT: usize = 50;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let url = format!("http://{}/x", proxy.addr);
        tasks.push(tokio::spawn(async move {
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
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    let (s, c, b) = (stable.stats(), canary.stats(), baseline.stats());
    assert_eq!(s.requests + c.requests + b.requests, total);
    // The two arms together: floor(2000 * 2468 / 10000) = 493; the
    // baseline floor(493 / 2) = 246 = floor(2000 * 1234 / 10000), the
    // canary the other 247.
    assert_eq!(b.requests, 246, "baseline requests");
    assert_eq!(c.requests, 247, "canary requests");

    let m = scrape(proxy.admin).await;
    for (backend, stats) in [("stable", &s), ("canary", &c), ("baseline", &b)] {
        let labels = [("route", "web"), ("backend", backend)];
        let weighted = [
            ("route", "web"),
            ("backend", backend),
            ("decision", "weight"),
        ];
        assert_eq!(
            m.sum("sluice_requests_total", &weighted),
            stats.requests as f64,
            "{backend}: weighted requests"
        );
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", backend),
                    ("code", "200"),
                    ("classification", "success")
                ]
            ),
            stats.requests as f64,
            "{backend}: successes"
        );
        assert_eq!(
            m.sum("sluice_request_duration_seconds_count", &labels),
            stats.requests as f64,
            "{backend}: histogram count"
        );
    }
    let les = |backend: &str| -> Vec<f64> {
        m.buckets(
            "sluice_request_duration_seconds_bucket",
            &[("route", "web"), ("backend", backend)],
        )
        .into_iter()
        .map(|(le, _)| le)
        .collect()
    };
    assert!(les("canary").len() > 70, "{:?}", les("canary"));
    assert_eq!(les("baseline"), les("canary"), "the same bucket layout");
    // A route without a baseline has no baseline series.
    assert!(
        m.matching(
            "sluice_requests_total",
            &[("route", "plain"), ("backend", "baseline")]
        )
        .next()
        .is_none(),
        "a route without a baseline shows none"
    );
}

#[tokio::test]
async fn cookie_affinity_places_clients_on_the_baseline_and_keeps_them_there() {
    let (stable, canary, baseline) = three_backends().await;
    let extra = "    affinity: { cookie: app }\n";
    let proxy = start_proxy(&proxy_yaml(&baseline_route(
        &stable, &canary, &baseline, 20.0, extra,
    )))
    .await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    // New clients (no cookie) are placed by the exact split, and each
    // answer names the backend in its cookie.
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut placed: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..50 {
        let (backend, cookie) =
            answered_by(&client, Request::get(&url).body(Full::default()).unwrap()).await;
        let cookie = cookie.expect("a client placed by the split gets a cookie");
        let value = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("app=")
            .unwrap()
            .to_string();
        assert!(
            value.starts_with(&format!("{backend}.")),
            "{backend} answered, cookie {cookie}"
        );
        *placed.entry(backend.clone()).or_default() += 1;
        cookies.insert(backend, value);
    }
    assert_eq!(placed["baseline"], 10, "{placed:?}");
    assert_eq!(placed["canary"], 10, "{placed:?}");
    // A client with the baseline's cookie stays there, outside the count.
    for _ in 0..15 {
        let req = Request::get(&url)
            .header("cookie", format!("other=1; app={}", cookies["baseline"]))
            .body(Full::default())
            .unwrap();
        let (backend, cookie) = answered_by(&client, req).await;
        assert_eq!(backend, "baseline");
        assert_eq!(cookie, None, "an affine request gets no new cookie");
    }
    let m = scrape(proxy.admin_addr).await;
    let count = |backend: &str, decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", backend),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(count("baseline", "affinity"), 15.0);
    assert_eq!(count("baseline", "weight"), 10.0);
    assert_eq!(count("canary", "weight"), 10.0);
    // The weighted sequence went on as if the affine requests were not
    // there: the next 50 new clients bring each arm to exactly 20 of 100.
    for _ in 0..50 {
        backend_of(&client, &url).await;
    }
    let m = scrape(proxy.admin_addr).await;
    for backend in ["canary", "baseline"] {
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", backend),
                    ("decision", "weight")
                ]
            ),
            20.0,
            "{backend}"
        );
    }
    // Once the baseline leaves the route, its cookies lapse: the client is
    // placed again (and never reaches the old baseline).
    let (status, body) = put_route(proxy.admin_addr, json!({ "baseline": null })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = baseline.stats().requests;
    for _ in 0..5 {
        let req = Request::get(&url)
            .header("cookie", format!("app={}", cookies["baseline"]))
            .body(Full::default())
            .unwrap();
        let (backend, cookie) = answered_by(&client, req).await;
        assert_ne!(backend, "baseline");
        assert!(cookie.is_some(), "the stale cookie is overwritten");
    }
    assert_eq!(baseline.stats().requests, before);
}

#[tokio::test]
async fn header_affinity_sends_each_hashed_user_to_canary_baseline_or_stable() {
    let (stable, canary, baseline) = three_backends().await;
    let extra = "    affinity: { header: x-user }\n";
    let proxy = start_proxy(&proxy_yaml(&baseline_route(
        &stable, &canary, &baseline, 20.0, extra,
    )))
    .await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..2 {
        for i in 0..300 {
            let user = format!("user-{i}");
            let bucket = sluice_proxy::affinity::bucket(user.as_bytes());
            let expected = if bucket < 2000 {
                "canary"
            } else if bucket < 4000 {
                "baseline"
            } else {
                "stable"
            };
            let req = Request::get(&url)
                .header("x-user", &user)
                .body(Full::default())
                .unwrap();
            let (backend, _) = answered_by(&client, req).await;
            assert_eq!(backend, expected, "{user} (bucket {bucket}), round {round}");
            if round == 0 {
                *per_backend.entry(backend).or_default() += 1;
            }
        }
    }
    // Every arm got some users (the hash spreads them).
    for arm in ["canary", "baseline", "stable"] {
        assert!(
            per_backend.get(arm).copied().unwrap_or(0) > 20,
            "{per_backend:?}"
        );
    }
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", "baseline"),
                ("decision", "affinity")
            ]
        ),
        2.0 * per_backend["baseline"] as f64
    );
    // Requests without the header take the weighted split.
    let mut without = BTreeMap::<String, u64>::new();
    for _ in 0..10 {
        *without.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(without.get("canary"), Some(&2), "{without:?}");
    assert_eq!(without.get("baseline"), Some(&2), "{without:?}");
}

#[tokio::test]
async fn ab_rules_and_mirror_copies_never_reach_the_baseline() {
    let (stable, canary, baseline) = three_backends().await;
    let extra =
        "    canary_match: [{ header: x-canary, value: always }]\n    mirror: { percent: 50 }\n";
    let proxy = start_proxy(&proxy_yaml(&baseline_route(
        &stable, &canary, &baseline, 20.0, extra,
    )))
    .await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let mut weighted = BTreeMap::<String, u64>::new();
    for _ in 0..100 {
        let by_rule = Request::get(&url)
            .header("x-canary", "always")
            .body(Full::default())
            .unwrap();
        assert_eq!(answered_by(&client, by_rule).await.0, "canary");
        *weighted.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    // The A/B requests did not move the weighted count.
    assert_eq!(weighted["canary"], 20, "{weighted:?}");
    assert_eq!(weighted["baseline"], 20, "{weighted:?}");
    assert_eq!(weighted["stable"], 60, "{weighted:?}");
    // Half of the stable's 60 requests are copied, to the canary alone.
    let m = eventually(
        "the 30 copies to be counted",
        Duration::from_secs(10),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", "canary"),
                    ("decision", "mirror"),
                ],
            ) == 30.0)
                .then_some(m)
        },
    )
    .await;
    assert_eq!(
        baseline.stats().requests,
        20,
        "the baseline saw only its share"
    );
    assert_eq!(canary.stats().requests, 100 + 20 + 30);
    for decision in ["match", "mirror"] {
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", "baseline"),
                    ("decision", decision)
                ]
            ),
            0.0,
            "{decision}"
        );
    }
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", "canary"),
                ("decision", "match")
            ]
        ),
        100.0
    );
}

#[tokio::test]
async fn a_weight_over_50_with_a_baseline_is_refused_naming_the_field() {
    let (stable, canary, baseline) = three_backends().await;
    // In a file: `sluice-proxy check` exits 2 naming the field.
    let dir = TempDir::new("baseline-check");
    let file = dir.path.join("sluice.yaml");
    std::fs::write(
        &file,
        proxy_yaml(&baseline_route(&stable, &canary, &baseline, 60.0, "")),
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].canary_weight: 60 is over 50 while routes[0].baseline is set"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}', baseline: '{}' }}\n",
            stable.url(),
            baseline.url()
        )),
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].baseline: needs routes[0].canary to be set"),
        "{stderr}"
    );

    // Through the admin API: nothing changes.
    let proxy = start_proxy(&proxy_yaml(&baseline_route(
        &stable, &canary, &baseline, 50.0, "",
    )))
    .await;
    let over = "routes[0].canary_weight: 50.01 is over 50 while routes[0].baseline is set";
    for (body, expected) in [
        (json!({ "canary_weight": 50.01 }), over),
        (
            json!({ "baseline": 5 }),
            "baseline: 5 is not a string URL or null",
        ),
        (
            json!({ "baseline": "ftp://x:1" }),
            "routes[0].baseline: `ftp://x:1` has scheme `ftp`",
        ),
        (
            json!({ "canary": null, "canary_weight": 0 }),
            "routes[0].baseline: needs routes[0].canary to be set",
        ),
    ] {
        let (status, error) = put_route(proxy.admin_addr, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(
            error.contains(expected),
            "{body}: {error:?} lacks {expected:?}"
        );
    }
    let table = routes(proxy.admin_addr).await;
    assert_eq!(table["routes"][0]["canary_weight"], 50.0);
    assert_eq!(table["routes"][0]["baseline"], baseline.url());
    // A route at 60 cannot take a baseline, but one PUT can lower the
    // weight and add it together.
    let (status, _) = put_route(
        proxy.admin_addr,
        json!({ "baseline": null, "canary_weight": 60 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = put_route(proxy.admin_addr, json!({ "baseline": baseline.url() })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error.contains("routes[0].canary_weight: 60 is over 50 while routes[0].baseline is set"),
        "{error}"
    );
    let (status, body) = put_route(
        proxy.admin_addr,
        json!({ "baseline": baseline.url(), "canary_weight": 25 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_admin_api_adds_and_removes_the_baseline() {
    let (stable, canary, baseline) = three_backends().await;
    let routes_yaml = format!(
        "  - {{ name: web, stable: '{}', canary: '{}', canary_weight: 10 }}\n",
        stable.url(),
        canary.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes_yaml)).await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    assert!(
        routes(proxy.admin_addr).await["routes"][0]
            .get("baseline")
            .is_none()
    );

    let (status, body) = put_route(proxy.admin_addr, json!({ "baseline": baseline.url() })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["baseline"],
        baseline.url(),
        "the PUT answers the route"
    );
    assert_eq!(
        routes(proxy.admin_addr).await["routes"][0]["baseline"],
        baseline.url()
    );
    let mut seen = BTreeMap::<String, u64>::new();
    for _ in 0..100 {
        *seen.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(seen.get("canary"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("baseline"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("stable"), Some(&80), "{seen:?}");

    let (status, body) = put_route(proxy.admin_addr, json!({ "baseline": null })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        routes(proxy.admin_addr).await["routes"][0]
            .get("baseline")
            .is_none()
    );
    let mut seen = BTreeMap::<String, u64>::new();
    for _ in 0..100 {
        *seen.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(seen.get("baseline"), None, "{seen:?}");
    assert_eq!(seen.get("canary"), Some(&10), "{seen:?}");
    assert_eq!(baseline.stats().requests, 10);
}

#[tokio::test]
async fn a_reload_without_the_baseline_removes_it() {
    let (stable, canary, baseline) = three_backends().await;
    let proxy =
        ChildProxy::start(&baseline_route(&stable, &canary, &baseline, 25.0, ""), &[]).await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let mut seen = BTreeMap::<String, u64>::new();
    for _ in 0..8 {
        *seen.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(seen.get("baseline"), Some(&2), "{seen:?}");
    let reloads = scrape(proxy.admin)
        .await
        .sum("sluice_config_reloads_total", &[("result", "success")]);
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    let without = original.replace(&format!("    baseline: {}\n", baseline.url()), "");
    assert_ne!(without, original);
    std::fs::write(&proxy.config_path, &without).unwrap();
    eventually("the reload to apply", Duration::from_secs(10), || async {
        routes(proxy.admin)
            .await
            .get("routes")
            .and_then(|r| r[0].get("baseline").is_none().then_some(()))
    })
    .await;
    let before = baseline.stats().requests;
    assert_eq!(before, 2);
    let mut seen = BTreeMap::<String, u64>::new();
    for _ in 0..40 {
        *seen.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(seen.get("baseline"), None, "{seen:?}");
    assert_eq!(seen.get("canary"), Some(&10), "{seen:?}");
    assert_eq!(baseline.stats().requests, before);
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_config_reloads_total", &[("result", "success")]),
        reloads + 1.0
    );
}

#[tokio::test]
async fn a_baseline_that_is_down_is_charged_and_its_clients_fail_over_to_the_stable() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let route = |failover: &str| {
        format!(
            "  - name: web\n    stable: {}\n    canary: {}\n    baseline: {dead}\n    canary_weight: 50\n    failover: {failover}\n",
            stable.url(),
            canary.url()
        )
    };
    // Failover on (the default): at 50% every other request is the
    // baseline's; its clients get the stable's answer, the baseline the
    // failure.
    let proxy = start_proxy(&proxy_yaml(&route("stable"))).await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let mut seen = BTreeMap::<String, u64>::new();
    for _ in 0..10 {
        *seen.entry(backend_of(&client, &url).await).or_default() += 1;
    }
    assert_eq!(seen.get("canary"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("stable"), Some(&5), "{seen:?}");
    let m = scrape(proxy.admin_addr).await;
    let baseline_502 = [
        ("route", "web"),
        ("backend", "baseline"),
        ("code", "502"),
        ("classification", "failure"),
        ("decision", "weight"),
    ];
    assert_eq!(m.sum("sluice_requests_total", &baseline_502), 5.0);
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[
                ("route", "web"),
                ("backend", "baseline"),
                ("kind", "connect")
            ]
        ),
        5.0
    );
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "web")]), 5.0);
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("backend", "canary"), ("code", "502")]
        ),
        0.0,
        "the canary is not blamed"
    );

    // Failover off: the client gets the proxy's 502 naming the baseline.
    let proxy = start_proxy(&proxy_yaml(&route("off"))).await;
    let url = format!("http://{}/", proxy.addr);
    let _ = get(&url).await.unwrap();
    let (status, _, body) = get(&url).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("upstream baseline"),
        "{body:?}"
    );
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(m.sum("sluice_requests_total", &baseline_502), 1.0);
}
