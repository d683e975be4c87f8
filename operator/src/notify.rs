//! Chat notifications: Slack, Microsoft Teams, Discord, Rocket.Chat, Google
//! Chat and a generic JSON webhook, each a URL read from a file (it is a credential: it prints as
//! `<redacted>`).
//!
//! What is sent, from the change between a release's status before and
//! after a tick ([`classify`]): the release started, each weight step (only
//! when asked: `--notify-steps`), waiting for approval (with the evidence),
//! promoted, rolled back (with the reason and the evidence), held for lack
//! of evidence (undecided).
//!
//! The rules of delivery:
//!
//! - A decision never waits for a notification: each channel has its own
//!   bounded queue (64 notes) and its own task, which sends them in order.
//!   A note that finds its channel's queue full is dropped for that channel
//!   and counted (`dropped`, by service: the operator exports it as
//!   `sluice_notifications_dropped_total`), with one log line until that
//!   queue takes a note again.
//! - One channel never holds up another: a channel that does not answer
//!   (5 s a try) or that is paced only delays its own queue.
//! - At most one note a second per channel (chat services limit incoming
//!   webhooks).
//! - Each note is tried up to three times, with pauses of 0.5 s and 1 s,
//!   when the channel cannot be reached, does not answer in time, or
//!   answers 5xx or 429. Any other 4xx is the service's answer (a revoked
//!   URL, a payload it refuses): asked again it says the same, so it is not
//!   asked again. So is a Slack answer of `200 {"ok": false, ...}`, the way
//!   Slack's Web API refuses (a bad token, a channel the app is not in):
//!   it is a failed note, not a sent one.
//! - Slack's Web API (`chat.postMessage`, a Flagger Secret's `token`): the
//!   token goes as `Authorization: Bearer` and the payload names the
//!   channel and the name to post as ([`Channel::with_slack_token`]). No
//!   other service is ever sent a token: Flagger gives it to its Slack
//!   notifier alone.
//! - A note that still fails is counted (`failed`, by service:
//!   `sluice_notifications_failed_total`) and logged, once per channel
//!   until one succeeds again.
//! - A channel's URL is rotated (a changed notify Secret, often because
//!   the old URL leaked): the old URL gets nothing more. The notes queued
//!   for that key, and the one being tried, go to the new URL from their
//!   next try, in order ([`Notifier::update`]): the team still hears of
//!   the release, where it now listens. A key removed from the Secret, or
//!   a Secret no longer named, retires its channel: what it still holds
//!   is dropped, counted as `dropped`, and a try under way is cut short.
//!   A notifier merely let go of (its app forgotten) still sends what it
//!   holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};

use crate::http::{HttpClient, Secret};
use crate::machine::{Phase, Status};
use crate::ordered_queue::{Handler, OrderedQueue};

/// The chat service a channel posts to, which decides the payload's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Slack incoming webhook: `{"text": …}`.
    Slack,
    /// Microsoft Teams incoming webhook: a `MessageCard`.
    Teams,
    /// Discord webhook: `{"content": …}`.
    Discord,
    /// Rocket.Chat incoming webhook: `{"text": …}`.
    Rocket,
    /// Google Chat incoming webhook: `{"text": …}`.
    GoogleChat,
    /// Any JSON endpoint: Sluice's own fields.
    Webhook,
}

impl Service {
    /// A service by name: Sluice's, or Flagger's `AlertProvider` type
    /// (`msteams`, `rocket`, `gchat`), so a Flagger user's keys work.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "slack" => Ok(Self::Slack),
            "teams" | "msteams" => Ok(Self::Teams),
            "discord" => Ok(Self::Discord),
            "rocket" => Ok(Self::Rocket),
            "gchat" => Ok(Self::GoogleChat),
            "webhook" => Ok(Self::Webhook),
            // Never echoed: the text may be a Secret's value (a URL pasted
            // under `type`) or the URL part of a `--notify` flag.
            _ => Err(
                "not a notification service; use slack, teams (or msteams), discord, rocket, gchat or webhook"
                    .into(),
            ),
        }
    }

    /// The service of a well-known host (Slack's, `hooks.slack.com` or its
    /// Web API's `slack.com`; Teams', Discord's, Google Chat's), for a
    /// Flagger `AlertProvider` Secret's `address`, whose service is the
    /// provider's `spec.type`, which Sluice does not read. None: another
    /// host (Rocket.Chat is self-hosted).
    pub fn of_address(url: &str) -> Option<Self> {
        let host = url.parse::<http::Uri>().ok()?.host()?.to_ascii_lowercase();
        let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if under("slack.com") {
            Some(Self::Slack)
        } else if under("discord.com") || under("discordapp.com") {
            Some(Self::Discord)
        } else if under("webhook.office.com") || host == "outlook.office.com" {
            Some(Self::Teams)
        } else if host == "chat.googleapis.com" {
            Some(Self::GoogleChat)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
            Self::Discord => "discord",
            Self::Rocket => "rocket",
            Self::GoogleChat => "gchat",
            Self::Webhook => "webhook",
        }
    }
}

