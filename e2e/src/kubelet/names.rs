//! Addresses and names for pods: each pod gets its own loopback address, kept for its name, and
//! an `/etc/hosts` that resolves the names cluster DNS would (`<pod>.<headless>.<ns>.svc.cluster.local`
//! and Service names), written by the kubelet from the pods and Services it sees.
//!
//! Why loopback addresses and a hosts file rather than a network namespace per pod: everything
//! here (the API server's proxy, an operator running outside the cluster, the tests) reaches a
//! pod at its address with no routes, bridges or NAT on the host, and nothing about the host's
//! networking changes. The cost: a pod must listen on its own address (`$(POD_IP)`, from the
//! downward API), not on 0.0.0.0 where every pod would want the same port; Services have no
//! cluster IPs that route (a Service name resolves to its ready pods' addresses, so a Service's
//! `port` must equal its `targetPort`); and EndpointSlices stay empty, since the API server
//! refuses loopback endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The cluster domain in every name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Pod addresses by `namespace/name`, from one `127.<block>.0.0/16`, kept in a file so a pod
/// that comes back under the same name (a StatefulSet's pod, or any pod after the kubelet
/// restarted) has the address its peers already resolved. Addresses are not reused.
pub struct Addresses {
    path: PathBuf,
    block: u8,
    by_pod: BTreeMap<String, Ipv4Addr>,
}

impl Addresses {
    /// Open (or start) the table in `path`; a new table picks a random block so two local
    /// clusters on one machine rarely share addresses.
    pub fn open(path: &Path) -> anyhow::Result<Addresses> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let (block, by_pod): (u8, BTreeMap<String, Ipv4Addr>) = serde_json::from_str(&text)
                .with_context(|| format!("reading the address table {}", path.display()))?;
            return Ok(Addresses {
                path: path.to_path_buf(),
                block,
                by_pod,
            });
        }
        let block = 16 + (rand::random::<u8>() % 224);
        let table = Addresses {
            path: path.to_path_buf(),
            block,
            by_pod: BTreeMap::new(),
        };
        table.save()?;
        Ok(table)
    }

    /// The address of `namespace/name`, given out now if it has none.
    pub fn of(&mut self, namespace: &str, name: &str) -> anyhow::Result<Ipv4Addr> {
        let key = format!("{namespace}/{name}");
        if let Some(ip) = self.by_pod.get(&key) {
            return Ok(*ip);
        }
        let n = self.by_pod.len() as u32 + 1;
        if n > 65_533 {
            bail!("no pod address left in 127.{}.0.0/16", self.block);
        }
        let ip = Ipv4Addr::new(127, self.block, (n >> 8) as u8, (n & 0xff) as u8);
        self.by_pod.insert(key, ip);
        self.save()?;
        Ok(ip)
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string(&(self.block, &self.by_pod))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing the address table {}", self.path.display()))
    }
}

/// A pod as names see it (also a StatefulSet pod that does not exist yet: its name is known).
#[derive(Clone, Debug, PartialEq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ready: bool,
}

