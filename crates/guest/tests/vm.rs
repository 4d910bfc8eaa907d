//! VM tests: boot real guests under QEMU/TCG from the cached base image (built on first use).
//! Each takes the host-wide VM lock.

use std::time::Duration;

use machinist_guest::testvm::{BootSpec, TestVm};
use machinist_guest::{
    FileSpec, GroupSpec, ImageCache, ImageSpec, NetworkPlan, NodeConfig, NodeLayer, Progress,
    ServiceSpec, UserSpec,
};
use machinist_qemu::VmTestLock;

fn node_config() -> NodeConfig {
    NodeConfig::new()
        .group(GroupSpec::new("devs").gid(2001))
        .user(UserSpec::new("alice").uid(1500).extra_group("devs"))
        .file(
            FileSpec::new("/srv/app/hello.txt", "hello from the layer\n")
                .mode(0o640)
                .owner("alice", "devs"),
        )
        .service(
            ServiceSpec::script(
                "hello-web",
                "echo \"starting with $GREETING\"\nexec nc -lk 8080",
            )
            .user("alice")
            .env("GREETING", "hi there"),
        )
        .service(ServiceSpec::new("closed-port", "/usr/bin/nc -lk 9090").user("alice"))
        .open_tcp_port(8080)
}

#[test]
fn vm_boots_node_with_user_group_file_service_and_port() {
    let _lock = VmTestLock::acquire().expect("VM lock");
    let image = ImageCache::from_env()
        .ensure(&ImageSpec::base(), Progress::Lines)
        .expect("base image");
    let cfg = node_config();
    machinist_guest::validate(&[("machine", &cfg)]).expect("valid");
    let plan = NetworkPlan::new(&[("machine", &cfg)]);
    let layer = NodeLayer::render("machine", &cfg, &plan).expect("layer");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = BootSpec::new("machine", dir.path());
    let mut vm = TestVm::boot(&image, Some(&layer), &spec).expect("boot to greeting");
    eprintln!("greeting after {:.2} s", vm.greeting_after.as_secs_f64());

    let out = vm
        .succeed("until systemctl is-active -q multi-user.target; do sleep 0.1; done; echo ready")
        .unwrap();
    assert!(out.contains("ready"));
    assert_eq!(vm.succeed("hostname").unwrap().trim(), "machine");
    // user and group
    let id = vm.succeed("id alice").unwrap();
    assert!(id.contains("uid=1500(alice)"), "{id}");
    assert!(id.contains("(devs)"), "{id}");
    assert!(vm
        .succeed("getent group devs")
        .unwrap()
        .starts_with("devs:x:2001:"));
    assert_eq!(vm.succeed("stat -c %a /home/alice").unwrap().trim(), "700");
    // file, owner and mode
    assert_eq!(
        vm.succeed("stat -c '%U %G %a' /srv/app/hello.txt")
            .unwrap()
            .trim(),
        "alice devs 640"
    );
    assert_eq!(
        vm.succeed("cat /srv/app/hello.txt").unwrap(),
        "hello from the layer\n"
    );
    // service running as alice, with its environment
    vm.succeed("until systemctl is-active -q hello-web.service; do sleep 0.1; done")
        .unwrap();
    assert_eq!(
        vm.succeed("systemctl show -p User --value hello-web.service")
            .unwrap()
            .trim(),
        "alice"
    );
    let env = vm
        .succeed(
            "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value hello-web.service)/environ",
        )
        .unwrap();
    assert!(env.contains("GREETING=hi there"), "{env}");
    // port open in the firewall, others filtered
    let rules = vm.succeed("nft list ruleset").unwrap();
    assert!(rules.contains("tcp dport 8080 accept"), "{rules}");
    vm.succeed("until nc -z 127.0.0.1 8080; do sleep 0.1; done")
        .unwrap();
    // network: static addresses by MAC (no NIC attached here: the interface does not exist, so
    // only the rendered files are checked; the two-node test covers traffic)
    assert!(vm
        .succeed("cat /etc/systemd/network/10-machinist-vlan1.network")
        .unwrap()
        .contains("192.168.1.1/24"));
    assert!(vm
        .succeed("cat /etc/hosts")
        .unwrap()
        .contains("192.168.1.1 machine"));
    // no apply-layer error on the console
    let serial = vm.qemu.serial().lines().join("\n");
    assert!(!serial.contains("apply-layer failed"), "{serial}");
    assert!(!serial.contains("ERROR"), "{serial}");
}

