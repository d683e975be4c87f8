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
//! - **Only what the release can take, only on the live release.** A
//!   release page offers only the actions the release can take now
//!   ([`why_not`]): on plain hosts only the release this very process
//!   drives, through its control socket (none at all without one, as in
//!   the demo); on Kubernetes only the app's live release as its status
//!   names it (revision and start, never a record's own claim to be the
//!   newest), in a phase where the machine acts on the command
//!   ([`Command::refused_in`]). **Promote** is *promote now*: the
//!   remaining steps and the analysis are skipped (`promote-full` on the
//!   socket, `kubectl sluice promote --full`).
//! - **Confirmation.** A button leads to a page that says what will happen
//!   and asks again; only its form acts. The page of an action the release
//!   cannot take now is a 409 saying why. The form names the release it
//!   was shown for (its id in the URL, its revision in the form); the
//!   action is refused with 409 ("Nothing was done") unless that release
//!   can still take it. On plain hosts the socket request names the route
//!   and revision, and the socket refuses any other. After an action the
//!   release page says what was asked and what the answer was.
//! - **Status codes.** 409 when the release cannot take the action (its
//!   phase, or it is not the live one), 503 when the rollout's control
//!   socket is gone, 502 when it (or Kubernetes) cannot be reached or does
//!   not answer, 403 only for authorization (this dashboard's checks, or
//!   Kubernetes' RBAC).
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
//!   runs and swaps it in (live updates), only when it changed (a digest
//!   of the body in a response header), keeping each table's scroll
//!   position; it announces a change of phase, weight or outcome in a
//!   polite live region. When a poll fails it says so instead of claiming
//!   to be live, and keeps trying every 5 s: "Connection lost at HH:MM:SS;
//!   this may be out of date" when no answer came, "The dashboard answered
//!   502 (its words) at HH:MM:SS; …" when the answer was not a 2xx (a
//!   session gone, a release no longer found, Kubernetes unreachable). The
//!   first poll that succeeds again puts the live notice back and says
//!   "Connection restored at HH:MM:SS" (also in the live region). The buttons and the live notice are in
//!   the swapped body, so they go when the release ends. Without the
//!   script the page is a snapshot.
//! - **The end is shown.** `sluice rollout --dashboard` keeps serving for
//!   up to [`LINGER`] after its release ends, until every page open on it
//!   has been served its end ([`Served::linger`]).
//! - **Cheap to keep open.** On Kubernetes a release page reads only its
//!   app's records and status (no list of the namespace); the list of
//!   every release is cached for [`LIST_CACHE`].
//! - **Bad input.** An unknown release or page is a 404 page; a port in use
//!   is the caller's exit 2, naming the address ([`bind`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use crate::kube::KubeStatus;
use crate::kube::plugin::{Plugin, PluginError};
use crate::machine::Command;
use crate::record::{ReleaseRecord, data_key};
use crate::report_html::{
    fmt_num, fmt_t, fmt_wall, page, release_body, release_name, strategy_text,
};

/// How long `sluice rollout --dashboard` keeps serving after its release
/// ended, at most, for open pages to show the end.
pub const LINGER: Duration = Duration::from_secs(5);

/// How long the list of every release is reused on Kubernetes (each
/// reading lists the namespace's Deployments and reads every app's
/// records).
pub const LIST_CACHE: Duration = Duration::from_secs(3);

/// A page that has not polled for this long is taken as closed.
const PAGE_GONE: Duration = Duration::from_secs(5);

/// Where releases come from and where actions go.
#[derive(Clone)]
pub enum Source {
    /// Plain hosts and the demo: records in memory (filled by the running
    /// drivers), actions through a control socket when there is one.
    Local(LocalSource),
    /// Kubernetes, with the user's client.
    Kube(Arc<Plugin>),
}

#[derive(Clone, Debug, Default)]
pub struct LocalSource {
    pub records: Arc<Mutex<Vec<ReleaseRecord>>>,
    /// The running release's control socket (`sluice rollout`); none in
    /// the demo, whose releases are shown and never steered.
    pub control_socket: Option<PathBuf>,
    /// The release this process drives (its page), from [`Self::follow`]:
    /// the only one its control socket steers. Every other record (an
    /// earlier release, another route's release kept in the same file) is
    /// shown without buttons.
    driving: Arc<Mutex<Option<String>>>,
}

