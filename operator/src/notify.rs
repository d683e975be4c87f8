//! Chat notifications: Slack, Microsoft Teams, Discord and a generic JSON
//! webhook, each a URL read from a file (it is a credential: it prints as
//! `<redacted>`).
//!
//! What is sent, from the change between a release's status before and
//! after a tick ([`classify`]): the release started, each weight step (only
//! when asked: `--notify-steps`), waiting for approval (with the evidence),
//! promoted, rolled back (with the reason and the evidence), held for lack
//! of evidence (undecided).
//!
//! A decision never waits for a notification: notes go on a bounded queue
//! (64; more are dropped and counted) to one task per process that sends
//! them in order, at most one a second per channel (chat services limit
//! incoming webhooks), each tried three times with pauses of 0.5 s and
//! 1 s. A note that still fails is counted (`failed`, by service: the
//! operator exports it as `sluice_notifications_failed_total`) and logged,
//! once per channel until one succeeds again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};

use crate::http::{HttpClient, Secret};
use crate::machine::{Phase, Status};

/// The chat service a channel posts to, which decides the payload's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Slack incoming webhook: `{"text": …}`.
    Slack,
    /// Microsoft Teams incoming webhook: a `MessageCard`.
    Teams,
    /// Discord webhook: `{"content": …}`.
    Discord,
    /// Any JSON endpoint: Sluice's own fields.
    Webhook,
}

impl Service {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "slack" => Ok(Self::Slack),
            "teams" => Ok(Self::Teams),
            "discord" => Ok(Self::Discord),
            "webhook" => Ok(Self::Webhook),
            other => Err(format!(
                "`{other}` is not a notification service; use slack, teams, discord or webhook"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
            Self::Discord => "discord",
            Self::Webhook => "webhook",
        }
    }
}

/// Where notes go.
#[derive(Clone, Debug)]
pub struct Channel {
    pub service: Service,
    url: Secret,
}

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
        })
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
                json!({ "username": "Sluice", "content": truncate(&self.text(), 2000) })
            }
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

/// Sends notes to the channels in the background (see the module docs).
#[derive(Clone)]
pub struct Notifier {
    tx: Option<tokio::sync::mpsc::Sender<Note>>,
    pub steps: bool,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    worker: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Notifier {
    /// Nothing to notify.
    pub fn none() -> Self {
        Self {
            tx: None,
            steps: false,
            dropped: Arc::default(),
            worker: Arc::default(),
        }
    }

    /// Starts the sending task (on the current runtime). `failed` counts
    /// notes that could not be sent, by service.
    pub fn start(
        channels: Vec<Channel>,
        steps: bool,
        failed: Option<Family<Vec<(String, String)>, Counter>>,
        http: HttpClient,
    ) -> Self {
        if channels.is_empty() {
            return Self::none();
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Note>(64);
        let worker = tokio::spawn(async move {
            let mut last_sent: Vec<Option<tokio::time::Instant>> = vec![None; channels.len()];
            let mut warned = vec![false; channels.len()];
            while let Some(note) = rx.recv().await {
                for (i, channel) in channels.iter().enumerate() {
                    if let Some(at) = last_sent[i] {
                        tokio::time::sleep_until(at + Duration::from_secs(1)).await;
                    }
                    let sent = send(&http, channel, &note).await;
                    last_sent[i] = Some(tokio::time::Instant::now());
                    match sent {
                        Ok(()) => warned[i] = false,
                        Err(e) => {
                            if let Some(f) = &failed {
                                f.get_or_create(&vec![(
                                    "service".to_string(),
                                    channel.service.as_str().to_string(),
                                )])
                                .inc();
                            }
                            if !warned[i] {
                                warned[i] = true;
                                tracing::warn!(service = channel.service.as_str(), error = %e, "a notification could not be sent (further failures on this channel are counted, not logged, until one succeeds)");
                            }
                        }
                    }
                }
            }
        });
        Self {
            tx: Some(tx),
            steps,
            dropped: Arc::default(),
            worker: Arc::new(std::sync::Mutex::new(Some(worker))),
        }
    }

    /// Waits up to `limit` for the notes queued so far to be sent, once
    /// every other clone is gone (a process about to exit).
    pub async fn flush(mut self, limit: Duration) {
        self.tx = None;
        let worker = self.worker.lock().expect("the worker's lock").take();
        if let Some(worker) = worker
            && tokio::time::timeout(limit, worker).await.is_err()
        {
            tracing::warn!(?limit, "notifications still unsent at exit");
        }
    }

    /// Queues a note for the change from `before` to `after`, if it is one.
    pub fn observe(
        &self,
        name: &str,
        namespace: Option<&str>,
        before: Option<&Status>,
        after: &Status,
    ) {
        let Some(tx) = &self.tx else { return };
        let Some(kind) = classify(before, after, self.steps) else {
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
        if tx.try_send(note).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n == 0 {
                tracing::warn!("the notification queue is full; notes are dropped");
            }
        }
    }
}

/// One note to one channel, tried three times.
async fn send(http: &HttpClient, channel: &Channel, note: &Note) -> Result<(), String> {
    let body = note.payload(channel.service);
    let mut pause = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        match http
            .send_json(
                Method::POST,
                channel.url.expose_for_request(),
                &body,
                None,
                Duration::from_secs(5),
            )
            .await
        {
            Ok(answer) if answer.status.is_success() => return Ok(()),
            Ok(answer) => last = format!("answered {}", answer.status),
            // The error names the URL, which is the secret: say only why.
            Err(crate::http::HttpError::Timeout { timeout, .. }) => {
                last = format!("no answer within {timeout:?}")
            }
            Err(crate::http::HttpError::Unreachable { reason, .. }) => last = reason,
            Err(crate::http::HttpError::BadUrl { .. }) => last = "not a valid URL".into(),
            Err(crate::http::HttpError::TooLarge { .. }) => {
                last = format!(
                    "answered with a body over {} MiB",
                    crate::http::MAX_ANSWER_BYTES / (1024 * 1024)
                )
            }
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
