//! kvtenant's own objects in the tenant restored within seconds of a tenant change, not at the
//! next consistency scan: the CRD copies, the DNS objects, KubeVirt's roles, the host classes shown, the Services
//! `spec.mapServices.fromHost` shows, the PersistentVolumes shown for the tenant's claims and the tenant Nodes standing for host nodes are watched
//! ([`crate::guard`]); a delete or an edit makes the tenant apply them again (a no-op write when
//! nothing differs). For Nodes only a delete counts: kvtenant itself rewrites their status with
//! the host node's heartbeats.
//! The consistency scan still applies them too (a watch can miss what happened while it was
//! down; it then lists again and that counts as a change).
//!
//! The DNS objects of kinds the tenant's own watchers follow anyway (ServiceAccounts,
//! ConfigMaps, Services when synced) need no watch of their own: those watchers pass their
//! changes here ([`Tenant::kept_changed`]), by name (issue 16: each watch costs the syncer
//! buffers and tasks per tenant).

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{Api, PartialObjectMeta};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kvtenant_api::DnsSpec;
use kvtenant_api::labels::{HOST_CLASS, HOST_NODE, HOST_VOLUME, MAPPED_FROM_HOST, MAPPED_SERVICE};
use kvtenant_rules::classes::CLASS_KINDS;
use kvtenant_rules::dns::{self, APP_LABEL, MANAGED_BY_LABEL};
use kvtenant_rules::kinds;
use tokio::sync::mpsc;

use super::Tenant;
use crate::guard::{self, Change};

/// After a change, how long to gather more changes before restoring (a tenant deleting several
/// objects at once gets one pass).
const GATHER: Duration = Duration::from_millis(200);
/// Retry of a restore that failed.
const RETRY: Duration = Duration::from_secs(2);

/// Which of kvtenant's objects a change touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub crds: bool,
    pub dns: bool,
    pub classes: bool,
    pub services: bool,
    pub nodes: bool,
    pub roles: bool,
    pub volumes: bool,
}

impl Touched {
    fn any(self) -> bool {
        self != Self::default()
    }

    fn add(&mut self, o: Self) {
        self.crds |= o.crds;
        self.dns |= o.dns;
        self.classes |= o.classes;
        self.services |= o.services;
        self.nodes |= o.nodes;
        self.roles |= o.roles;
        self.volumes |= o.volumes;
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Crds,
    Dns,
    Classes,
    MappedServices,
    Nodes,
    Roles,
    /// kvtenant's ClusterRoles and ClusterRoleBindings: KubeVirt's roles and the DNS objects'
    /// (one watch of each resource for both).
    DnsAndRoles,
    Volumes,
}

/// Where the tenant's watchers send the changes of kvtenant's objects they see.
pub type KeptSender = mpsc::UnboundedSender<(Source, Change)>;
/// What [`run`] reads them from.
pub type KeptReceiver = mpsc::UnboundedReceiver<(Source, Change)>;

/// Whether `kind` `namespace/name` is one of kvtenant's namespaced DNS objects (pure). By name,
/// not by label: a tenant taking kvtenant's labels off is a change too.
pub fn is_dns_object(spec: &DnsSpec, kind: &str, namespace: Option<&str>, name: &str) -> bool {
    namespace == Some(dns::NAMESPACE)
        && dns::objects(spec, None)
            .iter()
            .any(|o| o.api.kind == kind && o.namespace == namespace && o.name == name)
}

/// Whether kvtenant has namespaced DNS objects of `kind` (pure): a relist of that kind may have
/// missed a change of one.
pub fn is_dns_kind(spec: &DnsSpec, kind: &str) -> bool {
    dns::objects(spec, None)
        .iter()
        .any(|o| o.api.kind == kind && o.namespace.is_some())
}

/// Whether a change is to one of kvtenant's objects (pure): a CRD copy only when it is one of
/// the copies kvtenant made (a tenant's own CRDs are watched too, the watch cannot select
/// copies); every object the other watches select (by kvtenant's labels).
pub fn touches(source: Source, change: &Change, copies: &BTreeSet<String>) -> Touched {
    let none = Touched::default();
    match (source, change) {
        (Source::Crds, Change::Applied(n) | Change::Deleted(n)) if !copies.contains(n) => none,
        (Source::Crds, _) => Touched { crds: true, ..none },
        (Source::Dns, _) => Touched { dns: true, ..none },
        (Source::Classes, _) => Touched {
            classes: true,
            ..none
        },
        (Source::MappedServices, _) => Touched {
            services: true,
            ..none
        },
        (Source::Nodes, Change::Applied(_)) => none,
        (Source::Nodes, _) => Touched {
            nodes: true,
            ..none
        },
        (Source::Roles, _) => Touched {
            roles: true,
            ..none
        },
        (Source::DnsAndRoles, _) => Touched {
            dns: true,
            roles: true,
            ..none
        },
        (Source::Volumes, _) => Touched {
            volumes: true,
            ..none
        },
    }
}

/// Changes of the objects of one resource that carry kvtenant's labels (`selector`).
fn labelled(
    t: &Tenant,
    ar: &ApiResource,
    namespace: Option<&str>,
    selector: &str,
    source: Source,
) -> BoxStream<'static, (Source, Change)> {
    let api = match namespace {
        Some(ns) => {
            Api::<PartialObjectMeta<DynamicObject>>::namespaced_with(t.client.clone(), ns, ar)
        }
        None => Api::<PartialObjectMeta<DynamicObject>>::all_with(t.client.clone(), ar),
    };
    guard::changes(api, watcher::Config::default().labels(selector))
        .map(move |c| (source, c))
        .boxed()
}

