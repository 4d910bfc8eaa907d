//! Debian guest images built with mmdebstrap, a tiny initramfs, and the per-node configuration layer.
//!
//! * [`NodeConfig`]: what a test machine is (packages, files, services, users, firewall, VLANs).
//! * [`validate`]: every problem at once, each naming node and field.
//! * [`NetworkPlan`]: node numbers, MACs, addresses and `/etc/hosts`.
//! * [`ImageCache::ensure`]: content-addressed images (raw ext4 + kernel + tiny initrd).
//! * [`verify_cache`], [`pin_image`]: full-hash check of the cache; a run's own link to its image.
//! * [`supervise`]: every external command in its own process group, killed with its parent.
//! * [`NodeLayer`]: the per-node file tree, appended to the initrd as a cpio and applied by
//!   `/usr/lib/machinist/apply-layer` at boot (or live, through the backdoor).

mod backdoor_files;
#[cfg(feature = "bench")]
pub mod bench;
mod config;
mod error;
mod image;
pub mod initrd;
mod integrity;
mod layer;
mod network;
pub mod presets;
mod progress;
pub mod supervise;
pub mod tar;
pub mod testvm;
pub mod tuning;
mod unit_name;
pub mod units;
mod validate;

pub use backdoor_files::{backdoor_files, BackdoorInstall};
pub use config::{
    DefaultGateway, FileSpec, FirewallSpec, FirstBootScript, GroupSpec, NodeBackend, NodeConfig,
    Restart, Route, ServiceSpec, ServiceType, UserSpec, DEFAULT_CORES, DEFAULT_MEMORY_MIB,
    IP_FORWARDING_SYSCTLS,
};
pub use error::{FieldError, GuestError, Result};
pub use image::{
    bundled_specs, classify_failure, default_cache_dir, Artefact, Image, ImageCache, ImageSpec,
    ARTEFACT_FILES, DEFAULT_SUITE, MIRRORS,
};
pub use integrity::{hash_file, pin_image, verify_cache, VerifyReport, VerifyStatus};
pub use layer::{
    LayerEntry, LayerFile, NodeLayer, APPLY_LAYER_PATH, INITRD_LAYER_DIR, MODULES_LOAD_PATH,
    SYSCTL_PATH,
};
pub use network::{mac_for, on_vlan_subnet, Interface, NetworkPlan, PlannedNode, UserInterface};
pub use progress::Progress;
pub use tuning::Profile;
pub use unit_name::{full_unit_name, UNIT_NAME_MAX, UNIT_TYPES};
pub use validate::{
    is_valid_account_name, is_valid_hostname, is_valid_module_name, is_valid_sysctl_key,
    parse_cidr, unit_line_problem, validate,
};

/// POSIX shell quoting for paths put into a shell script (Machinist's one quoting, from
/// `machinist-qemu`).
pub use machinist_qemu::shell_quote;

/// The kernel command line our images boot with (before the node's `kernel_args`).
pub const KERNEL_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw quiet";
