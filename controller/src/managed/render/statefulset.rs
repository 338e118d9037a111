//! The control-plane StatefulSet: the datastore (etcd or kine, none for an external etcd),
//! kube-apiserver and kube-controller-manager in one pod.

use k8s_openapi::api::apps::v1::StatefulSet;
use kvtenant_api::{Datastore, ExternalDatabaseSpec, ExternalEtcdSpec, etcd_keys};
use serde_json::json;

use super::*;

/// Where an external etcd's client certificate is mounted in the apiserver's container.
pub const ETCD_CLIENT_DIR: &str = "/etc/kubernetes/etcd";

/// Where an external database's TLS files are mounted in kine's container.
pub const DATABASE_TLS_DIR: &str = "/etc/kine/tls";

/// The environment variable kine reads its DSN from.
pub const KINE_ENDPOINT_ENV: &str = "KINE_ENDPOINT";

/// kine's command line, environment and volume for an external database: the DSN from the
/// Secret's key as `KINE_ENDPOINT`; with a TLS Secret, its CA (and client certificate when the
/// Secret has one) mounted and passed.
pub fn with_external_database(
    mut cmd: Vec<String>,
    db: &ExternalDatabaseSpec,
    client_cert: bool,
) -> (Vec<String>, serde_json::Value, Option<serde_json::Value>) {
    let env = json!([{"name": KINE_ENDPOINT_ENV, "valueFrom": {"secretKeyRef": {
        "name": db.dsn_secret_ref.name, "key": db.dsn_secret_ref.key_or_default(),
    }}}]);
    let volume = db.tls_secret_ref.as_ref().map(|secret| {
        let d = DATABASE_TLS_DIR;
        cmd.push(format!("--ca-file={d}/{}", etcd_keys::CA));
        if client_cert {
            cmd.push(format!("--cert-file={d}/{}", etcd_keys::CERT));
            cmd.push(format!("--key-file={d}/{}", etcd_keys::KEY));
        }
        json!({"name": "database-tls", "secret": {"secretName": secret.name, "defaultMode": 0o440}})
    });
    (cmd, env, volume)
}

/// The key prefix of a virtual cluster in an external etcd: its own, so many can share one.
pub fn etcd_prefix(vc_uid: &str) -> String {
    format!("/kvtenant/{vc_uid}")
}

/// kube-apiserver's command line for an external etcd: its endpoints instead of the pod's
/// loopback, the virtual cluster's key prefix, and the client certificate when one is given.
pub fn with_external_etcd(
    mut cmd: Vec<String>,
    vc_uid: &str,
    external: &ExternalEtcdSpec,
) -> Vec<String> {
    cmd.retain(|a| !a.starts_with("--etcd-servers="));
    cmd.push(format!("--etcd-servers={}", external.endpoints.join(",")));
    cmd = with_prefix(cmd, vc_uid);
    if external.tls_secret_ref.is_some() {
        let d = ETCD_CLIENT_DIR;
        cmd.push(format!("--etcd-cafile={d}/{}", etcd_keys::CA));
        cmd.push(format!("--etcd-certfile={d}/{}", etcd_keys::CERT));
        cmd.push(format!("--etcd-keyfile={d}/{}", etcd_keys::KEY));
    }
    cmd
}

/// kube-apiserver's command line with the virtual cluster's key prefix (a datastore shared with
/// other virtual clusters).
pub fn with_prefix(mut cmd: Vec<String>, vc_uid: &str) -> Vec<String> {
    cmd.retain(|a| !a.starts_with("--etcd-prefix="));
    cmd.push(format!("--etcd-prefix={}", etcd_prefix(vc_uid)));
    cmd
}