impl LocalSource {
    /// A store whose driven release is steered through `control_socket`.
    pub fn new(control_socket: Option<PathBuf>) -> Self {
        Self {
            control_socket,
            ..Self::default()
        }
    }

    /// Adds or replaces `record` (the same release is replaced; an older
    /// open release of its app is ended as superseded).
    pub fn put(&self, record: ReleaseRecord) {
        let mut all = self.records.lock().expect("records lock");
        crate::record::upsert(&mut all, record, 100);
    }

    /// Keeps the store current from a driver's record channel; the
    /// release on it is the one this process drives.
    pub fn follow(&self, mut rx: tokio::sync::watch::Receiver<Option<ReleaseRecord>>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let r = rx.borrow_and_update().clone();
                if let Some(r) = r {
                    *me.driving.lock().expect("driving lock") = Some(href(&r));
                    me.put(r);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The page (`/releases/_/<app>/<id>`) of the release this process
    /// drives, once it has a record.
    pub fn driving_href(&self) -> Option<String> {
        self.driving.lock().expect("driving lock").clone()
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

// === impl Action ===

/// What a release page can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Promote now (skip the remaining steps and the analysis).
    Promote,
    Abort,
    /// Kubernetes only: release a rolled-back revision again.
    Retry,
}

const ACTIONS: [Action; 3] = [Action::Promote, Action::Abort, Action::Retry];

impl Action {
    fn parse(name: &str) -> Option<Self> {
        ACTIONS.into_iter().find(|a| a.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Retry => "retry",
        }
    }

    fn command(self) -> Command {
        match self {
            Action::Promote => Command::PromoteNow,
            Action::Abort => Command::Abort,
            Action::Retry => Command::Retry,
        }
    }

    /// What the confirmation page says will happen.
    fn what_it_does(self) -> &'static str {
        match self {
            Action::Promote => {
                "Promote now: skip the remaining steps and the analysis and send all traffic to the new revision."
            }
            Action::Abort => "Abort: roll back now, all traffic to the primary.",
            Action::Retry => "Retry: release the rolled-back revision again from the first step.",
        }
    }

    /// How the release page names what was asked.
    fn asked(self) -> &'static str {
        match self {
            Action::Promote => "promote now",
            Action::Abort => "abort (roll back now)",
            Action::Retry => "retry",
        }
    }
}

// === impl Source ===

/// What decides whether a release may be steered now, read once per
/// request.
enum Steer {
    /// Plain hosts: whether this process drives the release, and whether
    /// it has a control socket to steer it through.
    Local { driven: bool, socket: bool },
    /// Kubernetes: the app's live status (none before the operator took
    /// the app on).
    Kube(Option<Box<KubeStatus>>),
}

/// An action refused or failed: the status to answer and why.
struct Refusal {
    status: StatusCode,
    text: String,
}

impl Refusal {
    fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Self {
            status,
            text: text.into(),
        }
    }
}

/// A Kubernetes error as the page shows it: RBAC's refusal as 403 in
/// Kubernetes' words, a conflict as 409, anything unreachable as 502.
fn kube_refusal(e: PluginError) -> Refusal {
    match e {
        PluginError::Kube(kube::Error::Api(s)) => {
            let status = match s.code {
                401 | 403 => StatusCode::FORBIDDEN,
                404 => StatusCode::NOT_FOUND,
                409 => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            };
            Refusal::new(
                status,
                format!(
                    "Kubernetes refused: {} ({} {})",
                    s.message, s.code, s.reason
                ),
            )
        }
        PluginError::Kube(other) => Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot reach Kubernetes: {other}"),
        ),
        // The plugin's own refusals: the release cannot take it now.
        PluginError::Usage(text) | PluginError::Conflict(text) => {
            Refusal::new(StatusCode::CONFLICT, text)
        }
        PluginError::NotFound(text) => Refusal::new(StatusCode::NOT_FOUND, text),
    }
}

