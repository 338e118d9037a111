//! Real Kubernetes control planes for tests and local runs, and KubeVirt's real control plane on
//! them.
//!
//! `kube-apiserver`, `kube-controller-manager` and `etcd` are built from pinned Go modules (see
//! [`binaries`], versions in [`versions`]) and started on 127.0.0.1 with random ports and their
//! own PKI ([`controlplane::ControlPlane`]). [`kubevirt::KubeVirt`] runs KubeVirt's real
//! virt-api and virt-controller, kube-scheduler and kwok (simulated nodes and pods) against a
//! control plane, with a node agent (simulated virt-handler) as the one simulated KubeVirt part,
//! and a simulated CDI ([`cdi`]) and simulated CSI volume snapshots ([`snapshots`]).
//! Every process is killed when its owner is dropped, on panic and on SIGINT/SIGTERM
//! ([`process`]).
pub mod binaries;
pub mod cdi;
pub mod controlplane;
pub mod etcd;
mod gobuild;
pub mod kubevirt;
pub mod multus;
/// Certificates and kubeconfigs (the `kvtenant-pki` crate, shared with the controller).
pub use kvtenant_pki as pki;
pub mod process;
pub mod runner;
pub mod snapshots;
pub mod sqldb;
pub mod testing;
pub mod tools;
pub mod versions;

pub use controlplane::{ControlPlane, Options};
