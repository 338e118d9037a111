//! VirtualCluster reconciler: PKI, tenant control-plane workloads and their lifecycle.
//!
//! Not built yet: see the VirtualCluster API and controller issue.
