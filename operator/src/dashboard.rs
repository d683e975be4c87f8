//! The web dashboard: every release, one release's plots (the report's,
//! [`crate::report_html`]) kept live, and promote/abort/retry buttons.
//! Served by axum on 127.0.0.1 by default, by the tools people already
//! run: `sluice rollout --dashboard ADDR`, `sluice demo --dashboard ADDR`
//! and `kubectl sluice dashboard [--port N]`.
//!
//! Rules it keeps:
//!
//! - **Whose credentials.** Actions go through the [`Source`]: on plain
//!   hosts the release's control socket, on Kubernetes the user's own
//!   client (their kubeconfig and RBAC: a refusal is shown as Kubernetes
//!   worded it). The dashboard holds no credentials of its own.
//! - **Login by the printed URL.** The command prints
//!   `http://ADDR/?login=TOKEN` (256 random bits, made at start, valid
//!   while the dashboard runs, like Jupyter's). Opening it is the only way
//!   to a session: it sets the session cookie and redirects to `/`,
//!   dropping the token from the address bar (and history). A browser
//!   already logged in keeps its session; another browser opening the URL
//!   gets its own (once per browser). Without a session *every* page,
//!   reading included, answers 401 saying to open the printed URL: the
//!   releases are the owner's (read with their kubeconfig), and another
//!   local user or process has no business reading them either. A wrong
//!   token, or the token on another path, is a 401 too and sets nothing.
//!   The cookie is `sluice_session_<port>`: browsers share cookies across
//!   the ports of a host, so two dashboards must not use one name.
//! - **No cross-site actions.** A session has a random session
//!   cookie (`HttpOnly`, `SameSite=Strict`) and a random token bound to it;
//!   an action is a POST from the confirmation page carrying that token. A
//!   POST without the session, with another token, with an `Origin` (or,
//!   without one, `Sec-Fetch-Site`) that is not this dashboard, or with a
//!   `Host` that is not the address it listens on (DNS rebinding) is
//!   refused with 403 and nothing is done.
//! - **Confirmation.** A button leads to a page that says what will happen
//!   and asks again; only its form acts. The form names the release it was
//!   shown for (its id in the URL, its revision in the form); the action is
//!   refused with 409 unless that release is still the app's live (newest)
//!   release, its revision unchanged, and the action one it allows now
//!   (promote/abort while it runs, retry on Kubernetes after a rollback).
//! - **Not framed, not sniffed.** Every response carries `X-Frame-Options:
//!   DENY`, a `Content-Security-Policy` (`frame-ancestors 'none'`, nothing
//!   loaded from elsewhere, the one inline script allowed by its SHA-256
//!   hash), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//!   no-referrer` and `Cache-Control: no-store`, so another page (even one
//!   on another port of 127.0.0.1, which browsers count as same-site)
//!   cannot frame the confirmation page and trick a click. The
//!   confirmation page also refuses a request whose `Sec-Fetch-Site` is
//!   neither `same-origin` nor `none` (typed or bookmarked), and any page
//!   refuses a `cross-site` request that is not a top-level navigation.
//! - **Loopback by default.** `--dashboard` refuses an address that is not
//!   loopback unless `--dashboard-allow-remote` is given ([`check_address`]):
//!   the dashboard speaks plain HTTP, so anyone who can see its traffic
//!   can take the login token or a session cookie, read and act.
//!   Even then the `Host` check stays on: loopback names, IP literals (no
//!   DNS rebinding through a literal) and the bound address are answered,
//!   other names refused.
//! - **Works without JavaScript.** Every page is server-rendered. The only
//!   script, small and inline, polls the release's body every 2 s while it
//!   runs and swaps it in (live updates); without it the page is a snapshot.
//! - **Bad input.** An unknown release or page is a 404 page; a port in use
//!   is the caller's exit 2, naming the address ([`bind`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use crate::record::{ReleaseRecord, data_key};
use crate::report_html::{fmt_t, page, release_body, release_name, strategy_text};

/// Where releases come from and where actions go.
#[derive(Clone)]
pub enum Source {
    /// Plain hosts and the demo: records in memory (filled by the running
    /// drivers), actions through a control socket when there is one.
    Local(LocalSource),
    /// Kubernetes, with the user's client.
    Kube(Arc<crate::kube::plugin::Plugin>),
}

