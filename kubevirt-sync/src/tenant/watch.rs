//! The tenant-side watchers: one per watched kind, filling the tenant's cache and queueing what
//! changed (and what it references).

use std::sync::Weak;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kvtenant_rules::kinds::{self, KindId};
use kvtenant_rules::translate::is_mirror;

use super::Tenant;
use crate::host::Key;

/// Watches one kind in the tenant. Holds the tenant weakly: it ends when the tenant is dropped
/// (the tenant also aborts it).
pub(super) async fn watch_kind(tenant: Weak<Tenant>, kind: KindId, writer: Writer<DynamicObject>) {
    let spec = kinds::get(kind);
    let Some(client) = tenant.upgrade().map(|t| t.client.clone()) else {
        return;
    };
    let api: Api<DynamicObject> = Api::all_with(client, &spec.resource);
    let mut stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
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
