//! Where Machinist keeps cached artefacts (kernels, the accelerator verdict).

use std::path::PathBuf;

/// The cache directory: `$MACHINIST_CACHE_DIR` if set, else `$XDG_CACHE_HOME/machinist`, else
/// `~/.cache/machinist` (falling back to `/tmp/machinist-cache-<uid>` without a home).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = non_empty_env("MACHINIST_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("machinist");
    }
    if let Some(h) = non_empty_env("HOME") {
        return PathBuf::from(h).join(".cache").join("machinist");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/machinist-cache-{uid}"))
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}
