//! Pods: what they reference ([`refs`]), what never reaches the host ([`security`]: the
//! VirtualCluster's Pod Security level, [`placement`]: host nodes, priority, runtime), and the
//! identity of the host copy ([`identity`]: the tenant's ServiceAccount token instead of a
//! host one, the tenant's namespace in the downward API), where it resolves names
//! ([`dns`]: the tenant's own DNS), and the Multus networks it may ask for ([`networks`]).
//!
//! The functions read a pod spec (`/spec` of a Pod); field paths in violations are those of a
//! Pod.

pub mod dns;
pub mod identity;
pub mod networks;
pub mod placement;
pub mod refs;
pub mod security;

use serde_json::Value;

/// The containers of a pod spec with their field paths (`spec.containers[0]`, ...): containers,
/// init containers and ephemeral containers.
pub fn containers(spec: &Value) -> impl Iterator<Item = (String, &Value)> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |list| {
            spec.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(i, c)| (format!("spec.{list}[{i}]"), c))
        })
}

/// The volumes of a pod spec with their field paths.
pub fn volumes(spec: &Value) -> impl Iterator<Item = (String, &Value)> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (format!("spec.volumes[{i}]"), v))
}
