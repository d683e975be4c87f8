//! What a reconcile reads besides the Deployment: the ConfigMaps and
//! Secrets the annotations name (checks, webhooks, access, notify), the
//! Service port to proxy, and the revision (the pod template plus the
//! config it references), with the `-primary` copies of that config.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Value, json};

use super::annotations::{self, PortRef, Settings};
use super::api::{apply_owned, to_value};
use super::objects::{config_copy, config_hash, config_refs, revision_hash, secret_digest};
use super::{Context, Error};
use crate::http::HttpClient;

/// The data of the Secret `name` that annotation `annotation` names.
pub(super) async fn secret_data(
    ctx: &Context,
    ns: &str,
    name: &str,
    annotation: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(s)) => Ok(s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        Ok(None) => Err(format!(
            "annotation {annotation}: no Secret {name} in namespace {ns}"
        )),
        Err(e) => Err(format!(
            "annotation {annotation}: cannot read Secret {name}: {e}"
        )),
    }
}

/// Reads an app's access and notification Secrets (`sluice.dev/access`,
/// `sluice.dev/notify`) into the context. The values are credentials:
/// errors name the Secret and key, never a value.
pub(super) async fn load_secrets(
    ctx: &Context,
    ns: &str,
    app: &str,
    settings: &Settings,
) -> Result<(), String> {
    let key = format!("{ns}/{app}");
    match &settings.access_secret {
        Some(name) => {
            let data = secret_data(ctx, ns, name, annotations::ACCESS).await?;
            let access = crate::http::parse_access_data(
                &data,
                &format!("annotation {}: Secret {name}", annotations::ACCESS),
            )?;
            let http = HttpClient::plain().with_access(&access);
            ctx.app_http
                .lock()
                .expect("app_http lock")
                .insert(key.clone(), http);
        }
        None => {
            ctx.app_http.lock().expect("app_http lock").remove(&key);
        }
    }
    match &settings.notify_secret {
        Some(name) => {
            let data = secret_data(ctx, ns, name, annotations::NOTIFY).await?;
            use sha2::Digest;
            let mut digest = sha2::Sha256::new();
            for (k, v) in &data {
                digest.update(k.as_bytes());
                digest.update([0]);
                digest.update(v);
                digest.update([0]);
            }
            let digest = format!("{:x}", digest.finalize());
            let same = ctx
                .app_notifiers
                .lock()
                .expect("app_notifiers lock")
                .get(&key)
                .is_some_and(|(d, _)| *d == digest);
            if !same {
                let mut channels = Vec::new();
                let steps = data.get("steps").is_some_and(|v| v.trim_ascii() == b"true");
                for (k, v) in data.iter().filter(|(k, _)| *k != "steps") {
                    let what = format!("annotation {}: Secret {name} key {k}", annotations::NOTIFY);
                    let service =
                        crate::notify::Service::parse(k).map_err(|e| format!("{what}: {e}"))?;
                    let url =
                        String::from_utf8(v.clone()).map_err(|_| format!("{what}: not UTF-8"))?;
                    channels.push(crate::notify::Channel::from_url(
                        service,
                        url.trim(),
                        &what,
                    )?);
                }
                let notifier = crate::notify::Notifier::start(
                    channels,
                    steps,
                    Some(ctx.metrics.notifications.clone()),
                    app_http(ctx, &key),
                );
                ctx.app_notifiers
                    .lock()
                    .expect("app_notifiers lock")
                    .insert(key.clone(), (digest, notifier));
            }
        }
        None => {
            ctx.app_notifiers
                .lock()
                .expect("app_notifiers lock")
                .remove(&key);
        }
    }
    // The app's channels are called with its access, as its other calls
    // are (a changed access Secret reaches a running notifier too).
    if let Some((_, notifier)) = ctx
        .app_notifiers
        .lock()
        .expect("app_notifiers lock")
        .get(&key)
    {
        notifier.set_http(app_http(ctx, &key));
    }
    Ok(())
}

/// The client of the URLs an app's annotations give: its own access, never
/// the operator's.
fn app_http(ctx: &Context, key: &str) -> HttpClient {
    ctx.app_http
        .lock()
        .expect("app_http lock")
        .get(key)
        .cloned()
        .unwrap_or_else(HttpClient::plain)
}

