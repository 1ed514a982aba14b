//! Bake libtorch's directory into the binary's run path, so `pot-node` runs with no
//! environment set up (`LIBTORCH` is where `make setup` unpacked it).
//!
//! Compile `src/train/scripted_buffers.cpp` against libtorch's headers (what tch's own C
//! wrapper is compiled with), for the TorchScript buffers tch cannot list.
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
    let shim = "src/train/scripted_buffers.cpp";
    println!("cargo:rerun-if-changed={shim}");
    let include = std::path::PathBuf::from(
        libtorch
            .as_ref()
            .expect("LIBTORCH must name an unpacked libtorch (make setup)"),
    )
    .join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(shim)
        .compile("pot_scripted_buffers");
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
