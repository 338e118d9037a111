//! Pure builders of a Managed control plane's host objects: the `<vc>-pki` and `<vc>-kubeconfig`
//! Secrets, the Services and the StatefulSet. No I/O; unit-tested below and booted for real by
//! the `managed` integration test.
//!
//! One pod runs the datastore (etcd, or kine over SQLite), kube-apiserver and
//! kube-controller-manager. They talk over the pod's loopback interface: etcd listens on
//! 127.0.0.1 only, so it needs no TLS. kube-apiserver serves on 0.0.0.0:6443 behind the
//! `<vc>-apiserver` Service (port 443).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ResourceRequirements, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_api::{Datastore, ExposeType, VirtualCluster};
use serde_json::json;

use super::pki::{self, Pki};

/// kube-apiserver's port in the pod.
pub const APISERVER_PORT: u16 = kvtenant_api::labels::CONTROL_PLANE_APISERVER_PORT;
/// The `<vc>-apiserver` Service's port.
pub const SERVICE_PORT: u16 = 443;
/// etcd (or kine) client port, on the pod's loopback.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd peer port, on the pod's loopback.
pub const ETCD_PEER_PORT: u16 = 2380;
/// etcd health/metrics port (for the kubelet's probes).
pub const ETCD_METRICS_PORT: u16 = 2381;
/// kube-controller-manager's secure port (health checks).
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;

/// Where the apiserver's certificates are mounted.
pub const APISERVER_PKI_DIR: &str = "/etc/kubernetes/pki";
/// Where the controller-manager's kubeconfig, CA and service-account key are mounted.
pub const CONTROLLER_MANAGER_DIR: &str = "/etc/kubernetes/controller-manager";
/// A writable scratch directory for the controller-manager's self-signed serving certificate.
pub const CONTROLLER_MANAGER_CERT_DIR: &str = "/run/kube-controller-manager";
/// Where the datastore volume is mounted.
pub const DATA_DIR: &str = "/var/lib/kvtenant";
/// kine's SQLite database, at the root of [`DATA_DIR`].
pub const KINE_DATABASE: &str = "kine.db";
/// The tenant's Service IP range (only meaningful inside the virtual cluster).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The first address of [`SERVICE_CIDR`]: the tenant's `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The service-account token issuer of every tenant.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Key of the tenant kubeconfig in the `<vc>-kubeconfig` Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Pod template annotation: hash of the PKI Secret, so new certificates roll the pod.
pub use kvtenant_api::labels::PKI_HASH;
/// Annotation on each applied object: hash of what kvtenant last applied (skips no-op applies).
pub use kvtenant_kubeutil::apply::APPLIED_HASH;
/// UID/GID the control-plane containers run as.
pub const RUN_AS: i64 = 65532;

/// Names of a VirtualCluster's host objects. VirtualCluster names are at most 40 characters, so
/// every name here stays under the 52 characters a StatefulSet name may have (its pods get a
/// `controller-revision-hash` label of `<name>-<10 chars>`, at most 63).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet, and its headless governing Service.
    pub statefulset: String,
    /// The Service tenants reach the apiserver through.
    pub service: String,
    /// Secret with the PKI and the controller-manager kubeconfig.
    pub pki_secret: String,
    /// Secret with the tenant admin kubeconfig (key `kubeconfig`).
    pub kubeconfig_secret: String,
}

impl Names {
    pub fn new(vc_name: &str) -> Self {
        Self {
            statefulset: format!("{vc_name}-cp"),
            service: format!("{vc_name}-apiserver"),
            pki_secret: format!("{vc_name}-pki"),
            kubeconfig_secret: format!("{vc_name}-kubeconfig"),
        }
    }
}

/// Everything the builders need about the VirtualCluster.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub vc: &'a VirtualCluster,
    pub vcref: VirtualClusterRef,
    pub names: Names,
    pub owner: OwnerReference,
    /// Datastore ExternalDatabase: whether its TLS Secret carries a client certificate (read
    /// off the Secret by the reconciler; the pod is given the files it has).
    pub database_client_cert: bool,
    /// The CA of kvtenant's kubelet proxy (PEM), read off its Secret by the reconciler: the
    /// apiserver verifies the kubelet proxy's serving certificate against it.
    pub kubelet_ca: Option<String>,
    /// Where the etcd stands (read off the StatefulSet by the reconciler; a new control plane
    /// by default).
    pub etcd: EtcdState,
}

