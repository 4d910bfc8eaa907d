//! Warm start: a machine's first start restores a saved, booted guest of the same image and
//! machine shape, then gives it the node's identity, instead of booting from the kernel.
//!
//! Everything about it lives here: the plan (whether a node may start warm, `plan`), the
//! snapshot cache (`cache`) and its builder (`build`), the restore (`restore`) and the
//! identity the restored guest applies (`identity`). The machine calls `start` from one
//! place in its start path, and the two identity hooks (`identity::wake`,
//! `identity::check`) when its backdoor connects.
//!
//! Only the first start of a machine is warm; a restart (after `crash()`, `shutdown()`, a reboot
//! without `allow_reboot`) boots cold from the machine's own overlay, so everything written
//! before is still there.

pub(crate) mod build;
pub(crate) mod cache;
pub(crate) mod identity;
pub(crate) mod restore;

use std::time::Instant;

use machinist_guest::NodeConfig;

use crate::backend::qemu::{QemuBackend, Started};
use crate::ctx::Ctx;
use crate::error::{Error, Result};

pub use cache::{snapshot_root, WarmError};

/// The environment switch: warm start is on unless `MACHINIST_WARM_START=0` (or `false`, `no`,
/// `off`).
pub const WARM_START_ENV: &str = "MACHINIST_WARM_START";

/// Whether warm start is on by default (when [`WARM_START_ENV`] is unset).
pub const WARM_START_DEFAULT: bool = true;

/// Whether warm start is enabled by the environment (default: [`WARM_START_DEFAULT`]).
pub fn warm_start_from_env() -> bool {
    match std::env::var(WARM_START_ENV).ok().as_deref().map(str::trim) {
        Some("0" | "false" | "no" | "off") => false,
        Some("1" | "true" | "yes" | "on") => true,
        _ => WARM_START_DEFAULT,
    }
}

/// Whether and how a machine may be restored.
#[derive(Debug, Clone)]
pub(crate) enum WarmChoice {
    /// Restore from a snapshot.
    Warm(WarmPlan),
    /// Boot cold (the reason, logged once).
    Cold(String),
}

/// What a warm start needs besides the boot spec.
#[derive(Debug, Clone)]
pub(crate) struct WarmPlan {
    /// The image's content hash (part of the snapshot key).
    pub(crate) image_hash: String,
}

/// Whether a node may be restored from its node snapshot. Every input of the node (image,
/// layer, kernel command line, shape, MACs) is part of the snapshot key; only extra QEMU
/// arguments rule it out (devices a snapshot may not carry).
pub(crate) fn plan(warm_start: bool, cfg: &NodeConfig, img: &machinist_guest::Image) -> WarmChoice {
    if !warm_start {
        return WarmChoice::Cold(
            "warm start is off (MACHINIST_WARM_START=0 or Test::warm_start(false))".into(),
        );
    }
    if !cfg.qemu_args.is_empty() {
        return WarmChoice::Cold("the node has extra QEMU arguments".into());
    }
    WarmChoice::Warm(WarmPlan {
        // The exact bytes, not the recipe: a rebuilt image gets new snapshots.
        image_hash: img.content_id(),
    })
}

/// What [`start`] did.
pub(crate) enum Outcome {
    /// Restored: the VM runs; its identity is applied when its backdoor connects.
    Restored {
        started: Started,
        pending: identity::PendingIdentity,
        /// The snapshot key.
        key: String,
        /// From the start of the restore to a running VM.
        seconds: f64,
        /// The snapshot was built for this start (the node's first run).
        built: bool,
    },
    /// Boot cold.
    Cold {
        /// Why.
        reason: String,
        /// The log line that says so (`None` when a warning already did).
        line: Option<String>,
    },
}

impl Outcome {
    fn cold(reason: impl Into<String>, line: bool) -> Self {
        let reason = reason.into();
        Outcome::Cold {
            line: line.then(|| format!("cold boot: {reason}")),
            reason,
        }
    }
}

