//! Render tests of the node layer and the network plan, and validation errors. No VM.

use machinist_guest::{
    FileSpec, FirstBootScript, GroupSpec, GuestError, ImageSpec, NetworkPlan, NodeConfig,
    NodeLayer, ServiceSpec, ServiceType, UserSpec,
};

fn server() -> NodeConfig {
    NodeConfig::new()
        .package("postgresql")
        .user(UserSpec::new("authenticator").uid(1100))
        .group(GroupSpec::new("web").member("authenticator"))
        .file(
            FileSpec::from_template(
                "/etc/postgrest.conf",
                "postgrest.conf.in",
                "db-uri = \"postgres://authenticator@localhost/postgres\"\nserver-port = 3000\n",
            )
            .mode(0o640)
            .owner("authenticator", "web"),
        )
        .service(
            ServiceSpec::new("postgrest", "/usr/local/bin/postgrest /etc/postgrest.conf")
                .after("postgresql.service")
                .wants("postgresql.service")
                .user("authenticator")
                .env("PGRST_LOG_LEVEL", "info"),
        )
        .service(
            ServiceSpec::script("ticker", "while true; do date; sleep 5; done")
                .service_type(ServiceType::Simple)
                .restart(machinist_guest::Restart::Always),
        )
        .first_boot(
            FirstBootScript::new("setup-sql", "psql -v ON_ERROR_STOP=1 -f /etc/setup.sql")
                .user("postgres")
                .after("postgresql.service")
                .before("postgrest.service"),
        )
        .mask_unit("postgresql@15-main.service")
        .open_tcp_port(3000)
        .open_tcp_port(5432)
        .option("tutorial", serde_json::json!({ "port": 3000 }))
}

fn client() -> NodeConfig {
    NodeConfig::new()
        .package("curl")
        .vlans([1, 2])
        .user_net(true)
}

#[test]
fn network_plan_numbers_nodes_in_name_order() {
    let (s, c) = (server(), client());
    let plan = NetworkPlan::new(&[("server", &s), ("client", &c)]);
    let client = plan.node("client").unwrap();
    let server = plan.node("server").unwrap();
    assert_eq!(client.number, 1);
    assert_eq!(server.number, 2);
    assert_eq!(client.interfaces[1].mac, "52:54:00:12:02:01");
    assert_eq!(server.interfaces[0].ipv4.to_string(), "192.168.1.2");
    assert_eq!(server.interfaces[0].ipv6.to_string(), "2001:db8:1::2");
    insta::assert_snapshot!("hosts", plan.hosts_file("server"));
}

#[test]
fn server_layer_render() {
    let (s, c) = (server(), client());
    let plan = NetworkPlan::new(&[("server", &s), ("client", &c)]);
    let layer = NodeLayer::render("server", &s, &plan).unwrap();
    insta::assert_snapshot!("server_layer", layer.describe());
}

#[test]
fn client_layer_render() {
    let (s, c) = (server(), client());
    let plan = NetworkPlan::new(&[("server", &s), ("client", &c)]);
    let layer = NodeLayer::render("client", &c, &plan).unwrap();
    insta::assert_snapshot!("client_layer", layer.describe());
}

#[test]
fn layer_cpio_contains_parents_before_children() {
    let s = server();
    let plan = NetworkPlan::new(&[("server", &s)]);
    let cpio = NodeLayer::render("server", &s, &plan)
        .unwrap()
        .to_cpio()
        .unwrap();
    let text = String::from_utf8_lossy(&cpio);
    let dir = text.find("machinist-layer/root/etc/systemd\0").unwrap();
    let unit = text
        .find("machinist-layer/root/etc/systemd/system/postgrest.service\0")
        .unwrap();
    assert!(dir < unit);
    assert!(text.contains("TRAILER!!!"));
}

#[test]
fn live_apply_script_is_valid_bash() {
    let s = server();
    let plan = NetworkPlan::new(&[("server", &s)]);
    let script = NodeLayer::render("server", &s, &plan)
        .unwrap()
        .live_apply_script("/run/machinist-layer")
        .unwrap();
    let out = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(script.ends_with("sh /usr/lib/machinist/apply-layer --live '/run/machinist-layer'\n"));
}

