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

/// What an app's access and notify Secrets last gave, by `ns/app`, so that
/// a Secret that goes bad while the app runs (deleted and made again in a
/// rotation, a key Sluice does not know, a URL that does not parse) leaves
/// the app with its last valid settings instead of stopping its reconcile,
/// and so that a Secret that did not change is not read into a new client
/// (new TLS handshakes, no kept connections) on every reconcile.
#[derive(Default)]
pub struct AppSecrets {
    /// The access Secret's data digest last read, and its problem if it
    /// did not parse (its client, if one was ever made, is in
    /// `Context::app_http`).
    access: Option<(String, Option<SecretProblem>)>,
    /// The notify Secret's data digest last read, and the problems of its
    /// keys.
    notify: Option<(String, Vec<SecretProblem>)>,
    /// The channels the notify Secret last gave, by key.
    channels: BTreeMap<String, crate::notify::Channel>,
    /// The problems last reported as Warning Events: each is reported
    /// once, until it is gone.
    reported: std::collections::BTreeSet<SecretProblem>,
    /// The Secrets the above were read from (access, notify): what was
    /// read from one never stands in for another the annotations now name.
    names: (Option<String>, Option<String>),
}

/// What is wrong with an app's Secret, and what Sluice does meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SecretProblem {
    pub problem: String,
    pub meanwhile: &'static str,
}

impl SecretProblem {
    fn new(problem: String, meanwhile: &'static str) -> Self {
        Self { problem, meanwhile }
    }
}

impl std::fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem, self.meanwhile)
    }
}

/// A digest of a Secret's data (keys and values).
fn data_digest(data: &BTreeMap<String, Vec<u8>>) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for (k, v) in data {
        digest.update(k.as_bytes());
        digest.update([0]);
        digest.update(v);
        digest.update([0]);
    }
    format!("{:x}", digest.finalize())
}

