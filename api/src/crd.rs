//! The CustomResourceDefinitions of kvtenant's API and their committed YAML.
//!
//! The YAML is committed at `api/crds/tenancy.kvtenant.io_virtualclusters.yaml` (the file
//! `deploy/` and users apply). The unit test `crd_yaml_is_up_to_date` fails when it is stale;
//! regenerate it with `cargo run -p kvtenant-api --example gen-crds` or by running the tests
//! with `KVTENANT_UPDATE_CRDS=1`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::VirtualCluster;

/// The committed CRD YAML's path, relative to the `api/` crate directory.
pub const CRD_YAML_PATH: &str = "crds/tenancy.kvtenant.io_virtualclusters.yaml";

/// The environment variable that makes `crd_yaml_is_up_to_date` rewrite the committed file.
pub const UPDATE_ENV: &str = "KVTENANT_UPDATE_CRDS";

/// Every CRD of kvtenant's API, ready to apply (server-side apply, field manager `kvtenant`).
///
/// Prefer this over `VirtualCluster::crd()`: it is the same schema with tidier descriptions
/// (Quantity boilerplate dropped, doc-comment lines joined into paragraphs), which is what
/// `kubectl explain` shows.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![tidy(VirtualCluster::crd())]
}

/// The CRDs as a multi-document YAML stream, exactly as committed at [`CRD_YAML_PATH`].
pub fn crd_yaml() -> String {
    let mut out = String::from(
        "# Generated from the Rust types in api/src by `cargo run -p kvtenant-api --example gen-crds`.\n\
         # Do not edit by hand.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        match serde_yaml::to_string(&crd) {
            Ok(doc) => out.push_str(&doc),
            // Serializing a CRD (plain data) cannot fail; keep the stream valid YAML regardless.
            Err(e) => out.push_str(&format!("# serialization failed: {e}\n")),
        }
    }
    out
}

/// The start of k8s-openapi's description of `Quantity`.
const QUANTITY_BOILERPLATE: &str = "Quantity is a fixed-point representation of a number.";

/// The CRD with tidier descriptions (see [`crds`]); other CRDs embedding kvtenant types use it too.
pub fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    tidy_descriptions(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Tidies every `description` in a schema (as JSON):
/// - drops the 2 KB boilerplate k8s-openapi attaches to every embedded `Quantity` (map values of
///   ResourceRequirements, ResourceQuotaSpec, LimitRangeSpec), half of the CRD otherwise;
/// - joins the lines of a doc-comment paragraph (rustdoc wraps at 100 columns; kubectl explain
///   wraps again), keeping blank lines and lines that start a list item or are indented.
fn tidy_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            match map.get("description").and_then(|d| d.as_str()) {
                Some(d) if d.starts_with(QUANTITY_BOILERPLATE) => {
                    map.remove("description");
                }
                Some(d) => {
                    let joined = join_lines(d);
                    map.insert("description".into(), joined.into());
                }
                None => {}
            }
            map.values_mut().for_each(tidy_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy_descriptions),
        _ => {}
    }
}

fn join_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        if let Some(next) = lines.peek() {
            let paragraph_break = line.trim().is_empty() || next.trim().is_empty();
            let list_or_indented = next.starts_with([' ', '\t', '-', '*']);
            out.push(if paragraph_break || list_or_indented {
                '\n'
            } else {
                ' '
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
