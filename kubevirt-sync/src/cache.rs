//! The syncer's object caches, compact: each object is kept as its JSON bytes (a few KiB for a
//! VM) instead of a `serde_json::Value` tree (three to four times that: a `String` and a map
//! node per key), and parsed when it is read. The syncer reads an object a few times per change
//! and holds every object of every tenant, so memory is what counts.
//!
//! [`Writer`] applies a watcher's events as kube-runtime's reflector store does (a relist
//! replaces the contents at its end); [`Store`] is the readers' view, shared by clones.
//! [`reflector`] also tells the watch's consumer what a relist dropped: objects deleted while
//! the watch was away (a watch that came back to 410 Gone lists again, and sees no deletes).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;

/// Namespace (empty for cluster-scoped objects) and name.
type Key = (String, String);

type Objects = HashMap<Key, Box<[u8]>>;

fn key_of(obj: &DynamicObject) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn encode(obj: &DynamicObject) -> Option<Box<[u8]>> {
    serde_json::to_vec(obj).ok().map(Vec::into_boxed_slice)
}

fn decode(bytes: &[u8]) -> Option<Arc<DynamicObject>> {
    serde_json::from_slice(bytes).ok().map(Arc::new)
}

/// The readers' view of a cache.
#[derive(Clone, Default)]
pub struct Store {
    objects: Arc<RwLock<Objects>>,
}

impl Store {
    /// The object `ns/name` (`ns` empty for cluster-scoped objects).
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .get(&(ns.to_owned(), name.to_owned()))
            .and_then(|b| decode(b))
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.values().filter_map(|b| decode(b)).collect()
    }

    /// The objects in namespaces for which `wanted` says yes (only those are parsed).
    pub fn state_in(&self, wanted: impl Fn(&str) -> bool) -> Vec<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .iter()
            .filter(|((ns, _), _)| wanted(ns))
            .filter_map(|(_, b)| decode(b))
            .collect()
    }

    /// How many objects, and how many bytes they take as JSON.
    pub fn size(&self) -> (usize, usize) {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        (objects.len(), objects.values().map(|b| b.len()).sum())
    }
}

/// Which namespaces' objects a cache keeps ([`Writer::keep_only`]).
pub type NamespaceFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a watcher writes through.
#[derive(Default)]
pub struct Writer {
    store: Store,
    /// Objects of a relist in progress: they replace the contents once it is done.
    relist: Option<Objects>,
    keep: Option<NamespaceFilter>,
}

impl Writer {
    pub fn as_reader(&self) -> Store {
        self.store.clone()
    }

    /// Keeps only the objects of the namespaces `keep` says yes to; the others pass through
    /// to the watch's consumer uncached.
    pub fn keep_only(&mut self, keep: NamespaceFilter) {
        self.keep = Some(keep);
    }

    fn kept(&self, obj: &DynamicObject) -> bool {
        self.keep
            .as_ref()
            .is_none_or(|keep| keep(obj.metadata.namespace.as_deref().unwrap_or_default()))
    }

    /// Applies a watcher's event. At the end of a relist, returns the objects held before that
    /// the relist did not bring back (deleted while nothing watched).
    pub fn apply_watcher_event(
        &mut self,
        event: &watcher::Event<DynamicObject>,
    ) -> Vec<Arc<DynamicObject>> {
        let objects = || {
            self.store
                .objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
        };
        match event {
            watcher::Event::Init => self.relist = Some(Objects::new()),
            watcher::Event::InitApply(obj) => {
                if !self.kept(obj) {
                    return Vec::new();
                }
                if let (Some(relist), Some(bytes)) = (self.relist.as_mut(), encode(obj)) {
                    relist.insert(key_of(obj), bytes);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    let old = std::mem::replace(&mut *objects(), relist);
                    let now = objects();
                    return old
                        .iter()
                        .filter(|(k, _)| !now.contains_key(*k))
                        .filter_map(|(_, b)| decode(b))
                        .collect();
                }
            }
            watcher::Event::Apply(obj) if !self.kept(obj) => {
                objects().remove(&key_of(obj));
            }
            watcher::Event::Apply(obj) => {
                if let Some(bytes) = encode(obj) {
                    objects().insert(key_of(obj), bytes);
                }
            }
            watcher::Event::Delete(obj) => {
                objects().remove(&key_of(obj));
            }
        }
        Vec::new()
    }
}

