//! The executor against a scripted mock apiserver (the shape of kube-rs controller-rs's
//! `fixtures.rs`): each test lists the calls it expects, in order, with the answers; the mock
//! answers them and records what was really called, and the test compares the two. The plans
//! come from the real caches (filled by the test) through the real planner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use kvtenant_api::labels::{HostNamespaceOwner, VirtualClusterRef};
use kvtenant_api::{VirtualCluster, VirtualClusterSpec};
use kvtenant_kubeutil::ApiErrorClass;
use kvtenant_rules::kinds;
use kvtenant_rules::translate::to_host;
use serde_json::{Value, json};

use super::Tenant;
use crate::host::{Host, Key};
use crate::plan::CONFLICT_WAIT;

/// One expected call: method, path (without query), and the answer: a status and a body
/// (`None`: the request's own body echoed back, as a create answers).
struct Call {
    method: &'static str,
    path: String,
    status: u16,
    body: Option<Value>,
}

fn call(method: &'static str, path: impl Into<String>, status: u16, body: Option<Value>) -> Call {
    Call {
        method,
        path: path.into(),
        status,
        body,
    }
}

fn status(code: u16, reason: &str) -> Option<Value> {
    Some(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("mock: {reason}"), "reason": reason, "code": code}),
    )
}

fn success() -> Option<Value> {
    Some(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// A scripted apiserver: answers in order, records `METHOD path` of every call.
#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<Call>>>,
    seen: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Mock {
    fn client(&self) -> Client {
        let m = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let m = m.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let bytes = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let sent: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                m.seen.lock().unwrap().push(format!("{method} {path}"));
                m.bodies.lock().unwrap().push(sent.clone());
                let next = m.script.lock().unwrap().pop_front();
                let (code, body) = match next {
                    Some(c) if c.method == method && c.path == path => {
                        let mut body = c.body.unwrap_or(sent);
                        if body.get("metadata").is_some() {
                            body["metadata"]["uid"] = json!("uid-from-mock");
                            body["metadata"]["resourceVersion"] = json!("1");
                        }
                        (c.status, body)
                    }
                    // unexpected: the test's comparison of calls shows it
                    _ => (500, status(500, "unexpected call").unwrap_or_default()),
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            body.to_string(),
                        )))
                        .unwrap(),
                )
            }
        });
        Client::new(svc, "default")
    }

    fn expect(&self, calls: Vec<Call>) -> Vec<String> {
        let want = calls
            .iter()
            .map(|c| format!("{} {}", c.method, c.path))
            .collect();
        *self.script.lock().unwrap() = calls.into();
        self.seen.lock().unwrap().clear();
        self.bodies.lock().unwrap().clear();
        want
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

struct Env {
    host: Mock,
    tenant_api: Mock,
    tenant: Arc<Tenant>,
    tenant_writers: Vec<Option<crate::cache::Writer>>,
    host_writers: crate::host::Writers,
    vc: VirtualClusterRef,
}

fn env() -> Env {
    let host = Mock::default();
    let tenant_api = Mock::default();
    let (h, host_writers) = Host::new(host.client());
    h.mark_all_ready();
    // DNS off: these tests are about the executor, and no host cache here has kube-dns (a VM
    // would wait for its address)
    let mut spec = VirtualClusterSpec::default();
    spec.dns.enabled = false;
    let mut vc = VirtualCluster::new("alpha", spec);
    vc.metadata.namespace = Some("tenants".into());
    vc.metadata.uid = Some("vc-uid".into());
    let vcref = VirtualClusterRef::from_virtualcluster(&vc).unwrap();
    // the host namespace exists already (kvtenant made it earlier)
    let host_ns = vcref.host_namespace("default");
    let meta = vcref.host_namespace_meta("default", Some("t-ns"));
    h.record_namespace(&host_ns, HostNamespaceOwner::from_meta(&meta).unwrap());
    let (tenant, tenant_writers) = Tenant::for_test(h, vc, tenant_api.client());
    Env {
        host,
        tenant_api,
        tenant,
        tenant_writers,
        host_writers,
        vc: vcref,
    }
}

impl Env {
    fn host_ns(&self) -> String {
        self.vc.host_namespace("default")
    }
    fn put_tenant(&mut self, kind: &str, obj: &DynamicObject) {
        let k = kinds::by_kind(kind).unwrap();
        self.tenant_writers[k.id.index()]
            .as_mut()
            .unwrap()
            .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
    }
    fn put_host(&mut self, kind: &str, obj: &DynamicObject) {
        let k = kinds::by_kind(kind).unwrap();
        self.host_writers
            .copy_writer(k.id)
            .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
    }
    fn key(&self, kind: &str, name: &str) -> Key {
        Key {
            kind: kinds::by_kind(kind).map(|k| k.id).unwrap(),
            namespace: "default".into(),
            name: name.into(),
        }
    }
}

fn obj(kind: &str, value: Value) -> DynamicObject {
    let k = kinds::by_kind(kind).unwrap();
    let mut v = value;
    v["apiVersion"] = json!(k.resource.api_version);
    v["kind"] = json!(kind);
    serde_json::from_value(v).unwrap()
}

fn vm(volumes: Value) -> DynamicObject {
    obj(
        "VirtualMachine",
        json!({"metadata": {"name": "vm1", "namespace": "default", "uid": "t-vm1", "resourceVersion": "5"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {}, "volumes": volumes}}}}),
    )
}

