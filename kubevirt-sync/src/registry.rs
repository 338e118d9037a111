//! The running tenants, by VirtualCluster uid. The registry owns them; nothing else holds a
//! tenant for longer than one reconcile, so removing a tenant here stops it (its watchers end
//! when it is dropped).
//!
//! The proxy and the webhooks see tenants only through [`Tenants`]: a [`TenantHandle`] per
//! running tenant (its identity, spec and client), the host client and the host namespace
//! owners. They never reach the syncer's internals.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::Client;
use kvtenant_api::labels::HostNamespaceOwner;

use crate::host::Host;
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

/// The narrow view of the syncer the proxy and the webhooks use.
#[derive(Clone)]
pub struct Tenants {
    pub(crate) registry: Arc<Registry>,
    pub(crate) host: Arc<Host>,
}

impl Tenants {
    /// The host client.
    pub fn host(&self) -> &Client {
        &self.host.client
    }

    /// The running tenants.
    pub fn running(&self) -> Vec<TenantHandle> {
        self.registry.all().iter().map(|t| t.handle()).collect()
    }

    /// The running tenant with this VirtualCluster uid.
    pub fn get(&self, uid: &str) -> Option<TenantHandle> {
        self.registry.get(uid).map(|t| t.handle())
    }

    /// Makes the tenants' Nodes advertise the kubelet proxy (shown Nodes take it at their next
    /// refresh).
    pub fn set_kubelet_endpoint(&self, endpoint: crate::host::KubeletEndpoint) {
        if let Ok(mut k) = self.host.kubelet.write() {
            *k = Some(endpoint);
        }
    }

    /// The owner of a host namespace kvtenant made.
    pub fn namespace_owner(&self, host_ns: &str) -> Option<HostNamespaceOwner> {
        self.host.namespace_owner(host_ns)
    }
}
