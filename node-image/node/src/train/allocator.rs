//! glibc's allocator, set up for training. libtorch takes CPU tensors from `malloc`; by default
//! glibc hands blocks above a (moving) threshold straight back to the kernel when they are freed,
//! so every step maps its large buffers (convolution workspaces, activations) again and the
//! kernel zeroes each page. Keeping freed memory in the heap for reuse gave LeNet-5 at batch 256
//! 10–20 % more steps/s on the benchmark machine and left small models unchanged. The cost is a
//! resident heap that stays at its high-water mark, which a training process wants anyway; the
//! coordinator does not call this.

/// Keep freed memory for reuse: blocks under 256 MiB come from the heap, and the heap is trimmed
/// only when more than 1 GiB at its top is free. Call once, early, before training.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the training
    // threads start and takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
