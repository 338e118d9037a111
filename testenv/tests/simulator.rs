//! Integration tests of the KubeVirt simulator on a real host control plane (etcd +
//! kube-apiserver from `ControlPlane::start`): what a user of the host sees through the
//! apiserver. Nothing here boots a VM; "Running" is the simulator's status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http::{Request, header};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolumeClaim};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind, WatchEvent};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::simulator::{PLAIN_STREAM_PROTOCOL, Simulator, SimulatorOptions};
use testenv::{ControlPlane, Options};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const WAIT: Duration = Duration::from_secs(30);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";

struct Host {
    sim: Simulator,
    client: Client,
    /// Kept alive for the test; dropped last (after the simulator).
    _cp: ControlPlane,
}

/// A host control plane with the simulator, and namespace `ns` in it.
async fn host(name: &str, ns: &str, opts: impl FnOnce(&ControlPlane) -> SimulatorOptions) -> Host {
    // Logs are captured per test and shown when it fails (RUST_LOG overrides the filter).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,testenv=info".into()),
        )
        .with_test_writer()
        .try_init();
    let t = Instant::now();
    let cp = ControlPlane::start(Options::new(name))
        .await
        .expect("host control plane");
    let cp_ready = t.elapsed();
    let client = cp.client().unwrap();
    let sim = Simulator::install(client.clone(), opts(&cp))
        .await
        .expect("simulator install");
    eprintln!(
        "[{name}] control plane ready in {cp_ready:.2?}, simulator installed in {:.2?} ({:?})",
        sim.installed_after,
        sim.crds_source()
    );
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    Host {
        sim,
        client,
        _cp: cp,
    }
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn vm_ar() -> ApiResource {
    ar("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

fn vmi_ar() -> ApiResource {
    ar(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}

fn api(client: &Client, ns: &str, ar: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, ar)
}

/// A VM whose disk has a volume (valid for KubeVirt), without a machine type.
fn vm(name: &str, run_strategy: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {
                    "labels": {"kubevirt.io/domain": name, "app": "demo"},
                    "annotations": {"example.com/note": "from-template"},
                },
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                        "resources": {"requests": {"memory": "128Mi"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:40"}}],
                },
            },
        },
    }))
    .unwrap()
}

/// Polls `f` until it returns `Some`, at most `WAIT`; panics naming `what` otherwise.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ptr<'a>(obj: &'a DynamicObject, pointer: &str) -> Option<&'a Value> {
    obj.data.pointer(pointer)
}

fn str_at<'a>(obj: &'a DynamicObject, pointer: &str) -> &'a str {
    ptr(obj, pointer).and_then(Value::as_str).unwrap_or("")
}

async fn running_vmi(client: &Client, ns: &str, name: &str) -> DynamicObject {
    let vmis = api(client, ns, &vmi_ar());
    wait_for(&format!("VMI {ns}/{name} Running"), || {
        let vmis = vmis.clone();
        async move {
            vmis.get_opt(name)
                .await
                .unwrap()
                .filter(|v| str_at(v, "/status/phase") == "Running")
        }
    })
    .await
}

async fn vm_printable(client: &Client, ns: &str, name: &str, want: &str) -> DynamicObject {
    let vms = api(client, ns, &vm_ar());
    wait_for(&format!("VM {ns}/{name} printableStatus {want}"), || {
        let vms = vms.clone();
        async move {
            vms.get_opt(name)
                .await
                .unwrap()
                .filter(|v| str_at(v, "/status/printableStatus") == want)
        }
    })
    .await
}

async fn vmi_gone(client: &Client, ns: &str, name: &str) {
    let vmis = api(client, ns, &vmi_ar());
    wait_for(&format!("VMI {ns}/{name} deleted"), || {
        let vmis = vmis.clone();
        async move { vmis.get_opt(name).await.unwrap().is_none().then_some(()) }
    })
    .await;
}

async fn event_with_reason(client: &Client, ns: &str, obj: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("a {reason} Event on {ns}/{obj}"), || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default().fields(&format!("involvedObject.name={obj}")))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        }
    })
    .await
}

/// `PUT` on a subresource through the host apiserver (aggregation): Ok(body) or the API error.
async fn put_subresource(client: &Client, path: &str) -> Result<String, kube::Error> {
    client
        .request_text(
            Request::put(format!("{SUB}{path}"))
                .body(Vec::new())
                .unwrap(),
        )
        .await
}

