//! Release strategies in the proxy, end to end against the real binary:
//! sticky sessions by cookie and by hashed header, and traffic mirroring.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use sluice_tests::*;

/// Backends that fail 1% of requests, as real services do.
async fn noisy(name: &str) -> BackendHandle {
    failing_backend(name, 0.01, 1).await
}

/// One client with a cookie jar for one cookie.
struct Visitor {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    cookie: Option<String>,
}

impl Visitor {
    fn new() -> Self {
        Self {
            client: h1_client(),
            cookie: None,
        }
    }

    /// One GET; returns the backend that answered. Keeps the cookie the
    /// proxy sets (and drops it when the proxy deletes it).
    async fn visit(&mut self, url: &str) -> String {
        let mut req = Request::get(url);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c.as_str());
        }
        let (status, headers, body) = send(&self.client, req.body(Full::default()).unwrap())
            .await
            .expect("request through the proxy");
        for set in headers.get_all(header::SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
            if set.to_str().unwrap().contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        headers
            .get("x-backend")
            .unwrap_or_else(|| {
                let body = String::from_utf8_lossy(&body);
                panic!("the backend names itself; the answer was {status} {headers:?} {body}")
            })
            .to_str()
            .unwrap()
            .to_string()
    }
}

async fn set_route(admin: std::net::SocketAddr, patch: serde_json::Value) {
    let (status, body) = put_json(&format!("http://{admin}/routes/web"), patch, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Each visitor's first request (all at once), then `rounds` more each.
async fn visit_all(
    visitors: Vec<Visitor>,
    url: &str,
    rounds: usize,
) -> Vec<(Visitor, Vec<String>)> {
    let mut tasks = Vec::new();
    for mut v in visitors {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..rounds {
                seen.push(v.visit(&url).await);
            }
            (v, seen)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_clients_keep_their_backend_while_the_weight_grows() {
    let stable = noisy("stable").await;
    let canary = noisy("canary").await;
    let proxy = ChildProxy::start(
        &format!(
            "  - name: web\n    stable: '{}'\n    canary: '{}'\n    canary_weight: 10\n    affinity: {{ cookie: sluice-web, max_age: 1h }}\n",
            stable.url(),
            canary.url()
        ),
        &[],
    )
    .await;
    let url = format!("http://{}/page", proxy.addr);

    // 200 new clients: the exact split places exactly 20 on the canary.
    let first = visit_all((0..200).map(|_| Visitor::new()).collect(), &url, 1).await;
    let placed: Vec<String> = first.iter().map(|(_, seen)| seen[0].clone()).collect();
    assert_eq!(placed.iter().filter(|b| *b == "canary").count(), 20);
    assert!(
        first.iter().all(|(v, _)| v.cookie.is_some()),
        "every new client got a cookie"
    );

    // Their next 20 requests each all reach the same backend.
    let old = visit_all(first.into_iter().map(|(v, _)| v).collect(), &url, 20).await;
    for (i, (_, seen)) in old.iter().enumerate() {
        assert!(
            seen.iter().all(|b| *b == placed[i]),
            "client {i} moved: {seen:?}"
        );
    }

    // At 50% the assigned clients stay; new ones are split 50/50, exactly.
    set_route(proxy.admin, json!({ "canary_weight": 50 })).await;
    let old = visit_all(old.into_iter().map(|(v, _)| v).collect(), &url, 20).await;
    for (i, (_, seen)) in old.iter().enumerate() {
        assert!(
            seen.iter().all(|b| *b == placed[i]),
            "client {i} moved at 50%: {seen:?}"
        );
    }
    let newcomers = visit_all((0..200).map(|_| Visitor::new()).collect(), &url, 1).await;
    assert_eq!(
        newcomers.iter().filter(|(_, s)| s[0] == "canary").count(),
        100
    );

    // Assigned traffic is apart from the weighted (new-client) traffic.
    let m = scrape(proxy.admin).await;
    let count = |decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("decision", decision)],
        )
    };
    assert_eq!(count("weight"), 400.0, "first requests");
    assert_eq!(count("affinity"), 200.0 * 40.0, "returning requests");
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("decision", "affinity"),
                ("backend", "canary")
            ]
        ),
        20.0 * 40.0
    );

    // Rollback (weight 0): the assignment ends; the canary cookie is
    // deleted on the next response and the client is served by stable.
    set_route(proxy.admin, json!({ "canary_weight": 0 })).await;
    let mut back = old.into_iter().map(|(v, _)| v).collect::<Vec<_>>();
    let was_canary: Vec<usize> = (0..200).filter(|i| placed[*i] == "canary").collect();
    for i in &was_canary {
        assert_eq!(back[*i].visit(&url).await, "stable");
        assert!(back[*i].cookie.is_none(), "the cookie was deleted");
    }
    // 200 first visits, 2 × 20 returns each, 200 newcomers, 20 returns.
    assert_eq!(
        stable.stats().requests + canary.stats().requests,
        200 + 200 * 40 + 200 + 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_user_ids_keep_their_backend_across_restarts_and_only_move_to_the_canary() {
    let stable = noisy("stable").await;
    let canary = noisy("canary").await;
    let routes = |weight: u32| {
        format!(
            "  - name: web\n    stable: '{}'\n    canary: '{}'\n    canary_weight: {weight}\n    affinity: {{ header: x-user-id }}\n",
            stable.url(),
            canary.url()
        )
    };
    let assignment = |proxy: std::net::SocketAddr| async move {
        let client = h1_client();
        let mut by_user = BTreeMap::new();
        for user in 0..300 {
            let req = Request::get(format!("http://{proxy}/"))
                .header("x-user-id", format!("user-{user}"))
                .body(Full::default())
                .unwrap();
            let (_, headers, _) = send(&client, req).await.expect("request through the proxy");
            assert!(headers.get(header::SET_COOKIE).is_none());
            by_user.insert(user, headers["x-backend"].to_str().unwrap().to_string());
        }
        by_user
    };
    let proxy = ChildProxy::start(&routes(30), &[]).await;
    let at_30 = assignment(proxy.addr).await;
    let on_canary = at_30.values().filter(|b| *b == "canary").count();
    assert!(
        (70..=110).contains(&on_canary),
        "{on_canary} of 300 users at 30%"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("decision", "affinity")]),
        300.0
    );
    drop(proxy);

    // Another process with the same config assigns every user the same way.
    let proxy = ChildProxy::start(&routes(30), &[]).await;
    assert_eq!(
        assignment(proxy.addr).await,
        at_30,
        "the assignment changed across a restart"
    );

    // At 60% users only move from stable to canary.
    set_route(proxy.admin, json!({ "canary_weight": 60 })).await;
    let at_60 = assignment(proxy.addr).await;
    for (user, backend) in &at_30 {
        if backend == "canary" {
            assert_eq!(at_60[user], "canary", "user-{user} went back to stable");
        }
    }
    let moved = at_30
        .iter()
        .filter(|(u, b)| *b == "stable" && at_60[*u] == "canary")
        .count();
    assert!(moved > 60, "only {moved} users moved to the canary at 60%");
}