/// Applies a watcher's events to `writer` as they pass (kube-runtime's `reflector`, for these
/// caches). Before the end of a relist (`InitDone`) it passes on a `Delete` for each object the
/// relist dropped, so the consumer handles a delete it never saw as any other.
pub fn reflector<'a, S>(writer: &'a mut Writer, stream: S) -> impl Stream<Item = S::Item> + 'a
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + 'a,
{
    stream.flat_map(move |event| {
        let mut out: Vec<S::Item> = match &event {
            Ok(e) => writer
                .apply_watcher_event(e)
                .into_iter()
                .map(|gone| Ok(watcher::Event::Delete(Arc::unwrap_or_clone(gone))))
                .collect(),
            Err(_) => Vec::new(),
        };
        out.push(event);
        futures::stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ns: &str, name: &str, v: i64) -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns, "labels": {"a": "b"}},
            "spec": {"runStrategy": "Always", "n": v}}),
        )
        .unwrap()
    }

    #[test]
    fn objects_come_back_as_they_went_in() {
        let mut w = Writer::default();
        let store = w.as_reader();
        let vm = obj("ns", "vm", 1);
        w.apply_watcher_event(&watcher::Event::Apply(vm.clone()));
        let back = store.get("ns", "vm").unwrap();
        assert_eq!(
            serde_json::to_value(&*back).unwrap(),
            serde_json::to_value(&vm).unwrap()
        );
        assert!(store.get("other", "vm").is_none());
        w.apply_watcher_event(&watcher::Event::Apply(obj("ns", "vm", 2)));
        assert_eq!(store.get("ns", "vm").unwrap().data["spec"]["n"], 2);
        assert_eq!(store.size().0, 1);
        w.apply_watcher_event(&watcher::Event::Delete(obj("ns", "vm", 2)));
        assert!(store.get("ns", "vm").is_none());
    }

    #[test]
    fn a_relist_replaces_the_contents_when_it_is_done() {
        let mut w = Writer::default();
        let store = w.as_reader();
        w.apply_watcher_event(&watcher::Event::Apply(obj("ns", "gone", 1)));
        w.apply_watcher_event(&watcher::Event::Init);
        w.apply_watcher_event(&watcher::Event::InitApply(obj("ns", "kept", 1)));
        assert!(
            store.get("ns", "gone").is_some(),
            "the old contents stay until the relist is done"
        );
        w.apply_watcher_event(&watcher::Event::InitApply(obj("other", "kept", 1)));
        let dropped = w.apply_watcher_event(&watcher::Event::InitDone);
        let dropped: Vec<String> = dropped.iter().map(|o| o.name_any()).collect();
        assert_eq!(dropped, ["gone"], "what the relist dropped is told");
        assert!(store.get("ns", "gone").is_none());
        assert_eq!(store.state().len(), 2);
        assert_eq!(store.state_in(|ns| ns == "other").len(), 1);
    }

    #[tokio::test]
    async fn the_reflector_passes_on_a_delete_for_what_a_relist_dropped() {
        let mut w = Writer::default();
        let store = w.as_reader();
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(obj("ns", "a", 1))),
            Ok(watcher::Event::InitApply(obj("ns", "b", 1))),
            Ok(watcher::Event::InitDone),
            // the watch expired (410 Gone): a relist without b
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(obj("ns", "a", 2))),
            Ok(watcher::Event::InitDone),
        ];
        let seen: Vec<String> = reflector(&mut w, futures::stream::iter(events))
            .map(|e| match e.unwrap() {
                watcher::Event::Init => "init".to_owned(),
                watcher::Event::InitApply(o) => format!("list {}", o.name_any()),
                watcher::Event::InitDone => "done".to_owned(),
                watcher::Event::Apply(o) => format!("apply {}", o.name_any()),
                watcher::Event::Delete(o) => format!("delete {}", o.name_any()),
            })
            .collect()
            .await;
        assert_eq!(
            seen,
            [
                "init", "list a", "list b", "done", "init", "list a", "delete b", "done"
            ]
        );
        assert!(store.get("ns", "b").is_none());
        assert_eq!(store.get("ns", "a").unwrap().data["spec"]["n"], 2);
    }

    #[tokio::test]
    async fn a_filtered_cache_keeps_only_its_namespaces_and_passes_the_rest_on() {
        let mut w = Writer::default();
        w.keep_only(Arc::new(|ns| ns == "kvtenant-a"));
        let store = w.as_reader();
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(obj("kvtenant-a", "mine", 1))),
            Ok(watcher::Event::InitApply(obj("kube-system", "host", 1))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(obj("default", "host", 1))),
            Ok(watcher::Event::Apply(obj("kvtenant-a", "new", 1))),
        ];
        let seen = reflector(&mut w, futures::stream::iter(events))
            .collect::<Vec<_>>()
            .await
            .len();
        assert_eq!(seen, 6, "every event reaches the watch's consumer");
        let mut kept: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
        kept.sort();
        assert_eq!(kept, ["mine", "new"]);
        assert!(store.get("kube-system", "host").is_none());
        assert!(store.get("default", "host").is_none());
    }
}
