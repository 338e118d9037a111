//! Managed mode on a real host apiserver. No kubelet runs here, so the boot test runs the
//! control plane with testenv's control-plane runner (`testenv::runner`, dev/testenv only): the
//! host's StatefulSet controller makes the pod, the runner (on a Node of its own) runs the pod's
//! containers with exactly the StatefulSet's rendered command lines, certificates and
//! kubeconfigs as local processes, rewriting only what a pod gets from its volumes and network
//! (volume paths, `$(POD_IP)` and `0.0.0.0` → 127.0.0.1, the pod's ports → free local ports), and
//! serves the NodePort Service's node port on 127.0.0.1. The VirtualCluster is exposed as a
//! NodePort with `127.0.0.1` as its first extra SAN, so the generated tenant admin kubeconfig
//! points at `https://127.0.0.1:<node port>` and is used unchanged; TLS is verified against the
//! generated CA, so the serving certificate must carry 127.0.0.1. The controller's own probe of
//! `/readyz` through that endpoint turns the VirtualCluster Ready.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "managed/lifecycle.rs"]
mod lifecycle;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::runner::*;
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use kube::api::{Api, PostParams};

use kube::ResourceExt;
use kvtenant_api::{CONDITION_KUBECONFIG_READY, Phase, VirtualCluster};
use kvtenant_controller::managed::pki::{self, cert_info};
use kvtenant_controller::managed::render;

const NS: &str = "tenants";

