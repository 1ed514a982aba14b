//! Bake libtorch's directory into the binary's run path, so `pot-node` runs with no
//! environment set up (`LIBTORCH` is where `make setup` unpacked it).
//!
//! With the `cuda` feature, also keep `libtorch_cuda` as a dependency. torch-sys asks to link
//! it whenever the libtorch has it, but rustc links with `--as-needed` and nothing in the
//! binary names a symbol of it, so the linker would drop it, and libtorch would never register
//! its CUDA backend (`Cuda::is_available()` false on a GPU machine).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let libtorch = std::env::var("LIBTORCH").ok();
    if let Some(dir) = &libtorch {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let has_cuda = libtorch.as_ref().is_some_and(|dir| {
            std::path::Path::new(dir)
                .join("lib/libtorch_cuda.so")
                .exists()
        });
        if !has_cuda {
            panic!(
                "the `cuda` feature needs a CUDA libtorch in LIBTORCH (found {libtorch:?} without \
                 lib/libtorch_cuda.so): run `make setup-cuda` and build with \
                 LIBTORCH=$HOME/.cache/pot-k8s/libtorch/2.11.0-cu130"
            );
        }
        for arg in [
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-Wl,--as-needed",
        ] {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
