//! Pods and Services: the host decides (node, status, addresses, the end of a pod) and the
//! tenant shows it; nothing of the host's identity reaches a pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::fake::*;
use super::*;

/// A tenant pod as the tenant's apiserver stores it (token projection, default tolerations).
fn pod(extra: Value) -> DynamicObject {
    let mut spec = json!({
        "serviceAccountName": "default", "serviceAccount": "default",
        "schedulerName": "default-scheduler", "priority": 0,
        "containers": [{"name": "web", "image": "nginx",
            "envFrom": [{"configMapRef": {"name": "settings"}}]}],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    obj(
        "Pod",
        json!({"metadata": {"name": "web-1", "namespace": "default", "uid": "t-pod",
            "resourceVersion": "3", "labels": {"app": "web"}}, "spec": spec}),
    )
}

/// The host copy of `t`, scheduled on `node`, with a status.
fn scheduled(f: &Fake, t: &DynamicObject, node: &str, phase: &str) -> DynamicObject {
    let p = run(f, "Pod", Some(t), None);
    let created = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::CreateHost(h) => Some(h.as_ref().clone()),
            _ => None,
        })
        .expect("created");
    let mut h = created;
    h.metadata.uid = Some("h-pod".into());
    h.data["spec"]["nodeName"] = json!(node);
    h.data["spec"]["serviceAccountName"] = json!("default");
    h.data["status"] = json!({"phase": phase, "podIP": "10.244.1.7", "hostIP": "172.18.0.3"});
    h
}

#[test]
fn a_new_pod_reaches_the_host_with_the_tenants_token_and_none_of_the_hosts() {
    let f = Fake::new();
    let t = pod(json!({}));
    let p = run(&f, "Pod", Some(&t), None);
    let [
        Step::Dependencies(deps),
        Step::EnsureHostNamespace,
        Step::CreateHost(h),
        Step::EnsureToken(sa),
        Step::ClearRefusal,
    ] = p.steps.as_slice()
    else {
        panic!("{p:?}")
    };
    assert_eq!(
        deps.len(),
        1,
        "the ConfigMap, not kube-root-ca.crt: {deps:?}"
    );
    assert_eq!(deps[0].name, "settings");
    assert_eq!(sa, "default");
    let spec = &h.data["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(spec.get("serviceAccountName").is_none());
    assert!(spec.get("priority").is_none());
    assert_eq!(
        spec["volumes"][0]["projected"]["sources"][0]["secret"]["name"],
        "kvtenant-token-web-1"
    );
}

#[test]
fn a_scheduled_copy_binds_the_tenant_pod_to_a_shown_node_then_status_follows() {
    let f = Fake::new();
    let t = pod(json!({}));
    let h = scheduled(&f, &t, "node-7", "Running");
    let p = run(&f, "Pod", Some(&t), Some(&h));
    assert!(
        matches!(
            p.steps.as_slice(),
            [
                Step::Dependencies(_),
                Step::EnsureHostNamespace,
                Step::EnsureToken(_),
                Step::ClearRefusal,
                Step::ShowNode(n),
                Step::Bind(b),
            ] if n == "node-7" && b == "node-7"
        ),
        "{p:?}"
    );
    let mut bound = t.clone();
    bound.data["spec"]["nodeName"] = json!("node-7");
    let p = run(&f, "Pod", Some(&bound), Some(&h));
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::ReplaceHost(_))),
        "the binding is not drift: {p:?}"
    );
    let Some(Step::StatusUp(s)) = p.steps.last() else {
        panic!("{p:?}")
    };
    assert_eq!(s["podIP"], "10.244.1.7");
}

#[test]
fn a_pod_deleted_in_the_tenant_ends_on_the_host_first() {
    let f = Fake::new();
    let mut t = deleting(pod(json!({"nodeName": "node-7"})));
    t.metadata.deletion_grace_period_seconds = Some(5);
    let h = scheduled(&f, &pod(json!({})), "node-7", "Running");
    let p = run(&f, "Pod", Some(&t), Some(&h));
    assert_eq!(p.steps, [Step::DeleteHostGracefully(5)]);
    let p = run(&f, "Pod", Some(&t), Some(&deleting(h)));
    assert!(p.steps.is_empty(), "{p:?}");
    let p = run(&f, "Pod", Some(&t), None);
    assert_eq!(p.steps, [Step::ForceDeleteTenant]);
}

#[test]
fn a_pod_the_host_removed_after_it_ran_is_removed_not_recreated() {
    let f = Fake::new();
    let mut bound = pod(json!({"nodeName": "node-7"}));
    bound.data["status"] = json!({"phase": "Running", "hostIP": "172.18.0.3"});
    assert_eq!(
        run(&f, "Pod", Some(&bound), None).steps,
        [Step::ForceDeleteTenant]
    );
}

