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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::*;

mod dashboard_browser;
use dashboard_browser::{Browser, num, open_offline, points};

/// Opens the login URL a dashboard printed as a fresh client would:
/// 303 to `/` with the session cookie (named for the port); returns
/// `name=value`.
async fn login(url: &str) -> String {
    let (status, headers, body) = get(url).await.unwrap();
    assert_eq!(status, 303, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["location"], "/", "the redirect drops the token");
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("sluice_session_{port}="))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

/// One GET with `cookie` (`name=value`).
async fn get_as(url: &str, cookie: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let req = http::Request::get(url)
        .header("cookie", cookie)
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, headers, body) = send(&h1_client(), req).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Spawns `sluice ARGS` with stderr read into the returned text as it
/// comes (to find the login URL it prints).
fn spawn_sluice(
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::BufRead;
    let mut child = Command::new(bin("sluice"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut t = into.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    (child, text)
}

/// The login URL in `stderr` (`dashboard on URL`), once printed.
async fn printed_url(stderr: &std::sync::Arc<std::sync::Mutex<String>>) -> String {
    eventually(
        "the dashboard prints its login URL",
        Duration::from_secs(30),
        || async {
            let t = stderr.lock().unwrap().clone();
            let at = t.find("dashboard on ")? + "dashboard on ".len();
            let url = t[at..].lines().next()?.trim().to_string();
            url.contains("/?login=").then_some(url)
        },
    )
    .await
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        // Two routes: `api` for a second rollout beside the same socket.
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{0}' }}\n  - {{ name: api, path_prefix: /api, stable: '{0}' }}\n",
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
    async fn release_path(&self, cookie: &str) -> String {
        let what = "the dashboard lists the release";
        listed_path(&self.url(""), cookie, what, Duration::from_secs(30), "", "").await
    }
}

/// `args` with `flag`'s value replaced (clap refuses a flag given twice).
fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} is in the arguments"))
        + 1;
    args[at] = value.to_string();
}

/// The path of the listed release of `app`, once the list has it.
async fn listed(base: &str, cookie: &str, app: &str) -> String {
    let what = format!("the dashboard lists a release of {app}");
    let prefix = format!("/releases/_/{app}/");
    listed_path(base, cookie, &what, Duration::from_secs(30), &prefix, "").await
}

/// The path of the first release the dashboard at `base` lists whose
/// path starts with `path_prefix`, once its list page (a 200) has one and
/// says `says`; panics naming `what` after `within`.
async fn listed_path(
    base: &str,
    cookie: &str,
    what: &str,
    within: Duration,
    path_prefix: &str,
    says: &str,
) -> String {
    eventually(what, within, || async {
        let (status, _, body) = get_as(&format!("{base}/"), cookie).await;
        if status != 200 || !body.contains(says) {
            return None;
        }
        let at = body.find(&format!("data-release=\"{path_prefix}"))? + "data-release=\"".len();
        Some(body[at..at + body[at..].find('"')?].to_string())
    })
    .await
}

/// Polls `expression` in the page until it is true (at most 30 s).
async fn until_true(b: &mut Browser, what: &str, expression: &str) {
    let shown = b.poll(expression, Duration::from_secs(30), |v| *v == true);
    if shown.await == true {
        return;
    }
    panic!(
        "{what}: `{expression}` never held; the page says: {}",
        b.text().await
    );
}