#[test]
fn vm_cached_image_is_not_written_by_a_run() {
    let _lock = VmTestLock::acquire().expect("VM lock");
    let image = ImageCache::from_env()
        .ensure(&ImageSpec::base(), Progress::Lines)
        .expect("base image");
    let before = std::fs::metadata(&image.disk).unwrap().modified().unwrap();
    let sum = |p: &std::path::Path| {
        let out = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let hash_before = sum(&image.disk);
    let cfg = NodeConfig::new();
    let plan = NetworkPlan::new(&[("writer", &cfg)]);
    let layer = NodeLayer::render("writer", &cfg, &plan).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = TestVm::boot(&image, Some(&layer), &BootSpec::new("writer", dir.path())).unwrap();
    vm.succeed("dd if=/dev/urandom of=/var/tmp/junk bs=1M count=8 && sync")
        .unwrap();
    drop(vm);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::metadata(&image.disk).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(sum(&image.disk), hash_before);
}

/// Two nodes on VLAN 1 (netsim switch): names resolve through /etc/hosts, IPv4 and IPv6 ping
/// work, an open port connects and a port the firewall does not open is refused.
#[test]
fn vm_two_nodes_resolve_ping_and_firewall() {
    use machinist_netsim::{Switch, SwitchConfig};
    let _lock = VmTestLock::acquire().expect("VM lock");
    let image = ImageCache::from_env()
        .ensure(&ImageSpec::base(), Progress::Lines)
        .expect("base image");
    let alpha = NodeConfig::new();
    let beta = NodeConfig::new()
        .service(ServiceSpec::new("open-listener", "/usr/bin/nc -lk 8080"))
        .service(ServiceSpec::new("closed-listener", "/usr/bin/nc -lk 9090"))
        .open_tcp_port(8080);
    let nodes = [("alpha", &alpha), ("beta", &beta)];
    machinist_guest::validate(&nodes).unwrap();
    let plan = NetworkPlan::new(&nodes);
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(SwitchConfig::new(1, dir.path().join("vlan1"))).expect("switch");
    let mut handles = Vec::new();
    for (name, cfg) in nodes {
        let layer = NodeLayer::render(name, cfg, &plan).unwrap();
        let port = switch.add_stream_port(name).unwrap();
        let iface = plan.node(name).unwrap().interfaces[0].clone();
        let mut spec = BootSpec::new(name, dir.path());
        spec.nics.push(machinist_qemu::Nic::stream(
            iface.qemu_id(),
            iface.mac,
            port,
        ));
        spec.boot_timeout = Duration::from_secs(240);
        let image = image.clone();
        handles.push(std::thread::spawn(move || {
            TestVm::boot(&image, Some(&layer), &spec)
        }));
    }
    let mut vms: Vec<TestVm> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("boot"))
        .collect();
    let mut beta_vm = vms.pop().unwrap();
    let mut alpha_vm = vms.pop().unwrap();
    for (vm, ip) in [
        (&mut alpha_vm, "192.168.1.1"),
        (&mut beta_vm, "192.168.1.2"),
    ] {
        vm.succeed(&format!(
            "until ip -4 addr show dev vlan1 | grep -q {ip}/24; do sleep 0.1; done; ip -6 addr show dev vlan1"
        ))
        .unwrap();
    }
    beta_vm
        .succeed("until systemctl is-active -q open-listener closed-listener; do sleep 0.1; done")
        .unwrap();
    assert_eq!(
        alpha_vm
            .succeed("getent ahostsv4 beta | head -1")
            .unwrap()
            .split_whitespace()
            .next(),
        Some("192.168.1.2")
    );
    assert!(alpha_vm
        .succeed("getent ahostsv6 beta")
        .unwrap()
        .contains("2001:db8:1::2"));
    alpha_vm.succeed("ping -c1 -W5 beta").unwrap();
    alpha_vm.succeed("ping -6 -c1 -W5 2001:db8:1::2").unwrap();
    beta_vm.succeed("ping -c1 -W5 alpha").unwrap();
    // No default route: the outside is unreachable.
    assert!(!alpha_vm
        .succeed("ip route; ip -6 route")
        .unwrap()
        .contains("default"));
    alpha_vm.succeed("nc -z -w5 beta 8080").unwrap();
    let (code, out) = alpha_vm
        .run("nc -z -v -w5 beta 9090", Duration::from_secs(30))
        .unwrap();
    assert_ne!(code, 0, "port 9090 must be closed by the firewall: {out}");
    assert!(out.contains("refused"), "{out}");
    // From beta itself (loopback) the closed port works: it is the firewall, not the service.
    beta_vm.succeed("nc -z -w5 127.0.0.1 9090").unwrap();
}

