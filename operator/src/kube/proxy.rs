//! The app's proxy: its Deployment and PodDisruptionBudget, its pods,
//! the config (weights and route settings) written to its ConfigMap, and
//! whether every ready replica serves that config yet.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use sha2::Digest;

use super::annotations::SPEC_HASH;
use super::api::{apply, apply_owned, delete_owned, to_value};
use super::knobs::{ProxySettings, RouteSettings};
use super::objects::*;
use super::{Context, Error, ReplicaConfig};
use crate::http::HttpClient;
use crate::plan::Traffic;

/// The default [`DigestProbe`]: each ready proxy pod's admin `/metrics`,
/// read for `sluice_config_source{sha256}`.
pub(super) async fn scrape_proxy_digests(
    client: &kube::Client,
    http: &HttpClient,
    ns: &str,
    app: &str,
) -> Result<Vec<ReplicaConfig>, Error> {
    let mut out = Vec::new();
    for pod in proxy_pods(client, ns, app).await? {
        if !pod.ready {
            continue;
        }
        let digest = match &pod.admin {
            Some(admin) => {
                let url = format!("{admin}/metrics");
                match http.get(&url, Duration::from_secs(2)).await {
                    Ok(answer) => replica_digest(&answer.text())
                        .unwrap_or_else(|| Err(format!("{url} reports no sluice_config_source"))),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            }
            None => Err("no pod IP yet".into()),
        };
        out.push(ReplicaConfig {
            pod: pod.name,
            digest,
        });
    }
    Ok(out)
}

/// A proxy pod of an app, as the operator reaches it.
pub(super) struct ProxyPod {
    name: String,
    /// Ready, and not going away.
    ready: bool,
    /// `http://IP:PORT` of its admin listener (the container's
    /// `sluice-admin` port), once it has an IP.
    admin: Option<String>,
}

/// The proxy pods of `app`, by their labels.
pub(super) async fn proxy_pods(
    client: &kube::Client,
    ns: &str,
    app: &str,
) -> Result<Vec<ProxyPod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = proxy_pod_labels(app)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|pod| {
            let ready = pod.metadata.deletion_timestamp.is_none()
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let port = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("sluice-admin")))
                .map_or(PROXY_ADMIN_PORT, |p| p.container_port);
            let admin = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .map(|ip| format!("http://{ip}:{port}"));
            ProxyPod {
                name: pod.metadata.name.unwrap_or_default(),
                ready,
                admin,
            }
        })
        .collect())
}

/// The digest in a proxy's metrics text, if it reports one.
pub fn served_digest(metrics: &str) -> Option<String> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("sluice_config_source{sha256=\"")?;
        let (digest, value) = rest.split_once("\"}")?;
        (value.trim() == "1").then(|| digest.to_string())
    })
}

/// The replicas that refused config `want` and serve another: one line
/// for a Warning Event, or `None` when none did.
pub fn refused_by(want: &str, replicas: &[ReplicaConfig]) -> Option<String> {
    let refused: Vec<String> = replicas
        .iter()
        .filter_map(|r| {
            let served = r.digest.as_ref().err()?.strip_prefix(REFUSED)?;
            (served != want).then(|| format!("{} (serves {served})", r.pod))
        })
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "proxy replica(s) {} refused config {want} and keep serving the one before; their log says why (a listener change needs new proxy pods: the operator rolls them when the ports' layout changes)",
            refused.join(", ")
        )
    })
}

