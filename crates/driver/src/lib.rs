//! Multi-machine integration tests in real QEMU virtual machines: the Rust counterpart of NixOS'
//! `nixosTest` driver.
//!
//! Declare nodes with [`NodeConfig`] (crate `machinist-guest`), write the script as a closure over
//! a [`TestRun`], and call [`Test::run`]. Machine methods keep the NixOS names and defaults
//! (`succeed`, `wait_until_succeeds`, `wait_for_unit`, `block`, `crash`, `get_screen_text`, ...);
//! timeouts are [`std::time::Duration`] (or plain seconds, see [`IntoTimeout`]) and are scaled by
//! `MACHINIST_TIMEOUT_SCALE`.
//!
//! ```no_run
//! use machinist::{NodeConfig, Test};
//!
//! Test::new("ping")
//!     .node("a", NodeConfig::new())
//!     .node("b", NodeConfig::new())
//!     .script(|t| {
//!         t.start_all()?;
//!         t.machine("a").wait_until_succeeds("ping -c1 -W1 b", 30)?;
//!         Ok(())
//!     })
//!     .run()
//!     .unwrap();
//! ```
//!
//! Templates for node files use strict `@name@` substitution: see [`template`].

#[cfg(feature = "bench")]
pub mod backdoor_bench;
mod backend;
mod ctx;
pub mod error;
pub mod log;
pub mod machine;
mod node;
pub mod orphans;
mod polling;
mod run;
mod settle;
pub mod stale;
pub mod template;
mod test;
pub mod timeouts;
mod vlan;
pub mod warm;
#[cfg(feature = "bench")]
pub mod warm_bench;

/// Why this host cannot run container nodes (root, `systemd-nspawn`, `unshare`, `nsenter`, `ip`,
/// `/dev/net/tun`, overlayfs), naming what to install or change; `None` when it can.
pub use backend::container::host_problem as container_host_problem;
pub use backend::BackendKind;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use log::{Logger, Span};
pub use machine::{Commands, ExecResult, Machine, StartKind, WaitForUnit};
pub use node::Node;
pub use polling::{CheckOutcome, PollingCondition};
pub use run::{Report, ScriptResult, TestRun};
pub use template::{substitute_all, substitute_file, substitute_named, TemplateError, Vars};
pub use test::Test;
pub use timeouts::{IntoTimeout, TimeoutScale, Timeouts};
pub use vlan::VLan;
pub use warm::Prepared;

/// Re-exports of the guest crate's configuration types, so tests need only `machinist`.
pub use machinist_guest::{
    presets, DefaultGateway, FileSpec, FirstBootScript, GroupSpec, NodeConfig, Restart, Route,
    ServiceSpec, ServiceType, UserSpec,
};

/// A node file rendered from a template file with strict `@name@` substitution, checked now
/// (before anything boots): `template_file("/etc/postgrest.conf", "tutorial.conf", &vars)?`.
pub fn template_file(
    guest_path: &str,
    template: impl AsRef<std::path::Path>,
    vars: &Vars,
) -> std::result::Result<FileSpec, TemplateError> {
    let template = template.as_ref();
    let rendered = substitute_file(template, vars)?;
    Ok(FileSpec::from_template(
        guest_path,
        template.display().to_string(),
        rendered,
    ))
}

/// A node file rendered from template text (e.g. one embedded with `include_str!`), named
/// `source_name` in errors and in the node's description: [`template_file`] for a program that
/// must not depend on files beside it at run time.
pub fn template_text(
    guest_path: &str,
    source_name: &str,
    text: &str,
    vars: &Vars,
) -> std::result::Result<FileSpec, TemplateError> {
    let rendered = substitute_named(source_name, text, vars)?;
    Ok(FileSpec::from_template(guest_path, source_name, rendered))
}

/// The README's example compiles (`cargo test --doc`): it is the PostgREST tutorial test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