impl<'a> Target<'a> {
    /// `None` when the VirtualCluster lacks a namespace, name or uid.
    pub fn new(vc: &'a VirtualCluster) -> Option<Self> {
        let vcref = VirtualClusterRef::from_virtualcluster(vc)?;
        let owner = vc.controller_owner_ref(&())?;
        Some(Self {
            names: Names::new(&vcref.name),
            vcref,
            owner,
            vc,
            database_client_cert: false,
            kubelet_ca: None,
            etcd: EtcdState::default(),
        })
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.vcref.namespace.clone()),
            labels: Some(self.vcref.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Labels of the control-plane pod (and the Services' selector). The VirtualCluster labels
    /// are kept off pods on purpose (see `kvtenant_api::labels`).
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                kvtenant_api::labels::CONTROL_PLANE_APP.to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.vcref.name.clone(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                kvtenant_api::MANAGER.to_owned(),
            ),
        ])
    }

    /// In-cluster DNS name of the apiserver Service.
    pub fn service_host(&self) -> String {
        format!("{}.{}.svc", self.names.service, self.vcref.namespace)
    }
}

/// Names and addresses the serving certificate covers: the Service's DNS names, the tenant's
/// own `kubernetes` Service, localhost/127.0.0.1, `spec.expose.extraSANs`, and the Service's
/// cluster IP and load-balancer addresses once known.
pub fn apiserver_sans(t: &Target<'_>, service: Option<&Service>) -> Vec<String> {
    let svc = &t.names.service;
    let ns = &t.vcref.namespace;
    let mut sans = vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        KUBERNETES_SERVICE_IP.to_owned(),
    ];
    sans.extend(t.vc.spec.expose.extra_sans.iter().cloned());
    sans.extend(t.vc.spec.expose.ingress.iter().map(|i| i.host.clone()));
    if let Some(service) = service {
        if let Some(ip) = service.spec.as_ref().and_then(|s| s.cluster_ip.clone())
            && ip != "None"
            && !ip.is_empty()
        {
            sans.push(ip);
        }
        sans.extend(load_balancer_addresses(service));
    }
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn load_balancer_addresses(service: &Service) -> Vec<String> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The URL written into the tenant kubeconfig: the first `spec.expose.extraSANs` entry (on the
/// node port for NodePort), else the load balancer's address, else the Service's in-cluster
/// DNS name.
pub fn endpoint(t: &Target<'_>, service: Option<&Service>) -> String {
    let expose = &t.vc.spec.expose;
    let node_port = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.node_port);
    let host_port = |host: &str, port: u16| {
        if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        }
    };
    if let Some(first) = expose.extra_sans.first() {
        return match (expose.type_, node_port) {
            (ExposeType::NodePort, Some(p)) => host_port(first, p as u16),
            _ => host_port(first, SERVICE_PORT),
        };
    }
    if let Some(ingress) = &expose.ingress {
        return host_port(&ingress.host, SERVICE_PORT);
    }
    if expose.type_ == ExposeType::LoadBalancer
        && let Some(addr) = service.and_then(|s| load_balancer_addresses(s).into_iter().next())
    {
        return host_port(&addr, SERVICE_PORT);
    }
    host_port(&t.service_host(), SERVICE_PORT)
}

