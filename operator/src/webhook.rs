//! Webhooks, compatible with Flagger's: each is POSTed JSON with Flagger's
//! fields (`name`, `namespace`, `phase`, `checksum` (the revision),
//! `metadata`: the hook's own map, passed as written) and Sluice's
//! (`kind`, `canary_weight`, `revision`), and the hook's `headers`. A 2xx
//! answer passes; any other status, an unreachable URL or a timeout
//! fails, after `retries` more calls with pauses of 0.5 s, 1 s, 2 s, …
//! (capped at 5 s). What passing and failing do depends on the kind
//! (`crate::plan::WebhookKind`). An `event` webhook gets every event of the
//! release with `metadata.eventMessage`, `metadata.eventType` (`Normal` or
//! `Warning`) and `metadata.timestamp` (ms since the epoch) added, as
//! Flagger sends them; it never gates.

use http::Method;
use serde::Serialize;

use crate::http::HttpClient;
use crate::plan::{Plan, WebhookKind};

/// The JSON body every webhook receives.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookPayload {
    /// The release's name (route or Deployment).
    pub name: String,
    pub namespace: Option<String>,
    pub kind: &'static str,
    pub phase: &'static str,
    pub canary_weight: f64,
    pub revision: String,
}

/// Result of one webhook call.
#[derive(Clone, Debug, PartialEq)]
pub struct HookResult {
    /// The hook's name, or its URL (shown without secrets) when it has none.
    pub hook: String,
    pub url: String,
    pub passed: bool,
    pub detail: String,
}

impl HookResult {
    /// Which hook, and what it did: `load-test: answered 500 Internal
    /// Server Error`.
    pub fn why(&self) -> String {
        let detail = self.detail.strip_prefix(&format!("{}: ", self.url));
        format!("{}: {}", self.hook, detail.unwrap_or(&self.detail))
    }
}

/// Runs every webhook of `kind`; None when none is configured.
pub async fn run_gate(
    client: &HttpClient,
    plan: &Plan,
    kind: WebhookKind,
    payload: &WebhookPayload,
) -> Option<(bool, Vec<HookResult>)> {
    let hooks: Vec<_> = plan.webhooks_of(kind).collect();
    if hooks.is_empty() {
        return None;
    }
    let mut results = Vec::new();
    for hook in hooks {
        results.push(call(client, hook, kind, payload, &[]).await);
    }
    Some((results.iter().all(|r| r.passed), results))
}

/// One event of a release, for the `event` webhooks.
pub struct Event<'a> {
    pub warning: bool,
    pub message: &'a str,
    /// When it happened (its `metadata.timestamp`).
    pub at: std::time::SystemTime,
}

/// Sends an event to every `event` webhook (see the module docs); failures
/// are logged, never returned.
pub async fn send_event(
    client: &HttpClient,
    plan: &Plan,
    payload: &WebhookPayload,
    event: &Event<'_>,
) {
    let timestamp = event
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    let extra = [
        ("eventMessage", event.message),
        (
            "eventType",
            if event.warning { "Warning" } else { "Normal" },
        ),
        ("timestamp", timestamp.as_str()),
    ];
    for hook in plan.webhooks_of(WebhookKind::Event) {
        let result = call(client, hook, WebhookKind::Event, payload, &extra).await;
        if !result.passed {
            tracing::warn!(release = %payload.name, url = %result.url, detail = %result.detail, "event webhook failed");
        }
    }
}