fn img(name: &str) -> PathBuf {
    workspace_root().join("docs/img").join(name)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_release_is_drawn_live_as_recorded_and_cannot_be_promoted_cross_site() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    // 800 req/s: proven healthy in about 19 s (median; 29 s at 400 req/s,
    // `sluice simulate` at these settings), at the earliest in 12 s, after
    // the page has shown the release running.
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 800.0);
    let rollout = Rollout::start(&r.args(&[]));
    let login_url = rollout.login_url().await;
    assert!(
        login_url.starts_with(&format!("http://{}/?login=", r.dashboard)),
        "{login_url}"
    );
    let token = login_url.split("?login=").nth(1).unwrap();
    assert!(
        token.len() == 64 && token.bytes().all(|c| c.is_ascii_hexdigit()),
        "256 random bits: {token}"
    );
    let cookie = login(&login_url).await;
    let path = r.release_path(&cookie).await;

    // Without the login URL nobody gets a session: every page is 401,
    // saying to open the printed URL, and no cookie is handed out.
    for p in [
        "/".to_string(),
        path.clone(),
        format!("{path}/confirm?action=promote"),
    ] {
        let (status, headers, body) = get(&r.url(&p)).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 401, "{p}: {body}");
        assert!(
            body.contains("opened the URL its command printed"),
            "{body}"
        );
        assert!(!headers.contains_key("set-cookie"), "{p}");
    }
    // A wrong token, or the right one on another page, logs nobody in.
    for p in [
        "/?login=0000000000000000000000000000000000000000000000000000000000000000".to_string(),
        format!("{path}?login={token}"),
    ] {
        let (status, headers, _) = get(&r.url(&p)).await.unwrap();
        assert_eq!(status, 401, "{p}");
        assert!(!headers.contains_key("set-cookie"), "{p}");
    }
    // A cookie of another port's dashboard name is not this one's session.
    let other = cookie.replacen(
        &format!("sluice_session_{}", r.dashboard.port()),
        "sluice_session_1",
        1,
    );
    assert_eq!(get_as(&r.url("/"), &other).await.0, 401);
    // Once per browser: a browser already logged in keeps its session (no
    // new cookie); another browser opening the same URL gets its own.
    let (status, headers, _) = get_as(&login_url, &cookie).await;
    assert_eq!(status, 303);
    assert!(!headers.contains_key("set-cookie"));
    let second = login(&login_url).await;
    assert_ne!(second, cookie);
    assert_eq!(get_as(&r.url("/"), &second).await.0, 200);
    assert_eq!(get_as(&r.url("/"), &cookie).await.0, 200);

    // The open page follows the release by itself (its poll, no reload).
    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    assert!(
        b.eval("location.search").await == "",
        "the redirect dropped the token from the address bar"
    );
    b.open(&r.url(&path)).await;
    let scrapes_shown = "Number(document.querySelector('[data-field=scrapes]').textContent)";
    let first = b.eval(scrapes_shown).await.as_f64().unwrap();
    b.eval("window.__same_document = true").await;
    let later = b
        .poll(scrapes_shown, Duration::from_secs(30), |v| {
            v.as_f64().unwrap() >= first + 2.0
        })
        .await
        .as_f64()
        .unwrap();
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
    let refused = b
        .text_once_it_says("Refused", Duration::from_secs(10))
        .await;
    assert!(
        refused.contains("not from this dashboard") || refused.contains("token"),
        "{refused}"
    );
    // With the dashboard's own session and token but a foreign Origin: refused too.
    let (_, _, body) = get_as(&r.url(&format!("{path}/confirm?action=promote")), &cookie).await;
    let at = body.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    let token = body[at..at + 64].to_string();
    let form = format!("action=promote&token={token}");
    // With this session's token, from the dashboard's own origin, but
    // without the session cookie (a client that never logged in): 401.
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Origin: http://{}", r.dashboard),
        "-H",
        "Sec-Fetch-Site: same-origin",
        "--data",
        &format!("{form}&revision=x"),
        &target,
    ]);
    assert_eq!(out, "401");
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
        "-H",
        &format!("Cookie: {cookie}"),
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

