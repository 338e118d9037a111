//! End-to-end scenarios written once against (host kubeconfig, tenant kubeconfig) and run two
//! ways: on testenv with KubeVirt's real control plane and simulated nodes (`tests/e2e_testenv.rs`,
//! every `cargo test`)
//! and on kind with real KubeVirt (`tests/e2e_kind.rs`, `e2e-kind/test.sh`). They drive the
//! real kubectl, as a tenant would.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http::header;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// KubeVirt's subresource API, as virtctl calls it.
const SUB: &str = "/apis/subresources.kubevirt.io/v1/namespaces/default";

/// Where a scenario runs.
pub struct Target {
    pub host_kubeconfig: PathBuf,
    pub tenant_kubeconfig: PathBuf,
    /// Bound on each wait: seconds on testenv (nothing boots), minutes with real VMs booting.
    pub timeout: Duration,
    /// Whether VMs run in pods, so host Services get endpoints: real pods on kind, kwok's
    /// simulated virt-launcher pods (Ready, with an IP) on testenv.
    pub vm_pods: bool,
    /// The real virtctl, for stop/start as a tenant runs them (through the tenant apiserver and
    /// kvtenant's subresource proxy); without it the scenario patches the run strategy.
    pub virtctl: Option<PathBuf>,
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// kubectl with `input` on stdin (for `-f -`).
fn kubectl_input(kubeconfig: &Path, args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to kubectl: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// As [`json`], with kubectl's error.
fn json_result(kubeconfig: &Path, args: &[&str]) -> Result<Value, String> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl(kubeconfig, &all)?;
    serde_json::from_str(&out).map_err(|e| format!("kubectl {args:?}: {e}"))
}

fn json(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(kubeconfig, &all).ok()?).ok()
}

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A small runtime for the scenarios that need async clients (websockets).
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A kube client from a kubeconfig, impersonating `user` when given (the kubeconfig's user must
/// be allowed to impersonate: the tenant admin is).
async fn client(kubeconfig: &Path, user: Option<&str>) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("a client config from the kubeconfig");
    config.auth_info.impersonate = user.map(str::to_string);
    kube::Client::try_from(config).expect("a kube client")
}

/// Opens a websocket through `client` as virtctl does (subprotocol `plain.kubevirt.io`). kube's
/// `Client::connect` is not used: it insists on the `channel.k8s.io` protocols of exec/attach,
/// which virt-api does not speak. `Err`: the apiserver's answer when it did not upgrade.
async fn websocket(client: &kube::Client, path: &str) -> Result<Ws, String> {
    let key = generate_key();
    let req = http::Request::get(path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, "plain.kubevirt.io")
        .body(kube::client::Body::empty())
        .expect("a request");
    let mut res = client
        .send(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let body = res.into_body().collect_bytes().await.unwrap_or_default();
        // a Status object's message, as kubectl shows it
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{status}: {message}"));
    }
    assert_eq!(
        res.headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .and_then(|v| v.to_str().ok()),
        Some(derive_accept_key(key.as_bytes()).as_str()),
        "the websocket accept key of {path}"
    );
    assert_eq!(
        res.headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok()),
        Some("plain.kubevirt.io"),
        "the websocket subprotocol of {path}"
    );
    let upgraded = hyper::upgrade::on(&mut res)
        .await
        .map_err(|e| format!("upgrading {path}: {e}"))?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// One try at the console: sends "\r\n" and reads what comes back for a moment. `Ok`: the bytes
