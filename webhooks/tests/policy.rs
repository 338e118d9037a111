//! The tenant VM policy and quota arithmetic (pure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kvtenant_api::{VmPolicy, VmQuota};
use kvtenant_rules::Violation;
use kvtenant_rules::kinds::{self, Kind};
use kvtenant_rules::vm::size::GuestSize;
use kvtenant_webhooks::policy::{
    Usage, check_quota, has_limits, is_mirror, quota_message, violations_message,
};
use serde_json::{Value, json};

// The per-kind rules the webhook applies come from each kind's module (kvtenant-rules); these
// helpers read them the way the webhook does.
fn kind(name: &str) -> &'static Kind {
    kinds::by_kind(name).unwrap()
}

fn footprint(k: &str, obj: &Value, size: GuestSize) -> Usage {
    kind(k).usage(obj, size).unwrap()
}

fn counts(k: &str, obj: &Value) -> bool {
    let k = kind(k);
    k.in_quota() && k.usage(obj, GuestSize::default()).is_some()
}

fn object_violations(
    k: &str,
    obj: &Value,
    policy: &VmPolicy,
    instancetype: Option<GuestSize>,
) -> Vec<Violation> {
    kind(k).violations(obj, &kvtenant_rules::Policy::vm_only(policy), instancetype)
}

fn vm(run: &str, cores: u64, memory: &str, disk: Option<&str>) -> Value {
    let mut v = json!({"metadata": {"name": "vm", "namespace": "default"}, "spec": {
        "runStrategy": run,
        "template": {"spec": {"domain": {"cpu": {"cores": cores}, "memory": {"guest": memory}}}},
    }});
    if let Some(d) = disk {
        v["spec"]["dataVolumeTemplates"] =
            json!([{"spec": {"storage": {"resources": {"requests": {"storage": d}}}}}]);
    }
    v
}

const GI: u128 = 1 << 30;

#[test]
fn footprints_count_vms_running_resources_and_storage() {
    let size = GuestSize {
        vcpus: 2,
        memory: GI,
    };
    let running = vm("Always", 2, "1Gi", Some("10Gi"));
    assert_eq!(
        footprint("VirtualMachine", &running, size),
        Usage {
            vms: 1,
            vcpus: 2,
            memory: GI,
            storage: 10 * GI
        }
    );
    let halted = vm("Halted", 2, "1Gi", Some("10Gi"));
    assert_eq!(
        footprint("VirtualMachine", &halted, size),
        Usage {
            vms: 1,
            vcpus: 0,
            memory: 0,
            storage: 10 * GI
        }
    );
    let pool = json!({"spec": {"replicas": 3, "virtualMachineTemplate": {"spec": {"runStrategy": "Always",
        "template": {"spec": {"domain": {}}}}}}});
    assert_eq!(
        footprint("VirtualMachinePool", &pool, size),
        Usage {
            vms: 3,
            vcpus: 6,
            memory: 3 * GI,
            storage: 0
        }
    );
    let dv = json!({"spec": {"pvc": {"resources": {"requests": {"storage": "5Gi"}}}}});
    assert_eq!(
        footprint("DataVolume", &dv, size),
        Usage {
            storage: 5 * GI,
            ..Usage::default()
        }
    );
}

#[test]
fn what_counts_on_its_own() {
    let owned =
        |kind: &str| json!({"metadata": {"ownerReferences": [{"kind": kind, "name": "x"}]}});
    assert!(counts("VirtualMachine", &json!({"metadata": {}})));
    assert!(
        !counts("VirtualMachine", &owned("VirtualMachinePool")),
        "the pool counts it"
    );
    assert!(counts("VirtualMachine", &owned("VirtualMachineClone")));
    assert!(counts("VirtualMachineInstance", &json!({"metadata": {}})));
    assert!(
        !counts("VirtualMachineInstance", &owned("VirtualMachine")),
        "its VM counts it"
    );
    assert!(
        !counts("DataVolume", &owned("VirtualMachine")),
        "the VM's template counts it"
    );
    let mirror = json!({"metadata": {"annotations": {"tenancy.kvtenant.io/mirror-of-uid": "u"}}});
    assert!(is_mirror(&mirror));
    assert!(!counts("DataVolume", &mirror));
    assert!(!counts("Secret", &json!({})));
}