#[derive(Clone, Debug, Default)]
pub struct LocalSource {
    pub records: Arc<Mutex<Vec<ReleaseRecord>>>,
    /// The running release's control socket (`sluice rollout`).
    pub control_socket: Option<PathBuf>,
}

impl LocalSource {
    /// Adds or replaces `record` (the same release is replaced).
    pub fn put(&self, record: ReleaseRecord) {
        let mut all = self.records.lock().expect("records lock");
        crate::record::upsert(&mut all, record, 100);
    }

    /// Keeps the store current from a driver's record channel.
    pub fn follow(&self, mut rx: tokio::sync::watch::Receiver<Option<ReleaseRecord>>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let r = rx.borrow_and_update().clone();
                if let Some(r) = r {
                    me.put(r);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A release's address in URLs: namespace (`_` on plain hosts), app, id.
fn id_of(r: &ReleaseRecord) -> String {
    data_key(r).trim_end_matches(".json").to_string()
}

fn ns_of(r: &ReleaseRecord) -> &str {
    r.namespace.as_deref().unwrap_or("_")
}

fn href(r: &ReleaseRecord) -> String {
    format!("/releases/{}/{}/{}", ns_of(r), r.app, id_of(r))
}

impl Source {
    async fn records(&self) -> Result<Vec<ReleaseRecord>, String> {
        match self {
            Source::Local(l) => Ok(l.records.lock().expect("records lock").clone()),
            Source::Kube(p) => p.all_records().await.map_err(|e| e.to_string()),
        }
    }

    /// Carries out `action` on the release of `app`; the text to show.
    /// On Kubernetes the live status must still be of `revision`.
    async fn act(
        &self,
        ns: &str,
        app: &str,
        action: &str,
        revision: &str,
    ) -> Result<String, String> {
        match self {
            Source::Local(l) => {
                let Some(path) = &l.control_socket else {
                    return Err(
                        "this release has no control socket: it cannot be steered from here".into(),
                    );
                };
                let what = match action {
                    "promote" => "promote",
                    "abort" => "abort",
                    other => {
                        return Err(format!(
                            "`{other}` is not possible on a plain host; use promote or abort"
                        ));
                    }
                };
                let reply = crate::control::request(path, what)
                    .await
                    .map_err(|e| e.to_string())?;
                if reply["ok"] == true {
                    Ok(format!(
                        "{app}: {action} sent; the release is {}",
                        reply["phase"].as_str().unwrap_or("?")
                    ))
                } else {
                    Err(reply["error"].as_str().unwrap_or("refused").to_string())
                }
            }
            Source::Kube(p) => {
                let p = crate::kube::plugin::Plugin {
                    client: p.client.clone(),
                    namespace: ns.to_string(),
                };
                // The release may have moved on since the page was drawn.
                let live = p.release(app).await.map_err(|e| e.to_string())?;
                let live_rev = live.status.as_ref().map(|s| s.revision.as_str());
                if live_rev != Some(revision) {
                    return Err(format!(
                        "Nothing was done: {app}'s live release is now of revision {}, not {revision}",
                        live_rev.unwrap_or("(none)")
                    ));
                }
                let r = match action {
                    "promote" => p.promote(app, true).await,
                    "abort" => p.abort(app).await,
                    "retry" => p.retry(app).await,
                    other => return Err(format!("unknown action `{other}`")),
                };
                r.map_err(|e| match e {
                    crate::kube::plugin::PluginError::Kube(kube::Error::Api(s)) => {
                        format!(
                            "Kubernetes refused: {} ({} {})",
                            s.message, s.code, s.reason
                        )
                    }
                    other => other.to_string(),
                })
            }
        }
    }

    async fn find(&self, ns: &str, app: &str, id: &str) -> Result<Option<ReleaseRecord>, String> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .find(|r| ns_of(r) == ns && r.app == app && id_of(r) == id))
    }
}

struct Shared {
    source: Source,
    /// session id -> its action token and when it was made.
    sessions: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// The `Host` names this dashboard answers to (besides IP literals
    /// with its port).
    hosts: Vec<String>,
    port: u16,
    /// The login token in the URL the command printed (256 random bits).
    login: String,
    /// `sluice_session_<port>`: browsers share cookies across ports.
    cookie_name: String,
}

type App = Arc<Shared>;

fn random_hex() -> String {
    use rand::RngExt;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Sessions kept at most; past it the oldest-made is forgotten (its
/// confirmation page must be opened again).
const MAX_SESSIONS: usize = 1000;

/// The session of this request, if its cookie names one: (id, token).
fn session(app: &App, headers: &HeaderMap) -> Option<(String, String)> {
    let id = cookie(headers, &app.cookie_name)?;
    let sessions = app.sessions.lock().expect("sessions lock");
    let (token, _) = sessions.get(&id)?;
    Some((id, token.clone()))
}

/// A new session (made by the login URL): (id, token).
fn new_session(app: &App) -> (String, String) {
    let mut sessions = app.sessions.lock().expect("sessions lock");
    if sessions.len() >= MAX_SESSIONS
        && let Some(oldest) = sessions
            .iter()
            .min_by_key(|(_, (_, made))| *made)
            .map(|(id, _)| id.clone())
    {
        sessions.remove(&oldest);
    }
    let (id, token) = (random_hex(), random_hex());
    sessions.insert(id.clone(), (token.clone(), std::time::Instant::now()));
    (id, token)
}

const OPEN_THE_PRINTED_URL: &str = "This dashboard answers only a browser that opened the URL its command printed at start (http://127.0.0.1:PORT/?login=…, from `sluice rollout --dashboard`, `sluice demo --dashboard` or `kubectl sluice dashboard`). Open that URL; it logs this browser in.";

/// Every request passes here first: the `Host` check, then the login
/// exchange (`/?login=TOKEN`: a session cookie and a redirect to `/` that
/// drops the token from the address bar), then the session check: any
/// other request without this dashboard's session is answered 401.
async fn require_session(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(r) = host_refused(&app, req.headers()) {
        return r;
    }
    let login = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "login")
            .map(|(_, v)| v.to_string())
    });
    if let Some(login) = login {
        if req.uri().path() != "/" || !same_token(&login, &app.login) {
            return error_page(
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                &format!("This login token is not this dashboard's. {OPEN_THE_PRINTED_URL}"),
            );
        }
        let mut resp = Redirect::to("/").into_response();
        // A browser already logged in keeps its session.
        if session(&app, req.headers()).is_none() {
            let (id, _) = new_session(&app);
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}={id}; Path=/; HttpOnly; SameSite=Strict",
                app.cookie_name
            )) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        return resp;
    }
    if session(&app, req.headers()).is_none() {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "Not logged in",
            OPEN_THE_PRINTED_URL,
        );
    }
    next.run(req).await
}