/// Tries to restore a machine from its snapshot; `first` is true for its first start only.
pub(crate) fn start(
    ctx: &Ctx,
    backend: &QemuBackend,
    choice: &WarmChoice,
    first: bool,
    allow_reboot: bool,
    name: &str,
) -> Result<Outcome> {
    let plan = match choice {
        WarmChoice::Warm(p) if first => p,
        WarmChoice::Cold(reason) => return Ok(Outcome::cold(reason.clone(), first)),
        WarmChoice::Warm(_) => {
            return Ok(Outcome::Cold {
                reason: "restart from the machine's own disk overlay".into(),
                line: Some("cold boot from the machine's own disk overlay (restart)".into()),
            })
        }
    };
    if backend.overlay().exists() {
        return Ok(Outcome::cold(
            "the machine already has a disk overlay",
            true,
        ));
    }
    let version = match machinist_qemu::qemu_version() {
        Ok(v) => v.text,
        Err(e) => {
            return Ok(Outcome::cold(
                format!("cannot read the QEMU version ({e})"),
                true,
            ))
        }
    };
    let key = cache::node_key(backend.spec(), &plan.image_hash, &version);
    for attempt in 0..2 {
        let snap = match ensure_snapshot(ctx, backend.spec(), &key, name) {
            Ok(s) => s,
            Err(e) => {
                ctx.logger
                    .warning(Some(name), &format!("{e}; booting cold"));
                return Ok(Outcome::cold(format!("no snapshot ({e})"), false));
            }
        };
        let began = Instant::now();
        match restore::restore(ctx, backend, &snap, allow_reboot, name) {
            Ok((started, pending)) => {
                return Ok(Outcome::Restored {
                    started,
                    pending,
                    key,
                    seconds: began.elapsed().as_secs_f64(),
                    built: snap.built,
                })
            }
            Err(e) => {
                restore::remove_disks(backend);
                snap.discard();
                let next = if attempt == 0 {
                    "rebuilding it"
                } else {
                    "booting cold"
                };
                ctx.logger.warning(
                    Some(name),
                    &format!(
                        "warm start: snapshot {key} failed to restore ({e}); discarded, {next}"
                    ),
                );
            }
        }
    }
    Ok(Outcome::cold(
        format!("snapshot {key} failed to restore twice"),
        false,
    ))
}

/// What preparing a machine's warm start ahead of a test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The snapshot its first start restores (built now or found in the cache).
    Snapshot {
        /// The snapshot key.
        key: String,
    },
    /// The machine boots cold, for this reason.
    Cold {
        /// Why.
        reason: String,
    },
}

/// Builds (or reuses) the snapshot a machine's first start would restore, without starting it.
pub(crate) fn prepare(
    ctx: &Ctx,
    backend: &QemuBackend,
    choice: &WarmChoice,
    name: &str,
) -> Result<Prepared> {
    let plan = match choice {
        WarmChoice::Warm(p) => p,
        WarmChoice::Cold(reason) => {
            return Ok(Prepared::Cold {
                reason: reason.clone(),
            })
        }
    };
    let version = machinist_qemu::qemu_version()
        .map_err(|e| Error::backend(Some(name), "reading the QEMU version", e))?
        .text;
    let key = cache::node_key(backend.spec(), &plan.image_hash, &version);
    ensure_snapshot(ctx, backend.spec(), &key, name)
        .map_err(|e| Error::backend(Some(name), "building the warm-start snapshot", e))?;
    Ok(Prepared::Snapshot { key })
}

fn ensure_snapshot(
    ctx: &Ctx,
    spec: &crate::backend::qemu::BootSpec,
    key: &str,
    name: &str,
) -> std::result::Result<cache::Snapshot, WarmError> {
    cache::ensure(&ctx.handle, spec, key, &ctx.timeouts, &|m| {
        ctx.logger.log(Some(name), m)
    })
}
