//! TLS on the proxy: termination checked with curl (a real client) over
//! HTTP/1.1 and HTTP/2, certificate rotation, mTLS, and verified https
//! upstreams. Certificates are made by rcgen.

use std::time::Duration;

use http::StatusCode;
use sluice_tests::*;

struct TlsProxy {
    proxy: ProxyHandle,
    dir: TempDir,
    ca: TestCa,
}

impl TlsProxy {
    async fn start(routes: &str, client_ca: Option<&TestCa>) -> Self {
        let dir = TempDir::new("tls");
        let ca = TestCa::new("sluice test CA");
        let (cert, key, _) = ca.write_leaf(&dir.path, "server", &["localhost", "127.0.0.1"]);
        let client_ca_line = match client_ca {
            Some(c) => {
                let p = dir.path.join("clients-ca.crt");
                std::fs::write(&p, &c.cert_pem).unwrap();
                format!("  client_ca_file: {}\n", p.display())
            }
            None => String::new(),
        };
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ntls:\n  cert_file: {}\n  key_file: {}\n{client_ca_line}routes:\n{routes}",
            cert.display(),
            key.display()
        );
        let proxy = start_proxy(&yaml).await;
        Self { proxy, dir, ca }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.proxy.addr.port())
    }

    fn ca_file(&self) -> String {
        self.dir.path.join("server-ca.crt").display().to_string()
    }
}

