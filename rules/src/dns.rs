//! The virtual cluster's DNS, pure: the objects kvtenant keeps in the tenant's `kube-system`
//! (ServiceAccount, ClusterRole and binding, ConfigMap with the Corefile, Deployment `coredns`,
//! Service `kube-dns`), as vcluster and kubeadm install them. They are ordinary tenant objects:
//! the tenant's controller-manager makes the Deployment's pods, kvtenant syncs them and the
//! Service to the host like any others. How host copies of pods and VMs resolve through it is
//! [`crate::pod::dns`].

use kvtenant_api::DnsSpec;
use serde_json::{Value, json};

use crate::kinds::ApiKind;

/// Where the DNS objects live in the tenant.
pub const NAMESPACE: &str = "kube-system";
/// The Service host copies of pods resolve through.
pub const SERVICE: &str = "kube-dns";
/// The Deployment, ServiceAccount and ConfigMap.
pub const NAME: &str = "coredns";
/// The ClusterRole and ClusterRoleBinding (kubeadm's name).
pub const CLUSTER_ROLE: &str = "system:coredns";
/// The label every object kvtenant installs carries (what is removed when DNS is disabled).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label selecting the DNS pods (kubeadm's).
pub const APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// Where the Corefile makes CoreDNS listen and what it talks to. The virtual cluster's pods
/// use [`CorefileOptions::in_cluster`]; a test running the binary on this machine changes only
/// the ports, the address, the apiserver's kubeconfig and the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorefileOptions {
    pub cluster_domain: String,
    pub dns_port: u16,
    /// `health` (liveness), `ready` (readiness) and `prometheus` listen addresses.
    pub health: String,
    pub ready: String,
    pub metrics: String,
    /// `bind` address; all interfaces when `None`.
    pub bind: Option<String>,
    /// The kubernetes plugin's `kubeconfig`; the pod's ServiceAccount when `None`.
    pub kubeconfig: Option<String>,
    /// Where names outside the cluster domain go (`forward . <upstream>`): the host cluster's
    /// DNS when known, else the node's resolver.
    pub upstream: String,
}

impl CorefileOptions {
    /// The Corefile of the virtual cluster's CoreDNS pods; outside names go to the node's
    /// resolver (see [`Self::forwarding_to`]).
    pub fn in_cluster(cluster_domain: &str) -> Self {
        Self {
            cluster_domain: cluster_domain.to_string(),
            dns_port: 53,
            health: ":8080".into(),
            ready: ":8181".into(),
            metrics: ":9153".into(),
            bind: None,
            kubeconfig: None,
            upstream: "/etc/resolv.conf".into(),
        }
    }

    /// Outside names forwarded to `host_dns` (the host cluster's DNS Service address), which
    /// the host namespaces' NetworkPolicy lets the tenant's pods reach; the node's resolver is
    /// usually a private address outside `egressExcept`.
    pub fn forwarding_to(mut self, host_dns: Option<&str>) -> Self {
        if let Some(ip) = host_dns.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
            self.upstream = ip.to_string();
        }
        self
    }
}

/// Private address ranges (RFC 1918, shared address space, IPv6 unique local) whose reverse
/// zones the tenant's CoreDNS answers itself, from the tenant's apiserver only: a host cluster's
/// Service and pod ranges are in them, and the host's DNS would name the host's Services and
/// other tenants' host namespaces for their addresses (`10.96.0.1` →
/// `kubernetes.default.svc`). Reverse lookups of other addresses are forwarded.
pub const PRIVATE_REVERSE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fd00::/8",
];

