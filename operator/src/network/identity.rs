//! A network's identity: its coordinators' keys and its genesis. Created once; never created
//! again. A lost key or genesis is an error for a person to resolve (restore the Secret or
//! ConfigMap from a backup), because a new one would be another chain, or a coordinator
//! that can sign what its old key already signed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use pot_protocol::{Genesis, SecretKey, keyfile};

use super::children::{self, Names, paths};
use super::genesis;
use crate::crd::network::PotNetwork;
use crate::error::{Error, Result};

/// The annotation on a keys Secret naming the hash of the genesis its keys were made for.
pub const GENESIS_HASH_ANNOTATION: &str = "pot.dev/genesis-hash";

/// What a running network is.
pub struct Identity {
    pub genesis: Genesis,
}

/// Find the network's genesis, or create it (with the keys) if this network never had one.
pub async fn ensure(net: &PotNetwork, client: &kube::Client) -> Result<Identity> {
    let ns = net.namespace().unwrap_or_default();
    let names = Names::of(net);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    if let Some(cm) = configmaps.get_opt(&names.genesis_configmap()).await? {
        let genesis = read_genesis(&cm)?;
        check_keys(net, &secrets, &genesis).await?;
        return Ok(Identity { genesis });
    }
    // The status says so, or the coordinators' volumes exist (a status can be lost; a volume
    // holding a chain database is the chain).
    let had_genesis = net
        .status
        .as_ref()
        .and_then(|s| s.genesis_hash.as_ref())
        .is_some()
        || has_volumes(net, client).await?;
    if had_genesis {
        return Err(Error::needs(
            "GenesisLost",
            format!(
                "ConfigMap {} is gone but this network has a chain; restore it from a backup \
                 (a new genesis would be another chain)",
                names.genesis_configmap()
            ),
        ));
    }
    let keys = coordinator_keys(net, &secrets).await?;
    let faucet = match &net.spec.genesis.faucet {
        Some(f) => Some((faucet_key(net, &secrets).await?.address(), f.balance)),
        None => None,
    };
    let chain_id = net
        .spec
        .genesis
        .chain_id
        .clone()
        .unwrap_or_else(|| genesis::default_chain_id(&ns, &net.name_any()));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64;
    let g = genesis::build(&chain_id, now_ms, &net.spec.genesis, &keys, faucet)
        .map_err(|e| Error::needs("InvalidGenesis", e.to_string()))?;
    // The keys record the genesis they were made for before the genesis exists, so a genesis
    // replaced later (by hand, from the wrong backup) is seen as one.
    let mut secret = secrets.get(&names.keys_secret()).await?;
    secret
        .annotations_mut()
        .insert(GENESIS_HASH_ANNOTATION.into(), g.hash().to_string());
    secrets
        .replace(&names.keys_secret(), &PostParams::default(), &secret)
        .await?;
    let cm = children::genesis_configmap(net, &g.to_yaml());
    match configmaps.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(Identity { genesis: g }),
        // Another reconcile (or an earlier life of this operator) created it first: theirs is
        // the genesis.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let cm = configmaps.get(&names.genesis_configmap()).await?;
            Ok(Identity {
                genesis: read_genesis(&cm)?,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The network's genesis, when its ConfigMap exists and reads.
pub async fn genesis_of(net: &PotNetwork, client: &kube::Client) -> Result<Option<Genesis>> {
    let configmaps: Api<ConfigMap> =
        Api::namespaced(client.clone(), &net.namespace().unwrap_or_default());
    match configmaps
        .get_opt(&Names::of(net).genesis_configmap())
        .await?
    {
        Some(cm) => Ok(Some(read_genesis(&cm)?)),
        None => Ok(None),
    }
}

/// Whether any coordinator volume of this network exists.
async fn has_volumes(net: &PotNetwork, client: &kube::Client) -> Result<bool> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &net.namespace().unwrap_or_default());
    let selector = children::selector_string(&children::coordinator_selector(&net.name_any()));
    let found = claims
        .list_metadata(&ListParams::default().labels(&selector).limit(1))
        .await?;
    Ok(!found.items.is_empty())
}

fn read_genesis(cm: &ConfigMap) -> Result<Genesis> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(paths::GENESIS_FILE))
        .ok_or_else(|| {
            Error::needs(
                "GenesisInvalid",
                format!("ConfigMap {} has no {}", cm.name_any(), paths::GENESIS_FILE),
            )
        })?;
    Genesis::from_yaml(text).map_err(|e| {
        Error::needs(
            "GenesisInvalid",
            format!("ConfigMap {}: {e}", cm.name_any()),
        )
    })
}

