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
    assert!(etcd_members_problem(&t, Some(&sts)).is_none());
}

#[test]
fn the_etcd_member_count_is_kept() {
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
    assert!(
        etcd_members_problem(&t3, None).is_none(),
        "a new control plane"
    );
    assert!(etcd_members_problem(&t1, Some(&made_with_one)).is_none());
    assert!(
        etcd_members_problem(&t0, Some(&made_with_one)).is_none(),
        "stopping"
    );
    let problem = etcd_members_problem(&t3, Some(&made_with_one)).unwrap();
    assert!(
        problem.contains("created with 1") && problem.contains("Set replicas back to 1"),
        "{problem}"
    );
    assert!(etcd_members_problem(&t1, Some(&made_with_three)).is_some());
    // made before the annotation existed: one member
    let mut legacy = made_with_one.clone();
    legacy.metadata.annotations = None;
    assert!(etcd_members_problem(&t3, Some(&legacy)).is_some());
    assert!(etcd_members_problem(&t1, Some(&legacy)).is_none());
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