/// The Corefile: the tenant's Services and pods for the cluster domain and the reverse zones
/// (the kubernetes plugin, reading the tenant's apiserver), everything else forwarded but the
/// reverse zones of [`PRIVATE_REVERSE_RANGES`], which a second server block answers from the
/// tenant's apiserver alone (NXDOMAIN for addresses the tenant does not have).
pub fn corefile(o: &CorefileOptions) -> String {
    let domain = &o.cluster_domain;
    let bind = o
        .bind
        .as_ref()
        .map(|b| format!("    bind {b}\n"))
        .unwrap_or_default();
    let kubeconfig = o
        .kubeconfig
        .as_ref()
        .map(|k| format!("       kubeconfig {k}\n"))
        .unwrap_or_default();
    format!(
        ".:{port} {{
{bind}    errors
    health {health} {{
       lameduck 5s
    }}
    ready {ready}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
{kubeconfig}       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus {metrics}
    forward . {upstream} {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {domain}
       disable denial {domain}
    }}
    loop
    reload
    loadbalance
}}
{private} {{
{bind}    errors
    kubernetes {domain} in-addr.arpa ip6.arpa {{
{kubeconfig}       pods insecure
       ttl 30
    }}
    cache 30
}}
",
        private = PRIVATE_REVERSE_RANGES
            .iter()
            .map(|r| format!("{r}:{}", o.dns_port))
            .collect::<Vec<_>>()
            .join(" "),
        port = o.dns_port,
        health = o.health,
        ready = o.ready,
        metrics = o.metrics,
        upstream = o.upstream,
    )
}

/// One object to apply in the tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsObject {
    pub api: ApiKind,
    /// `None`: cluster-scoped.
    pub namespace: Option<&'static str>,
    pub name: &'static str,
    /// The full object (apiVersion, kind, metadata, ...), for a server-side apply.
    pub body: Value,
}

const fn api(group: &'static str, kind: &'static str, plural: &'static str) -> ApiKind {
    ApiKind {
        group,
        version: "v1",
        kind,
        plural,
    }
}

/// The kinds of the DNS objects, in the order they are applied.
pub const KINDS: [ApiKind; 6] = [
    api("", "ServiceAccount", "serviceaccounts"),
    api("rbac.authorization.k8s.io", "ClusterRole", "clusterroles"),
    api(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
    ),
    api("", "ConfigMap", "configmaps"),
    api("apps", "Deployment", "deployments"),
    api("", "Service", "services"),
];

fn object(i: usize, name: &'static str, namespaced: bool, rest: Value) -> DnsObject {
    let a = KINDS[i];
    let api_version = if a.group.is_empty() {
        a.version.to_string()
    } else {
        format!("{}/{}", a.group, a.version)
    };
    let namespace = namespaced.then_some(NAMESPACE);
    let mut body = json!({
        "apiVersion": api_version,
        "kind": a.kind,
        "metadata": {
            "name": name,
            "labels": {MANAGED_BY_LABEL: kvtenant_api::MANAGER, APP_LABEL.0: APP_LABEL.1},
        },
    });
    if let Some(ns) = namespace {
        body["metadata"]["namespace"] = json!(ns);
    }
    if let (Some(b), Value::Object(r)) = (body.as_object_mut(), rest) {
        b.extend(r);
    }
    DnsObject {
        api: a,
        namespace,
        name,
        body,
    }
}

/// The DNS objects of a virtual cluster, in apply order; none when DNS is disabled. `host_dns`:
/// the host cluster's DNS address, where names outside the cluster domain go when known.
pub fn objects(spec: &DnsSpec, host_dns: Option<&str>) -> Vec<DnsObject> {
    if !spec.enabled {
        return Vec::new();
    }
    let corefile =
        corefile(&CorefileOptions::in_cluster(&spec.cluster_domain).forwarding_to(host_dns));
    vec![
        object(0, NAME, true, json!({})),
        object(
            1,
            CLUSTER_ROLE,
            false,
            json!({"rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ]}),
        ),
        object(
            2,
            CLUSTER_ROLE,
            false,
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": CLUSTER_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
            }),
        ),
        object(3, NAME, true, json!({"data": {"Corefile": corefile}})),
        object(4, NAME, true, deployment(&spec.image)),
        object(
            5,
            SERVICE,
            true,
            json!({"spec": {
                "selector": {APP_LABEL.0: APP_LABEL.1},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                ],
            }}),
        ),
    ]
}

