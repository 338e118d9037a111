//! `kubectl logs / exec / attach / port-forward / cp` in a virtual cluster, through kvtenant's
//! kubelet proxy: the tenant's Nodes advertise the proxy as their kubelet, the tenant apiserver
//! calls it with its kubelet client certificate, and kvtenant forwards to the host apiserver's
//! pod subresources. On the host, kwok plays the kubelet (simulated: logs and attach read a file,
//! exec runs the command as a local process, port-forward reaches a local port; no container
//! runs). A VM's virt-launcher pod is shown in the tenant read-only and its logs read there.
//! Real apiservers, real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Client;
use kube::api::Api;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};
use testenv::kubevirt::processes::cri_log_line;
use testenv::pki::CertKey;
use testenv::testing::{InterruptOnDrop, kubectl_output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(120);

/// kubectl that may fail, given `stdin`, killed after a minute: (success, stdout, stderr).
fn kubectl_try(kubeconfig: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    eprintln!("kubectl {args:?}");
    kubectl_output(kubeconfig, args, stdin, Duration::from_secs(60))
}

/// A long-running kubectl whose stdout lines arrive on a channel.
fn kubectl_stream(
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (InterruptOnDrop, mpsc::Receiver<String>) {
    eprintln!("kubectl {args:?} (streaming)");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (InterruptOnDrop(child), rx)
}

/// The first line containing `want` arriving within `wait`, or the lines seen instead.
fn next_line_with(
    rx: &mpsc::Receiver<String>,
    want: &str,
    wait: Duration,
) -> Result<String, Vec<String>> {
    let deadline = std::time::Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(want) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    Err(seen)
}

/// Waits for a line containing `want`; returns it.
fn line_with(rx: &mpsc::Receiver<String>, want: &str, what: &str) -> String {
    next_line_with(rx, want, Duration::from_secs(30))
        .unwrap_or_else(|seen| panic!("{what}: no line with {want:?}; got {seen:?}"))
}

/// A client straight to the kubelet proxy (not through an apiserver).
async fn direct_client(proxy: &Proxy, cert: Option<&CertKey>) -> Client {
    client_to(proxy.kubelet_addr().unwrap().port(), proxy.ca_pem(), cert).await
}

/// A raw GET or POST; (status, body text).
async fn call(client: &Client, method: &str, path: &str) -> (u16, String) {
    eprintln!("{method} {path}");
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let call = async {
        let res = client.send(req).await.unwrap();
        let code = res.status().as_u16();
        let body = res.into_body().collect_bytes().await.unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
}

async fn run_pod(t: &common::Tenant, name: &str) -> Pod {
    let sas: Api<ServiceAccount> = Api::namespaced(t.client(), "default");
    eventually("the tenant's default ServiceAccount", WAIT, || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
    kubectl(
        t.kubeconfig(),
        &["run", name, "--image=nginx", "--restart=Never"],
    );
    let pods: Api<Pod> = Api::namespaced(t.client(), "default");
    wait_for(
        &format!("tenant pod {name} Running and bound"),
        WAIT,
        || async {
            let p = pods.get_opt(name).await.ok().flatten()?;
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            (running && p.spec.as_ref()?.node_name.is_some()).then_some(p)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_exec_attach_port_forward_and_cp_reach_the_tenants_own_pods_only() {
    let env = Env::start_with_controllers(2).await;
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), ProxyConfig::local())
        .await
        .unwrap();
    let kubelet_port = proxy.kubelet_addr().unwrap().port();
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    for t in [t1, t2] {
        eventually("the kubelet proxy serves the tenant", WAIT, || async {
            proxy.serves_kubelet(&t.vc.uid)
        })
        .await;
    }
    let layout = env.kv.layout();
    let kc = t1.kubeconfig();
    let pod = run_pod(t1, "web").await;
    run_pod(t2, "secret-web").await;

    // the pod's tenant Node advertises the proxy, not the host node
    let node_name = pod.spec.unwrap().node_name.unwrap();
    let nodes: Api<Node> = Api::all(t1.client());
    wait_for(
        "the tenant Node advertises the kubelet proxy",
        WAIT,
        || async {
            let s = nodes.get_opt(&node_name).await.ok().flatten()?.status?;
            let port = s.daemon_endpoints?.kubelet_endpoint?.port;
            let addr = s.addresses?.first()?.address.clone();
            (port == i32::from(kubelet_port) && addr == "127.0.0.1").then_some(())
        },
    )
    .await;

    // logs, then logs -f: a line written after the start arrives
    let (ok, logs, err) = kubectl_try(kc, &["logs", "web"], "");
    assert!(ok, "{err}");
    assert!(logs.contains("simulated container log (kwok)"), "{logs}");
    let (_follow, lines) = kubectl_stream(kc, &["logs", "-f", "web"]);
    line_with(&lines, "simulated container log", "kubectl logs -f");
    std::fs::OpenOptions::new()
        .append(true)
        .open(layout.container_log())
        .unwrap()
        .write_all(cri_log_line("written while following").as_bytes())
        .unwrap();
    line_with(&lines, "written while following", "kubectl logs -f");

    // exec (kwok runs the command as a local process), with and without stdin
    let (ok, out, err) = kubectl_try(
        kc,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo exec-$KWOK_SIMULATED_EXEC",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "exec-1");
    // (`head -n1`, not `cat`: kwok's simulated exec does not pass the end of stdin on to the
    // local process; `kubectl exec -i` straight on the host hangs the same way)
    let (ok, out, err) = kubectl_try(
        kc,
        &["exec", "-i", "web", "--", "head", "-n1"],
        "piped through\n",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "piped through");

    // cp (tar over exec): a file of kwok's working directory
    let dest = tempfile_path("cp-out");
    let (ok, _, err) = kubectl_try(
        kc,
        &["cp", "web:kwok-debugging.yaml", dest.to_str().unwrap()],
        "",
    );
    assert!(ok, "{err}");
    let copied = std::fs::read_to_string(&dest).unwrap();
    assert!(copied.contains("kind: ClusterExec"), "{copied}");
    let _ = std::fs::remove_file(&dest);

    // attach
    // attach (kwok's simulated output: lines written to a file after the attach began)
    let (_attach, lines) = kubectl_stream(kc, &["attach", "web"]);
    let attached = (0..60).any(|i| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(layout.attach_log())
            .unwrap()
            .write_all(cri_log_line(&format!("attached output {i}")).as_bytes())
            .unwrap();
        next_line_with(&lines, "attached output", Duration::from_millis(500)).is_ok()
    });
    assert!(
        attached,
        "kubectl attach showed none of the container's output"
    );

    // port-forward: kwok forwards to a local port where this test answers
    let target = tokio::net::TcpListener::bind(("127.0.0.1", layout.port_forward_target))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = target.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&[b"echo:", &buf[..n]].concat()).await;
                }
            });
        }
    });
    let (_forward, lines) = kubectl_stream(kc, &["port-forward", "pod/web", ":80"]);
    let line = line_with(&lines, "Forwarding from 127.0.0.1:", "kubectl port-forward");
    let local: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {line:?}"));
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut got))
        .await
        .expect("an answer through the port-forward")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "echo:ping");

    // the tenant's RBAC decides: a user who may read logs but not exec
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "log-reader", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "log-reader", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "log-reader"},
        "subjects": [{"kind": "User", "name": "viewer", "apiGroup": "rbac.authorization.k8s.io"}]});
    for o in [&role, &binding] {
        let (ok, _, err) = kubectl_try(kc, &["apply", "-f", "-"], &o.to_string());
        assert!(ok, "{err}");
    }
    let viewer = t1.cp.user_kubeconfig("viewer", &[]).unwrap();
    let (ok, out, err) = kubectl_try(&viewer, &["logs", "web"], "");
    assert!(ok && out.contains("simulated container log"), "{err}");
    let (ok, _, err) = kubectl_try(&viewer, &["exec", "web", "--", "true"], "");
    assert!(!ok && err.contains("forbidden"), "{err}");

    // straight to the kubelet proxy
    let own = t1.cp.pki().kubelet_client.clone();
    let logs_path = "/containerLogs/default/web/web";
    let c = direct_client(&proxy, Some(&own)).await;
    let (code, body) = call(&c, "GET", logs_path).await;
    assert_eq!(
        code, 200,
        "the tenant apiserver's kubelet certificate: {body}"
    );
    assert!(body.contains("simulated container log"), "{body}");
    // another tenant's pod, by its name or by its host namespace: not found, nothing leaked
    for path in [
        "/containerLogs/default/secret-web/secret-web".to_string(),
        format!(
            "/containerLogs/{}/secret-web/secret-web",
            t2.host_ns("default")
        ),
    ] {
        let (code, body) = call(&c, "GET", &path).await;
        assert!(code == 404 || code == 400, "{path}: {code} {body}");
        assert!(!body.contains(&t1.host_ns("default")), "{body}");
    }
    for (method, path, want) in [
        ("POST", "/run/default/web/web?cmd=id", 403),
        ("GET", "/pods", 403),
        ("GET", "/stats/summary", 403),
        ("GET", "/containerLogs/default/..%2f..%2fweb/web", 400),
        ("POST", "/exec/default/web/web?command=id&output=1", 400),
    ] {
        let (code, body) = call(&c, method, path).await;
        assert_eq!(code, want, "{method} {path}: {body}");
    }
    let admin = t1
        .cp
        .pki()
        .ca
        .issue_client("kubernetes-admin", &["system:masters"])
        .unwrap();
    for (what, cert) in [
        ("no certificate", None),
        ("the tenant's admin certificate", Some(&admin)),
        (
            "the tenant's front-proxy certificate",
            Some(&t1.cp.pki().front_proxy_client),
        ),
        (
            "the host's kubelet certificate",
            Some(&env.host.pki().kubelet_client),
        ),
    ] {
        let client = direct_client(&proxy, cert).await;
        let (code, body) = call(&client, "GET", logs_path).await;
        assert_eq!(code, 401, "{what}: {body}");
    }
    // a VM's virt-launcher pod is shown in the tenant, read-only, and its logs read there
    let vms =
        Api::<kube::api::DynamicObject>::namespaced_with(t1.client(), "default", &vm_resource());
    vms.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(vm_manifest("vm1", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let tenant_pods: Api<Pod> = Api::namespaced(t1.client(), "default");
    let deadline = std::time::Instant::now() + WAIT;
    let launcher = loop {
        let list = tenant_pods
            .list(&kube::api::ListParams::default().labels("kubevirt.io=virt-launcher"))
            .await
            .unwrap();
        let shown = list.items.into_iter().find(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        });
        if let Some(p) = shown {
            break p;
        }
        if std::time::Instant::now() > deadline {
            let host_kc = env.host.kubeconfig_path();
            panic!(
                "no Running virt-launcher pod in the tenant after {WAIT:?}\nhost:\n{}\ntenant:\n{}",
                kubectl(host_kc, &["get", "pods,vmi", "-A", "--show-labels"]),
                kubectl(kc, &["get", "pods,vmi", "-A", "-o", "wide"])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let launcher_name = launcher.metadata.name.clone().unwrap();
    let owner = &launcher.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "VirtualMachineInstance");
    assert_eq!(owner.name, "vm1");
    let (ok, out, err) = kubectl_try(kc, &["logs", &launcher_name, "-c", "compute"], "");
    assert!(ok && out.contains("simulated container log"), "{err}");
    // read-only: a label the tenant adds is taken away again
    kubectl(kc, &["label", "pod", &launcher_name, "mine=yes"]);
    eventually(
        "the tenant's edit of the launcher mirror reverted",
        WAIT,
        || async {
            tenant_pods
                .get_opt(&launcher_name)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| !p.metadata.labels.unwrap_or_default().contains_key("mine"))
        },
    )
    .await;
    // the VM stops: its launcher pod goes from the tenant too
    kubectl(
        kc,
        &[
            "patch",
            "vm",
            "vm1",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Halted"}}"#,
        ],
    );
    eventually(
        "the launcher mirror gone after the VM stopped",
        WAIT,
        || async { matches!(tenant_pods.get_opt(&launcher_name).await, Ok(None)) },
    )
    .await;

    let v: Value = serde_json::from_str(
        &call(&direct_client(&proxy, None).await, "GET", logs_path)
            .await
            .1,
    )
    .unwrap();
    assert_eq!(v["kind"], "Status");
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kvtenant-kubelet-{}-{name}", std::process::id()))
}

/// A tenant admin may add any CA to their own `extension-apiserver-authentication` (the
/// apiserver keeps what is added). Adding another tenant's CAs there made that tenant's
/// certificates acceptable to two tenants, so its `kubectl logs` was refused. With the CAs
/// pinned in the victim's kubeconfig Secret (kvtenant writes them for Managed control planes)
/// the victim's calls are its own again, whatever the other publishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_publishing_another_tenants_cas_cannot_take_its_kubectl_logs_away() {
    let env = Env::start_with_controllers(2).await;
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), ProxyConfig::local())
        .await
        .unwrap();
    let (attacker, victim) = (&env.tenants[0], &env.tenants[1]);
    for t in [attacker, victim] {
        eventually("the kubelet proxy serves the tenant", WAIT, || async {
            proxy.serves_kubelet(&t.vc.uid)
        })
        .await;
    }
    run_pod(victim, "web").await;
    let logs_ok = || {
        let (ok, out, err) = kubectl_try(victim.kubeconfig(), &["logs", "web"], "");
        (ok && out.contains("simulated container log"))
            .then_some(())
            .ok_or(err)
    };
    wait_for("the victim's kubectl logs", WAIT, || async {
        logs_ok().ok()
    })
    .await;

    // the attacker publishes the victim's CAs next to its own
    let victim_pki = victim.cp.pki();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(attacker.client(), "kube-system");
    let cm = cms.get("extension-apiserver-authentication").await.unwrap();
    let mut data = cm.data.unwrap();
    for (key, pem) in [
        ("client-ca-file", victim_pki.ca.cert_pem()),
        (
            "requestheader-client-ca-file",
            victim_pki.front_proxy_ca.cert_pem(),
        ),
    ] {
        let own = data.get(key).cloned().unwrap_or_default();
        data.insert(key.to_owned(), format!("{own}\n{pem}"));
    }
    cms.patch(
        "extension-apiserver-authentication",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"data": data})),
    )
    .await
    .unwrap();
    wait_for(
        "the victim's logs refused (its CAs published twice)",
        WAIT,
        || async { logs_ok().err() },
    )
    .await;

    // the host pins the victim's CAs (as for a Managed control plane): its calls are its own
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.host_client(), common::VC_NAMESPACE);
    secrets
        .patch(
            &format!("{}-kubeconfig", victim.vc.name),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"stringData": {
                kvtenant_api::labels::FRONT_PROXY_CA_KEY: victim_pki.front_proxy_ca.cert_pem(),
                kvtenant_api::labels::CLIENT_CA_KEY: victim_pki.ca.cert_pem(),
            }})),
        )
        .await
        .unwrap();
    wait_for("the victim's kubectl logs again", WAIT, || async {
        logs_ok().ok()
    })
    .await;
    // and the attacker's own calls still work
    run_pod(attacker, "own").await;
    let (ok, _, err) = kubectl_try(attacker.kubeconfig(), &["logs", "own"], "");
    assert!(ok, "{err}");
}
