//! Which host webhook a tenant call reaches (pure): a tenant picks a registered host webhook
//! by name, never a URL of its choosing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvtenant_api::SyncKind;
use kvtenant_webhooks::lookup::{self, ClientConfig, Refusal};
use kvtenant_webhooks::mirror::synced_resources;
use kvtenant_webhooks::paths::{self, HookType, PathError, Route, TokenKey};
use serde_json::{Value, json};

fn hook(name: &str, group: &str, resources: &[&str], extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 10,
        "clientConfig": {
            "service": {"name": "virt-api", "namespace": "kubevirt", "path": format!("/{name}"), "port": 443},
            "caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
        },
        "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "resources": resources,
                   "operations": ["CREATE", "UPDATE"], "scope": "*"}],
    });
    if let (Some(h), Value::Object(e)) = (h.as_object_mut(), extra) {
        h.extend(e);
    }
    h
}

fn host_validating() -> Vec<Value> {
    vec![
        json!({"metadata": {"name": "virt-api-validator"}, "webhooks": [
            hook("virtualmachine-validator.kubevirt.io", "kubevirt.io", &["virtualmachines"], json!({})),
            hook("virt-launcher-eviction-interceptor.kubevirt.io", "", &["pods/eviction"], json!({})),
            hook("kubevirt-crd-status-validator.kubevirt.io", "kubevirt.io", &["virtualmachines/status"], json!({})),
        ]}),
        json!({"metadata": {"name": "policy-engine"}, "webhooks": [
            hook("everything.policy.example", "*", &["*"], json!({})),
        ]}),
        json!({"metadata": {"name": "url-hook"}, "webhooks": [
            hook("vm-by-url.example", "kubevirt.io", &["virtualmachines"],
                 json!({"clientConfig": {"url": "https://hooks.example:8443/vm", "caBundle": ""},
                        "failurePolicy": "Ignore", "timeoutSeconds": 3,
                        "admissionReviewVersions": ["v1beta1"]})),
        ]}),
    ]
}

fn synced() -> Vec<(String, String)> {
    synced_resources(&SyncKind::DEFAULT)
}

#[test]
fn a_registered_host_webhook_is_found_with_the_hosts_client_config() {
    let h = lookup::find(
        HookType::Validating,
        &host_validating(),
        "virt-api-validator",
        "virtualmachine-validator.kubevirt.io",
        &synced(),
    )
    .unwrap();
    assert!(h.fail_closed);
    assert_eq!(h.timeout.as_secs(), 10);
    assert_eq!(h.api_version, "admission.k8s.io/v1");
    assert_eq!(
        h.client,
        ClientConfig::Service {
            namespace: "kubevirt".into(),
            name: "virt-api".into(),
            port: 443,
            path: "/virtualmachine-validator.kubevirt.io".into()
        }
    );
    assert!(h.ca_bundle.is_some());

    let u = lookup::find(
        HookType::Validating,
        &host_validating(),
        "url-hook",
        "vm-by-url.example",
        &synced(),
    )
    .unwrap();
    assert!(!u.fail_closed);
    assert_eq!(u.timeout.as_secs(), 3);
    assert_eq!(u.api_version, "admission.k8s.io/v1beta1");
    assert_eq!(
        u.client,
        ClientConfig::Url("https://hooks.example:8443/vm".into())
    );
    assert_eq!(u.ca_bundle, None);
}

#[test]
fn unknown_or_unmirrored_webhooks_are_refused() {
    let cfgs = host_validating();
    let find = |t: HookType, c: &str, w: &str| lookup::find(t, &cfgs, c, w, &synced());
    assert!(matches!(
        find(
            HookType::Validating,
            "virt-api-validator",
            "no-such.kubevirt.io"
        ),
        Err(Refusal::NoWebhook { .. })
    ));
    assert!(matches!(
        find(
            HookType::Validating,
            "nope",
            "virtualmachine-validator.kubevirt.io"
        ),
        Err(Refusal::NoConfiguration { .. })
    ));
    // host webhooks that cover no synced kind are never called for a tenant
    for (c, w) in [
        (
            "virt-api-validator",
            "virt-launcher-eviction-interceptor.kubevirt.io",
        ),
        (
            "virt-api-validator",
            "kubevirt-crd-status-validator.kubevirt.io",
        ),
        ("policy-engine", "everything.policy.example"),
    ] {
        assert!(
            matches!(
                find(HookType::Validating, c, w),
                Err(Refusal::NotMirrored(_))
            ),
            "{w}"
        );
    }
    // a tenant syncing only DataVolumes cannot reach KubeVirt's VM validator
    assert!(matches!(
        lookup::find(
            HookType::Validating,
            &cfgs,
            "virt-api-validator",
            "virtualmachine-validator.kubevirt.io",
            &synced_resources(&[SyncKind::DataVolume])
        ),
        Err(Refusal::NotMirrored(_))
    ));
}