#[test]
fn the_quota_names_the_field_and_lets_shrinking_updates_through() {
    let quota = VmQuota {
        max_vms: Some(1),
        vcpus: Some(4),
        memory: Some(Quantity("4Gi".into())),
        storage: None,
    };
    assert!(has_limits(&quota));
    assert!(!has_limits(&VmQuota::default()));
    let one = Usage {
        vms: 1,
        vcpus: 2,
        memory: GI,
        storage: 0,
    };
    // a second VM
    let over = check_quota(&quota, one, None, one);
    assert_eq!(over.len(), 1);
    assert_eq!(
        over[0].to_string(),
        "spec.vmPolicy.quota.maxVms: requested 1, used 1, limited 1"
    );
    // the first VM
    assert!(check_quota(&quota, Usage::default(), None, one).is_empty());
    // growing an existing VM past the memory quota
    let big = Usage {
        vms: 1,
        vcpus: 2,
        memory: 5 * GI,
        storage: 0,
    };
    let over = check_quota(&quota, Usage::default(), Some(one), big);
    assert_eq!(
        over[0].to_string(),
        "spec.vmPolicy.quota.memory: requested 5Gi, used 0, limited 4Gi"
    );
    // an update that does not grow passes even when the tenant is over quota already
    let crowded = Usage {
        vms: 5,
        vcpus: 40,
        memory: 40 * GI,
        storage: 0,
    };
    assert!(check_quota(&quota, crowded, Some(big), big).is_empty());
    assert!(check_quota(&quota, crowded, Some(big), one).is_empty());
    let msg = quota_message(
        "VirtualMachine",
        "vm-b",
        &check_quota(&quota, one, None, one),
    );
    assert!(msg.starts_with(r#"VirtualMachine "vm-b" exceeds this virtual cluster's VM quota (VirtualCluster spec.vmPolicy.quota"#), "{msg}");
}

#[test]
fn policy_rules_are_the_syncers_and_name_the_virtualcluster_field() {
    let policy = VmPolicy {
        max_vcpus_per_vm: Some(2),
        ..VmPolicy::default()
    };
    let v = vm("Always", 8, "1Gi", None);
    let found = object_violations("VirtualMachine", &v, &policy, None);
    assert_eq!(found.len(), 1);
    let msg = violations_message("VirtualMachine", "vm", &found);
    assert!(msg.contains("spec.vmPolicy.maxVcpusPerVm"), "{msg}");
    assert!(msg.contains("VirtualCluster spec.vmPolicy"), "{msg}");
    // the same rules as the syncer's safety check
    let mut hd = vm("Always", 1, "1Gi", None);
    hd["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "h", "hostDisk": {"path": "/x", "type": "Disk"}}]);
    assert_eq!(
        object_violations("VirtualMachine", &hd, &VmPolicy::default(), None),
        kvtenant_rules::vm::safety::check(
            &kvtenant_rules::kinds::virtual_machine::TEMPLATE,
            &hd,
            &VmPolicy::default()
        )
    );
    let dv = json!({"spec": {"source": {"pvc": {"namespace": "other", "name": "x"}}}});
    assert_eq!(
        object_violations("DataVolume", &dv, &VmPolicy::default(), None).len(),
        1
    );
    // an instancetype's size counts when known
    let mut typed = vm("Always", 1, "1Gi", None);
    typed["spec"]["template"]["spec"]["domain"] = json!({});
    typed["spec"]["instancetype"] = json!({"name": "u1.xlarge"});
    let size = GuestSize {
        vcpus: 4,
        memory: 16 * GI,
    };
    assert_eq!(
        object_violations("VirtualMachine", &typed, &policy, Some(size)).len(),
        1
    );
}
