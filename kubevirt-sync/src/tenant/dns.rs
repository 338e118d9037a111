//! The tenant's DNS ([`kvtenant_rules::dns`]): its objects applied in the tenant (server-side,
//! field manager `kvtenant`) when the tenant starts and again at every consistency scan, so a
//! tenant deleting or editing them gets them back; removed when `spec.dns.enabled` is false.
//! And the address host copies of pods resolve through: the host cluster IP of the copy of the
//! tenant's `kube-system/kube-dns` ([`kvtenant_rules::pod::dns`]).

use std::sync::Weak;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::dns::{self, DnsObject, MANAGED_BY_LABEL};
use kvtenant_rules::kinds::{self, ApiKind};
use kvtenant_rules::pod::dns::TenantDns;

use super::Tenant;
use crate::error::{Cluster, Error};

/// The first retry of a failed install at start, doubling to [`INSTALL_RETRY_MAX`].
const INSTALL_RETRY: Duration = Duration::from_millis(500);
const INSTALL_RETRY_MAX: Duration = Duration::from_secs(30);

impl Tenant {
    fn dns_api(&self, api: &ApiKind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api.resource();
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The tenant's DNS as host copies see it: off, waiting for the host to give kube-dns an
    /// address, or that address.
    pub(super) fn tenant_dns(&self) -> TenantDns {
        if !self.spec.dns.enabled {
            return TenantDns::Off;
        }
        let Some(service) = kinds::by_kind("Service") else {
            return TenantDns::Pending;
        };
        if !self.host.ready(service.id) {
            return TenantDns::Pending;
        }
        let host_ns = self.vc.host_namespace(dns::NAMESPACE);
        self.host
            .get(service.id, &host_ns, dns::SERVICE)
            .and_then(|s| dns::nameserver(&s.data).map(str::to_owned))
            .map_or(TenantDns::Pending, |nameserver| TenantDns::Ready {
                nameserver,
                domain: self.spec.dns.cluster_domain.clone(),
            })
    }

    /// Applies the DNS objects (or removes kvtenant's when DNS is disabled).
    pub(super) async fn apply_dns(&self) -> Result<(), Error> {
        if !self.spec.dns.enabled {
            return self.remove_dns().await;
        }
        let host_dns = self.host_dns().await;
        for o in dns::objects(&self.spec.dns, host_dns.as_deref()) {
            self.apply_dns_object(&o).await?;
        }
        Ok(())
    }

    /// The host cluster's DNS address (`kube-system/kube-dns`), where the tenant's CoreDNS
    /// sends names outside its cluster domain; `None` (the node's resolver) when the host has
    /// no such Service or it cannot be read.
    async fn host_dns(&self) -> Option<String> {
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.host.client.clone(), dns::NAMESPACE);
        self.api_call(Cluster::Host, "get");
        let svc = services.get_opt(dns::SERVICE).await.ok()??;
        svc.spec?
            .cluster_ip
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
    }

    async fn apply_dns_object(&self, o: &DnsObject) -> Result<(), Error> {
        self.api_call(Cluster::Tenant, "apply");
        self.dns_api(&o.api, o.namespace)
            .patch(
                o.name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(&o.body),
            )
            .await
            .map_err(Error::api(
                "apply",
                Cluster::Tenant,
                format!("{} {}", o.api.kind, o.name),
            ))?;
        Ok(())
    }

    /// Deletes the DNS objects kvtenant installed (those carrying its label; a tenant's own
    /// objects of the same names stay).
    async fn remove_dns(&self) -> Result<(), Error> {
        let spec = kvtenant_api::DnsSpec {
            enabled: true,
            ..self.spec.dns.clone()
        };
        for o in dns::objects(&spec, None).iter().rev() {
            let api = self.dns_api(&o.api, o.namespace);
            let what = || format!("{} {}", o.api.kind, o.name);
            self.api_call(Cluster::Tenant, "get");
            let Some(current) = api.get_metadata_opt(o.name).await.map_err(Error::api(
                "get",
                Cluster::Tenant,
                what(),
            ))?
            else {
                continue;
            };
            let ours = current
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == kvtenant_api::MANAGER);
            if !ours {
                continue;
            }
            self.api_call(Cluster::Tenant, "delete");
            api.delete(o.name, &DeleteParams::background())
                .await
                .gone_ok()
                .map_err(Error::api("delete", Cluster::Tenant, what()))?;
        }
        Ok(())
    }
}

/// Applies the DNS objects once the tenant starts, retrying until it worked (the consistency
/// scan keeps them afterwards). Ends when the tenant is dropped.
pub(super) async fn install(tenant: Weak<Tenant>) {
    let mut wait = INSTALL_RETRY;
    loop {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        match t.apply_dns().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(tenant = %t.label, error = %e, retry_in = ?wait, "installing the tenant's DNS");
            }
        }
        drop(t);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(INSTALL_RETRY_MAX);
    }
}