/// Reads an app's access and notification Secrets (`sluice.dev/access`,
/// `sluice.dev/notify`) into the context, and returns what is wrong with
/// them, each problem with what Sluice does meanwhile. A problem never
/// stops the app's reconcile (an abort or a rollback must always be
/// carried out):
///
/// - the access Secret missing, unreadable or not a valid list: the app's
///   calls go on with the access last read from it; with none read by this
///   process, without it (never with the operator's), so an endpoint that
///   wants its credentials refuses: a check is Inconclusive, a hook's
///   refusal is its answer;
/// - the notify Secret missing or unreadable: the channels last read go
///   on; a key that is not a service or holds no http(s) URL: that
///   channel is left out (stopped, if it was there: never kept on its old
///   URL), and the other keys are used (see [`read_channels`]).
///
/// The values are credentials: errors name the Secret and key, never a
/// value.
pub(super) async fn load_secrets(
    ctx: &Context,
    ns: &str,
    app: &str,
    settings: &Settings,
) -> Vec<SecretProblem> {
    let key = format!("{ns}/{app}");
    let mut problems = Vec::new();
    let mut state = ctx
        .app_secrets
        .lock()
        .expect("app_secrets lock")
        .remove(&key)
        .unwrap_or_default();
    // Another Secret named: nothing read from the last one stands in for
    // it (the user moved away from it on purpose).
    if state.names.0 != settings.access_secret {
        ctx.app_http.lock().expect("app_http lock").remove(&key);
        state.access = None;
    }
    if state.names.1 != settings.notify_secret {
        retire_notifier(ctx, &key);
        state.notify = None;
        state.channels.clear();
    }
    state.names = (
        settings.access_secret.clone(),
        settings.notify_secret.clone(),
    );
    match &settings.access_secret {
        Some(name) => {
            let had = ctx
                .app_http
                .lock()
                .expect("app_http lock")
                .contains_key(&key);
            let meanwhile = if had {
                "the app's calls go on with the access last read from it until it is fixed"
            } else {
                "the app's webhooks, checks and channels are called without its credentials (never the operator's) until it is fixed: an endpoint that wants them refuses"
            };
            match secret_data(ctx, ns, name, annotations::ACCESS).await {
                Err(e) => problems.push(SecretProblem::new(e, meanwhile)),
                Ok(data) => {
                    let digest = data_digest(&data);
                    let problem = match &state.access {
                        Some((d, problem)) if *d == digest => problem.clone(),
                        _ => {
                            let read = crate::http::parse_access_data(
                                &data,
                                &format!("annotation {}: Secret {name}", annotations::ACCESS),
                            );
                            let problem = match read {
                                Ok(access) => {
                                    let http = HttpClient::plain().with_access(&access);
                                    ctx.app_http
                                        .lock()
                                        .expect("app_http lock")
                                        .insert(key.clone(), http);
                                    None
                                }
                                Err(e) => Some(SecretProblem::new(e, meanwhile)),
                            };
                            state.access = Some((digest, problem.clone()));
                            problem
                        }
                    };
                    problems.extend(problem);
                }
            }
        }
        None => {
            ctx.app_http.lock().expect("app_http lock").remove(&key);
            state.access = None;
        }
    }
    // The app's channels are called with its access, as its other calls
    // are (a changed access Secret reaches a running notifier too).
    let http = app_http(ctx, &key);
    match &settings.notify_secret {
        Some(name) => match secret_data(ctx, ns, name, annotations::NOTIFY).await {
            Err(e) => {
                let had = ctx
                    .app_notifiers
                    .lock()
                    .expect("app_notifiers lock")
                    .contains_key(&key);
                problems.push(SecretProblem::new(
                    e,
                    if had {
                        "the app's channels go on as last read until it is fixed"
                    } else {
                        "the app has no channels of its own until it is fixed"
                    },
                ));
            }
            Ok(data) => {
                let digest = data_digest(&data);
                match &state.notify {
                    Some((d, key_problems)) if *d == digest => {
                        problems.extend(key_problems.iter().cloned());
                    }
                    _ => {
                        let key_problems =
                            start_notifier(ctx, &key, name, &data, &digest, &mut state, &http);
                        problems.extend(key_problems.iter().cloned());
                        state.notify = Some((digest, key_problems));
                    }
                }
            }
        },
        None => {
            retire_notifier(ctx, &key);
            state.notify = None;
            state.channels.clear();
        }
    }
    if let Some((_, notifier)) = ctx
        .app_notifiers
        .lock()
        .expect("app_notifiers lock")
        .get(&key)
    {
        notifier.set_http(http);
    }
    ctx.app_secrets
        .lock()
        .expect("app_secrets lock")
        .insert(key, state);
    problems
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

/// Gives the app's notifier the channels of the notify Secret `name`'s
/// `data` (starting it if the app has none): a key that is not a service
/// or holds no http(s) URL is left out. A key whose URL changed sends what
/// its queue holds to the new URL; a key that is gone, or now gives no
/// channel, drops it (see [`crate::notify::Notifier::update`]). Its
/// problems.
fn start_notifier(
    ctx: &Context,
    key: &str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    digest: &str,
    state: &mut AppSecrets,
    http: &HttpClient,
) -> Vec<SecretProblem> {
    let (channels, steps, problems) = read_channels(name, data, &state.channels);
    let mut notifiers = ctx.app_notifiers.lock().expect("app_notifiers lock");
    let (read, notifier) = notifiers.entry(key.to_string()).or_insert_with(|| {
        (
            String::new(),
            crate::notify::Notifier::keyed(Some(ctx.metrics.notifications.clone()), http.clone()),
        )
    });
    notifier.update(channels.clone(), steps);
    *read = digest.to_string();
    state.channels = channels;
    problems
}

/// Stops the app's notifier, if it has one, for good (its notify Secret is
/// no longer named): the notes it still holds are dropped and counted,
/// never sent to the URLs of a Secret the user moved away from.
fn retire_notifier(ctx: &Context, key: &str) {
    let gone = ctx
        .app_notifiers
        .lock()
        .expect("app_notifiers lock")
        .remove(key);
    if let Some((_, notifier)) = gone {
        notifier.retire();
    }
}

/// The channels of the notify Secret `name`'s `data`, by key, whether it
/// asks for every weight step, and its problems; `last`: the channels the
/// Secret gave before, by key.
///
/// The keys: a service's name (`slack`, `teams` or `msteams`, `discord`,
/// `rocket`, `gchat`, `webhook`) holding its URL; `steps: "true"`; and
/// those of a Flagger `AlertProvider` Secret, so one can be named as it
/// is: `address`, the URL, its service the key `type` (the provider's
/// `spec.type`, which lives on the AlertProvider, not in its Secret) or,
/// without one, told from a well-known host (Slack's, Teams', Discord's,
/// Google Chat's); and `token`, which Flagger sends with Slack's notes
/// only, for Slack's Web API (`https://slack.com/api/chat.postMessage`):
/// with it the notes name the Slack channel (key `channel`, else
/// `general`, as Flagger's default) and the name to post as (key
/// `username`, else `Sluice`). A `token`, `channel` or `username` that
/// would not be sent (another service, or no token) is reported as not
/// used; the address is used without it.
///
/// A key whose value gives no channel (not UTF-8, no http(s) URL, an
/// unknown `type`...) is left out; if it gave one before, that channel
/// is retired (what its queue holds is dropped and counted): a value
/// changed to a bad one never leaves its notes going to the old URL, which
/// a rotation often means to abandon (it leaked). The reading is a pure
/// function of the values, so a value unchanged gives the same channel
/// again: nothing older ever stands in for it.
fn read_channels(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    last: &BTreeMap<String, crate::notify::Channel>,
) -> (
    BTreeMap<String, crate::notify::Channel>,
    bool,
    Vec<SecretProblem>,
) {
    use crate::notify::{Channel, Service};
    let what = |k: &str| format!("annotation {}: Secret {name} key {k}", annotations::NOTIFY);
    fn utf8(what: String, v: &[u8]) -> Result<&str, String> {
        std::str::from_utf8(v)
            .map(str::trim)
            .map_err(|_| format!("{what}: not UTF-8"))
    }
    let text = |k: &str, v| utf8(what(k), v);
    let mut problems = Vec::new();
    let mut channels = BTreeMap::new();
    let steps = data.get("steps").is_some_and(|v| v.trim_ascii() == b"true");
    let flagger = |k: &str| matches!(k, "type" | "token" | "channel" | "username");
    // The Flagger keys that go with `address` but would not be sent.
    type NotSent = Vec<(&'static str, &'static str)>;
    let mut unused: Vec<(&str, &'static str)> = Vec::new();
    for (k, v) in data.iter().filter(|(k, _)| *k != "steps" && !flagger(k)) {
        let channel = if k == "address" {
            let address = |url: &str| -> Result<(Channel, NotSent), String> {
                let service = match data.get("type") {
                    Some(t) => Service::parse(text("type", t)?)
                        .map_err(|e| format!("{}: {e}", what("type")))?,
                    None => Service::of_address(url).ok_or_else(|| {
                        format!(
                            "{}: its service is not told by the URL's host; add a key `type` naming it (slack, msteams, discord, rocket, gchat or webhook), as the AlertProvider's spec.type does",
                            what(k)
                        )
                    })?,
                };
                let channel = Channel::from_url(service, url, &what(k))?;
                let mut unused = Vec::new();
                let Some(token) = data.get("token") else {
                    for k in ["channel", "username"]
                        .into_iter()
                        .filter(|k| data.contains_key(*k))
                    {
                        unused.push((k, "is sent only with a key `token` (Slack's Web API takes a channel and a name to post as; an incoming webhook posts where it was made for)"));
                    }
                    return Ok((channel, unused));
                };
                if service != Service::Slack {
                    for k in ["token", "channel", "username"]
                        .into_iter()
                        .filter(|k| data.contains_key(*k))
                    {
                        unused.push((k, "is sent with Slack's notes only (for Slack's Web API, as Flagger sends it), and `address` is not a Slack channel"));
                    }
                    return Ok((channel, unused));
                }
                let token = text("token", token)?;
                if http::HeaderValue::from_str(token).is_err() || token.is_empty() {
                    return Err(format!(
                        "{}: empty, or holds a byte a header value may not",
                        what("token")
                    ));
                }
                let named = |key: &str, default: &str| -> Result<String, String> {
                    match data.get(key) {
                        None => Ok(default.to_string()),
                        Some(v) => match text(key, v)? {
                            "" => Err(format!("{}: empty", what(key))),
                            given => Ok(given.to_string()),
                        },
                    }
                };
                let channel = channel.with_slack_token(
                    crate::http::Secret::from_value(token),
                    &named("channel", crate::notify::SLACK_CHANNEL)?,
                    &named("username", crate::notify::USERNAME)?,
                )?;
                Ok((channel, unused))
            };
            text(k, v).and_then(address).map(|(channel, not_sent)| {
                unused.extend(not_sent);
                channel
            })
        } else {
            Service::parse(k)
                .map_err(|e| format!("{}: `{k}` is {e}", what(k)))
                .and_then(|service| Channel::from_url(service, text(k, v)?, &what(k)))
        };
        match channel {
            Ok(channel) => {
                channels.insert(k.clone(), channel);
            }
            Err(e) if last.contains_key(k) => problems.push(SecretProblem::new(
                e,
                "that channel is stopped until it is fixed: the notes it held are dropped (counted in sluice_notifications_dropped_total), and nothing more goes to its old URL",
            )),
            Err(e) => problems.push(SecretProblem::new(
                e,
                "that channel is left out until it is fixed, and the others are used",
            )),
        }
    }
    if !data.contains_key("address") {
        for k in data.keys().filter(|k| flagger(k)) {
            unused.push((
                k.as_str(),
                "goes with a key `address` (as in a Flagger AlertProvider Secret), which the Secret does not have",
            ));
        }
    }
    for (k, why) in unused {
        problems.push(SecretProblem::new(
            format!("{}: {why}", what(k)),
            "it is not used",
        ));
    }
    (channels, steps, problems)
}

/// Publishes each of an app's Secret `problems` as a Warning Event once,
/// until it is gone (then it is reported again should it come back).
pub(super) async fn report_secret_problems(
    ctx: &Context,
    d: &k8s_openapi::api::apps::v1::Deployment,
    key: &str,
    problems: Vec<SecretProblem>,
) {
    let fresh: Vec<SecretProblem> = {
        let mut all = ctx.app_secrets.lock().expect("app_secrets lock");
        let state = all.entry(key.to_string()).or_default();
        let now: std::collections::BTreeSet<SecretProblem> = problems.into_iter().collect();
        let fresh = now.difference(&state.reported).cloned().collect();
        state.reported = now;
        fresh
    };
    for problem in fresh {
        super::api::publish(
            ctx,
            d,
            kube::runtime::events::EventType::Warning,
            "InvalidConfig",
            problem.to_string(),
        )
        .await;
    }
}

/// What an app's annotations said before its ConfigMaps were read, and
/// the settings as completed from them: kept per app (see
/// [`load_configmaps`]).
pub(super) type Loaded = (Settings, Settings);

/// Reads the checks and webhooks ConfigMaps and the metrics template the
/// annotations name, each on its own, and gives the problems found. A
/// source that cannot be read (missing, invalid) takes what `last` read
/// from the same ConfigMap, if it did; the second value says whether
/// every problem was covered so.
pub(super) async fn load_configmaps(
    ctx: &Context,
    ns: &str,
    settings: &mut Settings,
    last: Option<&Loaded>,
) -> (Vec<String>, bool) {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let annotated = settings.clone();
    let mut problems = Vec::new();
    let mut covered = true;
    if let Some(name) = &annotated.checks_configmap {
        match read_checks(&cms, name, &annotated).await {
            Ok(queries) => settings.plan.queries = queries,
            Err(e) => {
                problems.push(e);
                match last {
                    Some((was, loaded)) if was.checks_configmap == annotated.checks_configmap => {
                        settings.plan.queries = loaded.plan.queries.clone();
                    }
                    _ => covered = false,
                }
            }
        }
    }
    if let crate::provider::MetricsTemplate::ConfigMap { name, key } = &annotated.metrics_template {
        let read = async {
            let text = configmap_key(&cms, name, key, annotations::METRICS_TEMPLATE).await?;
            crate::provider::SeriesTemplate::parse(
                &text,
                &format!(
                    "annotation {}: ConfigMap {name} key {key}",
                    annotations::METRICS_TEMPLATE
                ),
            )
        };
        match read.await {
            Ok(template) => {
                settings.metrics_template = crate::provider::MetricsTemplate::Custom(template);
            }
            Err(e) => {
                problems.push(e);
                match last {
                    Some((was, loaded)) if was.metrics_template == annotated.metrics_template => {
                        settings.metrics_template = loaded.metrics_template.clone();
                    }
                    _ => covered = false,
                }
            }
        }
    }
    if let Some(name) = &annotated.webhooks_configmap {
        let read = async {
            let text = configmap_key(&cms, name, "webhooks.yaml", annotations::WEBHOOKS).await?;
            crate::plan::parse_webhooks(
                &text,
                &format!(
                    "annotation {}: ConfigMap {name} key webhooks.yaml",
                    annotations::WEBHOOKS
                ),
            )
        };
        match read.await {
            Ok(webhooks) => settings.plan.webhooks = webhooks,
            Err(e) => {
                problems.push(e);
                match last {
                    Some((was, loaded))
                        if was.webhooks_configmap == annotated.webhooks_configmap =>
                    {
                        settings.plan.webhooks = loaded.plan.webhooks.clone();
                    }
                    _ => covered = false,
                }
            }
        }
    }
    (problems, covered)
}

/// The checks of ConfigMap `name`, as `settings` can run them.
async fn read_checks(
    cms: &Api<ConfigMap>,
    name: &str,
    settings: &Settings,
) -> Result<Vec<crate::plan::QueryCheck>, String> {
    let text = configmap_key(cms, name, "checks.yaml", annotations::CHECKS).await?;
    let queries = crate::plan::parse_checks(
        &text,
        &format!(
            "annotation {}: ConfigMap {name} key checks.yaml",
            annotations::CHECKS
        ),
    )?;
    if settings.metrics != annotations::MetricsSource::Prometheus
        && let Some(c) = queries.iter().find(|c| !crate::external::is_external(c))
    {
        return Err(format!(
            "annotation {}: ConfigMap {name}: check `{}` is PromQL and needs the prometheus provider (set sluice.dev/metrics: prometheus and run the operator with --prometheus-url), or give it provider: web or datadog",
            annotations::CHECKS,
            c.name
        ));
    }
    Ok(queries)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Service;

    fn secret(keys: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        keys.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A Flagger `AlertProvider` Secret named as it is: its `address` is a
    /// channel, its service told by `type` or by a well-known host; the
    /// `token` goes with it; nothing is reported.
    #[test]
    fn a_flagger_alert_provider_secrets_address_is_a_channel() {
        for (keys, service) in [
            (
                &[("address", "https://hooks.slack.com/services/T1/B1/x")][..],
                Service::Slack,
            ),
            (
                &[("address", "https://acme.webhook.office.com/webhookb2/x")][..],
                Service::Teams,
            ),
            (
                &[
                    ("address", "https://chat.acme.example/hooks/abc"),
                    ("type", "rocket"),
                ][..],
                Service::Rocket,
            ),
            (
                &[
                    ("address", "https://slack.com/api/chat.postMessage"),
                    ("token", "xoxb-t0ken"),
                    ("channel", "deploys"),
                ][..],
                Service::Slack,
            ),
            (
                &[
                    ("address", "https://hooks.slack.com/services/T1/B1/x"),
                    ("type", "msteams"),
                ][..],
                Service::Teams,
            ),
        ] {
            let (channels, steps, problems) =
                read_channels("alerts", &secret(keys), &BTreeMap::new());
            assert_eq!(problems, [], "{keys:?}");
            assert!(!steps);
            let services: Vec<_> = channels
                .iter()
                .map(|(k, c)| (k.as_str(), c.service))
                .collect();
            assert_eq!(services, [("address", service)], "{keys:?}");
        }
    }

    /// An `address` whose service neither `type` nor its host tells is
    /// left out with a problem that says to add `type`; a `type` or
    /// `token` without an `address` is reported as not used.
    #[test]
    fn an_address_of_an_unknown_service_asks_for_its_type() {
        let (channels, _, problems) = read_channels(
            "alerts",
            &secret(&[("address", "https://chat.acme.example/hooks/abc")]),
            &BTreeMap::new(),
        );
        assert!(channels.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].problem.contains("key address") && problems[0].problem.contains("`type`"),
            "{}",
            problems[0]
        );
        assert!(!problems[0].to_string().contains("acme"), "{}", problems[0]);
        let (channels, _, problems) = read_channels(
            "alerts",
            &secret(&[("slack", "https://hooks.slack.com/x"), ("token", "t")]),
            &BTreeMap::new(),
        );
        assert_eq!(channels.len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].problem.contains("key token"), "{}", problems[0]);
    }

    /// Flagger sends a Secret's `token` with Slack's notes only: next to
    /// another service's address it (and `channel`, `username`) is
    /// reported as not used, and the address is used without it; so are
    /// `channel` and `username` next to a Slack address without a token.
    #[test]
    fn a_token_is_for_slack_only_and_is_reported_unused_elsewhere() {
        for keys in [
            &[
                ("address", "https://chat.acme.example/hooks/abc"),
                ("type", "rocket"),
                ("token", "t0ken"),
            ][..],
            &[
                ("address", "https://discord.com/api/webhooks/1/x"),
                ("token", "t0ken"),
                ("channel", "deploys"),
            ][..],
            &[
                ("address", "https://hooks.slack.com/services/T1/B1/x"),
                ("channel", "deploys"),
            ][..],
        ] {
            let (channels, _, problems) = read_channels("alerts", &secret(keys), &BTreeMap::new());
            assert_eq!(channels.len(), 1, "{keys:?}");
            let unused: Vec<&str> = keys[1..]
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| *k != "type")
                .collect();
            assert_eq!(problems.len(), unused.len(), "{keys:?}: {problems:?}");
            for (problem, key) in problems.iter().zip(unused) {
                assert!(
                    problem.problem.contains(&format!("key {key}:"))
                        && problem.meanwhile == "it is not used",
                    "{problem}"
                );
                assert!(!problem.to_string().contains("t0ken"), "{problem}");
            }
        }
    }

    /// A key whose value changed to one that gives no channel (a mistyped
    /// URL, an unknown `type`, a bad `token`) is not kept on its old URL:
    /// the channel is gone from the set (its notifier lane is retired,
    /// its queue dropped and counted) and the Warning says so, never
    /// echoing the value.
    #[test]
    fn a_value_changed_to_a_bad_one_stops_its_channel() {
        let good = secret(&[
            ("slack", "https://hooks.slack.com/services/T1/B1/old"),
            ("address", "https://slack.com/api/chat.postMessage"),
            ("token", "xoxb-old"),
        ]);
        let (last, _, problems) = read_channels("alerts", &good, &BTreeMap::new());
        assert_eq!(problems, []);
        assert_eq!(last.len(), 2);
        for (changed, key) in [
            (("slack", "hooks.slack.com/services/T1/B1/new"), "slack"),
            (
                ("type", "https://hooks.slack.com/services/T1/B1/new"),
                "address",
            ),
            (("token", "xoxb-new\n2"), "address"),
        ] {
            let mut data = good.clone();
            data.insert(changed.0.to_string(), changed.1.as_bytes().to_vec());
            let (channels, _, problems) = read_channels("alerts", &data, &last);
            assert!(!channels.contains_key(key), "{changed:?} kept {key}");
            assert_eq!(channels.len(), 1, "{changed:?}");
            assert_eq!(problems.len(), 1, "{changed:?}: {problems:?}");
            let said = problems[0].to_string();
            assert!(said.contains("dropped") && !said.contains("new"), "{said}");
        }
    }
}
