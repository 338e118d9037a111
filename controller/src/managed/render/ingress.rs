//! The Ingress in front of a Managed apiserver (`spec.expose.ingress`): TLS passthrough by host
//! name to the `<vc>-apiserver` Service, so the apiserver keeps terminating TLS and client
//! certificates keep working.

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;

use super::*;

/// The Ingress, when the spec asks for one (named like the apiserver Service).
pub fn ingress(t: &Target<'_>) -> Result<Option<Ingress>, serde_json::Error> {
    let Some(spec) = &t.vc.spec.expose.ingress else {
        return Ok(None);
    };
    let mut meta = t.meta(&t.names.service);
    meta.annotations = Some(
        spec.annotations
            .clone()
            .unwrap_or_else(kvtenant_api::default_ingress_annotations),
    );
    let mut body = json!({
        "metadata": meta,
        "spec": {
            "rules": [{
                "host": spec.host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": t.names.service, "port": {"number": SERVICE_PORT}}},
                }]},
            }],
        }
    });
    if let Some(class) = &spec.ingress_class_name {
        body["spec"]["ingressClassName"] = json!(class);
    }
    serde_json::from_value(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtenant_api::VirtualClusterSpec;

    fn vc(ingress: serde_json::Value) -> VirtualCluster {
        let mut spec = VirtualClusterSpec::default();
        spec.expose.ingress = serde_json::from_value(ingress).unwrap();
        let mut vc = VirtualCluster::new("alpha", spec);
        vc.metadata.namespace = Some("tenants".into());
        vc.metadata.uid = Some("uid-1".into());
        vc
    }

    #[test]
    fn passthrough_by_host_to_the_apiserver_service() {
        let v = vc(json!({"host": "alpha.tenants.example.com", "ingressClassName": "nginx"}));
        let t = Target::new(&v).unwrap();
        let ing = ingress(&t).unwrap().unwrap();
        let annotations = ing.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/ssl-passthrough"],
            "true"
        );
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("alpha.tenants.example.com"));
        let backend = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(backend.name, "alpha-apiserver");
        assert_eq!(backend.port.unwrap().number, Some(i32::from(SERVICE_PORT)));
        // the host is in the certificate and the kubeconfig
        assert!(apiserver_sans(&t, None).contains(&"alpha.tenants.example.com".to_owned()));
        assert_eq!(endpoint(&t, None), "https://alpha.tenants.example.com:443");
    }

    #[test]
    fn own_annotations_replace_the_defaults_and_extra_sans_keep_the_endpoint() {
        let mut v = vc(
            json!({"host": "a.example.com", "annotations": {"haproxy.org/ssl-passthrough": "true"}}),
        );
        v.spec.expose.extra_sans = vec!["lb.example.com".into()];
        let t = Target::new(&v).unwrap();
        let ing = ingress(&t).unwrap().unwrap();
        assert_eq!(
            ing.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["haproxy.org/ssl-passthrough"]
        );
        assert_eq!(endpoint(&t, None), "https://lb.example.com:443");
        let none = VirtualCluster::new("b", VirtualClusterSpec::default());
        let mut none = none;
        none.metadata.namespace = Some("tenants".into());
        none.metadata.uid = Some("u".into());
        assert!(ingress(&Target::new(&none).unwrap()).unwrap().is_none());
    }
}