/// Why `action` cannot be done on `r` now (`None`: it can). See the
/// module docs: only the live release, only what its phase takes.
fn why_not(steer: &Steer, r: &ReleaseRecord, action: Action) -> Option<String> {
    let experiment = r.strategy == "experiment";
    let ended = || {
        format!(
            "the release has already ended ({})",
            r.outcome.as_deref().unwrap_or(r.phase.as_str())
        )
    };
    match steer {
        Steer::Local { socket: false, .. } => Some(
            "this dashboard has no control socket: its releases are shown, not steered".into(),
        ),
        Steer::Local { driven: false, .. } => Some(
            "this release is not the one this `sluice rollout` drives (its record is from an earlier run, or of another route kept beside the same control socket)".into(),
        ),
        Steer::Local { .. } if action == Action::Retry => Some(
            "plain hosts have no retry: the rollout process ends with its release; run `sluice rollout` again".into(),
        ),
        Steer::Local { .. } if r.ended() => Some(ended()),
        Steer::Local { .. } => action.command().refused_in(r.phase, experiment),
        Steer::Kube(None) => {
            Some(format!("Sluice keeps no status for {}: it has no live release", r.app))
        }
        Steer::Kube(Some(s)) => {
            // The live release is the one the status names: its revision,
            // started when it started (not before, and not after the
            // operator last ticked: no record of a later start is one it
            // wrote).
            let started_with = r.started_at + 0.05 >= s.release_started_at
                && (s.last_tick_at <= 0.0 || r.started_at <= s.last_tick_at + 0.05);
            if s.revision != r.revision || !started_with {
                return Some(format!(
                    "this release is no longer the live one: {}'s live release is of revision {}, started {}",
                    r.app,
                    s.revision,
                    fmt_wall(s.release_started_at)
                ));
            }
            let Some(phase) = s.machine.as_ref().map(|m| m.phase) else {
                return Some(format!("{}'s status has no phase yet", r.app));
            };
            if action == Action::Retry {
                if r.outcome.as_deref() != Some("rolled back") {
                    return Some(format!(
                        "retry applies to a rolled-back release, and this one is {}",
                        r.outcome.as_deref().unwrap_or("running")
                    ));
                }
                if s.failed_revision.as_deref() != Some(r.revision.as_str()) {
                    return Some(format!(
                        "revision {} is not the one recorded as failed",
                        r.revision
                    ));
                }
            } else if r.ended() {
                return Some(ended());
            }
            action.command().refused_in(phase, experiment)
        }
    }
}

impl Source {
    fn is_kube(&self) -> bool {
        matches!(self, Source::Kube(_))
    }

    /// Every release (the list page).
    async fn records(&self) -> Result<Vec<ReleaseRecord>, String> {
        match self {
            Source::Local(l) => Ok(l.records.lock().expect("records lock").clone()),
            Source::Kube(p) => p.all_records().await.map_err(|e| e.to_string()),
        }
    }