/// Promote on a plain host's dashboard promotes now, as its page says: a
/// release held 60 s at its first step is promoted at once. The page then
/// says what was asked and answered, keeps a scrolled table where it was
/// across updates, announces the end, and shows it (no buttons, no "Live")
/// although the rollout exits right after: it serves until the open page
/// has been shown the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_on_the_dashboard_promotes_now_and_the_open_page_shows_the_end() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 400.0);
    let mut args = r.args(&[]);
    set_arg(&mut args, "--interval", "60s");
    set_arg(&mut args, "--progress-deadline", "120s");
    let rollout = Rollout::start(&args);
    let login_url = rollout.login_url().await;
    rollout.until(
        |e| assert_ne!(e["phase"], "Failed", "{e}"),
        |e| e["phase"] == "Progressing" && e["canary_weight"] == 20.0,
    );
    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    let cookie = login(&login_url).await;
    let path = r.release_path(&cookie).await;
    b.open(&r.url(&path)).await;
    assert_eq!(
        b.eval("document.querySelectorAll('[data-action]').length")
            .await,
        2,
        "promote and abort: {}",
        b.text().await
    );

    // A table scrolled by the reader stays where it was as the page updates.
    let table = "document.querySelector('figure[data-plot=failure-rate] .scroll')";
    until_true(
        &mut b,
        "the failure-rate table grows past its box",
        &format!("{table}.scrollHeight > {table}.clientHeight + 60"),
    )
    .await;
    b.eval(&format!("{table}.scrollTop = 40")).await;
    let scrapes_shown = "Number(document.querySelector('[data-field=scrapes]').textContent)";
    let first = num(&b.eval(scrapes_shown).await);
    until_true(
        &mut b,
        "the page gains two scrapes",
        &format!("{scrapes_shown} >= {}", first + 2.0),
    )
    .await;
    assert_eq!(
        num(&b.eval(&format!("{table}.scrollTop")).await),
        40.0,
        "the update kept the table's scroll position"
    );

    // Promote, confirm.
    b.eval("document.querySelector('[data-action=promote]').click()")
        .await;
    until_true(
        &mut b,
        "the confirmation page",
        "!!document.querySelector('[data-confirm=promote]')",
    )
    .await;
    assert!(
        b.text()
            .await
            .contains("Promote now: skip the remaining steps")
    );
    b.eval("document.querySelector('[data-confirm=promote]').click()")
        .await;
    until_true(
        &mut b,
        "back on the release page, saying what was asked and answered",
        "!!document.querySelector('[data-notice=action]')",
    )
    .await;
    let notice = b
        .eval("document.querySelector('[data-notice=action]').textContent")
        .await;
    assert!(
        notice.as_str().unwrap().starts_with("You asked to promote now. The rollout answered: promotion requested now, skipping the remaining steps and the analysis"),
        "{notice}"
    );
    b.eval("window.__same_document = true").await;

    let (code, events) = rollout.wait(Duration::from_secs(60)).await;
    load.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("promoted by a user override (promote --full) at 20%")),
        "promoted now, at the first step: {}",
        last_message(&events)
    );
    let records = r.records();
    assert_eq!(records.last().unwrap()["outcome"], "promoted");

    // The open page was shown the end before the dashboard went.
    until_true(
        &mut b,
        "the page shows the end",
        "document.querySelector('#live [data-field=outcome]').textContent === 'promoted'",
    )
    .await;
    assert_eq!(
        b.eval("window.__same_document").await,
        true,
        "no reload: the page's own poll"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('[data-action]').length")
            .await,
        0,
        "no buttons on an ended release"
    );
    let text = b.text().await;
    assert!(!text.contains("Live: this page follows"), "{text}");
    let announced = b
        .eval("document.getElementById('announce').textContent")
        .await;
    assert!(
        announced.as_str().unwrap().contains("promoted"),
        "the end is announced: {announced}"
    );
}

