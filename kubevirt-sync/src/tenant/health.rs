//! Whether the tenant's apiserver answers. The leader asks it for `/version` every few seconds;
//! after [`TELL_AFTER`] failed probes in a row the VirtualCluster's `SyncerReady` condition says
//! `TenantUnreachable` (with the last error), and the first answer after that says `Syncing`
//! again. Nothing else changes while the tenant is away: host VMs and pods keep running, the
//! watchers retry on their own and relist when it is back, and every key is reconciled again
//! then (the caches' resync).
//!
//! The decision ([`next`]) is pure; [`run`] probes and writes the condition.

use std::sync::Weak;
use std::time::Duration;

use kvtenant_api::labels::{REASON_SYNCING, REASON_TENANT_UNREACHABLE};

use super::Tenant;

/// Time between probes.
pub const PROBE_EVERY: Duration = Duration::from_secs(3);
/// A probe without an answer within this long failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed probes in a row before the condition says so.
pub const TELL_AFTER: u32 = 2;
/// The `SyncerReady` message of a tenant being synced.
pub const SYNCING_MESSAGE: &str = "KubeVirt CRDs mirrored; syncing";

/// What the probes have seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Failed probes in a row.
    pub failures: u32,
    /// Whether the condition says unreachable now.
    pub told: bool,
}

/// A change of the condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tell {
    /// `SyncerReady` False, `TenantUnreachable`, with this message.
    Unreachable(String),
    /// `SyncerReady` True, `Syncing`.
    Reachable,
}

/// The health after one probe, and the condition change it calls for.
pub fn next(h: &Health, probe: Result<(), String>) -> (Health, Option<Tell>) {
    match probe {
        Ok(()) => (Health::default(), h.told.then_some(Tell::Reachable)),
        Err(e) => {
            let failures = h.failures.saturating_add(1);
            let tell = (!h.told && failures >= TELL_AFTER).then(|| {
                Tell::Unreachable(format!(
                    "the tenant apiserver did not answer {failures} probes in a row ({e}); host \
                     VMs and pods keep running, syncing resumes when it answers"
                ))
            });
            let told = h.told || tell.is_some();
            (Health { failures, told }, tell)
        }
    }
}

/// Probes the tenant until it is dropped.
pub(super) async fn run(tenant: Weak<Tenant>) {
    let mut health = Health::default();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(t) = tenant.upgrade() else { return };
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, t.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        let (h, tell) = next(&health, probe);
        health = h;
        // written whatever the started copy's status said (it may be stale)
        let mut vc = t.virtual_cluster.clone();
        vc.status = None;
        match tell {
            Some(Tell::Unreachable(message)) => {
                tracing::warn!(vc = %t.label, %message, "tenant unreachable");
                crate::virtualclusters::set_condition(
                    &t.host.client,
                    &vc,
                    false,
                    REASON_TENANT_UNREACHABLE,
                    &message,
                )
                .await;
            }
            Some(Tell::Reachable) => {
                tracing::info!(vc = %t.label, "tenant reachable again");
                crate::virtualclusters::set_condition(
                    &t.host.client,
                    &vc,
                    true,
                    REASON_SYNCING,
                    SYNCING_MESSAGE,
                )
                .await;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_changes_after_two_failures_and_at_the_first_answer() {
        let h = Health::default();
        let (h, tell) = next(&h, Ok(()));
        assert_eq!((h.clone(), tell), (Health::default(), None));
        let (h, tell) = next(&h, Err("connection refused".into()));
        assert_eq!(tell, None, "one failure is not enough");
        let (h, tell) = next(&h, Err("connection refused".into()));
        match tell {
            Some(Tell::Unreachable(m)) => {
                assert!(
                    m.contains("connection refused") && m.contains("2 probes"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // told once
        let (h, tell) = next(&h, Err("connection refused".into()));
        assert_eq!(tell, None);
        assert_eq!(h.failures, 3);
        let (h, tell) = next(&h, Ok(()));
        assert_eq!(tell, Some(Tell::Reachable));
        assert_eq!(h, Health::default());
        // a failure between answers tells nothing
        let (h, _) = next(&h, Err("timeout".into()));
        let (_, tell) = next(&h, Ok(()));
        assert_eq!(tell, None);
    }
}
