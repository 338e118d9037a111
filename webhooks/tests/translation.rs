//! AdmissionReview translation (pure): tenant → host and back, as property tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_webhooks::review::{self, Forwarded, Requester};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn vc() -> impl Strategy<Value = VirtualClusterRef> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        "[0-9a-f]{8}-[0-9a-f]{4}",
    )
        .prop_map(|(namespace, name, uid)| VirtualClusterRef {
            namespace,
            name,
            uid,
        })
}

fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| json!(i)),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn object(ns: &str, name: &str, spec: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": "u-1"},
        "spec": spec,
    })
}

fn admission(ns: &str, object: Value, old: Option<Value>, user: &str) -> Value {
    let mut request = json!({
        "uid": "req-1",
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "name": object["metadata"]["name"],
        "namespace": ns,
        "operation": if old.is_some() { "UPDATE" } else { "CREATE" },
        "userInfo": {"username": user, "uid": "42", "groups": ["system:masters", "system:authenticated"],
                     "extra": {"scopes": ["x"]}},
        "object": object,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        "dryRun": false,
    });
    if let Some(old) = old {
        request["oldObject"] = old;
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn host_answer(fwd: &Forwarded, response: Value) -> Value {
    let mut r = response;
    r["uid"] = fwd.uid.clone();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

fn encode(patch: &json_patch::Patch) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(patch).unwrap())
}

fn decode(answer: &Value) -> Option<json_patch::Patch> {
    let p = answer["response"].get("patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Towards the host only the namespace (and the user) change; back, the tenant's object is
    /// exactly what it sent.
    #[test]
    fn the_request_maps_namespaces_and_nothing_else(
        vc in vc(),
        ns in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        spec in json_tree(),
        old_spec in prop::option::of(json_tree()),
        user in "[a-z:]{1,20}",
        as_kvtenant in any::<bool>(),
    ) {
        let obj = object(&ns, "vm", spec, json!({"app": "x"}));
        let old = old_spec.map(|s| object(&ns, "vm", s, json!({})));
        let tenant = admission(&ns, obj.clone(), old.clone(), &user);
        let kvtenant_user = json!({"username": "system:serviceaccount:kvtenant-system:kvtenant",
            "groups": ["system:serviceaccounts", "system:authenticated"]});
        let requester = if as_kvtenant { Requester::Host(&kvtenant_user) } else { Requester::Prefixed };
        let fwd = review::to_host(&tenant, &vc, "admission.k8s.io/v1", requester).unwrap();
        let host_ns = vc.host_namespace(&ns);
        let req = &fwd.review["request"];
        prop_assert_eq!(&req["namespace"], &json!(host_ns));
        prop_assert_eq!(&req["object"]["metadata"]["namespace"], &json!(host_ns));
        if old.is_some() {
            prop_assert_eq!(&req["oldObject"]["metadata"]["namespace"], &json!(host_ns));
        }
        // the host never sees a tenant user as one of its own identities
        let info = &req["userInfo"];
        if as_kvtenant {
            // kvtenant's own identity (the one that syncs the object), tenant user in extra
            prop_assert_eq!(&info["username"], &kvtenant_user["username"]);
            prop_assert_eq!(&info["groups"], &kvtenant_user["groups"]);
            prop_assert_eq!(&info["extra"][review::EXTRA_TENANT_USER], &json!([user]));
            prop_assert_eq!(
                &info["extra"][review::EXTRA_VIRTUALCLUSTER],
                &json!([format!("{}/{}", vc.namespace, vc.name)])
            );
        } else {
            let username = info["username"].as_str().unwrap();
            prop_assert!(username.starts_with(&format!("kvtenant:{}/{}:", vc.namespace, vc.name)), "{}", username);
            for g in info["groups"].as_array().unwrap() {
                prop_assert!(g.as_str().unwrap().starts_with("kvtenant:"));
            }
            prop_assert!(info.get("extra").is_none());
        }
        // everything else is unchanged
        for key in ["uid", "kind", "resource", "name", "operation", "options", "dryRun"] {
            prop_assert_eq!(&req[key], &tenant["request"][key]);
        }
        let mut back = req["object"].clone();
        review::object_to_tenant(&mut back, &fwd.reverse);
        prop_assert_eq!(&back, &obj);
        prop_assert_eq!(&req["object"]["spec"], &obj["spec"]);

        // an allowed answer without patch comes back as is
        let answer = review::to_tenant(&fwd, &host_answer(&fwd, json!({"allowed": true})), true).unwrap();
        prop_assert_eq!(&answer["response"], &json!({"uid": "req-1", "allowed": true}));
    }

    /// Any host patch, applied through the translation, changes the tenant's object exactly as
    /// it changes the host's object (namespace aside).
    #[test]
    fn host_patches_round_trip(
        vc in vc(),
        ns in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        spec in json_tree(),
        patched_spec in json_tree(),
        labels in prop::collection::btree_map("[a-z]{1,5}", "[a-z]{0,5}", 0..3),
        touch_namespace in any::<bool>(),
    ) {
        let obj = object(&ns, "vm", spec, json!({"app": "x"}));
        let tenant = admission(&ns, obj.clone(), None, "alice");
        let fwd = review::to_host(&tenant, &vc, "admission.k8s.io/v1", Requester::Prefixed).unwrap();
        let host_obj = fwd.review["request"]["object"].clone();
        let mut target = host_obj.clone();
        target["spec"] = patched_spec;
        target["metadata"]["labels"] = json!(labels);
        let mut host_patch = json_patch::diff(&host_obj, &target);
        if touch_namespace {
            // a patch that rewrites the namespace (to the same host value) is mapped back
            host_patch.0.push(serde_json::from_value(json!(
                {"op": "replace", "path": "/metadata/namespace", "value": vc.host_namespace(&ns)}
            )).unwrap());
        }
        let answer = review::to_tenant(&fwd, &host_answer(&fwd, json!({
            "allowed": true, "patchType": "JSONPatch", "patch": encode(&host_patch),
            "warnings": [format!("defaulted in namespace {}", vc.host_namespace(&ns))],
        })), true).unwrap();
        let mut expected = target.clone();
        expected["metadata"]["namespace"] = json!(ns);
        let mut got = obj.clone();
        if let Some(p) = decode(&answer) {
            prop_assert_eq!(answer["response"]["patchType"].as_str(), Some("JSONPatch"));
            json_patch::patch(&mut got, &p.0).unwrap();
        }
        prop_assert_eq!(&got, &expected);
        // no op of the tenant patch touches the namespace: nothing to map there
        for op in decode(&answer).map(|p| p.0).unwrap_or_default() {
            prop_assert!(*op.path() != "/metadata/namespace");
        }
        prop_assert_eq!(&answer["response"]["warnings"], &json!([format!("defaulted in namespace {ns}")]));
    }

    /// A denial comes back with the host's code, reason, message and causes, host namespace
    /// names replaced by tenant ones.
    #[test]
    fn denials_keep_the_hosts_words(
        vc in vc(),
        ns in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        message in "[A-Za-z .']{0,40}",
        code in 400u16..600,
    ) {
        let tenant = admission(&ns, object(&ns, "vm", json!({}), json!({})), None, "bob");
        let fwd = review::to_host(&tenant, &vc, "admission.k8s.io/v1", Requester::Prefixed).unwrap();
        let host_ns = vc.host_namespace(&ns);
        let status = json!({
            "code": code, "reason": "Invalid",
            "message": format!("{message} in {host_ns}/vm"),
            "details": {"causes": [{"type": "FieldValueInvalid", "field": "spec.x", "message": message}]},
        });
        let answer = review::to_tenant(&fwd, &host_answer(&fwd, json!({"allowed": false, "status": status})), false).unwrap();
        let r = &answer["response"];
        prop_assert_eq!(&r["allowed"], &json!(false));
        prop_assert_eq!(&r["status"]["code"], &json!(code));
        prop_assert_eq!(&r["status"]["message"], &json!(format!("{message} in {ns}/vm")));
        prop_assert_eq!(&r["status"]["details"]["causes"][0]["message"], &json!(message));
        prop_assert!(r.get("patch").is_none());
    }
}

#[test]
fn patches_with_move_copy_and_test_apply_as_on_the_host() {
    let vc = VirtualClusterRef {
        namespace: "tenants".into(),
        name: "t1".into(),
        uid: "6f1c1c0e-2b7a".into(),
    };
    let obj = object(
        "default",
        "vm",
        json!({"a": {"b": 1}, "list": [1, 2]}),
        json!({}),
    );
    let fwd = review::to_host(
        &admission("default", obj.clone(), None, "u"),
        &vc,
        "admission.k8s.io/v1",
        Requester::Prefixed,
    )
    .unwrap();
    let host_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/namespace", "value": vc.host_namespace("default")},
        {"op": "move", "from": "/spec/a", "path": "/spec/c"},
        {"op": "copy", "from": "/spec/list", "path": "/spec/copied"},
        {"op": "add", "path": "/spec/list/-", "value": 3},
        {"op": "add", "path": "/metadata/annotations", "value": {"kubevirt.io/x": "y"}},
    ]))
    .unwrap();
    let answer = review::to_tenant(
        &fwd,
        &json!({"response": {"uid": "req-1", "allowed": true, "patchType": "JSONPatch", "patch": encode(&host_patch)}}),
        true,
    )
    .unwrap();
    let mut got = obj.clone();
    json_patch::patch(&mut got, &decode(&answer).unwrap().0).unwrap();
    assert_eq!(
        got["spec"],
        json!({"c": {"b": 1}, "list": [1, 2, 3], "copied": [1, 2]})
    );
    assert_eq!(got["metadata"]["namespace"], "default");
    assert_eq!(got["metadata"]["annotations"]["kubevirt.io/x"], "y");
}