fn api_code(r: Result<String, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_crud_watch_vmi_lifecycle_events_and_stop() {
    let started = Instant::now();
    let ns = "tenant-a";
    let h = host("sim-vm", ns, |_| SimulatorOptions::new()).await;
    assert!(
        h.sim.crds_source().is_real(),
        "the real KubeVirt CRDs from ../shared/kubevirt-crds must be installed, got {:?}",
        h.sim.crds_source()
    );
    assert!(
        h.sim.client_cert_required(),
        "the front-proxy CA must be read from extension-apiserver-authentication"
    );
    let vms = api(&h.client, ns, &vm_ar());

    // Watch first, so the watch must see the create.
    let mut watch = vms.watch(&Default::default(), "0").await.unwrap().boxed();

    let created = vms
        .create(&PostParams::default(), &vm("vm1", "Always"))
        .await
        .unwrap();
    let vm_uid = created.uid().unwrap();
    let got = vms.get("vm1").await.unwrap();
    assert_eq!(str_at(&got, "/spec/runStrategy"), "Always");
    assert_eq!(
        str_at(&got, "/spec/template/spec/domain/machine/type"),
        "q35",
        "the VM mutator defaults the machine type"
    );
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"patched": "yes"}}})),
    )
    .await
    .unwrap();
    assert_eq!(
        vms.get("vm1").await.unwrap().labels().get("patched"),
        Some(&"yes".to_string())
    );
    let added = tokio::time::timeout(WAIT, async {
        while let Some(ev) = watch.next().await {
            if let Ok(WatchEvent::Added(o)) = ev
                && o.name_any() == "vm1"
            {
                return o;
            }
        }
        panic!("watch ended before vm1 was added");
    })
    .await
    .expect("the watch to see vm1 added within 30s");
    assert_eq!(added.uid().as_deref(), Some(vm_uid.as_str()));

    // The simulator starts a VMI as virt-controller does.
    let vmi = running_vmi(&h.client, ns, "vm1").await;
    assert_eq!(str_at(&vmi, "/status/nodeName"), "sim-node-1");
    assert_eq!(
        vmi.labels().get("kubevirt.io/nodeName").map(String::as_str),
        Some("sim-node-1")
    );
    let ip = str_at(&vmi, "/status/interfaces/0/ipAddress");
    assert!(ip.starts_with("10.244."), "fake pod IP, got {ip:?}");
    assert_eq!(vmi.labels().get("app").map(String::as_str), Some("demo"));
    assert_eq!(
        vmi.annotations()
            .get("example.com/note")
            .map(String::as_str),
        Some("from-template")
    );
    assert!(vmi.annotations().contains_key("kubevirt.io/vm-generation"));
    let owner = &vmi.owner_references()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str()
        ),
        ("kubevirt.io/v1", "VirtualMachine", "vm1")
    );
    assert_eq!(owner.uid, vm_uid);
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    assert!(
        vmi.finalizers()
            .contains(&"kubevirt.io/foregroundDeleteVirtualMachine".to_string()),
        "the VMI mutator adds its finalizer: {:?}",
        vmi.finalizers()
    );
    let phases: Vec<&str> = ptr(&vmi, "/status/phaseTransitionTimestamps")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(phases, ["Pending", "Scheduled", "Running"]);

    let running = vm_printable(&h.client, ns, "vm1", "Running").await;
    assert_eq!(ptr(&running, "/status/ready"), Some(&json!(true)));
    assert_eq!(ptr(&running, "/status/created"), Some(&json!(true)));

    // Once running, the simulator leaves both objects alone (no write loop).
    let vmis = api(&h.client, ns, &vmi_ar());
    let (vm_rv, vmi_rv) = (
        vms.get("vm1").await.unwrap().resource_version(),
        vmis.get("vm1").await.unwrap().resource_version(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(vms.get("vm1").await.unwrap().resource_version(), vm_rv);
    assert_eq!(vmis.get("vm1").await.unwrap().resource_version(), vmi_rv);

    let ev = event_with_reason(&h.client, ns, "vm1", "SuccessfulCreate").await;
    assert_eq!(
        ev.message.as_deref(),
        Some("Started the virtual machine by creating the new virtual machine instance vm1")
    );
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("virt-controller")
    );
    assert_eq!(ev.reporting_component.as_deref(), Some("virt-controller"));
    assert_eq!(ev.involved_object.uid.as_deref(), Some(vm_uid.as_str()));

    // Stopping: runStrategy Halted deletes the VMI.
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    vmi_gone(&h.client, ns, "vm1").await;
    let stopped = vm_printable(&h.client, ns, "vm1", "Stopped").await;
    assert_eq!(ptr(&stopped, "/status/ready"), None);
    event_with_reason(&h.client, ns, "vm1", "SuccessfulDelete").await;

    // Deleting a running VM removes its VMI too.
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
    )
    .await
    .unwrap();
    running_vmi(&h.client, ns, "vm1").await;
    vms.delete("vm1", &DeleteParams::default()).await.unwrap();
    let deleted = tokio::time::timeout(WAIT, async {
        while let Some(ev) = watch.next().await {
            if let Ok(WatchEvent::Deleted(o)) = ev
                && o.name_any() == "vm1"
            {
                return o;
            }
        }
        panic!("watch ended before vm1 was deleted");
    })
    .await
    .expect("the watch to see vm1 deleted within 30s");
    assert_eq!(deleted.uid().as_deref(), Some(vm_uid.as_str()));
    vmi_gone(&h.client, ns, "vm1").await;
    let stats = h.sim.stats();
    assert!(stats.vmis_created >= 2, "{stats:?}");
    assert!(stats.events >= 3, "{stats:?}");
    eprintln!(
        "vm_crud_watch_vmi_lifecycle_events_and_stop: {:.2?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subresources_through_the_host_apiserver() {
    let started = Instant::now();
    let ns = "x";
    // Here the front-proxy CA is given explicitly (the other tests read it from the cluster).
    let h = host("sim-sub", ns, |cp| {
        SimulatorOptions::new().with_front_proxy_ca(cp.pki().front_proxy_ca.cert_pem())
    })
    .await;
    assert!(h.sim.client_cert_required());
    let vms = api(&h.client, ns, &vm_ar());
    vms.create(&PostParams::default(), &vm("vm", "Halted"))
        .await
        .unwrap();

    // Discovery of the aggregated group works through the apiserver.
    let list: Value = h
        .client
        .request(Request::get(SUB).body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(list["groupVersion"], "subresources.kubevirt.io/v1");

    // start: Halted → runStrategy Always, and the VMI runs.
    let body = put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/start")
        .await
        .expect("start through the APIService");
    assert_eq!(body, "", "202 with an empty body");
    assert_eq!(
        str_at(&vms.get("vm").await.unwrap(), "/spec/runStrategy"),
        "Always"
    );
    let vmi = running_vmi(&h.client, ns, "vm").await;
    let call = h
        .sim
        .subresource_calls()
        .into_iter()
        .find(|c| c.path.ends_with("/virtualmachines/vm/start"))
        .expect("the simulator saw the start call");
    assert_eq!(call.method, "PUT");
    assert_eq!(call.status, 202);
    assert_eq!(call.user.as_deref(), Some("kubernetes-admin"));
    assert!(
        call.groups.iter().any(|g| g == "system:masters"),
        "{call:?}"
    );
    assert_eq!(call.client_cn.as_deref(), Some("front-proxy-client"));

    let (code, message) =
        api_code(put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/start").await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("VM is already running"), "{message}");
    assert_eq!(
        h.sim.last_subresource_call().map(|c| c.status),
        Some(409),
        "the last call is recorded"
    );

    // pause / unpause on the VMI.
    put_subresource(&h.client, "/namespaces/x/virtualmachineinstances/vm/pause")
        .await
        .expect("pause");
    vm_printable(&h.client, ns, "vm", "Paused").await;
    let (code, message) = api_code(
        put_subresource(&h.client, "/namespaces/x/virtualmachineinstances/vm/pause").await,
    );
    assert_eq!(
        (code, message.contains("VMI is already paused")),
        (409, true),
        "{message}"
    );
    put_subresource(
        &h.client,
        "/namespaces/x/virtualmachineinstances/vm/unpause",
    )
    .await
    .expect("unpause");
    vm_printable(&h.client, ns, "vm", "Running").await;

    // guest agent data.
    let info: Value = h
        .client
        .request(
            Request::get(format!(
                "{SUB}/namespaces/x/virtualmachineinstances/vm/guestosinfo"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(info["hostname"], "vm");

    // restart replaces the VMI.
    put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/restart")
        .await
        .expect("restart");
    let old_uid = vmi.uid().unwrap();
    let vmis = api(&h.client, ns, &vmi_ar());
    wait_for("a new Running VMI after restart", || {
        let vmis = vmis.clone();
        let old_uid = old_uid.clone();
        async move {
            vmis.get_opt("vm").await.unwrap().filter(|v| {
                v.uid().as_deref() != Some(old_uid.as_str())
                    && str_at(v, "/status/phase") == "Running"
            })
        }
    })
    .await;

    // migrate creates a VirtualMachineInstanceMigration; the VMI moves to the next node.
    put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/migrate")
        .await
        .expect("migrate");
    let vmims = api(
        &h.client,
        ns,
        &ar(
            "kubevirt.io",
            "v1",
            "VirtualMachineInstanceMigration",
            "virtualmachineinstancemigrations",
        ),
    );
    let vmim = wait_for("a Succeeded migration", || {
        let vmims = vmims.clone();
        async move {
            vmims
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|m| str_at(m, "/status/phase") == "Succeeded")
        }
    })
    .await;
    assert!(vmim.name_any().starts_with("kubevirt-migrate-vm-"));
    assert_eq!(str_at(&vmim, "/spec/vmiName"), "vm");
    let migrated = vmis.get("vm").await.unwrap();
    assert_eq!(str_at(&migrated, "/status/nodeName"), "sim-node-2");
    assert_eq!(
        str_at(&migrated, "/status/migrationState/targetNode"),
        "sim-node-2"
    );

    // stop: Always → Halted, the VMI goes; a second stop conflicts.
    put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/stop")
        .await
        .expect("stop");
    vmi_gone(&h.client, ns, "vm").await;
    let (code, message) =
        api_code(put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/stop").await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("VM is not running"), "{message}");
    let (code, _) =
        api_code(put_subresource(&h.client, "/namespaces/x/virtualmachines/vm/migrate").await);
    assert_eq!(code, 409);

    // Unknown VM: 404 Status from the simulator.
    let (code, message) =
        api_code(put_subresource(&h.client, "/namespaces/x/virtualmachines/nope/start").await);
    assert_eq!(code, 404, "{message}");
    assert!(message.contains("\"nope\" not found"), "{message}");

    // Straight to the simulator, without the apiserver's client certificate: refused even
    // though the caller claims a user.
    let raw = raw_https_get(
        h.sim.port(),
        h.sim.ca_pem(),
        "/apis/subresources.kubevirt.io/v1/namespaces/x/virtualmachineinstances/vm/guestosinfo",
        &[("X-Remote-User", "mallory")],
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    let health = raw_https_get(h.sim.port(), h.sim.ca_pem(), "/healthz", &[]).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    eprintln!(
        "subresources_through_the_host_apiserver: {:.2?}",
        started.elapsed()
    );
}

/// A plain HTTPS GET to the simulator, trusting its CA, without a client certificate.
async fn raw_https_get(port: u16, ca_pem: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
        .await
        .expect("response within 30s")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reject_bad_vms_and_default_the_machine_type() {
    let started = Instant::now();
    let ns = "hooks";
    let h = host("sim-hooks", ns, |_| SimulatorOptions::new()).await;
    let vms = api(&h.client, ns, &vm_ar());

    let mut bad = vm("bad", "Halted");
    bad.data["spec"]["template"]["spec"]["volumes"] = json!([]);
    let err = vms
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("a VM whose disk has no volume must be rejected");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(
            "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request"
        ),
        "{}",
        status.message
    );
    assert!(
        status
            .message
            .contains("spec.template.spec.domain.devices.disks[0].Name 'rootdisk' not found."),
        "{}",
        status.message
    );
    assert!(vms.get_opt("bad").await.unwrap().is_none());

    // Defaulted on create; an explicit machine type is kept.
    vms.create(&PostParams::default(), &vm("good", "Halted"))
        .await
        .unwrap();
    assert_eq!(
        str_at(
            &vms.get("good").await.unwrap(),
            "/spec/template/spec/domain/machine/type"
        ),
        "q35"
    );
    let mut pinned = vm("pinned", "Halted");
    pinned.data["spec"]["template"]["spec"]["domain"]["machine"] =
        json!({"type": "pc-q35-rhel9.4.0"});
    vms.create(&PostParams::default(), &pinned).await.unwrap();
    assert_eq!(
        str_at(
            &vms.get("pinned").await.unwrap(),
            "/spec/template/spec/domain/machine/type"
        ),
        "pc-q35-rhel9.4.0"
    );

    // The validator runs on UPDATE too.
    let err = vms
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"spec": {"domain": {"devices": {"disks": [
                    {"name": "rootdisk", "disk": {"bus": "virtio"}},
                    {"name": "data", "disk": {"bus": "virtio"}},
                ]}}}}}}),
            ),
        )
        .await
        .expect_err("adding a disk without a volume must be rejected");
    assert!(
        err.to_string()
            .contains("spec.template.spec.domain.devices.disks[1].Name 'data' not found."),
        "{err}"
    );
    let stats = h.sim.stats();
    assert!(stats.admission_denied >= 2, "{stats:?}");
    eprintln!(
        "webhooks_reject_bad_vms_and_default_the_machine_type: {:.2?}",
        started.elapsed()
    );
}

