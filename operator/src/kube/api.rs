//! Shared writes: server-side apply and merge patches as field manager
//! `sluice`, objects Sluice owns (never one it does not), Events, the
//! finalizer, and the status on `app-primary` (mirrored on the user's
//! Deployment for GitOps health checks). Every phase writes through here.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest;

use super::objects::{MANAGED_BY, is_ours, primary_name};
use super::{Context, Error, FIELD_MANAGER, KubeStatus, annotations};

pub(super) fn rfc3339(secs: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(super) fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    Ok(serde_json::to_value(v)?)
}

/// Typed namespaced objects the operator writes through `Api<K>`.
pub(super) trait NamespacedResource:
    Resource<Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> NamespacedResource for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

pub(super) async fn apply<K>(client: &kube::Client, ns: &str, object: &Value) -> Result<(), Error>
where
    K: NamespacedResource,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

pub(super) async fn merge_patch<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    patch: Value,
) -> Result<(), Error>
where
    K: NamespacedResource,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Fails with [`Error::Foreign`] when `name` exists and is not Sluice's for
/// the Deployment `owner_uid` (see [`is_ours`]).
pub(super) async fn ensure_ours<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await? {
        Some(existing) if !is_ours(&to_value(&existing)?, owner_uid) => {
            Err(Error::Foreign(format!(
                "{} {ns}/{name} exists and is not Sluice's (it lacks the label {MANAGED_BY}=sluice or an owner reference to this Deployment); Sluice does not overwrite or delete it: rename or remove it",
                K::kind(&K::DynamicType::default())
            )))
        }
        _ => Ok(()),
    }
}

/// Server-side apply of an object Sluice owns, refusing to take over one it
/// does not.
pub(super) async fn apply_owned<K>(
    client: &kube::Client,
    ns: &str,
    object: &Value,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    ensure_ours::<K>(client, ns, name, owner_uid).await?;
    apply::<K>(client, ns, object).await
}

/// Deletes `name` only when it is Sluice's for `owner_uid`, with a uid
/// precondition so a same-named object created meanwhile is never hit.
pub(super) async fn delete_owned<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let v = to_value(&existing)?;
    if !is_ours(&v, owner_uid) {
        tracing::info!(%ns, %name, "not Sluice's; left alone");
        return Ok(());
    }
    let uid = v["metadata"]["uid"].as_str().map(str::to_string);
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn publish(
    ctx: &Context,
    d: &Deployment,
    level: EventType,
    reason: &str,
    note: String,
) {
    // The API server takes a note of at most 1,024 bytes: cut at a
    // character's boundary below that.
    let mut end = note.len().min(1024);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    let note = note[..end].to_string();
    // The recorder counts an Event again (a series: `x2`) when its type,
    // reason and action repeat, and keeps the first one's note. A digest
    // of the note in the action makes a new message a new Event, as
    // core/v1's recorders do (Flagger's among them), so `kubectl describe`
    // never shows an old message for a new problem; the same message
    // again is still counted in its series.
    let digest = sha2::Sha256::digest(note.as_bytes());
    let action = format!(
        "Reconcile-{}",
        digest
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let event = Event {
        type_: level,
        reason: reason.to_string(),
        note: Some(note),
        action,
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &d.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

/// Writes as field manager `sluice`, so `managedFields` shows which fields
/// Sluice set (GitOps tools can ignore exactly those).
pub(super) fn sluice_post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

pub(super) async fn save_status(
    ctx: &Context,
    ns: &str,
    app: &str,
    status: &KubeStatus,
) -> Result<(), Error> {
    let patch =
        json!({"metadata": {"annotations": {annotations::STATUS: serde_json::to_string(status)?}}});
    merge_patch::<Deployment>(&ctx.client, ns, &primary_name(app), patch).await?;
    ctx.metrics.observe(ns, app, status);
    mirror_phase(ctx, ns, app, status).await;
    Ok(())
}

/// Removes the mirrored phase from the user's Deployment (when Sluice lets
/// it go); whether there was one to remove.
pub(super) async fn unmirror_phase(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
) -> Result<bool, Error> {
    ctx.mirrored
        .lock()
        .expect("mirrored")
        .remove(&format!("{ns}/{app}"));
    let a = d.annotations();
    if !a.contains_key(annotations::PHASE) && !a.contains_key(annotations::MESSAGE) {
        return Ok(false);
    }
    let patch = json!({"metadata": {"annotations": {annotations::PHASE: null, annotations::MESSAGE: null}}});
    merge_patch::<Deployment>(&ctx.client, ns, app, patch).await?;
    Ok(true)
}

/// Mirrors the phase and message onto the user's Deployment when they
/// change, so a GitOps tool's health check (which sees only the objects it
/// tracks) can read them: `deploy/argocd/health.lua`. Cosmetic: a failed
/// write is logged and tried again at the next status change or restart.
pub(super) async fn mirror_phase(ctx: &Context, ns: &str, app: &str, status: &KubeStatus) {
    let key = format!("{ns}/{app}");
    let message: String = status.message.chars().take(256).collect();
    let now = (status.phase.clone(), message);
    if ctx.mirrored.lock().expect("mirrored").get(&key) == Some(&now) {
        return;
    }
    let patch = json!({"metadata": {"annotations": {annotations::PHASE: now.0, annotations::MESSAGE: now.1}}});
    match merge_patch::<Deployment>(&ctx.client, ns, app, patch).await {
        Ok(()) => {
            ctx.mirrored.lock().expect("mirrored").insert(key, now);
        }
        Err(e) => tracing::warn!(namespace = ns, app, "cannot mirror the phase on {app}: {e}"),
    }
}

pub(super) async fn scale(ctx: &Context, ns: &str, name: &str, replicas: i64) -> Result<(), Error> {
    merge_patch::<Deployment>(
        &ctx.client,
        ns,
        name,
        json!({"spec": {"replicas": replicas}}),
    )
    .await
}

/// Adds Sluice's finalizer with a JSON patch that first tests the
/// resourceVersion it was read at: a stale (cached) object fails the test
/// (422) instead of overwriting a finalizer someone else added meanwhile.
pub(super) async fn add_finalizer(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    match json_patch(ctx, ns, name, finalizer_ops(d)).await {
        // The object changed since it was read (a status update by the
        // Deployment controller, say): once more on a fresh read, with the
        // same test, so a finalizer added meanwhile is still never lost.
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let fresh = api.get(name).await?;
            if fresh
                .finalizers()
                .iter()
                .any(|f| f == annotations::FINALIZER)
            {
                return Ok(());
            }
            json_patch(ctx, ns, name, finalizer_ops(&fresh)).await
        }
        other => other,
    }
}

/// A JSON patch adding Sluice's finalizer to `d` as read.
fn finalizer_ops(d: &Deployment) -> Vec<Value> {
    let rv = d.resource_version().unwrap_or_default();
    let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
    if d.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        ops.push(
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": annotations::FINALIZER}),
        );
    } else {
        ops.push(
            json!({"op": "add", "path": "/metadata/finalizers", "value": [annotations::FINALIZER]}),
        );
    }
    ops
}

/// Removes Sluice's finalizer by index, testing the resourceVersion and the
/// entry at that index first.
pub(super) async fn remove_finalizer(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let Some(index) = d
        .finalizers()
        .iter()
        .position(|f| f == annotations::FINALIZER)
    else {
        return Ok(());
    };
    let rv = d.resource_version().unwrap_or_default();
    let path = format!("/metadata/finalizers/{index}");
    json_patch(
        ctx,
        ns,
        name,
        vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            json!({"op": "test", "path": path, "value": annotations::FINALIZER}),
            json!({"op": "remove", "path": path}),
        ],
    )
    .await
}

