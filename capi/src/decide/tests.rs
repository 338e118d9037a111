#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::types::KvtenantControlPlaneSpec;
use kvtenant_api::{VirtualClusterSpec, VirtualClusterStatus};

fn cp(name: &str) -> KvtenantControlPlane {
    let mut cp = KvtenantControlPlane::new(
        name,
        KvtenantControlPlaneSpec {
            version: None,
            control_plane_endpoint: None,
            virtual_cluster: VirtualClusterSpec::default(),
        },
    );
    cp.metadata.namespace = Some("team".into());
    cp.metadata.uid = Some("cp-uid".into());
    cp.metadata.generation = Some(2);
    cp
}

fn owner(kind: &str, api_version: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: "u".into(),
        ..Default::default()
    }
}

fn vc_with(phase: Phase, answers: bool) -> VirtualCluster {
    let mut vc = VirtualCluster::new("alpha-control-plane", VirtualClusterSpec::default());
    let mut s = VirtualClusterStatus {
        phase: Some(phase),
        kubernetes_version: Some("v1.37.2".into()),
        message: Some("waiting for StatefulSet".into()),
        ..Default::default()
    };
    s.set_condition(cond(CONDITION_CONTROL_PLANE_READY, answers, "x", "", None));
    vc.status = Some(s);
    vc
}

fn get<'a>(s: &'a KvtenantControlPlaneStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn the_owning_cluster_is_the_capi_cluster_owner_only() {
    let mut m = ObjectMeta::default();
    assert_eq!(owner_cluster(&m), None);
    m.owner_references = Some(vec![
        owner("Cluster", "other.example.com/v1", "not-this"),
        owner("Cluster", "cluster.x-k8s.io/v1beta2", "alpha"),
    ]);
    assert_eq!(owner_cluster(&m).as_deref(), Some("alpha"));
}

#[test]
fn paused_by_annotation_or_cluster() {
    let mut m = ObjectMeta::default();
    assert!(!paused(&m, false));
    assert!(paused(&m, true));
    m.annotations = Some([(PAUSED_ANNOTATION.to_owned(), String::new())].into());
    assert!(paused(&m, false));
}

#[test]
fn a_control_plane_named_like_its_cluster_is_refused_with_the_fix() {
    assert_eq!(name_problem("alpha-control-plane", "alpha"), None);
    let m = name_problem("alpha", "alpha").unwrap();
    assert!(m.contains("\"alpha-kubeconfig\""), "{m}");
    assert!(m.contains("alpha-control-plane"), "{m}");
}

#[test]
fn the_virtual_cluster_is_owned_labelled_and_takes_spec_version() {
    let mut c = cp("alpha-control-plane");
    c.spec.version = Some("v1.37.9".into());
    c.spec.virtual_cluster.kubernetes_version = "v1.37.2".into();
    let vc = virtual_cluster(&c, "alpha");
    assert_eq!(vc.metadata.name.as_deref(), Some("alpha-control-plane"));
    assert_eq!(vc.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(vc.spec.kubernetes_version, "v1.37.9");
    assert_eq!(vc.labels()[CLUSTER_NAME_LABEL], "alpha");
    let r = &vc.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (r.kind.as_str(), r.uid.as_str(), r.controller),
        ("KvtenantControlPlane", "cp-uid", Some(true))
    );
    // without spec.version the VirtualCluster's own version stays
    let c = cp("beta");
    assert_eq!(
        virtual_cluster(&c, "b").spec.kubernetes_version,
        VirtualClusterSpec::default().kubernetes_version
    );
}

#[test]
fn endpoints_parse_host_and_port() {
    let e = |u: &str| endpoint(u).map(|e| (e.host, e.port));
    assert_eq!(
        e("https://127.0.0.1:31443"),
        Some(("127.0.0.1".into(), 31443))
    );
    assert_eq!(
        e("https://alpha-apiserver.team.svc"),
        Some(("alpha-apiserver.team.svc".into(), 443))
    );
    assert_eq!(e("https://[fd00::1]:6443/"), Some(("fd00::1".into(), 6443)));
    assert_eq!(e("https://[fd00::1]"), Some(("fd00::1".into(), 443)));
    assert_eq!(e("http://insecure:80"), None);
    assert_eq!(e("https://:443"), None);
    assert_eq!(e("https://h:0"), None);
    assert_eq!(e("https://h:99999"), None);
}

