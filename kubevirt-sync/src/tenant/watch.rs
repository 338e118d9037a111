//! The tenant-side watchers: one per watched kind, filling the tenant's cache and queueing what
//! changed (and what it references).

use std::sync::Weak;
use std::time::Duration;

use crate::cache::{self, Writer};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kvtenant_rules::kinds::{self, KindId};
use kvtenant_rules::translate::is_mirror;

use super::Tenant;
use crate::host::Key;

/// Watches one kind in the tenant. Holds the tenant weakly: it ends when the tenant is dropped
/// (the tenant also aborts it).
pub(super) async fn watch_kind(tenant: Weak<Tenant>, kind: KindId, writer: Writer) {
    let spec = kinds::get(kind);
    let Some(client) = tenant.upgrade().map(|t| t.client.clone()) else {
        return;
    };
    let api: Api<DynamicObject> = Api::all_with(client, &spec.resource);
    let mut stream = cache::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .backoff(TenantBackoff::default())
            .modify(crate::slim),
    )
    .boxed();
    while let Some(ev) = stream.next().await {
        let Some(t) = tenant.upgrade() else { return };
        let listing = matches!(ev, Ok(watcher::Event::InitApply(_)));
        match ev {
            Ok(watcher::Event::InitDone) => t.mark_ready(kind),
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::Delete(obj)
                | watcher::Event::InitApply(obj),
            ) => {
                let Some(ns) = obj.namespace() else { continue };
                t.enqueue(Key {
                    kind,
                    namespace: ns.clone(),
                    name: obj.name_any(),
                });
                // what belongs to it syncs or not with it (listing queues those anyway)
                if !listing {
                    t.enqueue_belonging(spec, &ns, &obj.name_any());
                }
                if !is_mirror(&obj) {
                    for r in spec.references(&obj.data) {
                        if let Some(dep) = kinds::by_kind(r.kind) {
                            t.enqueue(Key {
                                kind: dep.id,
                                namespace: ns.clone(),
                                name: r.name,
                            });
                        }
                    }
                }
            }
            Ok(watcher::Event::Init) => {}
            Err(e) => tracing::debug!(kind = %spec.name(), error = %e, "watching tenant objects"),
        }
    }
}

/// The retry delays of a tenant watch: 200 ms doubling to [`TenantBackoff::MAX`], back to the
/// start after an event. kube-runtime's default goes to 30 s, so a tenant apiserver back after
/// a minute away was watched again up to 30 s later (measured in `tests/faults.rs`); a refused
/// connection every few seconds per kind costs little.
#[derive(Clone, Debug, Default)]
pub struct TenantBackoff {
    failures: u32,
}

impl TenantBackoff {
    pub const MIN: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Iterator for TenantBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = Self::MIN.saturating_mul(2u32.saturating_pow(self.failures.min(16)));
        self.failures = self.failures.saturating_add(1);
        Some(d.min(Self::MAX))
    }
}

impl kube::runtime::utils::Backoff for TenantBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn tenant_watches_retry_within_five_seconds() {
        let mut b = TenantBackoff::default();
        let first: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.nth(100), Some(TenantBackoff::MAX));
        b.reset();
        assert_eq!(b.next(), Some(TenantBackoff::MIN));
    }
}
