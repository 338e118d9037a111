use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use super::*;

#[test]
fn minimal_spec_gets_defaults() {
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": {"name": "alpha", "namespace": "tenants"},
        "spec": {},
    }))
    .unwrap();
    let s = &vc.spec;
    assert_eq!(s, &VirtualClusterSpec::default());
    assert_eq!(s.kubernetes_version, "v1.37.2");
    assert_eq!(s.control_plane.mode, ControlPlaneMode::Managed);
    assert_eq!(s.control_plane.datastore, Datastore::Etcd);
    assert_eq!(s.control_plane.replicas, 1);
    assert_eq!(s.control_plane.storage.size, Quantity("5Gi".into()));
    assert_eq!(s.control_plane.storage.storage_class_name, None);
    assert_eq!(s.control_plane.kubeconfig_secret_ref, None);
    assert_eq!(s.expose.type_, ExposeType::ClusterIP);
    assert!(s.expose.extra_sans.is_empty());
    assert!(s.kubevirt.enabled && s.kubevirt.webhooks && s.kubevirt.subresources);
    assert_eq!(s.kubevirt.sync_kinds, SyncKind::DEFAULT);
    assert!(!s.kubevirt.sync_kinds.contains(&SyncKind::DataVolume));
    assert!(s.isolation.network_policy);
    assert_eq!(s.isolation.pod_security, PodSecurityLevel::Baseline);
    assert_eq!(s.isolation.resource_quota, None);
    assert!(!s.vm_policy.allow_host_nodes && !s.vm_policy.allow_host_disk);
    assert!(s.vm_policy.allowed_networks.is_empty());
    assert!(s.dns.enabled);
    assert_eq!(s.dns.image, "registry.k8s.io/coredns/coredns:v1.14.7");
    assert_eq!(s.dns.cluster_domain, "cluster.local");
    assert!(!s.paused);
    assert_eq!(vc.status, None);
}

#[test]
fn nested_defaults_apply_inside_partial_objects() {
    let s: VirtualClusterSpec = serde_json::from_value(json!({
        "controlPlane": {"mode": "External", "kubeconfigSecretRef": {"name": "kc"}},
        "kubevirt": {"syncKinds": ["VirtualMachine", "DataVolume"]},
    }))
    .unwrap();
    assert_eq!(s.control_plane.replicas, 1);
    let r = s.control_plane.kubeconfig_secret_ref.as_ref().unwrap();
    assert_eq!((r.name.as_str(), r.key.as_str()), ("kc", "kubeconfig"));
    assert!(s.kubevirt.enabled);
    assert!(s.syncs(SyncKind::DataVolume));
    assert!(!s.syncs(SyncKind::VirtualMachinePool));
    assert_eq!(s.control_plane.validate(), Ok(()));
    let s: VirtualClusterSpec =
        serde_json::from_value(json!({"dns": {"clusterDomain": "tenant.example"}})).unwrap();
    assert!(s.dns.enabled);
    assert_eq!(s.dns.image, DEFAULT_COREDNS_IMAGE);
    assert_eq!(s.dns.cluster_domain, "tenant.example");
}

