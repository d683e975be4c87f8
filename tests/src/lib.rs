//! Test support for Sluice's end-to-end tests: start proxies and backends on
//! 127.0.0.1, scrape and parse `/metrics`, poll with [`eventually`] instead of
//! sleeping, and small purpose-built upstreams (header echo, WebSocket-style
//! upgrade echo, a gRPC-framed HTTP/2 server).

pub mod fake_kube;
pub mod gateway_crds;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub use sluice_loadtest::{BackendHandle, BackendOptions, Faults, Latency};
pub use sluice_proxy::ProxyHandle;

// === load ===

/// A place among the releases of one test file that put steady load
/// through debug builds (each a fifth to a half of one core, measured:
/// 300–1,000 req/s): two at a time on two cores, so that no release is
/// judged on another's CPU starvation. Hold the permit for the release.
/// Each test file is its own process, so the two places are per file.
pub async fn release_slot() -> tokio::sync::SemaphorePermit<'static> {
    static RELEASES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    RELEASES.acquire().await.expect("never closed")
}

// === polling ===

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `url` answers 2xx, or panics naming `what`.
pub async fn wait_until_ok(what: &str, url: &str, timeout: Duration) {
    eventually(what, timeout, || async move {
        get(url)
            .await
            .ok()
            .filter(|(s, _, _)| s.is_success())
            .map(|_| ())
    })
    .await;
}

// === metrics ===

pub use sluice_operator::scrape::{Sample, Scrape, parse_metrics};

pub async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, _, body) = get(&format!("http://{admin}/metrics"))
        .await
        .expect("scrape /metrics");
    assert_eq!(status, StatusCode::OK);
    Scrape::parse(&String::from_utf8_lossy(&body))
}

// === clients ===

pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One GET on a fresh connection.
pub async fn get(url: &str) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    send(&h1_client(), Request::get(url).body(Full::default())?).await
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let resp = client.request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// PUTs JSON to an admin URL; returns status and parsed body.
pub async fn put_json(
    url: &str,
    body: serde_json::Value,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::put(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let (status, _, body) = send(&h1_client(), req).await.expect("admin PUT");
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, value)
}

// === in-process parts ===

pub async fn backend(name: &str) -> BackendHandle {
    sluice_loadtest::start_backend(BackendOptions::new(name))
        .await
        .expect("start backend")
}

/// A backend that fails `error_rate` of its requests (seeded dice), as real
/// services do.
pub async fn failing_backend(name: &str, error_rate: f64, seed: u64) -> BackendHandle {
    sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            error_rate,
            ..Faults::default()
        },
        seed,
        ..BackendOptions::new(name)
    })
    .await
    .expect("start backend")
}

/// The message of the last tick a `sluice rollout --output json` printed.
pub fn last_message(events: &[serde_json::Value]) -> String {
    events
        .last()
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A proxy config around `routes_yaml` (a YAML list), on ephemeral ports.
pub fn proxy_yaml(routes_yaml: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nroutes:\n{routes_yaml}")
}

pub async fn start_proxy(yaml: &str) -> ProxyHandle {
    let config = sluice_proxy::Config::from_yaml(yaml).expect("test config parses");
    sluice_proxy::start(config, sluice_proxy::StartOptions::default())
        .await
        .expect("proxy starts")
}

/// A port that was free a moment ago, for child processes that need a
/// fixed port before they start (and in-process servers that must come
/// back on the same port).
///
/// Taken from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port from `bind(0)` is released
/// before the child binds it, and in that window any outgoing connection
/// of the busy test machine may take it as its source port (the child
/// then fails with "Address already in use"). Below that range only an
/// explicit bind takes a port, and a pick is reserved until this process
/// ends, against the other test processes too ([`free_port_from`]).
pub fn free_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    free_port_from(std::process::id().wrapping_mul(7919) ^ nanos)
}

