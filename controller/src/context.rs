//! The reconciler's shared state and configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::leader::LeaderElectionConfig;
use crate::metrics::Metrics;

/// The controller's name in Events, and the default lease name.
pub const CONTROLLER_NAME: &str = "kvtenant-controller";

/// Configuration of the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch VirtualClusters (and their Secrets, StatefulSets, Services) in this namespace only;
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    /// Leader election; `None` runs without (a single instance only).
    pub leader_election: Option<LeaderElectionConfig>,
    /// This instance's name in Events (`reportingInstance`), e.g. the pod name.
    pub instance: String,
    /// Retry delay when a tenant apiserver cannot be reached.
    pub unreachable_retry: Duration,
    /// Poll interval while a Managed control plane is provisioning.
    pub provisioning_poll: Duration,
    /// Re-check interval of a Ready virtual cluster.
    pub resync: Duration,
    /// Timeout of each request to a tenant apiserver.
    pub probe_timeout: Duration,
    /// Certificates are renewed when they expire within this time.
    pub renew_before: Duration,
    /// `(namespace, name)` of the Secret with the CA of kvtenant's kubelet proxy (key `ca.crt`;
    /// the syncer keeps it): Managed apiservers verify the kubelet proxy's serving certificate
    /// against it (`--kubelet-certificate-authority`). `None`: they do not verify it.
    pub kubelet_ca_secret: Option<(String, String)>,
    /// How a member's peer URL is written into etcd's membership when an Etcd control plane
    /// grows from one member to three. As rendered (the headless Service's per-pod DNS name) by
    /// default.
    pub etcd_peer_urls: PeerUrls,
}

/// Maps a member's peer URL as rendered to the one etcd's membership gets. The rendered name
/// everywhere cluster DNS resolves it; testenv's runner, which has no cluster DNS, gives the
/// loopback port it gave that member, as it does in the pods' command lines.
#[derive(Clone)]
pub struct PeerUrls(pub Arc<dyn Fn(&str) -> String + Send + Sync>);

impl PeerUrls {
    pub fn map(&self, url: &str) -> String {
        (self.0)(url)
    }
}

impl Default for PeerUrls {
    fn default() -> Self {
        Self(Arc::new(str::to_owned))
    }
}

impl std::fmt::Debug for PeerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerUrls")
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            leader_election: None,
            instance: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| CONTROLLER_NAME.to_owned()),
            unreachable_retry: Duration::from_secs(30),
            provisioning_poll: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(10),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            kubelet_ca_secret: None,
            etcd_peer_urls: PeerUrls::default(),
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// Host cluster client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: ControllerConfig,
    /// Consecutive transient failures per VirtualCluster uid (for the backoff).
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client` (the host cluster).
    pub fn new(client: Client, config: ControllerConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance: Some(config.instance.clone()),
            },
        );
        Arc::new(Self {
            client,
            recorder,
            metrics,
            config,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Records one more consecutive failure for `uid`; returns the count before it.
    pub(crate) fn note_failure(&self, uid: &str) -> u32 {
        match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(uid.to_owned()).or_insert(0);
                let before = *n;
                *n = n.saturating_add(1);
                before
            }
            Err(_) => 0,
        }
    }

    /// Consecutive failures recorded for `uid`.
    pub(crate) fn failures_of(&self, uid: &str) -> u32 {
        self.failures
            .lock()
            .ok()
            .and_then(|m| m.get(uid).copied())
            .unwrap_or(0)
    }

    /// Forgets the failures of `uid` (after a successful reconciliation).
    pub(crate) fn note_success(&self, uid: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(uid);
        }
    }
}