async fn curl_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2_gets_the_same_exact_split_and_metrics() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let echo = start_echo().await;
    let routes = format!(
        "  - {{ name: web, stable: '{}', canary: '{}', canary_weight: 50 }}\n  - {{ name: echo, path_prefix: /echo, stable: 'http://{echo}' }}\n",
        stable.url(),
        canary.url()
    );
    let t = TlsProxy::start(&routes, None).await;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let mut args = vec![
            "-s".to_string(),
            "--cacert".into(),
            t.ca_file(),
            flag.into(),
            "-w".into(),
            "%{http_version} %{http_code}\\n".into(),
        ];
        // One curl, ten requests on one connection; -o applies to one URL each.
        for _ in 0..10 {
            args.extend(["-o".into(), "/dev/null".into(), t.url("/")]);
        }
        let (code, out, err) = curl_async(args).await;
        assert_eq!(code, 0, "curl {flag}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 10);
        assert!(
            lines.iter().all(|l| *l == format!("{version} 200")),
            "{flag}: {lines:?}"
        );
    }
    assert_eq!(canary.stats().requests, 10, "exactly half of 20 over TLS");
    assert_eq!(stable.stats().requests, 10);
    let m = scrape(t.proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("backend", "canary"), ("code", "200")]
        ),
        10.0
    );
    assert_eq!(
        m.sum("sluice_request_duration_seconds_count", &[("route", "web")]),
        20.0
    );
    let (code, body, err) = curl_async(vec![
        "-s".into(),
        "--cacert".into(),
        t.ca_file(),
        t.url("/echo"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    // A client that does not trust the CA is refused by curl's own check.
    let (code, _, _) = curl_async(vec!["-s".into(), t.url("/")]).await;
    assert_ne!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_and_keeps_open_ones() {
    let stable = backend("stable").await;
    let t = TlsProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        None,
    )
    .await;
    // An open HTTP/1.1 keep-alive connection made with the first certificate.
    let first_ca = t.ca.cert_pem.clone();
    let mut open = tls_client(&first_ca, t.proxy.addr).await;
    assert_eq!(open.get("/").await, StatusCode::OK);

    let second = TestCa::new("rotated CA");
    let (cert, key) = second.leaf(&["localhost", "127.0.0.1"]);
    let second_ca_file = t.dir.path.join("second-ca.crt");
    std::fs::write(&second_ca_file, &second.cert_pem).unwrap();
    std::fs::write(t.dir.path.join("server.key"), key).unwrap();
    std::fs::write(t.dir.path.join("server.crt"), cert).unwrap();
    let url = t.url("/");
    let ca = second_ca_file.display().to_string();
    eventually(
        "new connections to get the rotated certificate",
        Duration::from_secs(10),
        || {
            let (url, ca) = (url.clone(), ca.clone());
            async move {
                (curl_async(vec!["-s".into(), "--cacert".into(), ca, url])
                    .await
                    .0
                    == 0)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        open.get("/").await,
        StatusCode::OK,
        "the open connection keeps working"
    );

    // A key that does not match is rejected; the rotated pair keeps serving.
    let failures_before = scrape(t.proxy.admin_addr)
        .await
        .sum("sluice_config_reloads_total", &[("result", "failure")]);
    let (_, stray_key) = second.leaf(&["localhost"]);
    std::fs::write(t.dir.path.join("server.key"), stray_key).unwrap();
    eventually(
        "the mismatched key to be rejected",
        Duration::from_secs(10),
        || async {
            let m = scrape(t.proxy.admin_addr).await;
            (m.sum("sluice_config_reloads_total", &[("result", "failure")]) > failures_before)
                .then_some(())
        },
    )
    .await;
    let (code, _, err) = curl_async(vec![
        "-s".into(),
        "--cacert".into(),
        ca.clone(),
        url.clone(),
    ])
    .await;
    assert_eq!(code, 0, "after a mismatched key: {err}");
    // A rotation half done on disk does not block a route change: an
    // emergency rollback goes through, and takes effect.
    let (status, body) = put_json(
        &format!("http://{}/routes/web", t.proxy.admin_addr),
        serde_json::json!({ "canary_weight": 0 }),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["canary_weight"], 0.0, "{body}");
}

/// A minimal HTTP/1.1-over-TLS client holding one connection open.
struct TlsClient {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl TlsClient {
    async fn get(&mut self, path: &str) -> StatusCode {
        let req = http::Request::get(path)
            .header("host", "localhost")
            .body(Default::default())
            .unwrap();
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap().status()
    }
}

async fn tls_client(ca_pem: &str, addr: std::net::SocketAddr) -> TlsClient {
    let tls = tls_connect(ca_pem, addr).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    TlsClient { sender }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_good_client_certificate_and_refuses_none_or_a_wrong_one() {
    let stable = backend("stable").await;
    let clients = TestCa::new("clients CA");
    let t = TlsProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        Some(&clients),
    )
    .await;
    let (good_cert, good_key, _) =
        clients.write_leaf(&t.dir.path, "good-client", &["client.example"]);
    let stranger = TestCa::new("stranger CA");
    let (bad_cert, bad_key, _) =
        stranger.write_leaf(&t.dir.path, "bad-client", &["client.example"]);
    let base = vec![
        "-s".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--cacert".into(),
        t.ca_file(),
    ];
    let with = |cert: &std::path::Path, key: &std::path::Path| {
        let mut a = base.clone();
        a.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            t.url("/"),
        ]);
        a
    };
    let (code, out, err) = curl_async(with(&good_cert, &good_key)).await;
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    let mut none = base.clone();
    none.push(t.url("/"));
    let (code, out, _) = curl_async(none).await;
    assert!(
        code != 0 && out != "200",
        "no client certificate must be refused (curl {code}, {out})"
    );
    let (code, out, _) = curl_async(with(&bad_cert, &bad_key)).await;
    assert!(
        code != 0 && out != "200",
        "a foreign client certificate must be refused (curl {code}, {out})"
    );
    assert_eq!(stable.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_and_a_wrong_ca_is_a_502_of_kind_tls() {
    let dir = TempDir::new("upstream-tls");
    let upstream_ca = TestCa::new("upstream CA");
    let (cert, key) = upstream_ca.leaf(&["web.internal"]);
    let upstream = start_https_backend("secure", &cert, &key).await;
    let right_ca = dir.path.join("upstream-ca.crt");
    std::fs::write(&right_ca, &upstream_ca.cert_pem).unwrap();
    let wrong_ca = dir.path.join("wrong-ca.crt");
    std::fs::write(&wrong_ca, TestCa::new("wrong CA").cert_pem).unwrap();
    let routes = format!(
        "  - name: good\n    path_prefix: /good\n    stable: https://{upstream}\n    upstream_tls: {{ ca_file: {}, server_name: web.internal }}\n  - name: bad\n    path_prefix: /bad\n    stable: https://{upstream}\n    upstream_tls: {{ ca_file: {}, server_name: web.internal }}\n  - name: h2\n    path_prefix: /h2\n    protocol: http2\n    stable: https://{upstream}\n    upstream_tls: {{ ca_file: {}, server_name: web.internal }}\n",
        right_ca.display(),
        wrong_ca.display(),
        right_ca.display(),
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let (status, headers, _) = get(&format!("http://{}/good", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "secure");
    let (status, _, _) = get(&format!("http://{}/h2", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "h2 over TLS via ALPN");
    let (status, _, body) = get(&format!("http://{}/bad", proxy.addr)).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&body).contains("TLS"), "{body:?}");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        m.sum(
            "sluice_upstream_errors_total",
            &[("route", "bad"), ("kind", "tls")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "bad"), ("code", "502")]
        ),
        1.0
    );
}

#[tokio::test]
async fn check_reports_missing_unreadable_and_mismatched_certificate_files() {
    let dir = TempDir::new("tls-check");
    let ca = TestCa::new("check CA");
    let (cert, key, _) = ca.write_leaf(&dir.path, "server", &["localhost"]);
    let (_, other_key, _) = ca.write_leaf(&dir.path, "other", &["localhost"]);
    let garbage = dir.path.join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    // PEM, but its DER (SEQUENCE { INTEGER 0 }) is no X.509 certificate:
    // the certificate is at fault, not the key.
    let not_x509 = dir.path.join("not-x509.crt");
    std::fs::write(
        &not_x509,
        "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let cases = [
        (
            dir.path.join("missing.crt"),
            key.clone(),
            "tls.cert_file: cannot read",
        ),
        (garbage.clone(), key.clone(), "tls.cert_file"),
        (cert.clone(), other_key.clone(), "tls.key_file"),
        (
            not_x509.clone(),
            key.clone(),
            "tls.cert_file: {not_x509} is not a certificate the proxy can use",
        ),
    ];
    for (c, k, expected) in cases {
        let file = dir.path.join("sluice.yaml");
        std::fs::write(
            &file,
            format!(
                "listen: 127.0.0.1:8443\ntls:\n  cert_file: {}\n  key_file: {}\nroutes:\n  - {{ name: web, stable: 'http://127.0.0.1:9' }}\n",
                c.display(),
                k.display()
            ),
        )
        .unwrap();
        let (code, stderr) = proxy_check(&file);
        assert_eq!(code, Some(2), "{stderr}");
        let expected = expected.replace("{not_x509}", &not_x509.display().to_string());
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in {stderr}"
        );
    }
    let file = dir.path.join("good.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:8443\ntls:\n  cert_file: {}\n  key_file: {}\nroutes:\n  - name: web\n    stable: https://127.0.0.1:9\n    upstream_tls: {{ ca_file: {} }}\n",
            cert.display(),
            key.display(),
            dir.path.join("nope.crt").display()
        ),
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("routes[0].upstream_tls.ca_file"),
        "{stderr}"
    );
}

/// An https upstream whose `ca_file` is unusable when its client is built
/// fails closed: the configuration trusts nothing (not the system roots),
/// so the handshake to a server signed by the right CA fails, while the
/// configuration from the readable file succeeds against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_upstream_ca_fails_closed() {
    let dir = TempDir::new("fail-closed");
    let ca = TestCa::new("upstream CA");
    let (cert, key) = ca.leaf(&["web.internal"]);
    let upstream = start_https_backend("secure", &cert, &key).await;
    let ca_file = dir.path.join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let handshake = |config: std::sync::Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(upstream).await.unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls_pki_types::ServerName::try_from("web.internal").unwrap(),
                tcp,
            )
            .await
            .map(|_| ())
    };
    let key = sluice_proxy::tls::UpstreamTlsKey {
        ca_file: Some(ca_file.clone()),
        server_name: "web.internal".into(),
    };
    let good = sluice_proxy::tls::client_config(&key, false).unwrap();
    assert!(handshake(good).await.is_ok(), "the readable CA is trusted");
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let err = sluice_proxy::tls::client_config(&key, false).unwrap_err();
    assert!(err.contains("upstream_tls.ca_file"), "{err}");
    let closed = sluice_proxy::tls::fail_closed_config(false);
    let refused = handshake(closed).await.unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("unknown"),
        "{refused}"
    );
}

