//! `kubectl sluice`: look at and steer canaried Deployments.
//!
//! It reads the status Sluice keeps on `<name>-primary` and steers a release
//! by setting the annotation `sluice.dev/command` there (`approve`,
//! `promote-full`, `abort`, `retry`), which the operator consumes on its next
//! reconcile. It uses the kubeconfig like kubectl does (`KUBECONFIG`, the
//! current context and its namespace).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::KubeStatus;
use super::annotations;
use super::objects::primary_name;
use crate::analysis::Outcome;
use crate::view::weight_bar;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    /// A conditional write lost to another writer (retried before it is
    /// said).
    #[error("{0}")]
    Conflict(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Tries of a command's conditional write (see `Plugin::command`).
const COMMAND_ATTEMPTS: u32 = 5;

/// Runs `attempt` until it does not lose to another writer, at most
/// [`COMMAND_ATTEMPTS`] times, 20 ms apart and doubling; a last conflict
/// is the user's to act on (exit 2).
async fn retry_on_conflict<F, Fut>(mut attempt: F) -> Result<(), PluginError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PluginError>>,
{
    let mut pause = std::time::Duration::from_millis(20);
    for _ in 1..COMMAND_ATTEMPTS {
        match attempt().await {
            Err(PluginError::Conflict(_)) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            done => return done,
        }
    }
    attempt().await.map_err(|e| match e {
        PluginError::Conflict(message) => PluginError::Usage(message),
        other => other,
    })
}

impl PluginError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PluginError::Usage(_) | PluginError::NotFound(_) | PluginError::Conflict(_) => {
                ExitCode::from(2)
            }
            PluginError::Kube(_) => ExitCode::from(4),
        }
    }
}

pub struct Plugin {
    pub client: kube::Client,
    pub namespace: String,
}

/// A canaried Deployment and its status (None before the operator saw it).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub namespace: String,
    pub name: String,
    pub status: Option<KubeStatus>,
    pub age: String,
    /// The user's Deployment's `metadata.generation`.
    pub generation: i64,
}

