//! A container as a local process: its own session (so signals reach everything it started),
//! its own mount namespace in which its volumes, its image's files and its `/etc/hosts` are
//! bind-mounted at the paths a container would see, and the user its security context names.
//! Its output is appended to a log file.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// One bind mount: `source` (on the host) appears at `target` (inside the pod).
#[derive(Clone, Debug, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub binds: Vec<Bind>,
    /// `(uid, gid, supplementary groups)`; `None` keeps the kubelet's own (root).
    pub user: Option<(u32, u32, Vec<u32>)>,
    pub log: PathBuf,
}

/// Where each bind's mount point is created on the host: a target inside an earlier bind is
/// created inside that bind's source (that is what the process will see there), any other on
/// the host's own tree (an empty directory or file; the host's contents stay untouched
/// outside the namespace).
fn mount_points(binds: &[Bind]) -> Vec<(PathBuf, bool)> {
    let mut points = Vec::new();
    for (i, b) in binds.iter().enumerate() {
        let is_dir = b.source.is_dir();
        let outer = binds[..i]
            .iter()
            .filter(|o| b.target.starts_with(&o.target) && b.target != o.target)
            .max_by_key(|o| o.target.components().count());
        let point = match outer {
            Some(o) => o
                .source
                .join(b.target.strip_prefix(&o.target).expect("checked prefix")),
            None => b.target.clone(),
        };
        points.push((point, is_dir));
    }
    points
}

fn cstring(p: &OsStr) -> anyhow::Result<CString> {
    CString::new(p.as_bytes()).context("a path with a NUL byte")
}

/// Start the process. Binds are applied in order, so a target inside another comes after it.
pub fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    let mut binds = launch.binds.clone();
    binds.sort_by_key(|b| b.target.components().count());
    for (point, is_dir) in mount_points(&binds) {
        if is_dir {
            std::fs::create_dir_all(&point)
        } else {
            if let Some(parent) = point.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if point.exists() {
                Ok(())
            } else {
                std::fs::write(&point, b"")
            }
        }
        .with_context(|| format!("making the mount point {}", point.display()))?;
    }
    let mounts: Vec<(CString, CString, bool)> = binds
        .iter()
        .map(|b| {
            Ok((
                cstring(b.source.as_os_str())?,
                cstring(b.target.as_os_str())?,
                b.read_only,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let workdir = launch
        .working_dir
        .as_ref()
        .map(|d| cstring(d.as_os_str()))
        .transpose()?;
    let root = CString::new("/").expect("no NUL");
    let user = launch.user.clone();

    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .with_context(|| format!("opening the log {}", launch.log.display()))?;
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec; it only makes system calls
    // (setsid, unshare, mount, setgroups, setgid, setuid, chdir) on data prepared before the
    // fork, and allocates nothing, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check((libc::setsid() < 0) as libc::c_int)?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here propagates back to the host.
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (source, target, read_only) in &mounts {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if *read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if let Some((uid, gid, groups)) = &user {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(*gid))?;
                check(libc::setuid(*uid))?;
            }
            if let Some(dir) = &workdir {
                check(libc::chdir(dir.as_ptr()))?;
            }
            Ok(())
        });
    }
    crate::spawn::spawn_owned(cmd).with_context(|| format!("starting {}", launch.program))
}

/// Wait for `child` to exit without holding an async worker (on a thread of its own, so a
/// long-running container does not occupy the runtime's blocking pool); `None` if it could
/// not be waited for.
pub async fn exited(child: Child) -> Option<std::process::ExitStatus> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    rx.await.ok().and_then(Result::ok)
}

/// Send `sig` to every process of the container's session (its process group).
pub fn signal_group(pid: u32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process group id has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// A file or directory the pod's user must own (its volumes), changed recursively.
pub fn chown_tree(path: &Path, uid: Option<u32>, gid: Option<u32>) -> anyhow::Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, uid, gid)
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Refuse what this runner cannot do, with the reason.
pub fn check_supported() -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the local kubelet needs root (mount namespaces and bind mounts for each pod); \
             run it as root"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_targets_get_their_mount_point_inside_the_outer_source() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let binds = [
            Bind {
                source: data.clone(),
                target: "/var/lib/pot".into(),
                read_only: false,
            },
            Bind {
                source: keys,
                target: "/var/lib/pot/keys".into(),
                read_only: true,
            },
        ];
        let points = mount_points(&binds);
        assert_eq!(points[0], (PathBuf::from("/var/lib/pot"), true));
        assert_eq!(points[1], (data.join("keys"), true));
    }
}
