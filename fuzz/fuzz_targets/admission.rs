//! AdmissionReview and JSON patch translation (kvtenant-webhooks): any review a tenant sends
//! is refused or forwarded with only the tenant's own host namespaces and kvtenant's identity;
//! any answer the host gives is translated back or refused, never a panic. The input is a
//! review and a host answer, separated by a NUL byte.
#![no_main]

use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_webhooks::review::{self, Requester};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let (req, answer) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(tenant_review) = serde_json::from_slice::<Value>(req) else {
        return;
    };
    let vc = VirtualClusterRef {
        namespace: "tenants".into(),
        name: "t1".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
    };
    let me = json!({"username": "system:serviceaccount:kvtenant-system:kvtenant-syncer"});
    for requester in [Requester::Host(&me), Requester::Prefixed] {
        let Ok(fwd) = review::to_host(&tenant_review, &vc, "admission.k8s.io/v1", requester) else {
            continue;
        };
        let r = &fwd.review["request"];
        for p in [
            "/namespace",
            "/object/metadata/namespace",
            "/oldObject/metadata/namespace",
        ] {
            if let Some(ns) = r
                .pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                let tenant_ns = fwd.reverse.get(ns).expect("a translated namespace");
                assert_eq!(vc.host_namespace(tenant_ns), ns);
            }
        }
        if let Requester::Host(me) = requester {
            assert_eq!(r["userInfo"]["username"], me["username"]);
        }
        if let Ok(host_answer) = serde_json::from_slice::<Value>(answer) {
            for mutating in [true, false] {
                if let Ok(out) = review::to_tenant(&fwd, &host_answer, mutating) {
                    assert_eq!(out["response"]["uid"], fwd.uid);
                    if !mutating {
                        assert!(out["response"].get("patch").is_none());
                    }
                }
            }
        }
    }
});
