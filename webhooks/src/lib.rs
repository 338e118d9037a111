//! Admission: proxy of the host KubeVirt webhooks and the tenant VM policy.
//!
//! Not built yet: see the webhooks issue.
