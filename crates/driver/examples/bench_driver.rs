//! Driver benchmarks (one VM, takes the VM test lock); run by `cargo xtask bench driver` as
//! `cargo run --release -p machinist --example bench_driver`.
//!
//! Prints, in the workspace's format (ratio > 1 = ours better):
//!
//! * `bench driver-polling: seconds_to_detect ours=<t> baseline=<t> ratio=<r>`: a polling
//!   condition breaks during a 10 s guest `sleep`. Ours checks on a timer through the control
//!   console and interrupts the sleep; the baseline is NixOS' behaviour (conditions are checked
//!   only before the next command), i.e. the end of the sleep plus one check, measured in the same
//!   run.
//! * `bench driver-wait: seconds ours=<t> baseline=<t> ratio=<r>`: `wait_until_succeeds` on a
//!   condition that becomes true after 2 s. Ours loops inside the guest; the baseline is NixOS'
//!   host-side `retry` (one `execute` per attempt, 1 s apart), measured in the same run.
//!
//! Also prints boot-to-first-command and the per-command latency (`info ...` lines).

use std::time::{Duration, Instant};

use machinist::{Error, Logger, NodeConfig, Test};

fn main() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let result = Test::new("bench-driver")
        .node("machine", NodeConfig::new())
        .logger(Logger::silent())
        .script(|t| {
            let m = t.machine("machine");
            let s = Instant::now();
            t.start_all()?;
            m.succeed("true")?;
            println!("info driver: boot to first command {:.2} s", s.elapsed().as_secs_f64());
            let mut lat: Vec<f64> = (0..50)
                .map(|_| {
                    let s = Instant::now();
                    m.execute("true").map(|_| s.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_, _>>()?;
            lat.sort_by(|a, b| a.total_cmp(b));
            println!("info driver: execute(\"true\") median {:.1} ms p90 {:.1} ms", lat[25], lat[45]);

            // Polling condition during a long command.
            let sleep = 10.0;
            let mm = m.clone();
            let cond = t.polling_condition("no /tmp/broken", Duration::from_secs(1), move || {
                mm.succeed("test ! -e /tmp/broken")
            });
            let ours = {
                m.succeed("(sleep 1; touch /tmp/broken) >/dev/null 2>&1 &")?;
                let s = Instant::now();
                let r = t.with_polling(&cond, || m.sleep(sleep));
                assert!(matches!(r, Err(Error::PollingCondition { .. })), "{r:?}");
                s.elapsed().as_secs_f64() - 1.0
            };
            m.succeed("rm -f /tmp/broken")?;
            let baseline = {
                // NixOS: the condition is checked only before the next command.
                m.succeed("(sleep 1; touch /tmp/broken) >/dev/null 2>&1 &")?;
                let s = Instant::now();
                m.sleep(sleep)?;
                let broken = cond.check(true).is_err();
                assert!(broken);
                s.elapsed().as_secs_f64() - 1.0
            };
            println!("bench driver-polling: seconds_to_detect ours={ours:.2} baseline={baseline:.2} ratio={:.2} baseline_kind=ablation", baseline / ours);
            m.succeed("rm -f /tmp/broken")?;

            // wait_until_succeeds: in-guest loop vs host-side retry.
            m.succeed("(sleep 2; touch /tmp/ready1) >/dev/null 2>&1 &")?;
            let s = Instant::now();
            m.wait_until_succeeds("test -e /tmp/ready1", 30)?;
            let ours = s.elapsed().as_secs_f64();
            m.succeed("(sleep 2; touch /tmp/ready2) >/dev/null 2>&1 &")?;
            let s = Instant::now();
            t.retry(Duration::from_secs(30), |_| m.execute("test -e /tmp/ready2").map(|(rc, _)| rc == 0).unwrap_or(false))?;
            let baseline = s.elapsed().as_secs_f64();
            println!("bench driver-wait: seconds ours={ours:.2} baseline={baseline:.2} ratio={:.2} baseline_kind=ablation", baseline / ours);
            Ok(())
        })
        .run();
    if let Err(e) = result {
        eprintln!("bench driver failed: {e}");
        std::process::exit(1);
    }
}
