//! Headless Chromium driven over the DevTools protocol (a small
//! WebSocket client on a raw TCP stream: enough for one page's commands),
//! shared by the dashboard tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn chromium_path() -> PathBuf {
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

/// The page's text, as a script sees it (empty while a navigation has no
/// body yet).
const PAGE_TEXT: &str = "document.body ? document.body.innerText : ''";

/// A headless Chromium and one page's DevTools connection.
pub struct Browser {
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
    pub async fn start(extra: &[&str]) -> Self {
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
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(answer) => panic!("{method}: {answer}"),
        }
    }

    /// Sends one DevTools command: its result, or the whole answer when it
    /// is an error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
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
                if v.get("error").is_some() {
                    return Err(v);
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// A JavaScript expression's value in the page. An evaluation that a
    /// navigation cut off (the page reloads itself, or a form was sent) is
    /// made again in the new page, up to 50 times 100 ms apart.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let mut tries = 0;
        let r = loop {
            match self.try_call("Runtime.evaluate", params.clone()).await {
                Ok(r) => break r,
                Err(answer)
                    if tries < 50
                        && answer["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("navigated or closed")) =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(answer) => panic!("Runtime.evaluate of {expression}: {answer}"),
            }
        };
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn open(&mut self, url: &str) {
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

    /// The page's text (empty while a navigation has no body yet).
    pub async fn text(&mut self) -> String {
        self.eval(PAGE_TEXT)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Evaluates `expression` every 100 ms until `done` holds of its value
    /// or `within` has passed; the value it had last.
    pub async fn poll(
        &mut self,
        expression: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let value = self.eval(expression).await;
            if done(&value) || std::time::Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's text once it contains `wanted`, or as it is when
    /// `within` has passed.
    pub async fn text_once_it_says(&mut self, wanted: &str, within: Duration) -> String {
        let text = self
            .poll(PAGE_TEXT, within, |v| {
                v.as_str().is_some_and(|t| t.contains(wanted))
            })
            .await;
        text.as_str().unwrap_or("").to_string()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self, file: &Path) {
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

/// Every drawn point of `series` in plot `plot`: its data attributes.
pub const POINTS_JS: &str = r#"(plot, series) => Array.from(document.querySelectorAll(`figure[data-plot="${plot}"] circle[data-series="${series}"]`)).map(c => Object.assign({}, c.dataset))"#;

pub async fn points(b: &mut Browser, plot: &str, series: &str) -> Vec<Value> {
    b.eval(&format!("({POINTS_JS})({plot:?}, {series:?})"))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{s} is not a number")),
        Value::Number(n) => n.as_f64().unwrap(),
        other => panic!("{other} is not a number"),
    }
}

/// Opens the report file with every network request failing.
pub async fn open_offline(file: &Path) -> Browser {
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
