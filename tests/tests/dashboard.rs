//! The release dashboard and report in a real browser: headless Chromium
//! (Debian's `chromium`) driven through the DevTools protocol, on pages
//! served by real `sluice rollout --dashboard` runs against a real proxy,
//! real backends and steady load (a promoted, a rolled-back and an
//! experiment release).
//!
//! What a user sees is checked against the release record the run wrote
//! (`<socket>.releases.json`): the numbers drawn (the SVG's data
//! attributes) equal it, the explanation names the check and evidence that
//! decided, the open page gains points while the release runs (its own
//! poll, no reload), a cross-site POST cannot press promote, the report
//! file renders with the network disabled, and screenshots of the three
//! release reports are written to docs/img/ for docs/dashboard.md.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === Chromium over the DevTools protocol ===

fn chromium_path() -> PathBuf {
    which("chromium")
        .or_else(|| which("chromium-browser"))
        .expect("these tests need Chromium: apt-get install chromium")
}

/// The flags of every headless run: no sandbox (root in a container), no
/// GPU, nothing fetched behind the test's back, a fresh profile.
fn chromium_command(profile: &Path) -> Command {
    let mut c = Command::new(chromium_path());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1100,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A headless Chromium and one page's DevTools connection.
struct Browser {
    child: Child,
    ws: TcpStream,
    next_id: u64,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn start(extra: &[&str]) -> Self {
        let profile = TempDir::new("chromium");
        let mut child = chromium_command(&profile.path)
            .args(extra)
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let port: u16 = browser_ws["ws://127.0.0.1:".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let devtools: SocketAddr = ([127, 0, 0, 1], port).into();
        // The page chromium opened.
        let targets: Value = eventually(
            "chromium lists its page",
            Duration::from_secs(10),
            || async {
                let (_, _, body) = get(&format!("http://{devtools}/json/list")).await.ok()?;
                let v: Value = serde_json::from_slice(&body).ok()?;
                v.as_array()?
                    .iter()
                    .any(|t| t["type"] == "page")
                    .then_some(v)
            },
        )
        .await;
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap();
        let ws_url = page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let path = ws_url
            .split_once(&format!("127.0.0.1:{port}/"))
            .expect("a local DevTools URL")
            .1;
        let ws = ws_connect(devtools, path).await;
        Self {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result (events skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        ws_send(&mut self.ws, msg.as_bytes()).await;
        loop {
            let text = tokio::time::timeout(Duration::from_secs(60), ws_recv(&mut self.ws))
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// A JavaScript expression's value in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Opens `url` and waits until it has loaded.
    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.eval("document.readyState").await == "complete"
                && self.eval("location.href").await.as_str() != Some("about:blank")
            {
                return;
            }
        }
        panic!("{url} did not load");
    }

    /// The page's text.
    async fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// A PNG of the whole page.
    async fn screenshot(&mut self, file: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, png).unwrap();
    }
}

async fn ws_connect(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect to DevTools");
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One masked text frame (clients must mask).
async fn ws_send(s: &mut TcpStream, payload: &[u8]) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81u8];
    let n = payload.len();
    if n < 126 {
        frame.push(0x80 | n as u8);
    } else if n < 65536 {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(n as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
}

/// One whole message (continuation frames joined; pings skipped).
async fn ws_recv(s: &mut TcpStream) -> String {
    let mut message = Vec::new();
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("DevTools frame");
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await.unwrap();
        if opcode == 0x9 || opcode == 0xA {
            continue;
        }
        message.extend_from_slice(&payload);
        if fin {
            return String::from_utf8_lossy(&message).into_owned();
        }
    }
}

// === a real release with its dashboard ===

struct Release {
    stable: BackendHandle,
    canary: BackendHandle,
    proxy: ProxyHandle,
    dir: TempDir,
    dashboard: SocketAddr,
}

impl Release {
    async fn new(canary: Faults) -> Self {
        let one_percent = Faults {
            error_rate: 0.01,
            ..Faults::default()
        };
        let stable = sluice_loadtest::start_backend(BackendOptions {
            faults: one_percent.clone(),
            seed: 21,
            ..BackendOptions::new("stable")
        })
        .await
        .unwrap();
        let canary = sluice_loadtest::start_backend(BackendOptions {
            faults: canary,
            seed: 22,
            ..BackendOptions::new("canary")
        })
        .await
        .unwrap();
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}' }}\n",
            stable.url()
        )))
        .await;
        Self {
            stable,
            canary,
            proxy,
            dir: TempDir::new("dashboard"),
            dashboard: ([127, 0, 0, 1], free_port()).into(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path.join("control.sock")
    }

    fn report_file(&self) -> PathBuf {
        self.dir.path.join("report.html")
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--admin",
            &format!("http://{}", self.proxy.admin_addr),
            "--route",
            "web",
            "--canary",
            &self.canary.url(),
            "--steps",
            "20,50",
            "--interval",
            "3s",
            "--scrape-interval",
            "1s",
            "--min-requests",
            "50",
            "--rho-max",
            "2",
            "--max-duration",
            "150s",
            "--progress-deadline",
            "30s",
            "--baseline",
            "3s",
            "--control-socket",
            &self.socket().display().to_string(),
            "--dashboard",
            &self.dashboard.to_string(),
            "--report",
            &self.report_file().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.dashboard)
    }

    /// The records `sluice rollout` kept next to its socket.
    fn records(&self) -> Vec<Value> {
        let mut name = self.socket().file_name().unwrap().to_os_string();
        name.push(".releases.json");
        let text = std::fs::read_to_string(self.socket().with_file_name(name))
            .expect("the release record file");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        v["releases"].as_array().unwrap().clone()
    }

    /// The release page's path, once the dashboard lists it.
    async fn release_path(&self) -> String {
        eventually(
            "the dashboard lists the release",
            Duration::from_secs(30),
            || async {
                let (status, _, body) = get(&self.url("/")).await.ok()?;
                if status != 200 {
                    return None;
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                let at = body.find("data-release=\"")? + "data-release=\"".len();
                Some(body[at..at + body[at..].find('"')?].to_string())
            },
        )
        .await
    }
}

fn img(name: &str) -> PathBuf {
    workspace_root().join("docs/img").join(name)
}

/// Every drawn point of `series` in plot `plot`: its data attributes.
const POINTS_JS: &str = r#"(plot, series) => Array.from(document.querySelectorAll(`figure[data-plot="${plot}"] circle[data-series="${series}"]`)).map(c => Object.assign({}, c.dataset))"#;

async fn points(b: &mut Browser, plot: &str, series: &str) -> Vec<Value> {
    b.eval(&format!("({POINTS_JS})({plot:?}, {series:?})"))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{s} is not a number")),
        Value::Number(n) => n.as_f64().unwrap(),
        other => panic!("{other} is not a number"),
    }
}

