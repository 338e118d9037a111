//! kvtenant's own objects in the tenant restored within seconds of a tenant change, not at the
//! next consistency scan: the CRD copies and the DNS objects are watched ([`crate::guard`]);
//! a delete or an edit makes the tenant apply them again (a no-op write when nothing differs).
//! The consistency scan still applies them too (a watch can miss what happened while it was
//! down; it then lists again and that counts as a change).

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{Api, PartialObjectMeta};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kvtenant_rules::dns::{self, APP_LABEL, MANAGED_BY_LABEL};

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
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Crds,
    Dns,
}

/// Whether a change is to one of kvtenant's objects (pure): a CRD copy only when it is one of
/// the copies kvtenant made (a tenant's own CRDs are watched too, the watch cannot select
/// copies); every selected DNS object.
pub fn touches(source: Source, change: &Change, copies: &BTreeSet<String>) -> Touched {
    match (source, change) {
        (Source::Crds, Change::Relisted) => Touched {
            crds: true,
            dns: false,
        },
        (Source::Crds, Change::Applied(n) | Change::Deleted(n)) => Touched {
            crds: copies.contains(n),
            dns: false,
        },
        (Source::Dns, _) => Touched {
            crds: false,
            dns: true,
        },
    }
}

fn resource(k: &kvtenant_rules::kinds::ApiKind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(k.group, k.version, k.kind), k.plural)
}

/// The watches of one tenant: its CRDs, and each kind (and namespace) of its DNS objects
/// selected by kvtenant's labels.
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
            if !seen.insert((o.api.kind, o.namespace)) {
                continue;
            }
            let ar = resource(&o.api);
            let api = match o.namespace {
                Some(ns) => Api::<PartialObjectMeta<DynamicObject>>::namespaced_with(
                    t.client.clone(),
                    ns,
                    &ar,
                ),
                None => Api::<PartialObjectMeta<DynamicObject>>::all_with(t.client.clone(), &ar),
            };
            all.push(
                guard::changes(api, watcher::Config::default().labels(&selector))
                    .map(|c| (Source::Dns, c))
                    .boxed(),
            );
        }
    }
    futures::stream::select_all(all).boxed()
}

/// Watches the tenant's copies of kvtenant's objects and restores them; ends when the tenant
/// is dropped.
pub(super) async fn run(tenant: Weak<Tenant>) {
    let mut changes = {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        watches(&t)
    };
    let mut pending = Touched::default();
    loop {
        // wait for a change (none pending) or gather more for a moment
        let next = if pending == Touched::default() {
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
                    if pending != Touched::default() {
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
        let copies: BTreeSet<String> = t
            .crd_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let touched = touches(source, &change, &copies);
        if touched.crds || touched.dns {
            tracing::debug!(tenant = %t.label, ?change, "kvtenant's object changed in the tenant");
        }
        pending.crds |= touched.crds;
        pending.dns |= touched.dns;
    }
}

impl Tenant {
    /// Applies again what a change touched; returns what failed (to retry).
    async fn restore(&self, what: Touched) -> Touched {
        let mut failed = Touched::default();
        if what.crds {
            let names: Vec<String> = self
                .crd_versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(n, _)| n.clone())
                .collect();
            if let Err(e) = crate::crds::mirror(&self.host.crds, &self.client, &names).await {
                tracing::warn!(tenant = %self.label, error = %e, "restoring CRD copies");
                failed.crds = true;
            }
        }
        if what.dns
            && let Err(e) = self.apply_dns().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "restoring the tenant's DNS objects");
            failed.dns = true;
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
        assert_eq!(
            touches(Source::Dns, &Change::Deleted("coredns".into()), &copies),
            Touched {
                crds: false,
                dns: true
            }
        );
    }
}