/// Where notes go.
#[derive(Clone, Debug)]
pub struct Channel {
    pub service: Service,
    url: Secret,
    /// A Slack channel posting through Slack's Web API rather than an
    /// incoming webhook (a Flagger Secret's `token`).
    slack_api: Option<SlackApi>,
}

/// What a note to Slack's Web API (`chat.postMessage`) needs besides the
/// text: the token, sent as `Authorization: Bearer`, and the channel and
/// the name to post as, which the payload must give (an incoming webhook
/// posts where it was made for, so it needs neither).
#[derive(Clone, Debug)]
struct SlackApi {
    token: Secret,
    channel: String,
    username: String,
}

/// The name notes are posted as, where a service takes one.
pub const USERNAME: &str = "Sluice";

/// The Slack channel a token's notes go to when the Secret names none
/// (Flagger's default).
pub const SLACK_CHANNEL: &str = "general";

impl Channel {
    /// `SERVICE=FILE`, the file holding the URL (`what` names the flag).
    pub fn from_flag(what: &str, text: &str) -> Result<Self, String> {
        // The value may be the URL itself, given by mistake: never echoed.
        let (service, file) = text.split_once('=').ok_or_else(|| {
            format!("{what}: not SERVICE=FILE (e.g. slack=/etc/sluice/slack-url)")
        })?;
        let service = Service::parse(service).map_err(|e| format!("{what}: {e}"))?;
        if file.contains("://") {
            return Err(format!(
                "{what}: {}= gives a URL; put it in a file and give the file's path (the URL is a credential)",
                service.as_str()
            ));
        }
        let url = Secret::from_file(what, Path::new(file))?;
        Self::from_url(
            service,
            url.expose_for_request(),
            &format!("{what}: {file}"),
        )
    }
}

impl Channel {
    /// A channel to `url` (from a Secret's key; `what` names it in errors).
    pub fn from_url(service: Service, url: &str, what: &str) -> Result<Self, String> {
        if !crate::http::is_http_url(url) {
            return Err(format!("{what}: does not hold an http:// or https:// URL"));
        }
        Ok(Self {
            service,
            url: Secret::from_value(url),
            slack_api: None,
        })
    }

    /// The Slack channel, posting through Slack's Web API
    /// (`https://slack.com/api/chat.postMessage`), as Flagger does with an
    /// `AlertProvider` Secret's `token`: the token goes as
    /// `Authorization: Bearer`, and the payload names `channel` and
    /// `username`. Only Slack's notes carry a token (Flagger gives it to
    /// its Slack notifier alone): for another service this is an error.
    pub fn with_slack_token(
        mut self,
        token: Secret,
        channel: &str,
        username: &str,
    ) -> Result<Self, String> {
        if self.service != Service::Slack {
            return Err(format!(
                "a token is sent with Slack's notes only, not {}'s",
                self.service.as_str()
            ));
        }
        self.slack_api = Some(SlackApi {
            token,
            channel: channel.to_string(),
            username: username.to_string(),
        });
        Ok(self)
    }

    /// What a note to this channel posts: the service's payload, and for
    /// Slack's Web API the channel and the name to post as.
    fn payload(&self, note: &Note) -> Value {
        let mut body = note.payload(self.service);
        if let Some(api) = &self.slack_api {
            body["channel"] = json!(api.channel);
            body["username"] = json!(api.username);
        }
        body
    }

    /// The bearer token its notes carry: a Slack Web API token, never
    /// another service's.
    fn token(&self) -> Option<&str> {
        self.slack_api
            .as_ref()
            .filter(|_| self.service == Service::Slack)
            .map(|api| api.token.expose_for_request())
    }
}

/// What happened to a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    Started,
    Step,
    WaitingApproval,
    Promoted,
    Concluded,
    RolledBack,
    Undecided,
}

impl NoteKind {
    fn title(self) -> &'static str {
        match self {
            Self::Started => "release started",
            Self::Step => "weight stepped",
            Self::WaitingApproval => "waiting for approval",
            Self::Promoted => "promoted",
            Self::Concluded => "experiment concluded",
            Self::RolledBack => "rolled back",
            Self::Undecided => "held: not enough evidence",
        }
    }

    fn warning(self) -> bool {
        matches!(self, Self::RolledBack | Self::Undecided)
    }
}