/// [`free_port`], trying the range from `start` (modulo its length) on.
///
/// A port is handed out once per machine while its process lives: its
/// pick takes an exclusive `flock` on `$TMPDIR/sluice-test-ports/<port>`
/// and keeps it until the process ends (the kernel lets go of it however
/// the process ends, so no reservation outlives its owner), and a port
/// another process holds is passed over. The test binaries that run at
/// once (two `cargo test` runs on one machine) each pick ports long
/// before they bind them (a proxy started after a take-over, a child
/// process): a check by binding alone let two of them pick the same port
/// in that window, and the later bind failed. Where the directory cannot
/// be used, a pick is checked by binding only.
pub fn free_port_from(start: u32) -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<(u16, Option<std::fs::File>)>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000u16, ephemeral_low)
    } else {
        (ephemeral_low.saturating_add(1), u16::MAX)
    };
    let span = u32::from(high - low);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = low + ((start % span + i) % span) as u16;
        if handed.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let Ok(reservation) = reserve_port(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push((port, reservation));
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {low} and {high}");
}

/// An exclusive lock on `port`'s file in the machine's directory of
/// reservations (see [`free_port_from`]): `Err` when another process
/// holds it, `Ok(None)` when the directory cannot be used.
fn reserve_port(port: u16) -> Result<Option<std::fs::File>, ()> {
    let dir = std::env::temp_dir().join("sluice-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(()),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

// === child processes ===

/// Runs `command` with its stdout and stderr captured, as
/// `Command::output` does, but kills it and fails the test when it has not
/// ended within `limit` (blocking: call it from a blocking thread).
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("the child's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{command:?} did not end within {limit:?}");
        }
    }
}

/// `sluice rollout` with `extra` flags for a route whose proxy is never
/// reached (its admin address refuses): for flags refused before anything
/// is dialled. Its exit code and stderr.
pub fn rollout_refusal(extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("sluice"))
        .args([
            "rollout",
            "--admin",
            "http://127.0.0.1:1",
            "--route",
            "web",
            "--canary",
            "http://127.0.0.1:2",
        ])
        .args(extra)
        .output()
        .expect("run sluice rollout");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An https endpoint that answers 200 to requests with basic auth
/// `user:password` and 401 to any other; how many of each it got.
pub struct BasicAuthEndpoint {
    pub addr: SocketAddr,
    allowed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BasicAuthEndpoint {
    /// Serves on 127.0.0.1 with the certificate `cert_pem`/`key_pem`.
    pub async fn start(cert_pem: &str, key_pem: &str, user: &str, password: &str) -> Self {
        use base64::Engine;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let (allowed, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, r) = (allowed.clone(), refused.clone());
        let addr = serve_https_on(
            "127.0.0.1:0".parse().expect("static address"),
            cert_pem,
            key_pem,
            move |req: Request<Incoming>| {
                let ok = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| v == expected.as_str());
                if ok { &a } else { &r }.fetch_add(1, Ordering::SeqCst);
                async move {
                    Response::builder()
                        .status(if ok { 200 } else { 401 })
                        .body(Full::new(Bytes::new()))
                        .expect("response")
                }
            },
        )
        .await;
        Self {
            addr,
            allowed,
            refused,
        }
    }

    /// Requests with the right credentials so far.
    pub fn allowed(&self) -> usize {
        self.allowed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests without them so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An HTTP/2 connection (prior knowledge) to `addr`, ready for a request.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

/// Path of a workspace binary, built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace` (tests/run does)",
        path.display()
    );
    path
}