/// The watches of one tenant: its CRDs; each kind (and namespace) of its DNS objects, the host
/// classes and the fromHost Services, selected by kvtenant's labels.
fn watches(t: &Tenant) -> BoxStream<'static, (Source, Change)> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let mut all = vec![
        guard::changes(
            Api::<PartialObjectMeta<CustomResourceDefinition>>::all(t.client.clone()),
            watcher::Config::default(),
        )
        .map(|c| (Source::Crds, c))
        .boxed(),
    ];
    if t.spec.dns.enabled {
        let selector = format!(
            "{MANAGED_BY_LABEL}={},{}={}",
            kvtenant_api::MANAGER,
            APP_LABEL.0,
            APP_LABEL.1
        );
        let mut seen = BTreeSet::new();
        for o in dns::objects(&t.spec.dns, None) {
            // watched with KubeVirt's roles below
            if o.namespace.is_none() && rbac_kind(o.api.kind) {
                continue;
            }
            // the tenant's watcher of the kind passes its changes on (`kept_changed`)
            if o.namespace.is_some() && t.watches_kind(o.api.kind) {
                continue;
            }
            if seen.insert((o.api.kind, o.namespace)) {
                all.push(labelled(
                    t,
                    &o.api.resource(),
                    o.namespace,
                    &selector,
                    Source::Dns,
                ));
            }
        }
    }
    let shown = format!("{HOST_CLASS}=true");
    let copies = t.crd_copy_names();
    for kind in CLASS_KINDS
        .iter()
        .filter(|k| kvtenant_rules::classes::crd(k).is_none_or(|c| copies.contains(&c)))
    {
        all.push(labelled(t, &kind.resource(), None, &shown, Source::Classes));
    }
    // the host objects shown go with the classes (`host_objects.rs`)
    let objects = format!("{}=true", kvtenant_api::labels::HOST_OBJECT);
    for kind in kvtenant_rules::host_objects::KINDS
        .iter()
        .filter(|k| copies.contains(&kvtenant_rules::host_objects::crd(k)))
    {
        all.push(labelled(
            t,
            &kind.resource(),
            None,
            &objects,
            Source::Classes,
        ));
    }
    if t.maps_services()
        && let Some(service) = kvtenant_rules::kinds::by_kind("Service")
    {
        let mapped = format!("{MAPPED_SERVICE}={MAPPED_FROM_HOST}");
        all.push(labelled(
            t,
            &service.resource,
            None,
            &mapped,
            Source::MappedServices,
        ));
    }
    // KubeVirt's roles and the DNS objects' carry `app.kubernetes.io/managed-by=kvtenant`
    let (roles, source) = if t.spec.dns.enabled {
        (
            format!("{MANAGED_BY_LABEL}={}", kvtenant_api::MANAGER),
            Source::DnsAndRoles,
        )
    } else {
        (kvtenant_rules::kubevirt_roles::selector(), Source::Roles)
    };
    for kind in [
        kvtenant_rules::kubevirt_roles::CLUSTER_ROLE,
        kvtenant_rules::kubevirt_roles::CLUSTER_ROLE_BINDING,
    ] {
        all.push(labelled(t, &kind.resource(), None, &roles, source));
    }
    let volumes = ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolume>(&());
    all.push(labelled(
        t,
        &volumes,
        None,
        &format!("{HOST_VOLUME}=true"),
        Source::Volumes,
    ));
    let shown_nodes = format!("{HOST_NODE}=true");
    let nodes = ApiResource::erase::<k8s_openapi::api::core::v1::Node>(&());
    all.push(labelled(t, &nodes, None, &shown_nodes, Source::Nodes));
    futures::stream::select_all(all).boxed()
}

