use super::*;
use serde_json::json;

fn vc() -> VirtualClusterRef {
    VirtualClusterRef {
        namespace: "tenants".into(),
        name: "t1".into(),
        uid: "uid-1".into(),
    }
}

fn host_registry() -> Value {
    json!({"metadata": {"name": "registry", "namespace": "platform"},
        "spec": {"type": "NodePort", "clusterIP": "10.0.0.20", "clusterIPs": ["10.0.0.20"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": "registry"},
            "ports": [{"name": "http", "port": 5000, "targetPort": 5000, "protocol": "TCP",
                "nodePort": 31000}]}})
}

#[test]
fn a_host_service_is_shown_selector_less_with_its_cluster_ip_and_ports() {
    let t = tenant_service("shared", "registry", "platform/registry", &host_registry()).unwrap();
    assert_eq!(
        t,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "registry", "namespace": "shared",
                "labels": {MAPPED_SERVICE: MAPPED_FROM_HOST},
                "annotations": {MAPPED_FROM: "platform/registry"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.20", "clusterIPs": ["10.0.0.20"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "http", "port": 5000, "targetPort": 5000, "protocol": "TCP"}]}})
    );
    assert!(is_from_host(&t));
    let ext = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
    let t = tenant_service("shared", "db", "platform/db", &ext).unwrap();
    assert_eq!(
        t["spec"],
        json!({"type": "ExternalName", "externalName": "db.example.com"})
    );
}

#[test]
fn headless_host_services_stay_headless_and_unaddressed_ones_are_not_shown() {
    let headless = json!({"spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
        "selector": {"app": "db"}, "ports": [{"port": 5432}]}});
    let t = tenant_service("a", "b", "p/h", &headless).unwrap();
    assert_eq!(
        t["spec"],
        json!({"type": "ClusterIP", "clusterIP": "None", "publishNotReadyAddresses": true,
            "ports": [{"port": 5432}]})
    );
    assert!(is_headless(&t) && is_headless(&headless));
    assert_eq!(
        action(Some(&t), true, &t, String::new()),
        Action::Keep,
        "stable"
    );
    let e = tenant_service("a", "b", "p/n", &json!({"spec": {}})).unwrap_err();
    assert!(e.contains("no cluster IP"), "{e}");
}

#[test]
fn a_tenant_service_is_shown_on_the_host_as_an_external_name_of_its_copy() {
    let tenant = json!({"metadata": {"name": "api", "namespace": "web"},
        "spec": {"clusterIP": "10.0.0.7", "selector": {"app": "api"},
            "ports": [{"port": 443, "targetPort": 8443, "protocol": "TCP", "nodePort": 30443}]}});
    let h = host_service(
        "monitoring",
        "web-api",
        "web/api",
        "tenants-ab12-t1-web",
        &tenant,
        &vc(),
    );
    assert_eq!(h["metadata"]["namespace"], "monitoring");
    assert_eq!(h["metadata"]["name"], "web-api");
    assert_eq!(
        h["spec"],
        json!({"type": "ExternalName",
            "externalName": "api.tenants-ab12-t1-web.svc.cluster.local",
            "ports": [{"port": 443, "targetPort": 8443, "protocol": "TCP"}]})
    );
    assert_eq!(h["metadata"]["annotations"][MAPPED_FROM], "web/api");
    assert!(is_own_to_host(&h, "uid-1", false));
    assert!(
        !is_own_to_host(&h, "uid-2", false),
        "another virtual cluster's"
    );
    assert!(
        !is_own_to_host(&h, "uid-1", true),
        "in a kvtenant namespace"
    );
    let mut copy = h.clone();
    copy["metadata"]["annotations"][TENANT_UID] = json!("x");
    assert!(!is_own_to_host(&copy, "uid-1", false), "a synced copy");
    let mut foreign = h.clone();
    foreign["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(MANAGED_BY);
    assert!(!is_own_to_host(&foreign, "uid-1", false));
}

#[test]
fn the_action_creates_keeps_applies_recreates_or_refuses() {
    let want = tenant_service("shared", "registry", "platform/registry", &host_registry()).unwrap();
    let no = || "taken".to_string();
    assert_eq!(action(None, false, &want, no()), Action::Create);
    // what the apiserver returns has more (uid, defaults): still as wanted
    let mut have = want.clone();
    have["metadata"]["uid"] = json!("u");
    have["spec"]["sessionAffinity"] = json!("None");
    assert_eq!(action(Some(&have), true, &want, no()), Action::Keep);
    assert_eq!(
        action(Some(&have), false, &want, no()),
        Action::Refuse("taken".into())
    );
    let mut port = have.clone();
    port["spec"]["ports"][0]["port"] = json!(5001);
    assert_eq!(action(Some(&port), true, &want, no()), Action::Apply);
    let mut extra_port = have.clone();
    extra_port["spec"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"port": 1}));
    assert_eq!(action(Some(&extra_port), true, &want, no()), Action::Apply);
    let mut ip = have.clone();
    ip["spec"]["clusterIP"] = json!("10.0.0.99");
    assert_eq!(action(Some(&ip), true, &want, no()), Action::Recreate);
    let ext = json!({"spec": {"type": "ExternalName", "externalName": "x"}});
    assert_eq!(action(Some(&ext), true, &want, no()), Action::Recreate);
    let mut unmarked = have.clone();
    unmarked["metadata"]["annotations"][MAPPED_FROM] = json!("platform/other");
    assert_eq!(action(Some(&unmarked), true, &want, no()), Action::Apply);
}

#[test]
fn to_host_targets_must_be_existing_namespaces_of_the_host_own() {
    assert!(
        host_namespace_problem("monitoring", None)
            .unwrap()
            .contains("does not exist")
    );
    let tenant_ns = BTreeMap::from([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())]);
    assert!(
        host_namespace_problem("tenants-ab-t2-web", Some(&tenant_ns))
            .unwrap()
            .contains("belongs to a virtual cluster")
    );
    assert_eq!(
        host_namespace_problem("monitoring", Some(&BTreeMap::new())),
        None
    );
}
