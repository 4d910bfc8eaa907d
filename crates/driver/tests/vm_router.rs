//! Three VMs and two VLANs: `a` on VLAN 1 and `b` on VLAN 2 reach each other only through
//! `router` (on both, with IP forwarding), declared with the node's routing fields alone: a static
//! route on `a` (IPv4 and IPv6), a default gateway and an IPv6 route on `b`, forwarding, a sysctl and a kernel module on the router.
//! Runs with warm start unless `MACHINIST_WARM_START=0`. The same declaration (without the
//! module: a container shares the host's kernel) on containers routes the same way.

mod common;

use std::time::Instant;

use machinist::Route;
use machinist::{BackendKind, NodeConfig, Test};

#[test]
fn vm_router_forwards_between_vlans() {
    router_test(BackendKind::Vm);
}

/// The same on containers: the container backend writes the node's `net.*` variables into the
/// container's network namespace (nspawn mounts `/proc/sys` read-only there, so systemd-sysctl
/// skips them); containers load no kernel modules, so the router declares none.
#[test]
fn ct_router_forwards_between_vlans() {
    router_test(BackendKind::Container);
}

fn router_test(backend: BackendKind) {
    let _lock = common::vm_lock();
    let vm = backend == BackendKind::Vm;
    let name = if vm { "vm-router" } else { "ct-router" };
    let out = common::out_dir(name);
    let mut router_cfg = NodeConfig::new()
        .vlans([1, 2])
        .ip_forwarding(true)
        .sysctl("net.ipv4.conf.all.log_martians", "1");
    if vm {
        router_cfg = router_cfg.kernel_module("dummy");
    }
    // Nodes are numbered in name order: a = 1, b = 2, router = 3.
    Test::new(name)
        .backend(backend)
        .node(
            "a",
            NodeConfig::new()
                .route(Route::new(1, "192.168.2.0/24", "192.168.1.3"))
                .route(Route::new(1, "2001:db8:2::/64", "2001:db8:1::3")),
        )
        .node(
            "b",
            NodeConfig::new()
                .vlans([2])
                .default_gateway(2, "192.168.2.3")
                .route(Route::new(2, "2001:db8:1::/64", "2001:db8:2::3")),
        )
        .node("router", router_cfg)
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let (a, b, router) = (t.machine("a"), t.machine("b"), t.machine("router"));
            assert_eq!(router.backend(), backend);
            assert_eq!(t.node("b").ip(2).unwrap().to_string(), "192.168.2.2");
            let t0 = Instant::now();
            t.start_all()?;

            t.subtest("the router forwards; a and b do not", || {
                let fwd = |m: &machinist::Machine| m.succeed("sysctl -n net.ipv4.ip_forward");
                assert_eq!(fwd(&router)?.trim(), "1");
                assert_eq!(
                    router
                        .succeed("sysctl -n net.ipv6.conf.all.forwarding")?
                        .trim(),
                    "1"
                );
                assert_eq!(
                    router
                        .succeed("sysctl -n net.ipv4.conf.all.log_martians")?
                        .trim(),
                    "1"
                );
                assert_eq!(fwd(&a)?.trim(), "0");
                assert_eq!(fwd(&b)?.trim(), "0");
                Ok(())
            })?;

            t.subtest("routes through the router", || {
                a.wait_until_succeeds("ping -c1 -W2 192.168.2.2", 60)?;
                eprintln!(
                    "METRIC router ({name}): first ping a -> b through the router after {:.2} s",
                    t0.elapsed().as_secs_f64()
                );
                b.succeed("ping -c1 -W2 192.168.1.1")?;
                let a_routes = a.succeed("ip -4 route show 192.168.2.0/24")?;
                assert!(a_routes.contains("via 192.168.1.3 dev vlan1"), "{a_routes}");
                let b_default = b.succeed("ip -4 route show default")?;
                assert!(
                    b_default.contains("via 192.168.2.3 dev vlan2"),
                    "{b_default}"
                );
                // The path really goes through the router: TTL 64 leaves b, 63 arrives at a.
                let ping = a.succeed("ping -c1 -W2 192.168.2.2")?;
                assert!(ping.contains("ttl=63"), "{ping}");
                // IPv6 too: static routes both ways, forwarded by the router.
                a.wait_until_succeeds("ping -6 -c1 -W2 2001:db8:2::2", 30)?;
                let ping6 = b.succeed("ping -6 -c1 -W2 2001:db8:1::1")?;
                assert!(
                    ping6.contains("ttl=63") || ping6.contains("hlim=63"),
                    "{ping6}"
                );
                Ok(())
            })?;

            if !vm {
                return Ok(());
            }
            t.subtest("declared modules are loaded, others not", || {
                router.succeed("lsmod | grep -q '^dummy '")?;
                a.fail("lsmod | grep -q '^dummy '")?;
                router.succeed("systemctl is-active systemd-modules-load.service")?;
                Ok(())
            })?;
            Ok(())
        })
        .run()
        .unwrap_or_else(|e| panic!("test failed: {e}"));
}
