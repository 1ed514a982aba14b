//! Bake libtorch's directory into the binary's run path, so `pot-node` runs with no
//! environment set up (`LIBTORCH` is where `make setup` unpacked it).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
