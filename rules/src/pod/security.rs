//! The Pod Security Standards (baseline and restricted, as of Kubernetes 1.34), checked by the
//! syncer before a Pod reaches the host: the tenant's own Pod Security admission is the tenant
//! admin's to turn off, so the level that holds is the VirtualCluster's
//! (`spec.isolation.podSecurity`; the host namespaces carry it as well).

use kvtenant_api::PodSecurityLevel;
use serde_json::Value;

use super::{containers, volumes};
use crate::Violation;

/// Capabilities the baseline level allows adding.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls the baseline level allows (namespaced and safe).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types the baseline level allows.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn truthy(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Why the pod (its `metadata` and `spec`) breaks the level; empty when it does not.
pub fn check(pod: &Value, level: PodSecurityLevel) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == PodSecurityLevel::Privileged {
        return out;
    }
    let Some(spec) = pod.get("spec") else {
        return out;
    };
    let name = level.as_str();
    let mut deny = |path: String, what: &str| {
        out.push(Violation::new(
            path,
            format!(
                "{what} is not allowed by this virtual cluster's Pod Security level {name:?} \
                 (VirtualCluster spec.isolation.podSecurity)"
            ),
        ));
    };
    baseline(pod, spec, &mut deny);
    if level == PodSecurityLevel::Restricted {
        restricted(spec, &mut deny);
    }
    out
}

fn baseline(pod: &Value, spec: &Value, deny: &mut impl FnMut(String, &str)) {
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(spec.get(field)) {
            deny(format!("spec.{field}"), &format!("{field}: true"));
        }
    }
    let pod_sc = spec.get("securityContext").unwrap_or(&Value::Null);
    security_context(pod_sc, "spec.securityContext", deny);
    for (i, s) in pod_sc
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = s.get("name").and_then(Value::as_str).unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&n) {
            deny(
                format!("spec.securityContext.sysctls[{i}]"),
                &format!("sysctl {n:?}"),
            );
        }
    }
    for (path, vol) in volumes(spec) {
        if vol.get("hostPath").is_some() {
            deny(format!("{path}.hostPath"), "a hostPath volume");
        }
    }
    for (path, c) in containers(spec) {
        let sc = c.get("securityContext").unwrap_or(&Value::Null);
        let sc_path = format!("{path}.securityContext");
        security_context(sc, &sc_path, deny);
        if truthy(sc.get("privileged")) {
            deny(format!("{sc_path}.privileged"), "a privileged container");
        }
        if let Some(m) = str_at(sc, "/procMount").filter(|m| *m != "Default") {
            deny(format!("{sc_path}.procMount"), &format!("procMount {m:?}"));
        }
        for cap in sc
            .pointer("/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                deny(
                    format!("{sc_path}.capabilities.add"),
                    &format!("adding capability {cap}"),
                );
            }
        }
        for (j, p) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                deny(format!("{path}.ports[{j}].hostPort"), "a hostPort");
            }
        }
    }
    for (k, v) in pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let v = v.as_str().unwrap_or_default();
            if v != "runtime/default" && !v.starts_with("localhost/") {
                deny(
                    format!("metadata.annotations[{k}]"),
                    &format!("AppArmor profile {v:?}"),
                );
            }
        }
    }
}

/// The checks a pod's and a container's security context share.
fn security_context(sc: &Value, path: &str, deny: &mut impl FnMut(String, &str)) {
    if truthy(sc.pointer("/windowsOptions/hostProcess")) {
        deny(
            format!("{path}.windowsOptions.hostProcess"),
            "a Windows host process",
        );
    }
    if str_at(sc, "/seccompProfile/type") == Some("Unconfined") {
        deny(
            format!("{path}.seccompProfile.type"),
            "seccomp profile Unconfined",
        );
    }
    if str_at(sc, "/appArmorProfile/type") == Some("Unconfined") {
        deny(
            format!("{path}.appArmorProfile.type"),
            "AppArmor profile Unconfined",
        );
    }
    if let Some(se) = sc.get("seLinuxOptions") {
        let t = str_at(se, "/type").unwrap_or_default();
        if !SELINUX_TYPES.contains(&t) {
            deny(
                format!("{path}.seLinuxOptions.type"),
                &format!("SELinux type {t:?}"),
            );
        }
        for f in ["user", "role"] {
            if str_at(se, &format!("/{f}")).is_some_and(|s| !s.is_empty()) {
                deny(
                    format!("{path}.seLinuxOptions.{f}"),
                    &format!("setting the SELinux {f}"),
                );
            }
        }
    }
}