/// The Deployment: kubeadm's CoreDNS, with a pod that passes Pod Security `restricted` (so any
/// level a VirtualCluster chooses lets it through): non-root, port 53 opened to it by the safe
/// sysctl `net.ipv4.ip_unprivileged_port_start` instead of a capability. Its own DNS is the
/// node's (`dnsPolicy: Default`), where `forward . /etc/resolv.conf` sends outside names.
fn deployment(image: &str) -> Value {
    json!({"spec": {
        "replicas": 1,
        "selector": {"matchLabels": {APP_LABEL.0: APP_LABEL.1}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "template": {
            "metadata": {"labels": {APP_LABEL.0: APP_LABEL.1}},
            "spec": {
                "serviceAccountName": NAME,
                "dnsPolicy": "Default",
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                },
                "containers": [{
                    "name": "coredns",
                    "image": image,
                    "args": ["-conf", "/etc/coredns/Corefile"],
                    "resources": {"limits": {"memory": "170Mi"},
                                  "requests": {"cpu": "100m", "memory": "70Mi"}},
                    "ports": [
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                    ],
                    "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns",
                                      "readOnly": true}],
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                      "initialDelaySeconds": 60, "timeoutSeconds": 5,
                                      "failureThreshold": 5},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": true,
                    },
                }],
                "volumes": [{"name": "config-volume", "configMap": {
                    "name": NAME, "items": [{"key": "Corefile", "path": "Corefile"}]}}],
            },
        },
    }})
}

