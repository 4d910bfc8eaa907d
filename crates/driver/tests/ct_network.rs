//! Container nodes on a VLAN switch: two containers reach each other by name, `block()` cuts
//! them silently, a carrier drop is seen inside, a restarted container is back on its port; and
//! a VM and a container talk on one VLAN.

mod common;

use std::time::{Duration, Instant};

use machinist::{BackendKind, NodeConfig, Test};

#[test]
fn ct_two_containers() {
    let _lock = common::vm_lock();
    let out = common::out_dir("ct_network");
    let mut run_dir = None;
    Test::new("ct-network")
        .node("alpha", NodeConfig::new())
        .node("beta", NodeConfig::new().open_tcp_port(5555))
        .backend(BackendKind::Container)
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let (a, b) = (t.machine("alpha"), t.machine("beta"));
            assert_eq!(a.backend(), BackendKind::Container);
            run_dir = Some(t.run_dir().to_path_buf());
            // The switch ports exist before the start, as a VM's.
            b.block_at_switch()?;
            b.unblock_at_switch()?;
            let t0 = Instant::now();
            t.start_all()?;
            a.wait_until_succeeds("ping -c1 -W1 beta", 7)?;
            eprintln!(
                "METRIC two containers: first ping by name after {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            b.succeed("ping -c1 -W1 alpha")?;
            // The planned interface, MAC and addresses.
            let link = a.succeed("ip -br link show vlan1")?;
            assert!(link.contains("52:54:00:12:01:01"), "{link}");
            // NixOS' name for the first NIC, as an alternative name.
            let eth1 = a.succeed("ip link show eth1")?;
            assert!(
                eth1.contains("vlan1:") && eth1.contains("altname eth1"),
                "{eth1}"
            );
            let addr = b.succeed("ip -br addr show vlan1")?;
            assert!(addr.contains("192.168.1.2/24"), "{addr}");
            // Nothing but the VLAN: no route out.
            assert!(a
                .succeed("ip route")?
                .lines()
                .all(|l| !l.starts_with("default")));

            // block_at_switch(): frames dropped at the switch, silently.
            b.block_at_switch()?;
            a.fail("ping -c1 -W1 beta")?;
            b.unblock_at_switch()?;
            a.wait_until_succeeds("ping -c1 -W1 beta", 10)?;
            let c = t.vlan(1).unwrap().switch().port_counters("beta").unwrap();
            assert!(c.drops.total() > 0, "{c:?}");

            // block() (NixOS): eth1, the first NIC, loses its carrier.
            b.block()?;
            b.wait_until_succeeds("ip link show eth1 | grep -q NO-CARRIER", 10)?;
            a.fail("ping -c1 -W1 beta")?;
            b.unblock()?;
            a.wait_until_succeeds("ping -c1 -W1 beta", 10)?;

            // set_link(false): the container sees its carrier go.
            b.set_link(false)?;
            b.wait_until_succeeds("ip link show vlan1 | grep -q NO-CARRIER", 10)?;
            b.set_link(true)?;
            b.wait_until_fails("ip link show vlan1 | grep -q NO-CARRIER", 10)?;
            a.wait_until_succeeds("ping -c1 -W1 beta", 10)?;

            // A crashed and restarted container is back on the same switch port.
            b.crash()?;
            a.fail("ping -c1 -W1 beta")?;
            b.start()?;
            a.wait_until_succeeds("ping -c1 -W1 beta", 20)?;
            let c = t.vlan(1).unwrap().switch().port_counters("beta").unwrap();
            assert!(c.connected && c.connections == 2, "{c:?}");
            Ok(())
        })
        .run()
        .unwrap();
    // No TAP device of the run is left on the host.
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let ours = format!("mn{:x}n", std::process::id());
    assert!(
        !links.lines().any(|l| l.starts_with(&ours)),
        "TAP devices left behind:\n{links}"
    );
    assert!(!run_dir.unwrap().exists());
}

/// A VM and a container on one VLAN talk to each other, and `block()` cuts them.
#[test]
fn ct_mixed_vm_and_container() {
    let _lock = common::vm_lock();
    let out = common::out_dir("ct_mixed");
    Test::new("ct-mixed")
        .node("server", NodeConfig::new())
        .node("client", NodeConfig::new().container())
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let (s, c) = (t.machine("server"), t.machine("client"));
            assert_eq!(s.backend(), BackendKind::Vm);
            assert_eq!(c.backend(), BackendKind::Container);
            t.start_all()?;
            c.wait_until_succeeds("ping -c1 -W1 server", 60)?;
            s.succeed("ping -c1 -W1 client")?;
            s.block()?;
            let t0 = Instant::now();
            c.fail("ping -c1 -W1 server")?;
            assert!(t0.elapsed() < Duration::from_secs(3));
            s.unblock()?;
            c.wait_until_succeeds("ping -c1 -W1 server", 20)?;
            Ok(())
        })
        .run()
        .unwrap();
}
