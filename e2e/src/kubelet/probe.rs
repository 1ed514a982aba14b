//! Startup, liveness and readiness probes, run against the container's process: an HTTP GET to
//! its address, a TCP connect, or a command started in the container's namespace.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::process::{self, Launch};

/// A probe's timing, with the Kubernetes defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// A port given by number or by the container's port name.
pub fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// Run the probe once: `Ok(())` when it passed, else why not.
pub async fn check(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    exec_as: &Launch,
    http: &reqwest::Client,
) -> Result<(), String> {
    let t = timing(probe);
    if let Some(get) = &probe.http_get {
        let port = port(container, &get.port)?;
        let host = get.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let path = get.path.as_deref().unwrap_or("/");
        let url = format!("{scheme}://{host}:{port}{path}");
        let mut req = http.get(&url).timeout(t.timeout);
        for h in get.http_headers.iter().flatten() {
            req = req.header(&h.name, &h.value);
        }
        return match req.send().await {
            Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
            Ok(r) => Err(format!(
                "HTTP probe failed with statuscode: {}",
                r.status().as_u16()
            )),
            Err(e) => Err(format!("Get {url:?}: {e}")),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(container, &tcp.port)?;
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            t.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timed out")),
        };
    }
    if let Some(exec) = &probe.exec {
        let mut words = exec.command.clone().unwrap_or_default();
        if words.is_empty() {
            return Err("an exec probe without a command".into());
        }
        let launch = Launch {
            program: words.remove(0),
            args: words,
            ..exec_as.clone()
        };
        let child = process::spawn(&launch).map_err(|e| format!("{e:#}"))?;
        let pid = child.id();
        let waited = tokio::time::timeout(t.timeout, process::exited(child)).await;
        return match waited {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(format!("command exited with {status}")),
            Ok(None) => Err("command could not be waited for".into()),
            Err(_) => {
                process::signal_group(pid, libc::SIGKILL);
                Err(format!("command timed out after {:?}", t.timeout))
            }
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this kubelet".into());
    }
    Err("a probe with no handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_named_ports() {
        let p: Probe = serde_json::from_value(json!({"httpGet": {"port": "api"}})).unwrap();
        let t = timing(&p);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.failure_threshold, 3);
        let c: Container = serde_json::from_value(json!({
            "name": "c", "ports": [{"name": "api", "containerPort": 26657}]
        }))
        .unwrap();
        assert_eq!(port(&c, &IntOrString::String("api".into())), Ok(26657));
        assert!(port(&c, &IntOrString::String("p2p".into())).is_err());
        assert_eq!(port(&c, &IntOrString::Int(80)), Ok(80));
    }
}
