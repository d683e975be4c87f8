//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas are safe: only the holder reconciles. The holder renews every
//! `renew_every`; another replica takes over once `lease_duration` passes
//! without a renewal. A holder that cannot renew stops reconciling.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: "sluice-operator".into(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Takes or renews the lease; Ok(true) when we hold it now.
pub async fn try_acquire(client: &kube::Client, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let duration_secs = cfg.lease_duration.as_secs() as i32;
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let ours = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let held_for = SignedDuration::from_secs(i64::from(
        current.lease_duration_seconds.unwrap_or(duration_secs),
    ));
    let expired = current.renew_time.as_ref().is_none_or(|t| {
        t.0.saturating_add(held_for)
            .map(|end| end < now)
            .unwrap_or(true)
    }) || current.holder_identity.is_none();
    if !ours && !expired {
        return Ok(false);
    }
    let transitions = current.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
    let acquired = if ours {
        current.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(spec(transitions, acquired));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica leads, then runs `work` while it keeps leading.
/// Returns when `work` ends or leadership is lost.
pub async fn run_as_leader<F: std::future::Future<Output = ()>>(
    client: kube::Client,
    cfg: LeaderConfig,
    work: F,
) {
    loop {
        match try_acquire(&client, &cfg).await {
            Ok(true) => break,
            Ok(false) => {
                tracing::debug!(identity = %cfg.identity, "another replica leads; waiting")
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
    tracing::info!(identity = %cfg.identity, "leading");
    let renew = async {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(cfg.renew_every).await;
            match try_acquire(&client, &cfg).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    if last_ok.elapsed() >= cfg.lease_duration {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = renew => tracing::warn!(identity = %cfg.identity, "leadership lost; stopping"),
    }
}