/// A new certificate that has expired, or is not valid yet, is refused
/// while the one serving is valid: the old one keeps serving, and the
/// refusal shows in `sluice_tls_last_reload_successful`, not in the
/// config's own `sluice_config_last_reload_successful`. A valid one is
/// taken, and the served certificate's end of validity is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_while_the_served_one_is_valid() {
    let stable = backend("stable").await;
    let t = TlsProxy::start(
        &format!("  - {{ name: web, stable: '{}' }}\n", stable.url()),
        None,
    )
    .await;
    let m = scrape(t.proxy.admin_addr).await;
    // rcgen's default validity ends in 4096.
    let far = m.sum("sluice_tls_certificate_expiry_timestamp_seconds", &[]);
    assert!(far > 6e10, "the served certificate's expiry: {far}");
    let ca = t.ca_file();
    let url = t.url("/");
    let served_by_first = || {
        let (ca, url) = (ca.clone(), url.clone());
        async move {
            let (code, _, err) = curl_async(vec!["-s".into(), "--cacert".into(), ca, url]).await;
            assert_eq!(code, 0, "the valid certificate stopped serving: {err}");
        }
    };

    let ymd = rcgen::date_time_ymd;
    for (what, dates) in [
        ("expired", (ymd(2020, 1, 1), ymd(2021, 1, 1))),
        ("not yet valid", (ymd(4000, 1, 1), ymd(4001, 1, 1))),
    ] {
        let failures = scrape(t.proxy.admin_addr)
            .await
            .sum("sluice_config_reloads_total", &[("result", "failure")]);
        let (cert, key) = t.ca.leaf_dated(&["localhost", "127.0.0.1"], Some(dates));
        std::fs::write(t.dir.path.join("server.key"), key).unwrap();
        std::fs::write(t.dir.path.join("server.crt"), cert).unwrap();
        let m = eventually(
            &format!("the {what} certificate to be refused"),
            Duration::from_secs(10),
            || async {
                let m = scrape(t.proxy.admin_addr).await;
                (m.sum("sluice_config_reloads_total", &[("result", "failure")]) > failures)
                    .then_some(m)
            },
        )
        .await;
        assert_eq!(
            m.sum("sluice_tls_last_reload_successful", &[]),
            0.0,
            "{what}"
        );
        assert_eq!(
            m.sum("sluice_config_last_reload_successful", &[]),
            1.0,
            "{what}"
        );
        assert_eq!(
            m.sum("sluice_tls_certificate_expiry_timestamp_seconds", &[]),
            far,
            "{what}"
        );
        served_by_first().await;
    }

    // Valid in three seconds: refused now, taken then, with no change to
    // the files in between.
    let failures = scrape(t.proxy.admin_addr)
        .await
        .sum("sluice_config_reloads_total", &[("result", "failure")]);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let (cert, key) =
        t.ca.leaf_dated(&["localhost", "127.0.0.1"], Some((soon, ymd(3000, 1, 1))));
    std::fs::write(t.dir.path.join("server.key"), key).unwrap();
    std::fs::write(t.dir.path.join("server.crt"), cert).unwrap();
    eventually(
        "the certificate valid in 3 s to be refused first",
        Duration::from_secs(3),
        || async {
            let m = scrape(t.proxy.admin_addr).await;
            (m.sum("sluice_config_reloads_total", &[("result", "failure")]) > failures)
                .then_some(())
        },
    )
    .await;
    let m = eventually(
        "the certificate to be taken once it is valid",
        Duration::from_secs(10),
        || async {
            let m = scrape(t.proxy.admin_addr).await;
            (m.sum("sluice_tls_last_reload_successful", &[]) == 1.0).then_some(m)
        },
    )
    .await;
    // 3000-01-01T00:00:00Z.
    assert_eq!(
        m.sum("sluice_tls_certificate_expiry_timestamp_seconds", &[]),
        32_503_680_000.0
    );
    served_by_first().await;
}