/// Every coordinator of the genesis has its key in the Secret, under its pod's name.
async fn check_keys(net: &PotNetwork, secrets: &Api<Secret>, genesis: &Genesis) -> Result<()> {
    let names = Names::of(net);
    let lost = |what: String| {
        Error::needs(
            "KeysLost",
            format!(
                "{what}; restore Secret {} from a backup: the operator never makes a new key for \
                 a chain that exists",
                names.keys_secret()
            ),
        )
    };
    let Some(secret) = secrets.get_opt(&names.keys_secret()).await? else {
        return Err(lost(format!("Secret {} is gone", names.keys_secret())));
    };
    if let Some(made_for) = secret.annotations().get(GENESIS_HASH_ANNOTATION)
        && *made_for != genesis.hash().to_string()
    {
        return Err(Error::needs(
            "GenesisMismatch",
            format!(
                "ConfigMap {} holds genesis {}, but the keys were made for genesis {made_for}; \
                 restore the ConfigMap that belongs to this chain",
                names.genesis_configmap(),
                genesis.hash()
            ),
        ));
    }
    let held = decode_keys(&secret);
    for (i, c) in genesis.coordinators.iter().enumerate() {
        let pod = names.pod(i);
        match held.get(&pod) {
            Some(Ok(key)) if key.address() == c.address => {}
            Some(Ok(key)) => {
                return Err(lost(format!(
                    "the key for {pod} is {}, but the genesis names {}",
                    key.address(),
                    c.address
                )));
            }
            Some(Err(e)) => return Err(lost(format!("the key for {pod} does not read: {e}"))),
            None => {
                return Err(lost(format!(
                    "the key for {pod} ({}) is missing",
                    c.address
                )));
            }
        }
    }
    Ok(())
}

fn decode_keys(secret: &Secret) -> BTreeMap<String, Result<SecretKey, String>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| {
            let key = std::str::from_utf8(&v.0)
                .map_err(|e| e.to_string())
                .and_then(|t| keyfile::decode(t).map_err(|e| e.to_string()));
            (k.clone(), key)
        })
        .collect()
}

/// The coordinators' keys of a network that has no genesis yet: those already in the Secret
/// (an earlier reconcile stopped before the genesis was written), the rest generated.
async fn coordinator_keys(net: &PotNetwork, secrets: &Api<Secret>) -> Result<Vec<SecretKey>> {
    let names = Names::of(net);
    let n = net.spec.coordinators.max(1) as usize;
    let existing = secrets.get_opt(&names.keys_secret()).await?;
    let held = existing.as_ref().map(decode_keys).unwrap_or_default();
    let mut files = BTreeMap::new();
    let mut keys = Vec::with_capacity(n);
    let mut generated = false;
    for i in 0..n {
        let key = match held.get(&names.pod(i)) {
            Some(Ok(k)) => k.clone(),
            // A key that does not read is a person's to look at, not to overwrite.
            Some(Err(e)) => {
                return Err(Error::needs(
                    "KeysInvalid",
                    format!(
                        "Secret {}: the key for {}: {e}",
                        names.keys_secret(),
                        names.pod(i)
                    ),
                ));
            }
            None => {
                generated = true;
                SecretKey::generate()
            }
        };
        files.insert(names.pod(i), keyfile::encode(&key));
        keys.push(key);
    }
    let mut secret = children::keys_secret(net, &files);
    match existing {
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Some(old) if generated => {
            // Optimistic concurrency: a racing writer makes this fail instead of being lost.
            secret.metadata.resource_version = old.metadata.resource_version;
            secrets
                .replace(&names.keys_secret(), &PostParams::default(), &secret)
                .await?;
        }
        Some(_) => {}
    }
    Ok(keys)
}

/// The faucet's key: the Secret's if there is one, else a new one.
async fn faucet_key(net: &PotNetwork, secrets: &Api<Secret>) -> Result<SecretKey> {
    let name = Names::of(net).faucet_secret();
    if let Some(s) = secrets.get_opt(&name).await? {
        let text = s
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        return keyfile::decode(&text)
            .map_err(|e| Error::needs("KeysLost", format!("Secret {name}: {e}")));
    }
    let key = SecretKey::generate();
    secrets
        .create(
            &PostParams::default(),
            &children::faucet_secret(net, &keyfile::encode(&key)),
        )
        .await?;
    Ok(key)
}