/// A record left open by an interrupted release of another route, kept
/// beside the same control socket, is shown without buttons and cannot be
/// steered from the dashboard of the rollout now using that socket (it
/// would have aborted this one); `sluice promote --full` promotes now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_routes_open_record_beside_the_socket_cannot_steer_this_release() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 200.0);
    let (load_api, _) = steady_load(&format!("http://{}/api", r.proxy.addr), 200.0);
    let mut args = r.args(&[]);
    set_arg(&mut args, "--interval", "60s");
    set_arg(&mut args, "--progress-deadline", "120s");
    let web = Rollout::start(&args);
    web.until(
        |e| assert_ne!(e["phase"], "Failed", "{e}"),
        |e| e["phase"] == "Progressing",
    );
    web.signal("INT");
    assert_eq!(web.wait(Duration::from_secs(30)).await.0, 130);

    set_arg(&mut args, "--route", "api");
    let api = Rollout::start(&args);
    let login_url = api.login_url().await;
    let cookie = login(&login_url).await;
    let base = format!("http://{}", r.dashboard);
    let web_path = listed(&base, &cookie, "web").await;
    let api_path = listed(&base, &cookie, "api").await;
    let (_, _, page) = get_as(&r.url(&web_path), &cookie).await;
    assert!(page.contains("Progressing"), "web's record is open: {page}");
    assert!(
        !page.contains("data-action"),
        "no buttons on web's record: {page}"
    );
    let (status, _, page) =
        get_as(&r.url(&format!("{web_path}/confirm?action=abort")), &cookie).await;
    assert_eq!(status, 409, "{page}");
    assert!(
        page.contains("not the one this `sluice rollout` drives"),
        "{page}"
    );

    // With a valid token (from api's own page), an abort posted for web's
    // record does nothing.
    let (status, _, page) =
        get_as(&r.url(&format!("{api_path}/confirm?action=abort")), &cookie).await;
    assert_eq!(status, 200, "{page}");
    let at = page.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    let token = &page[at..at + 64];
    let (_, out, _) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Cookie: {cookie}"),
        "-H",
        &format!("Origin: {base}"),
        "--data-urlencode",
        "action=abort",
        "--data-urlencode",
        &format!("token={token}"),
        "--data-urlencode",
        &format!("revision={}", r.canary.url()),
        &r.url(&format!("{web_path}/action")),
    ]);
    assert!(out.ends_with("\n409"), "{out}");
    assert!(out.contains("Nothing was done"), "{out}");

    // api's release goes on, and promote --full ends it now.
    api.until(
        |e| assert_ne!(e["phase"], "Failed", "api was stopped: {e}"),
        |e| e["phase"] == "Progressing",
    );
    let out = Command::new(bin("sluice"))
        .args(["promote", "api", "--full", "--control-socket"])
        .arg(r.socket())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("promotion requested now"), "{stdout}");
    let (code, events) = api.wait(Duration::from_secs(60)).await;
    load.stop();
    load_api.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert!(
        events
            .iter()
            .all(|e| !e["message"].as_str().unwrap_or("").contains("aborted")),
        "{}",
        last_message(&events)
    );
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("promoted by a user override (promote --full)")),
        "{}",
        last_message(&events)
    );
    let records = r.records();
    let web_record = records.iter().find(|x| x["app"] == "web").unwrap();
    assert!(
        web_record.get("outcome").is_none(),
        "web was not touched: {web_record}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_beyond_loopback_is_refused_without_the_explicit_opt_in() {
    for addr in ["0.0.0.0:3999", "[::]:3999"] {
        let (code, stderr) = rollout_refusal(&["--dashboard", addr]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("--dashboard: {addr} is not a loopback address"))
                && stderr.contains("--dashboard-allow-remote"),
            "{stderr}"
        );
        let out = Command::new(bin("sluice"))
            .args(["demo", "--scenario", "healthy", "--dashboard", addr])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("is not a loopback address"), "{stderr}");
    }
    // With the opt-in it listens, warns, and still refuses a foreign name.
    let port = free_port();
    let mut demo = Command::new(bin("sluice"))
        .args([
            "demo",
            "--scenario",
            "healthy",
            "--output",
            "plain",
            "--dashboard",
            &format!("0.0.0.0:{port}"),
            "--dashboard-allow-remote",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually(
        "the remote dashboard answers",
        Duration::from_secs(30),
        || async {
            let (status, _, _) = get(&format!("{base}/")).await.ok()?;
            (status == 401).then_some(())
        },
    )
    .await;
    let (_, out, _) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-H",
        "Host: evil.example",
        &format!("{base}/"),
    ]);
    assert!(out.ends_with("\n403"), "{out}");
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Host: localhost:{port}"),
        &format!("{base}/"),
    ]);
    assert_eq!(out, "401", "answered, but only with a session");
    let _ = demo.kill();
    let out = demo.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING: the dashboard listens on 0.0.0.0"),
        "{stderr}"
    );
    assert!(stderr.contains("WITHOUT encryption"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_serves_its_release_and_refuses_a_foreign_host_name() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (mut demo, stderr) = spawn_sluice(&[
        "demo",
        "--scenario",
        "errors",
        "--output",
        "plain",
        "--dashboard",
        &addr.to_string(),
    ]);
    let base = format!("http://{addr}");
    let login_url = printed_url(&stderr).await;
    let cookie = login(&login_url).await;
    // The scenario rolls back; the dashboard stays up after it.
    let what = "the demo's release is rolled back";
    let path = listed_path(
        &base,
        &cookie,
        what,
        Duration::from_secs(120),
        "",
        "rolled back",
    )
    .await;
    assert!(path.starts_with("/releases/_/errors/"), "{path}");
    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    b.open(&format!("{base}{path}")).await;
    let text = b.text().await;
    assert!(text.contains("Rolled back at"), "{text}");
    assert!(text.contains("check errors decided"), "{text}");
    // No buttons on an ended release.
    assert_eq!(
        b.eval("document.querySelectorAll('[data-action]').length")
            .await,
        0
    );
    // DNS rebinding: a page of another name that resolves here is refused.
    let (_, out, _) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-H",
        "Host: evil.example",
        &format!("{base}/"),
    ]);
    assert!(out.ends_with("\n403"), "{out}");
    assert!(
        out.contains("does not answer to host `evil.example`"),
        "{out}"
    );

    // Every page says it may not be framed, sniffed or cached.
    let (_, out, _) = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("Cookie: {cookie}"),
        &format!("{base}{path}"),
    ]);
    let out = out.to_ascii_lowercase();
    for h in [
        "x-frame-options: deny",
        "content-security-policy: frame-ancestors 'none'; default-src 'none';",
        "script-src 'sha256-",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
    ] {
        assert!(out.contains(h), "{h} missing: {out}");
    }
    // The confirmation page opened from another site is refused.
    let (_, out, _) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-H",
        "Sec-Fetch-Site: same-site",
        "-H",
        &format!("Cookie: {cookie}"),
        &format!("{base}{path}/confirm?action=abort"),
    ]);
    assert!(
        out.ends_with("\n403") && out.contains("from another site"),
        "{out}"
    );

    // Clickjacking: a page on another 127.0.0.1 port (same-site) framing
    // the confirmation page does not get it drawn.
    let framed = format!("{base}{path}/confirm?action=abort");
    let framed_again = framed.clone();
    let evil = serve_http(move |_req| {
        let html =
            format!("<!doctype html><iframe id=f src='{framed}' width=600 height=400></iframe>");
        async move {
            http::Response::builder()
                .header("content-type", "text/html")
                .body(http_body_util::Full::new(bytes::Bytes::from(html)))
                .unwrap()
        }
    })
    .await;
    b.open(&format!("http://{evil}/")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tree = b.call("Page.getFrameTree", serde_json::json!({})).await;
    let child = &tree["frameTree"]["childFrames"][0]["frame"];
    assert!(child.is_object(), "the iframe is in the tree: {tree}");
    // A blocked frame is Chromium's error page, never the dashboard's.
    assert_eq!(
        (child["url"].as_str(), child["unreachableUrl"].as_str()),
        (
            Some("chrome-error://chromewebdata/"),
            Some(framed_again.as_str())
        ),
        "the confirmation page was drawn in a frame: {child}"
    );

    // No confirmation is offered for an action the release cannot take:
    // 409, saying why, and no form.
    let (status, _, body) = get_as(&format!("{base}{path}/confirm?action=abort"), &cookie).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("Nothing can be done: this dashboard has no control socket"),
        "{body}"
    );
    assert!(!body.contains("data-confirm"), "{body}");
    let (_, _, listed) = get_as(&format!("{base}/"), &cookie).await;
    assert!(listed.contains("rolled back"));
    let _ = demo.kill();
    let _ = demo.wait();
}