/// A Service as names see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub headless: bool,
    pub publish_not_ready: bool,
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The `/etc/hosts` of `me`: itself, every pod behind a headless Service by its DNS name, and
/// every Service by its names (the short name only within `me`'s namespace), pointing at the
/// ready pods it selects.
pub fn hosts_file(me: &PodName, pods: &[PodName], services: &[ServiceName]) -> String {
    let mut lines = vec![
        "# Written by the pot-e2e kubelet; rewritten as pods and Services change.".to_string(),
        "127.0.0.1\tlocalhost".to_string(),
        "::1\tlocalhost ip6-localhost ip6-loopback".to_string(),
    ];
    let own_host = me.hostname.clone().unwrap_or_else(|| me.name.clone());
    match &me.subdomain {
        Some(sub) => lines.push(format!(
            "{}\t{own_host}.{sub}.{}.svc.{CLUSTER_DOMAIN}\t{own_host}",
            me.ip, me.namespace
        )),
        None => lines.push(format!("{}\t{own_host}", me.ip)),
    }
    for svc in services {
        let ns = &svc.namespace;
        let mut names = vec![
            format!("{}.{ns}.svc.{CLUSTER_DOMAIN}", svc.name),
            format!("{}.{ns}.svc", svc.name),
            format!("{}.{ns}", svc.name),
        ];
        if *ns == me.namespace {
            names.push(svc.name.clone());
        }
        for pod in pods
            .iter()
            .filter(|p| p.namespace == *ns && selects(&svc.selector, &p.labels))
        {
            if svc.headless
                && let (Some(host), Some(sub)) = (&pod.hostname, &pod.subdomain)
                && *sub == svc.name
                && !(pod.namespace == me.namespace && pod.name == me.name)
            {
                let fqdn = format!("{host}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}");
                let mut own = vec![fqdn, format!("{host}.{sub}.{ns}.svc")];
                if *ns == me.namespace {
                    own.push(format!("{host}.{sub}"));
                }
                lines.push(format!("{}\t{}", pod.ip, own.join("\t")));
            }
            if pod.ready || svc.publish_not_ready {
                lines.push(format!("{}\t{}", pod.ip, names.join("\t")));
            }
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: u8, ready: bool) -> PodName {
        PodName {
            namespace: ns.into(),
            name: name.into(),
            hostname: Some(name.into()),
            subdomain: Some("net-peers".into()),
            labels: [("app".to_string(), "net".to_string())].into(),
            ip: Ipv4Addr::new(127, 9, 0, ip),
            ready,
        }
    }

    fn svc(name: &str, headless: bool) -> ServiceName {
        ServiceName {
            namespace: "a".into(),
            name: name.into(),
            selector: [("app".to_string(), "net".to_string())].into(),
            headless,
            publish_not_ready: headless,
        }
    }

    #[test]
    fn peers_resolve_by_pod_dns_name_and_services_by_ready_pods() {
        let pods = [
            pod("a", "net-0", 1, true),
            pod("a", "net-1", 2, false),
            pod("b", "net-0", 3, true),
        ];
        let services = [svc("net-peers", true), svc("net-api", false)];
        let hosts = hosts_file(&pods[0], &pods, &services);
        assert!(hosts.contains("127.9.0.1\tnet-0.net-peers.a.svc.cluster.local\tnet-0\n"));
        // The peer that is not ready yet still has its name (a StatefulSet's peers dial early).
        assert!(hosts.contains("127.9.0.2\tnet-1.net-peers.a.svc.cluster.local\t"));
        // Only the ready pod is behind the API Service; the other namespace's pod is not.
        assert!(hosts.contains(
            "127.9.0.1\tnet-api.a.svc.cluster.local\tnet-api.a.svc\tnet-api.a\tnet-api\n"
        ));
        assert!(!hosts.contains("127.9.0.2\tnet-api"));
        assert!(!hosts.contains("127.9.0.3"));
        // From another namespace, no short names.
        let other = hosts_file(&pods[2], &pods, &services);
        assert!(
            other.contains("127.9.0.1\tnet-api.a.svc.cluster.local\tnet-api.a.svc\tnet-api.a\n")
        );
    }

    #[test]
    fn addresses_are_kept_per_name_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses.json");
        let mut table = Addresses::open(&path).unwrap();
        let a = table.of("ns", "a").unwrap();
        let b = table.of("ns", "b").unwrap();
        assert_ne!(a, b);
        assert!(a.is_loopback());
        assert_eq!(table.of("ns", "a").unwrap(), a);
        let mut again = Addresses::open(&path).unwrap();
        assert_eq!(again.of("ns", "b").unwrap(), b);
        std::fs::write(&path, "{").unwrap();
        assert!(Addresses::open(&path).is_err());
    }
}
