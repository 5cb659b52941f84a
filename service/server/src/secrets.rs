//! Secrets handed to the process at start, taken so that nothing can read them later:
//! not the workloads the service starts (they get a cleared environment anyway), not a
//! same-user process reading `/proc/<pid>/environ`, not a crash report.

/// Takes the value of environment variable `name`, if set and not empty: overwrites it
/// where the kernel put it (what `/proc/<pid>/environ` shows), then unsets it. Call it
/// before the process starts threads.
pub fn take_from_environment(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: single-threaded at start. getenv returns a pointer into the environment
    // block, to the value's bytes up to their NUL; overwriting them in place keeps the
    // string's length and terminator.
    unsafe {
        let pointer = libc::getenv(c_name.as_ptr());
        if !pointer.is_null() {
            let length = libc::strlen(pointer);
            std::ptr::write_bytes(pointer, b'x', length);
        }
    }
    std::env::remove_var(name);
    value.filter(|v| !v.is_empty())
}
