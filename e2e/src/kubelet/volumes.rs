//! A pod's volumes as directories: `emptyDir` under the pod's own directory, Secrets,
//! ConfigMaps, the downward API and projected service-account tokens written as files (and
//! rewritten while the pod runs, as the kubelet does), a PersistentVolumeClaim as its bound
//! volume's directory, a `hostPath` as itself.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::launch::{Objects, PodFacts, field_value};

/// A file to write into a volume: its path inside the volume, its bytes, its mode.
type VolumeFile = (String, Vec<u8>, Option<i32>);

/// Who owns a pod's volume files: its `runAsUser` and its `fsGroup` (or `runAsGroup`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The directory of every volume of `pod`, made (or refreshed) now.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    facts: &PodFacts,
    objects: &Objects,
    owner: Owner,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut dirs = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volume(client, pod, pod_dir, v, facts, objects, owner)
            .await
            .with_context(|| format!("volume {:?}", v.name))?;
        dirs.insert(v.name.clone(), dir);
    }
    Ok(dirs)
}

async fn volume(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    v: &Volume,
    facts: &PodFacts,
    objects: &Objects,
    owner: Owner,
) -> anyhow::Result<PathBuf> {
    let own_dir = pod_dir.join("volumes").join(&v.name);
    let ns = pod.namespace().unwrap_or_default();
    if v.empty_dir.is_some() {
        if !own_dir.exists() {
            std::fs::create_dir_all(&own_dir)?;
            super::process::chown_tree(&own_dir, owner.uid, owner.gid)?;
        }
        return Ok(own_dir);
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
            std::fs::create_dir_all(&path)?;
        }
        if !path.exists() {
            bail!("hostPath {} does not exist", path.display());
        }
        return Ok(path);
    }
    if let Some(claim) = &v.persistent_volume_claim {
        return claim_dir(client, &ns, &claim.claim_name, owner).await;
    }
    let mut files: Vec<VolumeFile> = Vec::new();
    let default_mode;
    // A Secret's or a ConfigMap's files, for a volume of its own or a projected source alike.
    let secret_files = |name: &str, items: Option<&[KeyToPath]>, optional: Option<bool>| {
        object_files(objects.secret(name), "secret", name, items, optional)
    };
    let config_map_files = |name: &str, items: Option<&[KeyToPath]>, optional: Option<bool>| {
        object_files(objects.config_map(name), "configmap", name, items, optional)
    };
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        default_mode = s.default_mode;
        files.extend(secret_files(&name, s.items.as_deref(), s.optional)?);
    } else if let Some(m) = &v.config_map {
        default_mode = m.default_mode;
        files.extend(config_map_files(&m.name, m.items.as_deref(), m.optional)?);
    } else if let Some(d) = &v.downward_api {
        default_mode = d.default_mode;
        for item in d.items.iter().flatten() {
            let field = item.field_ref.as_ref().ok_or_else(|| {
                anyhow!(
                    "downwardAPI item {:?}: only fieldRef is supported",
                    item.path
                )
            })?;
            files.push((
                item.path.clone(),
                field_value(pod, &field.field_path, facts)?.into_bytes(),
                item.mode,
            ));
        }
    } else if let Some(p) = &v.projected {
        default_mode = p.default_mode;
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let token = token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                files.push((t.path.clone(), token.into_bytes(), None));
            }
            if let Some(m) = &source.config_map {
                files.extend(config_map_files(&m.name, m.items.as_deref(), m.optional)?);
            }
            if let Some(s) = &source.secret {
                files.extend(secret_files(&s.name, s.items.as_deref(), s.optional)?);
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    if let Some(field) = &item.field_ref {
                        files.push((
                            item.path.clone(),
                            field_value(pod, &field.field_path, facts)?.into_bytes(),
                            item.mode,
                        ));
                    }
                }
            }
        }
    } else {
        bail!("this kind of volume is not supported by the local kubelet");
    }
    write_files(&own_dir, &files, default_mode.unwrap_or(0o644), owner)?;
    Ok(own_dir)
}

/// `subPath` inside a volume, made as a directory when missing. The mount is made as root, so a
/// path that leaves the volume — by `..` or through a symbolic link a container planted in a
/// writable volume — is refused, or it would expose any file of the host.
pub fn sub_path(volume: &Path, sub: &str) -> anyhow::Result<PathBuf> {
    if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
        bail!("subPath {sub:?} leaves its volume");
    }
    let path = volume.join(sub);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&path).with_context(|| format!("making subPath {sub:?}"))?;
    }
    let real = path.canonicalize()?;
    if !real.starts_with(volume.canonicalize()?) {
        bail!("subPath {sub:?} leaves its volume (through a symbolic link)");
    }
    Ok(real)
}

