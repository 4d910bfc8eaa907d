//! Warm start: machines restored from a snapshot get their own identity; a broken snapshot is
//! rebuilt; cold mode still boots cold.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use machinist::{NodeConfig, Test};

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn log_text(out: &std::path::Path) -> String {
    std::fs::read_to_string(out.join("log.jsonl")).unwrap_or_default()
}

#[test]
fn vm_warm_restored_machines_have_their_own_identity() {
    let _lock = common::vm_lock();
    let out = common::out_dir("vm_warm_identity");
    Test::new("vm-warm-identity")
        .node("alpha", NodeConfig::new().open_tcp_port(7000))
        .node("beta", NodeConfig::new())
        .output_dir(&out)
        .serial_stdout(false)
        .warm_start(true)
        .boot_deadline(Duration::from_secs(150))
        .script(|t| {
            t.start_all()?;
            let mut randoms = Vec::new();
            for (name, n, mac) in [
                ("alpha", 1, "52:54:00:12:01:01"),
                ("beta", 2, "52:54:00:12:01:02"),
            ] {
                let m = t.machine(name);
                // Restored, not booted.
                m.succeed("test -e /run/machinist-restored")?;
                assert_eq!(m.succeed("hostname")?.trim(), name);
                assert_eq!(m.succeed("cat /sys/class/net/vlan1/address")?.trim(), mac);
                m.wait_until_succeeds(
                    &format!("ip -4 addr show dev vlan1 | grep -q 'inet 192.168.1.{n}/24'"),
                    30,
                )?;
                let guest: f64 = m.succeed("date +%s.%N")?.trim().parse()?;
                let skew = (guest - host_now()).abs();
                assert!(skew < 2.0, "{name}: clock off by {skew:.2} s");
                randoms.push(m.succeed("head -c 16 /dev/urandom | od -An -tx1")?);
                assert!(m.succeed("cat /etc/hosts")?.contains("192.168.1.2 beta"));
            }
            assert_ne!(randoms[0], randoms[1], "same random output after restore");
            let alpha = t.machine("alpha");
            let beta = t.machine("beta");
            beta.wait_until_succeeds("ping -c1 -W1 alpha", 30)?;
            alpha.succeed("ping -c1 -W1 192.168.1.2")?;
            // The firewall of the node layer is live: a closed port is refused.
            alpha.succeed("systemd-run --unit=listen7000 nc -lk 7000")?;
            beta.wait_until_succeeds("echo hi | nc -w2 -N alpha 7000", 30)?;
            beta.fail("echo hi | nc -w2 -N alpha 7001")?;
            // crash() + start(): a cold boot from the machine's own overlay keeps the data.
            alpha.succeed("echo kept > /root/data && sync")?;
            alpha.crash()?;
            alpha.start()?;
            assert_eq!(alpha.succeed("cat /root/data")?.trim(), "kept");
            alpha.fail("test -e /run/machinist-restored")?;
            assert_eq!(alpha.succeed("hostname")?.trim(), "alpha");
            Ok(())
        })
        .run()
        .unwrap();
    let log = log_text(&out);
    assert!(log.contains("warm start: restored from snapshot"), "{log}");
    assert!(
        log.contains("cold boot from the machine's own disk overlay"),
        "{log}"
    );
}