fn secret() -> DynamicObject {
    obj(
        "Secret",
        json!({"metadata": {"name": "ci", "namespace": "default", "uid": "t-ci"}, "type": "Opaque",
        "data": {"userdata": "I2Nsb3VkLWNvbmZpZw=="}}),
    )
}

#[tokio::test]
async fn a_new_vm_creates_its_secret_then_itself_on_the_host() {
    let mut e = env();
    e.put_tenant(
        "VirtualMachine",
        &vm(json!([{"name": "ci", "cloudInitNoCloud": {"userDataSecretRef": {"name": "ci"}}}])),
    );
    e.put_tenant("Secret", &secret());
    let ns = e.host_ns();
    // before the VM is first created, the host is asked whether the Secret's name is the
    // tenant's copy (and not an object of the host's own)
    let copy = to_host(&secret(), &ns, &e.vc, |_| None);
    let want = e.host.expect(vec![
        call(
            "POST",
            format!("/api/v1/namespaces/{ns}/secrets"),
            201,
            None,
        ),
        call(
            "GET",
            format!("/api/v1/namespaces/{ns}/secrets/ci"),
            200,
            Some(serde_json::to_value(&copy).unwrap()),
        ),
        call(
            "POST",
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines"),
            201,
            None,
        ),
    ]);
    e.tenant_api.expect(vec![]);
    let (_, again) = e
        .tenant
        .reconcile(&e.key("VirtualMachine", "vm1"))
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(e.host.seen(), want);
    assert!(e.tenant_api.seen().is_empty(), "{:?}", e.tenant_api.seen());
    let sent = e.host.bodies.lock().unwrap().clone();
    assert_eq!(sent[0]["data"]["userdata"], "I2Nsb3VkLWNvbmZpZw==");
    assert_eq!(sent[2]["metadata"]["namespace"], ns);
    assert_eq!(
        sent[2]["metadata"]["labels"][kvtenant_api::labels::VIRTUALCLUSTER_UID],
        "vc-uid"
    );
}

#[tokio::test]
async fn an_existing_name_on_create_means_the_cache_is_behind_and_nothing_else_runs() {
    let mut e = env();
    e.put_tenant("VirtualMachine", &vm(json!([])));
    let ns = e.host_ns();
    // the name is taken by the tenant's own copy (not an object of the host's): the cache is
    // behind
    let copy = to_host(&vm(json!([])), &ns, &e.vc, |_| None);
    let want = e.host.expect(vec![
        call(
            "POST",
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines"),
            409,
            status(409, "AlreadyExists"),
        ),
        call(
            "GET",
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/vm1"),
            200,
            Some(serde_json::to_value(&copy).unwrap()),
        ),
    ]);
    let (_, again) = e
        .tenant
        .reconcile(&e.key("VirtualMachine", "vm1"))
        .await
        .unwrap();
    assert_eq!(again, Some(CONFLICT_WAIT));
    assert_eq!(e.host.seen(), want);
}