/// The drawn failure-rate and evidence points equal the record, scrape by
/// scrape.
async fn assert_drawn_equals_record(b: &mut Browser, record: &Value) {
    let scrapes = record["scrapes"].as_array().unwrap();
    for (arm, key) in [("canary", "canary"), ("primary", "primary")] {
        let drawn = points(b, "failure-rate", arm).await;
        let recorded: Vec<&Value> = scrapes
            .iter()
            .filter(|s| s[key]["requests"].as_u64().unwrap() > 0)
            .collect();
        assert_eq!(
            drawn.len(),
            recorded.len(),
            "{arm}: one point per scrape with traffic"
        );
        for (d, s) in drawn.iter().zip(&recorded) {
            assert_eq!(num(&d["t"]), s["t"].as_f64().unwrap());
            assert_eq!(
                num(&d["requests"]) as u64,
                s[key]["requests"].as_u64().unwrap(),
                "{arm} at {}",
                s["t"]
            );
            assert_eq!(
                num(&d["failures"]) as u64,
                s[key]["failures"].as_u64().unwrap(),
                "{arm} at {}",
                s["t"]
            );
            let rate = s[key]["failures"].as_f64().unwrap() / s[key]["requests"].as_f64().unwrap();
            assert!(
                (num(&d["value"]) - rate).abs() < 1e-12,
                "{arm} at {}",
                s["t"]
            );
            assert!(
                num(&d["low"]) <= rate + 1e-12 && rate <= num(&d["high"]) + 1e-12,
                "the interval holds the rate: {d} {rate}"
            );
        }
    }
    let against = points(b, "evidence-0", "against the canary").await;
    let errors: Vec<&Value> = scrapes
        .iter()
        .filter_map(|s| {
            s["checks"]
                .as_array()?
                .iter()
                .find(|c| c["check"] == "errors")
        })
        .filter(|c| c.get("against").is_some())
        .collect();
    assert!(
        !errors.is_empty(),
        "the record has the errors check's evidence"
    );
    assert_eq!(against.len(), errors.len());
    for (d, c) in against.iter().zip(&errors) {
        assert_eq!(num(&d["value"]), c["against"].as_f64().unwrap());
    }
    // The weight drawn at each scrape is the record's.
    let weights = points(b, "weight", "weight").await;
    for s in scrapes {
        assert!(
            weights
                .iter()
                .any(|w| num(&w["t"]) == s["t"].as_f64().unwrap()),
            "a weight point at {}",
            s["t"]
        );
    }
}