/// A release's change worth a note, from its status before and after a
/// tick; `steps`: every weight step is one.
pub fn classify(before: Option<&Status>, after: &Status, steps: bool) -> Option<NoteKind> {
    let was = before.map(|s| s.phase);
    let entered = |p: Phase| after.phase == p && was != Some(p);
    if entered(Phase::Failed) {
        return Some(NoteKind::RolledBack);
    }
    if entered(Phase::Succeeded) {
        return Some(NoteKind::Promoted);
    }
    if entered(Phase::Concluded) {
        return Some(NoteKind::Concluded);
    }
    if after.undecided && !before.is_some_and(|b| b.undecided) {
        return Some(NoteKind::Undecided);
    }
    if entered(Phase::WaitingPromotion) {
        return Some(NoteKind::WaitingApproval);
    }
    let fresh = before.is_none_or(|b| b.phase.is_terminal() || b.revision != after.revision);
    if fresh && after.phase == Phase::Initializing {
        return Some(NoteKind::Started);
    }
    if steps
        && after.phase == Phase::Progressing
        && before.is_some_and(|b| b.canary_weight_bp != after.canary_weight_bp)
    {
        return Some(NoteKind::Step);
    }
    None
}

/// One note, ready to send.
#[derive(Clone, Debug)]
pub struct Note {
    pub kind: NoteKind,
    pub name: String,
    pub namespace: Option<String>,
    pub phase: &'static str,
    pub canary_weight: f64,
    pub revision: String,
    /// The status message: the reason and the evidence.
    pub message: String,
}

impl Note {
    fn who(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    fn text(&self) -> String {
        format!(
            "Sluice: {} {} (revision {}, canary weight {}%): {}",
            self.who(),
            self.kind.title(),
            self.revision,
            self.canary_weight,
            self.message
        )
    }

    /// The payload for `service`, as its incoming webhooks document it.
    pub fn payload(&self, service: Service) -> Value {
        match service {
            // Slack reads `<`, `>` and `&` as markup (links, mentions):
            // escaped as its API asks, `<= 500ms` shows as written.
            Service::Slack => json!({ "text": slack_escape(&self.text()) }),
            Service::Discord => {
                json!({ "username": USERNAME, "content": truncate(&self.text(), 2000) })
            }
            Service::Rocket => json!({ "alias": USERNAME, "text": self.text() }),
            // Google Chat takes at most 4,096 characters of text.
            Service::GoogleChat => json!({ "text": truncate(&self.text(), 4096) }),
            Service::Teams => json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "themeColor": if self.kind.warning() { "D93F0B" } else { "2EA043" },
                "summary": format!("{} {}", self.who(), self.kind.title()),
                "title": format!("Sluice: {} {}", self.who(), self.kind.title()),
                "text": self.message,
                "sections": [{ "facts": [
                    { "name": "Phase", "value": self.phase },
                    { "name": "Canary weight", "value": format!("{}%", self.canary_weight) },
                    { "name": "Revision", "value": self.revision },
                ]}],
            }),
            Service::Webhook => json!({
                "name": self.name,
                "namespace": self.namespace,
                "event": self.kind.title(),
                "phase": self.phase,
                "canary_weight": self.canary_weight,
                "revision": self.revision,
                "message": self.message,
            }),
        }
    }
}

/// Text for a Slack message: `&`, `<` and `>` as the entities Slack's
/// API asks for.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// The label of the notification counters: the channel's service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// What the operator counts about notifications, by service.
#[derive(Clone, Default)]
pub struct NotifyCounters {
    /// Notes that could not be sent after their tries.
    pub failed: Family<ServiceLabels, Counter>,
    /// Notes never sent because their channel's queue was full, or
    /// because their channel was removed while they waited.
    pub dropped: Family<ServiceLabels, Counter>,
}

impl NotifyCounters {
    fn count(family: &Family<ServiceLabels, Counter>, service: Service) {
        family
            .get_or_create(&ServiceLabels {
                service: service.as_str().to_string(),
            })
            .inc();
    }
}

/// One channel's lane: its queue, and where its notes go.
struct Lane {
    /// What the channel came from: the notify Secret's key, or the
    /// `--notify` flag's place.
    key: String,
    /// Where the lane's notes go, read at every try: a new URL for the
    /// same key reaches the notes already queued.
    channel: Arc<Mutex<Channel>>,
    queue: OrderedQueue<Note>,
    /// Set when the lane's key is gone: what it still holds is dropped.
    retired: tokio::sync::watch::Sender<bool>,
    /// A full queue was logged (once, until it takes a note again).
    warned_full: AtomicBool,
}

/// Sends notes to the channels in the background (see the module docs).
#[derive(Clone)]
pub struct Notifier {
    lanes: Arc<Mutex<Vec<Lane>>>,
    steps: Arc<AtomicBool>,
    counters: Option<NotifyCounters>,
    /// The client the channels are called with; [`Notifier::set_http`]
    /// replaces it (an app's access Secret changed).
    http: Arc<Mutex<HttpClient>>,
}

/// How many notes wait for one channel; one more is dropped.
const QUEUE: usize = 64;

