//! QEMU command lines, process supervision, an async QMP client and the accelerator probe.
//!
//! `machinist-qemu` is the leaf crate of Machinist that knows how to run QEMU well:
//!
//! - [`QemuCommand`]: a typed builder with a deterministic argv and [`QemuCommand::validate`]
//!   (binary installed, files exist, socket paths fit) before anything starts.
//! - [`QemuProcess`]: QEMU in its own process group with a parent-death signal (forked from one
//!   long-lived spawner thread), killed and reaped on drop, serial console captured line by line
//!   ([`SerialLog`]), stderr kept for error messages.
//! - [`Qmp`]: an async QMP client with `id` correlation, events, deadlines and an immediate
//!   [`QmpError::Disconnected`] for every waiter when QEMU goes away.
//! - [`accel::choose`]: KVM only if a probe guest really boots, else TCG, with the reason.
//! - [`cpio::NewcWriter`], [`kernel::test_kernel`] and [`kernel::TinyInitramfs`]: boot a real
//!   Debian kernel in tests without a guest image.
//! - [`VmTestLock`]: the host-wide lock every VM-booting test takes.
//! - [`publish`]: build a cache entry once across processes ([`CacheLock`], [`Staging`]).
//! - [`cache_entries`]: the cache's entries, sizes and last use, and a least-recently-used
//!   clean-up that never removes what a running test uses.
//! - [`shell_quote`], [`single_quote`]: the shell quoting every crate uses.
//!
//! The driver owns every listening socket ([`socket::bind_listener`]); QEMU connects as a client,
//! so nothing the guest writes early is lost.

pub mod accel;
mod cache;
pub mod cache_entries;
mod command;
pub mod cpio;
mod error;
mod groups;
pub mod kernel;
pub mod keys;
mod lock;
pub mod overlay;
mod process;
pub mod publish;
pub mod qmp;
mod quote;
mod serial;
pub mod socket;
mod spawner;
#[cfg(test)]
mod testutil;
mod version;

pub use accel::{AccelChoice, ChoiceSource};
pub use cache::cache_dir;
pub use command::{
    find_binary, Accel, Display, Drive, DriveFormat, NetBackend, Nic, PortKind, QemuCommand,
    Serial, VirtConsole,
};
pub use error::{describe_status, QemuError, QEMU_PACKAGE};
pub use groups::{
    kill_live_process_groups, live_process_groups, register as register_process_group,
    unregister as unregister_process_group,
};
pub use lock::{VmTestLock, VM_LOCK_PATH};
pub use process::{QemuProcess, KILL_GRACE, STDERR_TAIL_BYTES};
pub use publish::{CacheLock, PublishError, Staging};
pub use qmp::{
    wait_event, MigrationInfo, Qmp, QmpError, QmpEvent, QmpVersion, ScreendumpFormat, StatusInfo,
};
pub use quote::{shell_quote, single_quote};
pub use serial::{SerialError, SerialLine, SerialLog};
pub use spawner::spawn_supervised;
pub use version::{qemu_version, qemu_version_of, QemuVersion};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
