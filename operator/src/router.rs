//! Routers move traffic. [`ProxyAdminRouter`] drives a running
//! `sluice-proxy` through its admin API (plain hosts, the demo); the
//! Kubernetes driver has its own that rewrites the proxy's ConfigMap.
//!
//! # The baseline arm (`sluice rollout --baseline-arm URL`)
//!
//! A baseline arm is a fresh copy of the stable's version that the user
//! starts with the canary; the proxy gives it the canary's exact share
//! (route field `baseline`), and the gate judges the canary against it.
//! The router owns its place on the route for the length of a release:
//!
//! - `initialize` sets `baseline` with the canary (weight 0). A route
//!   left with a baseline by an earlier run loses it when this release
//!   has none, so no traffic goes to an arm nobody judges.
//! - every weight applies to both: the proxy splits `canary_weight` to
//!   each, so nothing more is written per step.
//! - `promote` removes it in the same write that makes the canary the
//!   stable (the old version must not keep the canary's share once the
//!   new one is stable), and `finalise` and `rollback` (an abort too)
//!   remove it with the canary's weight.
//! - `ready` waits for the baseline to accept connections too.

use std::future::Future;
use std::time::Duration;

use http::Method;
use serde_json::json;
use sluice_proxy::config::{UpstreamUrl, bp_to_percent};