#[test]
fn the_kubeconfig_secret_follows_the_contract() {
    let s = kubeconfig_secret(&cp("alpha-control-plane"), "alpha", b"apiVersion: v1");
    assert_eq!(s.metadata.name.as_deref(), Some("alpha-kubeconfig"));
    assert_eq!(s.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(s.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    assert_eq!(s.labels()[CLUSTER_NAME_LABEL], "alpha");
    assert_eq!(s.data.unwrap()["value"].0, b"apiVersion: v1");
    assert_eq!(
        s.metadata.owner_references.unwrap()[0].controller,
        Some(true)
    );
}

#[test]
fn initialized_once_the_apiserver_answers_with_the_secret_then_available_when_ready() {
    let c = cp("alpha-control-plane");
    let init = |s: &KvtenantControlPlaneStatus| {
        s.initialization.as_ref().unwrap().control_plane_initialized
    };

    let provisioning = vc_with(Phase::Provisioning, false);
    let s = control_plane_status(
        &c,
        &Observed::VirtualCluster {
            vc: &provisioning,
            kubeconfig_written: false,
        },
    );
    assert_eq!(init(&s), Some(false));
    assert_eq!(s.ready, Some(false));
    assert_eq!(get(&s, CONDITION_AVAILABLE).reason, "WaitingForKubeconfig");
    assert_eq!(get(&s, CONDITION_KUBECONFIG_SECRET_READY).status, "False");
    assert_eq!(
        s.virtual_cluster_name.as_deref(),
        Some("alpha-control-plane")
    );

    // the apiserver answers, the syncer not yet: initialized, not available
    let answering = vc_with(Phase::Provisioning, true);
    let s = control_plane_status(
        &c,
        &Observed::VirtualCluster {
            vc: &answering,
            kubeconfig_written: true,
        },
    );
    assert_eq!(init(&s), Some(true));
    assert_eq!(s.initialized, Some(true));
    assert_eq!(s.ready, Some(false));
    let a = get(&s, CONDITION_AVAILABLE);
    assert_eq!(a.reason, "VirtualClusterNotReady");
    assert!(
        a.message.contains("Provisioning: waiting for StatefulSet"),
        "{}",
        a.message
    );

    let ready = vc_with(Phase::Ready, true);
    let mut c2 = c.clone();
    c2.status = Some(s.clone());
    let s2 = control_plane_status(
        &c2,
        &Observed::VirtualCluster {
            vc: &ready,
            kubeconfig_written: true,
        },
    );
    assert_eq!(s2.ready, Some(true));
    assert_eq!(s2.version.as_deref(), Some("v1.37.2"));
    assert_eq!(get(&s2, CONDITION_AVAILABLE).status, "True");
    // unchanged statuses keep their transition time
    assert_eq!(
        get(&s2, CONDITION_KUBECONFIG_SECRET_READY).last_transition_time,
        get(&s, CONDITION_KUBECONFIG_SECRET_READY).last_transition_time
    );

    // initialization latches: the apiserver down again does not undo it
    let mut c3 = c.clone();
    c3.status = Some(s2);
    let down = vc_with(Phase::Provisioning, false);
    let s3 = control_plane_status(
        &c3,
        &Observed::VirtualCluster {
            vc: &down,
            kubeconfig_written: true,
        },
    );
    assert_eq!(init(&s3), Some(true));
    assert_eq!(s3.ready, Some(false));
}

#[test]
fn waiting_refused_and_paused_are_reported() {
    let c = cp("alpha");
    let s = control_plane_status(&c, &Observed::NoCluster);
    assert_eq!(get(&s, CONDITION_AVAILABLE).reason, "WaitingForCluster");
    assert_eq!(s.initialized, Some(false));
    let s = control_plane_status(&c, &Observed::Refused("names clash".into()));
    assert_eq!(get(&s, CONDITION_AVAILABLE).message, "names clash");
    let s = control_plane_status(
        &c,
        &Observed::Failed("apply Secret team/x: forbidden".into()),
    );
    let a = get(&s, CONDITION_AVAILABLE);
    assert_eq!(
        (a.reason.as_str(), a.message.as_str()),
        ("ReconcileError", "apply Secret team/x: forbidden")
    );

    // paused keeps what was reported and says so
    let mut c2 = c.clone();
    let ready = vc_with(Phase::Ready, true);
    c2.status = Some(control_plane_status(
        &c,
        &Observed::VirtualCluster {
            vc: &ready,
            kubeconfig_written: true,
        },
    ));
    let s = control_plane_status(&c2, &Observed::Paused);
    assert_eq!(get(&s, CONDITION_PAUSED).status, "True");
    assert_eq!(get(&s, CONDITION_AVAILABLE).status, "True");
    assert_eq!(s.ready, Some(true));
    assert_eq!(s.conditions.len(), 3);
}

#[test]
fn the_infrastructure_is_provisioned_once_owned_unless_paused() {
    let c = KvtenantCluster::new("alpha", Default::default());
    let s = infrastructure_status(&c, false, false);
    assert!(s.initialization.is_none());
    assert_eq!(s.conditions[0].reason, "WaitingForCluster");
    let s = infrastructure_status(&c, false, true);
    assert_eq!(s.initialization.unwrap().provisioned, Some(true));
    assert_eq!(s.ready, Some(true));
    let s = infrastructure_status(&c, true, true);
    assert!(s.initialization.is_none());
    assert_eq!(s.conditions[0].type_, CONDITION_PAUSED);
}

#[test]
fn the_kubeconfig_key_is_kvtenants_or_the_external_secrets() {
    let mut vc = VirtualCluster::new("a", VirtualClusterSpec::default());
    assert_eq!(vc_kubeconfig_key(&vc), "kubeconfig");
    vc.spec.control_plane.kubeconfig_secret_ref = Some(
        serde_json::from_value(serde_json::json!({"name": "imported", "key": "admin.conf"}))
            .unwrap(),
    );
    assert_eq!(vc_kubeconfig_key(&vc), "admin.conf");
}

#[test]
fn a_watch_filter_selects_by_capis_label() {
    assert_eq!(watch_selector(""), None);
    assert_eq!(
        watch_selector("team-a").as_deref(),
        Some("cluster.x-k8s.io/watch-filter=team-a")
    );
}
