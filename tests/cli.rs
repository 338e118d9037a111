//! The real `kvtenant` binary against real apiservers (testenv): the admin commands a platform
//! admin runs, and kubectl after `connect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use testenv::testing::{InterruptOnDrop, children_of, kubectl};
use testenv::{ControlPlane, Options};

/// Runs the binary to its end; a run still going after 300 s (e.g. a `connect` that started
/// port-forwarding, which stays in the foreground) is killed and fails the test.
fn kvtenant(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KVTENANT_CONTEXT")
        .env_remove("KVTENANT_LOCAL_PORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(300) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kvtenant {args:?} still running after 300s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The cluster entry of `context` in the kubeconfig at `path`.
fn cluster_of(path: &Path, context: &str) -> kube::config::Cluster {
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.clone())
        .unwrap_or_else(|| panic!("no context {context}"));
    kc.clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn install_crds(host: &ControlPlane) {
    let api: Api<CustomResourceDefinition> = Api::all(host.client().unwrap());
    for crd in kvtenant_api::crds() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    for _ in 0..100 {
        if kubectl(
            host.kubeconfig_path(),
            &["api-resources", "--api-group=tenancy.kvtenant.io"],
        )
        .contains("virtualclusters")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("VirtualCluster CRD not served");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_connect_disconnect_pause_resume_delete() {
    let host = ControlPlane::start(Options::new("cli-host")).await.unwrap();
    let tenant = ControlPlane::start(Options::new("cli-tenant"))
        .await
        .unwrap();
    install_crds(&host).await;
    // a namespace only the tenant has, to tell the clusters apart through kubectl
    let marker: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-tenant"}}))
            .unwrap();
    Api::<Namespace>::all(tenant.client().unwrap())
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();
    // the admin's own kubeconfig file, which connect/disconnect edit
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::copy(host.kubeconfig_path(), &kc).unwrap();

    // bad input is refused with a message that says what to fix
    let bad = kvtenant(&kc, &["create", "Bad_Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid name"));

    // the controller, as a real process of the same binary
    let controller = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args([
            "controller",
            "--leader-elect=false",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _controller = InterruptOnDrop(controller);

    // create waits until the controller reports the virtual cluster Ready, showing progress
    let out = ok(kvtenant(
        &kc,
        &[
            "create",
            "t1",
            "--external-kubeconfig",
            tenant.kubeconfig_path().to_str().unwrap(),
            "--timeout",
            "120",
        ],
    ));
    assert!(out.contains("VirtualCluster vc-t1/t1 created"), "{out}");
    assert!(out.contains("vc-t1/t1 is Ready"), "{out}");
    assert!(
        out.contains("kvtenant connect t1"),
        "create must say what to do next: {out}"
    );
    let again = kvtenant(
        &kc,
        &[
            "create",
            "t1",
            "--external-kubeconfig",
            tenant.kubeconfig_path().to_str().unwrap(),
            "--no-wait",
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let table = ok(kvtenant(&kc, &["list"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("vc-t1") && l.contains("External") && l.contains("Ready")),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(kvtenant(&kc, &["list", "-o", "json"]))).unwrap();
    // as kubectl prints several objects: a v1 List
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["kind"], "VirtualCluster");
    assert_eq!(json["items"][0]["metadata"]["name"], "t1");

    // connect: the tenant's server answers, so no port-forward: the command ends and the
    // context points at the server itself; kubectl now talks to the tenant
    let out = ok(kvtenant(&kc, &["connect", "t1"]));
    assert!(out.contains("kvtenant_t1_vc-t1"), "{out}");
    assert!(!out.contains("Forwarding"), "{out}");
    let tenant_server = kube::config::Kubeconfig::read_from(tenant.kubeconfig_path())
        .unwrap()
        .clusters[0]
        .cluster
        .clone()
        .unwrap()
        .server;
    assert!(tenant_server.is_some());
    let connected = cluster_of(&kc, "kvtenant_t1_vc-t1");
    assert_eq!(connected.server, tenant_server);
    assert_eq!(connected.tls_server_name, None);
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    // disconnect: back to the host
    ok(kvtenant(&kc, &["disconnect"]));
    assert!(!kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("vc-t1"));
    // --print leaves the kubeconfig alone and prints a working one
    let printed = ok(kvtenant(&kc, &["connect", "t1", "--print"]));
    let pk = dir.path().join("printed");
    std::fs::write(&pk, printed).unwrap();
    assert!(kubectl(&pk, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    // an External control plane has no pod on the host to forward to
    let host_context = kubectl(&kc, &["config", "current-context"]);
    let err = failed(kvtenant(&kc, &["connect", "t1", "--port-forward"]));
    assert!(err.contains("needs a Managed VirtualCluster"), "{err}");
    assert_eq!(
        kubectl(&kc, &["config", "current-context"]),
        host_context,
        "a failed connect must leave the kubeconfig alone"
    );

    ok(kvtenant(&kc, &["pause", "t1"]));
    assert_eq!(
        kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-t1",
                "t1",
                "-o",
                "jsonpath={.spec.paused}"
            ]
        ),
        "true"
    );
    ok(kvtenant(&kc, &["resume", "t1"]));
    assert_eq!(
        kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-t1",
                "t1",
                "-o",
                "jsonpath={.spec.paused}"
            ]
        ),
        "false"
    );

    let missing = kvtenant(&kc, &["pause", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // a managed one from a values file plus flags: flags win over the file
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "kubevirt:\n  syncKinds: [VirtualMachine]\nexpose:\n  type: ClusterIP\n",
    )
    .unwrap();
    ok(kvtenant(
        &kc,
        &[
            "create",
            "m1",
            "-f",
            values.to_str().unwrap(),
            "--expose",
            "NodePort",
            "--no-wait",
        ],
    ));
    let spec: serde_json::Value = serde_json::from_str(&kubectl(
        &kc,
        &["get", "vc", "-n", "vc-m1", "m1", "-o", "jsonpath={.spec}"],
    ))
    .unwrap();
    assert_eq!(spec["expose"]["type"], "NodePort");
    assert_eq!(
        spec["kubevirt"]["syncKinds"],
        serde_json::json!(["VirtualMachine"])
    );
    assert_eq!(spec["controlPlane"]["mode"], "Managed");

    // connect to the managed one: its server is the in-cluster Service name, which does not
    // resolve here, so connect port-forwards; testenv runs no kubelet, so no pod is Ready and
    // connect says so, exits non-zero and leaves the kubeconfig alone. (The forward itself
    // needs a real cluster: e2e-kind.)
    let mut secret = String::new();
    for _ in 0..600 {
        secret = kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-m1",
                "m1",
                "-o",
                "jsonpath={.status.kubeconfigSecretName}",
            ],
        );
        if !secret.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        secret, "m1-kubeconfig",
        "the controller wrote no kubeconfig"
    );
    let before = kubectl(&kc, &["config", "current-context"]);
    for args in [
        &["connect", "m1", "--port-forward"][..],
        &["connect", "m1"][..],
    ] {
        let started = std::time::Instant::now();
        let err = failed(kvtenant(&kc, args));
        assert!(
            err.contains("no Ready pod behind Service m1-apiserver in namespace vc-m1")
                && err.contains("is the VirtualCluster Ready? `kvtenant list`"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(kubectl(&kc, &["config", "current-context"]), before);
    }
    let err = failed(kvtenant(&kc, &["connect", "m1"]));
    assert!(
        err.contains("https://m1-apiserver.vc-m1.svc:443 is not reachable from here"),
        "connect must say why it port-forwards: {err}"
    );
    // --no-port-forward connects to the server as it is, without a check
    let out = ok(kvtenant(&kc, &["connect", "m1", "--no-port-forward"]));
    assert!(!out.contains("Forwarding"), "{out}");
    assert_eq!(
        cluster_of(&kc, "kvtenant_m1_vc-m1").server.as_deref(),
        Some("https://m1-apiserver.vc-m1.svc:443")
    );
    ok(kvtenant(&kc, &["disconnect"]));
    assert_eq!(kubectl(&kc, &["config", "current-context"]), before);
    ok(kvtenant(&kc, &["delete", "m1", "--timeout", "60"]));

    ok(kvtenant(&kc, &["delete", "t1", "--timeout", "60"]));
    assert!(ok(kvtenant(&kc, &["list"])).contains("No virtual clusters"));
}

#[test]
fn crds_prints_the_committed_yaml() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .arg("crds")
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("api/crds/tenancy.kvtenant.io_virtualclusters.yaml"),
    )
    .unwrap();
    assert_eq!(printed, committed);
}

/// `kvtenant dev`: one command brings up a host with the (simulated) KubeVirt, a virtual
/// cluster and the components; a tenant applies the sample VM and sees it Running, runs a pod,
/// reads its logs and execs in it; Ctrl-C removes everything.
#[test]
fn dev_mode_runs_a_sample_vm_and_ctrl_c_cleans_up() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let tenant_kc = dir.path().join("tenant.kubeconfig");
    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["dev", "--kubeconfig-out", tenant_kc.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("simulated"),
        "dev mode must say KubeVirt is simulated:\n{printed}"
    );
    assert!(printed.contains(tenant_kc.to_str().unwrap()), "{printed}");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/vm-cloudinit.yaml");
    kubectl(&tenant_kc, &["apply", "-f", sample.to_str().unwrap()]);
    let mut running = false;
    for _ in 0..300 {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&tenant_kc)
            .args(["get", "vmi", "vm1", "-o", "jsonpath={.status.phase}"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "Running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        running,
        "the sample VM's instance did not become Running in the tenant"
    );
    // the walkthrough's pod: run it, read its logs, exec in it (kwok plays the kubelet)
    kubectl(&tenant_kc, &["run", "web", "--image=nginx"]);
    kubectl(
        &tenant_kc,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
    );
    let logs = kubectl(&tenant_kc, &["logs", "web"]);
    assert!(logs.contains("simulated container log"), "{logs}");
    let hi = kubectl(&tenant_kc, &["exec", "web", "--", "echo", "hi from web"]);
    assert_eq!(hi.trim(), "hi from web");
    let children = children_of(child.0.id());
    assert!(
        children.len() >= 4,
        "host and tenant control planes: {children:?}"
    );
    drop(child);
    for pid in children {
        assert!(
            !testenv::process::alive(pid),
            "process {pid} survived Ctrl-C"
        );
    }
}

/// A fake host apiserver (plain HTTP, no auth) that knows one Managed VirtualCluster `vc-m1/m1`
/// whose kubeconfig names the in-cluster server `https://kubernetes.default.svc:443`, its
/// `m1-apiserver` Service with one Ready pod, and a pod portforward (`v4.channel.k8s.io`) that
/// bridges to `upstream`: a real kube-apiserver (testenv) whose serving certificate covers
/// `kubernetes.default.svc`. Returns its URL and the number of port-forwards served.
async fn fake_host_forwarding_to(
    upstream: std::net::SocketAddr,
    tenant_kubeconfig: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::get;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let vc: kvtenant_api::VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": "m1", "namespace": "vc-m1", "uid": "u1"},
        "spec": {"controlPlane": {"mode": "Managed"}},
        "status": {"phase": "Ready", "kubeconfigSecretName": "m1-kubeconfig"},
    }))
    .unwrap();
    let vc = serde_json::to_value(vc).unwrap();
    let secret = serde_json::to_value(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("m1-kubeconfig".into()),
            namespace: Some("vc-m1".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "kubeconfig".to_string(),
                ByteString(tenant_kubeconfig.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    })
    .unwrap();
    let labels = json!({"app.kubernetes.io/instance": "m1",
                        "app.kubernetes.io/name": "kvtenant-control-plane"});
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "m1-apiserver", "namespace": "vc-m1"},
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "https", "port": 443, "targetPort": "https"}]}});
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "m1-cp-0", "namespace": "vc-m1", "labels": labels},
        "spec": {"containers": [{"name": "kube-apiserver", "image": "x",
                                 "ports": [{"name": "https", "containerPort": 6443}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }]});
    let forwards = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = forwards.clone();
    let app = axum::Router::new()
        .route(
            "/apis/tenancy.kvtenant.io/v1alpha1/namespaces/vc-m1/virtualclusters/m1",
            get(move || async move { axum::Json(vc) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/secrets/m1-kubeconfig",
            get(move || async move { axum::Json(secret) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/services/m1-apiserver",
            get(move || async move { axum::Json(service) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/pods",
            get(move || async move { axum::Json(pods) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/pods/m1-cp-0/portforward",
            get(move |ws: WebSocketUpgrade| async move {
                counter.fetch_add(1, Ordering::SeqCst);
                ws.protocols(["v4.channel.k8s.io"])
                    .on_upgrade(move |mut socket| async move {
                        let Ok(mut tcp) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let port = 6443u16.to_le_bytes();
                        for ch in [0u8, 1] {
                            let init = vec![ch, port[0], port[1]];
                            if socket.send(Message::Binary(init.into())).await.is_err() {
                                return;
                            }
                        }
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            tokio::select! {
                                msg = socket.recv() => match msg {
                                    Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                                        if tcp.write_all(&b[1..]).await.is_err() {
                                            break;
                                        }
                                    }
                                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                                    Some(Ok(_)) => {}
                                },
                                n = tcp.read(&mut buf) => match n {
                                    Ok(0) | Err(_) => {
                                        let _ = socket.send(Message::Close(None)).await;
                                        break;
                                    }
                                    Ok(n) => {
                                        let mut out = vec![0u8];
                                        out.extend_from_slice(&buf[..n]);
                                        if socket.send(Message::Binary(out.into())).await.is_err() {
                                            break;
                                        }
                                    }
                                },
                            }
                        }
                    })
            }),
        )
        .fallback(|| async {
            (
                http::StatusCode::NOT_FOUND,
                axum::Json(
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), forwards)
}

/// The whole forward path of the real binary, as far as it can run without a kubelet: the host
/// apiserver is a fake that serves the pod portforward by bridging to a real kube-apiserver
/// (testenv); the tenant kubeconfig names an in-cluster server that does not resolve here.
/// `connect` port-forwards, stays in the foreground, kubectl works through the forwarded port
/// (TLS verified with tls-server-name), Ctrl-C exits 0. A real host apiserver and pod: e2e-kind.
#[tokio::test(flavor = "multi_thread")]
async fn connect_port_forwards_when_the_server_is_unreachable() {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::Ordering;
    let tenant = ControlPlane::start(Options::new("cli-fwd-tenant"))
        .await
        .unwrap();
    let marker: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-tenant"}}))
            .unwrap();
    Api::<Namespace>::all(tenant.client().unwrap())
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();
    let tenant_url: http::Uri = tenant.url().parse().unwrap();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", tenant_url.port_u16().unwrap())
        .parse()
        .unwrap();
    let mut tenant_kc = kube::config::Kubeconfig::read_from(tenant.kubeconfig_path()).unwrap();
    for c in &mut tenant_kc.clusters {
        c.cluster.as_mut().unwrap().server = Some("https://kubernetes.default.svc:443".into());
    }
    let (host_url, forwards) =
        fake_host_forwarding_to(upstream, serde_yaml::to_string(&tenant_kc).unwrap()).await;

    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster: {{server: {host_url}}}\n\
             users:\n- name: host\n  user: {{}}\ncontexts:\n- name: host\n  context: {{cluster: host, user: host}}\n\
             current-context: host\n"
        ),
    )
    .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["connect", "m1"])
        .env("KUBECONFIG", &kc)
        .env_remove("KVTENANT_CONTEXT")
        .env_remove("KVTENANT_LOCAL_PORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    loop {
        let line = lines_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("connect printed no Ctrl-C hint ({e}):\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("https://kubernetes.default.svc:443 is not reachable from here"),
        "{printed}"
    );
    assert!(printed.contains("pod vc-m1/m1-cp-0 port 6443"), "{printed}");
    assert!(printed.contains("\"kvtenant_m1_vc-m1\""), "{printed}");
    assert!(
        printed.contains("run `kvtenant disconnect` to switch back"),
        "{printed}"
    );
    let port: u16 = printed
        .split("Forwarding 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no forwarded port in:\n{printed}"));
    let cluster = cluster_of(&kc, "kvtenant_m1_vc-m1");
    assert_eq!(
        cluster.server.as_deref(),
        Some(format!("https://127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        cluster.tls_server_name.as_deref(),
        Some("kubernetes.default.svc")
    );

    // kubectl (current context: the virtual cluster) reaches the tenant through the forward,
    // verifying the serving certificate; each connection has its own port-forward
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(
        forwards.load(Ordering::SeqCst) >= 2,
        "one port-forward per connection"
    );

    // Ctrl-C: exit 0, the context stays, disconnect switches back
    child.interrupt();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "connect did not stop on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "Ctrl-C must exit 0");
    assert_eq!(
        kubectl(&kc, &["config", "current-context"]).trim(),
        "kvtenant_m1_vc-m1"
    );
    ok(kvtenant(&kc, &["disconnect"]));
    assert_eq!(kubectl(&kc, &["config", "current-context"]).trim(), "host");
}
