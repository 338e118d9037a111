//! The syncer's object caches, compact: each object is kept as its JSON bytes (a few KiB for a
//! VM) instead of a `serde_json::Value` tree (three to four times that: a `String` and a map
//! node per key), and parsed when it is read. The syncer reads an object a few times per change
//! and holds every object of every tenant, so memory is what counts.
//!
//! The bytes are LZ4-compressed against the cache's dictionary: the JSON of the first object
//! it stored (of at most [`DICT_MAX`] bytes). Objects of one kind repeat each other's keys,
//! labels, images and status layout, so what is left per object is mostly its names, uids and
//! timestamps. Objects stored before the cache has a dictionary stay plain JSON; the dictionary
//! never changes once set, so every entry stays readable.
//!
//! [`Writer`] applies a watcher's events as kube-runtime's reflector store does (a relist
//! replaces the contents at its end); [`Store`] is the readers' view, shared by clones.
//! [`reflector`] also tells the watch's consumer what a relist dropped: objects deleted while
//! the watch was away (a watch that came back to 410 Gone lists again, and sees no deletes).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use prometheus_client::metrics::gauge::Gauge;

/// Namespace (empty for cluster-scoped objects) and name.
type Key = (String, String);

type Objects = HashMap<Key, Box<[u8]>>;

fn key_of(obj: &DynamicObject) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The largest object whose JSON becomes a cache's dictionary (LZ4 looks back 64 KiB at most;
/// a larger first object waits for a smaller one).
pub const DICT_MAX: usize = 32 * 1024;

/// An entry's first byte: what follows.
const PLAIN: u8 = 0;
const PACKED: u8 = 1;

/// A cache's dictionary, set once by its writer, read by every reader.
type Dict = Arc<OnceLock<Box<[u8]>>>;

/// An object's JSON as an entry: compressed against `dict` if the cache has one, else as it is.
fn pack(json: &[u8], dict: Option<&[u8]>) -> Box<[u8]> {
    let mut entry = Vec::new();
    match dict {
        Some(dict) => {
            let packed = lz4_flex::block::compress_prepend_size_with_dict(json, dict);
            entry.reserve_exact(1 + packed.len());
            entry.push(PACKED);
            entry.extend_from_slice(&packed);
        }
        None => {
            entry.reserve_exact(1 + json.len());
            entry.push(PLAIN);
            entry.extend_from_slice(json);
        }
    }
    entry.into_boxed_slice()
}

fn decode(entry: &[u8], dict: &OnceLock<Box<[u8]>>) -> Option<Arc<DynamicObject>> {
    let (&tag, rest) = entry.split_first()?;
    let obj = match tag {
        PACKED => {
            let json =
                lz4_flex::block::decompress_size_prepended_with_dict(rest, dict.get()?).ok()?;
            serde_json::from_slice(&json).ok()?
        }
        _ => serde_json::from_slice(rest).ok()?,
    };
    Some(Arc::new(obj))
}

/// The readers' view of a cache.
#[derive(Clone, Default)]
pub struct Store {
    objects: Arc<RwLock<Objects>>,
    dict: Dict,
}

impl Store {
    /// The object `ns/name` (`ns` empty for cluster-scoped objects).
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .get(&(ns.to_owned(), name.to_owned()))
            .and_then(|b| decode(b, &self.dict))
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .values()
            .filter_map(|b| decode(b, &self.dict))
            .collect()
    }

    /// The objects in namespaces for which `wanted` says yes (only those are parsed).
    pub fn state_in(&self, wanted: impl Fn(&str) -> bool) -> Vec<Arc<DynamicObject>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .iter()
            .filter(|((ns, _), _)| wanted(ns))
            .filter_map(|(_, b)| decode(b, &self.dict))
            .collect()
    }

    /// How many objects, how many bytes their entries take, and how many the dictionary.
    pub fn size(&self) -> (usize, usize, usize) {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        (
            objects.len(),
            objects.values().map(|b| b.len()).sum(),
            self.dict.get().map_or(0, |d| d.len()),
        )
    }
}