/// received; `Err`: why not (the console is reopened on the next try when it closed).
async fn poke_console(console: &mut Option<Ws>, client: &kube::Client) -> Result<Vec<u8>, String> {
    let path = format!("{SUB}/virtualmachineinstances/vm1/console");
    if console.is_none() {
        *console = Some(websocket(client, &path).await?);
    }
    let ws = console.as_mut().expect("an open console");
    if let Err(e) = ws.send(Message::Binary(b"\r\n".to_vec().into())).await {
        *console = None;
        return Err(format!("sending to the console: {e}"));
    }
    // a read window per try, not a deadline: the caller retries until Target::timeout
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("the console sent nothing yet".into()),
            Ok(Some(Ok(Message::Binary(b)))) if !b.is_empty() => return Ok(b.to_vec()),
            Ok(Some(Ok(Message::Text(t)))) if !t.is_empty() => {
                return Ok(t.as_bytes().to_vec());
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                *console = None;
                return Err(format!("the console closed: {frame:?}"));
            }
            Ok(Some(Err(e))) => {
                *console = None;
                return Err(format!("reading the console: {e}"));
            }
            Ok(None) => {
                *console = None;
                return Err("the console ended".into());
            }
            Ok(Some(Ok(_))) => {} // ping, pong, empty frames
        }
    }
}