use crate::http::{HttpClient, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the proxy refused {what}: {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

impl RouterError {
    /// A refusal that asking again will not change: a 4xx answer, but for
    /// 408 (timeout), 425 (too early) and 429 (too many requests).
    pub fn is_refusal(&self) -> bool {
        matches!(self, RouterError::Refused { status, .. }
            if (400..500).contains(status) && ![408, 425, 429].contains(status))
    }
}

/// What a driver needs from the thing that routes traffic.
pub trait Router {
    /// Point the canary at the new revision, weight 0.
    fn initialize(&self) -> impl Future<Output = Result<(), RouterError>> + Send;
    fn set_weight(
        &self,
        canary_weight_bp: u32,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;
    /// Make the canary's revision the stable one.
    fn promote(&self) -> impl Future<Output = Result<(), RouterError>> + Send;
    /// All traffic on stable, canary removed.
    fn finalise(&self) -> impl Future<Output = Result<(), RouterError>> + Send;
    /// Weight 0, stable untouched.
    fn rollback(&self) -> impl Future<Output = Result<(), RouterError>> + Send;
    /// Whether the canary (or the promotion) is ready, and if not, what
    /// else it waits for.
    fn ready(&self) -> impl Future<Output = Readiness> + Send;
    /// Checks the route still carries this release's canary at
    /// `canary_weight_bp`, and puts the canary back when it does not (see
    /// [`RouteCheck`]).
    fn restore(
        &self,
        canary_weight_bp: u32,
    ) -> impl Future<Output = Result<RouteCheck, RouterError>> + Send {
        let _ = canary_weight_bp;
        async { Ok(RouteCheck::AsLeft) }
    }
}

/// What [`Router::restore`] found on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteCheck {
    /// The release's canary (and baseline arm) at the release's weight.
    AsLeft,
    /// Another canary or none, or no baseline arm: what a proxy that
    /// restarted from its file has. Set back to the release's (canary,
    /// weight, baseline arm, affinity, mirror); what was found.
    SetBack(String),
    /// The release's canary at another weight: a person's change (an
    /// emergency weight 0 through the admin API), which is never undone
    /// here; what was found.
    Changed(String),
}

/// Whether a release's target can take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not yet. `besides_canary`: what the release waits for once the
    /// canary is there (a baseline arm), for people.
    Waiting {
        besides_canary: Option<String>,
    },
}

/// Whether the upstream at `url` accepts a TCP connection within 2 s.
async fn accepts(url: &str) -> bool {
    let Ok(url) = UpstreamUrl::parse(url) else {
        return false;
    };
    let connect = tokio::net::TcpStream::connect((url.host.as_str(), url.port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

fn has_rules(route: &serde_json::Value) -> bool {
    route["canary_match"]
        .as_array()
        .is_some_and(|rules| !rules.is_empty())
}

/// Drives one route of a `sluice-proxy` through `PUT /routes/{name}`.
#[derive(Clone)]
pub struct ProxyAdminRouter {
    client: HttpClient,
    admin: String,
    route: String,
    canary_url: String,
    token: Option<String>,
    /// Affinity and mirroring the release sets on the route.
    traffic: crate::plan::Traffic,
    /// The baseline arm's upstream, for the length of the release.
    baseline_arm: Option<String>,
}

impl ProxyAdminRouter {
    pub fn new(admin: &str, route: &str, canary_url: &str, token: Option<String>) -> Self {
        Self {
            client: HttpClient::default(),
            admin: admin.trim_end_matches('/').to_string(),
            route: route.to_string(),
            canary_url: canary_url.to_string(),
            token,
            traffic: crate::plan::Traffic::default(),
            baseline_arm: None,
        }
    }

    /// Gives the release a baseline arm at `url` (see the module doc).
    pub fn with_baseline_arm(mut self, url: &str) -> Self {
        self.baseline_arm = Some(url.to_string());
        self
    }

    /// The baseline arm's upstream, if the release has one.
    pub fn baseline_arm(&self) -> Option<&str> {
        self.baseline_arm.as_deref()
    }

    /// `patch` plus `baseline: null` when this release has a baseline arm
    /// (a proxy without the field is never sent it otherwise).
    fn without_baseline(&self, mut patch: serde_json::Value) -> serde_json::Value {
        if self.baseline_arm.is_some() {
            patch["baseline"] = serde_json::Value::Null;
        }
        patch
    }

    /// Sets `traffic` on the route when the release starts. Mirroring
    /// ends with the release (rollback, promotion, the end of an
    /// experiment); affinity stays on the route, where it does nothing
    /// until the next release gives the canary weight.
    pub fn with_traffic(mut self, traffic: crate::plan::Traffic) -> Self {
        self.traffic = traffic;
        self
    }

    /// `patch` plus `mirror: null` when this release mirrors.
    fn ending(&self, mut patch: serde_json::Value) -> serde_json::Value {
        if self.traffic.mirror.is_some() {
            patch["mirror"] = serde_json::Value::Null;
        }
        patch
    }

    /// What this release puts on the route: its canary at
    /// `canary_weight_bp`, with its affinity, mirror and baseline arm.
    fn release_patch(&self, canary_weight_bp: u32) -> serde_json::Value {
        let mut patch = json!({
            "canary": self.canary_url,
            "canary_weight": bp_to_percent(canary_weight_bp),
        });
        if let Some(a) = &self.traffic.affinity {
            patch["affinity"] = json!(a);
        }
        if let Some(m) = &self.traffic.mirror {
            patch["mirror"] = json!(m);
        }
        if let Some(url) = &self.baseline_arm {
            patch["baseline"] = json!(url);
        }
        patch
    }

    fn route_url(&self) -> String {
        format!("{}/routes/{}", self.admin, self.route)
    }

    /// The route as the proxy has it now.
    pub async fn current(&self) -> Result<serde_json::Value, RouterError> {
        let answer = self
            .client
            .get_with(
                &self.route_url(),
                self.token.as_deref(),
                Duration::from_secs(5),
            )
            .await?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if !answer.status.is_success() {
            return Err(RouterError::Refused {
                what: format!("GET {}", self.route_url()),
                status: answer.status.as_u16(),
                message: body["error"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(body)
    }

    async fn put(&self, patch: serde_json::Value) -> Result<(), RouterError> {
        let answer = self
            .client
            .send_json(
                Method::PUT,
                &self.route_url(),
                &patch,
                self.token.as_deref(),
                Duration::from_secs(5),
            )
            .await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        Err(RouterError::Refused {
            what: patch.to_string(),
            status: answer.status.as_u16(),
            message: body["error"].as_str().unwrap_or_default().to_string(),
        })
    }
}

impl Router for ProxyAdminRouter {
    async fn initialize(&self) -> Result<(), RouterError> {
        let mut patch = self.release_patch(0);
        // A baseline arm or a mirror this release does not ask for (left
        // by an earlier release that was stopped before its end, or set by
        // hand) is taken off: the release's canary gets exactly the traffic
        // its plan says.
        if self.baseline_arm.is_none() || self.traffic.mirror.is_none() {
            let current = self.current().await?;
            for (field, wanted) in [
                ("baseline", self.baseline_arm.is_some()),
                ("mirror", self.traffic.mirror.is_some()),
            ] {
                if !wanted && current.get(field).is_some_and(|v| !v.is_null()) {
                    patch[field] = serde_json::Value::Null;
                }
            }
        }
        self.put(patch).await
    }

    async fn set_weight(&self, canary_weight_bp: u32) -> Result<(), RouterError> {
        self.put(json!({ "canary_weight": bp_to_percent(canary_weight_bp) }))
            .await
    }

    async fn promote(&self) -> Result<(), RouterError> {
        self.put(self.without_baseline(json!({ "stable": self.canary_url })))
            .await
    }

    /// Without A/B rules the canary is removed. A route with rules keeps
    /// them, and its canary slot keeps pointing at the promoted revision,
    /// which is now the stable: matching requests reach the stable until the
    /// next release points the slot at its canary.
    async fn finalise(&self) -> Result<(), RouterError> {
        if has_rules(&self.current().await?) {
            self.put(self.without_baseline(self.ending(json!({ "canary_weight": 0 }))))
                .await
        } else {
            self.put(
                self.without_baseline(
                    json!({ "canary_weight": 0, "canary": null, "mirror": null }),
                ),
            )
            .await
        }
    }

    /// Weight 0. A route with A/B rules also points its canary slot at the
    /// stable, so requests matching a rule stop reaching the rolled-back
    /// canary too; the rules stay for the next release.
    async fn rollback(&self) -> Result<(), RouterError> {
        let route = self.current().await?;
        if has_rules(&route) {
            let stable = route["stable"].clone();
            self.put(
                self.without_baseline(self.ending(json!({ "canary_weight": 0, "canary": stable }))),
            )
            .await
        } else {
            self.put(self.without_baseline(self.ending(json!({ "canary_weight": 0 }))))
                .await
        }
    }

    async fn restore(&self, canary_weight_bp: u32) -> Result<RouteCheck, RouterError> {
        let route = self.current().await?;
        let same_url = |field: &str, want: &str| {
            route[field]
                .as_str()
                .is_some_and(|have| have.trim_end_matches('/') == want.trim_end_matches('/'))
        };
        let weight = route["canary_weight"].as_f64().unwrap_or(0.0);
        let weight_bp = (weight * 100.0).round() as u32;
        let baseline_kept = self
            .baseline_arm
            .as_deref()
            .is_none_or(|url| same_url("baseline", url));
        if same_url("canary", &self.canary_url) && baseline_kept {
            return Ok(if weight_bp == canary_weight_bp {
                RouteCheck::AsLeft
            } else {
                RouteCheck::Changed(format!("route `{}` is at {weight}%", self.route))
            });
        }
        let found = format!(
            "route `{}` had canary {} at {weight}%{}",
            self.route,
            route["canary"].as_str().unwrap_or("none"),
            if baseline_kept {
                ""
            } else {
                " without the baseline arm"
            }
        );
        self.put(self.release_patch(canary_weight_bp)).await?;
        Ok(RouteCheck::SetBack(found))
    }

    /// The canary, then the baseline arm (if any), accept TCP
    /// connections: one connect each per check.
    async fn ready(&self) -> Readiness {
        if !accepts(&self.canary_url).await {
            return Readiness::Waiting {
                besides_canary: None,
            };
        }
        match &self.baseline_arm {
            Some(url) if !accepts(url).await => Readiness::Waiting {
                besides_canary: Some(format!("the baseline arm {url} to accept connections")),
            },
            _ => Readiness::Ready,
        }
    }
}
