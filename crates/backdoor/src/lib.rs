//! The guest root-shell protocol: the guest unit and script, and the host client with one round
//! trip per command.
//!
//! * [`guest`]: the script and systemd units installed in every image (NixOS-compatible greeting,
//!   raw console, stderr on the serial port; started early in `sysinit.target`).
//! * [`Shell`]: the main shell (the first virtio serial port, `vport0p1`). [`Shell::connect`] waits for the greeting and installs a
//!   preamble of bash helpers; [`Shell::execute`] runs one command per round trip in its own
//!   subshell, streams its output lines, returns its exit code and raw output bytes, detects
//!   background processes left holding its stdout, and enforces a host-side timeout.
//! * [`Control`]: the control shell (the second port, `vport0p2`), which kills a running command's process tree
//!   (timeouts, [`Canceller`]) and runs polling checks while the main shell is busy.
//! * [`Shell::attach_raw`]: interactive raw mode, handing the channel back resynchronised.
//! * `nixos` and `bench` (cargo feature `bench` only): the NixOS protocol, byte for byte, as the
//!   benchmark baseline, and the benchmark that compares it with ours.
//! * [`local`]: the real guest script on a socket pair with the host's bash, for tests without a VM.
//!
//! ```no_run
//! # async fn demo() -> Result<(), machinist_backdoor::ShellError> {
//! use machinist_backdoor::{ConnectOptions, Control, Shell};
//! use std::time::Duration;
//! let (main, ctl) = (tokio::net::UnixListener::bind("hvc0.sock").unwrap(), tokio::net::UnixListener::bind("hvc1.sock").unwrap());
//! // ... spawn QEMU with `-chardev socket,id=shell,path=hvc0.sock -device virtconsole,chardev=shell` ...
//! let opts = ConnectOptions::new("server");
//! let mut shell = Shell::connect(main.accept().await.unwrap().0, opts.clone()).await?;
//! shell.set_control(Control::connect(ctl.accept().await.unwrap().0, opts.control()).await?);
//! let out = shell.execute("systemctl is-active multi-user.target", Some(Duration::from_secs(10)),
//!     &mut |line| println!("server: {}", String::from_utf8_lossy(line))).await?;
//! assert_eq!(out.code, 0);
//! # Ok(()) }
//! ```

mod attach;
#[cfg(feature = "bench")]
pub mod bench;
mod control;
mod error;
pub mod guest;
pub mod local;
#[cfg(feature = "bench")]
pub mod nixos;
pub mod protocol;
mod shell;

pub use attach::ESCAPE_CTRL_RIGHT_BRACKET;
pub use control::Control;
pub use error::ShellError;
pub use shell::{
    dropped_marker, Canceller, ConnectOptions, Output, Shell, ShellStream, DEFAULT_OUTPUT_LIMIT,
    MAX_LINE, MIN_OUTPUT_LIMIT, OUTPUT_LIMIT_ENV,
};