fn nav() -> Markup {
    html! { nav { a href="/" { "All releases" } } }
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(page(
            "Not found",
            nav(),
            html! { p data-error="not-found" { (what) } p { a href="/" { "See every release" } } },
            None,
        )),
    )
        .into_response()
}

fn error_page(status: StatusCode, title: &str, text: &str) -> Response {
    (
        status,
        Html(page(
            title,
            nav(),
            html! { p data-error=(status.as_u16()) { (text) } },
            None,
        )),
    )
        .into_response()
}

fn age(r: &ReleaseRecord) -> String {
    fmt_t(crate::clock::wall_clock() - r.started_at)
}

async fn list(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    let mut all = match app.source.records().await {
        Ok(all) => all,
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    all.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
    let body = html! {
        @if all.is_empty() { p { "No release recorded yet." } }
        table data-table="releases" {
            caption { "Every recorded release, newest first" }
            thead { tr {
                th.l scope="col" { "namespace" } th.l scope="col" { "app" } th.l scope="col" { "revision" }
                th.l scope="col" { "strategy" } th.l scope="col" { "phase" } th scope="col" { "weight" }
                th scope="col" { "age" } th.l scope="col" { "outcome" }
            } }
            tbody { @for r in &all {
                tr data-release=(href(r)) {
                    td.l { (r.namespace.as_deref().unwrap_or("-")) }
                    td.l { a href=(href(r)) { (r.app) } }
                    td.l { code { (r.revision) } }
                    td.l data-field="strategy" { (strategy_text(r)) }
                    td.l data-field="phase" { (r.phase.as_str()) }
                    td data-field="weight" { (r.weight) "%" }
                    td { (age(r)) }
                    td.l data-field="outcome" { (r.outcome.as_deref().unwrap_or("running")) }
                }
            } }
        }
    };
    Html(page("Sluice releases", nav(), body, None)).into_response()
}

/// Polls the body while the release runs and swaps it in.
const LIVE_JS: &str = r#"(function(){var m=document.getElementById('live');if(!m||m.dataset.ended==='true')return;
function tick(){fetch(m.dataset.src,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null}).then(function(t){
if(t!==null){m.innerHTML=t;var e=m.querySelector('[data-ended]');if(e&&e.dataset.ended==='true')return;}setTimeout(tick,2000)}).catch(function(){setTimeout(tick,4000)})}
setTimeout(tick,2000)})();"#;

