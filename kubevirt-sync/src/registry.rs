//! The running tenants, by VirtualCluster uid. The registry owns them; nothing else holds a
//! tenant for longer than one reconcile, so removing a tenant here stops it (its watchers end
//! when it is dropped).
//!
//! The proxy and the webhooks see tenants only through [`Tenants`]: a [`TenantHandle`] per
//! served tenant (its identity, spec and client), the host client and the host namespace
//! owners, from the [`Directory`] every replica keeps. They never reach the syncer's internals.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use kube::Client;
use kvtenant_api::labels::HostNamespaceOwner;

use crate::directory::Directory;
use crate::host::KubeletEndpoint;
use crate::tenant::Tenant;
pub use crate::tenant::TenantHandle;

/// The running tenants.
#[derive(Default)]
pub struct Registry {
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
}

impl Registry {
    pub fn get(&self, uid: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().ok()?.get(uid).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.tenants
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn insert(&self, tenant: Arc<Tenant>) {
        if let Ok(mut m) = self.tenants.write() {
            m.insert(tenant.vc.uid.clone(), tenant);
        }
    }

    pub fn remove(&self, uid: &str) -> Option<Arc<Tenant>> {
        self.tenants.write().ok()?.remove(uid)
    }
}

/// Waits until nothing holds a removed tenant any more (passes it was running have ended and,
/// dropped, its tasks are aborted), at most `bound`; whether it went. A restarted tenant
/// starts after its previous start is gone, so the two never act at once.
pub(crate) async fn released<T>(tenant: Weak<T>, bound: Duration) -> bool {
    let until = tokio::time::Instant::now() + bound;
    while tenant.strong_count() > 0 {
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The narrow view of the syncer the proxy and the webhooks use. Every replica has it, leading
/// or not: it reads the [`Directory`], which every replica fills, never the leader's tenants.
#[derive(Clone)]
pub struct Tenants {
    pub(crate) directory: Arc<Directory>,
    pub(crate) client: Client,
    /// Shared with the leader's syncer, whatever replica leads.
    pub(crate) kubelet: Arc<RwLock<Option<KubeletEndpoint>>>,
}

impl Tenants {
    /// The host client.
    pub fn host(&self) -> &Client {
        &self.client
    }

    /// The tenants served.
    pub fn running(&self) -> Vec<TenantHandle> {
        self.directory.all()
    }

    /// The served tenant with this VirtualCluster uid.
    pub fn get(&self, uid: &str) -> Option<TenantHandle> {
        self.directory.get(uid)
    }

    /// Makes the tenants' Nodes advertise the kubelet proxy (shown Nodes take it at their next
    /// refresh).
    pub fn set_kubelet_endpoint(&self, endpoint: KubeletEndpoint) {
        if let Ok(mut k) = self.kubelet.write() {
            *k = Some(endpoint);
        }
    }

    /// The owner of a host namespace kvtenant made.
    pub fn namespace_owner(&self, host_ns: &str) -> Option<HostNamespaceOwner> {
        self.directory.namespace_owner(host_ns)
    }

    /// The host namespaces kvtenant made for this VirtualCluster.
    pub fn host_namespaces_of(&self, vc_uid: &str) -> Vec<String> {
        self.directory.namespaces_of(vc_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_restart_waits_for_the_previous_start_to_be_let_go() {
        let old = Arc::new(());
        let held = old.clone();
        let weak = Arc::downgrade(&old);
        drop(old);
        // a pass still holds it: released only once the pass ends
        let pass = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(held);
        });
        let started = tokio::time::Instant::now();
        assert!(released(weak.clone(), Duration::from_secs(10)).await);
        assert!(started.elapsed() >= Duration::from_secs(3));
        pass.await.unwrap();
        // nothing holds it: at once
        assert!(released(weak, Duration::ZERO).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_held_past_the_bound_is_reported() {
        let old = Arc::new(());
        assert!(!released(Arc::downgrade(&old), Duration::from_secs(10)).await);
    }
}
