//! Outbound calls over https with credentials (issue #27): `sluice rollout`
//! gates a release on a real Prometheus that sits behind nginx, which
//! serves https with a certificate from a CA made here and answers 401
//! without the right bearer token, and asks a `confirm-promotion` webhook
//! served over https (another certificate of that CA) that wants basic
//! auth. The CA, the token and the password reach `sluice` only through
//! `--access-file`; no secret shows in what `sluice` prints. Bad access files are refused at start, naming the entry and
//! the field.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_tests::*;

const TOKEN: &str = "prom-secret-7f3a9c1e";
const PASSWORD: &str = "hook-pass-2b8d";

/// nginx as an https front for `upstream` that wants `Authorization:
/// Bearer TOKEN`; its access log holds one status per line.
struct Front {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Front {
    async fn start(dir: &Path, upstream: &str, cert: &Path, key: &Path) -> Self {
        let nginx = which("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))
            .unwrap_or_else(|| {
                panic!(
                    "nginx is not installed: run `apt-get install -y nginx` (tests/run does this)"
                )
            });
        let port = free_port();
        let log = dir.join("access.log");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  log_format st '$status';\n  access_log {log} st;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location / {{\n      if ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }}\n\
                   proxy_pass {upstream};\n    }}\n  }}\n}}\n",
            log = log.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        eventually("nginx to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self { child, port, log }
    }

    /// How many requests nginx answered with `status`.
    fn answered(&self, status: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim() == status)
            .count()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn baseline() -> Faults {
    Faults {
        error_rate: 0.01,
        error_status: 500,
        ..Faults::default()
    }
}

/// `sluice rollout` with `args`, its output captured (blocking: run it on
/// a blocking thread while load runs); killed, and the test failed, when
/// it has not ended within 120 s.
fn run_sluice(args: Vec<String>) -> std::process::Output {
    output_within(
        Command::new(bin("sluice"))
            .arg("rollout")
            .args(args)
            .args(["--output", "json"]),
        Duration::from_secs(120),
    )
}

#[tokio::test]
async fn a_release_is_gated_on_prometheus_and_a_webhook_behind_https_with_credentials() {
    let dir = TempDir::new("outbound");
    let stable = sluice_loadtest::start_backend(BackendOptions {
        faults: baseline(),
        seed: 2,
        ..BackendOptions::new("stable")
    })
    .await
    .unwrap();
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults: baseline(),
        seed: 3,
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let prometheus = Prometheus::start(&[proxy.admin_addr]).await;
    prometheus.wait_for_targets_up(1).await;
    let ca = TestCa::new("sluice outbound test CA");
    let (cert, key, ca_file) = ca.write_leaf(&dir.path, "front", &["127.0.0.1", "localhost"]);
    let front = Front::start(&dir.path, &prometheus.url, &cert, &key).await;
    let url = format!("https://127.0.0.1:{}", front.port);

    // The webhook: 200 with basic auth `sluice:PASSWORD`, 401 otherwise.
    let (hook_cert, hook_key) = ca.leaf(&["localhost"]);
    let hook = BasicAuthEndpoint::start(&hook_cert, &hook_key, "sluice", PASSWORD).await;
    let hook_url = format!("https://localhost:{}/confirm", hook.addr.port());

    let token_file = dir.path.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let password_file = dir.path.join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let access = dir.path.join("access.yaml");
    std::fs::write(
        &access,
        format!(
            "- url: {url}/\n  ca_file: {ca}\n  bearer_token_file: {}\n\
             - url: https://localhost:{}/\n  ca_file: {ca}\n  basic_auth: {{ username: sluice, password_file: {} }}\n",
            token_file.display(),
            hook.addr.port(),
            password_file.display(),
            ca = ca_file.display(),
        ),
    )
    .unwrap();

    let (load, _report) = steady_load(&format!("http://{}/", proxy.addr), 200.0);
    let args: Vec<String> = [
        "--admin",
        &format!("http://{}", proxy.admin_addr),
        "--route",
        "web",
        "--canary",
        &canary.url(),
        "--steps",
        "20,50",
        "--interval",
        "2s",
        "--min-requests",
        "20",
        "--progress-deadline",
        "10s",
        "--gate",
        "threshold",
        "--success-rate",
        "95",
        "--prometheus",
        &url,
        "--prometheus-window",
        "2s",
        "--access-file",
        &access.display().to_string(),
        "--webhook",
        &format!("confirm-promotion={hook_url}"),
        "--control-socket",
        &dir.path.join("control.sock").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || run_sluice(args))
        .await
        .unwrap();
    load.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a tick")).unwrap();
    assert_eq!(last["phase"], "Succeeded", "{stdout}");
    assert!(
        front.answered("200") >= 3,
        "the gate did not read Prometheus through the https front: {} answers 200, {} 401",
        front.answered("200"),
        front.answered("401")
    );
    assert_eq!(front.answered("401"), 0, "a call went without the token");
    assert!(
        hook.allowed() >= 1 && hook.refused() == 0,
        "the webhook was not called with its basic auth: {} allowed, {} refused",
        hook.allowed(),
        hook.refused()
    );
    for secret in [TOKEN, PASSWORD] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret was printed"
        );
    }
}