    /// The release `id` of `app` in `ns`; on Kubernetes only that app's
    /// records are read.
    async fn find(&self, ns: &str, app: &str, id: &str) -> Result<Option<ReleaseRecord>, String> {
        let all = match self {
            Source::Local(l) => l.records.lock().expect("records lock").clone(),
            Source::Kube(p) if ns != p.namespace => return Ok(None),
            Source::Kube(p) => match p.records(app).await {
                Ok(all) => all,
                Err(PluginError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            },
        };
        Ok(all
            .into_iter()
            .find(|r| ns_of(r) == ns && r.app == app && id_of(r) == id))
    }

    async fn steer(&self, r: &ReleaseRecord) -> Result<Steer, Refusal> {
        match self {
            Source::Local(l) => Ok(Steer::Local {
                driven: l.driving.lock().expect("driving lock").as_deref()
                    == Some(href(r).as_str()),
                socket: l.control_socket.is_some(),
            }),
            Source::Kube(p) => Ok(Steer::Kube(
                p.live_status(&r.app)
                    .await
                    .map_err(kube_refusal)?
                    .map(Box::new),
            )),
        }
    }

    /// The actions `r` can take now; none when that cannot be read (the
    /// page is still shown).
    async fn actions(&self, r: &ReleaseRecord) -> Vec<Action> {
        match self.steer(r).await {
            Ok(steer) => ACTIONS
                .into_iter()
                .filter(|a| why_not(&steer, r, *a).is_none())
                .collect(),
            Err(e) => {
                tracing::warn!(release = %href(r), error = %e.text, "cannot tell what the release can take; no buttons");
                Vec::new()
            }
        }
    }

    /// Carries out `action` on `r`, checked again just before; the answer
    /// to show.
    async fn act(&self, r: &ReleaseRecord, action: Action) -> Result<String, Refusal> {
        let steer = self.steer(r).await?;
        if let Some(why) = why_not(&steer, r, action) {
            return Err(Refusal::new(StatusCode::CONFLICT, why));
        }
        match self {
            Source::Local(l) => {
                let Some(path) = &l.control_socket else {
                    return Err(Refusal::new(
                        StatusCode::CONFLICT,
                        "this dashboard has no control socket",
                    ));
                };
                let request = serde_json::json!({
                    "request": if action == Action::Promote { "promote-full" } else { "abort" },
                    "route": r.app,
                    "revision": r.revision,
                });
                use crate::control::ControlError;
                match crate::control::request(path, &request.to_string()).await {
                    Ok(reply) => Ok(format!(
                        "The rollout answered: {} (the release was {} when asked).",
                        reply["message"].as_str().unwrap_or("accepted"),
                        reply["phase"].as_str().unwrap_or("?")
                    )),
                    Err(ControlError::Refused(why)) => Err(Refusal::new(
                        StatusCode::CONFLICT,
                        why.trim_start_matches("nothing was done: ").to_string(),
                    )),
                    Err(e @ ControlError::NotRunning { .. }) => Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the rollout that drove this release is gone: {e}"),
                    )),
                    Err(e) => Err(Refusal::new(StatusCode::BAD_GATEWAY, e.to_string())),
                }
            }
            Source::Kube(p) => {
                let result = match action {
                    Action::Promote => p.promote(&r.app, true).await,
                    Action::Abort => p.abort(&r.app).await,
                    Action::Retry => p.retry(&r.app).await,
                };
                result
                    .map(|text| format!("Kubernetes took the command: {text}."))
                    .map_err(kube_refusal)
            }
        }
    }
}

/// A page open on a release, as its polls show it.
struct OpenPage {
    href: String,
    last_poll: Instant,
    /// It has been served the release's end.
    saw_end: bool,
}

/// Pages (and notices) kept at most; past it stale ones are forgotten.
const MAX_PAGES: usize = 1000;

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
    /// session id -> (release page, what was asked and answered): shown
    /// once, on that release's page after an action.
    notices: Mutex<HashMap<String, (String, String)>>,
    /// page id (made when a release page is served) -> what it was shown.
    pages: Mutex<HashMap<String, OpenPage>>,
    /// Kubernetes: the list of every release, and when it was read.
    list_cache: tokio::sync::Mutex<Option<(Instant, Vec<ReleaseRecord>)>>,
}

type App = Arc<Shared>;

impl Shared {
    /// Notes that page `id` (of release `href`) was just served its
    /// release, ended or not.
    fn saw(&self, id: &str, href: &str, ended: bool) {
        let mut pages = self.pages.lock().expect("pages lock");
        if pages.len() >= MAX_PAGES && !pages.contains_key(id) {
            pages.retain(|_, p| p.last_poll.elapsed() < PAGE_GONE);
            if pages.len() >= MAX_PAGES {
                return;
            }
        }
        let page = pages.entry(id.to_string()).or_insert(OpenPage {
            href: href.to_string(),
            last_poll: Instant::now(),
            saw_end: false,
        });
        page.last_poll = Instant::now();
        page.saw_end |= ended;
    }

    /// Every release, read at most once per [`LIST_CACHE`] on Kubernetes.
    async fn list_records(&self) -> Result<Vec<ReleaseRecord>, String> {
        if !self.source.is_kube() {
            return self.source.records().await;
        }
        let mut cache = self.list_cache.lock().await;
        if let Some((at, all)) = cache.as_ref()
            && at.elapsed() < LIST_CACHE
        {
            return Ok(all.clone());
        }
        let all = self.source.records().await?;
        *cache = Some((Instant::now(), all.clone()));
        Ok(all)
    }
}

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

