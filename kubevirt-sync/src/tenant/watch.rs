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
pub(super) async fn watch_kind(tenant: Weak<Tenant>, kind: KindId, mut writer: Writer) {
    let spec = kinds::get(kind);
    let Some(client) = tenant.upgrade().map(|t| t.client.clone()) else {
        return;
    };
    let api: Api<DynamicObject> = Api::all_with(client, &spec.resource);
    let mut stream = cache::reflector(
        &mut writer,
        watcher(
            api,
            watcher::Config::default().page_size(spec.list_page_size()),
        )
        .backoff(TenantBackoff::default())
        .modify(crate::slim),
    )
    .boxed();
    // what a (re)list brings is queued at its end, once the cache holds it: queued earlier, a
    // worker could read the cache's old contents (a relist replaces them only at its end) and
    // find nothing to do
    let mut listed: Vec<Key> = Vec::new();
    let mut listed_once = false;
    while let Some(ev) = stream.next().await {
        let Some(t) = tenant.upgrade() else { return };
        if let Ok(ev) = &ev
            && let Some(change) = crate::guard::change_of(ev, listed_once)
        {
            let namespace = match ev {
                watcher::Event::Apply(o) | watcher::Event::Delete(o) => o.namespace(),
                _ => None,
            };
            t.kept_changed(&spec.resource.kind, namespace.as_deref(), &change);
        }
        match ev {
            Ok(watcher::Event::InitDone) => {
                listed_once = true;
                t.mark_ready(kind);
                for key in listed.drain(..) {
                    t.enqueue(key);
                }
            }
            Ok(watcher::Event::InitApply(obj)) => {
                // what belongs to an object is queued by the listing of its own kind
                listed.extend(keys_of(spec, &obj));
            }
            Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                let Some(ns) = obj.namespace() else { continue };
                for key in keys_of(spec, &obj) {
                    t.enqueue(key);
                }
                // what belongs to it syncs or not with it
                t.enqueue_belonging(spec, &ns, &obj.name_any());
            }
            Ok(watcher::Event::Init) => listed.clear(),
            Err(e) => tracing::debug!(kind = %spec.name(), error = %e, "watching tenant objects"),
        }
    }
}

/// The keys a change of `obj` queues: its own, and those of what it references (a mirror
/// references nothing the syncer keeps).
fn keys_of(spec: &kinds::Kind, obj: &DynamicObject) -> Vec<Key> {
    let Some(ns) = obj.namespace() else {
        return Vec::new();
    };
    let mut keys = vec![Key {
        kind: spec.id,
        namespace: ns.clone(),
        name: obj.name_any(),
    }];
    if !is_mirror(obj) {
        for r in spec.object_references(obj) {
            if let Some(dep) = kinds::by_kind(r.kind) {
                keys.push(Key {
                    kind: dep.id,
                    namespace: ns.clone(),
                    name: r.name,
                });
            }
        }
    }
    keys
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
