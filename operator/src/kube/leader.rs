//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas are safe: only the holder reconciles.
//!
//! The rules, as client-go's leader election has them:
//!
//! - **Expiry is measured on this replica's clock.** A candidate notes when
//!   it first saw the lease record as it is now (holder, renew time,
//!   resourceVersion); it takes the lease only once that record has not
//!   changed for `lease_duration` by its own monotonic clock. Another
//!   node's `renewTime` is never compared with this node's wall clock, so
//!   clock skew cannot make a live leader look expired.
//! - **The leader stops before its lease can expire.** It renews every
//!   `retry_period`; every renewal must finish within `renew_deadline`
//!   (shorter than `lease_duration`) of the last successful one, or the
//!   leader steps down: its work is dropped, in-flight API calls included,
//!   before any other replica can have taken over.
//! - **A hung API call cannot keep a deposed leader acting**: each attempt
//!   is bounded by the time left until the renew deadline.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease record must stay unchanged before a candidate takes it.
    pub lease_duration: Duration,
    /// How long a leader may go without a successful renewal before it
    /// steps down; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: "sluice-operator".into(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timings: renew deadline below the lease duration, retry
    /// period below the renew deadline.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// One replica's view of the lease.
pub struct Elector {
    cfg: LeaderConfig,
    /// The lease record last seen, and when (this replica's clock).
    observed: Option<(String, Instant)>,
}

/// What identifies a lease record: any renewal changes it.
fn record_key(lease: &Lease) -> String {
    let spec = lease.spec.clone().unwrap_or_default();
    format!(
        "{}|{}|{}|{}",
        spec.holder_identity.unwrap_or_default(),
        spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
        spec.lease_transitions.unwrap_or(0),
        lease.metadata.resource_version.clone().unwrap_or_default()
    )
}

impl Elector {
    pub fn new(cfg: LeaderConfig) -> Self {
        Self {
            cfg,
            observed: None,
        }
    }

    /// Takes or renews the lease; Ok(true) when this replica holds it now.
    pub async fn try_acquire_or_renew(
        &mut self,
        client: &kube::Client,
    ) -> Result<bool, kube::Error> {
        let cfg = &self.cfg;
        let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        let now = Timestamp::now();
        let duration_secs = cfg.lease_duration.as_secs().max(1) as i32;
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
        let key = record_key(&lease);
        let seen_at = match &self.observed {
            Some((k, at)) if *k == key => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((key, at));
                at
            }
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
        let vacant = current.holder_identity.as_deref().is_none_or(str::is_empty);
        let held_for = Duration::from_secs(
            current
                .lease_duration_seconds
                .map(|s| s.max(1) as u64)
                .unwrap_or(cfg.lease_duration.as_secs()),
        );
        let expired = seen_at.elapsed() >= held_for;
        if !ours && !vacant && !expired {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
        let acquired = if ours {
            current.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(spec(transitions, acquired));
        // The replace carries the resourceVersion read above: if anyone
        // wrote the lease meanwhile, it fails with 409 and nothing changes.
        match api.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observed = Some((record_key(&written), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One attempt with a fresh view (tests and tools): Ok(true) when `cfg`'s
/// identity holds the lease afterwards. A fresh view has never seen the
/// record, so it takes only a vacant lease or renews its own.
pub async fn try_acquire(client: &kube::Client, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    Elector::new(cfg.clone()).try_acquire_or_renew(client).await
}

/// Waits until this replica leads, then runs `work` while it keeps leading.
/// Returns when `work` ends or leadership is lost; `work` is dropped (its
/// in-flight API calls with it) before the lease can expire.
pub async fn run_as_leader<F: std::future::Future<Output = ()>>(
    client: kube::Client,
    cfg: LeaderConfig,
    work: F,
) {
    if let Err(e) = cfg.validate() {
        tracing::error!(error = %e, "leader election misconfigured; not leading");
        return;
    }
    let mut elector = Elector::new(cfg.clone());
    loop {
        let attempt =
            tokio::time::timeout(cfg.renew_deadline, elector.try_acquire_or_renew(&client));
        match attempt.await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {
                tracing::debug!(identity = %cfg.identity, "another replica leads; waiting")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the leader lease"),
            Err(_) => tracing::warn!("the leader lease request timed out"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
    tracing::info!(identity = %cfg.identity, "leading");
    let renew = async {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            let deadline = last_ok + cfg.renew_deadline;
            match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew(&client)).await {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => return,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => return,
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = renew => tracing::warn!(identity = %cfg.identity, "leadership lost or not renewed within the renew deadline; stopping"),
    }
}