fn list_body(all: &[ReleaseRecord]) -> Markup {
    html! {
        @if all.is_empty() { p { "No release recorded yet." } }
        table data-table="releases" {
            caption { "Every recorded release, newest first" }
            thead { tr {
                th.l scope="col" { "namespace" } th.l scope="col" { "app" } th.l scope="col" { "revision" }
                th.l scope="col" { "strategy" } th.l scope="col" { "phase" } th scope="col" { "weight" }
                th scope="col" { "age" } th.l scope="col" { "outcome" }
            } }
            tbody { @for r in all {
                tr data-release=(href(r)) {
                    td.l { (r.namespace.as_deref().unwrap_or("-")) }
                    td.l { a href=(href(r)) { (r.app) } }
                    td.l { code { (r.revision) } }
                    td.l data-field="strategy" { (strategy_text(r)) }
                    td.l data-field="phase" { (r.phase.as_str()) }
                    td data-field="weight" { (fmt_num(r.weight)) "%" }
                    td { (age(r)) }
                    td.l data-field="outcome" { (r.outcome.as_deref().unwrap_or("running")) }
                }
            } }
        }
    }
}

async fn list(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    let mut all = match app.list_records().await {
        Ok(all) => all,
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    all.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
    Html(page("Sluice releases", nav(), list_body(&all), None)).into_response()
}

/// Polls the body while the release runs; swaps it in only when its digest
/// changed, keeping each table's scroll position, and announces a change
/// of phase, weight or outcome. A poll that fails says so instead of
/// claiming to be live, and tries again every 5 s: "Connection lost" when
/// no answer came (the network, or the dashboard gone), "The dashboard
/// answered 502 (its words)" when an answer came that is not a 2xx. The
/// first poll that succeeds again swaps the body in (the live notice
/// back) and says "Connection restored at HH:MM:SS", on the page and in
/// the live region.
const LIVE_JS: &str = r#"(function(){var m=document.getElementById('live');if(!m)return;var say=document.getElementById('announce');
function ended(){var e=m.querySelector('[data-ended]');return !!e&&e.dataset.ended==='true'}
function field(n){var e=m.querySelector('[data-field="'+n+'"]');return e?e.textContent.trim():''}
function summary(){var s='Phase '+field('phase')+', weight '+field('weight'),o=field('outcome');return o&&o!=='running'?s+', '+o:s}
function at(){return new Date().toTimeString().slice(0,8)}
function notice(t,c){var n=m.querySelector('.live');if(n){n.textContent=t;n.className=c}}
function stale(kind,t){notice(t,'live stale');if(say&&m.dataset.stale!==kind)say.textContent=t;m.dataset.stale=kind;setTimeout(tick,5000)}
function lost(){stale('lost','Connection lost at '+at()+'; this may be out of date.')}
function answered(r){var tell=function(w){stale('http '+r.status,'The dashboard answered '+r.status+(w?' ('+w+')':'')+' at '+at()+'; this may be out of date.')};
return r.text().then(function(t){var e=new DOMParser().parseFromString(t,'text/html').querySelector('[data-error]');tell(e?e.textContent.trim().slice(0,300):'')},function(){tell('')})}
function show(t,d){var was=m.dataset.stale;delete m.dataset.stale;
if(was||d!==m.dataset.digest){var before=summary(),tops=[].map.call(m.querySelectorAll('.scroll'),function(e){return e.scrollTop});
m.innerHTML=t;m.dataset.digest=d;[].forEach.call(m.querySelectorAll('.scroll'),function(e,i){if(tops[i])e.scrollTop=tops[i]});
var after=summary();if(was){var back='Connection restored at '+at()+'.';notice(back+' Live: this page follows the release every 2 s.','live');if(say)say.textContent=back+' '+after}
else if(say&&after!==before)say.textContent=after}if(!ended())setTimeout(tick,2000)}
function tick(){fetch(m.dataset.src,{credentials:'same-origin'}).then(function(r){if(!r.ok)return answered(r);
var d=r.headers.get('x-body-digest');return r.text().then(function(t){show(t,d)})}).catch(lost)}
if(!ended())setTimeout(tick,2000)})();"#;

