//! Real Kubernetes control planes for tests and local runs, and a KubeVirt simulator.
//!
//! `kube-apiserver`, `kube-controller-manager` and `etcd` are built from pinned Go modules (see
//! [`binaries`]) and started on 127.0.0.1 with random ports and their own PKI
//! ([`controlplane::ControlPlane`]). Every process is killed when its owner is dropped, on panic
//! and on SIGINT/SIGTERM ([`process`]).
pub mod binaries;
pub mod controlplane;
/// Certificates and kubeconfigs (the `kvtenant-pki` crate, shared with the controller).
pub use kvtenant_pki as pki;
pub mod process;
pub mod simulator;
pub mod testing;

pub use controlplane::{ControlPlane, Options};
