//! What makes a CPU run replay bit for bit in another process, with another thread count, on
//! another x86-64 machine with the same libtorch. Measured (see `tests/cli_train.rs`):
//! - ATen's CPU kernels are chosen by `ATEN_CPU_CAPABILITY`; `avx2` and `default` give other
//!   bits (~1e-7 apart after 20 steps). `pot-node` pins it by re-running itself (`--cpu-capability`,
//!   `avx2` by default, which every x86-64-v3 CPU has).
//! - MKL's GEMM, used for every linear layer, sums in a thread-count- and CPU-dependent order
//!   unless its Conditional Numerical Reproducibility is on: `MKL_CBWR=AVX2,STRICT` (set by the
//!   same re-run) makes it identical for any thread count on any AVX2 CPU.
//! - oneDNN's convolutions split their weight-gradient sums by thread; with oneDNN switched off
//!   libtorch convolves by im2col and MKL's GEMM, which the setting above makes reproducible.
//!   That costs speed, so it is done only for tasks that demand bit-identical replays.
//!
//! GPU runs are never bit-identical to CPU ones; their tasks use a tolerance.

use std::ffi::c_void;

/// The environment a replayable CPU run needs: each variable with its value. `pot-node` re-runs
/// itself with these set before libtorch loads.
pub fn pinned_environment(cpu_capability: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MKL_CBWR", "AVX2,STRICT".to_string()),
        ("ONEDNN_MAX_CPU_ISA", "AVX2".to_string()),
    ];
    if cpu_capability != "native" {
        env.push(("ATEN_CPU_CAPABILITY", cpu_capability.to_string()));
    }
    env
}

/// Whether this process already runs in `pinned_environment(cpu_capability)`.
pub fn environment_is_pinned(cpu_capability: &str) -> bool {
    pinned_environment(cpu_capability)
        .iter()
        .all(|(k, v)| std::env::var(k).as_deref() == Ok(v.as_str()))
}

#[allow(unsafe_code)]
unsafe extern "C" {
    // libtorch's C++ API, by its Itanium-mangled names (libtorch_cpu exports them; tch has no
    // binding): `at::globalContext()` and `at::Context::{set,}userEnabledMkldnn`.
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut c_void;
    #[link_name = "_ZN2at7Context20setUserEnabledMkldnnEb"]
    fn at_context_set_user_enabled_mkldnn(context: *mut c_void, enabled: bool);
    #[link_name = "_ZNK2at7Context17userEnabledMkldnnEv"]
    fn at_context_user_enabled_mkldnn(context: *const c_void) -> bool;
}

/// Use only kernels whose results do not depend on the thread count (oneDNN off) when `exact`;
/// the fastest otherwise. Process-wide; set it before training or replaying a task.
pub fn exact_cpu_kernels(exact: bool) {
    // SAFETY: `globalContext` returns libtorch's process-wide context, which lives as long as
    // the library; the setter takes that context and a bool and only stores the flag.
    #[allow(unsafe_code)]
    unsafe {
        at_context_set_user_enabled_mkldnn(at_global_context(), !exact);
    }
}

/// Whether libtorch may use oneDNN now.
pub fn onednn_enabled() -> bool {
    // SAFETY: as above; the getter only reads the flag.
    #[allow(unsafe_code)]
    unsafe {
        at_context_user_enabled_mkldnn(at_global_context())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_onednn_switch_reaches_libtorch() {
        exact_cpu_kernels(true);
        assert!(!onednn_enabled());
        exact_cpu_kernels(false);
        assert!(onednn_enabled());
    }
}