fn live_body(r: &ReleaseRecord) -> Markup {
    html! {
        div data-ended=(r.ended()) hidden {}
        (release_body(r))
    }
}

fn actions(r: &ReleaseRecord, kube: bool) -> Vec<&'static str> {
    match (r.ended(), r.outcome.as_deref()) {
        (false, _) => vec!["promote", "abort"],
        (true, Some("rolled back")) if kube => vec!["retry"],
        _ => vec![],
    }
}

async fn release(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    let r = match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no release {id} of {name} in {ns}.")),
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    let kube = matches!(app.source, Source::Kube(_));
    let base = href(&r);
    let body = html! {
        p { a href=(format!("{base}/report")) download { "Download the report (HTML)" } " · " a href=(format!("{base}/record.json")) { "the record (JSON)" } }
        @let acts = actions(&r, kube);
        @if !acts.is_empty() {
            // Each button opens the confirmation page (a GET form: no
            // script, reachable by keyboard); only that page acts.
            div.actions { @for a in acts {
                form method="get" action=(format!("{base}/confirm")) style="display:inline" {
                    input type="hidden" name="action" value=(a);
                    button type="submit" data-action=(a) { (a) "…" }
                }
            } }
        }
        @if !r.ended() { p.live { "Live: this page follows the release every 2 s." } }
        div id="live" data-src=(format!("{base}/body")) data-ended=(r.ended()) { (live_body(&r)) }
    };
    let title = format!("Release of {} ({})", release_name(&r), r.revision);
    Html(page(&title, nav(), body, Some(LIVE_JS))).into_response()
}

async fn body(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => Html(live_body(&r).into_string()).into_response(),
        Ok(None) => not_found("no such release"),
        Err(e) => error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    }
}

async fn report(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => Html(crate::report_html::report(&r)).into_response(),
        Ok(None) => not_found("no such release"),
        Err(e) => error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    }
}

async fn record_json(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => ([(header::CONTENT_TYPE, "application/json")], r.to_json()).into_response(),
        Ok(None) => not_found("no such release"),
        Err(e) => error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    }
}

#[derive(Deserialize)]
struct ConfirmQuery {
    action: String,
}

fn what_it_does(action: &str) -> &'static str {
    match action {
        "promote" => {
            "Promote now: skip the remaining steps and the analysis and send all traffic to the new revision."
        }
        "abort" => "Abort: roll back now, all traffic to the primary.",
        "retry" => "Retry: release the rolled-back revision again from the first step.",
        _ => "",
    }
}

async fn confirm(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    Query(q): Query<ConfirmQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    match headers.get(SEC_FETCH_SITE).and_then(|v| v.to_str().ok()) {
        None | Some("same-origin") | Some("none") => {}
        Some(other) => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Refused",
                &format!(
                    "Refused: the confirmation page was opened from another site ({other}); open it from this dashboard's release page."
                ),
            );
        }
    }
    let Some((_, token)) = session(&app, &headers) else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "Not logged in",
            OPEN_THE_PRINTED_URL,
        );
    };
    if what_it_does(&q.action).is_empty() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown action",
            &format!("`{}` is not an action: promote, abort or retry", q.action),
        );
    }
    let r = match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no release {id} of {name} in {ns}.")),
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    let base = href(&r);
    let body = html! {
        p { "Release " strong { (release_name(&r)) } ", revision " code { (r.revision) } ", is " (r.phase.as_str()) " at " (r.weight) "%." }
        p { (what_it_does(&q.action)) }
        form method="post" action=(format!("{base}/action")) {
            input type="hidden" name="token" value=(token);
            input type="hidden" name="action" value=(q.action);
            input type="hidden" name="revision" value=(r.revision);
            button type="submit" data-confirm=(q.action) { "Yes, " (q.action) }
            " " a href=(base) { "Cancel" }
        }
    };
    Html(page(&format!("Confirm: {}", q.action), nav(), body, None)).into_response()
}

