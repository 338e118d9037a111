//! A hostile tenant, counted: what a tenant admin (root in their virtual cluster, kvtenant's
//! webhooks deleted) sends that would make the host act for them, on real apiservers (testenv:
//! KubeVirt's real virt-api and virt-controller on the host; nodes, pods and virt-handler
//! simulated: no VM boots). Every scenario records a row of RELIABILITY.md's hostile-input or
//! isolation table ([`report::Finding`]; `.ci/reliability` regenerates the file) after its
//! assertions held.
//!
//! - [`vms`]: VM fields and annotations that act on the host, refused by the syncer;
//! - [`pods`]: Pod escapes (host namespaces, hostPath, privilege, scheduling), refused;
//! - [`paths`]: crafted subresource-proxy and kubelet-proxy paths;
//! - [`names`]: huge, deep, unicode and colliding names;
//! - [`specs`]: malformed VirtualCluster specs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "hostile/names.rs"]
mod names;
#[path = "hostile/paths.rs"]
mod paths;
#[path = "hostile/pods.rs"]
mod pods;
#[path = "hostile/report.rs"]
mod report;
#[path = "hostile/specs.rs"]
mod specs;
#[path = "hostile/vms.rs"]
mod vms;

use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(120);