fn age(since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = since else { return "-".into() };
    let secs = k8s_openapi::jiff::Timestamp::now()
        .duration_since(t.0)
        .as_secs()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

impl Plugin {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Every Deployment in the namespace that opted in.
    pub async fn releases(&self) -> Result<Vec<Release>, PluginError> {
        self.list(self.deployments()).await
    }

    /// Every Deployment that opted in, in every namespace the user may
    /// list (`-A`).
    pub async fn releases_everywhere(&self) -> Result<Vec<Release>, PluginError> {
        self.list(Api::all(self.client.clone())).await
    }

    /// Resolves when a Deployment in the namespace (every namespace: `all`)
    /// changes, as the API server's watch reports it; `Ok(false)` when the
    /// watch ended. The first call waits for the watch's initial list.
    pub fn changes(
        &self,
        all: bool,
    ) -> impl futures::Stream<Item = Result<(), PluginError>> + Send + 'static {
        use futures::StreamExt;
        let api: Api<Deployment> = if all {
            Api::all(self.client.clone())
        } else {
            self.deployments()
        };
        kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).filter_map(
            |event| async move {
                use kube::runtime::watcher::Event;
                match event {
                    Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => Some(Ok(())),
                    Ok(Event::Init | Event::InitApply(_)) => None,
                    Err(e) => Some(Err(PluginError::Usage(format!("the watch failed: {e}")))),
                }
            },
        )
    }

    async fn list(&self, api: Api<Deployment>) -> Result<Vec<Release>, PluginError> {
        let all = api.list(&ListParams::default()).await?.items;
        let mut out = Vec::new();
        // Opted in, or managed already (a primary) with a mistyped value.
        let managed = |d: &Deployment| {
            all.iter().any(|p| {
                p.name_any() == primary_name(&d.name_any()) && p.namespace() == d.namespace()
            })
        };
        for d in all.iter().filter(|d| {
            annotations::enabled(d.annotations())
                || (annotations::present(d.annotations()) && managed(d))
        }) {
            let name = d.name_any();
            let namespace = d.namespace().unwrap_or_default();
            let primary = all.iter().find(|p| {
                p.name_any() == primary_name(&name)
                    && p.namespace().unwrap_or_default() == namespace
            });
            out.push(Release {
                status: primary.and_then(KubeStatus::from_primary),
                age: age(d.metadata.creation_timestamp.as_ref()),
                generation: d.metadata.generation.unwrap_or(0),
                namespace,
                name,
            });
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(out)
    }

    /// The release `name`, or an error listing the canaried Deployments.
    pub async fn release(&self, name: &str) -> Result<Release, PluginError> {
        let mut releases = self.releases().await?;
        match releases.iter().position(|r| r.name == name) {
            Some(i) => Ok(releases.swap_remove(i)),
            None => {
                let names: Vec<&str> = releases.iter().map(|r| r.name.as_str()).collect();
                Err(PluginError::NotFound(format!(
                    "no canaried Deployment `{name}` in namespace {}; canaried here: {}",
                    self.namespace,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )))
            }
        }
    }

    /// The release records of `name` (oldest first), from the ConfigMap
    /// `<name>-sluice-releases` the operator keeps. Only a ConfigMap the
    /// operator made is believed: it must carry the managed-by label and
    /// an owner reference to the Deployment's uid (as the operator's own
    /// `is_ours`); anyone else's ConfigMap of that name is refused, naming
    /// it. Each record's namespace and app are the ConfigMap's namespace
    /// and its owner Deployment, whatever the record's text says.
    pub async fn records(
        &self,
        name: &str,
    ) -> Result<Vec<crate::record::ReleaseRecord>, PluginError> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm_name = crate::record::configmap_name(name);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(cm) = cms.get_opt(&cm_name).await? else {
            return Ok(Vec::new());
        };
        let Some(deployment) = self.deployments().get_opt(name).await? else {
            return Ok(Vec::new());
        };
        let uid = deployment.metadata.uid.unwrap_or_default();
        let object = serde_json::to_value(&cm).unwrap_or_default();
        if uid.is_empty() || !super::objects::is_ours(&object, &uid) {
            return Err(PluginError::Usage(format!(
                "ConfigMap {}/{cm_name} is not Sluice's (it lacks the label {}=sluice or an owner reference to Deployment {name}); its records are not shown",
                self.namespace,
                super::objects::MANAGED_BY
            )));
        }
        let mut all =
            crate::record::from_configmap_data(&cm.data.unwrap_or_default()).map_err(|e| {
                PluginError::Usage(format!("ConfigMap {}/{cm_name}: {e}", self.namespace))
            })?;
        for r in &mut all {
            r.namespace = Some(self.namespace.clone());
            r.app = name.to_string();
        }
        Ok(all)
    }

    /// The status Sluice keeps for `name` (on `<name>-primary`), read with
    /// one GET; none before the operator took the app on.
    pub async fn live_status(&self, name: &str) -> Result<Option<KubeStatus>, PluginError> {
        let primary = self.deployments().get_opt(&primary_name(name)).await?;
        Ok(primary.as_ref().and_then(KubeStatus::from_primary))
    }

    /// Every release record of every canaried Deployment in the namespace.
    /// A records ConfigMap that cannot be believed or read is skipped (and
    /// named in the warning log) rather than hiding every other release.
    pub async fn all_records(&self) -> Result<Vec<crate::record::ReleaseRecord>, PluginError> {
        let mut all = Vec::new();
        for r in self.releases().await? {
            match self.records(&r.name).await {
                Ok(records) => all.extend(records),
                Err(PluginError::Usage(why)) => {
                    tracing::warn!("skipped: {why}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }

    /// The release report of `name` (its latest release, or the latest of
    /// `revision`) as a self-contained HTML document.
    pub async fn report(&self, name: &str, revision: Option<&str>) -> Result<String, PluginError> {
        self.release(name).await?;
        let all = self.records(name).await?;
        if all.is_empty() {
            return Err(PluginError::NotFound(format!(
                "{name} has no recorded release yet (ConfigMap {}/{} is missing or empty)",
                self.namespace,
                crate::record::configmap_name(name)
            )));
        }
        match crate::record::pick(&all, revision) {
            Some(r) => Ok(crate::report_html::report(r)),
            None => Err(PluginError::NotFound(format!(
                "{name} has no recorded release of revision `{}`; recorded: {}",
                revision.unwrap_or_default(),
                all.iter()
                    .map(|r| r.revision.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Leaves `command` for the operator on the primary. A command still
    /// waiting there is never silently replaced: the same one again is a
    /// no-op, `abort` (the safe way out) replaces any other, the two
    /// promotions (`approve`, `promote-full`) replace each other, and any
    /// other change is refused while one waits (an `abort` is never undone
    /// by a later promote). The write is conditional on the version read,
    /// so two people's commands never cross unseen: when the Deployment
    /// changed meanwhile (the operator saves its status there every tick),
    /// it is read again and the rules above applied again, up to
    /// [`COMMAND_ATTEMPTS`] times, as client-go's `RetryOnConflict` does.
    async fn command(&self, name: &str, command: &str) -> Result<(), PluginError> {
        retry_on_conflict(|| self.command_once(name, command)).await
    }

    /// One conditional write of [`Self::command`].
    async fn command_once(&self, name: &str, command: &str) -> Result<(), PluginError> {
        const PROMOTIONS: [&str; 2] = ["approve", "promote-full"];
        let primary = primary_name(name);
        let current = self.deployments().get(&primary).await?;
        let pending = current.annotations().get(annotations::COMMAND);
        match pending.map(String::as_str) {
            Some(p) if p == command => return Ok(()),
            Some(p)
                if command != "abort"
                    && !(PROMOTIONS.contains(&p) && PROMOTIONS.contains(&command)) =>
            {
                return Err(PluginError::Usage(format!(
                    "{name} already has the command `{p}` waiting for the operator (annotation {} on Deployment {}/{primary}); it is carried out first. Run this again once it is taken up, or remove it with: kubectl -n {} annotate deploy {primary} {}-",
                    annotations::COMMAND,
                    self.namespace,
                    self.namespace,
                    annotations::COMMAND
                )));
            }
            _ => {}
        }
        let patch = json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {annotations::COMMAND: command},
        }});
        match self
            .deployments()
            .patch(&primary, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(PluginError::Conflict(format!(
                "Deployment {}/{primary} kept changing while the command was written ({COMMAND_ATTEMPTS} tries: other commands, or the operator saving its status); run it again",
                self.namespace
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn promote(&self, name: &str, full: bool) -> Result<String, PluginError> {
        let r = self.release(name).await?;
        let phase = r.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("-");
        let allowed = if full {
            ["Progressing", "WaitingPromotion"].contains(&phase)
        } else {
            phase == "WaitingPromotion" || phase == "Progressing"
        };
        if !allowed {
            return Err(PluginError::Usage(format!(
                "{name} is {phase}: promote applies to a release in Progressing or WaitingPromotion"
            )));
        }
        self.command(name, if full { "promote-full" } else { "approve" })
            .await?;
        Ok(if full {
            format!("{name}: promotion requested now, skipping the remaining steps")
        } else {
            format!("{name}: promotion approved; it promotes once every step has passed")
        })
    }

    pub async fn abort(&self, name: &str) -> Result<String, PluginError> {
        let r = self.release(name).await?;
        let phase = r
            .status
            .as_ref()
            .map(|s| s.phase.clone())
            .unwrap_or_default();
        // `Initialized` is also a release waiting for its confirm-rollout
        // webhooks (its machine under way), which an abort ends; between
        // releases (taken over, nothing released yet) there is none.
        let releasing = r
            .status
            .as_ref()
            .and_then(|s| s.machine.as_ref())
            .is_some_and(|m| !m.phase.is_terminal());
        if ["Succeeded", "Failed", ""].contains(&phase.as_str())
            || (phase == "Initialized" && !releasing)
        {
            return Err(PluginError::Usage(format!(
                "{name} has no release in progress (phase {})",
                if phase.is_empty() { "-" } else { &phase }
            )));
        }
        self.command(name, "abort").await?;
        Ok(format!("{name}: rollback requested"))
    }

    pub async fn retry(&self, name: &str) -> Result<String, PluginError> {
        let r = self.release(name).await?;
        let failed = r.status.as_ref().and_then(|s| s.failed_revision.clone());
        let Some(revision) = failed else {
            return Err(PluginError::Usage(format!(
                "{name} has no rolled-back revision to retry"
            )));
        };
        self.command(name, "retry").await?;
        Ok(format!(
            "{name}: revision {revision} will be released again"
        ))
    }

    /// The newest Warning Event about Deployment `name`, as `reason: note`
    /// (None without one, or when Events may not be read).
    async fn last_warning(&self, name: &str) -> Option<String> {
        use k8s_openapi::api::events::v1::Event;
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let only = format!("regarding.kind=Deployment,regarding.name={name},type=Warning");
        let listed = events
            .list(&ListParams::default().fields(&only).limit(500))
            .await
            .ok()?;
        let when = |e: &Event| -> String {
            let v = serde_json::to_value(e).unwrap_or_default();
            [
                &v["series"]["lastObservedTime"],
                &v["eventTime"],
                &v["deprecatedLastTimestamp"],
                &v["metadata"]["creationTimestamp"],
            ]
            .into_iter()
            .find_map(|t| t.as_str().map(str::to_string))
            .unwrap_or_default()
        };
        listed
            .items
            .into_iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("Deployment") && r.name.as_deref() == Some(name)
                    })
            })
            .max_by_key(when)
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
    }

    /// 0 succeeded, 1 failed, 3 still in progress when `timeout` runs out
    /// (`None`: wait without limit, as `kubectl rollout status` does).
    ///
    /// A phase counts only once the operator has seen the Deployment's
    /// current generation: right after a `kubectl apply` of a new image the
    /// status still says the previous release `Succeeded`, and CI must not
    /// pass on it.
    pub async fn status(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<(u8, String), PluginError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let r = self.release(name).await?;
            let observed = r.status.as_ref().map_or(0, |s| s.observed_generation);
            let current = observed >= r.generation;
            let (phase, message) = match &r.status {
                // An app the operator refused (a bad annotation or Service)
                // never gets a status: its Warning Event says why.
                None => (
                    "-".to_string(),
                    match self.last_warning(name).await {
                        Some(warning) => format!(
                            "not yet seen by the operator; its last Warning Event: {warning}"
                        ),
                        None => "not yet seen by the operator".to_string(),
                    },
                ),
                Some(s) if !current => (
                    s.phase.clone(),
                    format!(
                        "the operator has not yet seen generation {} of the Deployment (it last saw {observed})",
                        r.generation
                    ),
                ),
                Some(s) => (s.phase.clone(), s.message.clone()),
            };
            let code = match phase.as_str() {
                _ if !current => None,
                "Succeeded" | "Initialized" | "Concluded" => Some(0),
                "Failed" => Some(1),
                _ => None,
            };
            if let Some(c) = code {
                return Ok((c, format!("{name}: {phase}: {message}")));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok((3, format!("{name}: {phase}: {message}")));
            }
            let pause = Duration::from_millis(500);
            tokio::time::sleep(left.map_or(pause, |l| l.min(pause))).await;
        }
    }
}

/// The table of `kubectl sluice get`: the releases, with a NAMESPACE
/// column first when `namespaces` (as `kubectl get -A` prints). TRAFFIC is
/// what `describe` prints beside the strategy (`baseline arm`, `mirror
/// 100%`, `affinity cookie app`, or `-`). Columns are as wide as their
/// widest cell, three spaces apart, as kubectl's are.
pub fn table(releases: &[Release], namespaces: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        [
            "NAME",
            "STRATEGY",
            "PHASE",
            "WEIGHT",
            "STEPS",
            "TRAFFIC",
            "LAST CHECKS",
            "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in releases {
        let mut row = vec![r.name.clone()];
        match &r.status {
            None => row.extend(["-", "Pending", "-", "-", "-", "-"].map(String::from)),
            Some(s) => row.extend([
                strategy_of(s),
                s.phase.clone(),
                format!(
                    "{} {:>5}%",
                    weight_bar(s.canary_weight, 10),
                    s.canary_weight
                ),
                steps_text(s),
                traffic_of(s).to_string(),
                checks_text(s, false),
            ]),
        }
        row.push(r.age.clone());
        rows.push(row);
    }
    if namespaces {
        rows[0].insert(0, "NAMESPACE".into());
        for (row, r) in rows[1..].iter_mut().zip(releases) {
            row.insert(0, r.namespace.clone());
        }
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                // AGE, right-aligned as kubectl's is.
                let _ = write!(line, "{cell:>w$}", w = widths[i]);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The strategy of a status (`canary` for statuses written before
/// strategies existed).
fn strategy_of(s: &KubeStatus) -> String {
    if s.strategy.is_empty() {
        "canary".into()
    } else {
        s.strategy.clone()
    }
}

/// The release's route settings, for people (`-` for statuses written
/// before they were kept).
fn traffic_of(s: &KubeStatus) -> &str {
    if s.traffic.is_empty() {
        "-"
    } else {
        &s.traffic
    }
}

/// Steps with the current one marked: `10,[25],50`.
pub fn steps_text(s: &KubeStatus) -> String {
    s.steps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let w = if w.fract() == 0.0 {
                format!("{w:.0}")
            } else {
                w.to_string()
            };
            if i + 1 == s.step && !["Succeeded", "Failed", "Concluded"].contains(&s.phase.as_str())
            {
                format!("[{w}]")
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn checks_text(s: &KubeStatus, long: bool) -> String {
    if s.last_checks.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = s
        .last_checks
        .iter()
        .map(|c| {
            let mark = match c.outcome {
                Outcome::Pass => "ok",
                Outcome::Fail => "FAIL",
                Outcome::Inconclusive => "?",
            };
            let value = c
                .value
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into());
            if long {
                format!(
                    "{:<14} {:<5} {:>10} (want {}) {}",
                    c.name, mark, value, c.threshold, c.reason
                )
            } else {
                format!("{} {mark}", c.name)
            }
        })
        .collect();
    if long {
        parts.join("\n    ")
    } else {
        parts.join(", ")
    }
}

/// The detail view of one release.
pub fn detail(r: &Release) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.name);
    match &r.status {
        None => {
            let _ = writeln!(
                out,
                "  phase     Pending (the operator has not bootstrapped it yet)"
            );
        }
        Some(s) => {
            let _ = writeln!(out, "  phase     {}   since {}", s.phase, s.last_transition);
            let _ = writeln!(out, "  strategy  {} ({})", strategy_of(s), traffic_of(s));
            let _ = writeln!(
                out,
                "  weight    {} {}%",
                weight_bar(s.canary_weight, 30),
                s.canary_weight
            );
            let _ = writeln!(out, "  steps     {}", steps_text(s));
            let _ = writeln!(out, "  failed    {} checks", s.failed_checks);
            let _ = writeln!(
                out,
                "  revision  {} (primary runs {})",
                s.revision, s.primary_revision
            );
            let _ = writeln!(out, "  checks    {}", checks_text(s, true));
            let _ = writeln!(
                out,
                "  a/b rule  {}  (canary traffic sent by canary_match rules; not judged)",
                crate::view::ab_text(s.last_ab.as_ref())
            );
            let _ = writeln!(out, "  message   {}", s.message);
            if let Some(report) = &s.report {
                for line in report.to_string().lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
    }
    let _ = writeln!(out, "  age       {}", r.age);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A command that loses to the operator's status saves is written
    /// again: it succeeds once a try does not conflict, and only a
    /// conflict on every try reaches the user (as a usage error, exit 2).
    #[tokio::test]
    async fn a_command_is_written_again_after_a_conflict() {
        for (conflicts, ends_well) in [
            (0, true),
            (2, true),
            (COMMAND_ATTEMPTS - 1, true),
            (9, false),
        ] {
            let tries = AtomicU32::new(0);
            let result = retry_on_conflict(|| async {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                if n < conflicts {
                    Err(PluginError::Conflict("changed".into()))
                } else {
                    Ok(())
                }
            })
            .await;
            assert_eq!(
                result.is_ok(),
                ends_well,
                "{conflicts} conflicts: {result:?}"
            );
            let expected = if ends_well {
                conflicts + 1
            } else {
                COMMAND_ATTEMPTS
            };
            assert_eq!(
                tries.load(Ordering::SeqCst),
                expected,
                "{conflicts} conflicts"
            );
            if let Err(e) = result {
                assert!(matches!(e, PluginError::Usage(_)), "{e:?}");
                assert!(e.exit_code() == ExitCode::from(2));
            }
        }
        // Other errors are not retried.
        let tries = AtomicU32::new(0);
        let result = retry_on_conflict(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(PluginError::NotFound("gone".into()))
        })
        .await;
        assert!(matches!(result, Err(PluginError::NotFound(_))));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