/// Reads the checks and webhooks ConfigMaps and the Secrets named by the
/// annotations.
pub(super) async fn load_extras(
    ctx: &Context,
    ns: &str,
    app: &str,
    settings: &mut Settings,
) -> Result<(), String> {
    load_secrets(ctx, ns, app, settings).await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(name) = &settings.checks_configmap {
        let text = configmap_key(&cms, name, "checks.yaml", annotations::CHECKS).await?;
        settings.plan.queries = crate::plan::parse_checks(
            &text,
            &format!(
                "annotation {}: ConfigMap {name} key checks.yaml",
                annotations::CHECKS
            ),
        )?;
        if settings.metrics != annotations::MetricsSource::Prometheus
            && let Some(c) = settings
                .plan
                .queries
                .iter()
                .find(|c| !crate::external::is_external(c))
        {
            return Err(format!(
                "annotation {}: ConfigMap {name}: check `{}` is PromQL and needs the prometheus provider (set sluice.dev/metrics: prometheus and run the operator with --prometheus-url), or give it provider: web or datadog",
                annotations::CHECKS,
                c.name
            ));
        }
    }
    if let crate::provider::MetricsTemplate::ConfigMap { name, key } = &settings.metrics_template {
        let text = configmap_key(&cms, name, key, annotations::METRICS_TEMPLATE).await?;
        settings.metrics_template =
            crate::provider::MetricsTemplate::Custom(crate::provider::SeriesTemplate::parse(
                &text,
                &format!(
                    "annotation {}: ConfigMap {name} key {key}",
                    annotations::METRICS_TEMPLATE
                ),
            )?);
    }
    if let Some(name) = &settings.webhooks_configmap {
        let text = configmap_key(&cms, name, "webhooks.yaml", annotations::WEBHOOKS).await?;
        settings.plan.webhooks = crate::plan::parse_webhooks(
            &text,
            &format!(
                "annotation {}: ConfigMap {name} key webhooks.yaml",
                annotations::WEBHOOKS
            ),
        )?;
    }
    Ok(())
}

pub(super) async fn configmap_key(
    cms: &Api<ConfigMap>,
    name: &str,
    key: &str,
    annotation: &str,
) -> Result<String, String> {
    let cm = cms
        .get_opt(name)
        .await
        .map_err(|e| format!("annotation {annotation}: cannot read ConfigMap {name}: {e}"))?
        .ok_or_else(|| format!("annotation {annotation}: ConfigMap {name} not found"))?;
    cm.data
        .and_then(|d| d.get(key).cloned())
        .ok_or_else(|| format!("annotation {annotation}: ConfigMap {name} has no key {key}"))
}

/// The Service port to proxy: by name or number, else the first.
pub(super) fn resolve_port(service: &Value, wanted: Option<&PortRef>) -> Result<i32, String> {
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = match wanted {
        None => ports.first(),
        Some(PortRef::Number(n)) => ports
            .iter()
            .find(|p| p["port"].as_i64() == Some(i64::from(*n))),
        Some(PortRef::Name(n)) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(n.as_str())),
    };
    let allowed: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p["name"].as_str().unwrap_or("-"), p["port"]))
        .collect();
    found
        .and_then(|p| p["port"].as_i64())
        .map(|p| p as i32)
        .ok_or_else(|| {
            format!(
                "annotation {}: `{}` matches no port of the Service (allowed: {})",
                annotations::PORT,
                match wanted {
                    Some(PortRef::Name(n)) => n.clone(),
                    Some(PortRef::Number(n)) => n.to_string(),
                    None => String::new(),
                },
                allowed.join(", ")
            )
        })
}

/// The revision of the user's pod template and the config it references,
/// and the hash of that config alone (for the primary's pod template).
pub(super) async fn revision_of(
    ctx: &Context,
    ns: &str,
    d: &Value,
) -> Result<(String, String), Error> {
    let template = &d["spec"]["template"];
    let (cm_data, secret_data) = config_data(ctx, ns, template).await?;
    Ok((
        revision_hash(template, &cm_data, &secret_data),
        config_hash(&cm_data, &secret_data),
    ))
}

pub(super) type ConfigData = (BTreeMap<String, Value>, BTreeMap<String, Value>);

/// ConfigMap data and Secret digests of what `template` references
/// (missing ones as null).
pub(super) async fn config_data(
    ctx: &Context,
    ns: &str,
    template: &Value,
) -> Result<ConfigData, Error> {
    let refs = config_refs(template);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut cm_data = BTreeMap::new();
    for name in &refs.configmaps {
        let v = match cms.get_opt(name).await? {
            Some(cm) => json!({"data": cm.data, "binaryData": cm.binary_data}),
            None => Value::Null,
        };
        cm_data.insert(name.clone(), v);
    }
    let mut secret_data = BTreeMap::new();
    for name in &refs.secrets {
        let v = match secrets.get_opt(name).await? {
            Some(s) => json!(secret_digest(
                s.metadata.uid.as_deref().unwrap_or_default(),
                &to_value(&s.data)?
            )),
            None => Value::Null,
        };
        secret_data.insert(name.clone(), v);
    }
    Ok((cm_data, secret_data))
}

/// (Re)writes the `-primary` copies of the ConfigMaps and Secrets `template` references.
pub(super) async fn copy_configs(
    ctx: &Context,
    ns: &str,
    app: &str,
    template: &Value,
    owner: &Value,
) -> Result<(), Error> {
    let refs = config_refs(template);
    let uid = owner["uid"].as_str().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for name in &refs.configmaps {
        if let Some(cm) = cms.get_opt(name).await? {
            apply_owned::<ConfigMap>(
                &ctx.client,
                ns,
                &config_copy(&to_value(&cm)?, owner, app),
                uid,
            )
            .await?;
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for name in &refs.secrets {
        if let Some(s) = secrets.get_opt(name).await? {
            apply_owned::<Secret>(
                &ctx.client,
                ns,
                &config_copy(&to_value(&s)?, owner, app),
                uid,
            )
            .await?;
        }
    }
    Ok(())
}
