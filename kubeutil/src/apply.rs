//! Server-side apply that skips no-op writes.
//!
//! Each object kvtenant applies carries an annotation with a hash of what was applied
//! ([`APPLIED_HASH`]). When the live object carries the same hash, nothing is sent, so a
//! reconciliation that finds everything in place performs reads only. The price: hand edits to
//! fields kvtenant set are not reverted until the desired object changes.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use kvtenant_api::labels::APPLIED_HASH;

/// Errors of [`apply_if_changed`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// A short content hash (hex) of any serializable value.
pub fn content_hash<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let bytes = serde_json::to_vec(value)?;
    Ok(hex::encode(&Sha256::digest(&bytes)[..12]))
}

/// Applies `obj` with `field_manager` (forcing conflicts) unless the live object already carries
/// its hash. Returns the live (or applied) object and whether a write happened.
pub async fn apply_if_changed<K>(
    api: &Api<K>,
    mut obj: K,
    field_manager: &str,
) -> Result<(K, bool), ApplyError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let name = obj.name_any();
    let what = format!("{kind} {name}");
    let hash = content_hash(&obj).map_err(|source| ApplyError::Serialize {
        what: what.clone(),
        source,
    })?;
    obj.annotations_mut()
        .insert(APPLIED_HASH.to_owned(), hash.clone());
    let live = api
        .get_opt(&name)
        .await
        .map_err(|source| ApplyError::Kube {
            what: format!("reading {what}"),
            source,
        })?;
    if let Some(live) = live
        && live.annotations().get(APPLIED_HASH) == Some(&hash)
        && live.meta().deletion_timestamp.is_none()
    {
        return Ok((live, false));
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|source| ApplyError::Kube {
            what: format!("applying {what}"),
            source,
        })?;
    Ok((applied, true))
}
