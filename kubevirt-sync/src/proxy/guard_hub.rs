//! One tenant's watches of the proxy's registrations, shared by their keepers (issue 16: each
//! watch costs buffers and tasks per tenant): one metadata watch of the tenant's APIServices and
//! one of the Services in the proxy's namespace ([`crate::guard::changes`]), fanned out to the
//! subresource API's keeper and each aggregated API's keeper, each taking the changes of its own
//! objects by name ([`concerns`]).
//!
//! The watches select by neither label nor name: a tenant taking kvtenant's label off, or a
//! tenant's own object in the way of kvtenant's name, is still a change of that name.

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::watcher;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::guard::Change;

/// The watched resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    ApiServices,
    Services,
}

/// A change of one of the watched resources.
pub type Tagged = (Watched, Change);

/// Changes queued for a slow keeper; past that it gets one [`Change::Relisted`].
const QUEUE: usize = 64;

/// Whether a keeper wanting the objects `wanted` accepts (by resource and name) must wake for
/// `change` (pure): a change of one of them, or a relist of a resource it wants.
pub fn concerns(change: &Tagged, wanted: impl Fn(Watched, &str) -> bool) -> bool {
    match &change.1 {
        Change::Applied(n) | Change::Deleted(n) => wanted(change.0, n),
        // every keeper of the resource: what it missed may be its own
        Change::Relisted => true,
    }
}

/// The shared watches of one tenant; they stop when the hub is dropped.
pub struct Hub {
    tx: broadcast::Sender<Tagged>,
    task: AbortHandle,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    /// Watches the tenant's APIServices and its Services in `namespace`.
    pub fn start(client: &Client, namespace: &str) -> Self {
        let apis = crate::guard::changes(
            Api::<PartialObjectMeta<APIService>>::all(client.clone()),
            watcher::Config::default(),
        )
        .map(|c| (Watched::ApiServices, c))
        .boxed();
        let services = crate::guard::changes(
            Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .map(|c| (Watched::Services, c))
        .boxed();
        let (tx, _) = broadcast::channel(QUEUE);
        let sender = tx.clone();
        let mut all = futures::stream::select(apis, services);
        let task = tokio::spawn(async move {
            while let Some(change) = all.next().await {
                // no keeper listening (yet): nothing to wake
                let _ = sender.send(change);
            }
        })
        .abort_handle();
        Self { tx, task }
    }

    /// The changes `wanted` accepts (by resource and name); ends when the hub is dropped.
    pub fn subscribe(
        &self,
        wanted: impl Fn(Watched, &str) -> bool + Send + 'static,
    ) -> BoxStream<'static, Change> {
        let rx = self.tx.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(c) => Some((c, rx)),
                // changes were dropped: anything may have changed
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Some(((Watched::ApiServices, Change::Relisted), rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .filter_map(move |c| futures::future::ready(concerns(&c, &wanted).then_some(c.1)))
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keeper_wakes_for_its_own_names_and_for_relists_only() {
        let mine = |w: Watched, n: &str| {
            (w == Watched::ApiServices && n == "v1beta1.metrics.k8s.io")
                || (w == Watched::Services && n == "kvtenant-metrics")
        };
        let c = |w, ch| concerns(&(w, ch), mine);
        assert!(c(
            Watched::ApiServices,
            Change::Deleted("v1beta1.metrics.k8s.io".into())
        ));
        assert!(c(
            Watched::Services,
            Change::Applied("kvtenant-metrics".into())
        ));
        // the same name of the other resource, and other names, are someone else's
        assert!(!c(
            Watched::Services,
            Change::Deleted("v1beta1.metrics.k8s.io".into())
        ));
        assert!(!c(
            Watched::ApiServices,
            Change::Applied("v1.subresources.kubevirt.io".into())
        ));
        assert!(c(Watched::Services, Change::Relisted));
    }
}
