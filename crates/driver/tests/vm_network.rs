//! Two machines: networking by name, block/unblock, crash and restart, reboot, copies between host
//! and machines, and a polling condition that fails during a long command.

mod common;

use std::time::{Duration, Instant};

use machinist::{Error, NodeConfig, Test};

#[test]
fn vm_two_machines() {
    let _lock = common::vm_lock();
    let out = common::out_dir("vm_network");
    let host = tempfile::tempdir().unwrap();
    Test::new("vm-network")
        .node("alpha", NodeConfig::new())
        .node("beta", NodeConfig::new().open_tcp_port(5555))
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let (a, b) = (t.machine("alpha"), t.machine("beta"));
            assert_eq!(t.machines().iter().map(|m| m.name().to_string()).collect::<Vec<_>>(), ["alpha", "beta"]);
            assert_eq!(t.node("beta").ip(1).unwrap().to_string(), "192.168.1.2");
            let t0 = Instant::now();
            t.start_all()?;
            // The guide's pattern: a short wait right after start_all, under TCG.
            a.wait_until_succeeds("ping -c1 -W1 beta", 7)?;
            eprintln!("METRIC two machines: first ping by name after {:.2} s", t0.elapsed().as_secs_f64());
            b.succeed("ping -c1 -W1 alpha")?;
            // NixOS' name for the first NIC, as an alternative name (udev, from the .link file).
            let eth1 = a.succeed("ip link show eth1")?;
            assert!(eth1.contains("vlan1:") && eth1.contains("altname eth1"), "{eth1}");

            t.subtest("block and unblock", || {
                b.block()?;
                let s = Instant::now();
                a.fail("ping -c1 -W1 beta")?;
                let failed_after = s.elapsed();
                eprintln!("METRIC ping to a blocked machine failed after {:.2} s", failed_after.as_secs_f64());
                assert!(failed_after < Duration::from_secs(2), "{failed_after:?}");
                b.unblock()?;
                a.wait_until_succeeds("ping -c1 -W1 beta", 20)?;
                // The VLAN's capture shows the echo requests and replies (pcaps of a passing run
                // are deleted at the end, so read it here).
                let vlan = t.vlan(1).expect("VLAN 1");
                vlan.switch().flush_pcap().expect("flush the pcap");
                let pcap = vlan.pcap_path().expect("a pcap on VLAN 1");
                let dump = std::process::Command::new("tcpdump")
                    .args(["-n", "-r"])
                    .arg(pcap)
                    .args(["icmp", "or", "icmp6"])
                    .output()
                    .expect("run tcpdump (Debian package tcpdump)");
                let text = String::from_utf8_lossy(&dump.stdout);
                // `ping beta` resolves to the IPv6 address first (/etc/hosts has both).
                for want in ["echo request", "echo reply"] {
                    assert!(text.contains(want), "no `{want}` in the pcap:\n{text}");
                }
                Ok(())
            })?;

            t.subtest("copy between host and machines", || {
                std::fs::write(host.path().join("payload"), "payload 123\n").unwrap();
                a.copy_from_host(host.path().join("payload"), "/root/payload")?;
                // alpha -> beta over the VLAN, then back to the host.
                b.succeed("systemd-run --unit=recv bash -c 'nc -lk -p 5555 > /root/received'")?;
                b.wait_for_open_port(5555, 30)?;
                a.succeed("nc -q 1 beta 5555 < /root/payload")?;
                b.wait_until_succeeds("test -s /root/received", 30)?;
                let back = b.copy_from_machine("/root/received", "from-beta")?;
                assert_eq!(std::fs::read_to_string(back).unwrap(), "payload 123\n");
                Ok(())
            })?;

            t.subtest("polling condition fails during a long command", || {
                let bb = b.clone();
                let cond = t.polling_condition("beta has no /tmp/stop", Duration::from_secs(1), move || {
                    bb.succeed("test ! -e /tmp/stop")
                });
                let b2 = b.clone();
                let toucher = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(2));
                    b2.succeed("touch /tmp/stop")
                });
                let s = Instant::now();
                let r = t.with_polling(&cond, || a.sleep(60));
                let took = s.elapsed();
                // The toucher's own command may be interrupted too: a failing condition
                // interrupts every command in flight.
                let _ = toucher.join().unwrap();
                eprintln!("METRIC polling condition broke a 60 s sleep after {:.2} s", took.as_secs_f64());
                assert!(matches!(&r, Err(Error::PollingCondition { description, .. }) if description == "beta has no /tmp/stop"), "{r:?}");
                assert!(took < Duration::from_secs(15), "{took:?}");
                // The interrupted machine is usable again.
                a.succeed("true")?;
                b.succeed("rm -f /tmp/stop")?;
                // And a passing condition lets the body finish.
                t.with_polling(&cond, || a.succeed("sleep 2"))?;
                Ok(())
            })?;

            t.subtest("crash and restart keeps the disk", || {
                b.succeed("echo kept > /root/persist; sync")?;
                let pid = b.pid().unwrap();
                b.crash()?;
                assert!(!b.is_booted());
                assert!(!common::alive(pid));
                let s = Instant::now();
                b.start_with(true)?;
                assert_eq!(b.succeed("cat /root/persist")?, "kept\n");
                eprintln!("METRIC restart after crash: first command after {:.2} s", s.elapsed().as_secs_f64());
                Ok(())
            })?;

            t.subtest("reboot", || {
                let before = b.succeed("cat /proc/sys/kernel/random/boot_id")?;
                let pid = b.pid();
                let s = Instant::now();
                b.reboot()?;
                let after = b.succeed("cat /proc/sys/kernel/random/boot_id")?;
                assert_ne!(before, after);
                assert_eq!(b.pid(), pid, "allow_reboot keeps the same QEMU");
                eprintln!("METRIC reboot to first command {:.2} s", s.elapsed().as_secs_f64());
                a.wait_until_succeeds("ping -c1 -W1 beta", 30)?;
                Ok(())
            })?;

            t.subtest("shutdown", || {
                a.shutdown()?;
                assert!(!a.is_booted());
                Ok(())
            })?;
            Ok(())
        })
        .run()
        .unwrap_or_else(|e| panic!("test failed: {e}"));
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    for case in [
        "block and unblock",
        "reboot",
        "crash and restart keeps the disk",
    ] {
        assert!(junit.contains(case), "{junit}");
    }
}