/// The swapped part of a release page: its buttons, the live notice and
/// the report's body; with the digest the script compares.
fn live_body(r: &ReleaseRecord, actions: &[Action]) -> (String, String) {
    let base = href(r);
    let body = html! {
        div data-ended=(r.ended()) hidden {}
        @if !actions.is_empty() {
            // Each button opens the confirmation page (a GET form: no
            // script, reachable by keyboard); only that page acts.
            div.actions { @for a in actions {
                form method="get" action=(format!("{base}/confirm")) style="display:inline" {
                    input type="hidden" name="action" value=(a.name());
                    button type="submit" data-action=(a.name()) { (a.name()) "…" }
                }
            } }
        }
        @if !r.ended() { p.live { "Live: this page follows the release every 2 s." } }
        (release_body(r))
    }
    .into_string();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    (body, digest)
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
    let base = href(&r);
    let (live, digest) = live_body(&r, &app.source.actions(&r).await);
    let page_id: String = random_hex().chars().take(16).collect();
    app.saw(&page_id, &base, r.ended());
    let notice = session(&app, &headers).and_then(|(sid, _)| {
        let mut notices = app.notices.lock().expect("notices lock");
        match notices.get(&sid) {
            Some((at, _)) if *at == base => notices.remove(&sid).map(|(_, text)| text),
            _ => None,
        }
    });
    let body = html! {
        p { a href=(format!("{base}/report")) download { "Download the report (HTML)" } " · " a href=(format!("{base}/record.json")) { "the record (JSON)" } }
        @if let Some(text) = notice { p.notice role="status" data-notice="action" { (text) } }
        p.sr id="announce" role="status" aria-live="polite" {}
        div id="live" data-src=(format!("{base}/body?page={page_id}")) data-digest=(digest) { (PreEscaped(live)) }
    };
    let title = format!("Release of {} ({})", release_name(&r), r.revision);
    Html(page(&title, nav(), body, Some(LIVE_JS))).into_response()
}

#[derive(Deserialize)]
struct BodyQuery {
    /// The page polling (made when the release page was served).
    page: Option<String>,
}