/// Which namespaces' objects a cache keeps ([`Writer::keep_only`]).
pub type NamespaceFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The gauges a cache counts its objects and bytes in (shared by the caches of one kind and
/// side: each adds what it holds, and takes it back when dropped).
#[derive(Clone, Default)]
pub struct Counted {
    pub objects: Gauge,
    pub bytes: Gauge,
}

/// What a watcher writes through.
#[derive(Default)]
pub struct Writer {
    store: Store,
    /// Objects of a relist in progress: they replace the contents once it is done.
    relist: Option<Objects>,
    keep: Option<NamespaceFilter>,
    counted: Counted,
    /// What this cache has added to `counted`: objects, bytes.
    held: (i64, i64),
}

fn len(entry: &[u8]) -> i64 {
    i64::try_from(entry.len()).unwrap_or(i64::MAX)
}

fn total(objects: &Objects) -> (i64, i64) {
    (
        i64::try_from(objects.len()).unwrap_or(i64::MAX),
        objects.values().map(|e| len(e)).sum(),
    )
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.counted.objects.dec_by(self.held.0);
        self.counted.bytes.dec_by(self.held.1);
    }
}

impl Writer {
    pub fn as_reader(&self) -> Store {
        self.store.clone()
    }

    /// Counts what this cache holds in `counted` from now on.
    pub fn count_in(mut self, counted: Counted) -> Self {
        counted.objects.inc_by(self.held.0);
        counted.bytes.inc_by(self.held.1);
        self.counted = counted;
        self
    }

    /// Adds a change of what the cache holds to its gauges.
    fn count(&mut self, objects: i64, bytes: i64) {
        self.held.0 += objects;
        self.held.1 += bytes;
        self.counted.objects.inc_by(objects);
        self.counted.bytes.inc_by(bytes);
    }

    /// `obj` as an entry. The first object small enough becomes the cache's dictionary (counted).
    fn encode(&mut self, obj: &DynamicObject) -> Option<Box<[u8]>> {
        let json = serde_json::to_vec(obj).ok()?;
        if self.store.dict.get().is_none()
            && json.len() <= DICT_MAX
            && self.store.dict.set(json.clone().into_boxed_slice()).is_ok()
        {
            self.count(0, len(&json));
        }
        Some(pack(&json, self.store.dict.get().map(|d| &d[..])))
    }

