//! Server-side apply that skips no-op writes ([`kvtenant_kubeutil::apply`]), with the
//! controller's errors.

use std::fmt::Debug;

use kube::Resource;
use kube::api::Api;
use kvtenant_kubeutil::apply::ApplyError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
pub use kvtenant_kubeutil::apply::APPLIED_HASH;

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Serialize { what, source } => Error::Serialize { what, source },
            ApplyError::Kube { what, source } => Error::kube(what, source),
        }
    }
}

/// Applies `obj` with `field_manager` (forcing conflicts) unless the live object already carries
/// its hash. Returns the live (or applied) object and whether a write happened.
pub async fn apply_if_changed<K>(
    api: &Api<K>,
    obj: K,
    field_manager: &str,
) -> Result<(K, bool), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    Ok(kvtenant_kubeutil::apply::apply_if_changed(api, obj, field_manager).await?)
}