/// Runs `sluice-proxy check FILE`: (exit code, stderr).
pub fn proxy_check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin("sluice-proxy"))
        .arg("check")
        .arg(file)
        .output()
        .expect("run sluice-proxy check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `sluice-proxy` child process with its own config file.
pub struct ChildProxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl ChildProxy {
    /// Writes `text` as its config file and waits until the proxy has
    /// refused `failures` reloads in all (`sluice_config_reloads_total`
    /// with `result="failure"`); `what` names the wait in a timeout.
    pub async fn write_refused_config(&self, text: &str, failures: f64, what: &str) {
        std::fs::write(&self.config_path, text).unwrap();
        eventually(what, Duration::from_secs(10), || async {
            let m = scrape(self.admin).await;
            (m.sum("sluice_config_reloads_total", &[("result", "failure")]) == failures)
                .then_some(())
        })
        .await;
    }

    /// Writes `routes_yaml` into a config and starts the binary on it.
    pub async fn start(routes_yaml: &str, extra_args: &[&str]) -> Self {
        Self::start_with(routes_yaml, "", "", extra_args).await
    }

    /// Like [`ChildProxy::start`], with more lines under `admin:`
    /// (indented) and at the top level of the config.
    pub async fn start_with(
        routes_yaml: &str,
        admin_yaml: &str,
        top_yaml: &str,
        extra_args: &[&str],
    ) -> Self {
        let dir = TempDir::new("proxy");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config_path = dir.path.join("sluice.yaml");
        std::fs::write(
            &config_path,
            format!("listen: {addr}\nadmin:\n  listen: {admin}\n{admin_yaml}{top_yaml}routes:\n{routes_yaml}"),
        )
        .expect("write config");
        let child = Command::new(bin("sluice-proxy"))
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice-proxy");
        let proxy = Self {
            child,
            addr,
            admin,
            config_path,
            _dir: dir,
        };
        wait_until_ok(
            "sluice-proxy to be ready",
            &format!("http://{admin}/readyz"),
            Duration::from_secs(10),
        )
        .await;
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Peak resident memory of the process, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sluice-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads until the peer closes (true) or `limit` passes (false); anything
/// the peer sends first is returned too.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (false, seen),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

// === purpose-built upstreams ===

/// Reads from a raw connection until `buf` holds a whole HTTP/1 head (up
/// to its blank line); where that head ends in `buf`. None: the connection
/// ended first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        fill(stream, buf).await?;
    }
}

/// Reads one HTTP/1 request from a raw connection, for backends written on
/// raw sockets: the head (bytes already in `buf` first) and the body its
/// `Content-Length` announces, or its chunks (decoded) when it is
/// `Transfer-Encoding: chunked`. What follows stays in `buf`. None: the
/// connection ended first (or a chunk-size line is not a size).
pub async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let head_end = read_head(stream, buf).await?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let field = |wanted: &str| {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    if field("transfer-encoding").as_deref() == Some("chunked") {
        buf.drain(..head_end);
        let body = read_chunks(stream, buf).await?;
        return Some((head, body));
    }
    let length = field("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        fill(stream, buf).await?;
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((head, body))
}

/// Reads more of `stream` into `buf`; None at its end.
async fn fill<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Reads a chunked body (and its trailer section) from the front of
/// `buf`, reading more as needed; returns its data.
async fn read_chunks<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(stream, buf).await?;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer fields (if any) up to the blank line.
            loop {
                if buf.starts_with(b"\r\n") {
                    buf.drain(..2);
                    return Some(body);
                }
                match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    Some(i) => {
                        buf.drain(..i + 4);
                        return Some(body);
                    }
                    None => fill(stream, buf).await?,
                }
            }
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// The length an [`endless_backend`] declares: more than any test reads.
pub const ENDLESS_LENGTH: u64 = 1 << 30;

/// A raw HTTP/1.1 backend that answers every request 200 with a body of
/// [`ENDLESS_LENGTH`] bytes and writes it as fast as it is taken, until
/// the connection fails: a backend that always has more of its answer
/// ready. Its address.
pub async fn endless_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut socket, &mut Vec::new()).await.is_none() {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {ENDLESS_LENGTH}\r\n\r\n"
                );
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = ENDLESS_LENGTH;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    addr
}

/// A backend on raw h2 (prior knowledge): each request stream, as its
/// connection accepts it, is handed to `stream` (so what the call does
/// before its future runs happens in the streams' order), and the future
/// it gives is spawned. Its address.
pub async fn serve_h2<F, Fut>(stream: F) -> SocketAddr
where
    F: Fn(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let stream = stream.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(stream(req, respond));
                }
            });
        }
    });
    addr
}

/// Reads an HTTP/2 request body until it ends (or fails), giving its
/// window back as it goes; the bytes read.
pub async fn read_h2_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut read = Vec::new();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
        read.extend_from_slice(&data);
    }
    read
}

/// An HTTP/2 backend on raw h2 (prior knowledge) that resets its first
/// `refused` streams with `REFUSED_STREAM` (it promises it did no work:
/// `usize::MAX` refuses all) and answers the rest, once it has read their
/// bodies, 200 with `x-backend: name` and the body it read; its address,
/// and how many streams it saw.
pub async fn h2_refusing_backend(
    name: &'static str,
    refused: usize,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let streams = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = streams.clone();
    let addr = serve_h2(move |req, mut respond| {
        let refuse = streams.fetch_add(1, Ordering::SeqCst) < refused;
        async move {
            if refuse {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            let read = read_h2_body(&mut req.into_body()).await;
            let answer = Response::builder()
                .header("x-backend", name)
                .body(())
                .unwrap();
            if let Ok(mut sending) = respond.send_response(answer, read.is_empty()) {
                let _ = sending.send_data(Bytes::from(read), true);
            }
        }
    })
    .await;
    (addr, counted)
}

/// Serves HTTP/1.1 (with upgrades) and prior-knowledge HTTP/2 on an
/// ephemeral 127.0.0.1 port with `handler`; returns the address.
pub async fn serve_http<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_http_on("127.0.0.1:0".parse().expect("static address"), handler).await
}