/// Whether a DNS object's kind is watched with KubeVirt's roles (pure).
fn rbac_kind(kind: &str) -> bool {
    [
        kvtenant_rules::kubevirt_roles::CLUSTER_ROLE.kind,
        kvtenant_rules::kubevirt_roles::CLUSTER_ROLE_BINDING.kind,
    ]
    .contains(&kind)
}

/// Watches the tenant's copies of kvtenant's objects (and takes the changes of them the
/// tenant's watchers pass on, `kept`) and restores them; ends when the tenant is dropped.
pub(super) async fn run(tenant: Weak<Tenant>, kept: KeptReceiver) {
    let mut changes = {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        let passed =
            futures::stream::unfold(
                kept,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        futures::stream::select(watches(&t), passed).boxed()
    };
    let mut pending = Touched::default();
    loop {
        // wait for a change (none pending) or gather more for a moment
        let next = if !pending.any() {
            changes.next().await
        } else {
            match tokio::time::timeout(GATHER, changes.next()).await {
                Ok(c) => c,
                Err(_) => {
                    let Some(t) = tenant.upgrade() else {
                        return;
                    };
                    pending = t.restore(pending).await;
                    drop(t);
                    if pending.any() {
                        tokio::time::sleep(RETRY).await;
                    }
                    continue;
                }
            }
        };
        let Some((source, change)) = next else {
            return;
        };
        let Some(t) = tenant.upgrade() else {
            return;
        };
        let copies: BTreeSet<String> = t.crd_copy_names().into_iter().collect();
        let touched = touches(source, &change, &copies);
        if touched.any() {
            tracing::debug!(tenant = %t.label, ?source, ?change, "kvtenant's object changed in the tenant");
        }
        pending.add(touched);
    }
}

impl Tenant {
    /// Whether the tenant's own watchers follow `kind` (full objects, all namespaces).
    fn watches_kind(&self, kind: &str) -> bool {
        kinds::by_kind(kind).is_some_and(|k| self.stores[k.id.index()].is_some())
    }

    /// Told by the tenant's watcher of `kind` of every change it sees (after its first list):
    /// passes those of kvtenant's DNS objects on to [`run`].
    pub(super) fn kept_changed(&self, kind: &str, namespace: Option<&str>, change: &Change) {
        let dns = &self.spec.dns;
        if !dns.enabled {
            return;
        }
        let ours = match change {
            Change::Applied(n) | Change::Deleted(n) => is_dns_object(dns, kind, namespace, n),
            Change::Relisted => is_dns_kind(dns, kind),
        };
        if ours {
            // closed only when `run` has ended, with the tenant
            let _ = self.kept.send((Source::Dns, change.clone()));
        }
    }

    /// Applies again what a change touched; returns what failed (to retry).
    async fn restore(&self, what: Touched) -> Touched {
        let mut failed = Touched::default();
        // the scan's own pass: copies what differs and records the copies' versions
        if what.crds
            && let Err(e) = self.refresh_crds().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring CRD copies");
            failed.crds = true;
        }
        if what.dns
            && let Err(e) = self.apply_dns().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the tenant's DNS objects");
            failed.dns = true;
        }
        if what.classes
            && let Err(e) = self.show_classes().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the host classes shown");
            failed.classes = true;
        }
        if what.services
            && self.maps_services()
            && let Err(e) = self.map_services().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the mapped Services");
            failed.services = true;
        }
        if what.nodes
            && let Err(e) = self.prune_nodes().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the tenant's Nodes");
            failed.nodes = true;
        }
        if what.roles
            && let Err(e) = self.apply_kubevirt_roles().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring KubeVirt's roles");
            failed.roles = true;
        }
        if what.volumes
            && let Err(e) = self.restore_volumes().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the host volumes shown");
            failed.volumes = true;
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kvtenants_copies_count_and_a_relist_counts() {
        let copies: BTreeSet<String> = ["virtualmachines.kubevirt.io".to_string()].into();
        let crd = |c: Change| touches(Source::Crds, &c, &copies);
        assert!(crd(Change::Deleted("virtualmachines.kubevirt.io".into())).crds);
        assert!(crd(Change::Applied("virtualmachines.kubevirt.io".into())).crds);
        assert_eq!(
            crd(Change::Deleted("widgets.example.com".into())),
            Touched::default(),
            "a tenant's own CRD"
        );
        assert!(crd(Change::Relisted).crds);
        let dns = touches(Source::Dns, &Change::Deleted("coredns".into()), &copies);
        assert!(dns.dns && !dns.crds && !dns.classes && !dns.services);
        let class = touches(
            Source::Classes,
            &Change::Deleted("standard".into()),
            &copies,
        );
        assert!(class.classes && !class.dns);
        let svc = touches(Source::MappedServices, &Change::Relisted, &copies);
        assert!(svc.services && !svc.crds);
        // a Node's status changes with every host heartbeat kvtenant copies: only deletes count
        let node = |c: Change| touches(Source::Nodes, &c, &copies);
        assert!(node(Change::Deleted("node-1".into())).nodes);
        assert!(node(Change::Relisted).nodes);
        assert_eq!(node(Change::Applied("node-1".into())), Touched::default());
        let role = touches(
            Source::Roles,
            &Change::Applied("kubevirt.io:edit".into()),
            &copies,
        );
        assert!(role.roles && !role.crds && !role.nodes);
        let rbac = touches(Source::DnsAndRoles, &Change::Relisted, &copies);
        assert!(rbac.dns && rbac.roles && !rbac.crds);
        assert!(rbac_kind("ClusterRole") && rbac_kind("ClusterRoleBinding"));
        assert!(!rbac_kind("ServiceAccount") && !rbac_kind("Role"));
        let volume = touches(Source::Volumes, &Change::Deleted("pvc-1".into()), &copies);
        assert!(volume.volumes && !volume.classes && !volume.nodes);
    }

    #[test]
    fn the_dns_objects_are_told_by_kind_namespace_and_name() {
        let spec = DnsSpec::default();
        assert!(spec.enabled, "DNS is on by default");
        let ks = Some("kube-system");
        assert!(is_dns_object(&spec, "ConfigMap", ks, "coredns"));
        assert!(is_dns_object(&spec, "ServiceAccount", ks, "coredns"));
        assert!(is_dns_object(&spec, "Service", ks, "kube-dns"));
        // the tenant's own objects: another name, another namespace, another kind
        assert!(!is_dns_object(&spec, "ConfigMap", ks, "kube-dns"));
        assert!(!is_dns_object(&spec, "Service", ks, "coredns"));
        assert!(!is_dns_object(
            &spec,
            "ConfigMap",
            Some("default"),
            "coredns"
        ));
        assert!(!is_dns_object(&spec, "Secret", ks, "coredns"));
        // cluster-scoped ones are watched with KubeVirt's roles
        assert!(!is_dns_object(&spec, "ClusterRole", None, "system:coredns"));
        assert!(is_dns_kind(&spec, "Service") && is_dns_kind(&spec, "ConfigMap"));
        assert!(!is_dns_kind(&spec, "Secret") && !is_dns_kind(&spec, "ClusterRole"));
        let off = DnsSpec {
            enabled: false,
            ..DnsSpec::default()
        };
        assert!(!is_dns_object(&off, "ConfigMap", ks, "coredns"));
        assert!(!is_dns_kind(&off, "ConfigMap"));
    }
}