async fn body(
    State(app): State<App>,
    Path((ns, name, id)): Path<(String, String, String)>,
    Query(q): Query<BodyQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = host_refused(&app, &headers) {
        return r;
    }
    match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => {
            let (live, digest) = live_body(&r, &app.source.actions(&r).await);
            if let Some(page_id) = q.page.as_deref().filter(|p| p.len() <= 64) {
                app.saw(page_id, &href(&r), r.ended());
            }
            let mut resp = Html(live).into_response();
            if let Ok(v) = HeaderValue::from_str(&digest) {
                resp.headers_mut().insert("x-body-digest", v);
            }
            resp
        }
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

fn unknown_action(name: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Unknown action",
        &format!("`{name}` is not an action: promote, abort or retry"),
    )
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
    let Some(action) = Action::parse(&q.action) else {
        return unknown_action(&q.action);
    };
    let r = match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no release {id} of {name} in {ns}.")),
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    // Nothing to confirm that the release cannot take now.
    let why = match app.source.steer(&r).await {
        Ok(steer) => why_not(&steer, &r, action),
        Err(e) => return error_page(e.status, "Cannot tell what the release can take", &e.text),
    };
    if let Some(why) = why {
        return conflict(&r, action.name(), &why, "Nothing can be done");
    }
    let base = href(&r);
    let body = html! {
        p { "Release " strong { (release_name(&r)) } ", revision " code { (r.revision) } ", is " (r.phase.as_str()) " at " (fmt_num(r.weight)) "%." }
        p { (action.what_it_does()) }
        form method="post" action=(format!("{base}/action")) {
            input type="hidden" name="token" value=(token);
            input type="hidden" name="action" value=(action.name());
            input type="hidden" name="revision" value=(r.revision);
            button type="submit" data-confirm=(action.name()) { "Yes, " (action.asked()) }
            " " a href=(base) { "Cancel" }
        }
    };
    Html(page(
        &format!("Confirm: {}", action.name()),
        nav(),
        body,
        None,
    ))
    .into_response()
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
/// rebinding: a hostile name resolving to 127.0.0.1). Answered: the bound
/// address, `localhost` with the port, and any IP literal with the port
/// (see [`host_allowed`]); a dashboard bound to every address (`0.0.0.0`)
/// cannot know its other names, so it answers only those too.
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
/// another address by DNS). On port 80 browsers leave the port out, so
/// there a bare literal or `localhost` is this dashboard too.
fn host_allowed(names: &[String], port: u16, host: &str) -> bool {
    if names.iter().any(|h| h == host) {
        return true;
    }
    if let Ok(a) = host.parse::<SocketAddr>() {
        return a.port() == port;
    }
    let literal = host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    port == 80 && (literal || host == "localhost")
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
    let session = session(&app, &headers);
    match (session.as_ref(), form.token.as_deref()) {
        (Some((_, want)), Some(got)) if same_token(want, got) => {}
        _ => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "Refused: this request does not carry this session's token; open the release page and use its buttons.",
            );
        }
    }
    let Some(action) = Action::parse(&form.action) else {
        return unknown_action(&form.action);
    };
    let r = match app.source.find(&ns, &name, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&format!("There is no release {id} of {name} in {ns}.")),
        Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Cannot read the releases", &e),
    };
    if form.revision.as_deref() != Some(r.revision.as_str()) {
        let why = format!(
            "the confirmation was for revision {}, but this release is of revision {}",
            form.revision.as_deref().unwrap_or("(none)"),
            r.revision
        );
        return conflict(&r, action.name(), &why, "Nothing was done");
    }
    match app.source.act(&r, action).await {
        Ok(answer) => {
            let back = href(&r);
            if let Some((sid, _)) = session {
                let mut notices = app.notices.lock().expect("notices lock");
                if notices.len() >= MAX_PAGES {
                    notices.clear();
                }
                notices.insert(
                    sid,
                    (
                        back.clone(),
                        format!("You asked to {}. {answer}", action.asked()),
                    ),
                );
            }
            Redirect::to(&back).into_response()
        }
        Err(e) if e.status == StatusCode::CONFLICT => {
            conflict(&r, action.name(), &e.text, "Nothing was done")
        }
        Err(e) => {
            let back = href(&r);
            (
                e.status,
                Html(page(
                    &format!("{} was refused", action.name()),
                    nav(),
                    html! { p data-error="refused" { (e.text) } p { a href=(back) { "Back to the release" } } },
                    None,
                )),
            )
                .into_response()
        }
    }
}