#[test]
fn apply_layer_script_is_posix_sh() {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", machinist_guest::tuning::APPLY_LAYER_SCRIPT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("busybox")
        .args([
            "sh",
            "-n",
            "-c",
            machinist_guest::tuning::INITRD_INIT_SCRIPT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// apply-layer runs against a scratch root with the host's busybox (as in the initrd):
/// files land with their modes, existing directories keep theirs, owners are resolved by name.
#[test]
fn apply_layer_installs_files_into_a_root() {
    let s = NodeConfig::new().file(
        FileSpec::new("/etc/app/conf", "x=1\n")
            .mode(0o600)
            .owner("daemon", "daemon"),
    );
    let plan = NetworkPlan::new(&[("n", &s)]);
    let layer = NodeLayer::render("n", &s, &plan).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let ldir = tmp.path().join("layer");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ndaemon:x:1:\n").unwrap();
    for f in layer.files() {
        let p = ldir.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match f.entry {
            machinist_guest::LayerEntry::File { contents, mode } => {
                std::fs::write(&p, contents).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            machinist_guest::LayerEntry::Symlink { target } => {
                std::os::unix::fs::symlink(target, &p).unwrap()
            }
        }
    }
    let script = tmp.path().join("apply-layer");
    std::fs::write(&script, machinist_guest::tuning::APPLY_LAYER_SCRIPT).unwrap();
    // Only busybox applets on PATH, as in the initramfs.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for applet in [
        "sh", "find", "tar", "awk", "rm", "cat", "chown", "chroot", "mkdir",
    ] {
        std::os::unix::fs::symlink("/bin/busybox", bin.join(applet)).unwrap();
    }
    let out = std::process::Command::new(bin.join("sh"))
        .arg(&script)
        .arg("--root")
        .arg(&root)
        .arg(&ldir)
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(root.join("etc/app/conf")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (1, 1));
    assert_eq!(
        std::fs::metadata(root.join("etc")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "n\n"
    );
    assert!(std::fs::symlink_metadata(
        root.join("etc/systemd/system/sysinit.target.wants/machinist-firewall.service")
    )
    .unwrap()
    .file_type()
    .is_symlink());
}

fn invalid(nodes: &[(&str, &NodeConfig)]) -> String {
    match machinist_guest::validate(nodes) {
        Err(e @ GuestError::Invalid(_)) => e.to_string(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn validation_errors_name_node_and_field() {
    let ok = NodeConfig::new();
    let bad = NodeConfig::new()
        .user(UserSpec::new("Bad User"))
        .user(UserSpec::new("bob").uid(70000))
        .open_tcp_port(0)
        .open_udp_port(70000)
        .file(FileSpec::new("/etc/a.conf", "1"))
        .file(FileSpec::new("/etc/a.conf", "2"))
        .file(FileSpec::new("relative/path", "3"))
        .service(ServiceSpec::default())
        .vlans([0]);
    let msg = invalid(&[
        ("good", &ok),
        ("Bad_Name", &ok),
        ("good", &ok),
        ("web", &bad),
    ]);
    insta::assert_snapshot!("validation_errors", msg);
}

#[test]
fn valid_configs_pass() {
    let (s, c) = (server(), client());
    machinist_guest::validate(&[("server", &s), ("client", &c)]).unwrap();
}

#[test]
fn config_roundtrips_through_json() {
    let s = server();
    let json = serde_json::to_string(&s).unwrap();
    let back: NodeConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let minimal: NodeConfig = serde_json::from_str("{\"packages\": [\"curl\"]}").unwrap();
    assert_eq!(minimal.vlans, vec![1]);
    assert!(minimal.firewall.enable);
}

#[test]
fn image_hash_depends_on_packages_not_order() {
    let a = ImageSpec::with_packages(["curl", "postgresql"]);
    let b = ImageSpec::with_packages(["postgresql", "curl"]);
    let c = ImageSpec::with_packages(["curl"]);
    assert_eq!(a.hash().unwrap(), b.hash().unwrap());
    assert_ne!(a.hash().unwrap(), c.hash().unwrap());
    assert_ne!(ImageSpec::base().hash().unwrap(), c.hash().unwrap());
    assert_ne!(
        ImageSpec::base().hash().unwrap(),
        ImageSpec::base()
            .profile(machinist_guest::Profile::Stock)
            .hash()
            .unwrap()
    );
    assert_eq!(a.name(), "bookworm+curl+postgresql");
}

#[test]
fn apt_errors_are_classified() {
    let out = "I: installing\nE: Unable to locate package postgresqll\nE: failed\n";
    let e = machinist_guest::classify_failure(
        out,
        "img",
        "apt-get install",
        "exit status: 100",
        std::path::Path::new("/tmp"),
    );
    assert!(
        matches!(&e, GuestError::UnknownPackage { package, .. } if package == "postgresqll"),
        "{e}"
    );
    assert!(e.to_string().contains("postgresqll"));
    let out = "tar: write error: No space left on device\n";
    let e = machinist_guest::classify_failure(
        out,
        "img",
        "cp",
        "exit status: 1",
        std::path::Path::new("/tmp"),
    );
    assert!(matches!(e, GuestError::DiskFull { .. }), "{e}");
}

#[test]
fn modules_resolve_dependencies_first() {
    let dep = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\nkernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n";
    let order = machinist_guest::initrd::resolve_modules(dep, &["virtio_net"]).unwrap();
    let names: Vec<&str> = order
        .iter()
        .map(|p| p.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "virtio_ring.ko",
            "virtio.ko",
            "failover.ko",
            "net_failover.ko",
            "virtio_net.ko"
        ]
    );
}
