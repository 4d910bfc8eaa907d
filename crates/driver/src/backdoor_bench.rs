//! `cargo xtask bench backdoor`: our backdoor protocol against the NixOS protocol on the same
//! booted Debian guest (the base image, systemd running), interleaved command by command
//! ([`machinist_backdoor::bench`]): median latency of `true`, `/bin/true` and a mixed workload
//! (`systemctl is-active multi-user.target`, `test -e /etc/hostname`, `cat /etc/os-release`),
//! 200 commands each, and the throughput of `head -c 50M /dev/zero`. The lines end in
//! `baseline_kind=competitor`: the baseline is the NixOS protocol, another implementation.
//!
//! ```no_run
//! print!("{}", machinist::backdoor_bench::run().unwrap());
//! ```

use machinist_backdoor::bench::{self, BenchOptions, BenchReport};
use machinist_guest::NodeConfig;

use crate::error::{Error, Result};
use crate::log::Logger;
use crate::test::Test;

/// Boots one machine (warm start when available), waits for `multi-user.target`, and runs the
/// comparison with the default options. Hold the VM lock (`machinist_qemu::VmTestLock`).
pub fn run() -> Result<BenchReport> {
    let mut report = None;
    Test::new("bench-backdoor")
        .node("bench", NodeConfig::new())
        .logger(Logger::silent())
        .script(|t| {
            let m = t.machine("bench");
            m.start()?;
            m.wait_for_unit("multi-user.target", 300)?;
            let r =
                m.with_shell(async |shell| bench::run(shell, &BenchOptions::default()).await)?;
            report = Some(r.map_err(|e| Error::backend(Some("bench"), "the backdoor bench", e))?);
            Ok(())
        })
        .run()?;
    Ok(report.expect("the script ran"))
}
