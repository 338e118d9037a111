//! `connect` when the virtual cluster's apiserver cannot be reached from here (a Managed
//! control plane exposed as ClusterIP has an in-cluster Service DNS name as its server): forward
//! a local port on 127.0.0.1 to the apiserver pod through the host apiserver's pod `portforward`
//! API, like `kubectl port-forward` / `vcluster connect`.
//!
//! The decisions are pure functions (server URL parsing, in-cluster names, the plan, the
//! kubeconfig rewrite, pod and port selection), unit-tested in `forward/tests.rs`; the I/O
//! around them (probe, listing, forwarding) is thin.

pub mod decide;
pub mod pods;
pub mod stream;
#[cfg(test)]
mod tests;

// What the rest of `cli` uses, at the paths it had before the split; the other items stay `pub`
// in their module (an unused `pub use` is an error in this binary crate).
pub use decide::{
    ForwardMode, ForwardOptions, PROBE_TIMEOUT, Plan, forwarded_cluster, plan, probe, server_addr,
};
pub use stream::{Target, bind, serve};