impl Notifier {
    /// Nothing to notify.
    pub fn none() -> Self {
        Self::empty(false, None, HttpClient::plain())
    }

    fn empty(steps: bool, counters: Option<NotifyCounters>, http: HttpClient) -> Self {
        Self {
            lanes: Arc::default(),
            steps: Arc::new(AtomicBool::new(steps)),
            counters,
            http: Arc::new(Mutex::new(http)),
        }
    }

    /// Starts one sending task per channel (on the current runtime).
    /// `counters` counts the notes that failed or were dropped, by service.
    pub fn start(
        channels: Vec<Channel>,
        steps: bool,
        counters: Option<NotifyCounters>,
        http: HttpClient,
    ) -> Self {
        let notifier = Self::empty(steps, counters, http);
        let keyed = channels
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect();
        notifier.update(keyed, steps);
        notifier
    }

    /// A notifier for channels by key (a notify Secret's), started empty;
    /// [`Notifier::update`] gives it its channels.
    pub fn keyed(counters: Option<NotifyCounters>, http: HttpClient) -> Self {
        Self::empty(false, counters, http)
    }

    /// Makes `channels` (by key) the notifier's, as a changed notify
    /// Secret gives them. A key already here keeps its queue, and its
    /// notes, queued or being tried, go to the channel's new URL (and
    /// service) from their next try: a rotated URL, often rotated because
    /// the old one leaked, gets nothing more. A key no longer here is
    /// retired: what its queue still holds is dropped and counted as
    /// `dropped`, and a try under way is cut short. A new key gets a new
    /// queue and task.
    pub fn update(&self, channels: BTreeMap<String, Channel>, steps: bool) {
        self.steps.store(steps, Ordering::Relaxed);
        let mut lanes = self.lanes.lock().expect("the notifier's lanes");
        lanes.retain(|lane| match channels.get(&lane.key) {
            Some(channel) => {
                *lane.channel.lock().expect("a lane's channel") = channel.clone();
                true
            }
            None => {
                lane.retired.send_replace(true);
                false
            }
        });
        for (key, channel) in channels {
            if lanes.iter().any(|lane| lane.key == key) {
                continue;
            }
            let channel = Arc::new(Mutex::new(channel));
            let (retired, watching) = tokio::sync::watch::channel(false);
            let sender = Sender {
                channel: channel.clone(),
                http: self.http.clone(),
                counters: self.counters.clone(),
                retired: watching,
                last_sent: None,
                warned: false,
            };
            lanes.push(Lane {
                key,
                channel,
                queue: OrderedQueue::start(QUEUE, sender),
                retired,
                warned_full: AtomicBool::new(false),
            });
        }
    }

    /// Retires every channel (the app's notify Secret is no longer
    /// named): what their queues hold is dropped and counted, never sent.
    pub fn retire(&self) {
        self.update(BTreeMap::new(), self.steps.load(Ordering::Relaxed));
    }

    /// Calls the channels with `http` from the next note on.
    pub fn set_http(&self, http: HttpClient) {
        *self.http.lock().expect("the notifier's client") = http;
    }

    /// Waits up to `limit` for the notes queued so far to be sent (a
    /// process about to exit); no clone queues any more after it.
    pub async fn flush(self, limit: Duration) {
        let lanes = std::mem::take(&mut *self.lanes.lock().expect("the notifier's lanes"));
        let deadline = tokio::time::Instant::now() + limit;
        let all = futures::future::join_all(lanes.into_iter().map(|l| l.queue.finish(deadline)));
        if all.await.contains(&false) {
            tracing::warn!(?limit, "notifications still unsent at exit");
        }
    }

    /// Queues a note for the change from `before` to `after`, if it is one,
    /// on every channel.
    pub fn observe(
        &self,
        name: &str,
        namespace: Option<&str>,
        before: Option<&Status>,
        after: &Status,
    ) {
        let lanes = self.lanes.lock().expect("the notifier's lanes");
        if lanes.is_empty() {
            return;
        }
        let Some(kind) = classify(before, after, self.steps.load(Ordering::Relaxed)) else {
            return;
        };
        let note = Note {
            kind,
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            phase: after.phase.as_str(),
            canary_weight: f64::from(after.canary_weight_bp) / 100.0,
            revision: after.revision.clone(),
            message: after.message.clone(),
        };
        for lane in lanes.iter() {
            if lane.queue.push(note.clone()) {
                lane.warned_full.store(false, Ordering::Relaxed);
                continue;
            }
            let service = lane.channel.lock().expect("a lane's channel").service;
            if let Some(c) = &self.counters {
                NotifyCounters::count(&c.dropped, service);
            }
            if !lane.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    service = service.as_str(),
                    "a notification channel's queue is full ({QUEUE} notes): notes are dropped for it, and counted"
                );
            }
        }
    }
}