/// The files of a Secret or ConfigMap source: its `items` (or every key); a missing object is
/// an error unless the source is optional.
fn object_files(
    data: Option<BTreeMap<String, Vec<u8>>>,
    kind: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<Vec<VolumeFile>> {
    match data {
        Some(data) => pick(&data, items, name),
        None if optional == Some(true) => Ok(Vec::new()),
        None => bail!("{kind} {name:?} not found"),
    }
}

/// The keys to write: `items` when given (each must exist), else every key.
fn pick(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    object: &str,
) -> anyhow::Result<Vec<VolumeFile>> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| anyhow!("key {:?} of {object:?} not found", i.key))?;
                Ok((i.path.clone(), v.clone(), i.mode))
            })
            .collect(),
    }
}

/// Write each file through a temporary name and a rename, so a process reading one never sees
/// half of it; files no longer listed are removed.
fn write_files(
    dir: &Path,
    files: &[VolumeFile],
    default_mode: i32,
    owner: Owner,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut keep = Vec::new();
    for (rel, bytes, mode) in files {
        if rel.split('/').any(|part| part == ".." || part.is_empty()) {
            bail!("file path {rel:?} leaves the volume");
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&tmp, bytes)?;
        // With an fsGroup the group may read what the mode lets the owner read (as the kubelet
        // does), so a non-root pod can read a 0400 Secret it was given.
        let mut m = mode.unwrap_or(default_mode) as u32 & 0o777;
        if owner.gid.is_some() && m & 0o400 != 0 {
            m |= 0o040;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m))?;
        std::os::unix::fs::lchown(&tmp, owner.uid, owner.gid)?;
        std::fs::rename(&tmp, &path)?;
        keep.push(path);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && !keep.contains(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A bound claim's directory (made by [`super::storage`], or any `hostPath`/`local` volume).
async fn claim_dir(
    client: &Client,
    ns: &str,
    claim: &str,
    owner: Owner,
) -> anyhow::Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim)
        .await
        .with_context(|| format!("reading claim {claim:?}"))?;
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("claim {claim:?} is not bound yet"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .with_context(|| format!("reading volume {volume:?}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| anyhow!("volume {volume:?} is neither hostPath nor local"))?;
    let path = PathBuf::from(path);
    std::fs::create_dir_all(&path)?;
    // fsGroupChangePolicy OnRootMismatch: walk the tree only when its root is not ours yet.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&path)?;
    let mismatch =
        owner.uid.is_some_and(|u| u != meta.uid()) || owner.gid.is_some_and(|g| g != meta.gid());
    if mismatch {
        super::process::chown_tree(&path, owner.uid, owner.gid)?;
    }
    Ok(path)
}

/// A token for the pod's ServiceAccount, bound to the pod (it stops working when the pod goes).
async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> anyhow::Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(),
                               "uid": pod.metadata.uid},
        }
    }))?;
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for service account {sa:?}"))?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("the token request for {sa:?} returned no token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v");
        let owner = Owner::default();
        write_files(
            &vol,
            &[
                ("a".into(), b"1".to_vec(), None),
                ("b".into(), b"2".to_vec(), Some(0o400)),
            ],
            0o644,
            owner,
        )
        .unwrap();
        assert_eq!(std::fs::read(vol.join("a")).unwrap(), b"1");
        let mode = std::fs::metadata(vol.join("b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        write_files(&vol, &[("a".into(), b"3".to_vec(), None)], 0o644, owner).unwrap();
        assert_eq!(std::fs::read(vol.join("a")).unwrap(), b"3");
        assert!(!vol.join("b").exists());
        assert!(write_files(&vol, &[("../x".into(), vec![], None)], 0o644, owner).is_err());
    }

    #[test]
    fn a_sub_path_may_not_leave_its_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(dir.path().join("secret"), "host file").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), vol.join("link")).unwrap();
        std::os::unix::fs::symlink("/", vol.join("root")).unwrap();
        assert!(sub_path(&vol, "link").is_err());
        assert!(sub_path(&vol, "root/etc").is_err());
        assert!(sub_path(&vol, "../secret").is_err());
        assert!(sub_path(&vol, "/etc").is_err());
        let made = sub_path(&vol, "a/b").unwrap();
        assert!(made.is_dir() && made.starts_with(vol.canonicalize().unwrap()));
    }

    #[test]
    fn a_group_may_read_what_the_owner_may() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner {
            uid: Some(10001),
            gid: Some(10001),
        };
        write_files(
            dir.path(),
            &[("k".into(), b"key".to_vec(), Some(0o400))],
            0o644,
            owner,
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.path().join("k")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o440);
        assert_eq!((meta.uid(), meta.gid()), (10001, 10001));
    }
}