#[derive(Deserialize)]
struct ActionForm {
    token: Option<String>,
    action: String,
    /// The revision the confirmation page showed.
    revision: Option<String>,
}

/// Why a state-changing request is not from this dashboard's own page:
/// its `Origin` must be this dashboard as the browser addressed it (the
/// `Host`, already checked by [`host_refused`]); without an `Origin`,
/// `Sec-Fetch-Site` (when sent) must say same-origin.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let header_str = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    let host = header_str(header::HOST).unwrap_or_default();
    match header_str(header::ORIGIN) {
        // `Referrer-Policy: no-referrer` makes a browser send `Origin:
        // null` with its own form posts; then `Sec-Fetch-Site` must say
        // same-origin (a browser that sends neither is refused).
        Some("null") => match header_str(SEC_FETCH_SITE) {
            Some("same-origin") => None,
            Some(other) => Some(format!("the request is {other}, not from this dashboard")),
            None => Some("the request names no origin (Origin: null)".to_string()),
        },
        Some(origin) => (origin != format!("http://{host}"))
            .then(|| format!("the request came from {origin}, not from this dashboard")),
        None => match header_str(axum::http::HeaderName::from_static("sec-fetch-site")) {
            Some("same-origin") | None => None,
            Some(other) => Some(format!("the request is {other}, not from this dashboard")),
        },
    }
}

/// A request addressed to another name than the dashboard's (DNS
/// rebinding: a hostile name resolving to 127.0.0.1). A dashboard bound
/// to every address (`0.0.0.0`) cannot know its names and accepts any.
fn host_refused(app: &App, headers: &HeaderMap) -> Option<Response> {
    let header_str = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    // A page of another site may link here (a navigation), but not fetch,
    // embed or script this dashboard's pages.
    if header_str(SEC_FETCH_SITE) == Some("cross-site")
        && header_str(axum::http::HeaderName::from_static("sec-fetch-mode")) != Some("navigate")
    {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "Refused: a cross-site request that is not a navigation.",
        ));
    }
    let host = header_str(header::HOST).unwrap_or_default();
    (!host_allowed(&app.hosts, app.port, host)).then(|| {
        error_page(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("this dashboard does not answer to host `{host}`"),
        )
    })
}

const SEC_FETCH_SITE: axum::http::HeaderName =
    axum::http::HeaderName::from_static("sec-fetch-site");

/// Whether `host` (a `Host` header) names this dashboard: one of `names`,
/// or any IP literal with this port (a literal cannot be rebound to
/// another address by DNS).
fn host_allowed(names: &[String], port: u16, host: &str) -> bool {
    if names.iter().any(|h| h == host) {
        return true;
    }
    host.parse::<SocketAddr>().is_ok_and(|a| a.port() == port)
}

/// Refuses an address that is not loopback unless `allow_remote`; the
/// caller exits 2 with the text. When allowed, the caller warns.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(format!(
        "{addr} is not a loopback address: the dashboard speaks plain HTTP, so anyone who can see its traffic could take the login token or session and read every release and promote or abort it; use 127.0.0.1:PORT (and an SSH tunnel), or add --dashboard-allow-remote if every host that can reach {addr} is trusted"
    ))
}

/// The warning printed when a dashboard listens beyond loopback.
pub fn remote_warning(addr: SocketAddr) -> String {
    format!(
        "WARNING: the dashboard listens on {addr}, beyond loopback, over plain HTTP WITHOUT encryption: anyone who can see its traffic can take the login token or session and read every release and promote or abort it"
    )
}

/// The live-update script's CSP source: `'sha256-<base64>'`.
fn live_js_hash() -> &'static str {
    static HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(LIVE_JS.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    });
    &HASH
}

