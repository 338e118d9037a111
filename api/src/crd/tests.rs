use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;
use crate::{VirtualCluster, VirtualClusterSpec};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(CRD_YAML_PATH)
}

#[test]
fn crd_yaml_is_up_to_date() {
    let path = committed_path();
    let generated = crd_yaml();
    if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p kvtenant-api --example gen-crds` (or set {UPDATE_ENV}=1) to regenerate",
        path.display()
    );
}

#[test]
fn crd_yaml_parses_back_to_the_crds() {
    let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&crd_yaml())
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    assert_eq!(docs, crds());
}

fn schema() -> Value {
    let crd = &crds()[0];
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn crd_identity() {
    let crd = &crds()[0];
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("virtualclusters.tenancy.kvtenant.io")
    );
    assert_eq!(crd.spec.group, crate::GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "VirtualCluster");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["vc".to_owned()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served && v.storage);
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", ".status.phase"),
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Version", ".status.kubernetesVersion"),
            ("Endpoint", ".status.endpoint"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

/// Checks the rules of a structural schema
/// (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>),
/// a bit more strictly: no `anyOf`/`oneOf`/`allOf`/`not` at all, every node typed, defaults of
/// the node's type.
fn check_structural(path: &str, s: &Value, errors: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        errors.push(format!("{path}: schema is not an object"));
        return;
    };
    for key in [
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$ref",
        "definitions",
        "$defs",
        "$schema",
        "const",
    ] {
        if obj.contains_key(key) {
            errors.push(format!("{path}: has {key}"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !preserve && !int_or_string {
        errors.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!("{path}: both properties and additionalProperties"));
    }
    // Every field is documented (item and map-value schemas are described by their field).
    if !path.is_empty()
        && !obj.contains_key("description")
        && !path.ends_with("[]")
        && !path.ends_with("{}")
    {
        errors.push(format!("{path}: no description"));
    }
    if let Some(default) = obj.get("default") {
        let ok = match ty {
            Some("object") => default.is_object(),
            Some("array") => default.is_array(),
            Some("string") => default.is_string(),
            Some("boolean") => default.is_boolean(),
            Some("integer") => default.is_i64() || default.is_u64(),
            _ => int_or_string && (default.is_string() || default.is_i64()),
        };
        if !ok {
            errors.push(format!(
                "{path}: default {default} does not match type {ty:?}"
            ));
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array)
            && !values.contains(default)
        {
            errors.push(format!("{path}: default {default} not in enum"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(&format!("{path}.{k}"), v, errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, errors);
    }
    if let Some(ap) = obj.get("additionalProperties")
        && ap.is_object()
    {
        check_structural(&format!("{path}{{}}"), ap, errors);
    }
}

#[test]
fn schema_is_structural() {
    let mut errors = vec![];
    check_structural("", &schema(), &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Numbers compare as f64 (JSONSchemaProps stores minimum/maximum as floats).
fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                *v = json!(f);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(m) => m.values_mut().for_each(normalize),
        _ => {}
    }
}

/// The CRD holds the schema as k8s-openapi's `JSONSchemaProps`, which silently drops keywords it
/// does not know: check that nothing schemars generated was lost on the way.
#[test]
fn schema_survives_jsonschemaprops() {
    let generate = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let mut raw = serde_json::to_value(generate.into_root_schema_for::<VirtualCluster>()).unwrap();
    let crd = VirtualCluster::crd();
    let mut stored = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    normalize(&mut raw);
    normalize(&mut stored);
    assert_eq!(raw, stored);
}

fn drop_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("description");
            m.values_mut().for_each(drop_descriptions);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_descriptions),
        _ => {}
    }
}

#[test]
fn tidying_changes_descriptions_only() {
    let text = crd_yaml();
    assert!(!text.contains(QUANTITY_BOILERPLATE));
    let mut raw = serde_json::to_value(VirtualCluster::crd()).unwrap();
    let mut tidied = serde_json::to_value(&crds()[0]).unwrap();
    drop_descriptions(&mut raw);
    drop_descriptions(&mut tidied);
    assert_eq!(raw, tidied);
}

#[test]
fn join_lines_keeps_paragraphs_and_lists() {
    assert_eq!(join_lines("a\nb\n\nc\n- d\n  e\nf"), "a b\n\nc\n- d\n  e f");
    let s = schema();
    let mode =
        s["properties"]["spec"]["properties"]["controlPlane"]["properties"]["mode"]["description"]
            .as_str()
            .unwrap();
    assert!(!mode.contains('\n'), "{mode}");
}

fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn validation_rules_are_in_place() {
    let s = schema();
    assert_eq!(rules(&s), [crate::v1alpha1::NAME_RULE]);
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(
        spec["kubernetesVersion"]["pattern"],
        crate::KUBERNETES_VERSION_PATTERN
    );
    assert_eq!(
        spec["dns"]["properties"]["clusterDomain"]["pattern"],
        crate::CLUSTER_DOMAIN_PATTERN
    );
    let cp = &spec["controlPlane"];
    assert_eq!(
        rules(cp),
        [
            "(has(self.mode) && self.mode == 'External') == has(self.kubeconfigSecretRef)",
            crate::v1alpha1::EXTERNAL_ETCD_RULE,
            crate::v1alpha1::EXTERNAL_DATABASE_RULE,
            crate::v1alpha1::KINE_REPLICAS_RULE,
            crate::v1alpha1::ETCD_MEMBERS_RULE
        ]
    );
    assert_eq!(
        rules(&cp["properties"]["externalEtcd"]),
        ["self == oldSelf"]
    );
    assert_eq!(
        rules(&cp["properties"]["externalDatabase"]),
        ["self == oldSelf"]
    );
    assert_eq!(
        rules(&spec["kubernetesVersion"]),
        [
            crate::v1alpha1::NO_DOWNGRADE_RULE,
            crate::v1alpha1::ONE_MINOR_RULE
        ]
    );
    assert_eq!(rules(&cp["properties"]["mode"]), ["self == oldSelf"]);
    assert_eq!(rules(&cp["properties"]["datastore"]), ["self == oldSelf"]);
    assert_eq!(cp["properties"]["replicas"]["minimum"], json!(0.0));
    assert_eq!(cp["properties"]["replicas"]["maximum"], json!(3.0));
    assert_eq!(rules(&cp["properties"]["replicas"]), ["self != 2"]);
    let conditions = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert_eq!(
        spec["kubevirt"]["properties"]["syncKinds"]["x-kubernetes-list-type"],
        "set"
    );
}

/// The apiserver's structural defaulting (apiextensions-apiserver `structuraldefaulting.Default`):
/// a missing (or null non-nullable) property with a default gets it, then the walk recurses into
/// every property, array item and map value.
fn apply_defaults(v: &mut Value, s: &Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    let nullable = ps.get("nullable") == Some(&json!(true));
                    let missing = match map.get(k) {
                        None => true,
                        Some(Value::Null) => !nullable,
                        Some(_) => false,
                    };
                    if let (true, Some(d)) = (missing, ps.get("default")) {
                        map.insert(k.clone(), d.clone());
                    }
                }
                for (k, child) in map.iter_mut() {
                    if let Some(ps) = props.get(k) {
                        apply_defaults(child, ps);
                    }
                }
            } else if let Some(ap) = s.get("additionalProperties") {
                map.values_mut().for_each(|child| apply_defaults(child, ap));
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                items.iter_mut().for_each(|child| apply_defaults(child, is));
            }
        }
        _ => {}
    }
}

/// The defaults the apiserver applies (schema) and the ones Rust applies (serde) agree.
#[test]
fn schema_defaults_match_serde_defaults() {
    let schema = schema();
    let spec_schema = &schema["properties"]["spec"];
    for spec in [
        json!({}),
        json!({"controlPlane": {}}),
        json!({"controlPlane": {"mode": "External", "kubeconfigSecretRef": {"name": "kc"}}}),
        json!({"kubevirt": {"enabled": false}, "isolation": {"podSecurity": "restricted"}}),
        json!({"vmPolicy": {"quota": {"maxVms": 3}}, "expose": {"type": "NodePort"}}),
    ] {
        let from_serde: VirtualClusterSpec = serde_json::from_value(spec.clone()).unwrap();
        let mut defaulted = spec.clone();
        apply_defaults(&mut defaulted, spec_schema);
        let from_schema: VirtualClusterSpec = serde_json::from_value(defaulted.clone()).unwrap();
        assert_eq!(from_schema, from_serde, "spec {spec}");
        // What the apiserver stores is what Rust writes back (nothing lost, nothing added).
        assert_eq!(
            serde_json::to_value(&from_serde).unwrap(),
            defaulted,
            "spec {spec}"
        );
    }
}

/// A null where Rust needs a value is pruned and defaulted by the apiserver, not stored.
#[test]
fn nulls_of_non_optional_fields_are_defaulted() {
    let mut spec = json!({"controlPlane": {"storage": {"size": null}}, "paused": null});
    apply_defaults(&mut spec, &schema()["properties"]["spec"]);
    assert_eq!(spec["controlPlane"]["storage"]["size"], "5Gi");
    assert_eq!(spec["paused"], false);
    serde_json::from_value::<VirtualClusterSpec>(spec).unwrap();
}

#[test]
fn minimal_object_applies_all_defaults() {
    let mut obj = json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": {"name": "alpha", "namespace": "tenants"},
        "spec": {},
    });
    apply_defaults(&mut obj, &schema());
    assert_eq!(
        obj["spec"],
        json!({
            "kubernetesVersion": "v1.37.2",
            "controlPlane": {
                "mode": "Managed",
                "datastore": "Etcd",
                "replicas": 1,
                "storage": {"size": "5Gi"},
            },
            "expose": {"type": "ClusterIP"},
            "kubevirt": {
                "enabled": true,
                "syncKinds": [
                    "VirtualMachine",
                    "VirtualMachineInstance",
                    "VirtualMachineInstanceMigration",
                    "VirtualMachinePool",
                    "VirtualMachineClone",
                ],
                "webhooks": true,
                "subresources": true,
            },
            "isolation": {"networkPolicy": true, "internetEgress": true, "podSecurity": "baseline"},
            "vmPolicy": {"allowHostNodes": false, "allowHostDisk": false,
                "allowMigrations": false},
            "nodes": {},
            "dns": {
                "enabled": true,
                "image": "registry.k8s.io/coredns/coredns:v1.14.7",
                "clusterDomain": "cluster.local",
            },
            "sync": {},
            "paused": false,
        })
    );
}