/// Opens a websocket on a VMI subresource through the host apiserver with the admin client,
/// offering the subprotocol virtctl uses.
async fn open_stream(
    client: &Client,
    ns: &str,
    vmi: &str,
    what: &str,
) -> Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, (u16, String)> {
    let req = Request::get(format!(
        "{SUB}/namespaces/{ns}/virtualmachineinstances/{vmi}/{what}"
    ))
    .header(header::CONNECTION, "Upgrade")
    .header(header::UPGRADE, "websocket")
    .header(header::SEC_WEBSOCKET_VERSION, "13")
    .header(header::SEC_WEBSOCKET_KEY, generate_key())
    .header(header::SEC_WEBSOCKET_PROTOCOL, PLAIN_STREAM_PROTOCOL)
    .body(kube::client::Body::from(Vec::new()))
    .unwrap();
    let res = client.send(req).await.unwrap();
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let code = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err((code, body));
    }
    assert_eq!(
        res.headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok()),
        Some(PLAIN_STREAM_PROTOCOL)
    );
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_vnc_websockets_echo_through_the_apiserver() {
    let started = Instant::now();
    let ns = "ws";
    let h = host("sim-ws", ns, |_| SimulatorOptions::new()).await;
    api(&h.client, ns, &vm_ar())
        .create(&PostParams::default(), &vm("vm", "Always"))
        .await
        .unwrap();
    running_vmi(&h.client, ns, "vm").await;

    let mut console = open_stream(&h.client, ns, "vm", "console")
        .await
        .expect("console websocket");
    for msg in [
        Message::Binary(b"root\r".to_vec().into()),
        Message::Text("echo hello\r".into()),
    ] {
        console.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(WAIT, console.next())
            .await
            .expect("an echo within 30s")
            .expect("the stream stays open")
            .unwrap();
        assert_eq!(back, msg);
    }
    console.close(None).await.unwrap();

    let mut vnc = open_stream(&h.client, ns, "vm", "vnc")
        .await
        .expect("vnc websocket");
    vnc.send(Message::Binary(vec![0u8, 1, 2, 3].into()))
        .await
        .unwrap();
    let back = tokio::time::timeout(WAIT, vnc.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::Binary(vec![0u8, 1, 2, 3].into()));

    let (code, body) = open_stream(&h.client, ns, "missing", "console")
        .await
        .expect_err("no websocket for a missing VMI");
    assert_eq!(code, 404, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["message"],
        "virtualmachineinstance.kubevirt.io \"missing\" not found"
    );
    let call = h.sim.last_subresource_call().unwrap();
    assert_eq!(call.user.as_deref(), Some("kubernetes-admin"));
    assert!(h.sim.stats().websocket_sessions >= 2);
    eprintln!(
        "console_and_vnc_websockets_echo_through_the_apiserver: {:.2?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datavolumes_get_claims_and_pools_get_vms() {
    let started = Instant::now();
    let ns = "storage";
    let h = host("sim-pool", ns, |_| SimulatorOptions::new()).await;

    let dvs = api(
        &h.client,
        ns,
        &ar("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes"),
    );
    let dv = dvs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": {"name": "disk1"},
                "spec": {
                    "source": {"blank": {}},
                    "storage": {"resources": {"requests": {"storage": "2Gi"}}},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), ns);
    let pvc = wait_for("the PVC of DataVolume disk1", || {
        let pvcs = pvcs.clone();
        async move { pvcs.get_opt("disk1").await.unwrap() }
    })
    .await;
    assert_eq!(pvc.owner_references()[0].kind, "DataVolume");
    assert_eq!(pvc.owner_references()[0].uid, dv.uid().unwrap());
    assert_eq!(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("2Gi")
    );
    let dv = wait_for("DataVolume disk1 Succeeded", || {
        let dvs = dvs.clone();
        async move {
            dvs.get("disk1")
                .await
                .ok()
                .filter(|d| str_at(d, "/status/phase") == "Succeeded")
        }
    })
    .await;
    assert_eq!(str_at(&dv, "/status/progress"), "100.0%");

    let pools = api(
        &h.client,
        ns,
        &ar(
            "pool.kubevirt.io",
            "v1beta1",
            "VirtualMachinePool",
            "virtualmachinepools",
        ),
    );
    let template = vm("unused", "Always");
    let pool = pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "pool.kubevirt.io/v1beta1",
                "kind": "VirtualMachinePool",
                "metadata": {"name": "pool1"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "demo"}},
                    "virtualMachineTemplate": {
                        "metadata": {"labels": {"app": "demo"}},
                        "spec": template.data["spec"],
                    },
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    for i in 0..3 {
        let vmi = running_vmi(&h.client, ns, &format!("pool1-{i}")).await;
        assert_eq!(vmi.owner_references()[0].name, format!("pool1-{i}"));
    }
    let vms = api(&h.client, ns, &vm_ar())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(vms.items.len(), 3);
    for vm in &vms.items {
        let owner = &vm.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("VirtualMachinePool", pool.uid().unwrap().as_str())
        );
    }
    let vmis = api(&h.client, ns, &vmi_ar())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(vmis.items.len(), 3);
    wait_for("pool1 readyReplicas 3", || {
        let pools = pools.clone();
        async move {
            pools
                .get("pool1")
                .await
                .ok()
                .filter(|p| ptr(p, "/status/readyReplicas") == Some(&json!(3)))
        }
    })
    .await;

    // Scale down to 1: pool1-1 and pool1-2 go, with their VMIs.
    pools
        .patch(
            "pool1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    vmi_gone(&h.client, ns, "pool1-2").await;
    vmi_gone(&h.client, ns, "pool1-1").await;
    let left = api(&h.client, ns, &vm_ar())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        left.items.iter().map(|v| v.name_any()).collect::<Vec<_>>(),
        ["pool1-0"]
    );
    eprintln!(
        "datavolumes_get_claims_and_pools_get_vms: {:.2?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_crds_still_run_vms_and_uninstall_unregisters() {
    let started = Instant::now();
    let ns = "fallback";
    let h = host("sim-fallback", ns, |_| {
        SimulatorOptions::new().with_fallback_crds()
    })
    .await;
    assert!(!h.sim.crds_source().is_real());
    api(&h.client, ns, &vm_ar())
        .create(&PostParams::default(), &vm("vm", "Always"))
        .await
        .unwrap();
    let vmi = running_vmi(&h.client, ns, "vm").await;
    assert_eq!(str_at(&vmi, "/status/nodeName"), "sim-node-1");
    vm_printable(&h.client, ns, "vm", "Running").await;

    // uninstall removes the registrations, so the host no longer depends on the simulator.
    h.sim.uninstall().await.unwrap();
    let apiservices: Api<APIService> = Api::all(h.client.clone());
    assert!(
        apiservices
            .get_opt("v1.subresources.kubevirt.io")
            .await
            .unwrap()
            .is_none()
    );
    let mut bad = vm("after-uninstall", "Halted");
    bad.data["spec"]["template"]["spec"]["volumes"] = json!([]);
    let vms = api(&h.client, ns, &vm_ar());
    wait_for("VM creates without the simulator's webhooks", || {
        let (vms, bad) = (vms.clone(), bad.clone());
        async move { vms.create(&PostParams::default(), &bad).await.ok() }
    })
    .await;
    eprintln!(
        "fallback_crds_still_run_vms_and_uninstall_unregisters: {:.2?}",
        started.elapsed()
    );
}