#[tokio::test]
async fn a_failing_host_call_is_an_error_naming_the_call_and_the_object() {
    let mut e = env();
    e.put_tenant("VirtualMachine", &vm(json!([])));
    let ns = e.host_ns();
    e.host.expect(vec![call(
        "POST",
        format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines"),
        503,
        status(503, "ServiceUnavailable"),
    )]);
    let err = e
        .tenant
        .reconcile(&e.key("VirtualMachine", "vm1"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), Some(ApiErrorClass::Server));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("create host VirtualMachine {ns}/vm1: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn a_copy_is_deleted_only_when_the_tenant_apiserver_agrees_it_is_gone() {
    let mut e = env();
    let copy = to_host(&vm(json!([])), &e.host_ns(), &e.vc, |_| None);
    e.put_host("VirtualMachine", &copy);
    let ns = e.host_ns();
    // the tenant's apiserver still has it (the cache is behind): nothing is deleted
    let want_t = e.tenant_api.expect(vec![call(
        "GET",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1",
        200,
        Some(serde_json::to_value(vm(json!([]))).unwrap()),
    )]);
    e.host.expect(vec![]);
    let (_, again) = e
        .tenant
        .reconcile(&e.key("VirtualMachine", "vm1"))
        .await
        .unwrap();
    assert_eq!(again, Some(CONFLICT_WAIT));
    assert_eq!(e.tenant_api.seen(), want_t);
    assert!(e.host.seen().is_empty());
    // gone there too: the host copy is deleted
    e.tenant_api.expect(vec![call(
        "GET",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1",
        404,
        status(404, "NotFound"),
    )]);
    let want = e.host.expect(vec![call(
        "DELETE",
        format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/vm1"),
        200,
        success(),
    )]);
    let (_, again) = e
        .tenant
        .reconcile(&e.key("VirtualMachine", "vm1"))
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(e.host.seen(), want);
}

#[tokio::test]
async fn a_refusal_is_an_event_and_a_condition_told_once() {
    let mut e = env();
    let bad = vm(json!([{"name": "h", "hostDisk": {"path": "/etc", "type": "Disk"}}]));
    e.put_tenant("VirtualMachine", &bad);
    e.host.expect(vec![]);
    let want = e.tenant_api.expect(vec![
        call(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events",
            201,
            None,
        ),
        call(
            "PUT",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1/status",
            200,
            Some(serde_json::to_value(&bad).unwrap()),
        ),
    ]);
    let key = e.key("VirtualMachine", "vm1");
    e.tenant.reconcile(&key).await.unwrap();
    assert_eq!(e.tenant_api.seen(), want);
    assert!(e.host.seen().is_empty(), "nothing reaches the host");
    let sent = e.tenant_api.bodies.lock().unwrap().clone();
    assert_eq!(sent[0]["reason"], "SyncRefused");
    assert!(sent[0]["note"].as_str().unwrap().contains("hostDisk"));
    assert_eq!(sent[1]["status"]["conditions"][0]["type"], "Synced");
    // the same refusal again: not told twice
    e.tenant_api.expect(vec![]);
    e.tenant.reconcile(&key).await.unwrap();
    assert!(e.tenant_api.seen().is_empty(), "{:?}", e.tenant_api.seen());
}

#[tokio::test]
async fn a_host_made_instance_is_mirrored_into_the_tenant() {
    let mut e = env();
    e.put_tenant("VirtualMachine", &vm(json!([])));
    let vmi = obj(
        "VirtualMachineInstance",
        json!({"metadata": {"name": "vm1", "namespace": e.host_ns(), "uid": "h-vmi",
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm1", "uid": "h-vm1"}]},
        "spec": {"domain": {}}, "status": {"phase": "Scheduling"}}),
    );
    e.put_host("VirtualMachineInstance", &vmi);
    e.host.expect(vec![]);
    let want = e.tenant_api.expect(vec![call(
        "POST",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances",
        201,
        None,
    )]);
    e.tenant
        .reconcile(&e.key("VirtualMachineInstance", "vm1"))
        .await
        .unwrap();
    assert_eq!(
        e.tenant_api.seen(),
        want,
        "VMIs have no /status: one create carries it"
    );
    let sent = e.tenant_api.bodies.lock().unwrap().clone();
    assert_eq!(sent[0]["metadata"]["ownerReferences"][0]["uid"], "t-vm1");
    assert_eq!(sent[0]["status"]["phase"], "Scheduling");
}

#[tokio::test]
async fn a_pod_is_bound_once_while_the_tenant_cache_does_not_show_the_binding_yet() {
    let mut e = env();
    let pod = obj(
        "Pod",
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "t-web",
            "resourceVersion": "5"},
        "spec": {"automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "busybox"}]}}),
    );
    e.put_tenant("Pod", &pod);
    let key = e.key("Pod", "web");
    // the host copy kvtenant writes, as the host has it once scheduled
    let mut copy = e
        .tenant
        .plan(&key)
        .unwrap()
        .steps
        .into_iter()
        .find_map(|s| match s {
            crate::plan::Step::CreateHost(o) => Some(*o),
            _ => None,
        })
        .unwrap();
    copy.metadata.uid = Some("h-web".into());
    copy.data["spec"]["nodeName"] = json!("node-1");
    e.put_host("Pod", &copy);
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}});
    let host_want = e
        .host
        .expect(vec![call("GET", "/api/v1/nodes/node-1", 200, Some(node))]);
    let want = e.tenant_api.expect(vec![
        call("PATCH", "/api/v1/nodes/node-1", 200, None),
        call("PATCH", "/api/v1/nodes/node-1/status", 200, None),
        call(
            "POST",
            "/api/v1/namespaces/default/pods/web/binding",
            201,
            success(),
        ),
    ]);
    e.tenant.reconcile(&key).await.unwrap();
    // the host pod's next change comes before the tenant's watch shows the binding
    e.tenant.reconcile(&key).await.unwrap();
    assert_eq!(e.host.seen(), host_want);
    assert_eq!(e.tenant_api.seen(), want, "bound once");
}