#[test]
fn only_requests_for_synced_kinds_are_forwarded() {
    let req = |group: &str, resource: &str, sub: &str| json!({"resource": {"group": group, "version": "v1", "resource": resource}, "subResource": sub});
    assert!(lookup::check_resource(&req("kubevirt.io", "virtualmachines", ""), &synced()).is_ok());
    for r in [
        req("kubevirt.io", "virtualmachines", "status"),
        req("", "pods", ""),
        req("", "secrets", ""),
        req("cdi.kubevirt.io", "datavolumes", ""), // not synced by default
    ] {
        assert!(lookup::check_resource(&r, &synced()).is_err(), "{r}");
    }
}

#[test]
fn paths_carry_names_only() {
    let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
    let uid = "6f1c1c0e-2b7a-4d5e-9f00-123456789abc";
    let prefix = paths::tenant_prefix(uid, &key.token(uid));
    let ok = paths::parse(&format!(
        "{prefix}/validating/virt-api-validator/virtualmachine-validator.kubevirt.io"
    ))
    .unwrap();
    assert_eq!(ok.vc_uid, uid);
    assert!(matches!(
        ok.route,
        Route::Host {
            hook_type: HookType::Validating,
            ..
        }
    ));
    for bad in [
        format!("{prefix}/validating/virt-api-validator/https:%2F%2Fevil.example%2Fx"),
        format!("{prefix}/validating/virt-api-validator/evil.example:443"),
        format!("{prefix}/validating/virt-api-validator/..%2F.."),
        format!("{prefix}/validating/virt-api-validator/a..b"),
        format!("{prefix}/validating/virt-api-validator/UPPER"),
        format!("{prefix}/validating/virt-api-validator/"),
    ] {
        assert!(
            matches!(paths::parse(&bad), Err(PathError::BadSegment(_))),
            "{bad}"
        );
    }
    for bad in [
        format!("{prefix}/validating/virt-api-validator"),
        format!("{prefix}/validating/a/b/c"),
        format!("{prefix}/exec/a/b"),
        "/healthz".to_string(),
        "/t/uid".to_string(),
    ] {
        assert_eq!(paths::parse(&bad), Err(PathError::NotTenantPath), "{bad}");
    }
    // tokens are tenant-specific and key-specific
    assert!(key.verify(uid, &key.token(uid)));
    assert!(!key.verify("other", &key.token(uid)));
    assert!(!key.verify(uid, &TokenKey::new(b"another key").token(uid)));
    assert!(!key.verify(uid, "zz"));
    assert!(!key.verify(uid, ""));
}

#[test]
fn services_resolve_as_the_apiserver_does() {
    let external = json!({"spec": {"type": "ExternalName", "externalName": "localhost."}});
    let ep =
        lookup::endpoint_for_service("kubevirt", "virt-api", 8443, "/vm", Some(&external)).unwrap();
    assert_eq!(ep.connect_host, "localhost");
    assert_eq!(ep.server_name, "virt-api.kubevirt.svc");
    assert_eq!(ep.display, "https://virt-api.kubevirt.svc:8443/vm");
    let cluster_ip = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.0.0.7"}});
    let ep =
        lookup::endpoint_for_service("kubevirt", "virt-api", 443, "", Some(&cluster_ip)).unwrap();
    assert_eq!(ep.connect_host, "virt-api.kubevirt.svc");
    assert_eq!(ep.path, "/");
    assert!(lookup::endpoint_for_service("kubevirt", "virt-api", 443, "", None).is_err());

    let ep = lookup::endpoint_for_url("https://hooks.example:8443/vm").unwrap();
    assert_eq!(
        (ep.connect_host.as_str(), ep.port, ep.path.as_str()),
        ("hooks.example", 8443, "/vm")
    );
    let ep = lookup::endpoint_for_url("https://[::1]/x").unwrap();
    assert_eq!((ep.connect_host.as_str(), ep.port), ("::1", 443));
    for bad in [
        "http://x/",
        "https://user@x/",
        "https://x/?q=1",
        "https://:1/",
    ] {
        assert!(lookup::endpoint_for_url(bad).is_err(), "{bad}");
    }
}