#[test]
fn full_spec_round_trips() {
    let spec = json!({
        "kubernetesVersion": "v1.36.4",
        "controlPlane": {
            "mode": "Managed",
            "datastore": "Kine",
            "replicas": 0,
            "images": {"apiserver": "mirror.example/kube-apiserver:v1.36.4"},
            "resources": {"apiserver": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
            "storage": {"size": "10Gi", "storageClassName": "fast"},
        },
        "expose": {
            "type": "LoadBalancer",
            "extraSANs": ["vc.example.com", "192.0.2.10"],
            "serviceAnnotations": {"metallb.universe.tf/address-pool": "tenants"},
        },
        "kubevirt": {
            "enabled": true,
            "syncKinds": ["VirtualMachine", "VirtualMachineInstance"],
            "webhooks": false,
            "subresources": true,
        },
        "isolation": {
            "resourceQuota": {"hard": {"requests.cpu": "8", "requests.memory": "32Gi"}},
            "limitRange": {"limits": [{"type": "Container", "default": {"cpu": "500m"}}]},
            "networkPolicy": false,
            "internetEgress": false,
            "egressExcept": ["10.0.0.0/8"],
            "podSecurity": "restricted",
            "allowedIngressClasses": ["public"],
        },
        "vmPolicy": {
            "allowHostNodes": true,
            "allowHostDisk": false,
            "allowMigrations": false,
            "allowedHostDevices": ["nvidia.com/GA102GL_A10"],
            "allowedNetworks": ["net-system/vlan10"],
            "allowedInstancetypes": ["u1.small", "u1.medium"],
            "maxVcpusPerVm": 8,
            "maxMemoryPerVm": "16Gi",
            "quota": {"maxVms": 20, "vcpus": 64, "memory": "256Gi", "storage": "2Ti"},
        },
        "nodes": {"selector": {"pool": "tenant-a"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tenant-a", "effect": "NoSchedule"}]},
        "dns": {"enabled": false, "image": "mirror.example/coredns:v1.14.7", "clusterDomain": "tenant.example"},
        "sync": {"pods": false},
        "paused": true,
    });
    let parsed: VirtualClusterSpec = serde_json::from_value(spec.clone()).unwrap();
    assert_eq!(serde_json::to_value(&parsed).unwrap(), spec);
    let images = parsed.images();
    assert_eq!(images.apiserver, "mirror.example/kube-apiserver:v1.36.4");
    assert_eq!(
        images.controller_manager,
        "registry.k8s.io/kube-controller-manager:v1.36.4"
    );
    assert_eq!(images.etcd, DEFAULT_ETCD_IMAGE);
    assert_eq!(images.kine, DEFAULT_KINE_IMAGE);
    let p = &parsed.vm_policy;
    assert!(p.network_allowed("net-system/vlan10") && !p.network_allowed("vlan10"));
    assert!(p.host_device_allowed("nvidia.com/GA102GL_A10") && !p.host_device_allowed("x"));
    assert!(p.instancetype_allowed("u1.small") && !p.instancetype_allowed("u1.large"));
    assert!(VmPolicy::default().instancetype_allowed("anything"));
    let none = VmPolicy {
        allowed_instancetypes: Some(vec![]),
        ..VmPolicy::default()
    };
    assert!(!none.instancetype_allowed("u1.small"));
    assert!(VmPolicy::default().volume_snapshot_class_allowed("anything"));
    let gold = VmPolicy {
        allowed_volume_snapshot_classes: Some(vec!["gold".into()]),
        ..VmPolicy::default()
    };
    assert!(gold.volume_snapshot_class_allowed("gold"));
    assert!(!gold.volume_snapshot_class_allowed("silver"));
}

#[test]
fn default_images_follow_the_version() {
    let images = VirtualClusterSpec::default().images();
    assert_eq!(images.apiserver, "registry.k8s.io/kube-apiserver:v1.37.2");
    assert_eq!(
        images.controller_manager,
        "registry.k8s.io/kube-controller-manager:v1.37.2"
    );
}

#[test]
fn control_plane_mode_rule() {
    let external = |secret: bool| ControlPlaneSpec {
        mode: ControlPlaneMode::External,
        kubeconfig_secret_ref: secret.then(|| KubeconfigSecretRef {
            name: "kc".into(),
            key: DEFAULT_KUBECONFIG_KEY.into(),
        }),
        ..ControlPlaneSpec::default()
    };
    assert!(external(true).validate().is_ok());
    assert!(external(false).validate().is_err());
    let mut managed = external(true);
    managed.mode = ControlPlaneMode::Managed;
    assert!(managed.validate().is_err());
    assert!(ControlPlaneSpec::default().validate().is_ok());
}

#[test]
fn unknown_enum_values_are_rejected() {
    for spec in [
        json!({"controlPlane": {"mode": "Hosted"}}),
        json!({"kubevirt": {"syncKinds": ["Pod"]}}),
        json!({"isolation": {"podSecurity": "Baseline"}}),
    ] {
        assert!(
            serde_json::from_value::<VirtualClusterSpec>(spec.clone()).is_err(),
            "{spec}"
        );
    }
}

#[test]
fn kubernetes_version_check() {
    for ok in ["v1.37.2", "v1.0.0", "v1.123.45"] {
        assert!(is_valid_kubernetes_version(ok), "{ok}");
    }
    for bad in [
        "1.37.2",
        "v2.0.0",
        "v1.37",
        "v1.37.2-rc.0",
        "v1..2",
        "v1.37.x",
        "",
    ] {
        assert!(!is_valid_kubernetes_version(bad), "{bad}");
    }
}

#[test]
fn virtualcluster_name_check() {
    for ok in ["a", "alpha", "team-a-1", &"a".repeat(40)] {
        assert!(is_valid_virtualcluster_name(ok), "{ok}");
    }
    for bad in ["", "1abc", "-a", "a-", "Alpha", "a_b", &"a".repeat(41)] {
        assert!(!is_valid_virtualcluster_name(bad), "{bad}");
    }
}

#[test]
fn sync_kind_table_matches_kubevirt_crds() {
    assert_eq!(
        SyncKind::VirtualMachine.crd_name(),
        "virtualmachines.kubevirt.io"
    );
    assert_eq!(
        SyncKind::VirtualMachinePool.crd_name(),
        "virtualmachinepools.pool.kubevirt.io"
    );
    assert_eq!(
        SyncKind::VirtualMachineClone.crd_name(),
        "virtualmachineclones.clone.kubevirt.io"
    );
    assert_eq!(
        SyncKind::DataVolume.crd_name(),
        "datavolumes.cdi.kubevirt.io"
    );
    for k in SyncKind::ALL {
        assert_eq!(SyncKind::from_kind(k.kind()), Some(k));
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.kind()));
    }
    assert_eq!(SyncKind::from_kind("Pod"), None);
}

#[test]
fn status_conditions() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let cond = |status: &str, t: i64| Condition {
        type_: CONDITION_READY.into(),
        status: status.into(),
        reason: "R".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(t).unwrap()),
    };
    let mut s = VirtualClusterStatus::default();
    assert!(!s.is_true(CONDITION_READY));
    assert!(s.set_condition(cond("False", 1)));
    assert!(s.set_condition(cond("True", 2)));
    assert!(s.is_true(CONDITION_READY));
    // Same status: lastTransitionTime is kept, nothing changes.
    assert!(!s.set_condition(cond("True", 3)));
    assert_eq!(
        s.condition(CONDITION_READY).unwrap().last_transition_time,
        cond("True", 2).last_transition_time
    );
    assert_eq!(s.conditions.len(), 1);
    assert_eq!(Phase::Provisioning.to_string(), "Provisioning");
    assert_eq!(
        serde_json::to_value(Phase::Deleting).unwrap(),
        json!("Deleting")
    );
}

