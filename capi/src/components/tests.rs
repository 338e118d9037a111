#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn components_follow_clusterctls_rules() {
    for kind in [Kind::ControlPlane, Kind::Infrastructure] {
        let text = components(kind, "v0.3.1");
        // clusterctl substitutes the whole text, comments included: one variable, defaulted
        assert!(substitute(&text, &|_| None).is_ok());
        let objects = docs(&text);
        // exactly one Namespace; everything namespaced is in it
        let namespaces: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .collect();
        assert_eq!(namespaces.len(), 1);
        assert_eq!(namespaces[0]["metadata"]["name"], kind.namespace());
        for o in &objects {
            assert_eq!(
                o["metadata"]["labels"][PROVIDER_LABEL],
                kind.provider(),
                "{} lacks the provider label",
                o["kind"]
            );
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                assert_eq!(ns, kind.namespace());
            }
        }
        // the controller's container is `manager`, versioned image behind a variable
        let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "manager");
        assert_eq!(
            c["image"],
            "${KVTENANT_IMAGE:=ghcr.io/kvtenant/kvtenant:v0.3.1}"
        );
        // the CRD maps the contract to its version; the core manager is aggregated in
        let crd = objects
            .iter()
            .find(|o| o["kind"] == "CustomResourceDefinition")
            .unwrap();
        assert_eq!(
            crd["metadata"]["labels"]["cluster.x-k8s.io/v1beta2"],
            "v1alpha1"
        );
        assert!(objects.iter().any(|o| o["kind"] == "ClusterRole"
            && o["metadata"]["labels"]["cluster.x-k8s.io/aggregate-to-manager"] == "true"));
    }
}

#[test]
fn metadata_names_the_release_series_and_contract() {
    let m: Value = serde_yaml::from_str(&metadata("v0.3.1")).unwrap();
    assert_eq!(m["apiVersion"], "clusterctl.cluster.x-k8s.io/v1alpha3");
    assert_eq!(m["kind"], "Metadata");
    assert_eq!(m["releaseSeries"][0]["major"], 0);
    assert_eq!(m["releaseSeries"][0]["minor"], 3);
    assert_eq!(m["releaseSeries"][0]["contract"], "v1beta2");
}

#[test]
fn the_template_substitutes_like_clusterctl() {
    let vars = |n: &str| match n {
        "CLUSTER_NAME" => Some("alpha".to_owned()),
        "NAMESPACE" => Some("team".to_owned()),
        "KUBERNETES_VERSION" => Some("v1.37.2".to_owned()),
        "KVTENANT_EXPOSE_TYPE" => Some(String::new()),
        _ => None,
    };
    let objects = docs(&substitute(&cluster_template(), &vars).unwrap());
    assert_eq!(objects.len(), 3);
    let cluster = &objects[0];
    assert_eq!(cluster["metadata"]["name"], "alpha");
    assert_eq!(
        cluster["spec"]["controlPlaneRef"]["name"],
        "alpha-control-plane"
    );
    let cp = &objects[2];
    assert_eq!(cp["spec"]["version"], "v1.37.2");
    // empty: the default
    assert_eq!(cp["spec"]["virtualCluster"]["expose"]["type"], "ClusterIP");
    assert!(substitute(&cluster_template(), &|_| None).is_err());
    assert_eq!(
        substitute("a ${ X:-d } b ${Y}", &|n| (n == "Y").then(|| "y".into())).unwrap(),
        "a d b y"
    );
}

#[test]
fn the_cluster_class_names_the_template_kinds_of_both_providers() {
    let vars = |n: &str| (n == "NAMESPACE").then(|| "team".to_owned());
    let objects = docs(&substitute(&cluster_class(), &vars).unwrap());
    let class = &objects[0];
    assert_eq!(class["kind"], "ClusterClass");
    let cp_ref = &class["spec"]["controlPlane"]["templateRef"];
    let infra_ref = &class["spec"]["infrastructure"]["templateRef"];
    for r in [cp_ref, infra_ref] {
        let made = objects
            .iter()
            .find(|o| o["kind"] == r["kind"] && o["apiVersion"] == r["apiVersion"])
            .unwrap_or_else(|| panic!("no {r} in the file"));
        assert_eq!(made["metadata"]["name"], r["name"]);
        assert_eq!(made["metadata"]["namespace"], "team");
    }
    assert_eq!(cp_ref["kind"], "KvtenantControlPlaneTemplate");
    let topology = docs(
        &substitute(&cluster_template_topology(), &|n| match n {
            "CLUSTER_NAME" => Some("a".into()),
            "NAMESPACE" => Some("team".into()),
            "KUBERNETES_VERSION" => Some("v1.37.2".into()),
            _ => None,
        })
        .unwrap(),
    );
    assert_eq!(
        topology[0]["spec"]["topology"]["classRef"]["name"],
        "kvtenant"
    );
    // both providers install their template CRD; Cluster API's manager may read and patch them
    for kind in [Kind::ControlPlane, Kind::Infrastructure] {
        let objects = docs(&components(kind, "v0.1.0"));
        let crds: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|o| o["spec"]["names"]["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(crds.len(), 2, "{crds:?}");
        assert!(crds[1].ends_with("Template"), "{crds:?}");
        let aggregated = objects
            .iter()
            .find(|o| o["metadata"]["labels"]["cluster.x-k8s.io/aggregate-to-manager"] == "true")
            .unwrap();
        let plural = format!("{}s", crds[1].to_lowercase());
        assert!(
            aggregated["rules"].to_string().contains(&plural),
            "{plural}: {}",
            aggregated["rules"]
        );
    }
}
