use super::*;
use kvtenant_api::{VirtualCluster, VirtualClusterSpec};

fn vc(replicas: i32, datastore: Datastore) -> VirtualCluster {
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.replicas = replicas;
    spec.control_plane.datastore = datastore;
    let mut vc = VirtualCluster::new("alpha", spec);
    vc.metadata.namespace = Some("tenants".into());
    vc.metadata.uid = Some("uid-1".into());
    vc
}

fn args(sts: &StatefulSet, name: &str) -> Vec<String> {
    let pod = sts.spec.template.spec.as_ref().unwrap();
    let c = pod.containers.iter().find(|c| c.name == name).unwrap();
    c.args.clone().unwrap_or_default()
}

#[test]
fn three_replicas_on_etcd_run_a_three_member_cluster_with_peer_tls() {
    let v = vc(3, Datastore::Etcd);
    let t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h").unwrap();
    assert_eq!(sts.spec.replicas, Some(3));
    assert_eq!(sts.spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        sts.metadata.annotations.as_ref().unwrap()[ETCD_MEMBERS],
        "3"
    );
    let etcd = args(&sts, "etcd");
    let initial = etcd
        .iter()
        .find_map(|a| a.strip_prefix("--initial-cluster="))
        .unwrap();
    assert_eq!(
        initial,
        "alpha-cp-0=https://alpha-cp-0.alpha-cp.tenants.svc:2380,\
         alpha-cp-1=https://alpha-cp-1.alpha-cp.tenants.svc:2380,\
         alpha-cp-2=https://alpha-cp-2.alpha-cp.tenants.svc:2380"
    );
    assert!(etcd.contains(&"--name=$(POD_NAME)".to_owned()));
    assert!(etcd.contains(&"--peer-client-cert-auth=true".to_owned()));
    assert!(etcd.contains(&format!(
        "--peer-trusted-ca-file={ETCD_PKI_DIR}/{}",
        pki::keys::ETCD_CA_CRT
    )));
    let pod = sts.spec.template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "etcd-pki")
        .unwrap();
    let items: Vec<_> = volume
        .secret
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| i.key.as_str())
        .collect();
    assert!(
        !items.contains(&pki::keys::ETCD_CA_KEY),
        "never the CA's key: {items:?}"
    );
    assert!(args(&sts, "kube-controller-manager").contains(&"--leader-elect=true".to_owned()));
    assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 1);
    let [_, headless] = services(&t).unwrap();
    let ports: Vec<_> = headless
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(
        ports,
        [i32::from(APISERVER_PORT), i32::from(ETCD_PEER_PORT)]
    );
    assert_eq!(etcd_peer_sans(&t)[0], "*.alpha-cp.tenants.svc");
}

#[test]
fn one_replica_renders_as_before() {
    let v = vc(1, Datastore::Etcd);
    let t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h").unwrap();
    assert_eq!(
        sts.spec.pod_management_policy.as_deref(),
        Some("OrderedReady")
    );
    assert!(args(&sts, "etcd").contains(&"--name=etcd".to_owned()));
    assert!(args(&sts, "kube-controller-manager").contains(&"--leader-elect=false".to_owned()));
    assert!(etcd_peer_sans(&t).is_empty());
    let pod = sts.spec.template.spec.as_ref().unwrap();
    assert!(pod.topology_spread_constraints.is_none());
}

#[test]
fn three_replicas_on_an_external_datastore_are_three_apiservers() {
    let mut v = vc(3, Datastore::ExternalEtcd);
    v.spec.control_plane.external_etcd =
        Some(serde_json::from_value(json!({"endpoints": ["http://db:2379"]})).unwrap());
    let t = Target::new(&v).unwrap();
    let sts = statefulset(&t, "h").unwrap();
    assert_eq!(sts.spec.replicas, Some(3));
    assert_eq!(
        sts.spec.pod_management_policy.as_deref(),
        Some("OrderedReady")
    );
    assert!(
        sts.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(ETCD_MEMBERS))
    );
    assert!(args(&sts, "kube-controller-manager").contains(&"--leader-elect=true".to_owned()));
    assert_eq!(etcd_state(&t, Some(&sts)), Ok(EtcdState::default()));
}

