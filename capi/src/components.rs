//! What clusterctl installs and generates, rendered for one release: the components YAML of
//! each provider (one Namespace, the CRD, RBAC, a Deployment whose container is `manager`), the
//! metadata YAML (release series → contract) and the cluster template. Pure: `kvtenant
//! release-artifacts` writes these files, the tests apply them.

use serde_json::{Value, json};

use crate::templates::{control_plane_template_crd, infrastructure_template_crd};
use crate::types::{
    CONTRACT, CONTROL_PLANE_PROVIDER, INFRASTRUCTURE_PROVIDER, PROVIDER_LABEL, control_plane_crd,
    infrastructure_crd,
};

/// The image variable of the components YAML (clusterctl substitutes `${VAR:=default}`).
pub const IMAGE_VARIABLE: &str = "KVTENANT_IMAGE";

/// One provider's install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ControlPlane,
    Infrastructure,
}

impl Kind {
    /// clusterctl's provider name.
    pub fn provider(self) -> &'static str {
        match self {
            Kind::ControlPlane => CONTROL_PLANE_PROVIDER,
            Kind::Infrastructure => INFRASTRUCTURE_PROVIDER,
        }
    }

    /// The components file name clusterctl looks for.
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::ControlPlane => "control-plane-components.yaml",
            Kind::Infrastructure => "infrastructure-components.yaml",
        }
    }

    /// The provider's namespace (clusterctl's default target namespace).
    pub fn namespace(self) -> &'static str {
        match self {
            Kind::ControlPlane => "kvtenant-control-plane-system",
            Kind::Infrastructure => "kvtenant-infrastructure-system",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Kind::ControlPlane => "control-plane",
            Kind::Infrastructure => "infrastructure",
        }
    }

    /// The provider's CRDs: its kind and the template ClusterClasses name.
    fn crds(self) -> Vec<Value> {
        let crds = match self {
            Kind::ControlPlane => [control_plane_crd(), control_plane_template_crd()],
            Kind::Infrastructure => [infrastructure_crd(), infrastructure_template_crd()],
        };
        crds.into_iter()
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            .collect()
    }

    /// RBAC of the manager: its own kinds (and status), the Clusters it reads for pause, and
    /// for the control plane the VirtualClusters it makes and the Secrets it reads and writes.
    fn rules(self) -> Value {
        let (group, plural) = match self {
            Kind::ControlPlane => ("controlplane.cluster.x-k8s.io", "kvtenantcontrolplanes"),
            Kind::Infrastructure => ("infrastructure.cluster.x-k8s.io", "kvtenantclusters"),
        };
        let mut rules = vec![
            json!({"apiGroups": [group], "resources": [plural], "verbs": ["get", "list", "watch", "patch", "update"]}),
            json!({"apiGroups": [group], "resources": [format!("{plural}/status")], "verbs": ["get", "patch", "update"]}),
            json!({"apiGroups": ["cluster.x-k8s.io"], "resources": ["clusters"], "verbs": ["get", "list", "watch"]}),
        ];
        if self == Kind::ControlPlane {
            rules.push(json!({"apiGroups": ["tenancy.kvtenant.io"], "resources": ["virtualclusters"], "verbs": ["get", "list", "watch", "create", "patch", "update"]}));
            rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch", "update"]}));
        }
        Value::Array(rules)
    }

    /// The ClusterRole Cluster API's core manager gets through aggregation (it sets owner
    /// references and labels on the provider's objects).
    fn aggregated_rules(self) -> Value {
        let (group, plural) = match self {
            Kind::ControlPlane => ("controlplane.cluster.x-k8s.io", "kvtenantcontrolplanes"),
            Kind::Infrastructure => ("infrastructure.cluster.x-k8s.io", "kvtenantclusters"),
        };
        json!([
            {"apiGroups": [group], "resources": [plural], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
            {"apiGroups": [group], "resources": [format!("{}templates", plural.trim_end_matches('s'))], "verbs": ["get", "list", "patch", "update", "watch"]}
        ])
    }
}

