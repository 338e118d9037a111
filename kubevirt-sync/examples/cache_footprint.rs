//! How much memory a cached object takes: kube-runtime's reflector store (a `serde_json::Value`
//! tree per object, what the syncer kept before) against the syncer's compact cache
//! (`kvtenant_kubevirt_sync::cache`: the JSON bytes, LZ4-compressed against a dictionary), in the
//! same run. The VMs differ only in name, uid and resourceVersion, so they compress far better
//! against each other than real objects do (a real cache's figure needs a real workload).
//!
//! `cargo run --release -p kvtenant-kubevirt-sync --example cache_footprint [-- N RUNS]` runs each
//! store RUNS times (default 3), each in a fresh child process holding N (default 5000)
//! VirtualMachines, and prints the resident memory each added per object (RSS from /proc after
//! the objects are stored, minus RSS before). The VM is `samples/vm-cloudinit.yaml` with the
//! metadata and status KubeVirt's controllers write (synthetic, of the usual size).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::{Value, json};

const SAMPLE: &str = include_str!("../../samples/vm-cloudinit.yaml");

/// Resident memory of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// VM number `i`: the sample with what KubeVirt writes on a running VM.
fn vm(i: usize) -> DynamicObject {
    let mut vm: Value = serde_yaml::Deserializer::from_str(SAMPLE)
        .map(|d| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap()
        })
        .find(|d| d["kind"] == "VirtualMachine")
        .unwrap();
    vm["metadata"]["name"] = json!(format!("vm-{i}"));
    vm["metadata"]["uid"] = json!(format!("6f0c9a52-3b1e-4c7a-9d2f-{i:012}"));
    vm["metadata"]["resourceVersion"] = json!(format!("{}", 100_000 + i));
    vm["metadata"]["generation"] = json!(2);
    vm["metadata"]["creationTimestamp"] = json!("2026-12-05T10:00:00Z");
    vm["metadata"]["finalizers"] = json!(["kubevirt.io/virtualMachineControllerFinalize"]);
    // `kubectl apply` keeps the applied manifest in an annotation
    let applied =
        serde_json::to_string(&json!({"apiVersion": vm["apiVersion"], "kind": vm["kind"],
        "metadata": {"name": vm["metadata"]["name"], "namespace": vm["metadata"]["namespace"],
            "labels": vm["metadata"]["labels"]}, "spec": vm["spec"]}))
        .unwrap();
    vm["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": applied,
        "kubevirt.io/latest-observed-api-version": "v1",
        "kubevirt.io/storage-observed-api-version": "v1",
        "tenancy.kvtenant.io/tenant-uid": format!("1d7e2f40-8a55-4c11-b0e3-{i:012}"),
    });
    let condition = |t: &str, status: &str| {
        json!({"type": t, "status": status, "lastProbeTime": null,
            "lastTransitionTime": "2026-12-05T10:00:04Z"})
    };
    vm["status"] = json!({
        "conditions": [
            condition("Ready", "True"),
            condition("LiveMigratable", "False"),
            condition("StorageLiveMigratable", "True"),
            condition("AgentConnected", "True"),
        ],
        "created": true,
        "ready": true,
        "printableStatus": "Running",
        "runStrategy": "Always",
        "desiredGeneration": 2,
        "observedGeneration": 2,
        "volumeSnapshotStatuses": [
            {"name": "rootdisk", "enabled": false,
                "reason": "Snapshot is not supported for this volumeSource type [rootdisk]"},
            {"name": "cloudinit", "enabled": false,
                "reason": "Snapshot is not supported for this volumeSource type [cloudinit]"},
        ],
    });
    serde_json::from_value(vm).unwrap()
}

use serde::Deserialize;

fn ar_of() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

fn child(store: &str, n: usize) {
    let json_bytes = serde_json::to_vec(&vm(0)).unwrap().len();
    // every object is made and stored one at a time: what stays resident is what the store
    // keeps (plus what the allocator holds on to, as in the syncer)
    let before = rss();
    let (held, reads) = match store {
        "kube" => {
            let mut w = kube::runtime::reflector::store::Writer::<DynamicObject>::new(ar_of());
            for i in 0..n {
                w.apply_watcher_event(&watcher::Event::Apply(vm(i)));
            }
            let after = rss();
            let r = w.as_reader();
            let t = std::time::Instant::now();
            for i in 0..n {
                let key =
                    kube::runtime::reflector::ObjectRef::new_with(&format!("vm-{i}"), ar_of())
                        .within("default");
                assert!(r.get(&key).is_some());
            }
            (after, t.elapsed())
        }
        _ => {
            let mut w = kvtenant_kubevirt_sync::cache::Writer::default();
            for i in 0..n {
                w.apply_watcher_event(&watcher::Event::Apply(vm(i)));
            }
            let after = rss();
            let r = w.as_reader();
            let t = std::time::Instant::now();
            for i in 0..n {
                assert!(r.get("default", &format!("vm-{i}")).is_some());
            }
            (after, t.elapsed())
        }
    };
    println!(
        "{} {json_bytes} {:.1}",
        held.saturating_sub(before) / n,
        reads.as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], args[3].parse().unwrap());
        return;
    }
    let n: usize = args.get(1).map_or(5000, |a| a.parse().unwrap());
    let runs: usize = args.get(2).map_or(3, |a| a.parse().unwrap());
    let me = std::env::current_exe().unwrap();
    println!("{n} VirtualMachines per run, {runs} runs per store, each in a fresh process");
    println!(
        "| store | resident bytes per object (runs) | JSON bytes per object | µs per read (runs) |"
    );
    println!("|---|---|---|---|");
    for store in ["kube", "compact"] {
        let mut per = Vec::new();
        let mut read = Vec::new();
        let mut json = 0;
        for _ in 0..runs {
            let out = Command::new(&me)
                .args(["--child", store, &n.to_string()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace();
            per.push(it.next().unwrap().parse::<usize>().unwrap());
            json = it.next().unwrap().parse().unwrap();
            read.push(it.next().unwrap().to_owned());
        }
        let name = if store == "kube" {
            "kube-runtime reflector store (Value trees)"
        } else {
            "kvtenant cache (LZ4 against a dictionary)"
        };
        println!("| {name} | {per:?} | {json} | {} |", read.join(", "));
    }
}