/// Opens the report file with every network request failing.
async fn open_offline(file: &Path) -> Browser {
    let mut b = Browser::start(&[
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ])
    .await;
    b.call("Network.enable", json!({})).await;
    b.call(
        "Network.emulateNetworkConditions",
        json!({"offline": true, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
    )
    .await;
    b.open(&format!("file://{}", file.display())).await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_release_is_drawn_live_as_recorded_and_cannot_be_promoted_cross_site() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 400.0);
    let rollout = Rollout::start(&r.args(&[]));
    let path = r.release_path().await;

    // The open page follows the release by itself (its poll, no reload).
    let mut b = Browser::start(&[]).await;
    b.open(&r.url(&path)).await;
    let scrapes_shown = "Number(document.querySelector('[data-field=scrapes]').textContent)";
    let first = b.eval(scrapes_shown).await.as_f64().unwrap();
    b.eval("window.__same_document = true").await;
    let mut later = first;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        later = b.eval(scrapes_shown).await.as_f64().unwrap();
        if later >= first + 2.0 {
            break;
        }
    }
    assert!(
        later >= first + 2.0,
        "the open page stayed at {first} scrapes"
    );
    let drawn = b
        .eval("document.querySelectorAll('figure[data-plot=weight] circle').length")
        .await;
    assert!(num(&drawn) > 0.0);
    assert!(later > first);
    assert_eq!(
        b.eval("window.__same_document").await,
        true,
        "no reload: the page's own poll"
    );

    // A cross-site page cannot press promote: its form carries no token
    // and the browser sends no session cookie (SameSite=Strict).
    let target = r.url(&format!("{path}/action"));
    let form_target = target.clone();
    let evil = serve_http(move |_req| {
        let target = form_target.clone();
        let html = format!(
            "<form id=f method=post action='{target}'><input name=action value=promote><input name=token value=guess></form><script>document.getElementById('f').submit()</script>"
        );
        async move {
            http::Response::builder()
                .header("content-type", "text/html")
                .body(http_body_util::Full::new(bytes::Bytes::from(html)))
                .unwrap()
        }
    })
    .await;
    // The browser has a session with the dashboard (it opened the page).
    b.open(&format!("http://{evil}/")).await;
    let mut refused = String::new();
    for _ in 0..100 {
        refused = b.text().await;
        if refused.contains("Refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused.contains("not from this dashboard") || refused.contains("token"),
        "{refused}"
    );
    // With the dashboard's own session and token but a foreign Origin: refused too.
    let (_, headers, body) = get(&r.url(&format!("{path}/confirm?action=promote")))
        .await
        .unwrap();
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = String::from_utf8_lossy(&body).into_owned();
    let at = body.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    let token = body[at..at + 64].to_string();
    let form = format!("action=promote&token={token}");
    let (code, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Cookie: {cookie}"),
        "-H",
        "Origin: http://evil.example",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data",
        &form,
        &target,
    ]);
    assert_eq!((code, out.as_str()), (0, "403"));
    // Without the token, from the dashboard's own origin: refused.
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Cookie: {cookie}"),
        "-H",
        &format!("Origin: http://{}", r.dashboard),
        "--data",
        "action=promote",
        &target,
    ]);
    assert_eq!(out, "403");
    // An unknown release is a 404 page.
    b.open(&r.url("/releases/_/web/release-0000000000.0")).await;
    assert!(b.text().await.contains("There is no release"));
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &r.url("/releases/_/web/nope"),
    ]);
    assert_eq!(out, "404");

    let (code, events) = rollout.wait(Duration::from_secs(200)).await;
    load.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert!(
        events
            .iter()
            .all(|e| !e["message"].as_str().unwrap_or("").contains("promote now")),
        "nothing promoted it but the evidence"
    );
    let records = r.records();
    let record = records.last().unwrap();
    assert_eq!(record["outcome"], "promoted");

    // The report renders with the network off and draws the record.
    let mut offline = open_offline(&r.report_file()).await;
    assert_drawn_equals_record(&mut offline, record).await;
    // Each advance is explained by the check that was proven last, with its evidence.
    let decisions = record["decisions"].as_array().unwrap();
    let advance = decisions
        .iter()
        .position(|d| d["kind"] == "advance" && d.get("check").is_some())
        .expect("an advance decided by a check");
    let d = &decisions[advance];
    let check = d["check"].as_str().unwrap();
    let evidence = d["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap();
    let li = offline
        .eval(&format!(
            "document.querySelector('li[data-decision=\"{}\"]').textContent",
            advance + 1
        ))
        .await;
    let li = li.as_str().unwrap();
    assert!(li.contains(&format!("check {check} decided")), "{li}");
    let v = evidence["for_canary"]
        .as_f64()
        .unwrap_or_else(|| panic!("the deciding check has evidence: {d}"));
    assert!(
        li.contains(&format!("evidence for the canary {}", fmt_num(v))),
        "{li} / {v}"
    );
    assert!(
        record["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "finish")
    );
    offline.screenshot(&img("release-promoted.png")).await;
    drop(r.stable);
}

/// As the report prints numbers.
fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_release_explains_the_check_and_evidence_that_decided() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.08,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 400.0);
    let (code, events) = Rollout::start(&r.args(&[]))
        .wait(Duration::from_secs(200))
        .await;
    load.stop();
    assert_eq!(code, 1, "{}", last_message(&events));
    let records = r.records();
    let record = records.last().unwrap();
    assert_eq!(record["outcome"], "rolled back");
    let decisions = record["decisions"].as_array().unwrap();
    let n = decisions
        .iter()
        .position(|d| d["kind"] == "rollback")
        .unwrap();
    let d = &decisions[n];
    assert_eq!(d["check"], "errors", "{d}");
    let e = d["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "errors")
        .unwrap();
    let (against, threshold) = (
        e["against"].as_f64().unwrap(),
        e["against_threshold"].as_f64().unwrap(),
    );
    assert!(against >= threshold, "{e}");

    let mut b = open_offline(&r.report_file()).await;
    assert_drawn_equals_record(&mut b, record).await;
    let li = b
        .eval(&format!(
            "document.querySelector('li[data-decision=\"{}\"]').textContent",
            n + 1
        ))
        .await;
    let li = li.as_str().unwrap().to_string();
    assert!(li.starts_with("Rolled back at"), "{li}");
    assert!(
        li.contains(&format!(
            "check errors decided, its evidence against the canary {} past its threshold {}",
            fmt_num(against),
            fmt_num(threshold)
        )),
        "{li}"
    );
    // The decision is marked on the evidence plot at its time.
    let mark = b
        .eval(&format!("document.querySelector('figure[data-plot=\"evidence-0\"] line[data-decision=\"{}\"]').dataset.t", n + 1))
        .await;
    assert_eq!(num(&mark), d["t"].as_f64().unwrap());
    b.screenshot(&img("release-rolled-back.png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_experiments_report_shows_both_arms_as_recorded() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 300.0);
    let mut args = r.args(&[
        "--strategy",
        "experiment",
        "--experiment-duration",
        "8s",
        "--latency-bound",
        "100ms",
    ]);
    let steps = args.iter().position(|a| a == "--steps").unwrap();
    args[steps + 1] = "30".into();
    let (code, events) = Rollout::start(&args).wait(Duration::from_secs(120)).await;
    load.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    let records = r.records();
    let record = records.last().unwrap();
    assert_eq!(record["outcome"], "concluded");
    assert_eq!(record["strategy"], "experiment");
    let report = &record["report"];
    let mut b = open_offline(&r.report_file()).await;
    assert_drawn_equals_record(&mut b, record).await;
    for (arm, key) in [("canary", "canary"), ("primary", "stable")] {
        let row = b
            .eval(&format!(
                "Object.assign({{}}, document.querySelector('tr[data-arm=\"{arm}\"]').dataset)"
            ))
            .await;
        assert_eq!(
            num(&row["requests"]) as u64,
            report[key]["requests"].as_u64().unwrap(),
            "{arm}"
        );
        assert_eq!(
            num(&row["failures"]) as u64,
            report[key]["failures"].as_u64().unwrap(),
            "{arm}"
        );
    }
    let text = b.text().await;
    assert!(text.contains("Experiment report"), "{text}");
    assert!(text.contains("Check errors: the canary is"), "{text}");
    b.screenshot(&img("release-experiment.png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_port_in_use_exits_2_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = rollout_refusal(&["--dashboard", &addr]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--dashboard: cannot listen on {addr}")),
        "{stderr}"
    );
    let out = Command::new(bin("sluice"))
        .args(["demo", "--scenario", "healthy", "--dashboard", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}
