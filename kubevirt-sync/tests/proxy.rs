//! The subresource proxy against real apiservers: a host running KubeVirt's real virt-api and
//! virt-controller (node agent as simulated virt-handler: no VM boots; the console is an echo) and tenant control planes whose aggregators send
//! `subresources.kubevirt.io` to kvtenant's proxy. Driven with the real kubectl and a Rust
//! websocket client, as a tenant would drive it with virtctl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "proxy/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use helpers::*;
use http::header;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kvtenant_api::VirtualCluster;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;

#[tokio::test(flavor = "multi_thread")]
async fn virtctl_verbs_work_from_the_virtual_cluster() {
    let started = Instant::now();
    let env = Env::start(1).await;
    let env_ready = started.elapsed();
    let proxy = start_proxy(&env).await;
    let t = &env.tenants[0];
    let tc = t.client();
    let kc = t.kubeconfig();
    wait_subresources_available(&tc, WAIT).await;
    let registered = started.elapsed() - env_ready;

    // discovery, as kubectl and virtctl see it
    let list: Value = serde_json::from_str(&kubectl(kc, &["get", "--raw", SUB])).unwrap();
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for n in [
        "virtualmachines/start",
        "virtualmachines/stop",
        "virtualmachines/restart",
        "virtualmachines/migrate",
        "virtualmachineinstances/console",
        "virtualmachineinstances/vnc",
        "virtualmachineinstances/pause",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(kubectl(kc, &["api-versions"]).contains("subresources.kubevirt.io/v1"));
    // fails when any aggregated group's discovery fails
    kubectl(kc, &["api-resources"]);

    // start a Halted VM
    create_halted_vm(&tc, "default", "vm1").await;
    let host_ns = t.host_ns("default");
    wait_host_strategy(&env, &host_ns, "vm1", "Halted").await;
    let (ok, _, err) = put_raw(kc, &vm_path("default", "vm1", "start"));
    assert!(ok, "start: {err}");
    // the real virt-api on the host set the host VM's runStrategy: the call reached it with
    // the namespace mapped
    wait_host_strategy(&env, &host_ns, "vm1", "Always").await;
    eventually("the tenant VMI Running", WAIT, || async {
        tenant_vmi_phase(&tc, "default", "vm1").await.as_deref() == Some("Running")
    })
    .await;
    eventually(
        "the tenant VM takes up runStrategy Always",
        WAIT,
        || async {
            tenant_vm(&tc, "default", "vm1")
                .await
                .is_some_and(|vm| vm.data["spec"]["runStrategy"] == "Always")
        },
    )
    .await;
    // and it stays so (the syncer does not revert it)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        host_run_strategy(&env, &host_ns, "vm1").await.as_deref(),
        Some("Always")
    );
    assert_eq!(
        proxy.metrics().requests_with(&label(t), "start", 202),
        1,
        "one start counted"
    );

    // KubeVirt's errors come back as Status objects naming tenant objects only
    let (code, status) = raw(
        &tc,
        http::Request::put(vm_path("default", "vm1", "start"))
            .body(kube::client::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["kind"], "Status");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("\"vm1\"") && message.contains("already running"),
        "{message}"
    );
    assert!(!message.contains(&host_ns), "{message}");

    // pause / unpause (VMI actions, 200). virt-api unpauses only a VMI whose Paused condition
    // the handler (here the simulated one) has written, as a user sees it in the tenant
    let vmis: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vmi_resource());
    for (action, paused) in [("pause", true), ("unpause", false)] {
        let (ok, _, err) = put_raw(
            kc,
            &format!("{SUB}/namespaces/default/virtualmachineinstances/vm1/{action}"),
        );
        assert!(ok, "{action}: {err}");
        eventually(
            &format!("the tenant VMI paused={paused} after {action}"),
            Duration::from_secs(60),
            || {
                let vmis = vmis.clone();
                async move {
                    let Ok(vmi) = vmis.get("vm1").await else {
                        return false;
                    };
                    let is_paused = vmi.data["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Paused" && c["status"] == "True");
                    is_paused == paused
                }
            },
        )
        .await;
    }

    // the console, through the tenant apiserver, both ways
    let mut ws = websocket(
        &tc,
        &format!("{SUB}/namespaces/default/virtualmachineinstances/vm1/console"),
    )
    .await;
    ws.send(Message::Text("hello from the tenant".into()))
        .await
        .unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::Text("hello from the tenant".into()));
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().as_ref(), payload.as_slice());
    assert_eq!(
        proxy
            .metrics()
            .open_streams_gauge(&label(t), "console")
            .get(),
        1
    );
    ws.close(None).await.unwrap();
    let to_host = proxy
        .metrics()
        .stream_counter(&label(t), "console", "to_host");
    let to_tenant = proxy
        .metrics()
        .stream_counter(&label(t), "console", "to_tenant");
    assert!(to_host.get() > 100_000 && to_tenant.get() > 100_000);
    eventually("the console stream closed", WAIT, || async {
        proxy
            .metrics()
            .open_streams_gauge(&label(t), "console")
            .get()
            == 0
    })
    .await;

    // a stream to an instance that is not running: KubeVirt's 400, through
    let (code, status) = raw(
        &tc,
        http::Request::get(format!(
            "{SUB}/namespaces/default/virtualmachineinstances/nope/console"
        ))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, generate_key())
        .body(kube::client::Body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(code, 404, "{status}");
    assert!(!status.to_string().contains(&host_ns), "{status}");

    // stop
    let (ok, _, err) = put_raw(kc, &vm_path("default", "vm1", "stop"));
    assert!(ok, "stop: {err}");
    wait_host_strategy(&env, &host_ns, "vm1", "Halted").await;
    eventually("the tenant VMI gone after stop", WAIT, || async {
        tenant_vmi_phase(&tc, "default", "vm1").await.is_none()
    })
    .await;
    eventually(
        "the tenant VM takes up runStrategy Halted",
        WAIT,
        || async {
            tenant_vm(&tc, "default", "vm1")
                .await
                .is_some_and(|vm| vm.data["spec"]["runStrategy"] == "Halted")
        },
    )
    .await;
    // round trips: tenant apiserver → proxy → host apiserver → virt-api, against the host alone
    let round_trip = |client: Client, path: String| async move {
        let t0 = Instant::now();
        for _ in 0..20 {
            raw(
                &client,
                http::Request::get(&path)
                    .body(kube::client::Body::empty())
                    .unwrap(),
            )
            .await;
        }
        t0.elapsed() / 20
    };
    let via_tenant = round_trip(
        tc.clone(),
        format!("{SUB}/namespaces/default/virtualmachineinstances/vm1/guestosinfo"),
    )
    .await;
    let on_host = round_trip(
        env.host_client(),
        format!("{SUB}/namespaces/{host_ns}/virtualmachineinstances/vm1/guestosinfo"),
    )
    .await;
    eprintln!(
        "timing: env {env_ready:?}; proxy start to both APIServices Available {registered:?}; \
         guestosinfo round trip via the tenant {via_tenant:?} vs on the host {on_host:?}; \
         whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenants_rbac_decides_who_may_call_subresources() {
    let env = Env::start(1).await;
    let proxy = start_proxy(&env).await;
    let t = &env.tenants[0];
    let tc = t.client();
    wait_subresources_available(&tc, WAIT).await;
    create_halted_vm(&tc, "default", "vm1").await;
    let host_ns = t.host_ns("default");
    wait_host_strategy(&env, &host_ns, "vm1", "Halted").await;

    // a user without RBAC: refused by the tenant apiserver
    let alice = t.cp.user_kubeconfig("alice", &["dev"]).unwrap();
    let (ok, _, err) = put_raw(&alice, &vm_path("default", "vm1", "start"));
    assert!(!ok);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    // and by the proxy's own review, when the call reaches it another way (the tenant's
    // front-proxy certificate naming alice)
    let direct = direct_client(&proxy, Some(&t.cp.pki().front_proxy_client)).await;
    let (code, status) = raw(
        &direct,
        put(
            &vm_path("default", "vm1", "start"),
            "alice",
            &["dev", "system:authenticated"],
        ),
    )
    .await;
    assert_eq!(code, 403, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(r#"User "alice" cannot update resource "virtualmachines/start" in API group "subresources.kubevirt.io" in the namespace "default""#),
        "{message}"
    );
    assert_eq!(
        host_run_strategy(&env, &host_ns, "vm1").await.as_deref(),
        Some("Halted")
    );

    // a Role for virtualmachines/start and a RoleBinding: alice may start
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "vm-starter", "namespace": "default"},
        "rules": [{"apiGroups": ["subresources.kubevirt.io"],
                   "resources": ["virtualmachines/start", "virtualmachines/stop"],
                   "verbs": ["update"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(tc.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "alice-starts-vms", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vm-starter"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(tc.clone(), "default")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    eventually("alice's start accepted", WAIT, || {
        let (ok, _, _) = put_raw(&alice, &vm_path("default", "vm1", "start"));
        async move { ok }
    })
    .await;
    wait_host_strategy(&env, &host_ns, "vm1", "Always").await;
    // the console is another permission
    let (ok, _, err) = kubectl_try(
        &alice,
        &[
            "get",
            "--raw",
            &format!("{SUB}/namespaces/default/virtualmachineinstances/vm1/guestosinfo"),
        ],
    );
    assert!(!ok && err.to_lowercase().contains("forbidden"), "{err}");
    assert!(proxy.metrics().requests_with(&label(t), "start", 403) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_namespaces_other_tenants_and_foreign_certificates_are_refused() {
    let env = Env::start(2).await;
    let proxy = start_proxy(&env).await;
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let (c1, c2) = (t1.client(), t2.client());
    wait_subresources_available(&c1, WAIT).await;
    wait_subresources_available(&c2, WAIT).await;
    create_halted_vm(&c1, "default", "same").await;
    create_halted_vm(&c2, "default", "same").await;
    wait_host_strategy(&env, &t1.host_ns("default"), "same", "Halted").await;
    wait_host_strategy(&env, &t2.host_ns("default"), "same", "Halted").await;

    // a tenant namespace with nothing on the host: 404 naming the tenant namespace only
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "empty"}})).unwrap();
    Api::<Namespace>::all(c1.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let (code, status) = raw(
        &c1,
        http::Request::put(vm_path("empty", "same", "start"))
            .body(kube::client::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404, "{status}");
    let message = status["message"].as_str().unwrap().to_string();
    assert!(message.contains(r#"namespace "empty""#), "{message}");
    assert!(
        !message.contains(&t1.host_ns("empty")) && !message.contains("tenants-"),
        "{message}"
    );

    // another tenant's host namespace, named from tenant 1: not that namespace
    let other = t2.host_ns("default");
    let (code, status) = raw(
        &c1,
        http::Request::put(vm_path(&other, "same", "start"))
            .body(kube::client::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404, "{status}");
    let (ok, _, err) = put_raw(t1.kubeconfig(), &vm_path(&other, "same", "stop"));
    assert!(!ok && err.contains("NotFound"), "{err}");

    // a start in tenant 1 starts tenant 1's VM only
    let (ok, _, err) = put_raw(t1.kubeconfig(), &vm_path("default", "same", "start"));
    assert!(ok, "{err}");
    wait_host_strategy(&env, &t1.host_ns("default"), "same", "Always").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        host_run_strategy(&env, &t2.host_ns("default"), "same")
            .await
            .as_deref(),
        Some("Halted")
    );

    // straight to the proxy: no client certificate, a tenant's cluster-CA certificate, the
    // host's own front-proxy certificate: 401 with a Status
    let path = vm_path("default", "same", "stop");
    let admin_cert = t1
        .cp
        .pki()
        .ca
        .issue_client("kubernetes-admin", &["system:masters"])
        .unwrap();
    for (what, cert) in [
        ("no certificate", None),
        ("the tenant's admin certificate", Some(&admin_cert)),
        (
            "the host's front-proxy certificate",
            Some(&env.host.pki().front_proxy_client),
        ),
    ] {
        let client = direct_client(&proxy, cert).await;
        let (code, status) = raw(&client, put(&path, "admin", &["system:masters"])).await;
        assert_eq!(code, 401, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}");
        let (code, _) = raw(
            &client,
            http::Request::get(SUB)
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, 401, "{what}: discovery");
    }
    assert_eq!(
        host_run_strategy(&env, &t1.host_ns("default"), "same")
            .await
            .as_deref(),
        Some("Always")
    );
    assert!(proxy.metrics().requests_with("", "stop", 401) >= 3);

    // tenant 2's front-proxy certificate is tenant 2: its call maps into tenant 2's namespace
    let direct = direct_client(&proxy, Some(&t2.cp.pki().front_proxy_client)).await;
    let (code, status) = raw(
        &direct,
        put(
            &vm_path("default", "same", "start"),
            "admin",
            &["system:masters"],
        ),
    )
    .await;
    assert_eq!(code, 202, "{status}");
    wait_host_strategy(&env, &t2.host_ns("default"), "same", "Always").await;

    // an open console of tenant 2
    eventually("tenant 2's VMI Running", WAIT, || async {
        tenant_vmi_phase(&c2, "default", "same").await.as_deref() == Some("Running")
    })
    .await;
    let mut console = websocket(
        &c2,
        &format!("{SUB}/namespaces/default/virtualmachineinstances/same/console"),
    )
    .await;
    console.send(Message::Text("ping".into())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, console.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::Text("ping".into()));

    // a paused virtual cluster is no longer served, and its open streams end
    let vcs: Api<VirtualCluster> = Api::namespaced(env.host_client(), VC_NAMESPACE);
    vcs.patch(
        &t2.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    eventually(
        "tenant 2's certificate refused once it is paused",
        WAIT,
        || async {
            let (code, _) = raw(
                &direct,
                http::Request::get(SUB)
                    .body(kube::client::Body::empty())
                    .unwrap(),
            )
            .await;
            code == 401
        },
    )
    .await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match console.next().await {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the console of a paused virtual cluster stays open"
    );

    // subresources switched off: kvtenant's registrations leave the virtual cluster
    vcs.patch(
        &t1.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"kubevirt": {"subresources": false}}})),
    )
    .await
    .unwrap();
    let apis: Api<APIService> = Api::all(c1.clone());
    eventually("tenant 1's APIServices removed", WAIT, || async {
        apis.get_opt("v1.subresources.kubevirt.io")
            .await
            .is_ok_and(|a| a.is_none())
            && apis
                .get_opt("v1alpha3.subresources.kubevirt.io")
                .await
                .is_ok_and(|a| a.is_none())
    })
    .await;
    let (ok, _, err) = kubectl_try(t1.kubeconfig(), &["get", "--raw", SUB]);
    assert!(!ok && err.contains("NotFound"), "{err}");
}