/// What a canary saw of one mirrored request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    mirror_header: bool,
    body: Bytes,
}

/// A canary that records what reaches it and answers after `delay`.
async fn recording_canary(delay: Duration) -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve_http(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let mirror_header = req.headers().get("x-sluice-mirror").is_some();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            tokio::time::sleep(delay).await;
            log.lock().unwrap().push(Seen {
                method,
                path,
                mirror_header,
                body,
            });
            let mut resp = Response::new(Full::new(Bytes::from_static(b"canary")));
            resp.headers_mut()
                .insert("x-backend", http::HeaderValue::from_static("canary"));
            resp
        }
    })
    .await;
    (addr, seen)
}

/// Latencies of `n` GETs to `url`, 8 at a time; every answer from stable.
async fn timed_gets(url: &str, n: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = h1_client();
            let mut took = Vec::new();
            for _ in 0..n / 8 {
                let start = Instant::now();
                let req = Request::get(&url).body(Full::default()).unwrap();
                let (_, headers, _) = send(&client, req).await.expect("request through the proxy");
                took.push(start.elapsed());
                assert_eq!(
                    headers["x-backend"], "stable",
                    "a client got the mirror's answer"
                );
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_reach_the_canary_without_the_client_waiting() {
    let stable = noisy("stable").await;
    let (canary, seen) = recording_canary(Duration::from_secs(2)).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - name: plain\n    path_prefix: /plain\n    stable: '{s}'\n  - name: web\n    stable: '{s}'\n    canary: 'http://{canary}'\n    mirror: {{ percent: 25 }}\n  - name: upload\n    path_prefix: /upload\n    stable: '{s}'\n    canary: 'http://{canary}'\n    mirror: {{ percent: 100, max_body: 1KiB, methods: [POST] }}\n",
            s = stable.url()
        ),
        &[],
    )
    .await;

    // The same load without and with mirroring; the canary takes 2 s.
    let without = timed_gets(&format!("http://{}/plain", proxy.addr), 400).await;
    let with = timed_gets(&format!("http://{}/page", proxy.addr), 400).await;
    println!(
        "client p99: {:?} without mirroring, {:?} with 25% mirrored to a 2 s canary",
        p99(&without),
        p99(&with)
    );
    assert!(
        *with.last().unwrap() < Duration::from_secs(1),
        "a client waited for the mirror: slowest {:?}",
        with.last().unwrap()
    );
    // Exactly 25% of the 400 requests were copied, each marked.
    let copies = eventually(
        "the 100 copies to arrive",
        Duration::from_secs(20),
        || async {
            let n = seen.lock().unwrap().len();
            (n >= 100).then_some(n)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        100,
        "copies (first saw {copies})"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.mirror_header && s.method == "GET")
    );

    // POST is not mirrored by default.
    let client = h1_client();
    for _ in 0..20 {
        let req = Request::post(format!("http://{}/page", proxy.addr))
            .body(Full::new(Bytes::from_static(b"order=1")))
            .unwrap();
        let (status, _, _) = send(&client, req).await.unwrap();
        assert_ne!(status, StatusCode::BAD_GATEWAY);
    }

    // Where POST is enabled: small bodies are copied whole; larger ones
    // (declared or streamed) are not, and are counted.
    for i in 0..10 {
        let body = Bytes::from(format!("{i:0>512}"));
        let req = Request::post(format!("http://{}/upload/{i}", proxy.addr))
            .body(Full::new(body))
            .unwrap();
        send(&client, req).await.unwrap();
    }
    for i in 0..5 {
        let req = Request::post(format!("http://{}/upload/big{i}", proxy.addr))
            .body(Full::new(Bytes::from(vec![b'x'; 4096])))
            .unwrap();
        send(&client, req).await.unwrap();
    }
    let streaming =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<StreamBody<futures_stream::Chunks>>();
    for i in 0..3 {
        let req = Request::post(format!("http://{}/upload/streamed{i}", proxy.addr))
            .body(StreamBody::new(futures_stream::Chunks::new(4, 1024)))
            .unwrap();
        let resp = streaming.request(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    eventually(
        "the 10 small uploads to be copied",
        Duration::from_secs(20),
        || async {
            let n = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.method == "POST")
                .count();
            (n >= 10).then_some(())
        },
    )
    .await;
    let m = eventually(
        "the copies to be counted",
        Duration::from_secs(10),
        || async {
            let m = scrape(proxy.admin).await;
            (m.sum(
                "sluice_requests_total",
                &[("backend", "canary"), ("decision", "mirror")],
            ) == 110.0)
                .then_some(m)
        },
    )
    .await;
    let posts: Vec<Seen> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .cloned()
        .collect();
    assert_eq!(
        posts.len(),
        10,
        "only the small uploads were copied: {posts:?}"
    );
    for p in &posts {
        let i: usize = p.path.trim_start_matches("/upload/").parse().unwrap();
        assert_eq!(
            p.body,
            Bytes::from(format!("{i:0>512}")),
            "copy of upload {i}"
        );
    }
    assert_eq!(
        m.sum(
            "sluice_mirror_skipped_total",
            &[("route", "upload"), ("reason", "body_too_large")]
        ),
        8.0
    );
    // The stable served every client request; copies are not client traffic.
    assert_eq!(
        m.sum("sluice_requests_total", &[("backend", "stable")]),
        400.0 + 400.0 + 20.0 + 18.0
    );
    assert_eq!(stable.stats().requests, 838);
}

/// Request bodies streamed in chunks, with no length declared.
mod futures_stream {
    use super::*;

    pub struct Chunks {
        left: usize,
        size: usize,
    }

    impl Chunks {
        pub fn new(count: usize, size: usize) -> Self {
            Self { left: count, size }
        }
    }

    impl futures::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;

        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'y'; self.size])))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_over_the_in_flight_bound_are_dropped_and_counted() {
    let stable = noisy("stable").await;
    let (canary, seen) = recording_canary(Duration::from_secs(2)).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - name: web\n    stable: '{}'\n    canary: 'http://{canary}'\n    mirror: {{ percent: 100, max_in_flight: 3 }}\n",
            stable.url()
        ),
        &[],
    )
    .await;
    // Ten requests well within the canary's 2 s: three copies are out,
    // seven are dropped, and no client waits.
    let client = h1_client();
    let start = Instant::now();
    for i in 0..10 {
        let req = Request::get(format!("http://{}/q/{i}", proxy.addr))
            .body(Full::default())
            .unwrap();
        send(&client, req).await.unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.sum(
            "sluice_mirror_skipped_total",
            &[("route", "web"), ("reason", "queue_full")]
        ),
        7.0
    );
    eventually("the three copies", Duration::from_secs(10), || async {
        (seen.lock().unwrap().len() == 3).then_some(())
    })
    .await;
    // Once they are answered, copies flow again.
    let req = Request::get(format!("http://{}/q/after", proxy.addr))
        .body(Full::default())
        .unwrap();
    send(&client, req).await.unwrap();
    eventually(
        "a copy after the bound freed",
        Duration::from_secs(10),
        || async { (seen.lock().unwrap().len() == 4).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_routes_mirror_copies_with_the_canarys_authority() {
    let stable = noisy("stable").await;
    let (canary, seen) = recording_canary(Duration::from_millis(50)).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - name: web\n    protocol: http2\n    stable: '{}'\n    canary: 'http://{canary}'\n    canary_weight: 0\n    mirror: {{ percent: 50 }}\n",
            stable.url()
        ),
        &[],
    )
    .await;
    // An HTTP/2 client through an HTTP/2 (h2c) route.
    let client = h2_client();
    for i in 0..40 {
        let req = Request::get(format!("http://{}/h2/{i}", proxy.addr))
            .body(Full::default())
            .unwrap();
        let (status, headers, _) = send(&client, req).await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["x-backend"], "stable");
    }
    eventually("20 copies over h2c", Duration::from_secs(10), || async {
        (seen.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(paths.iter().all(|p| p.starts_with("/h2/")), "{paths:?}");
}

#[tokio::test]
async fn bad_affinity_and_mirror_settings_are_refused_naming_the_field() {
    let dir = TempDir::new("strategies");
    let cases = [
        (
            "affinity: { cookie: 'my cookie' }",
            "routes[0].affinity.cookie: `my cookie` is not a valid cookie name",
        ),
        ("affinity: { cookie: 'a;b' }", "routes[0].affinity.cookie"),
        (
            "affinity: { cookie: c, header: x-user }",
            "routes[0].affinity: set either `cookie` or `header`",
        ),
        (
            "affinity: { cookie: c, max_age: soon }",
            "routes[0].affinity.max_age",
        ),
        (
            "mirror: { percent: 150 }",
            "routes[0].mirror.percent: 150 is not in 0..=100",
        ),
        ("mirror: { percent: -1 }", "routes[0].mirror.percent"),
        (
            "mirror: { percent: 5, max_body: lots }",
            "routes[0].mirror.max_body",
        ),
        (
            "mirror: { percent: 5, methods: [CONNECT] }",
            "routes[0].mirror.methods[0]",
        ),
        (
            "mirror: { percent: 5, colour: red }",
            "routes[0].mirror.colour: unknown field",
        ),
        (
            "path_prefix: '/a b'\n    affinity: { cookie: c }",
            "routes[0].affinity.cookie: the route's path_prefix `/a b` cannot be a cookie's Path",
        ),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let file = dir.path.join(format!("bad{i}.yaml"));
        std::fs::write(
            &file,
            format!("listen: 127.0.0.1:8080\nroutes:\n  - name: web\n    stable: http://127.0.0.1:9001\n    canary: http://127.0.0.1:9002\n    {line}\n"),
        )
        .unwrap();
        let (code, stderr) = proxy_check(&file);
        assert_eq!(code, Some(2), "{line}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{line}: {stderr:?} lacks {expected:?}"
        );
    }

    // Over the admin API: refused, and the route keeps serving as before.
    let stable = noisy("stable").await;
    let canary = noisy("canary").await;
    let proxy = ChildProxy::start(
        &format!(
            "  - {{ name: web, stable: '{}', canary: '{}', canary_weight: 0, mirror: {{ percent: 10 }} }}\n",
            stable.url(),
            canary.url()
        ),
        &[],
    )
    .await;
    let admin = format!("http://{}/routes/web", proxy.admin);
    for (patch, expected) in [
        (
            json!({ "mirror": { "percent": 101 } }),
            "routes[0].mirror.percent",
        ),
        (
            json!({ "affinity": { "cookie": "a b" } }),
            "routes[0].affinity.cookie",
        ),
        (json!({ "affinity": "sticky" }), "affinity"),
        (
            json!({ "canary_weight": 20, "mirror": { "percent": 200 } }),
            "routes[0].mirror.percent",
        ),
    ] {
        let (status, answer) = put_json(&admin, patch.clone(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{patch}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{patch}: {error:?} lacks {expected:?}"
        );
    }
    let (_, _, routes) = get(&format!("http://{}/routes", proxy.admin))
        .await
        .unwrap();
    let routes: serde_json::Value = serde_json::from_slice(&routes).unwrap();
    let route = &routes["routes"][0];
    assert_eq!(route["canary_weight"], 0.0, "{routes}");
    assert_eq!(route["mirror"]["percent"], 10.0, "{routes}");
    // And removing the mirror is a valid update.
    set_route(proxy.admin, json!({ "mirror": null })).await;
}
