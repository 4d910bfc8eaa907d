//! Commands whose implementation belongs to another issue: they say so and exit 2.

use crate::BenchKind;

/// A command that exists but is not implemented yet.
#[derive(Debug, thiserror::Error)]
#[error("`cargo xtask {command}` is not implemented yet: {issue} ({owner}) implements it")]
pub struct NotImplemented {
    /// The subcommand.
    pub command: String,
    /// The issue(s) that implement it, e.g. "issue 4".
    pub issue: String,
    /// The crate(s) it depends on.
    pub owner: &'static str,
}

/// Fails with [`NotImplemented`].
pub fn not_yet(command: &str, issue: u32, owner: &'static str) -> anyhow::Result<()> {
    Err(NotImplemented {
        command: command.to_string(),
        issue: format!("issue {issue}"),
        owner,
    }
    .into())
}

/// `cargo xtask bench <which>`.
///
/// Each benchmark is a public function (or example) of its crate; when one lands, xtask gains an
/// optional dependency on that crate behind its `bench` feature (see xtask/Cargo.toml) and calls it
/// here, so that `cargo xtask deps`/`test` never have to build the benchmark code.
pub fn bench(which: BenchKind) -> anyhow::Result<()> {
    let (issue, owner) = match which {
        BenchKind::Boot => (4, "crates/guest"),
        BenchKind::Backdoor => (5, "crates/backdoor"),
        BenchKind::Switch => (6, "crates/netsim"),
        BenchKind::Ocr => (7, "crates/ocr"),
        BenchKind::Warm => (11, "crates/driver"),
        BenchKind::All => (0, "guest, backdoor, netsim, ocr, driver"),
    };
    let name = format!("bench {}", format!("{which:?}").to_lowercase());
    if issue == 0 {
        return Err(NotImplemented {
            command: name,
            issue: "issues 4, 5, 6, 7 and 11".into(),
            owner,
        }
        .into());
    }
    not_yet(&name, issue, owner)
}