fn to_bytes(m: BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    m.into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

/// The `<vc>-pki` Secret: every certificate and key, plus the controller-manager kubeconfig
/// (pointing at the apiserver on the pod's loopback) and the apiserver's admission configuration
/// with its webhook kubeconfig ([`admission_files`]).
pub fn pki_secret(t: &Target<'_>, pki: &Pki) -> Secret {
    let mut entries = pki.secret_entries();
    entries.extend(admission_files(pki));
    if let Some(ca) = &t.kubelet_ca {
        entries.insert(pki::keys::KUBELET_CA_CRT.to_owned(), ca.clone());
    }
    entries.insert(
        pki::keys::CONTROLLER_MANAGER_CONF.to_owned(),
        pki::render_kubeconfig(
            "kvtenant",
            &format!("https://127.0.0.1:{APISERVER_PORT}"),
            &pki.ca.cert_pem,
            pki::CONTROLLER_MANAGER_CN,
            &pki.controller_manager,
        ),
    );
    Secret {
        metadata: t.meta(&t.names.pki_secret),
        type_: Some("Opaque".to_owned()),
        data: Some(to_bytes(entries)),
        ..Secret::default()
    }
}

/// The `<vc>-kubeconfig` Secret: the tenant admin kubeconfig (key `kubeconfig`) pointing at
/// `endpoint`, the CA (key `ca.crt`) and the webhook client CA the syncer's webhook server knows
/// the tenant's apiserver by (key `webhook-client-ca.crt`, certificate only).
pub fn kubeconfig_secret(t: &Target<'_>, pki: &Pki, endpoint: &str) -> Secret {
    let kubeconfig = pki::render_kubeconfig(
        &t.vcref.name,
        endpoint,
        &pki.ca.cert_pem,
        pki::ADMIN_CN,
        &pki.admin,
    );
    Secret {
        metadata: t.meta(&t.names.kubeconfig_secret),
        type_: Some("Opaque".to_owned()),
        data: Some(to_bytes(BTreeMap::from([
            (KUBECONFIG_KEY.to_owned(), kubeconfig),
            (
                kvtenant_api::labels::CLIENT_CA_KEY.to_owned(),
                pki.ca.cert_pem.clone(),
            ),
            (
                kvtenant_api::labels::FRONT_PROXY_CA_KEY.to_owned(),
                pki.front_proxy_ca.cert_pem.clone(),
            ),
            (
                pki::keys::WEBHOOK_CLIENT_CA_CRT.to_owned(),
                pki.webhook_client_ca.cert_pem.clone(),
            ),
        ]))),
        ..Secret::default()
    }
}

/// The Service tenants use (type from `spec.expose`) and the StatefulSet's headless Service.
pub fn services(t: &Target<'_>) -> Result<[Service; 2], serde_json::Error> {
    let expose = &t.vc.spec.expose;
    let mut meta = t.meta(&t.names.service);
    if !expose.service_annotations.is_empty() {
        meta.annotations = Some(expose.service_annotations.clone());
    }
    let main: Service = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {
            "type": expose.type_.as_str(),
            "selector": t.pod_labels(),
            "ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": "https", "protocol": "TCP"}],
        }
    }))?;
    let mut ports = vec![
        json!({"name": "https", "port": APISERVER_PORT, "targetPort": "https", "protocol": "TCP"}),
    ];
    if etcd_cluster(t) {
        // the members find each other as <pod>.<headless Service>.<namespace>.svc
        ports.push(json!({"name": "etcd-peer", "port": ETCD_PEER_PORT, "targetPort": "etcd-peer", "protocol": "TCP"}));
    }
    let headless: Service = serde_json::from_value(json!({
        "metadata": t.meta(&t.names.statefulset),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": t.pod_labels(),
            "ports": ports,
        }
    }))?;
    Ok([main, headless])
}

/// The datastore container's command line; `None` for an external etcd (no container). For an
/// external database kine reads its DSN from `KINE_ENDPOINT` (set from the Secret), so the
/// password is never on a command line.
pub fn datastore_command(datastore: Datastore) -> Option<Vec<String>> {
    Some(match datastore {
        Datastore::ExternalEtcd => return None,
        Datastore::Etcd => {
            let client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
            let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
            vec![
                "etcd".into(),
                "--name=etcd".into(),
                format!("--data-dir={DATA_DIR}/etcd"),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=etcd={peer}"),
                format!("--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}"),
                "--auto-compaction-mode=periodic".into(),
                "--auto-compaction-retention=1h".into(),
                "--quota-backend-bytes=4294967296".into(),
                "--log-level=warn".into(),
            ]
        }
        // The database sits at the volume's root: kine creates directories only for its default
        // DSN, so a file in a subdirectory fails on a fresh volume ("unable to open database
        // file"). Its metrics listener (default :8080) is off: nothing scrapes it.
        Datastore::Kine => vec![
            "kine".into(),
            format!(
                "--endpoint=sqlite://{DATA_DIR}/{KINE_DATABASE}?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
            ),
            format!("--listen-address=127.0.0.1:{ETCD_CLIENT_PORT}"),
            "--metrics-bind-address=0".into(),
        ],
        Datastore::ExternalDatabase => vec![
            "kine".into(),
            format!("--listen-address=127.0.0.1:{ETCD_CLIENT_PORT}"),
            "--metrics-bind-address=0".into(),
        ],
    })
}