/// The control-plane StatefulSet. `pki_hash` goes into the pod template so new certificates
/// roll the pod; `spec.paused` scales it to 0.
pub fn statefulset(t: &Target<'_>, pki_hash: &str) -> Result<StatefulSet, serde_json::Error> {
    let spec = &t.vc.spec;
    let cp = &spec.control_plane;
    let images = spec.images();
    let res = cp.resources.as_ref();
    let replicas = match t.etcd.growth {
        _ if spec.paused => 0,
        Some(super::ha::Growth::Joining { pods }) if cp.replicas > 0 => pods,
        _ => cp.replicas,
    };
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let https_probe = |path: &str, port: &str, period: i32, failures: i32| {
        json!({"httpGet": {"path": path, "port": port, "scheme": "HTTPS"},
               "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures})
    };

    let mut extra_volumes = Vec::new();
    let kine = cp.datastore.runs_kine();
    let members = super::ha::etcd_members(t);
    let cluster = super::ha::etcd_cluster(t);
    let command = match members {
        Some(n) if cluster => Some(super::ha::etcd_cluster_command(t, n)),
        _ => datastore_command(cp.datastore),
    };
    let datastore = command.map(|cmd| {
        let (cmd, env, tls) = match &cp.external_database {
            Some(db) if cp.datastore == Datastore::ExternalDatabase => {
                with_external_database(cmd, db, t.database_client_cert)
            }
            _ => (cmd, json!([]), None),
        };
        let (ds_cmd, ds_args) = command_args(cmd);
        let mounts = match (&tls, cp.datastore.is_external()) {
            (Some(_), _) => {
                json!([{"name": "database-tls", "mountPath": DATABASE_TLS_DIR, "readOnly": true}])
            }
            (None, true) => json!([]),
            (None, false) => json!([{"name": "data", "mountPath": DATA_DIR}]),
        };
        extra_volumes.extend(tls);
        let mut datastore = json!({
            "name": if kine { "kine" } else { "etcd" },
            "image": if kine { &images.kine } else { &images.etcd },
            "command": ds_cmd,
            "args": ds_args,
            "env": env,
            "resources": resources(res.and_then(|r| r.datastore.as_ref()), "100m", "256Mi"),
            "securityContext": restricted,
            "volumeMounts": mounts,
        });
        if cp.datastore == Datastore::Etcd {
            let http_probe = |path: &str, period: i32, failures: i32| {
                json!({"httpGet": {"path": path, "port": "etcd-metrics", "scheme": "HTTP"},
                   "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures})
            };
            datastore["ports"] =
                json!([{"name": "etcd-metrics", "containerPort": ETCD_METRICS_PORT}]);
            datastore["livenessProbe"] = http_probe("/livez", 10, 6);
            datastore["readinessProbe"] = http_probe("/readyz", 5, 3);
            datastore["startupProbe"] = http_probe("/livez", 5, 30);
            if cluster {
                super::ha::etcd_cluster_container(&mut datastore);
            }
        }
        datastore
    });
    if cluster {
        extra_volumes.push(super::ha::etcd_pki_volume(t));
    }

    let mut as_command = apiserver_command();
    let mut as_mounts =
        vec![json!({"name": "apiserver-pki", "mountPath": APISERVER_PKI_DIR, "readOnly": true})];
    if cp.datastore == Datastore::ExternalDatabase {
        as_command = with_prefix(as_command, &t.vcref.uid);
    }
    if t.kubelet_ca.is_some() {
        // the tenant's Nodes advertise kvtenant's kubelet proxy: verify who answers there
        as_command.push(format!(
            "--kubelet-certificate-authority={APISERVER_PKI_DIR}/{}",
            pki::keys::KUBELET_CA_CRT
        ));
    }
    if let Some(external) = &cp.external_etcd {
        as_command = with_external_etcd(as_command, &t.vcref.uid, external);
        if let Some(secret) = &external.tls_secret_ref {
            as_mounts.push(
                json!({"name": "etcd-client", "mountPath": ETCD_CLIENT_DIR, "readOnly": true}),
            );
            let items: Vec<_> = [etcd_keys::CA, etcd_keys::CERT, etcd_keys::KEY]
                .iter()
                .map(|k| json!({"key": k, "path": k}))
                .collect();
            extra_volumes.push(json!({"name": "etcd-client", "secret": {
                "secretName": secret.name, "defaultMode": 0o440, "items": items,
            }}));
        }
    }
    let (as_cmd, as_args) = command_args(as_command);
    let apiserver = json!({
        "name": "kube-apiserver",
        "image": images.apiserver,
        "command": as_cmd,
        "args": as_args,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "https", "containerPort": APISERVER_PORT, "protocol": "TCP"}],
        "resources": resources(res.and_then(|r| r.apiserver.as_ref()), "250m", "512Mi"),
        "securityContext": restricted,
        "readinessProbe": https_probe("/readyz", "https", 5, 3),
        "livenessProbe": https_probe("/livez", "https", 10, 6),
        "startupProbe": https_probe("/livez", "https", 5, 60),
        "volumeMounts": as_mounts,
    });

    let mut cm_command = controller_manager_command();
    if cp.replicas > 1 {
        // more than one pod: one controller-manager works at a time
        for a in cm_command
            .iter_mut()
            .filter(|a| a.starts_with("--leader-elect="))
        {
            *a = "--leader-elect=true".into();
        }
    }
    let (cm_cmd, cm_args) = command_args(cm_command);
    let controller_manager = json!({
        "name": "kube-controller-manager",
        "image": images.controller_manager,
        "command": cm_cmd,
        "args": cm_args,
        "ports": [{"name": "kcm-https", "containerPort": CONTROLLER_MANAGER_PORT, "protocol": "TCP"}],
        "resources": resources(res.and_then(|r| r.controller_manager.as_ref()), "100m", "128Mi"),
        "securityContext": restricted,
        "livenessProbe": https_probe("/healthz", "kcm-https", 10, 6),
        "startupProbe": https_probe("/healthz", "kcm-https", 5, 60),
        "volumeMounts": [
            {"name": "controller-manager", "mountPath": CONTROLLER_MANAGER_DIR, "readOnly": true},
            {"name": "controller-manager-certs", "mountPath": CONTROLLER_MANAGER_CERT_DIR},
        ],
    });

    let items = |keys: &[&str]| -> serde_json::Value {
        keys.iter().map(|k| json!({"key": k, "path": k})).collect()
    };
    use pki::keys as k;
    let mut pvc_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cp.storage.size}},
    });
    if let Some(class) = &cp.storage.storage_class_name {
        pvc_spec["storageClassName"] = json!(class);
    }
    let mut apiserver_files = vec![
        k::CA_CRT,
        k::APISERVER_CRT,
        k::APISERVER_KEY,
        k::FRONT_PROXY_CA_CRT,
        k::FRONT_PROXY_CLIENT_CRT,
        k::FRONT_PROXY_CLIENT_KEY,
        k::KUBELET_CLIENT_CRT,
        k::KUBELET_CLIENT_KEY,
        k::ADMISSION_CONFIG,
        k::WEBHOOK_KUBECONFIG,
        k::SA_KEY,
        k::SA_PUB,
    ];
    if t.kubelet_ca.is_some() {
        apiserver_files.push(k::KUBELET_CA_CRT);
    }
    let mut volumes = vec![
        json!({"name": "apiserver-pki", "secret": {
            "secretName": t.names.pki_secret, "defaultMode": 0o440,
            "items": items(&apiserver_files),
        }}),
        json!({"name": "controller-manager", "secret": {
            "secretName": t.names.pki_secret, "defaultMode": 0o440,
            "items": items(&[k::CA_CRT, k::SA_KEY, k::CONTROLLER_MANAGER_CONF]),
        }}),
        json!({"name": "controller-manager-certs", "emptyDir": {}}),
    ];
    volumes.extend(extra_volumes);
    let containers: Vec<_> = datastore
        .into_iter()
        .chain([apiserver, controller_manager])
        .collect();
    let mut meta = t.meta(&t.names.statefulset);
    if let Some(n) = members {
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        // a growing etcd has its one member until the new ones vote
        let (n, growth) = match t.etcd.growth {
            Some(super::ha::Growth::Joining { .. }) => (1, Some("joining")),
            Some(super::ha::Growth::Done) => (n, Some("done")),
            None => (n, None),
        };
        annotations.insert(super::ha::ETCD_MEMBERS.to_owned(), n.to_string());
        if let Some(g) = growth {
            annotations.insert(super::ha::ETCD_GROWTH.to_owned(), g.to_owned());
        }
    }
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "serviceName": t.names.statefulset,
            "selector": {"matchLabels": t.pod_labels()},
            // an etcd cluster's members must start together to form a quorum; one that grew
            // from a single member keeps the policy it was made with (it is immutable)
            "podManagementPolicy": if cluster && t.etcd.growth.is_none() { "Parallel" } else { "OrderedReady" },
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "template": {
                "metadata": {
                    "labels": t.pod_labels(),
                    "annotations": {PKI_HASH: pki_hash},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": containers,
                    "volumes": volumes,
                },
            },
            // an external datastore keeps the data: the pod has no volume of its own
            "volumeClaimTemplates": if cp.datastore.is_external() { json!([]) } else { json!([{
                "metadata": {"name": "data", "labels": t.vcref.labels()},
                "spec": pvc_spec,
            }]) },
        }
    }))?;
    if cp.replicas > 1
        && let Some(pod) = sts.spec.template.spec.as_mut()
    {
        pod.topology_spread_constraints = Some(serde_json::from_value(super::ha::spread(t))?);
    }
    Ok(sts)
}