impl Target {
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        self.wait_result(what, || f().ok_or_else(String::new))
    }

    /// As [`Target::wait`]; on timeout the message also says what the last try saw.
    fn wait_result<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {:?} waiting for {what}{}",
                self.timeout,
                if last.is_empty() {
                    String::new()
                } else {
                    format!("; last try: {last}")
                }
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn tenant_vmi_running(&self, name: &str) -> Value {
        self.wait(&format!("the tenant VMI {name} Running"), || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", name, "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(v)
        })
    }

    fn tenant_uid(&self, resource: &str, name: &str) -> String {
        let o = json(
            &self.tenant_kubeconfig,
            &["get", resource, name, "-n", "default"],
        )
        .unwrap_or_else(|| panic!("the tenant {resource} {name}"));
        o["metadata"]["uid"].as_str().expect("a uid").to_string()
    }

    /// Waits until bytes come back from vm1's serial console opened through the tenant
    /// apiserver as `user` (None: the tenant admin); returns them.
    fn console_answers_as(&self, rt: &Runtime, user: Option<&str>) -> Vec<u8> {
        let client = rt.block_on(client(&self.tenant_kubeconfig, user));
        let mut console = None;
        let who = user.unwrap_or("the tenant admin");
        let bytes = self.wait_result(
            &format!(
                "an answer from vm1's serial console (through the tenant apiserver, as {who})"
            ),
            || rt.block_on(poke_console(&mut console, &client)),
        );
        eprintln!(
            "vm1's console answered {who}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes
    }

    /// A VM subresource call (`PUT .../virtualmachines/vm1/ACTION`) as `user`, through the
    /// tenant apiserver, with kubectl.
    fn vm_action_as(&self, user: &str, action: &str) -> Result<String, String> {
        kubectl_input(
            &self.tenant_kubeconfig,
            &[
                &format!("--as={user}"),
                "replace",
                "--raw",
                &format!("{SUB}/virtualmachines/vm1/{action}"),
                "-f",
                "-",
            ],
            "{}",
        )
    }

    fn tenant(&self, args: &[&str]) -> String {
        kubectl(&self.tenant_kubeconfig, args)
            .unwrap_or_else(|e| panic!("tenant kubectl {args:?}: {e}"))
    }

    /// The host namespace holding a tenant VM, found by kvtenant's identity annotation.
    fn host_namespace_of(&self, tenant_uid: &str) -> Option<String> {
        let list = json(&self.host_kubeconfig, &["get", "vm", "-A"])?;
        list["items"].as_array()?.iter().find_map(|vm| {
            (vm["metadata"]["annotations"]["tenancy.kvtenant.io/tenant-uid"] == tenant_uid)
                .then(|| vm["metadata"]["namespace"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// 1. VM boots: the sample VM's instance is Running in the tenant with a node and an IP,
    ///    and the VM runs on the host in its mapped namespace.
    pub fn vm_boots(&self) {
        self.tenant(&["apply", "-f", &sample("vm-cloudinit.yaml")]);
        let vmi = self.wait("the tenant VMI Running", || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", "vm1", "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(v)
        });
        assert!(
            vmi["status"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{vmi}"
        );
        assert!(
            vmi["status"]["interfaces"][0]["ipAddress"].is_string(),
            "{vmi}"
        );
        let vm = json(
            &self.tenant_kubeconfig,
            &["get", "vm", "vm1", "-n", "default"],
        )
        .expect("the tenant VM");
        let uid = vm["metadata"]["uid"].as_str().expect("a uid").to_string();
        let host_ns = self.wait("the VM on the host", || self.host_namespace_of(&uid));
        assert_ne!(
            host_ns, "default",
            "the host copy must be in a mapped namespace"
        );
        let host_vmi = json(
            &self.host_kubeconfig,
            &["get", "vmi", "vm1", "-n", &host_ns],
        )
        .expect("the host VMI");
        assert_eq!(host_vmi["status"]["phase"], "Running");
    }

    /// 2. Console answers: vm1's serial console, opened as a websocket (`plain.kubevirt.io`, as
    ///    virtctl does) through the tenant apiserver and kvtenant's proxy, sends bytes back after
    ///    "\r\n" (a booted guest: its login prompt or boot output; testenv's simulated
    ///    virt-handler: the echo).
    pub fn console_answers(&self) {
        self.tenant_vmi_running("vm1");
        let rt = runtime();
        self.console_answers_as(&rt, None);
    }

    /// Stops or starts vm1 as a tenant does: `virtctl stop|start` when the real virtctl is at
    /// hand, else a patch of its run strategy.
    fn stop_or_start(&self, verb: &str) {
        if let Some(virtctl) = &self.virtctl {
            let out = Command::new(virtctl)
                .arg("--kubeconfig")
                .arg(&self.tenant_kubeconfig)
                .args([verb, "vm1", "-n", "default"])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", virtctl.display()));
            assert!(
                out.status.success(),
                "virtctl {verb} vm1: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let strategy = if verb == "stop" { "Halted" } else { "Always" };
        self.tenant(&[
            "patch",
            "vm",
            "vm1",
            "-n",
            "default",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"runStrategy":"{strategy}"}}}}"#),
        ]);
    }

    /// 3. Stop/start: the tenant halts the VM (`virtctl stop`) and its instance goes away;
    ///    starts it (`virtctl start`) and the instance comes back Running.
    pub fn stop_start(&self) {
        self.stop_or_start("stop");
        self.wait("the tenant VMI gone after stop", || {
            kubectl(
                &self.tenant_kubeconfig,
                &["get", "vmi", "-n", "default", "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains("vm1"))
        });
        self.stop_or_start("start");
        self.wait("the tenant VMI Running after start", || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", "vm1", "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(())
        });
    }

    /// 4. DataVolume: the VM of `samples/vm-datavolume.yaml` runs in the tenant; the DataVolume
    ///    made from its dataVolumeTemplate (by CDI on the host) shows in the tenant as a
    ///    read-only mirror owned by the tenant VM, with phase Succeeded; on the host it lives in
    ///    the VM's mapped namespace.
    pub fn datavolume(&self) {
        const DV: &str = "datavolumes.cdi.kubevirt.io";
        self.tenant(&["apply", "-f", &sample("vm-datavolume.yaml")]);
        let vm_uid = self.wait("the tenant VM vm-dv", || {
            json(
                &self.tenant_kubeconfig,
                &["get", "vm", "vm-dv", "-n", "default"],
            )?["metadata"]["uid"]
                .as_str()
                .map(str::to_string)
        });
        let tenant_dv = self.wait_result("the tenant DataVolume vm-dv-rootdisk Succeeded", || {
            let dv = json_result(
                &self.tenant_kubeconfig,
                &["get", DV, "vm-dv-rootdisk", "-n", "default"],
            )?;
            if dv["status"]["phase"] == "Succeeded" {
                Ok(dv)
            } else {
                Err(format!("phase {}", dv["status"]["phase"]))
            }
        });
        let owners = tenant_dv["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|o| o["kind"] == "VirtualMachine" && o["uid"] == vm_uid.as_str()),
            "the tenant DataVolume is owned by the tenant VM vm-dv ({vm_uid}): {tenant_dv}"
        );
        self.tenant_vmi_running("vm-dv");

        let host_ns = self.wait("the VM vm-dv on the host", || {
            self.host_namespace_of(&vm_uid)
        });
        assert_ne!(host_ns, "default");
        self.wait_result("the host DataVolume Succeeded", || {
            let dv = json_result(
                &self.host_kubeconfig,
                &["get", DV, "vm-dv-rootdisk", "-n", &host_ns],
            )?;
            if dv["status"]["phase"] == "Succeeded" {
                Ok(())
            } else {
                Err(format!("phase {}", dv["status"]["phase"]))
            }
        });

        // read-only: a tenant edit of the mirror is reverted
        self.tenant(&[
            "label",
            DV,
            "vm-dv-rootdisk",
            "-n",
            "default",
            "e2e.kvtenant.io/edited=yes",
        ]);
        self.wait(
            "the tenant's edit of the DataVolume mirror reverted",
            || {
                let dv = json(
                    &self.tenant_kubeconfig,
                    &["get", DV, "vm-dv-rootdisk", "-n", "default"],
                )?;
                dv["metadata"]["labels"]["e2e.kvtenant.io/edited"]
                    .is_null()
                    .then_some(())
            },
        );

        // the claim CDI made for it is mirrored too (read-only, like the DataVolume)
        self.wait("the DataVolume's claim mirrored into the tenant", || {
            let pvc = json(
                &self.tenant_kubeconfig,
                &["get", "pvc", "vm-dv-rootdisk", "-n", "default"],
            )?;
            pvc["metadata"]["annotations"]["tenancy.kvtenant.io/mirror-of-uid"]
                .is_string()
                .then_some(())
        });
    }

    /// 5. Service: the tenant's `samples/service-vm.yaml` reaches the host in vm1's mapped
    ///    namespace with the same selector and ports (with real VM pods, with endpoints); the
    ///    tenant deletes it and the host copy goes away.
    pub fn service(&self) {
        self.tenant(&["apply", "-f", &sample("service-vm.yaml")]);
        let uid = self.tenant_uid("vm", "vm1");
        let host_ns = self.wait("vm1 on the host", || self.host_namespace_of(&uid));
        let host_svc = self.wait("the Service vm1-ssh on the host", || {
            json(
                &self.host_kubeconfig,
                &["get", "service", "vm1-ssh", "-n", &host_ns],
            )
        });
        // the tenant Service is created again once with the host's cluster IP (README): read
        // it once it shows that address (a read right after the apply can fall between its
        // delete and its create)
        let tenant_svc = self.wait("the tenant Service with the host's cluster IP", || {
            json(
                &self.tenant_kubeconfig,
                &["get", "service", "vm1-ssh", "-n", "default"],
            )
            .filter(|svc| svc["spec"]["clusterIP"] == host_svc["spec"]["clusterIP"])
        });
        assert_eq!(
            host_svc["spec"]["selector"],
            serde_json::json!({"kubevirt.io/domain": "vm1"}),
            "{host_svc}"
        );
        assert_eq!(
            tenant_svc["spec"]["selector"], host_svc["spec"]["selector"],
            "{host_svc}"
        );
        // the ports as the tenant wrote them (the host adds nothing but defaults)
        let ports = |svc: &Value| -> Vec<Value> {
            svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    serde_json::json!({
                        "name": p["name"], "port": p["port"],
                        "targetPort": p["targetPort"], "protocol": p["protocol"],
                    })
                })
                .collect()
        };
        assert_eq!(
            ports(&host_svc),
            vec![
                serde_json::json!({"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"})
            ],
            "{host_svc}"
        );
        assert_eq!(ports(&tenant_svc), ports(&host_svc), "{host_svc}");
        if self.vm_pods {
            self.wait("a ready endpoint of the host Service (vm1's pod)", || {
                let slices = json(
                    &self.host_kubeconfig,
                    &[
                        "get",
                        "endpointslices",
                        "-n",
                        &host_ns,
                        "-l",
                        "kubernetes.io/service-name=vm1-ssh",
                    ],
                )?;
                slices["items"]
                    .as_array()?
                    .iter()
                    .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                    .any(|e| e["conditions"]["ready"] == true)
                    .then_some(())
            });
        }
        self.tenant(&["delete", "-f", &sample("service-vm.yaml")]);
        self.wait("the host Service gone after the tenant deleted it", || {
            kubectl(
                &self.host_kubeconfig,
                &["get", "service", "-n", &host_ns, "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains("service/vm1-ssh"))
        });
    }

    /// 6. RBAC: with `samples/rbac-console.yaml`, user alice stops and starts vm1 through the
    ///    `stop`/`start` subresources and opens its console, but may not migrate it; a user
    ///    without the binding gets 403 Forbidden naming the tenant user and namespace (never a
    ///    host namespace), and the refused call changes nothing.
    pub fn rbac(&self) {
        self.tenant(&["apply", "-f", &sample("rbac-console.yaml")]);
        let uid = self.tenant_uid("vm", "vm1");
        let host_ns = self.wait("vm1 on the host", || self.host_namespace_of(&uid));
        self.tenant_vmi_running("vm1");

        // alice: stop (retried until the new RoleBinding is in effect)
        self.wait_result("alice's stop of vm1 accepted", || {
            self.vm_action_as("alice", "stop")
        });
        self.wait_result(
            "vm1 Halted and its instance gone after alice's stop",
            || {
                let vm = json_result(
                    &self.tenant_kubeconfig,
                    &["get", "vm", "vm1", "-n", "default"],
                )?;
                let vmis = kubectl(
                    &self.tenant_kubeconfig,
                    &["get", "vmi", "-n", "default", "-o", "name"],
                )?;
                if vm["spec"]["runStrategy"] == "Halted" && !vmis.contains("/vm1\n") {
                    Ok(())
                } else {
                    Err(format!(
                        "runStrategy {}, VMIs {vmis:?}",
                        vm["spec"]["runStrategy"]
                    ))
                }
            },
        );
        self.vm_action_as("alice", "start")
            .unwrap_or_else(|e| panic!("alice's start of vm1: {e}"));
        self.tenant_vmi_running("vm1");
        let vm = json(
            &self.tenant_kubeconfig,
            &["get", "vm", "vm1", "-n", "default"],
        )
        .expect("the tenant VM");
        assert_ne!(vm["spec"]["runStrategy"], "Halted", "{vm}");

        // alice: console yes, migrate no
        let rt = runtime();
        self.console_answers_as(&rt, Some("alice"));
        let err = self
            .vm_action_as("alice", "migrate")
            .expect_err("alice may not migrate vm1");
        assert!(err.contains("Forbidden"), "{err}");
        assert!(err.contains(r#"User "alice""#), "{err}");

        // mallory (no binding): refused, in the tenant's terms, with no effect
        let err = self
            .vm_action_as("mallory", "stop")
            .expect_err("mallory may not stop vm1");
        assert!(err.contains("Forbidden"), "{err}");
        assert!(err.contains(r#"User "mallory""#), "{err}");
        assert!(err.contains(r#"namespace "default""#), "{err}");
        assert!(!err.contains(&host_ns), "names a host namespace: {err}");
        let host_vm = json(&self.host_kubeconfig, &["get", "vm", "vm1", "-n", &host_ns])
            .expect("the host VM");
        assert_ne!(
            host_vm["spec"]["runStrategy"], "Halted",
            "mallory's refused stop changed the host VM: {host_vm}"
        );
        let mallory = rt.block_on(client(&self.tenant_kubeconfig, Some("mallory")));
        let refused = rt
            .block_on(websocket(
                &mallory,
                &format!("{SUB}/virtualmachineinstances/vm1/console"),
            ))
            .map(|_| ())
            .expect_err("mallory may not open vm1's console");
        assert!(refused.starts_with("403"), "{refused}");
        assert!(refused.contains(r#"User "mallory""#), "{refused}");
        assert!(
            !refused.contains(&host_ns),
            "names a host namespace: {refused}"
        );
    }

    /// Removes what the scenarios created.
    pub fn cleanup(&self) {
        for file in [
            "rbac-console.yaml",
            "service-vm.yaml",
            "vm-datavolume.yaml",
            "vm-cloudinit.yaml",
        ] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    "-f",
                    &sample(file),
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
    }
}
