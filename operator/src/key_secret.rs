//! Keys that users keep in Secrets (a fleet's funding key, a task's publisher key), read when
//! a transaction is to be signed and never copied anywhere else.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use pot_protocol::{SecretKey, keyfile};

use crate::crd::SecretKeyRef;
use crate::error::{Error, Result};

/// The key file at `r` in namespace `ns`. A missing Secret or key, or a file that does not
/// read, is `reason` (for a person to fix); the message never quotes the secret.
pub async fn read(
    client: &kube::Client,
    ns: &str,
    r: &SecretKeyRef,
    reason: &'static str,
) -> Result<SecretKey> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::needs(reason, format!("Secret {} does not exist", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| Error::needs(reason, format!("Secret {} has no key {:?}", r.name, r.key)))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| Error::needs(reason, format!("Secret {}/{}: not UTF-8", r.name, r.key)))?;
    keyfile::decode(text)
        .map_err(|e| Error::needs(reason, format!("Secret {}/{}: {e}", r.name, r.key)))
}
