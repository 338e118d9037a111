//! Volume hotplug: `virtctl addvolume --persist` / `removevolume --persist` change the VM's
//! spec. The proxy forwards these calls to the host's virt-api, so the change lands on the host
//! copy, whose spec the tenant owns; treated as drift, it would be reverted.
//!
//! What KubeVirt v1.8.1 writes (`pkg/virt-api/rest/volumes.go`,
//! `controller.ApplyVolumeRequestOnVMISpec`): with the `HotplugVolumes` feature gate virt-api
//! records the request in the VM's `status.volumeRequests` and virt-controller applies it to
//! `spec.template.spec`; with only `DeclarativeHotplugVolumes` virt-api patches the spec itself.
//! Either way an add appends one volume (a `persistentVolumeClaim` or `dataVolume` source with
//! `hotpluggable: true`) and one disk of the same name; a remove (only of a hotpluggable volume)
//! drops the volume and the disk of that name. `virtctl memory-dump get --claim-name=X` works
//! alike: virt-api records `status.memoryDumpRequest`, and virt-controller, once the VM runs,
//! adds a `memoryDump` volume (hotpluggable, no disk) named after the claim, removed again by
//! `memory-dump remove`.
//!
//! The rule ([`host_hotplug_change`]): when the tenant VM is unchanged since kvtenant last wrote
//! the host copy (same content hash) and the host copy differs from what kvtenant would write
//! only in such additions and removals, they are taken up into the tenant VM (a merge patch of
//! its volumes and disks). An added volume must name a claim or DataVolume the tenant has in the
//! VM's own namespace (`owns`), carry nothing but its name and that source, and come with its
//! disk (a memory dump's without); a removed one must have been hotpluggable. Anything else on the host copy is drift and
//! repaired, so the syncer stays the boundary: a hotplug of something the tenant could not name
//! itself is reverted.

use serde_json::{Map, Value, json};

use super::VmTemplate;
use super::refs::ObjRef;
use crate::kinds::{data_volume, pvc};
use crate::translate::{SPEC_HASH, contained};

fn hash(o: &kube::api::DynamicObject) -> Option<&String> {
    o.metadata.annotations.as_ref()?.get(SPEC_HASH)
}

fn named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

fn name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// A memory dump's volume: virt-controller adds it without a disk.
fn is_memory_dump(vol: &Value) -> bool {
    vol.get("memoryDump").is_some()
}

