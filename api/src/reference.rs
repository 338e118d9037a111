//! The configuration reference (`docs/configuration.md`), generated from the CRD schema so it
//! cannot drift from the API. The unit test `reference_is_up_to_date` fails when the committed
//! file is stale; regenerate with `cargo run -p kvtenant-api --example gen-crds`.

use serde_json::Value;

use crate::crds;

/// The committed reference's path, relative to the `api/` crate directory.
pub const REFERENCE_PATH: &str = "../docs/configuration.md";

/// The reference as Markdown: every field of the VirtualCluster spec and status with its type,
/// default, validation and description.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from the CRD schema by `cargo run -p kvtenant-api --example gen-crds`. Do not edit. -->\n\
         # VirtualCluster configuration reference\n\n\
         `tenancy.kvtenant.io/v1alpha1`, kind `VirtualCluster` (namespaced, short name `vc`). Every field \
         below is what `kubectl explain virtualcluster.<path>` shows; defaults are applied by the \
         apiserver.\n",
    );
    for crd in crds() {
        let Ok(value) = serde_json::to_value(&crd) else {
            continue;
        };
        let Some(schema) = value.pointer("/spec/versions/0/schema/openAPIV3Schema") else {
            continue;
        };
        for top in ["spec", "status"] {
            if let Some(s) = schema.pointer(&format!("/properties/{top}")) {
                out.push_str(&format!("\n## `{top}`\n\n"));
                if let Some(d) = s.get("description").and_then(Value::as_str) {
                    out.push_str(&format!("{}\n\n", d.trim()));
                }
                out.push_str(
                    "| field | type | default | description |\n| --- | --- | --- | --- |\n",
                );
                walk(s, top, &mut out, 0);
            }
        }
    }
    out
}

fn type_of(s: &Value) -> String {
    if s.get("x-kubernetes-int-or-string").is_some() {
        return "int or string".into();
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => {
            let item = s.get("items").map(type_of).unwrap_or_else(|| "any".into());
            format!("[]{item}")
        }
        Some("object") if s.get("additionalProperties").is_some() => {
            let v = s
                .get("additionalProperties")
                .map(type_of)
                .unwrap_or_default();
            format!("map[string]{v}")
        }
        Some(t) => {
            let mut t = t.to_string();
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                let vals: Vec<String> = e
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                t = format!("{t}: {}", vals.join(" | "));
            }
            t
        }
        None => "any".into(),
    }
}

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn walk(s: &Value, path: &str, out: &mut String, depth: usize) {
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, p) in props {
        let field = format!("{path}.{name}");
        let default = p
            .get("default")
            .map(|d| format!("`{}`", cell(&d.to_string())))
            .unwrap_or_default();
        let mut desc = p
            .get("description")
            .and_then(Value::as_str)
            .map(cell)
            .unwrap_or_default();
        for rule in p
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(m) = rule.get("message").and_then(Value::as_str) {
                desc.push_str(&format!(" Rule: {}.", cell(m)));
            }
        }
        if let Some(pattern) = p.get("pattern").and_then(Value::as_str) {
            desc.push_str(&format!(" Pattern: `{}`.", cell(pattern)));
        }
        out.push_str(&format!(
            "| `{field}` | {} | {default} | {desc} |\n",
            cell(&type_of(p))
        ));
        // stop at embedded Kubernetes types (ResourceRequirements, Condition, ...): `kubectl
        // explain` documents them
        if depth < 4 {
            walk(p, &field, out, depth + 1);
            if let Some(items) = p.get("items") {
                walk(items, &format!("{field}[]"), out, depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(REFERENCE_PATH);
        let generated = reference_markdown();
        if std::env::var(crate::crd::UPDATE_ENV).is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `cargo run -p kvtenant-api --example gen-crds` to regenerate",
            path.display()
        );
    }

    #[test]
    fn reference_documents_the_fields_users_set() {
        let md = reference_markdown();
        for field in [
            "`spec.controlPlane.mode`",
            "`spec.controlPlane.kubeconfigSecretRef.name`",
            "`spec.kubevirt.syncKinds`",
            "`spec.vmPolicy.allowHostDisk`",
            "`spec.paused`",
            "`status.phase`",
        ] {
            assert!(md.contains(field), "{field} missing from the reference");
        }
    }
}