/// The components YAML of one provider, for release `version` (`vX.Y.Z`); the image is
/// `${KVTENANT_IMAGE:=ghcr.io/kvtenant/kvtenant:<version>}`.
pub fn components(kind: Kind, version: &str) -> String {
    let ns = kind.namespace();
    let name = format!("kvtenant-{}-manager", kind.flag());
    let labels = json!({
        PROVIDER_LABEL: kind.provider(),
        "app.kubernetes.io/name": "kvtenant",
        "app.kubernetes.io/component": format!("capi-{}", kind.flag()),
        "app.kubernetes.io/version": version,
    });
    let selector = json!({"app.kubernetes.io/name": "kvtenant", "app.kubernetes.io/component": format!("capi-{}", kind.flag())});
    let mut crds = kind.crds();
    for crd in &mut crds {
        if let Some(l) = crd["metadata"]["labels"].as_object_mut() {
            l.insert("app.kubernetes.io/version".into(), json!(version));
        }
    }
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
    ];
    objects.extend(crds);
    objects.extend([
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": format!("kvtenant:{}", kind.provider()), "labels": labels},
            "rules": kind.rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("kvtenant:{}", kind.provider()), "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("kvtenant:{}", kind.provider())},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": format!("kvtenant:{}:capi-manager", kind.provider()),
                "labels": merge(&labels, &json!({"cluster.x-k8s.io/aggregate-to-manager": "true"}))},
            "rules": kind.aggregated_rules()}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": merge(&labels, &selector)},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "manager",
                        "image": format!("${{{IMAGE_VARIABLE}:=ghcr.io/kvtenant/kvtenant:{version}}}"),
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["capi", format!("--provider={}", kind.flag()), "--log-json", "--admin-addr=0.0.0.0:8080"],
                        "ports": [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }}),
    ]);
    to_yaml_stream(
        &format!(
            "# kvtenant {version}: Cluster API provider {} (contract {CONTRACT}). Install with\n\
             # `clusterctl init --{} kvtenant` from a provider repository holding this file, or\n\
             # `kubectl apply --server-side -f` it after substituting the image variable {IMAGE_VARIABLE}.\n\
             # Needs kvtenant itself (its controller and the VirtualCluster CRD) on this cluster.\n",
            kind.provider(),
            match kind {
                Kind::ControlPlane => "control-plane",
                Kind::Infrastructure => "infrastructure",
            }
        ),
        &objects,
    )
}

fn merge(a: &Value, b: &Value) -> Value {
    let mut out = a.clone();
    if let (Some(o), Some(b)) = (out.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

fn to_yaml_stream(header: &str, objects: &[Value]) -> String {
    let mut out = String::from(header);
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).unwrap_or_default());
    }
    out
}

/// clusterctl's metadata YAML: the release series of `version` (`vX.Y.Z`) and its contract.
pub fn metadata(version: &str) -> String {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    let minor = parts
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    format!(
        "# kvtenant's Cluster API providers: release series → Cluster API contract\n\
         apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3\n\
         kind: Metadata\n\
         releaseSeries:\n  - major: {major}\n    minor: {minor}\n    contract: {CONTRACT}\n"
    )
}

