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

/// libtorch's kernel choice (oneDNN) and intra-op thread count are process-wide: a replay that
/// must be bit-identical cannot run while other work in the same process switches them. Work
/// holds the settings it needs through a [`Settings`] guard: any number of holders of the same
/// settings run together; others wait until the last has let go.
pub struct Settings {
    _private: (),
}

type Held = (Option<(bool, i32)>, usize);

fn settings_lock() -> &'static (std::sync::Mutex<Held>, std::sync::Condvar) {
    static LOCK: std::sync::OnceLock<(std::sync::Mutex<Held>, std::sync::Condvar)> =
        std::sync::OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// Wait until the process runs with `exact` kernels and `threads` threads (setting them if
/// nobody holds other settings), and hold them until the guard drops.
pub fn hold(exact: bool, threads: i32) -> Settings {
    let (lock, freed) = settings_lock();
    let mut held = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match held.0 {
            Some(s) if s == (exact, threads) => break,
            None => {
                exact_cpu_kernels(exact);
                tch::set_num_threads(threads);
                held.0 = Some((exact, threads));
                break;
            }
            Some(_) => held = freed.wait(held).unwrap_or_else(|e| e.into_inner()),
        }
    }
    held.1 += 1;
    Settings { _private: () }
}

impl Drop for Settings {
    fn drop(&mut self) {
        let (lock, freed) = settings_lock();
        let mut held = lock.lock().unwrap_or_else(|e| e.into_inner());
        held.1 -= 1;
        if held.1 == 0 {
            held.0 = None;
            freed.notify_all();
        }
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
    /// Work with other kernel settings waits until the last holder of the current ones is
    /// done; holders of the same settings run together.
    #[test]
    fn other_settings_wait_for_the_current_ones_to_be_released() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let a = super::hold(true, 1);
        let b = super::hold(true, 1);
        assert!(!super::onednn_enabled());
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        let other = std::thread::spawn(move || {
            let _c = super::hold(false, 1);
            flag.store(true, Ordering::SeqCst);
            super::onednn_enabled()
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!other_ran.load(Ordering::SeqCst));
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !other_ran.load(Ordering::SeqCst),
            "ran while settings were held"
        );
        drop(b);
        assert!(
            other.join().unwrap(),
            "the waiting work got its own settings"
        );
    }

    use super::*;

    #[test]
    fn the_onednn_switch_reaches_libtorch() {
        // Through the settings lock: tests run on threads of one process.
        let exact = hold(true, 1);
        assert!(!onednn_enabled());
        drop(exact);
        let _fast = hold(false, 1);
        assert!(onednn_enabled());
    }
}