/// The security headers every response carries (see the module docs).
async fn security_headers(mut resp: Response) -> Response {
    let csp = format!(
        "frame-ancestors 'none'; default-src 'none'; style-src 'unsafe-inline'; script-src {}; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'",
        live_js_hash()
    );
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Compares two tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn act(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    if let Some(why) = cross_site(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("Refused: {why}."),
        );
    }
    let expected = session(&app, &headers).map(|(_, token)| token);
    match (expected, form.token.as_deref()) {
        (Some(want), Some(got)) if same_token(&want, got) => {}
        _ => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "Refused: this request does not carry this session's token; open the release page and use its buttons.",
            );
        }
    }
    let r = match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no release {id} of {name} in {ns}.")),
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    if let Err(why) = still_live(&app, &r, &form).await {
        return conflict(&r, &form.action, &why);
    }
    match app.source.act(&ns, &r.app, &form.action, &r.revision).await {
        Ok(_) => Redirect::to(&href(&r)).into_response(),
        Err(e) => {
            let back = href(&r);
            (
                StatusCode::FORBIDDEN,
                Html(page(
                    &format!("{} was refused", form.action),
                    nav(),
                    html! { p data-error="refused" { (e) } p { a href=(back) { "Back to the release" } } },
                    None,
                )),
            )
                .into_response()
        }
    }
}

/// Why `form` may not act on `r` now: `r` must be its app's newest
/// release, with the revision the confirmation page showed, and allow the
/// action.
async fn still_live(app: &App, r: &ReleaseRecord, form: &ActionForm) -> Result<(), String> {
    if form.revision.as_deref() != Some(r.revision.as_str()) {
        return Err(format!(
            "the confirmation was for revision {}, but this release is of revision {}",
            form.revision.as_deref().unwrap_or("(none)"),
            r.revision
        ));
    }
    let all = app.source.records().await?;
    let newest = all
        .iter()
        .filter(|o| ns_of(o) == ns_of(r) && o.app == r.app)
        .max_by(|a, b| a.started_at.total_cmp(&b.started_at));
    if let Some(n) = newest
        && id_of(n) != id_of(r)
    {
        return Err(format!(
            "this release is no longer the live one: {} has a newer release (revision {}, {})",
            r.app,
            n.revision,
            n.phase.as_str()
        ));
    }
    let kube = matches!(app.source, Source::Kube(_));
    let allowed = actions(r, kube);
    if !allowed.contains(&form.action.as_str()) {
        return Err(format!(
            "`{}` is not possible on this release now (it is {}{}); possible: {}",
            form.action,
            r.phase.as_str(),
            r.outcome
                .as_deref()
                .map(|o| format!(", {o}"))
                .unwrap_or_default(),
            if allowed.is_empty() {
                "nothing".to_string()
            } else {
                allowed.join(", ")
            }
        ));
    }
    Ok(())
}

fn conflict(r: &ReleaseRecord, action: &str, why: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Html(page(
            &format!("{action} was not done"),
            nav(),
            html! { p data-error="conflict" { "Nothing was done: " (why) "." } p { a href=(href(r)) { "Back to the release" } } },
            None,
        )),
    )
        .into_response()
}

async fn fallback() -> Response {
    not_found("There is no such page.")
}

/// A listener on `addr`; the error names the address (the caller exits 2).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// A running dashboard: its task and the login URL to print.
pub struct Served {
    pub task: tokio::task::JoinHandle<()>,
    /// `http://ADDR/?login=TOKEN`: the one URL that logs a browser in.
    pub url: String,
}

/// Serves the dashboard on `listener` until the task is dropped; the
/// caller prints [`Served::url`].
pub fn serve(listener: tokio::net::TcpListener, source: Source) -> Served {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let hosts = vec![addr.to_string(), format!("localhost:{}", addr.port())];
    let app: App = Arc::new(Shared {
        source,
        sessions: Mutex::new(HashMap::new()),
        hosts,
        port: addr.port(),
        login: random_hex(),
        cookie_name: format!("sluice_session_{}", addr.port()),
    });
    let url = format!("http://{addr}/?login={}", app.login);
    let router = Router::new()
        .route("/", get(list))
        .route("/releases/{ns}/{app}/{id}", get(release))
        .route("/releases/{ns}/{app}/{id}/body", get(body))
        .route("/releases/{ns}/{app}/{id}/report", get(report))
        .route("/releases/{ns}/{app}/{id}/record.json", get(record_json))
        .route("/releases/{ns}/{app}/{id}/confirm", get(confirm))
        .route("/releases/{ns}/{app}/{id}/action", post(act))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_session,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    });
    Served { task, url }
}