/// The default cluster template (`clusterctl generate cluster NAME --infrastructure kvtenant
/// --control-plane kvtenant`): a Cluster, its KvtenantCluster and a KvtenantControlPlane named
/// `${CLUSTER_NAME}-control-plane`. Variables: CLUSTER_NAME, NAMESPACE, KUBERNETES_VERSION and
/// KVTENANT_EXPOSE_TYPE (ClusterIP, NodePort or LoadBalancer; default ClusterIP).
pub fn cluster_template() -> String {
    let objects = [
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "${CLUSTER_NAME}", "namespace": "${NAMESPACE}"},
        "spec": {
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KvtenantCluster", "name": "${CLUSTER_NAME}"},
            "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KvtenantControlPlane", "name": "${CLUSTER_NAME}-control-plane"}
        }}),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantCluster",
            "metadata": {"name": "${CLUSTER_NAME}", "namespace": "${NAMESPACE}"}, "spec": {}}),
        json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantControlPlane",
        "metadata": {"name": "${CLUSTER_NAME}-control-plane", "namespace": "${NAMESPACE}"},
        "spec": {
            "version": "${KUBERNETES_VERSION}",
            "virtualCluster": {"expose": {"type": "${KVTENANT_EXPOSE_TYPE:=ClusterIP}"}}
        }}),
    ];
    to_yaml_stream(
        "# A kvtenant virtual cluster as a Cluster API Cluster. The KvtenantControlPlane's\n\
         # spec.virtualCluster is a VirtualCluster spec (kubectl explain virtualcluster.spec).\n",
        &objects,
    )
}

/// The ClusterClass `kvtenant` (clusterctl: `clusterclass-kvtenant.yaml`) and the templates it
/// names: a Cluster with `spec.topology.classRef.name: kvtenant` gets a KvtenantCluster and a
/// KvtenantControlPlane (version from the topology) made by Cluster API's topology controller
/// (feature gate ClusterTopology). Variable: NAMESPACE.
pub fn cluster_class() -> String {
    let objects = [
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "ClusterClass",
        "metadata": {"name": "kvtenant", "namespace": "${NAMESPACE}"},
        "spec": {
            "infrastructure": {"templateRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantClusterTemplate", "name": "kvtenant"}},
            "controlPlane": {"templateRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantControlPlaneTemplate", "name": "kvtenant"}}
        }}),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantClusterTemplate",
            "metadata": {"name": "kvtenant", "namespace": "${NAMESPACE}"},
            "spec": {"template": {"spec": {}}}}),
        json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha1", "kind": "KvtenantControlPlaneTemplate",
            "metadata": {"name": "kvtenant", "namespace": "${NAMESPACE}"},
            "spec": {"template": {"spec": {"virtualCluster": {"expose": {"type": "${KVTENANT_EXPOSE_TYPE:=ClusterIP}"}}}}}}),
    ];
    to_yaml_stream(
        "# The ClusterClass kvtenant: virtual clusters as Cluster API managed topologies.\n",
        &objects,
    )
}

/// The `topology` flavor (`clusterctl generate cluster NAME --flavor topology`): a Cluster of
/// the ClusterClass kvtenant. Variables: CLUSTER_NAME, NAMESPACE, KUBERNETES_VERSION.
pub fn cluster_template_topology() -> String {
    let objects = [
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "${CLUSTER_NAME}", "namespace": "${NAMESPACE}"},
        "spec": {"topology": {"classRef": {"name": "kvtenant"}, "version": "${KUBERNETES_VERSION}"}}}),
    ];
    to_yaml_stream(
        "# A kvtenant virtual cluster from the ClusterClass kvtenant (clusterclass-kvtenant.yaml).\n",
        &objects,
    )
}

/// `${VAR}`, `${VAR:=default}` and `${VAR:-default}` replaced as clusterctl does (drone/envsubst):
/// the value when set and not empty, else the default; `None` when a variable has neither.
pub fn substitute(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {:?}", &rest[start..]))?;
        let expr = after[..end].trim();
        let (name, default) = match expr.find([':', '=']) {
            Some(i) => {
                let d = expr[i..].trim_start_matches(':');
                let d = d
                    .strip_prefix('=')
                    .or_else(|| d.strip_prefix('-'))
                    .unwrap_or(d);
                (&expr[..i], Some(d))
            }
            None => (expr, None),
        };
        let value = vars(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_owned))
            .ok_or_else(|| format!("variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