/// kube-apiserver's command line. `$(POD_IP)` is expanded by the kubelet from the container's
/// environment.
pub fn apiserver_command() -> Vec<String> {
    let d = APISERVER_PKI_DIR;
    vec![
        "kube-apiserver".into(),
        format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--bind-address=0.0.0.0".into(),
        "--advertise-address=$(POD_IP)".into(),
        format!("--secure-port={APISERVER_PORT}"),
        // The tenant's `kubernetes` Service gets no endpoints from the apiserver (its pods reach
        // the apiserver through the address kvtenant gives them, status.endpoint).
        "--endpoint-reconciler-type=none".into(),
        format!("--tls-cert-file={d}/{}", pki::keys::APISERVER_CRT),
        format!("--tls-private-key-file={d}/{}", pki::keys::APISERVER_KEY),
        format!("--client-ca-file={d}/{}", pki::keys::CA_CRT),
        "--authorization-mode=RBAC".into(),
        "--allow-privileged=true".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        format!("--service-account-key-file={d}/{}", pki::keys::SA_PUB),
        format!(
            "--service-account-signing-key-file={d}/{}",
            pki::keys::SA_KEY
        ),
        format!(
            "--requestheader-client-ca-file={d}/{}",
            pki::keys::FRONT_PROXY_CA_CRT
        ),
        format!(
            "--requestheader-allowed-names={}",
            pki::FRONT_PROXY_CLIENT_CN
        ),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-uid-headers=X-Remote-Uid".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!(
            "--proxy-client-cert-file={d}/{}",
            pki::keys::FRONT_PROXY_CLIENT_CRT
        ),
        format!(
            "--proxy-client-key-file={d}/{}",
            pki::keys::FRONT_PROXY_CLIENT_KEY
        ),
        // towards kubelets, i.e. kvtenant's kubelet proxy, which the tenant's Nodes advertise
        // (kubectl logs/exec/attach/port-forward); the proxy knows the tenant by this certificate
        format!(
            "--kubelet-client-certificate={d}/{}",
            pki::keys::KUBELET_CLIENT_CRT
        ),
        format!("--kubelet-client-key={d}/{}", pki::keys::KUBELET_CLIENT_KEY),
        // towards kvtenant's webhook server: the webhook client certificate it knows the tenant by
        format!(
            "--admission-control-config-file={d}/{}",
            pki::keys::ADMISSION_CONFIG
        ),
        "--profiling=false".into(),
    ]
}

/// kube-controller-manager's command line.
pub fn controller_manager_command() -> Vec<String> {
    let d = CONTROLLER_MANAGER_DIR;
    let kc = format!("{d}/{}", pki::keys::CONTROLLER_MANAGER_CONF);
    vec![
        "kube-controller-manager".into(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        // The controller-manager serves only health checks and metrics: it needs no front-proxy
        // CA from kube-system/extension-apiserver-authentication. Without this it exits when it
        // starts before the apiserver has bootstrapped RBAC (the containers start together).
        "--authentication-skip-lookup=true".into(),
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={CONTROLLER_MANAGER_PORT}"),
        format!("--cert-dir={CONTROLLER_MANAGER_CERT_DIR}"),
        // At most one pod: the StatefulSet has one replica and replaces it in order.
        "--leader-elect=false".into(),
        format!(
            "--service-account-private-key-file={d}/{}",
            pki::keys::SA_KEY
        ),
        format!("--root-ca-file={d}/{}", pki::keys::CA_CRT),
        "--use-service-account-credentials=true".into(),
        // A virtual cluster has no storage and no kubelets of its own: its PVCs are views of
        // host claims (status copied up by the syncer) and its Nodes stand for host nodes
        // running its VMs. The volume and node-lifecycle controllers would fight the syncer
        // (set Bound claims back to Pending, mark the shown Nodes NotReady), so they are off.
        format!(
            "--controllers={}",
            kvtenant_api::TENANT_CONTROLLERS.join(",")
        ),
        "--profiling=false".into(),
    ]
}

fn resources(set: Option<&ResourceRequirements>, cpu: &str, memory: &str) -> serde_json::Value {
    match set {
        Some(r) => json!(r),
        None => json!({"requests": {"cpu": cpu, "memory": memory}}),
    }
}

/// Splits a command line into the container's `command` (the program) and `args`.
fn command_args(cmd: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut it = cmd.into_iter();
    (it.next().into_iter().collect(), it.collect())
}

pub use kvtenant_kubeutil::apply::content_hash;

mod admission;
pub use admission::admission_files;
mod ha;
mod ingress;
pub use ingress::ingress;
mod statefulset;
pub use ha::{
    ETCD_GROWTH, ETCD_MEMBERS, ETCD_PKI_DIR, EtcdState, GROWN_MEMBERS, Growth, etcd_cluster,
    etcd_cluster_command, etcd_members, etcd_peer_sans, etcd_state, grown_peer_urls,
    pod_disruption_budget,
};
pub use statefulset::{
    DATABASE_TLS_DIR, ETCD_CLIENT_DIR, KINE_ENDPOINT_ENV, etcd_prefix, statefulset,
    with_external_database, with_external_etcd, with_prefix,
};

#[cfg(test)]
mod tests;
