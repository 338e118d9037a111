//! The syncer: CRD mirroring, down/up sync of KubeVirt objects between tenant and host,
//! safety checks, and the `subresources.kubevirt.io` proxy.
//!
//! Not built yet: see the kubevirt-sync issue.