#[test]
fn the_etcd_member_count_is_kept_or_grown_from_one_to_three() {
    let one = vc(1, Datastore::Etcd);
    let three = vc(3, Datastore::Etcd);
    let stopped = vc(0, Datastore::Etcd);
    let (t1, t3, t0) = (
        Target::new(&one).unwrap(),
        Target::new(&three).unwrap(),
        Target::new(&stopped).unwrap(),
    );
    let made_with_one = statefulset(&t1, "h").unwrap();
    let made_with_three = statefulset(&t3, "h").unwrap();
    let state = |t: &Target<'_>, sts: Option<&StatefulSet>| etcd_state(t, sts);
    assert_eq!(
        state(&t3, None),
        Ok(EtcdState::default()),
        "a new control plane"
    );
    let kept = |n| EtcdState {
        members: Some(n),
        growth: None,
    };
    assert_eq!(state(&t1, Some(&made_with_one)), Ok(kept(1)));
    assert_eq!(state(&t0, Some(&made_with_one)), Ok(kept(1)), "stopping");
    assert_eq!(
        state(&t0, Some(&made_with_three)),
        Ok(kept(3)),
        "stopping keeps three members"
    );
    assert_eq!(
        state(&t3, Some(&made_with_one)),
        Ok(EtcdState {
            members: Some(1),
            growth: Some(Growth::Joining { pods: 1 })
        }),
        "one member grows to three"
    );
    let problem = state(&t1, Some(&made_with_three)).unwrap_err();
    assert!(
        problem.contains("has 3") && problem.contains("Set replicas back to 3"),
        "{problem}"
    );
    // made before the annotation existed: one member
    let mut legacy = made_with_one.clone();
    legacy.metadata.annotations = None;
    assert!(matches!(
        state(&t3, Some(&legacy)),
        Ok(EtcdState {
            growth: Some(Growth::Joining { .. }),
            ..
        })
    ));
    assert_eq!(state(&t1, Some(&legacy)), Ok(kept(1)));

    // a stopped 3-member control plane keeps its 3-member command
    let mut t0 = Target::new(&stopped).unwrap();
    t0.etcd = kept(3);
    let sts = statefulset(&t0, "h").unwrap();
    assert_eq!(sts.spec.replicas, Some(0));
    assert!(args(&sts, "etcd").iter().any(|a| a.contains("alpha-cp-2=")));
}

#[test]
fn a_growing_etcd_joins_its_new_members_to_the_existing_one() {
    let three = vc(3, Datastore::Etcd);
    let mut t = Target::new(&three).unwrap();
    t.etcd = EtcdState {
        members: Some(1),
        growth: Some(Growth::Joining { pods: 1 }),
    };
    let sts = statefulset(&t, "h").unwrap();
    assert_eq!(
        sts.spec.replicas,
        Some(1),
        "the new members are not in etcd yet"
    );
    assert_eq!(
        sts.spec.pod_management_policy.as_deref(),
        Some("OrderedReady"),
        "immutable: kept from the one-member StatefulSet"
    );
    let a = sts.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        (a[ETCD_MEMBERS].as_str(), a[ETCD_GROWTH].as_str()),
        ("1", "joining")
    );
    let etcd = args(&sts, "etcd");
    for flag in [
        "--initial-cluster-state=existing",
        "--max-learners=2",
        "--name=$(POD_NAME)",
    ] {
        assert!(etcd.contains(&flag.to_owned()), "{flag} in {etcd:?}");
    }
    assert_eq!(
        grown_peer_urls(&t),
        [
            "https://alpha-cp-0.alpha-cp.tenants.svc:2380",
            "https://alpha-cp-1.alpha-cp.tenants.svc:2380",
            "https://alpha-cp-2.alpha-cp.tenants.svc:2380"
        ]
    );
    assert!(
        !etcd_peer_sans(&t).is_empty(),
        "the peer certificate is issued"
    );

    t.etcd.growth = Some(Growth::Joining { pods: 3 });
    assert_eq!(statefulset(&t, "h").unwrap().spec.replicas, Some(3));

    t.etcd.growth = Some(Growth::Done);
    let done = statefulset(&t, "h").unwrap();
    let a = done.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        (a[ETCD_MEMBERS].as_str(), a[ETCD_GROWTH].as_str()),
        ("3", "done")
    );
    assert_eq!(done.spec.replicas, Some(3));
    assert!(args(&done, "etcd").contains(&"--initial-cluster-state=existing".to_owned()));
    // a grown etcd stays as it is
    assert_eq!(
        etcd_state(&t, Some(&done)),
        Ok(EtcdState {
            members: Some(3),
            growth: Some(Growth::Done)
        })
    );
}

#[test]
fn the_budget_lets_one_pod_go() {
    let v = vc(3, Datastore::Etcd);
    let t = Target::new(&v).unwrap();
    let pdb = pod_disruption_budget(&t).unwrap();
    let spec = pdb.spec.unwrap();
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(spec.selector.unwrap().match_labels.unwrap(), t.pod_labels());
}