/// One channel's task: its notes in order, at most one a second, each to
/// where the channel points when it is tried.
struct Sender {
    channel: Arc<Mutex<Channel>>,
    http: Arc<Mutex<HttpClient>>,
    counters: Option<NotifyCounters>,
    retired: tokio::sync::watch::Receiver<bool>,
    last_sent: Option<tokio::time::Instant>,
    /// A failure was logged (once, until a note gets through).
    warned: bool,
}

impl Handler<Note> for Sender {
    async fn handle(&mut self, note: Note) {
        let mut retired = self.retired.clone();
        let sent = async {
            if let Some(at) = self.last_sent {
                tokio::time::sleep_until(at + Duration::from_secs(1)).await;
            }
            let client = self.http.lock().expect("the notifier's client").clone();
            send(&client, &self.channel, &note).await
        };
        let sent = tokio::select! {
            biased;
            _ = retired_for_good(&mut retired) => None,
            sent = sent => Some(sent),
        };
        let service = self.channel.lock().expect("a lane's channel").service;
        if sent.is_some() {
            self.last_sent = Some(tokio::time::Instant::now());
        }
        match sent {
            None => {
                if let Some(c) = &self.counters {
                    NotifyCounters::count(&c.dropped, service);
                }
            }
            Some(Ok(())) => self.warned = false,
            Some(Err(e)) => {
                if let Some(c) = &self.counters {
                    NotifyCounters::count(&c.failed, service);
                }
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(service = service.as_str(), error = %e, "a notification could not be sent (further failures on this channel are counted, not logged, until one succeeds)");
                }
            }
        }
    }
}

