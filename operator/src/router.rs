//! Routers move traffic. [`ProxyAdminRouter`] drives a running
//! `sluice-proxy` through its admin API (plain hosts, the demo); the
//! Kubernetes driver has its own that rewrites the proxy's ConfigMap.

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
    /// Whether the canary (or the promotion) is ready.
    fn ready(&self) -> impl Future<Output = bool> + Send;
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
        }
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
        let mut patch = json!({ "canary": self.canary_url, "canary_weight": 0 });
        if let Some(a) = &self.traffic.affinity {
            patch["affinity"] = json!(a);
        }
        if let Some(m) = &self.traffic.mirror {
            patch["mirror"] = json!(m);
        }
        self.put(patch).await
    }

    async fn set_weight(&self, canary_weight_bp: u32) -> Result<(), RouterError> {
        self.put(json!({ "canary_weight": bp_to_percent(canary_weight_bp) }))
            .await
    }

    async fn promote(&self) -> Result<(), RouterError> {
        self.put(json!({ "stable": self.canary_url })).await
    }

    /// Without A/B rules the canary is removed. A route with rules keeps
    /// them, and its canary slot keeps pointing at the promoted revision,
    /// which is now the stable: matching requests reach the stable until the
    /// next release points the slot at its canary.
    async fn finalise(&self) -> Result<(), RouterError> {
        if has_rules(&self.current().await?) {
            self.put(self.ending(json!({ "canary_weight": 0 }))).await
        } else {
            self.put(json!({ "canary_weight": 0, "canary": null, "mirror": null }))
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
            self.put(self.ending(json!({ "canary_weight": 0, "canary": stable })))
                .await
        } else {
            self.put(self.ending(json!({ "canary_weight": 0 }))).await
        }
    }

    /// The canary accepts TCP connections.
    async fn ready(&self) -> bool {
        let Ok(url) = UpstreamUrl::parse(&self.canary_url) else {
            return false;
        };
        let connect = tokio::net::TcpStream::connect((url.host.as_str(), url.port));
        matches!(
            tokio::time::timeout(Duration::from_secs(2), connect).await,
            Ok(Ok(_))
        )
    }
}
