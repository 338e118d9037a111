//! What a Pod references by name in its namespace and needs on the host: Secrets and ConfigMaps
//! (volumes, projected sources, env, envFrom, image pull secrets) and PersistentVolumeClaims.
//! ServiceAccounts are not among them: a host pod never runs as a host ServiceAccount
//! ([`super::identity`]).

use serde_json::Value;

use super::identity::is_token_projection;
use super::{containers, volumes};
use crate::kinds::{config_map, secret};
use crate::vm::refs::{ObjRef, push, push_volume_sources};

/// Everything the pod spec references (sorted, no duplicates).
pub fn references(spec: &Value) -> Vec<ObjRef> {
    let mut out = Vec::new();
    for (_, vol) in volumes(spec) {
        push_volume_sources(&mut out, vol);
        push(
            &mut out,
            secret::KIND,
            vol.pointer("/csi/nodePublishSecretRef/name"),
        );
        // the service-account projection is replaced on the host by the tenant's token
        if is_token_projection(vol) {
            continue;
        }
        for src in vol
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            push(&mut out, secret::KIND, src.pointer("/secret/name"));
            push(&mut out, config_map::KIND, src.pointer("/configMap/name"));
        }
    }
    for (_, c) in containers(spec) {
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            push(
                &mut out,
                secret::KIND,
                e.pointer("/valueFrom/secretKeyRef/name"),
            );
            push(
                &mut out,
                config_map::KIND,
                e.pointer("/valueFrom/configMapKeyRef/name"),
            );
        }
        for e in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            push(&mut out, secret::KIND, e.pointer("/secretRef/name"));
            push(&mut out, config_map::KIND, e.pointer("/configMapRef/name"));
        }
    }
    for s in spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        push(&mut out, secret::KIND, s.get("name"));
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(refs: &[ObjRef], kind: &str) -> Vec<String> {
        refs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.name.clone())
            .collect()
    }

    #[test]
    fn volumes_env_and_pull_secrets_are_followed_but_not_the_token_projection() {
        let spec = json!({
            "volumes": [
                {"name": "a", "configMap": {"name": "conf"}},
                {"name": "b", "secret": {"secretName": "creds"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "projcm"}}]}},
                {"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"downwardAPI": {"items": []}}]}},
            ],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "envsecret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "envcm", "key": "k"}}},
                {"name": "C", "value": "x"}],
                "envFrom": [{"configMapRef": {"name": "fromcm"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "initsecret"}}]}],
            "imagePullSecrets": [{"name": "pull"}],
            "serviceAccountName": "builder",
        });
        let r = references(&spec);
        assert_eq!(
            names(&r, "Secret"),
            ["creds", "envsecret", "initsecret", "proj", "pull"]
        );
        assert_eq!(
            names(&r, "ConfigMap"),
            ["conf", "envcm", "fromcm", "projcm"]
        );
        assert_eq!(names(&r, "PersistentVolumeClaim"), ["data"]);
        assert!(names(&r, "ServiceAccount").is_empty());
    }
}