pub(super) async fn json_patch(
    ctx: &Context,
    ns: &str,
    name: &str,
    ops: Vec<Value>,
) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::<()>::Json(patch)).await?;
    Ok(())
}

/// Adds one tick to the app's release record, kept in the ConfigMap
/// `<app>-sluice-releases` (owned by the user's Deployment, so it goes with
/// it; kept when Sluice lets go of the app, as history). The newest
/// `keep` releases stay (`sluice.dev/keep-releases`), within the object's
/// size limit. A fresh release ends the app's older releases still open as
/// superseded ([`crate::record::upsert`]). A record that cannot be written
/// is a warning: the release itself goes on.
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep_record(
    ctx: &Context,
    ns: &str,
    app: &str,
    owner: &Value,
    keep: usize,
    plan: &crate::plan::Plan,
    fresh: bool,
    now: f64,
    before: Option<&crate::machine::Status>,
    after: &crate::machine::Status,
    analysis: Option<&crate::analysis::Analysis>,
    actions: &[crate::machine::Action],
    report: Option<&crate::report::ExperimentReport>,
) {
    use crate::record::{self, ReleaseRecord};
    use k8s_openapi::api::core::v1::ConfigMap;
    let name = record::configmap_name(app);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let mut all = match api.get_opt(&name).await {
        Ok(Some(cm)) => match record::from_configmap_data(&cm.data.unwrap_or_default()) {
            Ok(all) => all,
            Err(e) => {
                // Writing now would wipe the history that could not be
                // read; it is kept as it is until someone repairs or
                // removes it.
                tracing::warn!(configmap = %name, namespace = %ns, error = %e, "release records unreadable; not writing the record (the ConfigMap is kept as it is: repair or delete it)");
                return;
            }
        },
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(configmap = %name, namespace = %ns, error = %e, "cannot read the release records");
            return;
        }
    };
    // A record dated after this tick is none the operator wrote (a
    // hostile or hand-edited one): it is never continued.
    let current = (!fresh)
        .then(|| {
            all.iter()
                .rev()
                .find(|r| r.revision == after.revision && !r.ended() && r.started_at <= now + 0.05)
                .cloned()
        })
        .flatten();
    let mut rec =
        current.unwrap_or_else(|| ReleaseRecord::new(Some(ns), app, &after.revision, plan, now));
    if !rec.observe(now, before, after, analysis, actions, report) {
        return;
    }
    record::upsert(&mut all, rec, usize::MAX);
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {MANAGED_BY: "sluice", "sluice.dev/release": app},
            "ownerReferences": [owner],
        },
        "data": record::to_configmap_data(&all, keep),
    });
    let uid = owner["uid"].as_str().unwrap_or_default();
    if let Err(e) = apply_owned::<ConfigMap>(&ctx.client, ns, &object, uid).await {
        tracing::warn!(configmap = %name, namespace = %ns, error = %e, "cannot write the release record");
    }
}