/// Publishes a Warning Event `ProxyConfigRefused` when a ready proxy
/// replica refused the config in the proxy's ConfigMap: weights written
/// after it do not reach that replica. A probe that fails is only logged
/// (the release's own checks wait on the replicas anyway).
pub(super) async fn report_refused(ctx: &Context, d: &Deployment, ns: &str, app: &str) {
    let Some(probe) = &ctx.proxy_digests else {
        return;
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let text = match cms.get_opt(&proxy_name(app)).await {
        Ok(cm) => cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(sluice_proxy::kube_source::CONFIG_KEY).cloned()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the proxy's ConfigMap");
            None
        }
    };
    let Some(text) = text else { return };
    let want = sluice_proxy::kube_source::digest(&text);
    match probe(ns.to_string(), app.to_string()).await {
        Ok(replicas) => {
            if let Some(note) = refused_by(&want, &replicas) {
                tracing::warn!(namespace = ns, app, "{note}");
                super::api::publish(
                    ctx,
                    d,
                    kube::runtime::events::EventType::Warning,
                    "ProxyConfigRefused",
                    note,
                )
                .await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot ask the proxy replicas"),
    }
}

/// Whether every ready proxy replica serves the config now in the proxy's
/// ConfigMap (at least one replica, all agreeing): the data plane has
/// what the operator wrote, and nothing is scaled down before. `Ok(None)`
/// when they do; otherwise what is still missing, naming the replica.
/// A replica that cannot be asked counts as not there yet: the operator
/// never guesses (`--proxy-config-check off` trusts readiness instead).
pub(super) async fn proxies_lag(
    ctx: &Context,
    ns: &str,
    app: &str,
) -> Result<Option<String>, Error> {
    let Some(probe) = &ctx.proxy_digests else {
        return Ok(None);
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(text) = cms
        .get_opt(&proxy_name(app))
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(sluice_proxy::kube_source::CONFIG_KEY).cloned())
    else {
        return Ok(Some(format!(
            "ConfigMap {} has no {}",
            proxy_name(app),
            sluice_proxy::kube_source::CONFIG_KEY
        )));
    };
    let want = sluice_proxy::kube_source::digest(&text);
    let replicas = probe(ns.to_string(), app.to_string()).await?;
    Ok(config_lag(&want, &replicas))
}

/// What keeps the replicas from all serving config `want`, if anything.
pub fn config_lag(want: &str, replicas: &[ReplicaConfig]) -> Option<String> {
    if replicas.is_empty() {
        return Some("no ready proxy replica".into());
    }
    replicas.iter().find_map(|r| match &r.digest {
        Ok(d) if d == want => None,
        Ok(d) => Some(format!("proxy {} serves config {d}, not {want} yet", r.pod)),
        Err(e) if e.strip_prefix(REFUSED) == Some(want) => None,
        Err(e) if e.starts_with(REFUSED) => {
            Some(format!("proxy {} {e}, not {want}: its log says why", r.pod))
        }
        Err(e) => Some(format!(
            "cannot ask proxy {} which config it serves: {e}",
            r.pod
        )),
    })
}

/// Creates or updates the proxy's Deployment and PodDisruptionBudget when
/// what they should be differs from what runs: the ports (the Service's
/// changed), the labels (its selector changed), or the operator itself
/// (an upgraded operator brings its proxy image and settings). The
/// recorded spec hash keeps this to one read per reconcile.
pub(super) async fn ensure_proxy(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    ports: &[ProxiedPort],
    service_labels: &BTreeMap<String, String>,
    settings: &ProxySettings,
) -> Result<(), Error> {
    let owner = owner_reference(dv);
    let uid = owner["uid"].as_str().unwrap_or_default().to_string();
    let mut desired = proxy_deployment_for(
        app,
        ns,
        &ctx.proxy_image,
        &owner,
        ports,
        service_labels,
        settings,
    );
    // With an HPA the replica count is the HPA's: it is left out of the
    // hash, and a re-apply keeps the count the HPA chose.
    let hashed = match &settings.autoscale {
        Some(autoscale) => {
            let mut d = desired.clone();
            if let Some(spec) = d["spec"].as_object_mut() {
                spec.remove("replicas");
            }
            json!({"deployment": d, "hpa": [autoscale.min, autoscale.max, autoscale.cpu_percent]})
        }
        None => desired.clone(),
    };
    let hash = {
        let digest = sha2::Sha256::digest(canonical_json(&hashed).as_bytes());
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    desired["metadata"]["annotations"] = json!({SPEC_HASH: hash});
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    match deployments.get_opt(&proxy_name(app)).await? {
        Some(current) if current.annotations().get(SPEC_HASH) == Some(&hash) => {
            // The hash is on the Deployment: an HPA deleted since (by a
            // person, a GitOps prune) is seen only by looking for it, and
            // is created again.
            if let Some(autoscale) = &settings.autoscale {
                let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
                if hpas.get_opt(&proxy_name(app)).await?.is_none() {
                    apply_owned::<HorizontalPodAutoscaler>(
                        &ctx.client,
                        ns,
                        &proxy_hpa(app, &owner, autoscale),
                        &uid,
                    )
                    .await?;
                }
            }
        }
        Some(current) if !is_ours(&to_value(&current)?, &uid) => {
            return Err(Error::Foreign(format!(
                "Deployment {ns}/{} exists and is not Sluice's; Sluice does not overwrite or delete it: rename or remove it",
                proxy_name(app)
            )));
        }
        current => {
            if settings.autoscale.is_some()
                && let Some(replicas) = current.and_then(|c| c.spec).and_then(|s| s.replicas)
            {
                desired["spec"]["replicas"] = json!(replicas);
            }
            match &settings.autoscale {
                Some(autoscale) => {
                    apply_owned::<HorizontalPodAutoscaler>(
                        &ctx.client,
                        ns,
                        &proxy_hpa(app, &owner, autoscale),
                        &uid,
                    )
                    .await?
                }
                None => {
                    delete_owned::<HorizontalPodAutoscaler>(&ctx.client, ns, &proxy_name(app), &uid)
                        .await?
                }
            }
            // New pods read the ConfigMap when they start: it gets the new
            // listener layout first, or they would start on the old one and
            // refuse the next weight.
            relayout_config(ctx, ns, app, ports, &owner).await?;
            apply::<Deployment>(&ctx.client, ns, &desired).await?;
            apply_owned::<PodDisruptionBudget>(&ctx.client, ns, &proxy_pdb(app, &owner), &uid)
                .await?;
        }
    }
    Ok(())
}

/// Rewrites the proxy's ConfigMap for `ports` (which ports are HTTP,
/// HTTP/2 or TCP), keeping the weight and route settings it holds, when
/// its listeners differ. Nothing when there is no ConfigMap yet, or it is
/// not one the operator can read (the release writes it anew).
async fn relayout_config(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    owner: &Value,
) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(text) = cms
        .get_opt(&proxy_name(app))
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(sluice_proxy::kube_source::CONFIG_KEY).cloned())
    else {
        return Ok(());
    };
    let Ok((current, _)) = sluice_proxy::Config::from_yaml_lenient(&text) else {
        return Ok(());
    };
    let Some(main) = current.routes.first() else {
        return Ok(());
    };
    let bp = (main.canary_weight * 100.0).round().clamp(0.0, 10_000.0) as u32;
    let traffic = Traffic {
        affinity: main.affinity.clone(),
        mirror: main.mirror.clone(),
    };
    let route = RouteSettings {
        canary_match: main.canary_match.clone(),
        timeouts: main.timeouts.clone(),
        baseline_arm: main.baseline.is_some(),
    };
    let desired = proxy_configmap_for(app, ns, ports, bp, owner, &traffic, &route);
    if desired["data"][sluice_proxy::kube_source::CONFIG_KEY].as_str() != Some(text.as_str()) {
        apply::<ConfigMap>(&ctx.client, ns, &desired).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn set_weight(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    bp: u32,
    owner: &Value,
    traffic: &Traffic,
    route: &RouteSettings,
) -> Result<(), Error> {
    apply::<ConfigMap>(
        &ctx.client,
        ns,
        &proxy_configmap_for(app, ns, ports, bp, owner, traffic, route),
    )
    .await
}

/// Between releases, the proxy's config follows the app's route settings
/// (a changed `sluice.dev/request-timeout` applies without a release):
/// the at-rest config (weight 0, no A/B rule, no mirroring) is written
/// when the ConfigMap holds anything else.
pub(super) async fn settle_route(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    owner: &Value,
    traffic: &Traffic,
    route: &RouteSettings,
) -> Result<(), Error> {
    let desired = proxy_configmap_for(
        app,
        ns,
        ports,
        0,
        owner,
        &at_rest(traffic),
        &route.at_rest(),
    );
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let current = cms
        .get_opt(&proxy_name(app))
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(sluice_proxy::kube_source::CONFIG_KEY).cloned());
    let key = sluice_proxy::kube_source::CONFIG_KEY;
    if current.as_deref() != desired["data"][key].as_str() {
        apply::<ConfigMap>(&ctx.client, ns, &desired).await?;
    }
    Ok(())
}

/// A release's route settings between releases: affinity stays (it does
/// nothing at weight 0), mirroring ends with the release.
pub(super) fn at_rest(traffic: &Traffic) -> Traffic {
    Traffic {
        affinity: traffic.affinity.clone(),
        mirror: None,
    }
}

/// Proxy replica admin URLs, for the proxy provider.
pub(super) async fn proxy_targets(
    ctx: &Context,
    ns: &str,
    app: &str,
) -> Result<Vec<String>, Error> {
    Ok(proxy_pods(&ctx.client, ns, app)
        .await?
        .into_iter()
        .filter_map(|p| p.admin)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(pod: &str, digest: Result<&str, String>) -> ReplicaConfig {
        ReplicaConfig {
            pod: pod.into(),
            digest: digest.map(str::to_string),
        }
    }

    #[test]
    fn a_refused_reload_is_told_apart_from_a_lag() {
        let ok = "sluice_config_source{sha256=\"aa\"} 1\nsluice_config_last_reload_successful 1\n";
        let refused =
            "sluice_config_source{sha256=\"aa\"} 1\nsluice_config_last_reload_successful 0\n";
        assert!(!reload_refused(ok));
        assert!(reload_refused(refused));
        let replicas = [
            replica("p-a", Ok("bb")),
            replica("p-b", Err(format!("{REFUSED}aa"))),
        ];
        let note = refused_by("bb", &replicas).expect("p-b refused");
        assert!(note.contains("p-b (serves aa)"), "{note}");
        assert!(!note.contains("p-a"), "{note}");
        let lag = config_lag("bb", &replicas).expect("p-b lags");
        assert!(
            lag.contains("proxy p-b refused its last config reload and serves aa, not bb"),
            "{lag}"
        );
        // A refusal of an older version, while serving the wanted one: no lag, no warning.
        let fine = [replica("p-b", Err(format!("{REFUSED}bb")))];
        assert_eq!(refused_by("bb", &fine), None);
        assert_eq!(config_lag("bb", &fine), None);
        // A plain lag is no refusal.
        assert_eq!(refused_by("bb", &[replica("p-a", Ok("aa"))]), None);
    }
}
