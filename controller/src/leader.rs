//! Lease-based leader election; only the holder reconciles. The elector lives in
//! [`kvtenant_kubeutil::leader`], shared with the syncer.

pub use kvtenant_kubeutil::leader::{LeaderElectionConfig, LeaderElector, LeaderError};