/// 409: the release cannot take `action` now; `lead` says whether a
/// confirmation was refused ("Nothing was done") or never offered
/// ("Nothing can be done").
fn conflict(r: &ReleaseRecord, action: &str, why: &str, lead: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Html(page(
            &format!("{action} is not possible now"),
            nav(),
            html! { p data-error="conflict" { (lead) ": " (why) "." } p { a href=(href(r)) { "Back to the release" } } },
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

/// A running dashboard: its task (stopped on drop) and the login URL to print.
pub struct Served {
    pub task: tokio::task::JoinHandle<()>,
    /// `http://ADDR/?login=TOKEN`: the one URL that logs a browser in.
    pub url: String,
    shared: App,
}

/// The dashboard stops with its command.
impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// Waits, at most `max`, until every page open on the release at
    /// `href` (one that polled within the last 5 s) has been served its
    /// end: the rollout calls this after its release ended, before it
    /// exits and takes the dashboard with it.
    pub async fn linger(&self, href: &str, max: Duration) {
        let deadline = Instant::now() + max;
        let mut waited = false;
        loop {
            let waiting = self
                .shared
                .pages
                .lock()
                .expect("pages lock")
                .values()
                .filter(|p| p.href == href && !p.saw_end && p.last_poll.elapsed() < PAGE_GONE)
                .count();
            if waiting == 0 {
                if waited {
                    // A page is marked as it is answered: let the last
                    // answer leave before the process (and its runtime) ends.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
        notices: Mutex::new(HashMap::new()),
        pages: Mutex::new(HashMap::new()),
        list_cache: tokio::sync::Mutex::new(None),
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
        .with_state(app.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    });
    Served {
        task,
        url,
        shared: app,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Phase;

    fn running(app: &str) -> ReleaseRecord {
        let plan = crate::demo::demo_plan();
        let mut r = ReleaseRecord::new(None, app, "http://v2", &plan, 100.0);
        r.phase = Phase::Progressing;
        r.weight = 20.0;
        r
    }

    /// The demo has no control socket: its running releases offer nothing
    /// (every button would end in a refusal).
    #[tokio::test]
    async fn a_store_without_a_control_socket_offers_no_action() {
        let store = LocalSource::default();
        let (tx, rx) = tokio::sync::watch::channel(None);
        store.follow(rx);
        let r = running("web");
        tx.send(Some(r.clone())).unwrap();
        for _ in 0..100 {
            if store.driving_href().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(store.driving_href(), Some(href(&r)));
        assert_eq!(Source::Local(store).actions(&r).await, vec![]);
    }

    /// Plain hosts: only the release this process drives is steered;
    /// another route's record beside the same socket is not.
    #[tokio::test]
    async fn only_the_release_this_process_drives_offers_actions() {
        let store = LocalSource::new(Some(PathBuf::from("/nonexistent/control.sock")));
        let (tx, rx) = tokio::sync::watch::channel(None);
        store.follow(rx);
        let other = running("web");
        store.put(other.clone());
        let mine = running("api");
        tx.send(Some(mine.clone())).unwrap();
        for _ in 0..100 {
            if store.driving_href().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let source = Source::Local(store);
        assert_eq!(
            source.actions(&mine).await,
            vec![Action::Promote, Action::Abort]
        );
        assert_eq!(source.actions(&other).await, vec![]);
        let refused = source.act(&other, Action::Abort).await.err().unwrap();
        assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
        assert!(
            refused
                .text
                .contains("not the one this `sluice rollout` drives")
        );
        // The driven release's socket is gone: 503, not a refusal.
        let gone = source.act(&mine, Action::Abort).await.err().unwrap();
        assert_eq!(
            gone.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            gone.text
        );
    }

    /// A refusal by the rollout (its phase) is a 409 with its reason; a
    /// rollout that does not answer is a 502.
    #[tokio::test]
    async fn the_rollouts_refusal_is_a_conflict_and_no_answer_a_bad_gateway() {
        let dir = std::env::temp_dir().join(format!("sluice-dash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let answering = tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            for reply in [
                "{\"ok\":false,\"error\":\"nothing was done: the promotion is already under way (Promoting)\"}\n",
                "not json\n",
            ] {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                tokio::io::BufReader::new(read)
                    .read_line(&mut line)
                    .await
                    .unwrap();
                assert!(line.contains("\"route\":\"api\""), "{line}");
                write.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let store = LocalSource::new(Some(path));
        let mine = running("api");
        *store.driving.lock().unwrap() = Some(href(&mine));
        store.put(mine.clone());
        let source = Source::Local(store);
        let refused = source.act(&mine, Action::Abort).await.err().unwrap();
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert_eq!(
            refused.text,
            "the promotion is already under way (Promoting)"
        );
        let broken = source.act(&mine, Action::Abort).await.err().unwrap();
        assert_eq!(broken.status, StatusCode::BAD_GATEWAY, "{}", broken.text);
        answering.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// On port 80 browsers send `Host: 127.0.0.1` with no port.
    #[test]
    fn a_bare_ip_literal_is_this_dashboard_on_port_80_only() {
        let names = |port: u16| vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        for host in ["127.0.0.1", "localhost", "[::1]", "10.0.0.1"] {
            assert!(host_allowed(&names(80), 80, host), "{host}");
            assert!(!host_allowed(&names(8080), 8080, host), "{host}");
        }
        assert!(host_allowed(&names(8080), 8080, "127.0.0.1:8080"));
        assert!(!host_allowed(&names(80), 80, "evil.example"));
        assert!(!host_allowed(&names(80), 80, "127.0.0.1:81"));
    }

    /// The list prints weights as the release page does.
    #[test]
    fn the_list_prints_weights_as_the_release_page_does() {
        let mut r = running("web");
        r.weight = 100.0 / 3.0;
        let html = list_body(&[r]).into_string();
        assert!(
            html.contains(r#"<td data-field="weight">33.33%</td>"#),
            "{html}"
        );
    }
}
