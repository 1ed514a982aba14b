//! Writing the objects a resource owns: server-side apply with one field manager, and no
//! request at all when the object already is what this operator last applied.
//!
//! "Already is" is decided by a hash of the desired object kept in an annotation: comparing
//! the live object field by field would see every default the API server added as a change.
//! Someone who edits an owned object by hand keeps the edit until the desired object changes
//! (or the annotation goes): the price of never writing an unchanged object.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// The field manager of every write this operator makes.
pub const FIELD_MANAGER: &str = "pot-operator";
/// The annotation holding the hash of what was last applied.
pub const HASH_ANNOTATION: &str = "pot.dev/applied-hash";

/// The hash of a desired object (as JSON, before the annotation is added).
pub fn hash_of<K: Serialize>(desired: &K) -> String {
    let bytes = serde_json::to_vec(desired).expect("a Kubernetes object serialises");
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// Whether `live` carries the hash of `desired`: nothing to write.
pub fn is_current<K: Serialize + Resource>(desired: &K, live: Option<&K>) -> bool {
    live.and_then(|l| l.annotations().get(HASH_ANNOTATION).cloned()) == Some(hash_of(desired))
}

/// Write `status` into `obj`'s status subresource (server-side apply, this operator's field
/// manager).
pub async fn apply_status<K, S>(
    client: &kube::Client,
    obj: &K,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Apply `desired` unless the live object is already current; true when it wrote.
pub async fn apply<K>(api: &Api<K>, desired: K) -> Result<bool, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired.name_any();
    let live = api.get_opt(&name).await?;
    Ok(apply_over(api, desired, live).await?.0)
}

/// Apply `desired` over `live` (as just read) unless it is current; returns whether it wrote
/// and the object as it now is.
pub async fn apply_over<K>(
    api: &Api<K>,
    mut desired: K,
    live: Option<K>,
) -> Result<(bool, K), kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    if let Some(live) = live.filter(|l| is_current(&desired, Some(l))) {
        return Ok((false, live));
    }
    let name = desired.name_any();
    let hash = hash_of(&desired);
    desired
        .annotations_mut()
        .insert(HASH_ANNOTATION.to_string(), hash);
    let now = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    Ok((true, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn cm(value: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some("x".into());
        c.data = Some(BTreeMap::from([("k".to_string(), value.to_string())]));
        c
    }

    #[test]
    fn only_a_changed_object_is_written() {
        let desired = cm("a");
        let mut live = cm("a");
        assert!(!is_current(&desired, None));
        assert!(!is_current(&desired, Some(&live)));
        live.annotations_mut()
            .insert(HASH_ANNOTATION.into(), hash_of(&desired));
        assert!(is_current(&desired, Some(&live)));
        assert!(!is_current(&cm("b"), Some(&live)));
    }
}
