//! Webhooks: POST JSON naming the release, phase and weight. A 2xx answer
//! passes; any other status, an unreachable URL or a timeout fails.

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
    pub url: String,
    pub passed: bool,
    pub detail: String,
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
    let body = serde_json::to_value(WebhookPayload {
        kind: kind.as_str(),
        ..payload.clone()
    })
    .expect("payload serializes");
    let mut results = Vec::new();
    for hook in hooks {
        let result = client
            .send_json(Method::POST, &hook.url, &body, None, hook.timeout)
            .await;
        let (passed, detail) = match result {
            Ok(answer) if answer.status.is_success() => (true, answer.status.to_string()),
            Ok(answer) => (false, format!("answered {}", answer.status)),
            Err(e) => (false, e.to_string()),
        };
        results.push(HookResult {
            url: hook.url.clone(),
            passed,
            detail,
        });
    }
    Some((results.iter().all(|r| r.passed), results))
}

/// For `rollback` webhooks: a 2xx from any of them asks for a rollback.
pub async fn rollback_requested(
    client: &HttpClient,
    plan: &Plan,
    payload: &WebhookPayload,
) -> bool {
    match run_gate(client, plan, WebhookKind::Rollback, payload).await {
        None => false,
        Some((_, results)) => results.iter().any(|r| r.passed),
    }
}