/// An upstream's `ca_file` is read again when it changes (it is looked at
/// every few seconds) and whenever a configuration is applied: new
/// contents verify new connections, and contents that no longer parse
/// leave the last good CA verifying, also for an upstream added after
/// they broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_ca_file_is_read_again_and_a_broken_one_keeps_the_last_good() {
    let dir = TempDir::new("upstream-ca-reload");
    let upstream_ca = TestCa::new("upstream CA");
    let (cert, key) = upstream_ca.leaf(&["web.internal"]);
    let upstream = start_https_backend("secure", &cert, &key).await;
    let other = start_https_backend("secure-2", &cert, &key).await;
    let ca_file = dir.path.join("upstream-ca.crt");
    std::fs::write(&ca_file, TestCa::new("old CA").cert_pem).unwrap();
    let routes = format!(
        "  - name: web\n    stable: https://{upstream}\n    timeouts: {{ upstream_idle: 100ms }}\n    upstream_tls: {{ ca_file: {}, server_name: web.internal }}\n",
        ca_file.display(),
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let url = format!("http://{}/", proxy.addr);
    assert_eq!(get(&url).await.unwrap().0, StatusCode::BAD_GATEWAY);

    // No reload, no admin update: the new file is seen by itself.
    std::fs::write(&ca_file, &upstream_ca.cert_pem).unwrap();
    eventually(
        "the rotated CA file to verify new connections",
        Duration::from_secs(15),
        || async { (get(&url).await.unwrap().0 == StatusCode::OK).then_some(()) },
    )
    .await;

    // Broken, and seen broken; then a canary of the same TLS setting is
    // added: it verifies with the last good CA too.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    tokio::time::sleep(sluice_proxy::store::CA_POLL_EVERY + Duration::from_secs(1)).await;
    let (status, body) = put_json(
        &format!("http://{}/routes/web", proxy.admin_addr),
        serde_json::json!({ "canary": format!("https://{other}"), "canary_weight": 100 }),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Past `upstream_idle`, every request needs a new handshake.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, headers, _) = get(&url).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "a broken CA file replaced the good one"
    );
    assert_eq!(headers["x-backend"], "secure-2");
}
