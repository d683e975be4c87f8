//! End-to-end tests of `sluice-proxy` over real sockets on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn split_route(stable: &BackendHandle, canary: &BackendHandle, weight: f64) -> String {
    format!(
        "  - name: web\n    stable: {}\n    canary: {}\n    canary_weight: {weight}\n",
        stable.url(),
        canary.url()
    )
}

fn bounds(n: u64, weight_bp: u64) -> (u64, u64) {
    let exact = n * weight_bp;
    (exact / 10_000, exact.div_ceil(10_000))
}

async fn set_weight(proxy: &ProxyHandle, weight: f64) {
    let (status, body) = put_json(
        &format!("http://{}/routes/web", proxy.admin_addr),
        json!({ "canary_weight": weight }),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn backend_of(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
) -> String {
    let (status, headers, _) = send(client, Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    headers["x-backend"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn canary_count_is_exact_after_every_sequential_request() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 10.0))).await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    for (weight, weight_bp) in [
        (10.0, 1000),
        (33.33, 3333),
        (50.0, 5000),
        (0.0, 0),
        (100.0, 10_000),
    ] {
        set_weight(&proxy, weight).await;
        let mut canaries = 0;
        for n in 1..=300u64 {
            if backend_of(&client, &url).await == "canary" {
                canaries += 1;
            }
            let (lo, hi) = bounds(n, weight_bp);
            assert!(
                (lo..=hi).contains(&canaries),
                "weight {weight}: after {n} requests the canary had {canaries}, expected {lo}..={hi}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_count_is_exact_with_16_concurrent_connections() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 10.0))).await;
    let url = format!("http://{}/", proxy.addr);
    for (weight, weight_bp) in [
        (10.0, 1000u64),
        (33.33, 3333),
        (50.0, 5000),
        (0.0, 0),
        (100.0, 10_000),
    ] {
        set_weight(&proxy, weight).await;
        let mut total = 0u64;
        let mut canaries = 0u64;
        for wave in [1u64, 7, 16, 33, 100, 250, 17, 400] {
            // 16 connections share the wave; all of it completes before we count.
            let remaining = Arc::new(AtomicU64::new(wave));
            let wave_canaries = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (remaining, wave_canaries, url) =
                        (remaining.clone(), wave_canaries.clone(), url.clone());
                    tokio::spawn(async move {
                        let client = h1_client();
                        while remaining
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                            .is_ok()
                        {
                            if backend_of(&client, &url).await == "canary" {
                                wave_canaries.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            total += wave;
            canaries += wave_canaries.load(Ordering::SeqCst);
            let (lo, hi) = bounds(total, weight_bp);
            assert!(
                (lo..=hi).contains(&canaries),
                "weight {weight}: after {total} concurrent requests the canary had {canaries}, expected {lo}..={hi}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_equal_what_the_upstreams_saw() {
    let stable = backend("stable").await;
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            error_rate: 0.2,
            error_status: 503,
            ..Faults::default()
        },
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 25.0))).await;
    let mut options =
        sluice_loadtest::LoadOptions::new(&format!("http://{}/", proxy.addr)).unwrap();
    options.connections = 8;
    options.requests = Some(2000);
    options.duration = Some(Duration::from_secs(60));
    let report = sluice_loadtest::run(options, sluice_loadtest::LoadControl::new())
        .await
        .unwrap();
    assert_eq!(report.requests, 2000);
    let (s, c) = (stable.stats(), canary.stats());
    assert_eq!(s.requests + c.requests, 2000);
    assert_eq!(c.requests, 500, "exact 25% split");
    let m = eventually(
        "metrics to count every request",
        Duration::from_secs(5),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum("sluice_requests_total", &[]) == 2000.0).then_some(m)
        },
    )
    .await;
    for (backend, stats) in [("stable", &s), ("canary", &c)] {
        for (code, n) in &stats.by_status {
            assert_eq!(
                m.sum(
                    "sluice_requests_total",
                    &[
                        ("route", "web"),
                        ("backend", backend),
                        ("code", &code.to_string())
                    ]
                ),
                *n as f64,
                "{backend} code {code}"
            );
        }
        assert_eq!(
            m.sum(
                "sluice_request_duration_seconds_count",
                &[("route", "web"), ("backend", backend)]
            ),
            stats.requests as f64,
            "{backend} histogram count"
        );
        assert_eq!(
            m.sum(
                "sluice_request_duration_seconds_bucket",
                &[("backend", backend), ("le", "+Inf")]
            ),
            stats.requests as f64
        );
    }
    assert!(
        c.by_status.get(&503).copied().unwrap_or(0) > 50,
        "{:?}",
        c.by_status
    );
    assert_eq!(
        m.sum("sluice_route_canary_weight", &[("route", "web")]),
        25.0
    );
    assert_eq!(m.sum("sluice_build_info", &[]), 1.0);
    // What the client saw matches the proxy's view too.
    assert_eq!(
        report.status_counts.get(&503).copied().unwrap_or(0),
        c.by_status[&503]
    );
}

#[tokio::test]
async fn ab_rules_send_matches_to_the_canary_without_counting_toward_the_weight() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let routes = format!(
        "{}    canary_match:\n      - {{ header: x-canary, value: always }}\n      - {{ cookie: canary, value: always }}\n",
        split_route(&stable, &canary, 50.0)
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let url = format!("http://{}/", proxy.addr);
    let client = h1_client();
    let mut weighted_canaries = 0;
    for i in 0..20 {
        let by_header = Request::get(&url)
            .header("x-canary", "always")
            .body(Full::default())
            .unwrap();
        let (_, h, _) = send(&client, by_header).await.unwrap();
        assert_eq!(h["x-backend"], "canary");
        let by_cookie = Request::get(&url)
            .header("cookie", "session=1; canary=always")
            .body(Full::default())
            .unwrap();
        let (_, h, _) = send(&client, by_cookie).await.unwrap();
        assert_eq!(h["x-backend"], "canary");
        if backend_of(&client, &url).await == "canary" {
            weighted_canaries += 1;
        }
        assert_eq!(
            weighted_canaries,
            (i + 1) / 2,
            "A/B requests must not shift the weighted count"
        );
    }
    let other = Request::get(&url)
        .header("x-canary", "never")
        .body(Full::default())
        .unwrap();
    let _ = send(&client, other).await.unwrap();
    assert_eq!(canary.stats().requests, 50);
}

#[tokio::test]
async fn routes_by_longest_prefix_and_host_and_404_when_nothing_matches() {
    let (root, api, shop) = (
        backend("root").await,
        backend("api").await,
        backend("shop").await,
    );
    let routes = format!(
        "  - {{ name: api, hosts: [web.example], path_prefix: /api, stable: '{}' }}\n  - {{ name: root, hosts: [web.example], stable: '{}' }}\n  - {{ name: shop, hosts: [shop.example], path_prefix: /, stable: '{}' }}\n",
        api.url(),
        root.url(),
        shop.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let client = h1_client();
    let ask = |host: &'static str, path: &'static str| {
        let req = Request::get(format!("http://{}{path}", proxy.addr))
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let client = client.clone();
        async move { send(&client, req).await.unwrap() }
    };
    assert_eq!(ask("web.example", "/api/users").await.1["x-backend"], "api");
    assert_eq!(
        ask("WEB.example:8080", "/index.html").await.1["x-backend"],
        "root"
    );
    assert_eq!(
        ask("shop.example", "/api/users").await.1["x-backend"],
        "shop"
    );
    let (status, _, body) = ask("other.example", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("no route for host `other.example`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_and_upstream_changes_under_load_fail_no_request() {
    let (stable, canary, canary2) = (
        backend("stable").await,
        backend("canary").await,
        backend("canary2").await,
    );
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 0.0))).await;
    let mut options =
        sluice_loadtest::LoadOptions::new(&format!("http://{}/", proxy.addr)).unwrap();
    options.connections = 8;
    options.duration = Some(Duration::from_secs(3));
    options.count_header = Some(http::HeaderName::from_static("x-backend"));
    let load = tokio::spawn(sluice_loadtest::run(
        options,
        sluice_loadtest::LoadControl::new(),
    ));
    let admin = format!("http://{}/routes/web", proxy.admin_addr);
    for step in 0..25u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let canary_url = if step % 2 == 0 {
            canary2.url()
        } else {
            canary.url()
        };
        let (status, body) = put_json(
            &admin,
            json!({ "canary_weight": f64::from(step * 4), "canary": canary_url }),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let report = load.await.unwrap().unwrap();
    assert!(
        report.requests > 500,
        "load too small to prove anything: {}",
        report.requests
    );
    assert!(
        report.errors.is_empty(),
        "errors under reload: {:?}",
        report.errors
    );
    assert_eq!(
        report.status_counts.keys().collect::<Vec<_>>(),
        vec![&200],
        "{:?}",
        report.status_counts
    );
    assert!(
        report.header_counts.contains_key("canary") && report.header_counts.contains_key("canary2")
    );
}

#[tokio::test]
async fn bad_admin_requests_get_clear_errors_and_change_nothing() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 10.0))).await;
    let admin = format!("http://{}/routes/web", proxy.admin_addr);
    let cases = [
        (
            json!({ "canary_weight": 150 }),
            "canary_weight: 150 is not in 0..=100",
        ),
        (json!({ "canary_weight": 12.345 }), "more than two decimals"),
        (json!({ "stable": "ftp://x" }), "routes[0].stable"),
        (json!({ "weight": 5 }), "weight: unknown field"),
        (
            json!({ "canary": null }),
            "routes[0].canary_weight: 10 needs routes[0].canary",
        ),
        (json!([1, 2]), "must be a JSON object"),
    ];
    for (body, expected) in cases {
        let (status, answer) = put_json(&admin, body.clone(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{body}: {error:?} lacks {expected:?}"
        );
    }
    let (status, answer) = put_json(
        &format!("http://{}/routes/nope", proxy.admin_addr),
        json!({"canary_weight": 1}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"].as_str().unwrap().contains("nope"));
    let (status, _, body) = send(
        &h1_client(),
        Request::put(&admin)
            .body(Full::new(Bytes::from_static(b"{not json")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));
    // A key given twice, at the top or inside, is refused, not the last
    // one taken.
    for twice in [
        &br#"{"canary_weight": 20, "canary_weight": 30}"#[..],
        br#"{"canary_match": [{"header": "x-a", "header": "x-b", "value": "1"}]}"#,
    ] {
        let (status, _, body) = send(
            &h1_client(),
            Request::put(&admin)
                .body(Full::new(Bytes::from_static(twice)))
                .unwrap(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("is given twice"), "{text}");
    }
    // The table is untouched.
    let (_, _, routes) = get(&format!("http://{}/routes", proxy.admin_addr))
        .await
        .unwrap();
    let routes: serde_json::Value = serde_json::from_slice(&routes).unwrap();
    assert_eq!(routes["routes"][0]["canary_weight"], 10.0);
    assert_eq!(routes["routes"][0]["canary"], canary.url());
    // A refused admin update is no reload: the reload metrics speak of the
    // config file, which is as good as it was.
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum("sluice_config_reloads_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(m.sum("sluice_config_last_reload_successful", &[]), 1.0);
    assert_eq!(m.sum("sluice_route_canary_weight", &[]), 10.0);
    // A body over the limit is 413, said at once from its length.
    let (status, _, body) = send(
        &h1_client(),
        Request::put(&admin)
            .body(Full::new(Bytes::from(vec![b' '; 1024 * 1024 + 1])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("over 1048576 bytes"));
    // A method a resource does not have is 405 with the ones it has; HEAD
    // is GET without the body.
    for (method, path, allow) in [
        (http::Method::POST, "/routes/web", "GET, HEAD, PUT"),
        (http::Method::DELETE, "/routes", "GET, HEAD"),
        (http::Method::PUT, "/healthz", "GET, HEAD"),
    ] {
        let (status, headers, _) = send(
            &h1_client(),
            Request::builder()
                .method(method.clone())
                .uri(format!("http://{}{path}", proxy.admin_addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(headers["allow"], allow, "{method} {path}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/routes"] {
        let (status, _, body) = send(
            &h1_client(),
            Request::head(format!("http://{}{path}", proxy.admin_addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 0), "HEAD {path}");
    }
    // null removes the A/B rules, as it removes the other optional settings.
    let (status, body) = put_json(
        &admin,
        json!({ "canary_match": [{ "header": "x-canary", "value": "always" }] }),
        None,
    )
    .await;
    assert_eq!(
        (status, body["canary_match"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (status, body) = put_json(&admin, json!({ "canary_match": null }), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["canary_match"].as_array().is_none_or(Vec::is_empty),
        "{body}"
    );
    // `-0` is the weight 0, and shown so.
    let (status, body) = put_json(&admin, json!({ "canary_weight": -0.0 }), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, routes) = get(&admin).await.unwrap();
    let routes = String::from_utf8_lossy(&routes);
    assert!(routes.contains(r#""canary_weight":0.0"#), "{routes}");
}

#[tokio::test]
async fn admin_writes_need_the_token_when_one_is_configured() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let dir = TempDir::new("token");
    let token_file = dir.path.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token_file: {}\nroutes:\n{}",
        token_file.display(),
        split_route(&stable, &canary, 0.0)
    );
    let proxy = start_proxy(&yaml).await;
    let admin = format!("http://{}/routes/web", proxy.admin_addr);
    let (status, _) = put_json(&admin, json!({"canary_weight": 5}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = put_json(&admin, json!({"canary_weight": 5}), Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = put_json(&admin, json!({"canary_weight": 5}), Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["canary_weight"], 5.0);
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let (status, _, _) = send(
        &h1_client(),
        Request::get(format!("http://{}/routes", proxy.admin_addr))
            .header("authorization", "bearer s3cret")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sighup_puts_the_file_back_in_force_and_never_stops_the_proxy() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mut proxy = ChildProxy::start(&split_route(&stable, &canary, 0.0), &[]).await;
    let weight = |admin| async move {
        scrape(admin)
            .await
            .sum("sluice_route_canary_weight", &[("route", "web")])
    };
    // An emergency change through the admin API.
    let (status, _) = put_json(
        &format!("http://{}/routes/web", proxy.admin),
        json!({ "canary_weight": 100 }),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(weight(proxy.admin).await, 100.0);
    // SIGHUP applies the file again, although its text did not change.
    proxy.signal("HUP");
    eventually(
        "SIGHUP to put the file's weight back",
        Duration::from_secs(10),
        || async { (weight(proxy.admin).await == 0.0).then_some(()) },
    )
    .await;
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the proxy"
    );
    let (status, headers, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(
        (status, headers["x-backend"].to_str().unwrap()),
        (StatusCode::OK, "stable")
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_config_reloads_total", &[("result", "success")]),
        1.0
    );
}

/// A config file that cannot be read (not UTF-8, deleted) is one failed
/// reload, counted and logged once, not once per event of its directory
/// (where the proxy's own log may be written: each warning was such an
/// event, and the next warning followed); the last good config serves on,
/// and a good file is applied again.
#[tokio::test]
async fn an_unreadable_config_file_is_one_failed_reload_logged_once() {
    let dir = TempDir::new("unreadable-config");
    let config = dir.path.join("sluice.yaml");
    let log = dir.path.join("proxy.log");
    let upstream = backend("stable").await;
    let (listen, admin) = (free_port(), free_port());
    let good = |weight: u32| {
        format!(
            "listen: 127.0.0.1:{listen}\nadmin:\n  listen: 127.0.0.1:{admin}\nroutes:\n  - {{ name: web, stable: '{}', canary: '{}', canary_weight: {weight} }}\n",
            upstream.url(),
            upstream.url()
        )
    };
    std::fs::write(&config, good(0)).unwrap();
    let mut child = std::process::Command::new(bin("sluice-proxy"))
        .arg("--config")
        .arg(&config)
        .stdout(std::fs::File::create(dir.path.join("proxy.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let failures = || async move {
        scrape(admin)
            .await
            .sum("sluice_config_reloads_total", &[("result", "failure")])
    };
    eventually("the proxy to serve", Duration::from_secs(10), || async {
        get(&format!("http://{admin}/metrics")).await.ok()
    })
    .await;
    let warnings = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("cannot read the config file")
            .count()
    };
    for (broken, what) in [
        (Some(&b"listen: 127.0.0.1:1\n\xff\xfe\n"[..]), "not UTF-8"),
        (None, "deleted"),
    ] {
        let before = failures().await;
        match broken {
            Some(bytes) => std::fs::write(&config, bytes).unwrap(),
            None => std::fs::remove_file(&config).unwrap(),
        }
        eventually(
            &format!("{what}: a failed reload"),
            Duration::from_secs(10),
            || async { (failures().await == before + 1.0).then_some(()) },
        )
        .await;
        let logged = warnings();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(failures().await, before + 1.0, "{what}: counted once");
        assert_eq!(warnings(), logged, "{what}: logged once");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the proxy stopped"
        );
    }
    // The last good text back: applied again, a success.
    let successes = scrape(admin)
        .await
        .sum("sluice_config_reloads_total", &[("result", "success")]);
    std::fs::write(&config, good(0)).unwrap();
    eventually(
        "the last good text applied again",
        Duration::from_secs(10),
        || async {
            let m = scrape(admin).await;
            (m.sum("sluice_config_reloads_total", &[("result", "success")]) == successes + 1.0)
                .then_some(())
        },
    )
    .await;
    std::fs::write(&config, good(30)).unwrap();
    eventually("the good file applied", Duration::from_secs(10), || async {
        let m = scrape(admin).await;
        (m.sum("sluice_route_canary_weight", &[("route", "web")]) == 30.0).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_terminal_colour_codes() {
    let dir = TempDir::new("plain-logs");
    let config = dir.path.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{}\nadmin:\n  listen: 127.0.0.1:{}\nroutes:\n  - {{ name: web, stable: 'http://127.0.0.1:{}' }}\n",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin("sluice-proxy"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The start-up line, read from the pipe.
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("a log line in time")
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("serving"), "{line:?}");
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a piped log: {line:?}"
    );
}

#[tokio::test]
async fn a_route_removed_by_a_reload_loses_its_weight_gauge() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gone = format!(
        "  - {{ name: gone, path_prefix: /gone, stable: '{}', canary: '{}', canary_weight: 50 }}\n",
        stable.url(),
        canary.url()
    );
    let proxy = ChildProxy::start(
        &format!("{}{gone}", split_route(&stable, &canary, 5.0)),
        &[],
    )
    .await;
    let weights = |admin| async move {
        let m = scrape(admin).await;
        let gone = m
            .matching("sluice_route_canary_weight", &[("route", "gone")])
            .count();
        (
            m.sum("sluice_route_canary_weight", &[("route", "web")]),
            gone,
        )
    };
    assert_eq!(weights(proxy.admin).await, (5.0, 1));
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    let without = original.replace(&gone, "");
    assert_ne!(without, original);
    std::fs::write(&proxy.config_path, without).unwrap();
    eventually(
        "the removed route's weight to go from /metrics",
        Duration::from_secs(10),
        || async { (weights(proxy.admin).await == (5.0, 0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn bad_config_file_is_rejected_and_the_last_good_table_keeps_serving() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = ChildProxy::start(&split_route(&stable, &canary, 0.0), &[]).await;
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    proxy
        .write_refused_config(
            &original.replace("canary_weight: 0", "canary_weight: 150"),
            1.0,
            "the bad reload to be counted",
        )
        .await;
    let (status, headers, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(
        (status, headers["x-backend"].to_str().unwrap()),
        (StatusCode::OK, "stable")
    );
    proxy
        .write_refused_config(
            "routes: [ this is not yaml",
            2.0,
            "the unparsable reload to be counted",
        )
        .await;
    // A duration too large for any timer is an error that names the field
    // (it once panicked the parser and killed the watcher, so every later
    // change was silently ignored).
    let overflow = original.replace(
        "canary_weight: 0",
        "canary_weight: 50\n    timeouts: { connect: 99999999999999999999h }",
    );
    proxy
        .write_refused_config(&overflow, 3.0, "the overflowing reload to be counted")
        .await;
    let (code, stderr) = proxy_check(&proxy.config_path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].timeouts.connect") && stderr.contains("too long"),
        "{stderr}"
    );
    // A good file is applied: the watcher is still alive.
    std::fs::write(
        &proxy.config_path,
        original.replace("canary_weight: 0", "canary_weight: 100"),
    )
    .unwrap();
    eventually(
        "the good reload to apply",
        Duration::from_secs(10),
        || async {
            let (_, h, _) = get(&format!("http://{}/", proxy.addr)).await.ok()?;
            (h["x-backend"] == "canary").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn check_command_lists_every_error_with_its_field_path() {
    let dir = TempDir::new("check");
    let bad = dir.path.join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: 127.0.0.1:8080\nroutes:\n  - name: web\n    stable: http://127.0.0.1:9001\n    canary: http://127.0.0.1:9002\n    canary_weight: 10\n  - name: web\n    stable: http://127.0.0.1:9003\n    path_prefix: /x\n    canary_weight: 150\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&bad);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("routes[1].canary_weight: 150 is not in 0..=100"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].name: `web` is used by an earlier route"),
        "{stderr}"
    );
    let good = dir.path.join("good.yaml");
    std::fs::write(
        &good,
        "listen: 127.0.0.1:8080\nroutes:\n  - { name: web, stable: 'http://127.0.0.1:9001' }\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&good);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn upstream_down_is_a_502_counted_on_that_backend() {
    let stable = backend("stable").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    // Failover off: with it (the default) the client would get the
    // stable's answer and the canary still be charged (tests/failover.rs).
    let routes = format!(
        "  - name: web\n    stable: {}\n    canary: {dead}\n    canary_weight: 100\n    failover: off\n",
        stable.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let (status, _, body) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("upstream canary"),
        "{body:?}"
    );
    assert!(
        !String::from_utf8_lossy(&body).contains(dead.trim_start_matches("http://")),
        "the 502 names the internal address: {}",
        String::from_utf8_lossy(&body)
    );
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("backend", "canary"), ("code", "502")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("backend", "canary"), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("sluice_requests_total", &[("backend", "stable")]),
        0.0
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504_counted_as_timeout() {
    let slow = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            latency: Latency::Fixed(Duration::from_secs(2)),
            ..Faults::default()
        },
        ..BackendOptions::new("slow")
    })
    .await
    .unwrap();
    let routes = format!(
        "  - name: web\n    stable: {}\n    timeouts: {{ connect: 1s, request: 200ms }}\n",
        slow.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("backend", "stable"), ("code", "504")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "timeout")]),
        1.0
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_and_host_is_preserved() {
    let echo = start_echo().await;
    let routes = format!("  - {{ name: echo, stable: 'http://{echo}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let req = Request::get(format!("http://{}/x?y=1", proxy.addr))
        .header("host", "app.example:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&h1_client(), req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let h = &echoed["headers"];
    assert_eq!(h["host"], "app.example:8443");
    // A client's own X-Forwarded-For is not trusted by default (see the
    // hardening tests for `forwarding.trusted_hops`).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example:8443");
    assert!(
        h.get("x-drop-me").is_none() && h.get("keep-alive").is_none(),
        "{h}"
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&split_route(&stable, &canary, 50.0))).await;
    let client = h2_client();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let req = Request::get(format!("http://{}/h2", proxy.addr))
            .body(Full::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        seen.push(resp.headers()["x-backend"].to_str().unwrap().to_string());
    }
    assert_eq!(seen, ["stable", "canary", "stable", "canary"]);
}

/// Bodies larger than HTTP/2's windows cross both ways under flow control:
/// a 3 MiB upload is echoed back whole (its length and a digest of its
/// bytes), through a route to an HTTP/1.1 backend and one to an HTTP/2
/// backend. The client is the `h2` crate with its default 64 KiB windows,
/// so the proxy must give window back as it hands data on, and wait for
/// the client's window before it sends more.
#[tokio::test]
async fn http2_bodies_larger_than_the_windows_cross_whole_both_ways() {
    let echo = serve_http(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(Full::new(body))
    })
    .await;
    let routes = format!(
        "  - {{ name: h1, path_prefix: /h1, stable: 'http://{echo}' }}\n  - {{ name: h2, path_prefix: /h2, protocol: http2, stable: 'http://{echo}' }}\n"
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let sent: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = Bytes::from(sent);
    for route in ["h1", "h2"] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = Request::post(format!("http://h.example/{route}/echo"))
            .body(())
            .unwrap();
        let (answer, mut upload) = client.send_request(req, false).unwrap();
        let feed = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut rest = sent;
                while !rest.is_empty() {
                    upload.reserve_capacity(rest.len().min(64 * 1024));
                    let room = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                        .await
                        .expect("the stream stays open")
                        .unwrap();
                    let piece = rest.split_to(room.min(rest.len()));
                    upload.send_data(piece, rest.is_empty()).unwrap();
                }
            })
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{route}");
        let mut body = answer.into_body();
        let mut got = Vec::new();
        while let Some(data) = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("the body in time")
        {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            got.extend_from_slice(&data);
        }
        feed.await.unwrap();
        assert_eq!(got.len(), sent.len(), "{route}");
        assert!(got == sent[..], "{route}: the echoed bytes differ");
    }
}

#[tokio::test]
async fn grpc_streams_trailers_and_status_pass_through_an_http2_route() {
    let grpc = start_grpc().await;
    let routes = format!("  - {{ name: grpc, protocol: http2, stable: 'http://{grpc}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let client = h2_client();
    let mut body = grpc_frame(b"hello").to_vec();
    body.extend_from_slice(&grpc_frame(b"world"));
    let call = |path: &str, body: Vec<u8>| {
        Request::post(format!("http://{}{path}", proxy.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let resp = client
        .request(call("/test.Echo/Repeat", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers pass through");
    assert_eq!(trailers["grpc-status"], "0");
    let messages = grpc_messages(&collected.to_bytes());
    assert_eq!(messages.len(), 6);
    assert_eq!(messages[0], b"hello");
    assert_eq!(messages[5], b"world");

    let resp = client
        .request(call("/test.Echo/Missing", grpc_frame(b"x").to_vec()))
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers pass through");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "no such method");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "grpc"), ("code", "200")]
        ),
        2.0
    );
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let echo = start_echo().await;
    let routes = format!("  - {{ name: ws, stable: 'http://{echo}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let (mut stream, head) = websocket_handshake(proxy.addr).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [
        &b"ping"[..],
        b"a longer frame of bytes",
        &[0x81, 0x05, 1, 2, 3, 4, 5],
    ] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_after_the_header_read_timeout() {
    let stable = backend("stable").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlimits:\n  header_read_timeout: 500ms\nroutes:\n  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    );
    let proxy = start_proxy(&yaml).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy kept a slowloris connection open");
    // The proxy still serves others.
    let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // Oversized heads are refused.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(stable.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_through_with_flat_proxy_memory() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let stable = backend("sink").await;
    let proxy = ChildProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        &[],
    )
    .await;
    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    let chunks =
        futures::stream::iter((0..GIB / chunk.len() as u64).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        }));
    let body = http_body_util::StreamBody::new(chunks);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["received_bytes"], GIB);
    let peak_mib = proxy.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "proxy peak memory {peak_mib} MiB for a 1 GiB upload: the body was buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let slow = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            latency: Latency::Fixed(Duration::from_millis(800)),
            ..Faults::default()
        },
        ..BackendOptions::new("slow")
    })
    .await
    .unwrap();
    let mut proxy = ChildProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", slow.url()),
        &["--drain-timeout", "10s", "--drain-delay", "1500ms"],
    )
    .await;
    let url = format!("http://{}/", proxy.addr);
    let readyz = format!("http://{}/readyz", proxy.admin);
    assert_eq!(get(&readyz).await.unwrap().0, StatusCode::OK);
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.map(|(s, _, _)| s) })
        })
        .collect();
    // The backend holds each request 800 ms; signal while all 20 are inside.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    // The drain delay: readiness fails at once, new connections are still
    // served (endpoints take time to drop the pod).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(&readyz).await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let late = tokio::spawn({
        let url = url.clone();
        async move {
            get(&url).await.map(|(s, headers, _)| {
                // Each answer while draining closes its connection, so
                // the client moves to a new one before the listener closes.
                assert_eq!(
                    headers.get("connection").map(|v| v.as_bytes()),
                    Some(&b"close"[..])
                );
                s
            })
        }
    });
    for r in in_flight {
        assert_eq!(
            r.await.unwrap().expect("in-flight request completes"),
            StatusCode::OK
        );
    }
    assert_eq!(
        late.await
            .unwrap()
            .expect("a request during the drain delay is served"),
        StatusCode::OK
    );
    // The admin listener answers until the data plane has drained.
    assert_eq!(
        get(&readyz).await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = proxy.child.wait().unwrap();
        (s, proxy)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    assert_eq!(
        slow.stats().requests,
        21,
        "20 in flight and one during the drain delay"
    );
    assert!(
        get(&url).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn upstream_connections_survive_a_reload_that_keeps_the_backend() {
    let (upstream, accepted, _) = counting_upstream(false).await;
    let canary = backend("canary").await;
    let routes = format!(
        "  - {{ name: web, stable: 'http://{upstream}', canary: '{}', canary_weight: 0 }}\n",
        canary.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let client = h1_client();
    let url = format!("http://{}/", proxy.addr);
    for _ in 0..10 {
        assert_eq!(
            send(&client, Request::get(&url).body(Full::default()).unwrap())
                .await
                .unwrap()
                .0,
            StatusCode::OK
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests share one pooled connection"
    );
    // A reload that changes the weight and the canary, but keeps this backend.
    let (status, body) = put_json(
        &format!("http://{}/routes/web", proxy.admin_addr),
        json!({"canary_weight": 0.01}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..10 {
        let (status, _, _) = send(&client, Request::get(&url).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the reload kept the backend's pool and its connection"
    );
}

/// An upstream that counts the TCP connections it accepts and records the
/// Host (HTTP/1) or `:authority` (HTTP/2) and X-Forwarded-Host it is sent.
async fn counting_upstream(
    http2: bool,
) -> (
    std::net::SocketAddr,
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (counter, log) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get(http::header::HOST)
                                    .map(|h| h.to_str().unwrap_or_default().to_string())
                            })
                            .unwrap_or_default();
                        let forwarded = req
                            .headers()
                            .get("x-forwarded-host")
                            .map(|h| h.to_str().unwrap_or_default().to_string())
                            .unwrap_or_default();
                        log.lock().unwrap().push((host, forwarded));
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, accepted, seen)
}

/// 300 requests with 300 different Host headers open one upstream
/// connection, on an HTTP/1 route and on an HTTP/2 route: the pools belong
/// to backends, and nothing a client sends makes new upstream connections.
#[tokio::test]
async fn distinct_host_headers_share_the_backends_connection() {
    for http2 in [false, true] {
        let (upstream, accepted, seen) = counting_upstream(http2).await;
        let protocol = if http2 { "http2" } else { "http1" };
        let routes =
            format!("  - {{ name: web, protocol: {protocol}, stable: 'http://{upstream}' }}\n");
        let proxy = start_proxy(&proxy_yaml(&routes)).await;
        let client = h1_client();
        for i in 0..300 {
            let host = if i % 2 == 0 {
                format!("tenant-{i}.example")
            } else {
                format!("tenant-{i}.example:{}", 1000 + i)
            };
            let req = Request::get(format!("http://{}/", proxy.addr))
                .header(http::header::HOST, &host)
                .body(Full::default())
                .unwrap();
            assert_eq!(send(&client, req).await.unwrap().0, StatusCode::OK);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "{protocol}: upstream connections for 300 Host values"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 300);
        if http2 {
            assert_eq!(
                seen[1].0,
                upstream.to_string(),
                "h2 :authority is the backend's"
            );
        } else {
            assert_eq!(
                seen[1].0, "tenant-1.example:1001",
                "HTTP/1 keeps the client's Host"
            );
        }
        assert_eq!(seen[1].1, "tenant-1.example:1001");
    }
}

/// Idle pooled upstream connections are closed after
/// `timeouts.upstream_idle` (default 4 s, below common servers' keep-alive),
/// so the proxy never reuses a connection the server is about to close.
#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_upstream_idle_timeout() {
    let (upstream, accepted, _) = counting_upstream(false).await;
    let routes = format!(
        "  - {{ name: web, stable: 'http://{upstream}', timeouts: {{ upstream_idle: 300ms }} }}\n"
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let url = format!("http://{}/", proxy.addr);
    for _ in 0..3 {
        assert_eq!(get(&url).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "back to back: one connection"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&url).await.unwrap().0, StatusCode::OK);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "after the idle timeout the pooled connection was closed and a new one opened"
    );
}

/// A body of unknown length (sent chunked), popped from the end.
struct Chunks(Vec<&'static str>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop()
                .map(|c| Ok(http_body::Frame::data(Bytes::from(c)))),
        )
    }
}

/// Responses without a body (HEAD, 204, 304), chunked ones, and a `Connection: close` answer, one after the other on pooled
/// upstream connections: each arrives whole, and a connection is reused
/// unless the upstream closed it.
#[tokio::test]
async fn pooled_upstream_connections_survive_every_kind_of_response_end() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut resp = http::Response::new(http_body_util::Either::Left(
                            Full::new(Bytes::from_static(b"hello")),
                        ));
                        match req.uri().path() {
                            "/204" => *resp.status_mut() = StatusCode::NO_CONTENT,
                            "/304" => *resp.status_mut() = StatusCode::NOT_MODIFIED,
                            "/close" => {
                                resp.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                            }
                            "/chunked" => {
                                resp = http::Response::new(http_body_util::Either::Right(Chunks(
                                    vec!["three", "two ", "one "],
                                )));
                            }
                            _ => {}
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let routes = format!("  - {{ name: web, stable: 'http://{upstream}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let client = h1_client();
    let base = format!("http://{}", proxy.addr);
    let steps: [(&str, &str, StatusCode, &[u8]); 8] = [
        ("HEAD", "/", StatusCode::OK, b""),
        ("GET", "/", StatusCode::OK, b"hello"),
        ("GET", "/204", StatusCode::NO_CONTENT, b""),
        ("GET", "/304", StatusCode::NOT_MODIFIED, b""),
        ("GET", "/chunked", StatusCode::OK, b"one two three"),
        ("HEAD", "/chunked", StatusCode::OK, b""),
        ("GET", "/close", StatusCode::OK, b"hello"),
        ("GET", "/", StatusCode::OK, b"hello"),
    ];
    for (method, path, status, body) in steps {
        let req = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(Full::default())
            .unwrap();
        let (got, _, got_body) = tokio::time::timeout(Duration::from_secs(5), send(&client, req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung"))
            .unwrap();
        assert_eq!(got, status, "{method} {path}");
        assert_eq!(&got_body[..], body, "{method} {path}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one upstream connection for everything up to the `Connection: close` answer, one after it"
    );
}

/// A real HTTP/2 backend that answers before it has read the request
/// body (RFC 9113 §8.1): `/413` answers 413 with a body of
/// `EARLY_ANSWER` bytes, then reads the request body; `/reset` answers 200
/// with that body, then resets the stream with `NO_ERROR`. Each answer's
/// body comes a moment after its head. What it saw of
/// each request body's end goes to `seen`: `reset` (the proxy let the
/// stream go without ending it: never a cut body that looks whole) or
/// `ended after N bytes`.
async fn h2_early_backend(seen: Arc<std::sync::Mutex<Vec<String>>>) -> std::net::SocketAddr {
    serve_h2(move |req, mut respond| {
        let seen = seen.clone();
        async move {
            let reset = req.uri().path() == "/reset";
            let (head, mut body) = req.into_parts();
            drop(head);
            // The body is read (and its window given back) all
            // along, as the answer goes out.
            let reader_seen = seen.clone();
            let reader = tokio::spawn(async move {
                let mut got = 0;
                let end = loop {
                    match body.data().await {
                        Some(Ok(data)) => {
                            got += data.len();
                            let _ = body.flow_control().release_capacity(data.len());
                        }
                        Some(Err(_)) => break "reset".to_string(),
                        None => break format!("ended after {got} bytes"),
                    }
                };
                if !reset {
                    reader_seen.lock().unwrap().push(end);
                }
            });
            let status = if reset { 200 } else { 413 };
            let head = http::Response::builder()
                .status(status)
                .header("content-length", EARLY_ANSWER)
                .body(())
                .unwrap();
            let mut sending = respond.send_response(head, false).unwrap();
            // The head first, its body a moment later (a stream
            // reset meanwhile would cut it).
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Within the proxy's windows (so all of it goes out
            // now, none of it queued when a reset clears the
            // queue).
            sending.reserve_capacity(EARLY_ANSWER);
            while sending.capacity() < EARLY_ANSWER {
                let more = std::future::poll_fn(|cx| sending.poll_capacity(cx)).await;
                if !matches!(more, Some(Ok(_))) {
                    seen.lock().unwrap().push("the answer was cut".into());
                    return;
                }
            }
            sending.send_data(early_answer(), true).unwrap();
            if reset {
                // Time for the connection to write it out.
                tokio::time::sleep(Duration::from_millis(500)).await;
                sending.send_reset(h2::Reason::NO_ERROR);
                seen.lock().unwrap().push("reset by the backend".into());
                reader.abort();
            }
        }
    })
    .await
}

const EARLY_ANSWER: usize = 300 * 1024;

fn early_answer() -> Bytes {
    (0..EARLY_ANSWER)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A request with no body reaches an HTTP/2 backend as one HEADERS frame
/// that ends the stream, from an HTTP/1.1 client as from an HTTP/2 one,
/// not as HEADERS and then an empty DATA frame: a request a backend can
/// answer at once, in one frame less. A POST with a body still streams it.
#[tokio::test]
async fn a_bodiless_request_ends_its_http2_stream_with_its_head() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let backend = serve_h2(move |req, mut respond| {
        // Whether the stream had ended when its head came.
        let ended = req.body().is_end_stream();
        record
            .lock()
            .unwrap()
            .push(format!("{} {ended}", req.method()));
        async move {
            read_h2_body(&mut req.into_body()).await;
            let head = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(head, true);
        }
    })
    .await;
    let routes = format!("  - {{ name: web, protocol: http2, stable: 'http://{backend}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let url = format!("http://{}/", proxy.addr);
    for client in [h1_client(), h2_client()] {
        let post = Request::post(&url)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        assert_eq!(send(&client, post).await.unwrap().0, StatusCode::OK);
        let get = Request::get(&url).body(Full::default()).unwrap();
        assert_eq!(send(&client, get).await.unwrap().0, StatusCode::OK);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["POST false", "GET true", "POST false", "GET true"],
        "whether each request's HEADERS ended its stream"
    );
}

/// An HTTP/1.1 client whose request body (1 MiB, far past the backend's
/// windows) is still on its way when an HTTP/2 backend answers gets the
/// whole answer (413 or 200, then `RST_STREAM(NO_ERROR)`), then its
/// connection closes (the rest of its body was never read); the backend
/// sees the request stream reset, never ended as if whole.
#[tokio::test]
async fn an_http2_backend_answering_before_the_request_body_ends_is_relayed_whole() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backend = h2_early_backend(seen.clone()).await;
    let routes = format!("  - {{ name: web, protocol: http2, stable: 'http://{backend}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    for (path, status) in [("/413", "413"), ("/reset", "200")] {
        let got = post_while_reading(proxy.addr, path).await;
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{path}: no head in {:?}", String::from_utf8_lossy(&got)))
            + 4;
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status} ")),
            "{path}: {head}"
        );
        assert!(head.contains("connection: close"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-length: {EARLY_ANSWER}")),
            "{path}: {head}"
        );
        assert_eq!(got.len() - end, EARLY_ANSWER, "{path}: the answer was cut");
        assert!(
            got[end..] == early_answer()[..],
            "{path}: the answer's bytes differ"
        );
    }
    let seen = eventually(
        "the backend to see both request streams end",
        Duration::from_secs(5),
        || async {
            let seen = seen.lock().unwrap().clone();
            (seen.len() == 2).then_some(seen)
        },
    )
    .await;
    assert!(seen.contains(&"reset".to_string()), "{seen:?}");
    assert!(
        seen.contains(&"reset by the backend".to_string()),
        "{seen:?}"
    );
}

/// Sends `POST {path}` with a 1 MiB body to `proxy` from a raw HTTP/1.1
/// client that keeps writing its body while it reads the answer; the
/// whole connection's bytes once the proxy closed it.
async fn post_while_reading(proxy: std::net::SocketAddr, path: &str) -> Vec<u8> {
    const SENT: usize = 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {SENT}\r\n\r\n");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..SENT / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    // A client slow to read: the answer's end is still unread when the
    // proxy is done with the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{path}: reading failed after {} bytes: {e}", got.len()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .unwrap_or_else(|_| panic!("{path}: the connection was not closed after the answer"));
    writer.abort();
    got
}

/// The same with an HTTP/1.1 backend that answers 413 with a large body
/// without reading the request's, and closes: the client, still sending
/// its body, gets the whole answer before its connection closes (the
/// proxy reads and drops the rest of the body for a while rather than
/// closing a socket with unread bytes, which resets it).
#[tokio::test]
async fn an_http11_backend_answering_413_early_is_relayed_whole_to_a_client_still_sending() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut conn, &mut buf).await.is_none() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 413 Payload Too Large\r\nContent-Length: {EARLY_ANSWER}\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&early_answer()).await;
                // Lingers itself, so the proxy gets all of it.
                let _ = conn.shutdown().await;
                let mut sink = vec![0u8; 64 * 1024];
                while let Ok(Ok(1..)) =
                    tokio::time::timeout(Duration::from_secs(2), conn.read(&mut sink)).await
                {
                }
            });
        }
    });
    let routes = format!("  - {{ name: web, stable: 'http://{backend}' }}\n");
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let got = post_while_reading(proxy.addr, "/upload").await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&got)))
        + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(got.len() - end, EARLY_ANSWER, "the answer was cut");
    assert!(
        got[end..] == early_answer()[..],
        "the answer's bytes differ"
    );
}
