//! Watches of the objects kvtenant keeps in tenants (webhook configurations, APIServices, CRD
//! copies, ...): a tenant's delete or edit wakes whoever keeps them, so they are restored within
//! seconds instead of at the next periodic pass.
//!
//! A watch here only says *that* something changed; the keeper re-applies what it wants, which
//! is a no-op (no write, no further event) when nothing differs. Only metadata is watched.

use futures::{Stream, StreamExt};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// What happened to a watched object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Created or changed; with the object's name.
    Applied(String),
    /// Deleted (or no longer selected); with the object's name.
    Deleted(String),
    /// The watch listed again after an interruption: anything may have changed meanwhile.
    Relisted,
}

/// Whether a watcher event is worth waking the keeper for, given whether the first list is done
/// (the objects of the first list are what the keeper found at start: nothing to undo).
pub fn change_of<K: Resource>(ev: &watcher::Event<K>, listed_once: bool) -> Option<Change> {
    match ev {
        watcher::Event::Apply(o) => Some(Change::Applied(o.name_any())),
        watcher::Event::Delete(o) => Some(Change::Deleted(o.name_any())),
        watcher::Event::InitDone if listed_once => Some(Change::Relisted),
        watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => None,
    }
}

/// The changes of the objects `api` and `config` select, after the first list (metadata only:
/// `Api<PartialObjectMeta<K>>`). Watch errors are retried with backoff (and logged at debug
/// level); the stream ends only with the client.
pub fn changes<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Change> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Send + Sync,
{
    let mut listed_once = false;
    watcher(api, config)
        .default_backoff()
        .filter_map(move |ev| {
            let out = match ev {
                Ok(ev) => {
                    let c = change_of(&ev, listed_once);
                    if matches!(ev, watcher::Event::InitDone) {
                        listed_once = true;
                    }
                    c
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watching objects kvtenant keeps in a tenant");
                    None
                }
            };
            futures::future::ready(out)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;

    fn svc(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn the_first_list_is_not_a_change_later_events_and_relists_are() {
        let init = [
            watcher::Event::Init,
            watcher::Event::InitApply(svc("a")),
            watcher::Event::InitDone,
        ];
        for ev in &init {
            assert_eq!(change_of(ev, false), None, "{ev:?}");
        }
        assert_eq!(
            change_of(&watcher::Event::Apply(svc("a")), true),
            Some(Change::Applied("a".into()))
        );
        assert_eq!(
            change_of(&watcher::Event::Delete(svc("a")), true),
            Some(Change::Deleted("a".into()))
        );
        // a relist after an interruption: deletions in the gap were not seen
        assert_eq!(
            change_of(&watcher::Event::<Service>::InitDone, true),
            Some(Change::Relisted)
        );
        assert_eq!(change_of(&watcher::Event::<Service>::Init, true), None);
    }
}
