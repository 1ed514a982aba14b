//! The node image's recipe (`node-image/Dockerfile`) pins what the workspace builds with: the
//! Rust toolchain of `rust-version`, the torch of `setup-libtorch.sh`, the crate version; and it
//! lays the image out as the local kubelet mirrors it (binaries in /usr/local/bin, libtorch in
//! /opt/libtorch/lib, a non-root user). No container engine runs here, so the Dockerfile itself
//! is not built by the tests.

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