/// Resolves once the lane is retired; never if its notifier is merely
/// gone (dropped, or flushed at exit): then its notes are still sent.
async fn retired_for_good(retired: &mut tokio::sync::watch::Receiver<bool>) {
    if retired.wait_for(|r| *r).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What Slack's Web API says when it refuses a note: it answers 200 with
/// `{"ok": false, "error": "channel_not_found"}` (a bad token, a channel
/// the app is not in, ...); its incoming webhooks answer `ok` as text,
/// and a refusal with a 4xx. None: the note was taken. Slack's error is
/// one of its documented codes; anything else is not repeated.
fn slack_refusal(service: Service, body: &[u8]) -> Option<String> {
    if service != Service::Slack {
        return None;
    }
    let answer: Value = serde_json::from_slice(body).ok()?;
    if answer["ok"] != Value::Bool(false) {
        return None;
    }
    let code = answer["error"]
        .as_str()
        .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or("no error code");
    Some(format!("Slack answered ok: false ({code})"))
}

/// One note to one channel, tried up to three times (see the module docs
/// for which failures are tried again).
/// Each try reads the channel anew (its URL may have been rotated).
async fn send(http: &HttpClient, channel: &Mutex<Channel>, note: &Note) -> Result<(), String> {
    let mut pause = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let channel = channel.lock().expect("a lane's channel").clone();
        let body = channel.payload(note);
        let answered = match http
            .send_json(
                Method::POST,
                channel.url.expose_for_request(),
                &body,
                channel.token(),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(answer) => Ok((answer.status, Some(answer.body))),
            // Too long to read: no Slack Web API answer is; the status is
            // the answer.
            Err(crate::http::HttpError::TooLarge { status, .. }) => Ok((status, None)),
            Err(e) => Err(e),
        };
        match answered {
            Ok((status, body)) if status.is_success() => {
                return match body.and_then(|b| slack_refusal(channel.service, &b)) {
                    // Asked again it says the same (a bad token, an
                    // unknown channel), as a 4xx does.
                    Some(why) => Err(why),
                    None => Ok(()),
                };
            }
            Ok((status, _))
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(format!("answered {status}"));
            }
            Ok((status, _)) => last = format!("answered {status}"),
            // The error names the URL, which is the secret: say only why.
            Err(crate::http::HttpError::Timeout { timeout, .. }) => {
                last = format!("no answer within {timeout:?}")
            }
            Err(crate::http::HttpError::Unreachable { reason, .. }) => last = reason,
            Err(crate::http::HttpError::BadUrl { .. }) => last = "not a valid URL".into(),
            Err(
                crate::http::HttpError::BadHeader { .. } | crate::http::HttpError::TooLarge { .. },
            ) => last = "could not be sent".into(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: Phase, weight: u32) -> Status {
        Status {
            phase,
            revision: "r1".into(),
            step: 0,
            canary_weight_bp: weight,
            passed_steps: 0,
            failed_checks: 0,
            approved: false,
            started_at: 0.0,
            last_progress_at: 0.0,
            last_transition_at: 0.0,
            message: "why".into(),
            unconfirmed: None,
            queued_revision: None,
            step_started_at: 0.0,
            gate: None,
            undecided: false,
            failure_counted_at: None,
        }
    }

    /// Three notes, each a different change of a release.
    fn three_notes(notifier: &Notifier) {
        let progressing = status(Phase::Progressing, 1000);
        notifier.observe("web", None, None, &status(Phase::Initializing, 0));
        notifier.observe("web", None, Some(&progressing), &status(Phase::Failed, 0));
        notifier.observe(
            "web",
            None,
            Some(&status(Phase::Finalising, 0)),
            &status(Phase::Succeeded, 0),
        );
    }

    /// A channel on 127.0.0.1 that accepts connections and never answers;
    /// how many it has accepted.
    async fn dead_channel() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/dead", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        (url, accepted)
    }

    /// Polls `done` every 20 ms, for at most 30 s; whether it came true.
    async fn within_30s(done: impl Fn() -> bool) -> bool {
        for _ in 0..1500 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    fn requests_to(seen: &std::sync::Mutex<Vec<Vec<u8>>>) -> usize {
        seen.lock().unwrap().len()
    }

    /// A notifier of `channel` alone, counting into the counters it
    /// returns.
    fn counted(channel: Channel) -> (Notifier, NotifyCounters) {
        let counters = NotifyCounters::default();
        let notifier = Notifier::start(
            vec![channel],
            false,
            Some(counters.clone()),
            HttpClient::plain(),
        );
        (notifier, counters)
    }

    /// A counter's value for Slack.
    fn slack_count(family: &Family<ServiceLabels, Counter>) -> u64 {
        family
            .get_or_create(&ServiceLabels {
                service: "slack".into(),
            })
            .get()
    }

    /// A stand-in for Slack's Web API that answers each of its first
    /// `connections` posts 200 with the JSON `answer`, and a Slack channel
    /// with `token` posting to `slack_channel` there, sent [`three_notes`].
    struct SlackApi {
        url: String,
        seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        counters: NotifyCounters,
        /// Held as long as the test holds this, as a release holds its own.
        _notifier: Notifier,
    }

    impl SlackApi {
        async fn sent_three_notes(
            connections: usize,
            answer: &'static str,
            token: Secret,
            slack_channel: &str,
        ) -> Self {
            let (url, seen) = crate::http::test_server(connections, move |_| {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .into_bytes()
            })
            .await;
            let channel = Channel::from_url(Service::Slack, &url, "test")
                .unwrap()
                .with_slack_token(token, slack_channel, USERNAME)
                .unwrap();
            let (notifier, counters) = counted(channel);
            three_notes(&notifier);
            Self {
                url,
                seen,
                counters,
                _notifier: notifier,
            }
        }
    }

    /// A channel that never answers holds up no other: all three notes
    /// reach the live channel before the dead one's first try has even
    /// timed out (it would be tried again then: a second connection).
    #[tokio::test]
    async fn a_dead_channel_does_not_hold_up_the_others() {
        let (dead, accepted) = dead_channel().await;
        let (live, seen) = crate::http::test_server(10, |_| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        })
        .await;
        let channels = vec![
            Channel::from_url(Service::Webhook, &dead, "dead").unwrap(),
            Channel::from_url(Service::Webhook, &format!("{live}/live"), "live").unwrap(),
        ];
        let notifier = Notifier::start(channels, false, None, HttpClient::plain());
        three_notes(&notifier);
        use std::sync::atomic::Ordering;
        within_30s(|| requests_to(&seen) == 3 || accepted.load(Ordering::SeqCst) >= 2).await;
        assert_eq!(
            requests_to(&seen),
            3,
            "the live channel waited for the dead one"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A notify Secret's URL rotated (its old one leaked): the notes
    /// already queued for that key go to the new URL, in order, and the
    /// old one gets nothing more.
    #[tokio::test]
    async fn a_rotated_url_gets_nothing_more_and_the_queued_notes_go_to_the_new_one() {
        let answer = |_: &[u8]| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        };
        let (old, seen_old) = crate::http::test_server(10, answer).await;
        let (new, seen_new) = crate::http::test_server(10, answer).await;
        let channel = |url: &str| Channel::from_url(Service::Webhook, url, "test").unwrap();
        let notifier = Notifier::keyed(None, HttpClient::plain());
        notifier.update(BTreeMap::from([("webhook".into(), channel(&old))]), false);
        three_notes(&notifier);
        // Before the channel's task has tried any (this runtime has one
        // thread, and nothing here has yielded to it yet).
        notifier.update(BTreeMap::from([("webhook".into(), channel(&new))]), false);
        assert!(within_30s(|| requests_to(&seen_new) == 3).await);
        let events: Vec<String> = seen_new
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let text = String::from_utf8_lossy(r).to_string();
                let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
                serde_json::from_str::<Value>(&body).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(events, ["release started", "rolled back", "promoted"]);
        assert_eq!(requests_to(&seen_old), 0, "the old URL got a note");
    }

    /// A channel whose key is gone from the notify Secret (or a Secret no
    /// longer named) is sent nothing more: its queued notes are dropped
    /// and counted.
    #[tokio::test]
    async fn a_removed_channels_queued_notes_are_dropped_and_counted() {
        let (url, seen) = crate::http::test_server(10, |_| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        })
        .await;
        let counters = NotifyCounters::default();
        for retire in [false, true] {
            let notifier = Notifier::keyed(Some(counters.clone()), HttpClient::plain());
            let channel = Channel::from_url(Service::Slack, &url, "test").unwrap();
            notifier.update(BTreeMap::from([("slack".into(), channel)]), false);
            three_notes(&notifier);
            if retire {
                notifier.retire();
            } else {
                notifier.update(BTreeMap::new(), false);
            }
        }
        let dropped = || slack_count(&counters.dropped);
        assert!(within_30s(|| dropped() == 6).await, "{}", dropped());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(requests_to(&seen), 0, "a removed channel got a note");
        // A notifier merely let go of (its app forgotten) still sends what
        // it holds.
        let notifier = Notifier::keyed(Some(counters.clone()), HttpClient::plain());
        let channel = Channel::from_url(Service::Slack, &url, "test").unwrap();
        notifier.update(BTreeMap::from([("slack".into(), channel)]), false);
        three_notes(&notifier);
        drop(notifier);
        assert!(within_30s(|| requests_to(&seen) == 3).await);
        assert_eq!(dropped(), 6);
    }

    /// A 4xx other than 429 is the service's answer and is not asked
    /// again; a 429 or a 5xx is tried three times.
    #[tokio::test]
    async fn a_refusal_is_not_tried_again_and_a_429_is() {
        for (status, tries) in [(404, 1), (410, 1), (429, 3), (503, 3)] {
            let (url, seen) = crate::http::test_server(10, move |_| {
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .into_bytes()
            })
            .await;
            let channel = Channel::from_url(Service::Webhook, &url, "test").unwrap();
            let notifier = Notifier::start(vec![channel], false, None, HttpClient::plain());
            three_notes(&notifier);
            // The second note's first try comes once the first's are over.
            let second = |seen: &std::sync::Mutex<Vec<Vec<u8>>>| {
                seen.lock()
                    .unwrap()
                    .iter()
                    .position(|r| String::from_utf8_lossy(r).contains("rolled back"))
            };
            assert!(within_30s(|| second(&seen).is_some()).await, "{status}");
            assert_eq!(second(&seen), Some(tries), "{status}");
        }
    }

    /// A note that finds its channel's queue full is dropped for that
    /// channel and counted by service.
    #[tokio::test]
    async fn a_full_queue_drops_notes_and_counts_them() {
        let (dead, _) = dead_channel().await;
        let channel = Channel::from_url(Service::Slack, &dead, "dead").unwrap();
        let (notifier, counters) = counted(channel);
        for _ in 0..24 {
            three_notes(&notifier);
        }
        let dropped = slack_count(&counters.dropped);
        // 72 notes: 64 wait, one may be in flight already.
        assert!((7..=8).contains(&dropped), "{dropped}");
    }

    /// A Slack channel with a token (a Flagger Secret's `token`) posts
    /// through Slack's Web API: the token as `Authorization: Bearer`, the
    /// channel and the name to post as in the payload. No other service
    /// takes a token.
    #[tokio::test]
    async fn a_slack_token_goes_out_as_a_bearer_token_with_the_channel() {
        let token = || Secret::from_value("xoxb-t0ken");
        let slack = SlackApi::sent_three_notes(
            1,
            r#"{"ok":true,"channel":"C1","ts":"1.2"}"#,
            token(),
            "deploys",
        )
        .await;
        let (url, seen, counters) = (&slack.url, &slack.seen, &slack.counters);
        assert!(within_30s(|| requests_to(seen) == 1).await);
        let request = String::from_utf8_lossy(&seen.lock().unwrap()[0]).to_string();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(
            format!("{head}\r\n")
                .to_ascii_lowercase()
                .contains("\r\nauthorization: bearer xoxb-t0ken\r\n"),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["channel"], "deploys");
        assert_eq!(body["username"], "Sluice");
        assert!(body["text"].as_str().unwrap().contains("release started"));
        assert_eq!(slack_count(&counters.failed), 0);
        for service in [Service::Teams, Service::Discord, Service::Rocket] {
            let channel = Channel::from_url(service, url, "test").unwrap();
            assert!(
                channel
                    .with_slack_token(token(), "general", USERNAME)
                    .is_err()
            );
        }
    }

    /// Slack's Web API refuses with `200 {"ok": false}`: the note failed,
    /// is counted and logged as failed, and is not asked again (it would
    /// say the same).
    #[tokio::test]
    async fn a_slack_ok_false_answer_is_a_failed_note() {
        let slack = SlackApi::sent_three_notes(
            10,
            r#"{"ok":false,"error":"invalid_auth"}"#,
            Secret::from_value("xoxb-revoked"),
            "general",
        )
        .await;
        let failed = || slack_count(&slack.counters.failed);
        assert!(within_30s(|| failed() == 3).await, "{}", failed());
        assert_eq!(requests_to(&slack.seen), 3, "a refusal was asked again");
        assert_eq!(
            slack_refusal(
                Service::Slack,
                br#"{"ok":false,"error":"channel_not_found"}"#
            ),
            Some("Slack answered ok: false (channel_not_found)".into())
        );
        // Only Slack's answers are read so; an incoming webhook's `ok` is
        // a success.
        assert_eq!(slack_refusal(Service::Slack, b"ok"), None);
        assert_eq!(slack_refusal(Service::Webhook, br#"{"ok":false}"#), None);
    }

    /// Slack reads `<`, `>` and `&` as markup; the other services get the
    /// text as it is.
    #[test]
    fn slack_text_is_escaped_and_the_others_are_not() {
        let note = Note {
            kind: NoteKind::RolledBack,
            name: "web".into(),
            namespace: None,
            phase: "Failed",
            canary_weight: 0.0,
            revision: "r2".into(),
            message: "p99: 900ms is above the limit <= 500ms & rising".into(),
        };
        let slack = note.payload(Service::Slack)["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            slack.ends_with("p99: 900ms is above the limit &lt;= 500ms &amp; rising"),
            "{slack}"
        );
        let teams = note.payload(Service::Teams);
        assert_eq!(
            teams["text"],
            "p99: 900ms is above the limit <= 500ms & rising"
        );
    }

    /// Flagger's `AlertProvider` types name the same services, with the
    /// payloads their incoming webhooks document.
    #[test]
    fn flaggers_service_names_are_accepted() {
        assert_eq!(Service::parse("msteams"), Ok(Service::Teams));
        assert_eq!(Service::parse("rocket"), Ok(Service::Rocket));
        assert_eq!(Service::parse("gchat"), Ok(Service::GoogleChat));
        assert!(Service::parse("hipchat").unwrap_err().contains("gchat"));
        // Never echoed: it may be a URL pasted in the wrong place.
        let pasted = Service::parse("https://hooks.slack.com/services/T1/B1/s3cret").unwrap_err();
        assert!(!pasted.contains("s3cret"), "{pasted}");
        assert_eq!(
            Service::of_address("https://slack.com/api/chat.postMessage"),
            Some(Service::Slack)
        );
        assert_eq!(
            Service::of_address("https://slack.com.evil.example/x"),
            None
        );
        let note = Note {
            kind: NoteKind::Promoted,
            name: "web".into(),
            namespace: Some("shop".into()),
            phase: "Succeeded",
            canary_weight: 0.0,
            revision: "r2".into(),
            message: "x".repeat(5000),
        };
        let text = note.payload(Service::GoogleChat)["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.starts_with("Sluice: shop/web promoted"), "{text}");
        assert_eq!(text.chars().count(), 4096);
        let rocket = note.payload(Service::Rocket);
        assert!(
            rocket["text"]
                .as_str()
                .unwrap()
                .starts_with("Sluice: shop/web promoted")
        );
    }

    #[test]
    fn changes_worth_a_note() {
        let progressing = status(Phase::Progressing, 1000);
        assert_eq!(
            classify(None, &status(Phase::Initializing, 0), false),
            Some(NoteKind::Started)
        );
        assert_eq!(
            classify(Some(&progressing), &status(Phase::Progressing, 2000), false),
            None
        );
        assert_eq!(
            classify(Some(&progressing), &status(Phase::Progressing, 2000), true),
            Some(NoteKind::Step)
        );
        assert_eq!(
            classify(Some(&progressing), &status(Phase::Failed, 0), false),
            Some(NoteKind::RolledBack)
        );
        assert_eq!(
            classify(
                Some(&status(Phase::Failed, 0)),
                &status(Phase::Failed, 0),
                false
            ),
            None
        );
        assert_eq!(
            classify(
                Some(&progressing),
                &status(Phase::WaitingPromotion, 5000),
                false
            ),
            Some(NoteKind::WaitingApproval)
        );
        let mut undecided = status(Phase::WaitingPromotion, 5000);
        undecided.undecided = true;
        assert_eq!(
            classify(Some(&progressing), &undecided, false),
            Some(NoteKind::Undecided)
        );
        assert_eq!(
            classify(
                Some(&status(Phase::Finalising, 0)),
                &status(Phase::Succeeded, 0),
                false
            ),
            Some(NoteKind::Promoted)
        );
    }
}
