//! End-to-end scenarios written once against (host kubeconfig, tenant kubeconfig) and run two
//! ways: on testenv with KubeVirt's real control plane and simulated nodes (`tests/e2e_testenv.rs`,
//! every `cargo test`)
//! and on kind with real KubeVirt (`tests/e2e_kind.rs`, `e2e-kind/test.sh`). They drive the
//! real kubectl, as a tenant would. Scenario 15 (secondary networks) runs on testenv only: it is
//! skipped on kind, saying so, while kind has no Multus ([`Target::multus`]).
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

mod exports;
mod golden_images;
mod hotplug;
mod instancetypes;
mod migrations;
mod networks;
mod roles;
mod snapshots;
mod steps;
mod uploads;

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
    /// kvtenant's subresource proxy); without it the scenario patches the run strategy. The
    /// upload and export scenarios need it.
    pub virtctl: Option<PathBuf>,
    /// Where pod port-forwards end when the host's pods are simulated (testenv: kwok forwards
    /// every one to this local port, `kvtenant dev` prints it): the export scenario answers
    /// there as virt-exportserver would (**simulated**, `testenv::kubevirt::exporter`). `None`
    /// (kind): the host's real exporter pod answers.
    pub simulated_exporter_port: Option<u16>,
    /// Multus' NetworkAttachmentDefinition CRD for the secondary-network scenario (15): `Ok`, the
    /// CRD file it applies on the host (testenv: Multus' own, from its Go module; no Multus
    /// runs); `Err`, why that scenario is skipped (printed; kind: `e2e-kind/up.sh` installs no
    /// Multus).
    pub multus: Result<PathBuf, String>,
}

/// The default `spec.kubevirt.syncKinds` (kvtenant's `SyncKind::DEFAULT`).
const DEFAULT_KINDS: &[&str] = &[
    "VirtualMachine",
    "VirtualMachineInstance",
    "VirtualMachineInstanceMigration",
    "VirtualMachinePool",
    "VirtualMachineClone",
];

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
        self.host_namespace_of_a("vm", tenant_uid)
    }

    /// The host namespace holding the tenant object of `resource` with that uid.
    fn host_namespace_of_a(&self, resource: &str, tenant_uid: &str) -> Option<String> {
        let list = json(&self.host_kubeconfig, &["get", resource, "-A"])?;
        list["items"].as_array()?.iter().find_map(|o| {
            (o["metadata"]["annotations"]["tenancy.kvtenant.io/tenant-uid"] == tenant_uid)
                .then(|| o["metadata"]["namespace"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// The real virtctl against the tenant kubeconfig; `Ok`: its output.
    fn virtctl(&self, args: &[&str]) -> Result<String, String> {
        let virtctl = self
            .virtctl
            .as_ref()
            .expect("this scenario runs the real virtctl: set Target::virtctl (VIRTCTL on kind)");
        let out = Command::new(virtctl)
            .arg("--kubeconfig")
            .arg(&self.tenant_kubeconfig)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", virtctl.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// The (one) VirtualCluster on the host.
    fn virtual_cluster(&self) -> Value {
        let list = json(&self.host_kubeconfig, &["get", "virtualclusters", "-A"])
            .expect("the host's VirtualClusters");
        list["items"]
            .as_array()
            .and_then(|i| i.first())
            .expect("a VirtualCluster on the host")
            .clone()
    }

    /// Merge-patches the VirtualCluster's spec on the host (as its platform admin would).
    fn patch_vc_spec(&self, spec: &Value) {
        let vc = self.virtual_cluster();
        let patch = serde_json::json!({ "spec": spec });
        kubectl(
            &self.host_kubeconfig,
            &[
                "patch",
                "virtualcluster",
                vc["metadata"]["name"].as_str().unwrap_or_default(),
                "-n",
                vc["metadata"]["namespace"].as_str().unwrap_or_default(),
                "--type",
                "merge",
                "-p",
                &patch.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("patching the VirtualCluster's spec with {spec}: {e}"));
    }

    /// Adds `kinds` to the VirtualCluster's `spec.kubevirt.syncKinds` on the host (kinds only
    /// grow: later scenarios keep what earlier ones turned on).
    fn add_sync_kinds(&self, add: &[&str]) {
        let vc = self.virtual_cluster();
        let mut kinds: Vec<String> = vc["spec"]["kubevirt"]["syncKinds"]
            .as_array()
            .map(|k| {
                k.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| DEFAULT_KINDS.iter().map(|k| k.to_string()).collect());
        let missing: Vec<&str> = add
            .iter()
            .copied()
            .filter(|a| !kinds.iter().any(|k| k == a))
            .collect();
        if missing.is_empty() {
            return;
        }
        kinds.extend(missing.iter().map(|k| k.to_string()));
        self.patch_vc_spec(&serde_json::json!({"kubevirt": {"syncKinds": kinds}}));
    }

    /// Checks the tenant's `apply` of the object `name` in `default` (`applied`: kubectl's
    /// answer) was refused naming `field`: by kvtenant's admission webhook in the tenant (kubectl's
    /// error), or, where that let it pass, by the syncer's SyncRefused Event.
    fn refused_naming(&self, applied: Result<String, String>, name: &str, field: &str) {
        let Ok(_) = applied else {
            let refused = applied.unwrap_err();
            assert!(
                refused.contains(field),
                "the refusal names {field}: {refused}"
            );
            eprintln!("{name} refused at admission: {}", refused.trim());
            return;
        };
        self.wait_result(
            &format!("a SyncRefused Event for {name} naming {field}"),
            || {
                let events = json_result(
                    &self.tenant_kubeconfig,
                    &[
                        "get",
                        "events",
                        "-n",
                        "default",
                        "--field-selector",
                        &format!("involvedObject.name={name},reason=SyncRefused"),
                    ],
                )?;
                events["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["message"].as_str().is_some_and(|m| m.contains(field)))
                    .then_some(())
                    .ok_or_else(|| format!("events {}", events["items"]))
            },
        );
        eprintln!("{name} accepted by the tenant apiserver, refused by the syncer (SyncRefused)");
    }

    /// Waits until the tenant serves the CRD `name` (mirrored by the syncer).
    fn tenant_crd(&self, name: &str) {
        self.wait(&format!("the CRD {name} in the tenant"), || {
            kubectl(&self.tenant_kubeconfig, &["get", "crd", name]).ok()
        });
    }
}
