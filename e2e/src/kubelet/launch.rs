//! What a container runs, worked out from its pod without touching the system: the image's
//! program and files, the command line, and the environment with the downward API, Secret and
//! ConfigMap values and `$(VAR)` references resolved as the kubelet does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// The search path an image's processes get when the image does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an image stands for here: no image is pulled; its program and files are local ones,
/// bind-mounted into the pod at the paths the real image has them.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// The image's entrypoint (its first element a path inside the pod).
    pub entrypoint: Vec<String>,
    /// Host path → path inside the pod (a file or a directory).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// The image's environment (`ENV` lines).
    pub env: Vec<(String, String)>,
}

/// Images by name: the last path component of a reference without tag or digest, so
/// `ghcr.io/pot/pot-node:0.1.0` and `pot-node@sha256:…` are both `pot-node`.
#[derive(Clone, Debug, Default)]
pub struct Images {
    by_name: BTreeMap<String, Image>,
}

impl Images {
    pub fn insert(&mut self, name: &str, image: Image) {
        self.by_name.insert(name.to_string(), image);
    }

    pub fn resolve(&self, reference: &str) -> anyhow::Result<&Image> {
        let name = image_name(reference);
        self.by_name.get(name).ok_or_else(|| {
            anyhow!(
                "image {reference:?} is not one this node can run (known: {})",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Where a command name points inside the pod: a bare name is looked up among the image's
    /// files (so `pot-node` is the image's `/usr/local/bin/pot-node`), a path is kept.
    fn program(&self, image: &Image, name: &str) -> String {
        if name.contains('/') {
            return name.to_string();
        }
        image
            .files
            .iter()
            .map(|(_, inside)| inside)
            .find(|inside| inside.file_name().is_some_and(|f| f == name))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| name.to_string())
    }
}

/// `registry:5000/org/pot-node:tag@sha256:…` → `pot-node`.
pub fn image_name(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// What the downward API can show about a pod that the Pod object itself does not hold yet.
#[derive(Clone, Debug)]
pub struct PodFacts {
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`: where the API server answers.
    pub api_server: (String, u16),
}

/// The Secrets and ConfigMaps a pod refers to, read before its containers start.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Objects {
    /// A Secret's data, if it was there.
    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).cloned()
    }

    /// A ConfigMap's data as bytes, if it was there.
    pub fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let data = self.config_maps.get(name)?;
        Some(
            data.iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        )
    }
}

/// The names of the Secrets and ConfigMaps a pod's environment and volumes use.
pub fn referenced_objects(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut secrets, mut maps) = (Vec::new(), Vec::new());
    let Some(spec) = &pod.spec else {
        return (secrets, maps);
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(s) = &from.secret_key_ref {
                    secrets.push(s.name.clone());
                }
                if let Some(m) = &from.config_map_key_ref {
                    maps.push(m.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(s) = &f.secret_ref {
                secrets.push(s.name.clone());
            }
            if let Some(m) = &f.config_map_ref {
                maps.push(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        if let Some(m) = &v.config_map {
            maps.push(m.name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                secrets.push(s.name.clone());
            }
            if let Some(m) = &source.config_map {
                maps.push(m.name.clone());
            }
        }
    }
    for list in [&mut secrets, &mut maps] {
        list.sort();
        list.dedup();
    }
    (secrets, maps)
}

/// A container's command line and environment, ready to start.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandLine {
    /// The program, a path inside the pod.
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The command line of `container`: the image's entrypoint unless the container sets
/// `command`, then `args`; `$(VAR)` in both expanded from the container's environment.
pub fn command_line(
    pod: &Pod,
    container: &Container,
    images: &Images,
    facts: &PodFacts,
    objects: &Objects,
) -> anyhow::Result<CommandLine> {
    let image_ref = container.image.as_deref().unwrap_or_default();
    let image = images.resolve(image_ref)?;
    let env = environment(pod, container, image, facts, objects)?;
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut words: Vec<String> = match &container.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|w| expand(w, &vars)).collect(),
        _ => image.entrypoint.clone(),
    };
    words.extend(container.args.iter().flatten().map(|w| expand(w, &vars)));
    if words.is_empty() {
        bail!(
            "container {:?} has no command and its image no entrypoint",
            container.name
        );
    }
    let program = images.program(image, &words.remove(0));
    Ok(CommandLine {
        program,
        args: words,
        env,
    })
}

/// The environment in the kubelet's order: the image's, the service variables of the API
/// server, `envFrom`, then `env` (later entries override earlier ones; `$(VAR)` in a value
/// refers to variables defined before it).
pub fn environment(
    pod: &Pod,
    container: &Container,
    image: &Image,
    facts: &PodFacts,
    objects: &Objects,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    set(&mut env, "PATH".into(), DEFAULT_PATH.into());
    for (k, v) in &image.env {
        set(&mut env, k.clone(), v.clone());
    }
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    set(&mut env, "HOSTNAME".into(), hostname);
    let (host, port) = &facts.api_server;
    set(&mut env, "KUBERNETES_SERVICE_HOST".into(), host.clone());
    set(&mut env, "KUBERNETES_SERVICE_PORT".into(), port.to_string());
    set(
        &mut env,
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        port.to_string(),
    );

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match objects.config_maps.get(&r.name) {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("configmap {:?} not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match objects.secrets.get(&r.name) {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut env, format!("{prefix}{k}"), text(v, &r.name, k)?);
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("secret {:?} not found", r.name),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let vars: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Some(value) = env_value(pod, container, var, facts, objects, &vars)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// One `env` entry's value; `None` for an optional reference that is missing.
fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    facts: &PodFacts,
    objects: &Objects,
    vars: &BTreeMap<&str, &str>,
) -> anyhow::Result<Option<String>> {
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or_default(), vars)));
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, facts)
            .map(Some)
            .with_context(|| format!("env {:?}", var.name));
    }
    if let Some(r) = &from.resource_field_ref {
        let name = r.container_name.as_deref().unwrap_or(&container.name);
        let target = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == name)
            .unwrap_or(container);
        return resource_value(target, &r.resource)
            .map(Some)
            .with_context(|| format!("env {:?}", var.name));
    }
    if let Some(r) = &from.secret_key_ref {
        let value = objects.secrets.get(&r.name).and_then(|d| d.get(&r.key));
        return match value {
            Some(v) => Ok(Some(text(v, &r.name, &r.key)?)),
            None if r.optional == Some(true) => Ok(None),
            None => bail!(
                "env {:?}: key {:?} of secret {:?} not found",
                var.name,
                r.key,
                r.name
            ),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let value = objects.config_maps.get(&r.name).and_then(|d| d.get(&r.key));
        return match value {
            Some(v) => Ok(Some(v.clone())),
            None if r.optional == Some(true) => Ok(None),
            None => bail!(
                "env {:?}: key {:?} of configmap {:?} not found",
                var.name,
                r.key,
                r.name
            ),
        };
    }
    bail!("env {:?}: a valueFrom this node does not support", var.name)
}

fn text(bytes: &[u8], secret: &str, key: &str) -> anyhow::Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| anyhow!("key {key:?} of secret {secret:?} is not UTF-8 text"))
}

/// A downward-API field (`metadata.name`, `status.podIP`, `metadata.labels['app']`, …).
pub fn field_value(pod: &Pod, path: &str, facts: &PodFacts) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations", &meta.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        other => bail!("the downward-API field {other:?} is not supported"),
    })
}

/// `limits.cpu` (whole cores, rounded up), `requests.memory` (bytes), … of a container; a
/// missing limit reads as the node's capacity would, which here is "unset": 0.
fn resource_value(container: &Container, resource: &str) -> anyhow::Result<String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| anyhow!("resource {resource:?} is not <limits|requests>.<name>"))?;
    let res = container.resources.as_ref();
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => bail!("resource {resource:?} is not <limits|requests>.<name>"),
    };
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return Ok("0".into());
    };
    let amount = quantity(&q.0).with_context(|| format!("resource {resource:?}"))?;
    Ok(match name {
        "cpu" => (amount.ceil() as u64).max(1).to_string(),
        _ => (amount.ceil() as u64).to_string(),
    })
}

/// A Kubernetes quantity (`500m`, `2`, `1Gi`, `128M`) as a number.
pub fn quantity(s: &str) -> anyhow::Result<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (digits, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|d| (d, *f)))
        .unwrap_or((s, 1.0));
    let n: f64 = digits
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a quantity"))?;
    Ok(n * factor)
}

/// `$(VAR)` → the variable's value when it is defined (else left as written), `$$` → `$`.
pub fn expand(s: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn images() -> Images {
        let mut images = Images::default();
        images.insert(
            "pot-node",
            Image {
                entrypoint: vec!["/usr/local/bin/pot-node".into()],
                files: vec![(
                    PathBuf::from("/build/pot-node"),
                    PathBuf::from("/usr/local/bin/pot-node"),
                )],
                env: vec![("LD_LIBRARY_PATH".into(), "/opt/libtorch/lib".into())],
            },
        );
        images
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: Ipv4Addr::new(127, 1, 0, 7),
            host_ip: Ipv4Addr::LOCALHOST,
            api_server: ("127.0.0.1".into(), 6443),
        }
    }

    #[test]
    fn image_names_drop_registry_tag_and_digest() {
        assert_eq!(image_name("pot-node"), "pot-node");
        assert_eq!(image_name("ghcr.io/pot/pot-node:0.1.0"), "pot-node");
        assert_eq!(image_name("localhost:5000/pot-node@sha256:ab"), "pot-node");
        assert!(
            images()
                .resolve("busybox")
                .unwrap_err()
                .to_string()
                .contains("known: pot-node")
        );
    }

    #[test]
    fn the_command_line_follows_the_kubelet_rules() {
        let p = pod(json!({"containers": [{
            "name": "c", "image": "ghcr.io/x/pot-node:1",
            "args": ["run", "--listen", "$(POD_IP):80", "$$(POD_IP)", "$(NOPE)"],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "KEY", "value": "/keys/$(HOSTNAME)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
                {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "x", "key": "t", "optional": true}}},
            ],
        }]}));
        let mut objects = Objects::default();
        objects
            .secrets
            .insert("s".into(), [("t".to_string(), b"tok".to_vec())].into());
        let c = &p.spec.as_ref().unwrap().containers[0];
        let line = command_line(&p, c, &images(), &facts(), &objects).unwrap();
        assert_eq!(line.program, "/usr/local/bin/pot-node");
        assert_eq!(
            line.args,
            ["run", "--listen", "127.1.0.7:80", "$(POD_IP)", "$(NOPE)"]
        );
        let env: BTreeMap<_, _> = line.env.into_iter().collect();
        assert_eq!(env["APP"], "web");
        assert_eq!(env["KEY"], "/keys/web-0");
        assert_eq!(env["TOKEN"], "tok");
        assert_eq!(env["LD_LIBRARY_PATH"], "/opt/libtorch/lib");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "6443");
        assert!(!env.contains_key("GONE"));
    }

    #[test]
    fn a_command_names_an_image_file_or_a_path() {
        let p = pod(json!({"containers": [{"name": "c", "image": "pot-node",
            "command": ["pot-node", "keygen"]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let line = command_line(&p, c, &images(), &facts(), &Objects::default()).unwrap();
        assert_eq!(line.program, "/usr/local/bin/pot-node");
        assert_eq!(line.args, ["keygen"]);
    }

    #[test]
    fn a_missing_secret_names_itself() {
        let p = pod(json!({"containers": [{"name": "c", "image": "pot-node",
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k"}}}]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let err = command_line(&p, c, &images(), &facts(), &Objects::default()).unwrap_err();
        assert!(err.to_string().contains("secret \"keys\""), "{err}");
    }

    #[test]
    fn resources_and_quantities() {
        assert_eq!(quantity("500m").unwrap(), 0.5);
        assert_eq!(quantity("2Gi").unwrap(), 2147483648.0);
        assert!(quantity("lots").is_err());
        let p = pod(json!({"containers": [{"name": "c", "image": "pot-node",
        "resources": {"limits": {"cpu": "1500m", "memory": "1Mi"}},
        "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        ]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<_, _> = environment(
            &p,
            c,
            &images().by_name["pot-node"],
            &facts(),
            &Objects::default(),
        )
        .unwrap()
        .into_iter()
        .collect();
        assert_eq!(env["CPU"], "2");
        assert_eq!(env["MEM"], "1048576");
    }

    #[test]
    fn referenced_objects_cover_env_and_volumes() {
        let p = pod(json!({
            "containers": [{"name": "c", "image": "pot-node",
                "envFrom": [{"configMapRef": {"name": "m1"}}],
                "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "s2"}},
                {"name": "b", "configMap": {"name": "m1"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
            ],
        }));
        let (secrets, maps) = referenced_objects(&p);
        assert_eq!(secrets, ["s1", "s2"]);
        assert_eq!(maps, ["kube-root-ca.crt", "m1"]);
    }
}