/// The nameserver host copies of the tenant's pods use: the cluster IP of the host copy of the
/// tenant's `kube-system/kube-dns` (which the tenant's Service also shows once it took the
/// host's address), when the host assigned one.
pub fn nameserver(host_service: &Value) -> Option<&str> {
    host_service
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::kinds::SyncedKind;
    use crate::kinds::pod::Pod;

    fn enabled() -> DnsSpec {
        DnsSpec::default()
    }

    #[test]
    fn the_corefile_serves_the_cluster_domain_and_forwards_the_rest() {
        let c = corefile(&CorefileOptions::in_cluster("tenant.example"));
        assert!(c.starts_with(".:53 {\n"), "{c}");
        assert!(c.contains("kubernetes tenant.example in-addr.arpa ip6.arpa {"));
        assert!(c.contains("forward . /etc/resolv.conf {"));
        // the private ranges' reverse zones are answered from the tenant only
        assert!(c.contains(
            "\n10.0.0.0/8:53 172.16.0.0/12:53 192.168.0.0/16:53 100.64.0.0/10:53 fd00::/8:53 {\n"
        ));
        assert_eq!(c.matches("fallthrough").count(), 1, "{c}");
        assert!(c.contains("health :8080 {") && c.contains("ready :8181"));
        assert!(c.contains("prometheus :9153"));
        assert!(!c.contains("kubeconfig") && !c.contains("bind"));
        let local = corefile(&CorefileOptions {
            dns_port: 15353,
            bind: Some("127.0.0.1".into()),
            kubeconfig: Some("/tmp/k".into()),
            upstream: "127.0.0.1:15354".into(),
            ..CorefileOptions::in_cluster("cluster.local")
        });
        assert!(
            local.starts_with(".:15353 {\n    bind 127.0.0.1\n"),
            "{local}"
        );
        assert!(local.contains("       kubeconfig /tmp/k\n       pods insecure"));
        assert!(local.contains("forward . 127.0.0.1:15354 {"));
        // the host cluster's DNS when known (an address only)
        let to_host =
            CorefileOptions::in_cluster("cluster.local").forwarding_to(Some("10.96.0.10"));
        assert!(corefile(&to_host).contains("forward . 10.96.0.10 {"));
        let not_an_ip =
            CorefileOptions::in_cluster("cluster.local").forwarding_to(Some("evil; reload"));
        assert_eq!(not_an_ip.upstream, "/etc/resolv.conf");
        // the same braces open and close
        assert_eq!(local.matches('{').count(), local.matches('}').count());
    }

    #[test]
    fn the_objects_kubeadm_installs_in_apply_order() {
        let objs = objects(&enabled(), None);
        let names: Vec<(&str, Option<&str>, &str)> = objs
            .iter()
            .map(|o| (o.api.kind, o.namespace, o.name))
            .collect();
        assert_eq!(
            names,
            [
                ("ServiceAccount", Some("kube-system"), "coredns"),
                ("ClusterRole", None, "system:coredns"),
                ("ClusterRoleBinding", None, "system:coredns"),
                ("ConfigMap", Some("kube-system"), "coredns"),
                ("Deployment", Some("kube-system"), "coredns"),
                ("Service", Some("kube-system"), "kube-dns"),
            ]
        );
        for o in &objs {
            assert_eq!(o.body["kind"], o.api.kind);
            assert_eq!(o.body["metadata"]["name"], o.name);
            assert_eq!(o.body["metadata"]["labels"][MANAGED_BY_LABEL], "kvtenant");
            assert_eq!(
                o.body["metadata"].get("namespace").and_then(Value::as_str),
                o.namespace
            );
        }
        assert_eq!(objs[2].body["apiVersion"], "rbac.authorization.k8s.io/v1");
        assert_eq!(objs[4].body["apiVersion"], "apps/v1");
        let verbs = &objs[1].body["rules"][1];
        assert_eq!(verbs["resources"][0], "endpointslices");
        let svc = &objs[5].body["spec"];
        assert_eq!(svc["selector"]["k8s-app"], "kube-dns");
        let ports: Vec<(i64, &str)> = svc["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
            .collect();
        assert_eq!(ports, [(53, "UDP"), (53, "TCP"), (9153, "TCP")]);
        assert!(
            objects(
                &DnsSpec {
                    enabled: false,
                    ..enabled()
                },
                Some("10.96.0.10")
            )
            .is_empty()
        );
    }

    #[test]
    fn the_pod_uses_the_image_the_config_and_the_nodes_resolver() {
        let spec = DnsSpec {
            image: "mirror.example/coredns:v1.14.7".into(),
            cluster_domain: "tenant.example".into(),
            ..enabled()
        };
        let objs = objects(&spec, None);
        let pod = &objs[4].body["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["image"],
            "mirror.example/coredns:v1.14.7"
        );
        assert_eq!(pod["dnsPolicy"], "Default");
        assert_eq!(pod["serviceAccountName"], "coredns");
        assert_eq!(pod["volumes"][0]["configMap"]["name"], "coredns");
        let corefile = objs[3].body["data"]["Corefile"].as_str().unwrap();
        assert!(corefile.contains("kubernetes tenant.example in-addr.arpa"));
        assert_eq!(
            objs[4].body["spec"]["selector"]["matchLabels"],
            objs[5].body["spec"]["selector"]
        );
    }

    #[test]
    fn the_pod_passes_every_pod_security_level_and_placement() {
        let objs = objects(&enabled(), None);
        let pod = json!({"metadata": objs[4].body["spec"]["template"]["metadata"],
                         "spec": objs[4].body["spec"]["template"]["spec"]});
        let vm = kvtenant_api::VmPolicy::default();
        for level in [
            kvtenant_api::PodSecurityLevel::Baseline,
            kvtenant_api::PodSecurityLevel::Restricted,
        ] {
            let p = Policy {
                pod_security: level,
                ..Policy::vm_only(&vm)
            };
            assert_eq!(Pod.violations(&pod, &p, None), [], "{level:?}");
        }
    }

    #[test]
    fn the_nameserver_is_the_host_cluster_ip() {
        assert_eq!(
            nameserver(&json!({"spec": {"clusterIP": "10.0.0.10"}})),
            Some("10.0.0.10")
        );
        assert_eq!(nameserver(&json!({"spec": {"clusterIP": "None"}})), None);
        assert_eq!(nameserver(&json!({"spec": {}})), None);
    }
}
