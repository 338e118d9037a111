//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics. Used by the
//! controller (only the holder reconciles) and the syncer (only the holder syncs; every replica
//! serves the proxies and the webhooks).
//!
//! Why not a crate: `kube-lease-manager` (the maintained one, compatible with kube 5) keeps
//! reporting leadership while it cannot reach the apiserver, so a partitioned leader would go on
//! reconciling after another instance took over. This elector steps down when it has not
//! renewed for `renew_deadline` (shorter than `lease_duration`), like client-go.
//!
//! - A candidate takes the Lease when it has no holder, or when the holder's record has not
//!   changed for `lease_duration` *as observed locally* (no reliance on synchronized clocks).
//! - Updates use the Lease's resourceVersion (optimistic concurrency): two candidates cannot
//!   both win.
//! - On shutdown the holder clears `holderIdentity`, so another instance takes over at once;
//!   after a crash it takes over once the lease duration has passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (must exist).
    pub lease_namespace: String,
    /// This instance's identity (unique among instances; e.g. the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// The holder steps down when it could not renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// Interval between acquire/renew attempts.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        lease_namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            lease_name: lease_name.into(),
            lease_namespace: lease_namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of one acquire/renew attempt.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the elector last saw of the Lease, and when it saw it change.
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Instant,
}

/// A Lease-based leader elector. [`LeaderElector::run`] keeps trying to acquire or renew;
/// [`LeaderElector::subscribe`] tells whether this instance leads.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Mutex<Observed>,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    crate::classify(e) == crate::ApiErrorClass::Conflict
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaderElectionConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.lease_namespace),
            observed: Mutex::new(Observed {
                record: None,
                at: Instant::now(),
            }),
            leading: watch::channel(false).0,
            config,
        }
    }

    /// Whether this instance leads, now and on every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Whether this instance leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            namespace: self.config.lease_namespace.clone(),
            name: self.config.lease_name.clone(),
            source,
        }
    }

    fn spec(&self, acquire_time: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire_time.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew the Lease. `Ok(true)`: this instance holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let me = &self.config.identity;
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.lease_name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.config.lease_duration);
        {
            let mut observed = self.observed.lock().await;
            if observed.record.as_ref() != Some(&record) {
                observed.record = Some(record);
                observed.at = Instant::now();
            }
            if let Some(h) = &holder
                && h != me
                && observed.at.elapsed() < duration
            {
                return Ok(false);
            }
        }
        let (acquire, transitions) = if holder.as_deref() == Some(me.as_str()) {
            (spec.acquire_time, spec.lease_transitions.unwrap_or(0))
        } else {
            (None, spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec(acquire, transitions));
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up if this instance holds it (clears the holder, so another instance
    /// takes over without waiting for the lease to expire).
    pub async fn release(&self) -> Result<(), LeaderError> {
        let _ = self.leading.send(false);
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.lease_name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Acquires and renews the Lease until `stop` is cancelled, then releases it. Steps down
    /// (publishes `false`) when another instance holds it or when renewing failed for
    /// `renew_deadline`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => break,
                r = tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()) => r,
            };
            let leading = self.is_leader();
            match attempt {
                Ok(Ok(true)) => {
                    last_renew = Some(Instant::now());
                    if !leading {
                        tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "acquired the lease: leading");
                        let _ = self.leading.send(true);
                    }
                }
                Ok(Ok(false)) => {
                    if leading {
                        tracing::warn!(identity = %self.config.identity, "another instance holds the lease: stepping down");
                        let _ = self.leading.send(false);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "acquiring or renewing the lease failed");
                    self.step_down_if_stale(last_renew);
                }
                Err(_) => {
                    tracing::warn!("acquiring or renewing the lease timed out");
                    self.step_down_if_stale(last_renew);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "releasing the lease failed; it expires on its own");
        }
    }

    fn step_down_if_stale(&self, last_renew: Option<Instant>) {
        if self.is_leader() && last_renew.is_none_or(|t| t.elapsed() >= self.config.renew_deadline)
        {
            tracing::warn!(identity = %self.config.identity, "could not renew the lease within the renew deadline: stepping down");
            let _ = self.leading.send(false);
        }
    }
}
