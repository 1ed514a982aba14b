//! Local volumes, as local-path-provisioner makes them: the default StorageClass `local`, a
//! PersistentVolume with a directory under the kubelet's own for each claim of that class
//! (which the controller manager then binds), and the directory removed once a released
//! volume's reclaim policy says `Delete`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

/// The class this kubelet provisions, made the default.
pub const CLASS: &str = "local";
/// The provisioner name on the class and on each volume it made.
pub const PROVISIONER: &str = "pot.dev/local-path";

/// Create (or keep) the StorageClass.
pub async fn ensure_class(client: &Client) -> anyhow::Result<()> {
    let class: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS, "annotations": {
            "storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    Api::<StorageClass>::all(client.clone())
        .patch(
            CLASS,
            &PatchParams::apply("pot-e2e-kubelet").force(),
            &Patch::Apply(&class),
        )
        .await
        .context("creating the local StorageClass")?;
    Ok(())
}

/// The volume a pending claim of our class needs, or `None` when it needs none.
pub fn volume_for(claim: &PersistentVolumeClaim, root: &Path) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    if spec.storage_class_name.as_deref() != Some(CLASS)
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || claim.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let ns = claim.namespace()?;
    let name = claim.name_any();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let dir = root.join(format!("{ns}_{name}_{uid}"));
    serde_json::from_value(json!({
        "metadata": {"name": format!("pvc-{uid}"),
                     "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": CLASS,
            "hostPath": {"path": dir.display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": ns, "name": name, "uid": uid},
        }
    }))
    .ok()
}

/// A released volume of ours whose directory and object should go.
pub fn reclaimable(pv: &PersistentVolume) -> Option<PathBuf> {
    let ours = pv
        .annotations()
        .get("pv.kubernetes.io/provisioned-by")
        .map(String::as_str)
        == Some(PROVISIONER);
    let spec = pv.spec.as_ref()?;
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let path = PathBuf::from(&spec.host_path.as_ref()?.path);
    (ours && released && delete).then_some(path)
}

/// Provision and reclaim until the watches end (they retry on their own).
pub async fn run(client: Client, root: PathBuf) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let (claim_store, claim_events) = super::mirror(claims);
    let (volume_store, volume_events) = super::mirror(volumes.clone());
    let mut events = futures::stream::select(claim_events, volume_events);
    while events.next().await.is_some() {
        for claim in claim_store.state() {
            let Some(pv) = volume_for(&claim, &root) else {
                continue;
            };
            match volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => info!(claim = %claim.name_any(), volume = %pv.name_any(), "provisioned"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => warn!(claim = %claim.name_any(), error = %e, "provisioning failed"),
            }
        }
        for pv in volume_store.state() {
            let Some(dir) = reclaimable(&pv) else {
                continue;
            };
            if dir.starts_with(&root) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            match volumes
                .delete(&pv.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => info!(volume = %pv.name_any(), "reclaimed"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => warn!(volume = %pv.name_any(), error = %e, "reclaiming failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(class: Option<&str>, bound: bool) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-net-0", "namespace": "ns", "uid": "u1"},
            "spec": {"storageClassName": class, "volumeName": if bound { "pv" } else { "" },
                     "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "2Gi"}}},
        }))
        .unwrap()
    }

    #[test]
    fn only_unbound_claims_of_our_class_get_a_volume() {
        let root = Path::new("/v");
        let pv = volume_for(&claim(Some(CLASS), false), root).unwrap();
        assert_eq!(pv.name_any(), "pvc-u1");
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.host_path.as_ref().unwrap().path, "/v/ns_data-net-0_u1");
        assert_eq!(spec.claim_ref.as_ref().unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "2Gi");
        assert!(volume_for(&claim(Some(CLASS), true), root).is_none());
        assert!(volume_for(&claim(Some("fast"), false), root).is_none());
        assert!(volume_for(&claim(None, false), root).is_none());
    }

    #[test]
    fn only_our_released_volumes_are_reclaimed() {
        let mut pv = volume_for(&claim(Some(CLASS), false), Path::new("/v")).unwrap();
        assert!(reclaimable(&pv).is_none());
        pv.status = Some(serde_json::from_value(json!({"phase": "Released"})).unwrap());
        assert_eq!(reclaimable(&pv), Some(PathBuf::from("/v/ns_data-net-0_u1")));
        pv.metadata.annotations = None;
        assert!(reclaimable(&pv).is_none());
    }
}
