//! The node image's recipe (`node-image/Dockerfile`) pins what the workspace builds with: the
//! Rust toolchain of `rust-version`, the torch of `setup-libtorch.sh`, the crate version; and it
//! lays the image out as the local kubelet mirrors it (binaries in /usr/local/bin, libtorch in
//! /opt/libtorch/lib, a non-root user). No container engine runs here, so the Dockerfile itself
//! is not built by the tests; `make image`'s recipe (`node-image/build-oci.sh`) is: its archive
//! is unpacked as a runtime would and its `pot-node` run from the root filesystem under chroot.

use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    let p = pot_e2e::operator::repo().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The value of `<key><value>` on the first line that has it, up to the end of its word.
fn pinned<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?}"))
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap()
}

#[test]
fn the_dockerfile_pins_the_workspaces_versions() {
    let dockerfile = read("node-image/Dockerfile");
    let cargo = read("Cargo.toml");
    let rust = pinned(&cargo, "rust-version = \"");
    assert_eq!(pinned(&dockerfile, "ARG RUST_VERSION="), rust);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(pinned(&dockerfile, "ARG VERSION="), version);
    let setup = read("node-image/setup-libtorch.sh");
    let torch = pinned(&setup, "TORCH=");
    assert!(
        dockerfile.contains(&format!("/cache/libtorch/{torch}-cpu"))
            && dockerfile.contains(&format!("/cache/libtorch/{torch}-cu130")),
        "the Dockerfile's libtorch paths are not torch {torch}'s"
    );
    // The operator's default node image is this version.
    assert_eq!(
        pot_operator::crd::default_image(),
        format!("pot-node:{version}")
    );
}

#[test]
fn the_image_is_laid_out_as_the_local_kubelet_mirrors_it() {
    let dockerfile = read("node-image/Dockerfile");
    assert!(dockerfile.contains("COPY --from=build /out/bin/ /usr/local/bin/"));
    assert!(dockerfile.contains("COPY --from=build /out/lib/ /opt/libtorch/lib/"));
    assert!(dockerfile.contains("ENV LD_LIBRARY_PATH=/opt/libtorch/lib"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/pot-node\"]"));
    // The final stage has no compiler: it starts from a slim Debian, not the Rust image.
    let last_from = dockerfile
        .lines()
        .rfind(|l| l.starts_with("FROM "))
        .unwrap();
    assert!(last_from.contains("-slim"), "{last_from}");
    // The chart runs the operator from this image.
    let deployment = read("helm/pot/templates/deployment.yaml");
    assert!(deployment.contains("command: [\"/usr/local/bin/pot-operator\"]"));
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `make image`'s recipe with the test build's binaries: the OCI archive unpacks (umoci, as a
/// runtime would), its config is the Dockerfile's (user 10001, entrypoint, libtorch on the
/// loader path, working directory), the root filesystem has the user and no compiler, and
/// `pot-node --version` and `pot-operator --version` run inside it under chroot as the image's
/// user, with the image's environment only — so every library they load is the image's.
#[test]
fn the_oci_image_unpacks_and_its_binaries_run_inside_it() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "building the image (mmdebstrap's root mode, umoci keeping ownership) and chroot need \
         root; make test runs as root"
    );
    // The build the other e2e tests run (its test-only behaviours are inert unless asked
    // for), so this test adds no build of its own; `make image` packs the release build.
    let node = pot_e2e::pot_node_binary();
    let operator = pot_e2e::workspace_binary("pot-operator", "pot-operator");
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH (make test sets it)");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("pot-node.oci.tar");
    run(
        "node-image/build-oci.sh",
        Command::new(pot_e2e::operator::repo().join("node-image/build-oci.sh"))
            .args(["--pot-node", node.to_str().unwrap()])
            .args(["--pot-operator", operator.to_str().unwrap()])
            .args(["--libtorch", &libtorch])
            .arg("--out")
            .arg(&archive)
            .args(["--tag", "test"]),
    );

    // An OCI archive is a tar of an OCI layout; the tag names its image.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(
        "tar -x",
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let bundle = dir.path().join("bundle");
    run(
        "umoci unpack",
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:pot-node:test", layout.display()))
            .arg(&bundle),
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 10001, "{process}");
    assert_eq!(process["user"]["gid"], 10001, "{process}");
    assert_eq!(
        process["args"],
        serde_json::json!(["/usr/local/bin/pot-node"])
    );
    assert_eq!(process["cwd"], "/var/lib/pot");
    let env: Vec<String> = process["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(
        env.contains(&"LD_LIBRARY_PATH=/opt/libtorch/lib".to_string()),
        "{env:?}"
    );

    let rootfs = bundle.join("rootfs");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("pot:x:10001:10001:")),
        "{passwd}"
    );
    {
        use std::os::unix::fs::MetadataExt as _;
        let home = std::fs::metadata(rootfs.join("var/lib/pot")).unwrap();
        assert_eq!((home.uid(), home.gid()), (10001, 10001));
    }
    for tool in ["usr/bin/cc", "usr/bin/gcc", "usr/bin/ld", "usr/local/cargo"] {
        assert!(
            !rootfs.join(tool).exists(),
            "a build tool in the image: {tool}"
        );
    }
    assert!(rootfs.join("opt/libtorch/lib/libtorch_cpu.so").exists());
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").exists());

    for (binary, name) in [
        ("/usr/local/bin/pot-node", "pot-node"),
        ("/usr/local/bin/pot-operator", "pot-operator"),
    ] {
        let out = run(
            &format!("{name} --version under chroot"),
            Command::new("chroot")
                .arg("--userspec=10001:10001")
                .arg(&rootfs)
                .args(["/usr/bin/env", "-i"])
                .args(&env)
                .args([binary, "--version"]),
        );
        assert_eq!(
            out.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} in the image"
        );
    }
    assert!(Path::new(&archive).metadata().unwrap().len() > 100 << 20);
}
