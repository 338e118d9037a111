//! Crafted AdmissionReviews and host answers through the translation (pure), counted as rows
//! of RELIABILITY.md (`.ci/reliability`): whatever namespaces and user a tenant writes into a
//! review, the host webhook sees only that tenant's own host namespaces and kvtenant's own
//! identity; whatever JSON patch or answer comes back, the tenant gets a patch in its own terms
//! or an error, never a panic. The property tests of `translation.rs` cover the general case;
//! these are the hostile inputs named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/hostile/report.rs"]
mod report;

use base64::Engine as _;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_webhooks::review::{self, Requester};
use report::{Finding, Table};
use serde_json::{Value, json};

const TEST_NS: &str =
    "webhooks/tests/hostile_translation.rs::crafted_namespaces_and_users_stay_in_the_tenant";
const TEST_PATCH: &str =
    "webhooks/tests/hostile_translation.rs::crafted_host_answers_are_errors_or_tenant_patches";

fn vc(name: &str, uid: &str) -> VirtualClusterRef {
    VirtualClusterRef {
        namespace: "tenants".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn review(ns: Value, obj_ns: Value, old_ns: Option<Value>, user: Value) -> Value {
    let mut request = json!({
        "uid": "req-1",
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "name": "vm", "namespace": ns, "operation": "CREATE",
        "userInfo": user,
        "object": {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                   "metadata": {"name": "vm", "namespace": obj_ns}, "spec": {"running": false}},
    });
    if let Some(old) = old_ns {
        request["oldObject"] = json!({"metadata": {"name": "vm", "namespace": old}});
        request["operation"] = json!("UPDATE");
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// Every namespace the forwarded request carries.
fn namespaces(req: &Value) -> Vec<String> {
    [
        "/namespace",
        "/object/metadata/namespace",
        "/oldObject/metadata/namespace",
    ]
    .iter()
    .filter_map(|p| req.pointer(p).and_then(Value::as_str))
    .filter(|s| !s.is_empty())
    .map(String::from)
    .collect()
}

#[test]
fn crafted_namespaces_and_users_stay_in_the_tenant() {
    let t1 = vc("t1", "11111111-aaaa");
    let t2 = vc("t2", "22222222-bbbb");
    let t2_default = t2.host_namespace("default");
    let kvtenant = json!({"username": "system:serviceaccount:kvtenant-system:kvtenant-syncer",
        "groups": ["system:serviceaccounts", "system:authenticated"]});
    let crafted_ns = [
        json!(t2_default.clone()),
        json!("kube-system"),
        json!("kubevirt"),
        json!("../../kube-system"),
        json!("default/../kube-system"),
        json!("ünïcødé"),
        json!("x".repeat(10_000)),
        json!(t1.host_namespace("default")),
    ];
    let users = [
        json!({"username": "system:admin", "groups": ["system:masters"]}),
        json!({"username": "system:serviceaccount:kubevirt:kubevirt-controller",
               "groups": ["system:serviceaccounts:kubevirt", "system:masters"],
               "extra": {"authentication.kubernetes.io/credential-id": ["x"]}}),
        json!({"username": "system:kube-controller-manager"}),
        json!("not an object"),
        Value::Null,
    ];
    let mut tried = 0;
    for ns in &crafted_ns {
        for (obj_ns, old_ns) in [
            (ns.clone(), None),
            (json!("default"), Some(ns.clone())),
            (json!(t2_default.clone()), Some(json!("kube-system"))),
        ] {
            for user in &users {
                for requester in [Requester::Host(&kvtenant), Requester::Prefixed] {
                    tried += 1;
                    let r = review(ns.clone(), obj_ns.clone(), old_ns.clone(), user.clone());
                    let fwd = review::to_host(&r, &t1, "admission.k8s.io/v1", requester).unwrap();
                    let req = &fwd.review["request"];
                    for host_ns in namespaces(req) {
                        assert_ne!(host_ns, t2_default, "{r}");
                        assert!(
                            host_ns.starts_with("tenants-") && host_ns.len() <= 63,
                            "{host_ns}"
                        );
                        let back = fwd
                            .reverse
                            .get(&host_ns)
                            .expect("mapped from a tenant namespace");
                        assert_eq!(t1.host_namespace(back), host_ns);
                    }
                    let info = &req["userInfo"];
                    let name = info["username"].as_str().unwrap_or_default();
                    match requester {
                        Requester::Host(_) => {
                            assert_eq!(info["username"], kvtenant["username"], "{r}");
                            assert_eq!(info["groups"], kvtenant["groups"], "{r}");
                        }
                        Requester::Prefixed => {
                            assert!(
                                name.is_empty() || name.starts_with("kvtenant:tenants/t1:"),
                                "{name}"
                            );
                            for g in info["groups"].as_array().into_iter().flatten() {
                                assert!(
                                    g.as_str().unwrap().starts_with("kvtenant:tenants/t1:"),
                                    "{g}"
                                );
                            }
                            assert!(info.get("extra").is_none());
                        }
                    }
                }
            }
        }
    }
    // no uid, no request, a request that is no object: errors, never a forwarded review
    for bad in [
        json!({"request": {"namespace": "default"}}),
        json!({"request": {"uid": ""}}),
        json!({"request": []}),
        json!({}),
        json!([]),
    ] {
        assert!(
            review::to_host(&bad, &t1, "admission.k8s.io/v1", Requester::Prefixed).is_err(),
            "{bad}"
        );
    }
    Finding::new(
        Table::Isolation,
        "webhooks: crafted namespaces and users in a review",
        "request.namespace, object and oldObject namespaces set to tenant 2's host namespace, kube-system, `../../kube-system`, unicode, 10,000 characters; users system:admin, KubeVirt's controller with system:masters, not an object",
        "the host webhook sees only tenant 1's own host namespaces (≤ 63 characters) and kvtenant's identity or `kvtenant:<vc>:` names; reviews without uid or request refused",
        TEST_NS,
    )
    .objects(tried + 5)
    .record();
}

fn encode(ops: Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops).unwrap())
}

#[test]
fn crafted_host_answers_are_errors_or_tenant_patches() {
    let t1 = vc("t1", "11111111-aaaa");
    let user = json!({"username": "alice"});
    let r = review(json!("default"), json!("default"), None, user);
    let fwd = review::to_host(&r, &t1, "admission.k8s.io/v1", Requester::Prefixed).unwrap();
    let host_ns = t1.host_namespace("default");
    let answer = |response: Value| {
        let mut response = response;
        response["uid"] = json!("req-1");
        json!({"response": response})
    };
    let errors = [
        answer(json!({"allowed": true, "patchType": "JSONPatch", "patch": "%%% not base64"})),
        answer(json!({"allowed": true, "patchType": "MergePatch", "patch": encode(json!({}))})),
        answer(
            json!({"allowed": true, "patchType": "JSONPatch", "patch": encode(json!({"op": "add"}))}),
        ),
        answer(json!({"allowed": true, "patchType": "JSONPatch",
            "patch": encode(json!([{"op": "test", "path": "/spec/running", "value": true}]))})),
        answer(json!({"allowed": true, "patchType": "JSONPatch",
            "patch": encode(json!([{"op": "remove", "path": "/spec/no/such/field"}]))})),
        answer(json!({"allowed": true, "patchType": "JSONPatch",
            "patch": encode(json!([{"op": "move", "from": "/metadata", "path": "/metadata/inner"}]))})),
        json!({"response": {"uid": "another-request", "allowed": true}}),
        json!({"response": {"uid": "req-1"}}),
        json!({"response": "yes"}),
        json!({}),
    ];
    for a in &errors {
        assert!(review::to_tenant(&fwd, a, true).is_err(), "{a}");
    }
    // a validating webhook's patch is an invalid answer, as the apiserver treats it
    let patch = answer(json!({"allowed": true, "patchType": "JSONPatch",
        "patch": encode(json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]))}));
    assert!(review::to_tenant(&fwd, &patch, false).is_err());
    // patches that touch the namespace come back in tenant terms; a message naming the host
    // namespace names the tenant's
    let ok = [
        json!([{"op": "replace", "path": "/metadata/namespace", "value": host_ns}]),
        json!([{"op": "copy", "from": "/metadata/namespace", "path": "/metadata/labels"}]),
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"ns": host_ns}}]),
    ];
    for ops in &ok {
        let a = answer(
            json!({"allowed": true, "patchType": "JSONPatch", "patch": encode(ops.clone()),
            "warnings": [format!("in {host_ns}")]}),
        );
        let out = review::to_tenant(&fwd, &a, true).unwrap();
        let text = out.to_string();
        assert!(
            !out["response"]["warnings"].to_string().contains(&host_ns),
            "{text}"
        );
        if let Some(p) = out["response"]["patch"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let tenant_ops: Value = serde_json::from_slice(&bytes).unwrap();
            // only the copy of the namespace into a label value may carry a namespace: the
            // tenant's own
            for op in tenant_ops.as_array().unwrap() {
                if op["path"] == "/metadata/namespace" {
                    panic!("a namespace change reached the tenant: {op}");
                }
            }
        }
    }
    Finding::new(
        Table::Hostile,
        "webhooks: crafted JSON patches and answers",
        "host answers with a non-base64 patch, MergePatch, a patch that is no list, failing test/remove/move ops, another request's uid, no allowed, a patch from a validating webhook; patches replacing or copying metadata.namespace",
        "errors (the tenant's apiserver applies the webhook's failurePolicy), no panic; namespace ops come back in tenant terms, host namespaces never reach the tenant",
        TEST_PATCH,
    )
    .objects(errors.len() + 1 + ok.len())
    .record();
}