#[test]
fn invalid_host_answers_are_errors() {
    let vc = VirtualClusterRef {
        namespace: "tenants".into(),
        name: "t1".into(),
        uid: "u".into(),
    };
    let obj = object("default", "vm", json!({}), json!({}));
    let fwd = review::to_host(
        &admission("default", obj, None, "u"),
        &vc,
        "admission.k8s.io/v1",
        Requester::Prefixed,
    )
    .unwrap();
    let patch = encode(
        &serde_json::from_value(json!([{"op": "add", "path": "/spec/x", "value": 1}])).unwrap(),
    );
    for (answer, mutating) in [
        (json!({"response": {"uid": "other", "allowed": true}}), true),
        (json!({"response": {"uid": "req-1"}}), true),
        (json!({}), true),
        // a validating webhook may not patch (the apiserver refuses it too)
        (
            json!({"response": {"uid": "req-1", "allowed": true, "patchType": "JSONPatch", "patch": patch}}),
            false,
        ),
        (
            json!({"response": {"uid": "req-1", "allowed": true, "patchType": "MergePatch", "patch": "e30="}}),
            true,
        ),
        // a patch that does not apply
        (
            json!({"response": {"uid": "req-1", "allowed": true, "patchType": "JSONPatch",
            "patch": encode(&serde_json::from_value(json!([{"op": "remove", "path": "/nope"}])).unwrap())}}),
            true,
        ),
    ] {
        assert!(
            review::to_tenant(&fwd, &answer, mutating).is_err(),
            "{answer}"
        );
    }
    assert!(
        review::to_host(
            &json!({"request": {"uid": ""}}),
            &vc,
            "admission.k8s.io/v1",
            Requester::Prefixed
        )
        .is_err()
    );
    assert!(review::to_host(&json!({}), &vc, "admission.k8s.io/v1", Requester::Prefixed).is_err());
}