/// Bad access files: each refused at start (exit 2) with an error naming
/// the file, the entry and the field, before anything is changed. A secret
/// written where a file's name goes is never echoed.
#[tokio::test]
async fn bad_access_files_are_refused_naming_the_entry_and_field() {
    let dir = TempDir::new("outbound-bad");
    let not_pem = dir.path.join("not.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let empty = dir.path.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let secret = dir.path.join("secret");
    std::fs::write(&secret, format!("{TOKEN}\n")).unwrap();
    let missing = dir.path.join("missing");
    let control = dir.path.join("control");
    std::fs::write(&control, "tok\x7fen\n").unwrap();
    let cases = [
        (
            "a CA file with no certificate",
            format!(
                "- url: https://a.example/\n  ca_file: {}\n",
                not_pem.display()
            ),
            "entry 0: ca_file:",
        ),
        (
            "an unreadable CA file",
            format!(
                "- url: https://a.example/\n  ca_file: {}\n",
                missing.display()
            ),
            "entry 0: ca_file: cannot read",
        ),
        (
            "a missing token file",
            format!(
                "- url: https://a.example/\n- url: https://b.example/\n  bearer_token_file: {}\n",
                missing.display()
            ),
            "entry 1: bearer_token_file: cannot read",
        ),
        (
            "an empty password file",
            format!(
                "- url: https://a.example/\n  basic_auth: {{ username: u, password_file: {} }}\n",
                empty.display()
            ),
            "entry 0: basic_auth.password_file:",
        ),
        (
            "an unknown field",
            "- url: https://a.example/\n  bearer_token: inline\n".to_string(),
            "unknown field `bearer_token`",
        ),
        (
            "a URL that is not http(s)",
            format!(
                "- url: ftp://user:{TOKEN}@a.example/\n  bearer_token_file: {}\n",
                secret.display()
            ),
            "entry 0: url:",
        ),
        (
            "a password written inline",
            "- url: https://a.example/\n  basic_auth: \"sluice:hunter2-inline\"\n".to_string(),
            "not an access list at line 2",
        ),
        (
            "a token holding a control byte",
            format!(
                "- url: https://a.example/\n  bearer_token_file: {}\n",
                control.display()
            ),
            "bearer_token_file: holds a byte",
        ),
        (
            "a token written in place of its file's name",
            format!("- url: https://a.example/\n  bearer_token_file: {TOKEN}\n"),
            "entry 0: bearer_token_file: cannot read the file it names",
        ),
        (
            "a password written in place of its file's name",
            format!(
                "- url: https://a.example/\n  basic_auth: {{ username: u, password_file: {TOKEN} }}\n"
            ),
            "entry 0: basic_auth.password_file: cannot read the file it names",
        ),
        (
            "two ways to set Authorization",
            format!(
                "- url: https://a.example/\n  bearer_token_file: {s}\n  basic_auth: {{ username: u, password_file: {s} }}\n",
                s = secret.display()
            ),
            "give one",
        ),
    ];
    for (what, yaml, expected) in cases {
        let access = dir.path.join("access.yaml");
        std::fs::write(&access, yaml).unwrap();
        let (code, stderr) = rollout_refusal(&["--access-file", &access.display().to_string()]);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("--access-file") && stderr.contains(expected),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains(TOKEN),
            "{what}: the secret was printed: {stderr}"
        );
    }
    // The proxy admin's token given in place of its file's name.
    let (code, stderr) = rollout_refusal(&["--token-file", TOKEN]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--token-file: cannot read the file it names"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token was printed: {stderr}");
}