fn list(spec: Option<&Value>, ptr: &str) -> Vec<Value> {
    spec.and_then(|s| s.pointer(ptr))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// What a hotpluggable volume names: its claim (a `persistentVolumeClaim` or `memoryDump`
/// source) or DataVolume. `None` for any other volume, and for one with more than its name and
/// that one source.
pub fn hotplugged_source(vol: &Value) -> Option<ObjRef> {
    let o = vol.as_object()?;
    if o.len() != 2 || name(vol).is_none() {
        return None;
    }
    let (kind, source, field) = if let Some(s) = o.get("persistentVolumeClaim") {
        (pvc::KIND, s, "claimName")
    } else if let Some(s) = o.get("memoryDump") {
        (pvc::KIND, s, "claimName")
    } else if let Some(s) = o.get("dataVolume") {
        (data_volume::KIND, s, "name")
    } else {
        return None;
    };
    if source.get("hotpluggable").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let target = source.get(field)?.as_str().filter(|n| !n.is_empty())?;
    Some(ObjRef {
        kind,
        name: target.to_string(),
    })
}

/// The list the tenant takes up: the host's order, the tenant's entry where it has one (host
/// defaults are not taken up), the host's for an added one. `None` when an entry both have
/// differs beyond host defaults.
fn merged(host: &[Value], want: &[Value]) -> Option<Vec<Value>> {
    host.iter()
        .map(|h| match name(h).and_then(|n| named(want, n)) {
            Some(w) if contained(w, h) => Some(w.clone()),
            Some(_) => None,
            None => Some(h.clone()),
        })
        .collect()
}

/// The merge patch that takes a volume hotplug on the host copy (`host`) up into the tenant
/// object, when it differs from what kvtenant would write (`desired`) only by hotplugged
/// volumes and their disks, every added volume naming an object the tenant has (`owns`).
/// `None` otherwise (see the module documentation).
pub fn host_hotplug_change(
    template: &VmTemplate,
    host: &kube::api::DynamicObject,
    desired: &kube::api::DynamicObject,
    owns: &dyn Fn(&ObjRef) -> bool,
) -> Option<Value> {
    if hash(host).is_none() || hash(host) != hash(desired) {
        return None;
    }
    let (hs, ws) = (
        template.vmi_spec(&host.data),
        template.vmi_spec(&desired.data),
    );
    let (hv, wv) = (list(hs, "/volumes"), list(ws, "/volumes"));
    let (hd, wd) = (
        list(hs, "/domain/devices/disks"),
        list(ws, "/domain/devices/disks"),
    );
    let added: Vec<&Value> = hv
        .iter()
        .filter(|v| name(v).is_none_or(|n| named(&wv, n).is_none()))
        .collect();
    let removed: Vec<&Value> = wv
        .iter()
        .filter(|v| name(v).is_none_or(|n| named(&hv, n).is_none()))
        .collect();
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    for v in &added {
        let source = hotplugged_source(v)?;
        let n = name(v)?;
        let has_disk = named(&hd, n).is_some();
        if !owns(&source) || has_disk == is_memory_dump(v) || named(&wd, n).is_some() {
            return None;
        }
    }
    for v in &removed {
        let n = name(v)?;
        if hotplugged_source(v).is_none() || named(&hd, n).is_some() {
            return None;
        }
    }
    // disks change only with their volumes
    for d in &hd {
        let n = name(d)?;
        if named(&wd, n).is_none() && !added.iter().any(|v| name(v) == Some(n)) {
            return None;
        }
    }
    for d in &wd {
        let n = name(d)?;
        if named(&hd, n).is_none() && !removed.iter().any(|v| name(v) == Some(n)) {
            return None;
        }
    }
    let volumes = merged(&hv, &wv)?;
    let disks = merged(&hd, &wd)?;
    // nothing else differs: the rest of what kvtenant would write is on the host
    let mut want = desired.data.clone();
    let mut have = host.data.clone();
    for o in [&mut want, &mut have] {
        if let Some(m) = o.as_object_mut() {
            m.remove("status");
        }
        if let Some(s) = o
            .pointer_mut(template.vmi_spec)
            .and_then(Value::as_object_mut)
        {
            s.remove("volumes");
            if let Some(devices) = s
                .get_mut("domain")
                .and_then(|d| d.get_mut("devices"))
                .and_then(Value::as_object_mut)
            {
                devices.remove("disks");
            }
        }
    }
    if !contained(&want, &have) {
        return None;
    }
    let mut spec = json!({"volumes": volumes, "domain": {"devices": {"disks": disks}}});
    for key in template.vmi_spec.trim_start_matches('/').split('/').rev() {
        let mut m = Map::new();
        m.insert(key.to_string(), spec);
        spec = Value::Object(m);
    }
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::virtual_machine::TEMPLATE;
    use kube::api::DynamicObject;

    fn vm(hash: &str, volumes: Value, disks: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "h", "annotations": {SPEC_HASH: hash}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {"disks": disks}, "memory": {"guest": "128Mi"}},
                "volumes": volumes}}},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn root() -> Value {
        json!({"name": "root", "containerDisk": {"image": "img"}})
    }

    fn hot_pvc(name: &str, claim: &str) -> Value {
        json!({"name": name, "persistentVolumeClaim": {"claimName": claim, "hotpluggable": true}})
    }

    fn disk(name: &str) -> Value {
        json!({"name": name, "disk": {"bus": "scsi"}})
    }

    fn tenant_has(r: &ObjRef) -> bool {
        r.name == "data" || r.name == "dv1"
    }

    #[test]
    fn an_added_volume_of_the_tenants_is_taken_up() {
        let desired = vm("a", json!([root()]), json!([{"name": "root"}]));
        let host = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root", "disk": {"bus": "virtio"}}, disk("data")]),
        );
        assert_eq!(
            host_hotplug_change(&TEMPLATE, &host, &desired, &tenant_has),
            Some(json!({"spec": {"template": {"spec": {
                "volumes": [root(), hot_pvc("data", "data")],
                // the tenant's own disk stays as the tenant wrote it (no host defaults)
                "domain": {"devices": {"disks": [{"name": "root"}, disk("data")]}}}}}}))
        );
        let dv = json!({"name": "d", "dataVolume": {"name": "dv1", "hotpluggable": true}});
        let host = vm(
            "a",
            json!([root(), dv.clone()]),
            json!([{"name": "root"}, disk("d")]),
        );
        assert!(host_hotplug_change(&TEMPLATE, &host, &desired, &tenant_has).is_some());
    }

    #[test]
    fn a_memory_dump_volume_of_the_tenants_claim_is_taken_up() {
        let desired = vm("a", json!([root()]), json!([{"name": "root"}]));
        let dump = |claim: &str| json!({"name": claim, "memoryDump": {"claimName": claim, "hotpluggable": true}});
        let host = vm(
            "a",
            json!([root(), dump("data")]),
            json!([{"name": "root"}]),
        );
        assert!(host_hotplug_change(&TEMPLATE, &host, &desired, &tenant_has).is_some());
        // back to the VM without it (memory-dump remove)
        assert!(host_hotplug_change(&TEMPLATE, &desired, &host, &tenant_has).is_some());
        let other = vm("a", json!([root(), dump("x")]), json!([{"name": "root"}]));
        assert!(host_hotplug_change(&TEMPLATE, &other, &desired, &tenant_has).is_none());
        // a memory dump comes without a disk
        let with_disk = vm(
            "a",
            json!([root(), dump("data")]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(host_hotplug_change(&TEMPLATE, &with_disk, &desired, &tenant_has).is_none());
    }

    #[test]
    fn a_removed_hotplugged_volume_is_taken_up() {
        let desired = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root"}, disk("data")]),
        );
        let host = vm("a", json!([root()]), json!([{"name": "root"}]));
        assert_eq!(
            host_hotplug_change(&TEMPLATE, &host, &desired, &tenant_has),
            Some(json!({"spec": {"template": {"spec": {
                "volumes": [root()], "domain": {"devices": {"disks": [{"name": "root"}]}}}}}}))
        );
    }

    #[test]
    fn what_the_tenant_could_not_name_or_hotplug_did_not_make_is_drift() {
        let desired = vm("a", json!([root()]), json!([{"name": "root"}]));
        let none = |host: &DynamicObject, desired: &DynamicObject| {
            host_hotplug_change(&TEMPLATE, host, desired, &tenant_has).is_none()
        };
        // a claim the tenant has not (another namespace's, the host's)
        let other = vm(
            "a",
            json!([root(), hot_pvc("x", "elsewhere")]),
            json!([{"name": "root"}, disk("x")]),
        );
        assert!(none(&other, &desired));
        // not hotpluggable
        let cold = vm(
            "a",
            json!([root(), {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(none(&cold, &desired));
        // another source, or more than the source
        let host_disk = vm(
            "a",
            json!([root(), {"name": "data", "hostDisk": {"path": "/", "type": "Disk"}}]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(none(&host_disk, &desired));
        let mut extra = hot_pvc("data", "data");
        extra["containerDisk"] = json!({"image": "x"});
        let extra = vm(
            "a",
            json!([root(), extra]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(none(&extra, &desired));
        // no disk with it
        let no_disk = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root"}]),
        );
        assert!(none(&no_disk, &desired));
        // another change besides: a disk, a volume, the memory
        let virtio = vm(
            "a",
            json!([root()]),
            json!([{"name": "root", "disk": {"bus": "virtio"}}]),
        );
        let changed_disk = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root", "disk": {"bus": "sata"}}, disk("data")]),
        );
        assert!(none(&changed_disk, &virtio));
        let changed_root = vm(
            "a",
            json!([{"name": "root", "containerDisk": {"image": "other"}}, hot_pvc("data", "data")]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(none(&changed_root, &desired));
        let mut memory = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root"}, disk("data")]),
        );
        memory.data["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = json!("1Gi");
        assert!(none(&memory, &desired));
        // the tenant changed its VM meanwhile: the tenant's wins
        let newer = vm("b", json!([root()]), json!([{"name": "root"}]));
        let ok = vm(
            "a",
            json!([root(), hot_pvc("data", "data")]),
            json!([{"name": "root"}, disk("data")]),
        );
        assert!(none(&ok, &newer));
        // a removal of a volume that was not hotplugged
        let host = vm("a", json!([]), json!([]));
        assert!(none(&host, &desired));
        // nothing changed
        assert!(none(&desired, &desired));
    }
}