/// The server image (+postgresql) with PostgreSQL started directly: ready, durable (fsync on).
#[test]
fn vm_postgresql_direct_service() {
    let _lock = VmTestLock::acquire().expect("VM lock");
    let cfg = machinist_guest::presets::postgresql_direct(NodeConfig::new(), 15).first_boot(
        machinist_guest::FirstBootScript::new(
            "setup",
            "psql -v ON_ERROR_STOP=1 -c 'create table t (x int)'",
        )
        .user("postgres")
        .after("postgresql.service"),
    );
    machinist_guest::validate(&[("server", &cfg)]).unwrap();
    let image = ImageCache::from_env()
        .ensure(&ImageSpec::for_node(&cfg), Progress::Lines)
        .expect("server image");
    let plan = NetworkPlan::new(&[("server", &cfg)]);
    let layer = NodeLayer::render("server", &cfg, &plan).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = TestVm::boot(&image, Some(&layer), &BootSpec::new("server", dir.path())).unwrap();
    let t = std::time::Instant::now();
    vm.succeed("until systemctl is-active -q machinist-first-boot-setup.service; do sleep 0.1; systemctl is-failed -q machinist-first-boot-setup.service && { systemctl status --no-pager postgresql machinist-first-boot-setup; journalctl -b --no-pager -u postgresql -u machinist-first-boot-setup | tail -30; exit 1; }; done; systemctl is-active machinist-first-boot-setup.service")
        .unwrap();
    eprintln!(
        "first-boot done {:.2} s after the greeting",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        vm.succeed("runuser -u postgres -- psql -tAc 'show fsync'")
            .unwrap()
            .trim(),
        "on"
    );
    assert_eq!(
        vm.succeed("runuser -u postgres -- psql -tAc \"select count(*) from pg_tables where tablename = 't'\"").unwrap().trim(),
        "1"
    );
    assert_eq!(
        vm.succeed("systemctl show -p Type --value postgresql.service")
            .unwrap()
            .trim(),
        "notify"
    );
    assert!(vm
        .succeed("test -e /var/lib/machinist/first-boot/setup.done && echo yes")
        .unwrap()
        .contains("yes"));
}

/// The warm-start path: a running machine gets a different layer through the backdoor
/// (`live_apply_script` -> `apply-layer --live`): new hostname, user, file, service, port.
#[test]
fn vm_live_apply_changes_a_running_machine() {
    let _lock = VmTestLock::acquire().expect("VM lock");
    let image = ImageCache::from_env()
        .ensure(&ImageSpec::base(), Progress::Lines)
        .expect("base image");
    let before = NodeConfig::new();
    let plan = NetworkPlan::new(&[("first", &before)]);
    let layer = NodeLayer::render("first", &before, &plan).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = TestVm::boot(&image, Some(&layer), &BootSpec::new("live", dir.path())).unwrap();
    vm.succeed("until systemctl is-active -q multi-user.target; do sleep 0.1; done")
        .unwrap();
    assert!(!vm.succeed("nft list ruleset").unwrap().contains("7070"));

    let after = NodeConfig::new()
        .hostname("second")
        .user(UserSpec::new("carol"))
        .file(FileSpec::new("/etc/live.conf", "live=1\n").owner("carol", "carol"))
        .service(ServiceSpec::new("live-listener", "/usr/bin/nc -lk 7070").user("carol"))
        .open_tcp_port(7070);
    let plan = NetworkPlan::new(&[("first", &after)]);
    let layer = NodeLayer::render("first", &after, &plan).unwrap();
    let out = vm
        .succeed(&layer.live_apply_script("/run/machinist-layer").unwrap())
        .unwrap();
    eprintln!("{out}");
    assert_eq!(vm.succeed("hostname").unwrap().trim(), "second");
    assert!(vm.succeed("id carol").unwrap().contains("carol"));
    assert_eq!(
        vm.succeed("stat -c %U /etc/live.conf").unwrap().trim(),
        "carol"
    );
    vm.succeed("until systemctl is-active -q live-listener; do sleep 0.1; done")
        .unwrap();
    assert!(vm
        .succeed("nft list ruleset")
        .unwrap()
        .contains("tcp dport 7070 accept"));
    assert_eq!(vm.succeed("stat -c %a /home/carol").unwrap().trim(), "700");
}