fn restricted(spec: &Value, deny: &mut impl FnMut(String, &str)) {
    for (path, vol) in volumes(spec) {
        let kind = vol
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| *k != "name")
            .unwrap_or_default();
        if !kind.is_empty() && !RESTRICTED_VOLUMES.contains(&kind) && kind != "hostPath" {
            deny(format!("{path}.{kind}"), &format!("a {kind} volume"));
        }
    }
    let pod_sc = spec.get("securityContext").unwrap_or(&Value::Null);
    let pod_non_root = truthy(pod_sc.get("runAsNonRoot"));
    let pod_seccomp = str_at(pod_sc, "/seccompProfile/type");
    if pod_sc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
        deny("spec.securityContext.runAsUser".into(), "runAsUser 0");
    }
    for (path, c) in containers(spec) {
        let sc = c.get("securityContext").unwrap_or(&Value::Null);
        let p = format!("{path}.securityContext");
        if sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
            deny(
                format!("{p}.allowPrivilegeEscalation"),
                "leaving allowPrivilegeEscalation unset or true (set it to false)",
            );
        }
        let non_root = sc
            .get("runAsNonRoot")
            .and_then(Value::as_bool)
            .unwrap_or(pod_non_root);
        if !non_root {
            deny(
                format!("{p}.runAsNonRoot"),
                "running without runAsNonRoot: true",
            );
        }
        if sc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
            deny(format!("{p}.runAsUser"), "runAsUser 0");
        }
        let seccomp = str_at(sc, "/seccompProfile/type").or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            deny(
                format!("{p}.seccompProfile.type"),
                "running without seccomp profile RuntimeDefault or Localhost",
            );
        }
        let caps = |list: &str| -> Vec<&str> {
            sc.pointer(&format!("/capabilities/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect()
        };
        if !caps("drop").contains(&"ALL") {
            deny(
                format!("{p}.capabilities.drop"),
                "keeping capabilities (drop ALL)",
            );
        }
        for cap in caps("add").into_iter().filter(|c| *c != "NET_BIND_SERVICE") {
            deny(
                format!("{p}.capabilities.add"),
                &format!("adding capability {cap}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(pod: &Value, level: PodSecurityLevel) -> Vec<String> {
        check(pod, level).into_iter().map(|v| v.path).collect()
    }

    #[test]
    fn baseline_refuses_every_known_escape_and_allows_a_plain_pod() {
        let plain = json!({"spec": {"containers": [{"name": "c", "image": "nginx",
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}});
        assert!(check(&plain, PodSecurityLevel::Baseline).is_empty());
        let bad = json!({
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
        "spec": {
            "hostNetwork": true, "hostPID": true, "hostIPC": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}],
                "seLinuxOptions": {"type": "spc_t"}},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": true, "procMount": "Unmasked",
                    "capabilities": {"add": ["SYS_ADMIN"]},
                    "seccompProfile": {"type": "Unconfined"}}}],
            "initContainers": [{"name": "i", "securityContext": {"windowsOptions": {"hostProcess": true}}}],
        }});
        let p = paths(&bad, PodSecurityLevel::Baseline);
        for want in [
            "spec.hostNetwork",
            "spec.hostPID",
            "spec.hostIPC",
            "spec.securityContext.sysctls[0]",
            "spec.securityContext.seLinuxOptions.type",
            "spec.volumes[0].hostPath",
            "spec.containers[0].ports[0].hostPort",
            "spec.containers[0].securityContext.privileged",
            "spec.containers[0].securityContext.procMount",
            "spec.containers[0].securityContext.capabilities.add",
            "spec.containers[0].securityContext.seccompProfile.type",
            "spec.initContainers[0].securityContext.windowsOptions.hostProcess",
            "metadata.annotations[container.apparmor.security.beta.kubernetes.io/c]",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
        }
        assert!(check(&bad, PodSecurityLevel::Privileged).is_empty());
        let msg = &check(&bad, PodSecurityLevel::Baseline)[0].message;
        assert!(msg.contains("spec.isolation.podSecurity"), "{msg}");
    }

    #[test]
    fn restricted_wants_the_hardened_pod() {
        let hardened = json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}});
        assert!(check(&hardened, PodSecurityLevel::Restricted).is_empty());
        let plain = json!({"spec": {"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}],
            "containers": [{"name": "c"}]}});
        let p = paths(&plain, PodSecurityLevel::Restricted);
        for want in [
            "spec.volumes[0].nfs",
            "spec.containers[0].securityContext.allowPrivilegeEscalation",
            "spec.containers[0].securityContext.runAsNonRoot",
            "spec.containers[0].securityContext.seccompProfile.type",
            "spec.containers[0].securityContext.capabilities.drop",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
        }
        assert!(check(&plain, PodSecurityLevel::Baseline).is_empty());
    }
}
