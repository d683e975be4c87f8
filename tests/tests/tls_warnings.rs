//! Why an upstream's TLS handshakes fail reaches the log at the default
//! level (warn), once per upstream and reason per minute, not once per
//! failed request: the metric says only `kind="tls"`.

use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_tls_failure_is_logged_at_warn_with_its_reason_once() {
    let dir = TempDir::new("tls-warnings");
    let upstream_ca = TestCa::new("upstream CA");
    let (cert, key) = upstream_ca.leaf(&["web.internal"]);
    let upstream = start_https_backend("secure", &cert, &key).await;
    let wrong_ca = dir.path.join("wrong-ca.crt");
    std::fs::write(&wrong_ca, TestCa::new("wrong CA").cert_pem).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.path.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {addr}\nadmin:\n  listen: {admin}\nroutes:\n  - name: bad\n    stable: https://{upstream}\n    upstream_tls: {{ ca_file: {}, server_name: web.internal }}\n",
            wrong_ca.display()
        ),
    )
    .unwrap();
    let log_path = dir.path.join("proxy.log");
    let mut child = Command::new(bin("sluice-proxy"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_until_ok(
        "sluice-proxy to be ready",
        &format!("http://{admin}/readyz"),
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = get(&format!("http://{addr}/")).await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    let m = scrape(admin.parse().unwrap()).await;
    let failed = m.sum(
        "sluice_upstream_errors_total",
        &[("route", "bad"), ("kind", "tls")],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(failed, 5.0, "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("TLS handshake"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for many failed handshakes of one reason:\n{log}"
    );
    assert!(
        warnings[0].contains("UnknownIssuer") && warnings[0].contains(&upstream.to_string()),
        "the warning names the reason and the upstream: {}",
        warnings[0]
    );
}