    fn insert(&mut self, key: Key, entry: Box<[u8]>) {
        let added = len(&entry);
        let old = self
            .store
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry);
        match old {
            Some(old) => self.count(0, added - len(&old)),
            None => self.count(1, added),
        }
    }

    fn remove(&mut self, key: &Key) {
        let old = self
            .store
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(old) = old {
            self.count(-1, -len(&old));
        }
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
        match event {
            watcher::Event::Init => self.relist = Some(Objects::new()),
            watcher::Event::InitApply(obj) => {
                if !self.kept(obj) {
                    return Vec::new();
                }
                let entry = self.encode(obj);
                if let (Some(relist), Some(bytes)) = (self.relist.as_mut(), entry) {
                    relist.insert(key_of(obj), bytes);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    let now = total(&relist);
                    let old = std::mem::replace(
                        &mut *self
                            .store
                            .objects
                            .write()
                            .unwrap_or_else(|e| e.into_inner()),
                        relist,
                    );
                    let before = total(&old);
                    self.count(now.0 - before.0, now.1 - before.1);
                    let objects = self.store.objects.read().unwrap_or_else(|e| e.into_inner());
                    return old
                        .iter()
                        .filter(|(k, _)| !objects.contains_key(*k))
                        .filter_map(|(_, b)| decode(b, &self.store.dict))
                        .collect();
                }
            }
            watcher::Event::Apply(obj) if !self.kept(obj) => self.remove(&key_of(obj)),
            watcher::Event::Apply(obj) => {
                if let Some(entry) = self.encode(obj) {
                    self.insert(key_of(obj), entry);
                }
            }
            watcher::Event::Delete(obj) => self.remove(&key_of(obj)),
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
    fn objects_are_kept_compressed_against_the_first_and_come_back_whole() {
        let mut w = Writer::default();
        let store = w.as_reader();
        let mut json = 0;
        for i in 0..50 {
            let vm = obj("tenant-ns", &format!("vm-{i}"), i);
            json += serde_json::to_vec(&vm).unwrap().len();
            w.apply_watcher_event(&watcher::Event::Apply(vm));
        }
        let (n, bytes, dict) = store.size();
        assert_eq!(n, 50);
        assert!(dict > 0, "the first object became the dictionary");
        assert!(
            bytes * 3 < json,
            "50 objects of one kind take {bytes} bytes against {json} as JSON"
        );
        for i in 0..50 {
            assert_eq!(
                serde_json::to_value(&*store.get("tenant-ns", &format!("vm-{i}")).unwrap())
                    .unwrap(),
                serde_json::to_value(obj("tenant-ns", &format!("vm-{i}"), i)).unwrap()
            );
        }
    }

    #[test]
    fn a_first_object_too_large_for_a_dictionary_stays_plain_and_readable() {
        let mut w = Writer::default();
        let store = w.as_reader();
        let mut big = obj("ns", "big", 1);
        big.data["spec"]["blob"] = json!("x".repeat(DICT_MAX));
        w.apply_watcher_event(&watcher::Event::Apply(big.clone()));
        assert_eq!(store.size().2, 0, "no dictionary from an object that large");
        w.apply_watcher_event(&watcher::Event::Apply(obj("ns", "small", 1)));
        assert!(
            store.size().2 > 0,
            "the next object small enough is the dictionary"
        );
        assert_eq!(store.get("ns", "big").unwrap().data, big.data);
        assert_eq!(store.get("ns", "small").unwrap().data["spec"]["n"], 1);
    }

    proptest::proptest! {
        /// Whatever a tenant writes comes back from the cache as it was, whichever object
        /// became the dictionary.
        #[test]
        fn any_objects_come_back_as_they_went_in(
            objects in proptest::collection::vec(
                (
                    "[a-z0-9]{1,20}",
                    proptest::collection::btree_map("[a-z./-]{1,30}", "\\PC{0,40}", 0..6),
                    proptest::collection::vec(any_value(), 0..6),
                ),
                1..12,
            )
        ) {
            let mut w = Writer::default();
            let store = w.as_reader();
            let mut wanted = std::collections::BTreeMap::new();
            for (name, labels, items) in objects {
                let o: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "ns", "labels": labels},
                    "data": {"items": items},
                }))
                .unwrap();
                wanted.insert(name, serde_json::to_value(&o).unwrap());
                w.apply_watcher_event(&watcher::Event::Apply(o));
            }
            for (name, want) in wanted {
                let back = serde_json::to_value(&*store.get("ns", &name).unwrap()).unwrap();
                proptest::prop_assert_eq!(back, want);
            }
        }
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(|b| json!(b)),
            "\\PC{0,64}".prop_map(|s| json!(s)),
            Just(json!(null)),
        ]
    }

    #[test]
    fn the_gauges_follow_what_the_caches_hold_and_drop_it_with_them() {
        let counted = Counted::default();
        let mut a = Writer::default().count_in(counted.clone());
        let mut b = Writer::default().count_in(counted.clone());
        let store = a.as_reader();
        for i in 0..3 {
            a.apply_watcher_event(&watcher::Event::Apply(obj("ns", &format!("vm-{i}"), i)));
        }
        b.apply_watcher_event(&watcher::Event::Apply(obj("ns", "other", 1)));
        let held = |s: &Store| {
            let (n, bytes, dict) = s.size();
            (n, bytes + dict)
        };
        let (n, bytes) = held(&store);
        let (bn, bbytes) = held(&b.as_reader());
        assert_eq!(counted.objects.get(), (n + bn) as i64);
        assert_eq!(counted.bytes.get(), (bytes + bbytes) as i64);
        // a delete, and a relist that keeps one object
        a.apply_watcher_event(&watcher::Event::Delete(obj("ns", "vm-0", 0)));
        a.apply_watcher_event(&watcher::Event::Init);
        a.apply_watcher_event(&watcher::Event::InitApply(obj("ns", "vm-1", 5)));
        a.apply_watcher_event(&watcher::Event::InitDone);
        let (n, bytes) = held(&store);
        assert_eq!(n, 1);
        assert_eq!(counted.objects.get(), (n + bn) as i64);
        assert_eq!(counted.bytes.get(), (bytes + bbytes) as i64);
        drop(a);
        drop(b);
        assert_eq!((counted.objects.get(), counted.bytes.get()), (0, 0));
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