/// One webhook, with its retries.
async fn call(
    client: &HttpClient,
    hook: &crate::plan::Webhook,
    kind: WebhookKind,
    payload: &WebhookPayload,
    extra_metadata: &[(&str, &str)],
) -> HookResult {
    let mut body = serde_json::to_value(WebhookPayload {
        kind: kind.as_str(),
        ..payload.clone()
    })
    .expect("payload serializes");
    let mut metadata: serde_json::Map<String, serde_json::Value> = hook
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    for (k, v) in extra_metadata {
        metadata.insert((*k).to_string(), (*v).into());
    }
    body["checksum"] = payload.revision.clone().into();
    body["metadata"] = metadata.into();
    let headers: Vec<(&str, &str)> = hook
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut pause = std::time::Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        let result = client
            .post_json_with(Method::POST, &hook.url, &body, None, &headers, hook.timeout)
            .await;
        // A 4xx other than 429 is the hook's answer (a confirm hook's
        // "not yet", a rollback hook's "no"): asked again it says the same,
        // so only unreachable hooks, timeouts, 5xx and 429 are retried, as
        // Flagger does.
        // A hook's body is never used: one too long to read changes
        // nothing, the status is the answer.
        let result = match result {
            Ok(answer) => Ok(answer.status),
            Err(crate::http::HttpError::TooLarge { status, .. }) => Ok(status),
            Err(e) => Err(e),
        };
        let (passed, final_answer, detail) = match result {
            Ok(status) if status.is_success() => (true, true, status.to_string()),
            Ok(status) => (
                false,
                status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS,
                format!("answered {status}"),
            ),
            Err(e) => (false, false, e.to_string()),
        };
        if passed || final_answer || attempt >= hook.retries {
            let url = crate::http::shown_url(&hook.url);
            return HookResult {
                hook: if hook.name.is_empty() {
                    url.clone()
                } else {
                    hook.name.clone()
                },
                url,
                passed,
                detail,
            };
        }
        attempt += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A hook on 127.0.0.1 answering `status` to every call, counting them.
    pub(crate) async fn hook_answering(status: u16) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let (url, _) = crate::http::test_server(20, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        })
        .await;
        (format!("{url}/hook"), calls)
    }

    /// A hook that answers 2xx with a body too long to read passes: its
    /// body is never used. One that answers 500 so is still a failure.
    #[tokio::test]
    async fn a_long_body_does_not_change_a_hooks_answer() {
        let too_big = crate::http::MAX_ANSWER_BYTES + 1;
        for (status, passes) in [(200, true), (500, false)] {
            let (url, _) = crate::http::test_server(1, move |_| {
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {too_big}\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                answer.resize(answer.len() + too_big, b'x');
                answer
            })
            .await;
            let yaml = format!("- {{name: gate, type: confirm-rollout, url: '{url}/hook'}}\n");
            let plan = Plan {
                webhooks: crate::plan::parse_webhooks(&yaml, "test").unwrap(),
                ..Plan::default()
            };
            let payload = WebhookPayload {
                name: "web".into(),
                namespace: None,
                kind: "",
                phase: "Initialized",
                canary_weight: 0.0,
                revision: "r1".into(),
            };
            let (passed, results) = run_gate(
                &HttpClient::plain(),
                &plan,
                WebhookKind::ConfirmRollout,
                &payload,
            )
            .await
            .unwrap();
            assert_eq!(passed, passes, "{status}: {}", results[0].why());
        }
    }

    /// A 4xx (but 429) is the hook's answer and is not asked again; an
    /// unreachable hook, a 5xx or a 429 is retried `retries` times.
    #[tokio::test]
    async fn only_failures_that_may_pass_on_a_second_call_are_retried() {
        for (status, calls_made) in [(403, 1), (404, 1), (429, 3), (500, 3), (503, 3)] {
            let (url, calls) = hook_answering(status).await;
            let yaml =
                format!("- {{name: gate, type: confirm-rollout, url: '{url}', retries: 2}}\n");
            let plan = Plan {
                webhooks: crate::plan::parse_webhooks(&yaml, "test").unwrap(),
                ..Plan::default()
            };
            let payload = WebhookPayload {
                name: "web".into(),
                namespace: None,
                kind: "",
                phase: "Initialized",
                canary_weight: 0.0,
                revision: "r1".into(),
            };
            let client = HttpClient::plain();
            let (passed, results) = run_gate(&client, &plan, WebhookKind::ConfirmRollout, &payload)
                .await
                .unwrap();
            assert!(!passed);
            assert_eq!(calls.load(Ordering::SeqCst), calls_made, "{status}");
            let why = results[0].why();
            assert!(
                why.starts_with(&format!("gate: answered {status}")),
                "{why}"
            );
        }
    }
}