#[test]
fn vm_warm_corrupt_snapshot_is_rebuilt() {
    let _lock = common::vm_lock();
    // Make sure the snapshot of this shape exists, then truncate every state file.
    let single = || {
        Test::new("vm-warm-corrupt")
            .node("solo", NodeConfig::new())
            .serial_stdout(false)
            .warm_start(true)
            .boot_deadline(Duration::from_secs(150))
            .script(|t| {
                let m = t.machine("solo");
                m.succeed("test -e /run/machinist-restored")?;
                assert_eq!(m.succeed("hostname")?.trim(), "solo");
                Ok(())
            })
    };
    let out = common::out_dir("vm_warm_corrupt_1");
    single().output_dir(&out).run().unwrap();
    // Only this test's own snapshot is damaged: other tests' snapshots in the shared cache
    // must not be touched.
    let log = log_text(&out);
    let key = regex::Regex::new(r"restored from snapshot ([0-9a-f]+)")
        .unwrap()
        .captures(&log)
        .unwrap_or_else(|| panic!("the first run was not restored:\n{log}"))[1]
        .to_string();
    let state = machinist::warm::snapshot_root().join(&key).join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let out = common::out_dir("vm_warm_corrupt_2");
    let started = std::time::Instant::now();
    single().output_dir(&out).run().unwrap();
    let log = log_text(&out);
    assert!(log.contains("failed to restore"), "{log}");
    assert!(log.contains("discarded, rebuilding it"), "{log}");
    assert!(log.contains("warm start: restored from snapshot"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(300));
}

#[test]
fn vm_cold_mode_boots_cold() {
    let _lock = common::vm_lock();
    let out = common::out_dir("vm_warm_cold");
    Test::new("vm-cold")
        .node("frosty", NodeConfig::new())
        .output_dir(&out)
        .serial_stdout(false)
        .warm_start(false)
        .script(|t| {
            let m = t.machine("frosty");
            m.fail("test -e /run/machinist-restored")?;
            assert_eq!(m.succeed("hostname")?.trim(), "frosty");
            m.wait_until_succeeds("ip -4 addr show dev vlan1 | grep -q 192.168.1.1/24", 30)?;
            Ok(())
        })
        .run()
        .unwrap();
    assert!(log_text(&out).contains("cold boot: warm start is off"));
}

/// What a node looks like from inside: everything a restored node and a cold-booted node of the
/// same configuration must agree on.
fn fingerprint(m: &machinist::Machine) -> Vec<(&'static str, String)> {
    let probes: [(&str, &str); 10] = [
        ("hostname", "hostname"),
        ("addresses", "ip -br addr | awk '{print $1, $3, $4}' | sort"),
        ("routes", "ip route | sort"),
        ("sysctl from the node's sysctl.d", "sysctl -n net.ipv4.ip_forward"),
        ("user", "getent passwd alice | cut -d: -f1,6,7"),
        ("file", "cat /etc/fidelity.conf"),
        ("service", "systemctl is-active fidelity.service"),
        (
            "active units",
            "systemctl list-units --state=active --no-legend --plain --type=service,socket,target,mount \
             | awk '{print $1}' | grep -v -e '^run-' -e '^machinist-' -e '^user' | sort",
        ),
        ("firewall", "nft list ruleset | grep -c dport || true"),
        ("tty1 banner", "fold -w80 /dev/vcs1 | grep -o 'fidelity login:' | head -1"),
    ];
    probes
        .iter()
        .map(|(what, cmd)| {
            (
                *what,
                m.succeed(*cmd).unwrap_or_else(|e| format!("error: {e}")),
            )
        })
        .collect()
}

/// A node restored from its node snapshot and the same node booted cold agree on hostname,
/// addresses, routes, sysctls (read at early boot), users, files, units and their state, the
/// firewall and the login banner.
#[test]
fn vm_warm_restored_node_matches_cold_boot() {
    let _lock = common::vm_lock();
    let node = || {
        NodeConfig::new()
            .file(machinist::FileSpec::new(
                "/etc/sysctl.d/90-forward.conf",
                "net.ipv4.ip_forward = 1\n",
            ))
            .file(machinist::FileSpec::new(
                "/etc/fidelity.conf",
                "answer=42\n",
            ))
            .user(machinist::UserSpec::new("alice"))
            .service(
                machinist::ServiceSpec::new("fidelity", "/usr/bin/sleep infinity")
                    .wanted_by(["multi-user.target"]),
            )
            .open_tcp_port(7000)
    };
    let run = |warm: bool| {
        let out = common::out_dir(if warm {
            "vm_warm_fidelity_warm"
        } else {
            "vm_warm_fidelity_cold"
        });
        let seen = std::sync::Mutex::new(Vec::new());
        Test::new("vm-warm-fidelity")
            .node("fidelity", node())
            .output_dir(&out)
            .serial_stdout(false)
            .warm_start(warm)
            .boot_deadline(Duration::from_secs(150))
            .script(|t| {
                let m = t.machine("fidelity");
                let restored = m.execute("test -e /run/machinist-restored")?.0 == 0;
                assert_eq!(restored, warm, "warm={warm} but restored={restored}");
                m.succeed("systemctl is-system-running --wait || true")?;
                // networkd assigns addresses after boot-up is complete (nothing waits for the
                // network to be online): wait for both before comparing.
                m.wait_until_succeeds(
                    "ip -br addr show dev vlan1 | grep -q '192.168.1.1/24 2001:db8:1::1/64'",
                    60,
                )?;
                *seen.lock().unwrap() = fingerprint(&m);
                Ok(())
            })
            .run()
            .unwrap();
        seen.into_inner().unwrap()
    };
    let cold = run(false);
    let warm = run(true);
    assert_eq!(
        cold.iter()
            .find(|(w, _)| *w == "sysctl from the node's sysctl.d")
            .unwrap()
            .1
            .trim(),
        "1"
    );
    for ((what, c), (_, w)) in cold.iter().zip(&warm) {
        assert_eq!(c, w, "{what} differs: cold {c:?}, warm {w:?}");
    }
}
