//! The host's StorageClasses, VolumeSnapshotClasses and CDI StorageProfiles as the
//! VolumeSnapshotClass resolution reads them ([`kvtenant_rules::snapshot_class::HostClasses`]),
//! for `spec.vmPolicy.allowedVolumeSnapshotClasses`. Watched only once a plan asks (a
//! VirtualMachineSnapshot of a virtual cluster that sets the list), then for as long as the
//! syncer leads (the watches stop with [`crate::host::Host`]). A kind whose CRD the host lacks
//! (no CSI snapshots, no CDI) counts as listed and empty; the watch keeps trying, so a CRD
//! installed later is seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kvtenant_kubeutil::{ApiErrorClass, classify};
use kvtenant_rules::snapshot_class::{
    HostClasses, profile_entry, snapshot_class_entry, storage_class_entry,
};
use serde_json::Value;
use tokio::task::JoinHandle;

/// The three kinds watched, in [`State::listed`] order.
const STORAGE_CLASSES: usize = 0;
const SNAPSHOT_CLASSES: usize = 1;
const PROFILES: usize = 2;

fn resource(index: usize) -> ApiResource {
    let (group, version, kind, plural) = match index {
        STORAGE_CLASSES => ("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        SNAPSHOT_CLASSES => (
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
        ),
        _ => (
            "cdi.kubevirt.io",
            "v1beta1",
            "StorageProfile",
            "storageprofiles",
        ),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

#[derive(Default)]
struct State {
    classes: HostClasses,
    listed: [bool; 3],
    /// What the plans read: `Some` once all three listed.
    current: Option<Arc<HostClasses>>,
}

impl State {
    fn publish(&mut self) {
        if self.listed.iter().all(|l| *l) {
            self.current = Some(Arc::new(self.classes.clone()));
        }
    }
}

/// One kind's entries in [`HostClasses`], by object: set (or, when the object gives none, such
/// as a StorageProfile without `status.snapshotClass`, removed), removed, replaced.
trait Entries: Send + Sync {
    fn set(&self, classes: &mut HostClasses, obj: &Value);
    fn remove(&self, classes: &mut HostClasses, name: &str);
    fn replace(&self, classes: &mut HostClasses, objs: &[Value]);
}

struct Field<T: 'static> {
    entry: fn(&Value) -> Option<(String, T)>,
    map: fn(&mut HostClasses) -> &mut BTreeMap<String, T>,
}

impl<T: Send + Sync + 'static> Entries for Field<T> {
    fn set(&self, classes: &mut HostClasses, obj: &Value) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (self.entry)(obj) {
            Some((n, e)) => {
                (self.map)(classes).insert(n, e);
            }
            None => {
                (self.map)(classes).remove(name);
            }
        }
    }
    fn remove(&self, classes: &mut HostClasses, name: &str) {
        (self.map)(classes).remove(name);
    }
    fn replace(&self, classes: &mut HostClasses, objs: &[Value]) {
        *(self.map)(classes) = objs.iter().filter_map(self.entry).collect();
    }
}

fn entries(index: usize) -> Box<dyn Entries> {
    match index {
        STORAGE_CLASSES => Box::new(Field {
            entry: storage_class_entry,
            map: |c| &mut c.storage_classes,
        }),
        SNAPSHOT_CLASSES => Box::new(Field {
            entry: snapshot_class_entry,
            map: |c| &mut c.snapshot_classes,
        }),
        _ => Box::new(Field {
            entry: profile_entry,
            map: |c| &mut c.profiles,
        }),
    }
}

/// The host's storage classes, watched from the first [`SnapshotClassWatch::get`].
pub struct SnapshotClassWatch {
    client: Client,
    state: Arc<RwLock<State>>,
    tasks: Mutex<Option<Vec<JoinHandle<()>>>>,
}

impl SnapshotClassWatch {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            state: Arc::default(),
            tasks: Mutex::new(None),
        }
    }

    /// The host's classes, `None` until each kind is listed. The first call starts the watches
    /// (from within the runtime; elsewhere nothing starts).
    pub fn get(&self) -> Option<Arc<HostClasses>> {
        self.start();
        self.state.read().ok()?.current.clone()
    }

    fn start(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *tasks = Some(
            [STORAGE_CLASSES, SNAPSHOT_CLASSES, PROFILES]
                .into_iter()
                .map(|i| rt.spawn(watch(self.client.clone(), i, self.state.clone())))
                .collect(),
        );
    }
}

impl Drop for SnapshotClassWatch {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for t in tasks.iter().flatten() {
            t.abort();
        }
    }
}

async fn watch(client: Client, index: usize, state: Arc<RwLock<State>>) {
    let resource = resource(index);
    let fields = entries(index);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(crate::slim)
        .boxed();
    let mut relisted: Vec<Value> = Vec::new();
    let update = |f: &dyn Fn(&mut HostClasses, &mut [bool; 3])| {
        if let Ok(mut s) = state.write() {
            let s = &mut *s;
            f(&mut s.classes, &mut s.listed);
            s.publish();
        }
    };
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(o)) => relisted.push(value(&o)),
            Ok(watcher::Event::InitDone) => {
                let objs = std::mem::take(&mut relisted);
                update(&|c, listed| {
                    fields.replace(c, &objs);
                    listed[index] = true;
                });
            }
            Ok(watcher::Event::Apply(o)) => {
                let v = value(&o);
                update(&|c, _| fields.set(c, &v));
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                update(&|c, _| fields.remove(c, &name));
            }
            // the host has no such CRD (no CSI snapshots, no CDI): none of these objects
            Err(watcher::Error::InitialListFailed(e))
                if classify(&e) == ApiErrorClass::NotFound =>
            {
                update(&|c, listed| {
                    fields.replace(c, &[]);
                    listed[index] = true;
                });
            }
            Err(e) => {
                tracing::warn!(kind = %resource.kind, error = %e, "watching the host's storage classes")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_follow_objects_and_a_profile_without_a_class_goes() {
        let mut c = HostClasses::default();
        let profiles = entries(PROFILES);
        profiles.set(
            &mut c,
            &json!({"metadata": {"name": "fast"}, "status": {"snapshotClass": "s"}}),
        );
        assert_eq!(c.profiles.get("fast").map(String::as_str), Some("s"));
        profiles.set(&mut c, &json!({"metadata": {"name": "fast"}, "status": {}}));
        assert!(c.profiles.is_empty());
        let classes = entries(STORAGE_CLASSES);
        classes.replace(
            &mut c,
            &[json!({"metadata": {"name": "a"}, "provisioner": "p"})],
        );
        assert_eq!(c.storage_classes.len(), 1);
        classes.remove(&mut c, "a");
        assert!(c.storage_classes.is_empty());
        assert_eq!(resource(SNAPSHOT_CLASSES).plural, "volumesnapshotclasses");
        assert_eq!(resource(PROFILES).group, "cdi.kubevirt.io");
    }
}