/// An open release page tells an error the dashboard answered (its status
/// and words) from a lost connection (no answer), and when polls succeed
/// again says the connection is restored and is live again. The page's
/// own `fetch` is made to answer 502, then to fail, then given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_page_tells_an_error_answer_from_a_lost_connection_and_says_when_it_is_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 200.0);
    let rollout = Rollout::start(&r.args(&["--approve", "manual"]));
    let login_url = rollout.login_url().await;
    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    let cookie = login(&login_url).await;
    b.open(&r.url(&r.release_path(&cookie).await)).await;
    assert!(b.text().await.contains("Live: this page follows"));
    let announced = "document.getElementById('announce').textContent";

    b.eval(
        "window.realFetch = window.fetch; window.fetch = function () { return Promise.resolve(new Response('<p data-error=\"502\">Cannot read the releases: the API server is down</p>', {status: 502})) }; true",
    )
    .await;
    until_true(
        &mut b,
        "the page says what the dashboard answered",
        "document.body.innerText.includes('The dashboard answered 502 (Cannot read the releases: the API server is down) at ')",
    )
    .await;
    let text = b.text().await;
    assert!(
        !text.contains("Connection lost") && !text.contains("Live: this page follows"),
        "{text}"
    );
    assert!(
        b.eval(announced)
            .await
            .as_str()
            .unwrap()
            .starts_with("The dashboard answered 502"),
        "the live region is told too"
    );

    b.eval("window.fetch = function () { return Promise.reject(new TypeError('Failed to fetch')) }; true")
        .await;
    until_true(
        &mut b,
        "the page says the connection is lost",
        "document.body.innerText.includes('Connection lost at ')",
    )
    .await;
    assert!(!b.text().await.contains("The dashboard answered"));

    b.eval("window.fetch = window.realFetch; true").await;
    until_true(
        &mut b,
        "the page says the connection is back",
        "document.body.innerText.includes('Connection restored at ')",
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("Live: this page follows the release every 2 s.")
            && !text.contains("Connection lost")
            && !text.contains("out of date"),
        "{text}"
    );
    let said = b.eval(announced).await;
    assert!(
        said.as_str()
            .unwrap()
            .starts_with("Connection restored at "),
        "{said}"
    );

    let out = Command::new(bin("sluice"))
        .args(["abort", "web", "--control-socket"])
        .arg(r.socket())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = rollout.wait(Duration::from_secs(60)).await;
    load.stop();
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_and_resumed_release_keeps_one_record() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let r = Release::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 400.0);
    let first = Rollout::start(&r.args(&[]));
    let login_url = first.login_url().await;
    // Interrupted once the first step is on record.
    loop {
        let event = first
            .events
            .recv_timeout(Duration::from_secs(60))
            .expect("a tick");
        if event["canary_weight"].as_f64() == Some(20.0) && event["phase"] == "Progressing" {
            break;
        }
    }
    // A page open on it while it runs.
    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    let cookie = login(&login_url).await;
    b.open(&r.url(&r.release_path(&cookie).await)).await;
    assert!(b.text().await.contains("Live: this page follows"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal("INT");
    let (code, _) = first.wait(Duration::from_secs(30)).await;
    assert_eq!(code, 130);
    // The page no longer claims to be live: it says it lost the connection.
    until_true(
        &mut b,
        "the open page says the connection is lost",
        "document.body.innerText.includes('Connection lost at')",
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("; this may be out of date.") && !text.contains("Live: this page follows"),
        "{text}"
    );
    let before = r.records();
    assert_eq!(before.len(), 1);
    assert!(
        before[0].get("outcome").is_none(),
        "not ended: {}",
        before[0]["phase"]
    );
    let scrapes_before = before[0]["scrapes"].as_array().unwrap().len();
    // The same command resumes the release and its record.
    let (code, events) = Rollout::start(&r.args(&[]))
        .wait(Duration::from_secs(200))
        .await;
    load.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    let after = r.records();
    assert_eq!(after.len(), 1, "one release, one record");
    assert_eq!(after[0]["started_at"], before[0]["started_at"]);
    assert_eq!(after[0]["outcome"], "promoted");
    assert!(after[0]["scrapes"].as_array().unwrap().len() > scrapes_before);
    let kinds: Vec<&str> = after[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "advance").count(),
        2,
        "{kinds:?}"
    );
}