/// An object as a real kube-apiserver v1.37.2 returned it after defaulting (`kubectl get -o
/// json`, server-managed metadata trimmed), including a Quantity the user wrote as a number.
#[test]
fn object_returned_by_the_apiserver_deserializes() {
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"generation": 1, "name": "delta", "namespace": "tenants",
                     "uid": "e59ca241-45fb-4b51-a0f6-132b592b538a"},
        "spec": {
            "controlPlane": {"datastore": "Etcd", "mode": "Managed", "replicas": 1,
                             "storage": {"size": "5Gi"}},
            "expose": {"type": "ClusterIP"},
            "isolation": {"networkPolicy": true, "podSecurity": "baseline",
                          "resourceQuota": {"hard": {"cpu": 4}}},
            "kubernetesVersion": "v1.37.2",
            "kubevirt": {"enabled": true, "subresources": true, "webhooks": true,
                         "syncKinds": ["VirtualMachine", "VirtualMachineInstance",
                                       "VirtualMachineInstanceMigration", "VirtualMachinePool",
                                       "VirtualMachineClone"]},
            "paused": false,
            "vmPolicy": {"allowHostDisk": false, "allowHostNodes": false,
                         "maxMemoryPerVm": "8Gi", "quota": {"memory": "1Ti"}},
        },
    }))
    .unwrap();
    let hard = vc.spec.isolation.resource_quota.unwrap().hard.unwrap();
    assert_eq!(hard["cpu"], Quantity("4".into()));
    assert_eq!(
        vc.spec.vm_policy.quota.unwrap().memory,
        Some(Quantity("1Ti".into()))
    );
}

#[test]
fn version_changes_go_up_one_minor_at_a_time_and_never_down() {
    assert_eq!(version_change_problem("v1.37.2", "v1.37.2"), None);
    assert_eq!(version_change_problem("v1.37.2", "v1.37.3"), None);
    assert_eq!(version_change_problem("v1.37.2", "v1.38.0"), None);
    let down = version_change_problem("v1.37.2", "v1.37.1").unwrap();
    assert!(down.starts_with(messages::DOWNGRADE), "{down}");
    let down = version_change_problem("v1.37.2", "v1.36.9").unwrap();
    assert!(down.starts_with(messages::DOWNGRADE), "{down}");
    let skip = version_change_problem("v1.37.2", "v1.39.0").unwrap();
    assert!(skip.starts_with(messages::ONE_MINOR), "{skip}");
    assert!(version_change_problem("v1.37.2", "1.38.0").is_some());
}
