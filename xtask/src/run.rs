//! Running child commands with their exit code kept.

use std::process::Command;

use anyhow::{Context, Result};

/// A child command that exited non-zero; `main` exits with the same code.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` exited with code {code}")]
pub struct ChildFailed {
    /// The command line, for the message.
    pub command: String,
    /// Its exit code (128 + signal when killed by a signal).
    pub code: i32,
}

/// Prints and runs `cmd`, failing with [`ChildFailed`] on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("starting `{shown}`"))?;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Err(ChildFailed {
        command: shown,
        code,
    }
    .into())
}

/// `cmd` as a readable command line.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` as cargo itself names it (`$CARGO` inside `cargo run`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// True when `cargo nextest` is installed.
pub fn have_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes Ctrl-C (SIGINT) a no-op for xtask itself, so the child it runs next decides what Ctrl-C
/// does (the REPL interrupts a guest command; `machinist run` cleans up and exits) while xtask
/// lives on to take the terminal back and print its summary. A handler, not `SIG_IGN`: handlers
/// are reset to the default in children at exec, an ignored signal would stay ignored.
pub fn survive_ctrl_c() {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: installs an async-signal-safe handler that does nothing.
    unsafe {
        libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
    }
}