#[tokio::test]
async fn managed_objects_are_rendered_and_the_rendered_control_plane_boots() {
    // the host's controller-manager runs the StatefulSet controller and binds the runner's volume
    let m = managed_host("mgd-host", NS).await;
    let (host, client, runner) = (&m.host, m.client.clone(), &m.runner);

    let mut spec = loopback_spec();
    spec.expose.extra_sans.push("alpha.example.test".into());
    spec.expose.ingress = Some(kvtenant_api::IngressExpose {
        host: "alpha.ingress.example.test".into(),
        ingress_class_name: Some("nginx".into()),
        annotations: None,
    });
    let created = create_vc(&client, NS, &vc("alpha", spec)).await;
    let uid = created.uid().unwrap();
    let t0 = Instant::now();
    let vc = wait_status(
        &client,
        NS,
        "alpha",
        "Provisioning with a kubeconfig",
        |s| {
            if s.phase == Some(Phase::Provisioning) && s.is_true(CONDITION_KUBECONFIG_READY) {
                Ok(())
            } else {
                Err("not provisioning yet".into())
            }
        },
    )
    .await;
    eprintln!(
        "objects created and status written after {:.2?}",
        t0.elapsed()
    );
    let status = vc.status.unwrap();
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("waiting for StatefulSet tenants/alpha-cp: 0 of 1 pod(s) ready")
            || message.starts_with("waiting for"),
        "{message}"
    );
    assert_eq!(
        status.kubeconfig_secret_name.as_deref(),
        Some("alpha-kubeconfig")
    );

    // --- The objects and their content.
    let owned_by_vc = |o: &dyn Fn() -> Option<
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    >| {
        let refs = o().unwrap_or_default();
        assert!(
            refs.iter()
                .any(|r| r.uid == uid && r.kind == "VirtualCluster" && r.controller == Some(true)),
            "missing owner reference: {refs:?}"
        );
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut secret_map = BTreeMap::new();
    for name in ["alpha-pki", "alpha-kubeconfig"] {
        let s = secrets.get(name).await.unwrap();
        owned_by_vc(&|| s.metadata.owner_references.clone());
        assert_eq!(
            s.labels().get(kvtenant_api::labels::VIRTUALCLUSTER_UID),
            Some(&uid)
        );
        secret_map.insert(name.to_owned(), s);
    }
    let pki_data = secret_map["alpha-pki"].data.clone().unwrap();
    for key in [
        pki::keys::CA_CRT,
        pki::keys::CA_KEY,
        pki::keys::APISERVER_CRT,
        pki::keys::APISERVER_KEY,
        pki::keys::FRONT_PROXY_CA_CRT,
        pki::keys::FRONT_PROXY_CLIENT_CRT,
        pki::keys::SA_KEY,
        pki::keys::SA_PUB,
        pki::keys::ADMIN_CRT,
        pki::keys::CONTROLLER_MANAGER_CONF,
    ] {
        assert!(pki_data.contains_key(key), "alpha-pki lacks {key}");
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = services.get("alpha-apiserver").await.unwrap();
    owned_by_vc(&|| svc.metadata.owner_references.clone());
    let svc_spec = svc.spec.clone().unwrap();
    assert_eq!(svc_spec.type_.as_deref(), Some("NodePort"));
    let node_port = svc_spec.ports.as_ref().unwrap()[0].node_port.unwrap() as u16;
    let endpoint = format!("https://127.0.0.1:{node_port}");
    assert_eq!(status.endpoint.as_deref(), Some(endpoint.as_str()));
    assert_eq!(svc_spec.ports.as_ref().unwrap()[0].port, 443);
    let cluster_ip = svc_spec.cluster_ip.clone().unwrap();
    let headless = services.get("alpha-cp").await.unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    // spec.expose.ingress: TLS passthrough by host to the apiserver Service (no ingress
    // controller runs here: the object as the apiserver stored it)
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(client.clone(), NS);
    let ing = ingresses.get("alpha-apiserver").await.unwrap();
    owned_by_vc(&|| ing.metadata.owner_references.clone());
    assert_eq!(
        ing.metadata.annotations.as_ref().unwrap()["nginx.ingress.kubernetes.io/ssl-passthrough"],
        "true"
    );
    let rule = ing.spec.clone().unwrap().rules.unwrap()[0].clone();
    assert_eq!(rule.host.as_deref(), Some("alpha.ingress.example.test"));
    assert_eq!(
        rule.http.unwrap().paths[0]
            .backend
            .service
            .as_ref()
            .unwrap()
            .name,
        "alpha-apiserver"
    );

    let serving =
        cert_info(std::str::from_utf8(&pki_data[pki::keys::APISERVER_CRT].0).unwrap()).unwrap();
    for san in [
        "alpha-apiserver.tenants.svc",
        "alpha-apiserver.tenants.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "alpha.example.test",
        "alpha.ingress.example.test",
        cluster_ip.as_str(),
    ] {
        assert!(
            serving.sans.contains(san),
            "serving certificate lacks {san}: {:?}",
            serving.sans
        );
    }
    let admin_kubeconfig = String::from_utf8(
        secret_map["alpha-kubeconfig"].data.clone().unwrap()[render::KUBECONFIG_KEY]
            .0
            .clone(),
    )
    .unwrap();
    assert!(admin_kubeconfig.contains(&format!("server: {endpoint}")));

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let sts = statefulsets.get("alpha-cp").await.unwrap();
    owned_by_vc(&|| sts.metadata.owner_references.clone());
    assert_eq!(sts.spec.replicas, Some(1));
    let pod = sts.spec.template.spec.clone().unwrap();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    assert_eq!(
        pod.containers[1].image.as_deref(),
        Some("registry.k8s.io/kube-apiserver:v1.37.2")
    );
    assert_eq!(
        sts.spec.volume_claim_templates.as_ref().unwrap()[0]
            .metadata
            .name
            .as_deref(),
        Some("data")
    );

    // --- The runner boots the rendered pod; the controller probes it through the node port.
    let t1 = Instant::now();
    let ready = wait_for(
        "the VirtualCluster Ready through the node port",
        Duration::from_secs(120),
        || {
            let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
            let logs = runner_logs(runner);
            async move {
                let pod = pods
                    .get_opt("alpha-cp-0")
                    .await
                    .map_err(|e| e.to_string())?;
                let pod_status = pod
                    .and_then(|p| p.status)
                    .map(|s| serde_json::to_string(&s).unwrap());
                let vc = vcs.get("alpha").await.map_err(|e| e.to_string())?;
                let s = vc.status.clone().unwrap_or_default();
                if s.phase == Some(Phase::Ready)
                    && s.is_true(kvtenant_api::CONDITION_CONTROL_PLANE_READY)
                {
                    Ok(vc)
                } else {
                    Err(format!(
                        "{:?}: {:?}\npod status: {pod_status:?}\n{logs}",
                        s.phase, s.message
                    ))
                }
            }
        },
    )
    .await;
    eprintln!(
        "VirtualCluster Ready {:.2?} after the control plane was created",
        t1.elapsed()
    );
    let s = ready.status.unwrap();
    assert_eq!(
        s.kubernetes_version.as_deref(),
        Some(testenv::binaries::KUBERNETES_VERSION)
    );
    assert!(s.is_true(kvtenant_api::CONDITION_READY));
    assert_eq!(s.message, None);
    let tenant = client_from_kubeconfig(&admin_kubeconfig).await;
    let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
    assert_eq!(tenant.request_text(req).await.unwrap().trim(), "ok");

    let namespaces: Api<Namespace> = Api::all(tenant.clone());
    let listed: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(
        listed.contains(&"default".to_owned()) && listed.contains(&"kube-system".to_owned()),
        "{listed:?}"
    );
    assert_eq!(
        tenant.apiserver_version().await.unwrap().git_version,
        testenv::binaries::KUBERNETES_VERSION
    );

    // The controller-manager works with its rendered kubeconfig: a new namespace gets its
    // default ServiceAccount and the root CA ConfigMap.
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "probe"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(tenant.clone(), "probe");
    let cms: Api<ConfigMap> = Api::namespaced(tenant.clone(), "probe");
    let t2 = Instant::now();
    wait_for(
        "kube-controller-manager to populate namespace probe",
        Duration::from_secs(60),
        || {
            let (sas, cms) = (sas.clone(), cms.clone());
            async move {
                let sa = sas.get_opt("default").await.map_err(|e| e.to_string())?;
                let cm = cms
                    .get_opt("kube-root-ca.crt")
                    .await
                    .map_err(|e| e.to_string())?;
                if sa.is_some() && cm.is_some() {
                    Ok(())
                } else {
                    Err(format!("sa {} cm {}", sa.is_some(), cm.is_some()))
                }
            }
        },
    )
    .await;
    eprintln!(
        "controller-manager populated a namespace after {:.2?}",
        t2.elapsed()
    );

    // kubectl logs of the control-plane pod on the host: the runner's node serves them (kubectl
    // runs off the test's runtime thread, which serves them)
    let host_kc = host.kubeconfig_path().to_path_buf();
    let (logs, etcd) = tokio::task::spawn_blocking(move || {
        let logs = |c: &str, tail: &str| {
            testenv::testing::kubectl(
                &host_kc,
                &["logs", "-n", NS, "alpha-cp-0", "-c", c, "--tail", tail],
            )
        };
        (logs("kube-apiserver", "3"), logs("etcd", "-1"))
    })
    .await
    .unwrap();
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(etcd.contains("\"level\""), "etcd logs JSON: {etcd}");

    // Every probe of every container answers 200 on its (local) port.
    let ports = runner.snapshot().ports[&format!("{NS}/alpha-cp-0")].clone();
    for c in &pod.containers {
        for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let get = probe.http_get.as_ref().expect("httpGet probe");
            let port = port_of(&ports, c, &get.port);
            let path = get.path.clone().unwrap();
            let result = match get.scheme.as_deref() {
                Some("HTTPS") => https_get_ok(port, &path).await,
                _ => match http_get_status(port, &path).await {
                    Ok(200) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            };
            assert!(
                result.is_ok(),
                "{} probe {path}: {result:?}\n{}",
                c.name,
                runner_logs(runner)
            );
        }
    }

    // the ingress is taken out of the spec: kvtenant's Ingress goes
    Api::<VirtualCluster>::namespaced(client.clone(), NS)
        .patch(
            "alpha",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"expose": {"ingress": null}}})),
        )
        .await
        .unwrap();
    wait_for("the Ingress removed", Duration::from_secs(60), || {
        let ingresses = ingresses.clone();
        async move {
            match ingresses.get_opt("alpha-apiserver").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}
