//! The registry of [`KINDS`]: each kind's [`KindId`] and API resource, looked up by id
//! ([`get`]), kind name ([`by_kind`]), resource ([`by_resource`]) or [`SyncKind`] ([`of`]),
//! and what a VirtualCluster's enabled kinds turn on ([`enablement`]).

use std::sync::LazyLock;

use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::SyncKind;

use super::{Enablement, KINDS, SyncedKind, pod};

/// Where a kind sits in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindId(u8);

impl KindId {
    /// The position in [`all`] (dependency order), for per-kind tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A registered kind: its rules and its API resource.
pub struct Kind {
    pub id: KindId,
    pub rules: &'static dyn SyncedKind,
    pub resource: ApiResource,
}

impl Kind {
    /// The kind name.
    pub fn name(&self) -> &'static str {
        self.rules.api().kind
    }
}

impl std::ops::Deref for Kind {
    type Target = dyn SyncedKind;
    fn deref(&self) -> &Self::Target {
        self.rules
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static REGISTRY: LazyLock<Vec<Kind>> = LazyLock::new(|| {
    KINDS
        .iter()
        .enumerate()
        .map(|(i, rules)| {
            let a = rules.api();
            let gvk = GroupVersionKind::gvk(a.group, a.version, a.kind);
            Kind {
                id: KindId(u8::try_from(i).unwrap_or(u8::MAX)),
                rules: *rules,
                resource: ApiResource::from_gvk_with_plural(&gvk, a.plural),
            }
        })
        .collect()
});

/// Every kind, in dependency order.
pub fn all() -> &'static [Kind] {
    &REGISTRY
}

/// The kind with this id.
pub fn get(id: KindId) -> &'static Kind {
    &REGISTRY[id.index()]
}

/// The kind with this kind name, if kvtenant syncs it.
pub fn by_kind(kind: &str) -> Option<&'static Kind> {
    REGISTRY.iter().find(|k| k.name() == kind)
}

/// The kind with this API group and resource (plural), if kvtenant syncs it.
pub fn by_resource(group: &str, plural: &str) -> Option<&'static Kind> {
    REGISTRY
        .iter()
        .find(|k| k.resource.group == group && k.resource.plural == plural)
}

/// The registered kind of a KubeVirt/CDI kind.
pub fn of(k: SyncKind) -> Option<&'static Kind> {
    REGISTRY.iter().find(|r| r.sync_kind() == Some(k))
}

/// Each kind's enablement for a VirtualCluster with these kinds enabled, by [`KindId::index`].
pub fn enablement(enabled: &[SyncKind]) -> Vec<Enablement> {
    REGISTRY.iter().map(|k| k.enablement(enabled)).collect()
}

/// As [`enablement`], with Pods off when the virtual cluster does not sync them
/// (`spec.sync.pods`, [`kvtenant_api::SyncSpec::pods_synced`]): they are then not watched in
/// the tenant, and what only pods use is not referenced.
pub fn enablement_with_pods(enabled: &[SyncKind], pods: bool) -> Vec<Enablement> {
    REGISTRY
        .iter()
        .map(|k| {
            if !pods && k.name() == pod::KIND {
                Enablement::Off
            } else {
                k.enablement(enabled)
            }
        })
        .collect()
}

/// The KubeVirt/CDI kinds a tenant watches (synced or mirrored), for its CRD copies.
pub fn watched_sync_kinds(enabled: &[SyncKind]) -> Vec<SyncKind> {
    REGISTRY
        .iter()
        .filter(|k| k.enablement(enabled).watched())
        .filter_map(|k| k.sync_kind())
        .collect()
}
