//! `--kube-configmap NAMESPACE/NAME`: the routing table comes from a
//! ConfigMap's `routes.yaml` key, read and watched through the Kubernetes API
//! (not a mounted volume, whose kubelet sync can take a minute: a rollback
//! must not). Each new version is validated and swapped in atomically; an
//! invalid one is logged, counted in `sluice_config_reloads_total{result="failure"}`,
//! and the last good table keeps serving.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::watcher;

use crate::config::{Config, ConfigErrors};
use crate::metrics::ReloadResult;
use crate::store::Store;

/// The key of the ConfigMap that holds the proxy's config.
pub const CONFIG_KEY: &str = "routes.yaml";

/// Parses `NAMESPACE/NAME`.
pub fn parse_reference(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("`{text}` is not NAMESPACE/NAME")),
    }
}

fn config_of(cm: &ConfigMap, ns: &str, name: &str) -> Result<(String, Config), ConfigErrors> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| {
            ConfigErrors::single(
                "",
                format!("ConfigMap {ns}/{name} has no `{CONFIG_KEY}` key"),
            )
        })?;
    // Lenient: an operator one version ahead may write fields this proxy
    // does not know yet; they are ignored with a warning, never a reason
    // to stop following the ConfigMap.
    let (config, unknown) = crate::config::guarded(|| Config::from_yaml_lenient(text))?;
    if !unknown.is_empty() {
        tracing::warn!(configmap = %format!("{ns}/{name}"), fields = ?unknown, "ignoring config fields this proxy does not know (written by a newer operator?)");
    }
    Ok((text.clone(), config))
}

/// What identifies a config text: the first 16 hex digits of its SHA-256.
/// The proxy reports the digest of the ConfigMap text it serves
/// (`sluice_config_source{sha256}`), so the operator can tell when
/// every replica has a config it wrote, whatever fields either side knows.
pub fn digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the ConfigMap once (to start the proxy): its text and config.
pub async fn fetch(client: kube::Client, ns: &str, name: &str) -> Result<(String, Config), String> {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let cm = api
        .get(name)
        .await
        .map_err(|e| format!("cannot read ConfigMap {ns}/{name}: {e}"))?;
    config_of(&cm, ns, name).map_err(|e| format!("ConfigMap {ns}/{name} `{CONFIG_KEY}`:\n{e}"))
}

/// Follows the ConfigMap and applies every valid change.
pub fn follow(
    client: kube::Client,
    ns: String,
    name: String,
    store: Arc<Store>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut last_applied: Option<String> = None;
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            let cm = match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
                Ok(watcher::Event::Delete(_)) => {
                    tracing::warn!(configmap = %format!("{ns}/{name}"), "ConfigMap deleted; the last good config keeps serving");
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "ConfigMap watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let where_ = format!("{ns}/{name}");
            let (text, config) = match config_of(&cm, &ns, &name) {
                Ok(parsed) => parsed,
                Err(errors) => {
                    // Parse errors and a missing key never reach Store::replace.
                    store.metrics().record_reload(ReloadResult::Failure);
                    tracing::error!(configmap = %where_, %errors, "ConfigMap version rejected; the last good config keeps serving");
                    continue;
                }
            };
            if last_applied.as_deref() == Some(text.as_str()) || store.load().config == config {
                store.metrics().set_config_digest(&digest(&text));
                last_applied = Some(text);
                continue;
            }
            match store.replace(config) {
                Ok(_) => {
                    store.metrics().set_config_digest(&digest(&text));
                    last_applied = Some(text);
                    tracing::info!(configmap = %where_, "config reloaded from the ConfigMap");
                }
                Err(errors) => {
                    tracing::error!(configmap = %where_, %errors, "ConfigMap version rejected; the last good config keeps serving")
                }
            }
        }
    })
}