#[test]
fn pod_escapes_are_refused_before_anything_reaches_the_host() {
    let f = Fake::new();
    let t = pod(json!({"hostNetwork": true,
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}));
    let p = run(&f, "Pod", Some(&t), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
    assert!(paths.contains(&"spec.hostNetwork"), "{paths:?}");
    assert!(paths.contains(&"spec.volumes[0].hostPath"), "{paths:?}");
    assert!(paths.contains(&"spec.tolerations[0]"), "{paths:?}");
}

fn service(ip: &str) -> DynamicObject {
    obj(
        "Service",
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "t-svc", "resourceVersion": "9",
            "annotations": {"note": "kept"}},
        "spec": {"selector": {"app": "web"}, "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"port": 80}]}}),
    )
}

#[test]
fn the_tenant_service_is_recreated_once_with_the_hosts_cluster_ip() {
    let mut f = Fake::new();
    let t = service("10.0.0.95");
    let mut h = copy_of(&f, &t, Some(json!({"loadBalancer": {}})));
    h.data["spec"]["clusterIP"] = json!("10.0.0.242");
    h.data["spec"]["clusterIPs"] = json!(["10.0.0.242"]);
    let p = run(&f, "Service", Some(&t), Some(&h));
    let Some(Step::RecreateTenant(new)) = p.steps.last() else {
        panic!("{p:?}")
    };
    assert_eq!(new.data["spec"]["clusterIP"], "10.0.0.242");
    assert_eq!(new.data["spec"]["clusterIPs"], json!(["10.0.0.242"]));
    assert_eq!(new.data["spec"]["selector"]["app"], "web");
    assert!(new.metadata.uid.is_none() && new.metadata.resource_version.is_none());
    assert_eq!(new.metadata.annotations.as_ref().unwrap()["note"], "kept");
    // another tenant Service has that address, or a recreate failed: the tenant keeps its own
    f.taken_ips = vec!["10.0.0.242".into()];
    let p = run(&f, "Service", Some(&t), Some(&h));
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::RecreateTenant(_))),
        "{p:?}"
    );
    f.taken_ips.clear();
    f.recreate_failed = true;
    let p = run(&f, "Service", Some(&t), Some(&h));
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::RecreateTenant(_))),
        "{p:?}"
    );
    // while it is being recreated, the host copy stays
    f.recreating = true;
    let p = run(&f, "Service", None, Some(&h));
    assert!(p.steps.is_empty() && p.requeue.is_some(), "{p:?}");
}

#[test]
fn the_tenant_apiservers_own_service_stays_in_the_tenant() {
    let f = Fake::new();
    let k = obj(
        "Service",
        json!({"metadata": {"name": "kubernetes", "namespace": "default", "uid": "t-k"},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 443}]}}),
    );
    assert!(run(&f, "Service", Some(&k), None).steps.is_empty());
}

#[test]
fn recreated_merges_values_and_drops_the_status() {
    let mut t = service("10.0.0.95");
    t.data["status"] = json!({"loadBalancer": {}});
    let r = recreated(
        &t,
        &json!({"spec": {"clusterIP": "10.0.0.9", "clusterIPs": null}}),
    );
    assert_eq!(r.data["spec"]["clusterIP"], "10.0.0.9");
    assert!(r.data["spec"].get("clusterIPs").is_none());
    assert!(r.data.get("status").is_none());
    let _: &Value = &r.data;
}

#[test]
fn a_pod_waits_for_the_tenants_dns_and_its_host_copy_resolves_through_it() {
    let mut f = Fake::new();
    f.dns = TenantDns::Pending;
    let t = pod(json!({}));
    let p = run(&f, "Pod", Some(&t), None);
    assert_eq!(p.requeue, Some(DNS_WAIT), "{p:?}");
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::CreateHost(_))),
        "{p:?}"
    );
    // a pod resolving through the node's resolver does not wait
    let own = pod(json!({"dnsPolicy": "Default"}));
    let p = run(&f, "Pod", Some(&own), None);
    assert!(p.steps.iter().any(|s| matches!(s, Step::CreateHost(_))));
    f.dns = TenantDns::Ready {
        nameserver: "10.96.0.42".into(),
        domain: "cluster.local".into(),
    };
    let h = scheduled(&f, &t, "n1", "Running");
    assert_eq!(h.data["spec"]["dnsPolicy"], "None");
    assert_eq!(
        h.data["spec"]["dnsConfig"]["searches"][0],
        "default.svc.cluster.local"
    );
    assert!(
        t.data["spec"].get("dnsPolicy").is_none(),
        "the tenant's spec"
    );
    // the copy keeps what it was made with, whatever the DNS says later (an update sends the
    // host's values: a pod's spec is fixed)
    for dns in [TenantDns::Pending, TenantDns::Off] {
        f.dns = dns;
        let p = run(&f, "Pod", Some(&t), Some(&h));
        for s in &p.steps {
            if let Step::ReplaceHost(u) = s {
                assert_eq!(u.data["spec"]["dnsPolicy"], "None");
                assert_eq!(u.data["spec"]["dnsConfig"], h.data["spec"]["dnsConfig"]);
            }
        }
    }
}

#[test]
fn with_dns_disabled_a_pod_is_made_at_once_as_the_tenant_wrote_it() {
    let f = Fake::new();
    assert_eq!(f.dns, TenantDns::Off);
    let h = scheduled(&f, &pod(json!({})), "n1", "Running");
    assert!(h.data["spec"].get("dnsPolicy").is_none());
    assert!(h.data["spec"].get("dnsConfig").is_none());
}