/// Like [`serve_http`], on `addr`.
pub async fn serve_http_on<F, Fut, B>(addr: SocketAddr, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let addr = listener.local_addr().expect("test server address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Starts an upstream answering every request with a JSON echo of its
/// method, path, version and headers; `Upgrade` requests get a 101 and
/// every byte sent afterwards is echoed back.
/// Sends a WebSocket upgrade request to `addr` on a raw connection and
/// reads the response head; returns the connection (a tunnel, if the
/// answer was 101) and the head as text.
pub async fn websocket_handshake(addr: SocketAddr) -> (tokio::net::TcpStream, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .await
            .expect("read the response head");
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

pub async fn start_echo() -> SocketAddr {
    serve_http(echo).await
}

/// A raw TCP echo server on 127.0.0.1: each connection's bytes are sent
/// back as they come (through one bounded buffer), and once the client
/// closes its sending half the server closes its own (half-close seen
/// through, as a TCP proxy must pass it on).
pub async fn start_tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp echo");
    let addr = listener.local_addr().expect("tcp echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.headers().contains_key(header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .body(Full::default())
            .expect("101 response");
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("echo response")
}

/// Frames one gRPC message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// Splits a gRPC body into its messages.
pub fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            break;
        }
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    out
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A prior-knowledge HTTP/2 server speaking gRPC framing:
/// `/test.Echo/Repeat` answers each request message three times (a server
/// stream) then trailers `grpc-status: 0`; `/test.Echo/Missing` answers
/// trailers `grpc-status: 5` with a message. Needs `te: trailers`.
pub async fn start_grpc() -> SocketAddr {
    serve_http(grpc).await
}

async fn grpc(req: Request<Incoming>) -> Response<GrpcBody> {
    let path = req.uri().path().to_string();
    let te_ok = req
        .headers()
        .get(header::TE)
        .is_some_and(|v| v == "trailers");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
    let mut trailers = HeaderMap::new();
    if !te_ok {
        trailers.insert("grpc-status", "13".parse().expect("static"));
        trailers.insert(
            "grpc-message",
            "missing te: trailers".parse().expect("static"),
        );
    } else if path == "/test.Echo/Repeat" {
        for message in grpc_messages(&body) {
            for _ in 0..3 {
                frames.push(Ok(Frame::data(grpc_frame(&message))));
            }
        }
        trailers.insert("grpc-status", "0".parse().expect("static"));
    } else {
        trailers.insert("grpc-status", "5".parse().expect("static"));
        trailers.insert("grpc-message", "no such method".parse().expect("static"));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("grpc response")
}

// === Prometheus ===

/// A real Prometheus (Debian's `prometheus`) scraping `targets` every second.
pub struct Prometheus {
    pub child: Child,
    pub url: String,
    _dir: TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Self {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Self::start_with_targets(&format!("      - targets: [{}]\n", list.join(", "))).await
    }

    /// Each target scraped with a `namespace` target label, as Kubernetes
    /// service discovery attaches it.
    pub async fn start_in_namespaces(targets: &[(SocketAddr, &str)]) -> Self {
        let configs: String = targets
            .iter()
            .map(|(t, ns)| {
                format!("      - targets: ['{t}']\n        labels: {{namespace: '{ns}'}}\n")
            })
            .collect();
        Self::start_with_targets(&configs).await
    }

    async fn start_with_targets(static_configs: &str) -> Self {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: run `apt-get install -y prometheus` (tests/run does this)")
        });
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    static_configs:\n{static_configs}"
        );
        let config_path = dir.path.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let prometheus = Self {
            child,
            url,
            _dir: dir,
        };
        wait_until_ok(
            "prometheus to be ready",
            &format!("{}/-/ready", prometheus.url),
            Duration::from_secs(30),
        )
        .await;
        prometheus
    }

    /// Waits until every target has been scraped successfully.
    pub async fn wait_for_targets_up(&self, count: usize) {
        let url = format!("{}/api/v1/query?query=up", self.url);
        eventually(
            "prometheus to scrape every target",
            Duration::from_secs(20),
            || {
                let url = url.clone();
                async move {
                    let (_, _, body) = get(&url).await.ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                    let up = v["data"]["result"]
                        .as_array()?
                        .iter()
                        .filter(|r| r["value"][1] == "1")
                        .count();
                    (up >= count).then_some(())
                }
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

// === sluice rollout as a child process ===

/// A `sluice rollout --output json` child; its tick events arrive on `events`.
pub struct Rollout {
    pub child: Child,
    pub events: std::sync::mpsc::Receiver<serde_json::Value>,
    /// The thread forwarding stdout lines; it ends at the child's EOF.
    reader: Option<std::thread::JoinHandle<()>>,
    /// The dashboard login URL (`http://…/?login=…`) the child printed on
    /// stderr, once it has (its stderr is passed on line by line).
    login_url: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Rollout {
    pub fn start(args: &[String]) -> Self {
        let mut child = Command::new(bin("sluice"))
            .arg("rollout")
            .args(args)
            .args(["--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice rollout");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let login_url = std::sync::Arc::new(std::sync::Mutex::new(None));
        let found = login_url.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some(url) = line.strip_prefix("dashboard on ") {
                    *found.lock().expect("login url lock") = Some(url.trim().to_string());
                }
            }
        });
        let (tx, events) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            reader: Some(reader),
            login_url,
        }
    }

    /// The dashboard login URL the child printed (waits up to 30 s).
    pub async fn login_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(url) = self.login_url.lock().expect("login url lock").clone() {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "sluice rollout printed no `dashboard on URL` within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads ticks (each within 30 s) until one meets `done`; every tick
    /// read, that one last. `each` sees every tick first (an assertion
    /// that must hold all along).
    pub fn until(
        &self,
        each: impl Fn(&serde_json::Value),
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let e = self
                .events
                .recv_timeout(Duration::from_secs(30))
                .expect("ticks");
            each(&e);
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
    }

    /// Sends the child `signal` (`INT`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the exit code; gives up after `limit`. The events returned
    /// are every line the child printed: the reader thread has reached EOF.
    pub async fn wait(mut self, limit: Duration) -> (i32, Vec<serde_json::Value>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice rollout") {
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("the stdout reader thread");
                }
                let events: Vec<_> = self.events.try_iter().collect();
                return (status.code().unwrap_or(-1), events);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice rollout did not finish within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rollout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open-loop load on `url` until stopped (bounded at 120 s).
pub fn steady_load(
    url: &str,
    rate: f64,
) -> (
    std::sync::Arc<sluice_loadtest::LoadControl>,
    tokio::task::JoinHandle<sluice_loadtest::Report>,
) {
    impatient_load(url, rate, Duration::from_secs(10))
}

/// Like [`steady_load`], with clients that give up after `patience`.
pub fn impatient_load(
    url: &str,
    rate: f64,
    patience: Duration,
) -> (
    std::sync::Arc<sluice_loadtest::LoadControl>,
    tokio::task::JoinHandle<sluice_loadtest::Report>,
) {
    let mut options = sluice_loadtest::LoadOptions::new(url).expect("load URL");
    options.connections = 64;
    options.rate = Some(rate);
    options.timeout = patience;
    options.duration = Some(Duration::from_secs(120));
    options.count_header = Some(http::HeaderName::from_static("x-backend"));
    let control = sluice_loadtest::LoadControl::new();
    let task = tokio::spawn({
        let control = control.clone();
        async move {
            sluice_loadtest::run(options, control)
                .await
                .expect("valid load options")
        }
    });
    (control, task)
}

// === TLS ===

/// A TLS connection to `addr` as `localhost`, trusting only `ca_pem`.
pub async fn tls_connect(
    ca_pem: &str,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the TLS listener");
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("server name"),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

/// A test certificate authority made with rcgen.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IPs): (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_dated(names, None)
    }

    /// [`TestCa::leaf`], valid only from and until the given times when
    /// `dates` is set.
    pub fn leaf_dated(
        &self,
        names: &[&str],
        dates: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("leaf params");
        if let Some((from, until)) = dates {
            params.not_before = from;
            params.not_after = until;
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA and a leaf for `names` into `dir` as `<stem>.crt`/`<stem>.key`
    /// (and `<stem>-ca.crt`); returns the three paths.
    pub fn write_leaf(
        &self,
        dir: &std::path::Path,
        stem: &str,
        names: &[&str],
    ) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let paths = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}-ca.crt")),
        );
        std::fs::write(&paths.0, cert).expect("write cert");
        std::fs::write(&paths.1, key).expect("write key");
        std::fs::write(&paths.2, &self.cert_pem).expect("write CA");
        paths
    }
}

/// An HTTPS upstream (the demo backend's answers, over TLS with `cert`/`key`).
pub async fn start_https_backend(name: &str, cert_pem: &str, key_pem: &str) -> SocketAddr {
    let name = name.to_string();
    serve_https_on(
        "127.0.0.1:0".parse().expect("static address"),
        cert_pem,
        key_pem,
        move |_req: Request<Incoming>| {
            let name = name.clone();
            async move {
                Response::builder()
                    .header("x-backend", name.as_str())
                    .body(Full::new(Bytes::from(format!(
                        "{{\"backend\":\"{name}\",\"tls\":true}}"
                    ))))
                    .expect("response")
            }
        },
    )
    .await
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `addr` with `handler`.
pub async fn serve_https_on<F, Fut, B>(
    addr: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
    handler: F,
) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certs");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("PEM key");
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kubernetes_validator() -> PathBuf {
    let venv = workspace_root().join("target/py-venv/bin/kubernetes-validate");
    if venv.is_file() {
        return venv;
    }
    which("kubernetes-validate").unwrap_or_else(|| {
        panic!("kubernetes-validate is missing: tests/run installs it (python3 -m venv target/py-venv && target/py-venv/bin/pip install kubernetes-validate)")
    })
}

/// Checks YAML documents with `kubernetes-validate --strict` for 1.35;
/// panics naming `name` and the validator's complaints.
pub fn kubernetes_validate(name: &str, yaml: &str) {
    let dir = TempDir::new("validate");
    let file = dir.path.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write manifest");
    let out = Command::new(kubernetes_validator())
        .args(["--strict", "-k", "1.35.0", "--quiet"])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{name} does not validate:\n{text}"
    );
}

/// `kubectl`, with a message naming what to install when it is missing.
pub fn kubectl() -> PathBuf {
    which("kubectl").unwrap_or_else(|| {
        panic!("kubectl is missing: tests/run installs Debian's kubernetes-client")
    })
}

/// `kubectl ARGS` against the cluster `kubeconfig` names, with `home` as
/// HOME so kubectl's discovery cache stays in the test's directory.
pub fn kubectl_command(
    kubeconfig: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
) -> Command {
    let mut c = Command::new(kubectl());
    c.env("KUBECONFIG", kubeconfig).env("HOME", home).args(args);
    c
}

/// Runs [`kubectl_command`] to its end, within 60 s: (succeeded, stdout,
/// stderr).
pub fn kubectl_in(
    kubeconfig: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = output_within(
        &mut kubectl_command(kubeconfig, home, args),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs curl with `args`; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let binary = which("curl").unwrap_or_else(|| {
        panic!("curl is not installed: run `apt-get install -y curl` (tests/run does this)")
    });
    let out = Command::new(binary).args(args).output().expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `value` as a Lua table constructor (JSON null is nil: left out).
fn lua_literal(value: &serde_json::Value) -> String {
    use serde_json::Value;
    let string = |s: &str| {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    };
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the shipped Argo CD health check (`deploy/argocd/health.lua`) on
/// `object` with Lua 5.1, the language version of Argo CD's interpreter;
/// returns (status, message).
pub fn argocd_health(object: &serde_json::Value) -> (String, String) {
    let lua = which("lua5.1").unwrap_or_else(|| {
        panic!("lua5.1 is missing: run `apt-get install -y lua5.1` (tests/run does this)")
    });
    let script = std::fs::read_to_string(workspace_root().join("deploy/argocd/health.lua"))
        .expect("deploy/argocd/health.lua");
    let program = format!(
        "obj = {}\nlocal function check()\n{script}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\", \"\\n\")\n",
        lua_literal(object)
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lua5.1");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), program.as_bytes())
        .expect("write the program");
    let out = child.wait_with_output().expect("lua5.1 output");
    assert!(
        out.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').expect("status line");
    (status.to_string(), message.trim_end().to_string())
}
