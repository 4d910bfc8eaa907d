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
    assert!(script.ends_with("sh /usr/lib/machinist/apply-layer --live /run/machinist-layer\n"));
}

/// A `'`, a `$(...)` and spaces in the paths are data, not shell: the real shell unpacks the
/// archive into exactly that directory and runs nothing else.
#[test]
fn live_apply_script_quotes_hostile_paths() {
    let s = NodeConfig::new().file(FileSpec::new("/etc/marker", "here\n"));
    let plan = NetworkPlan::new(&[("server", &s)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("it's $(touch pwned) a dir");
    let script = NodeLayer::render("server", &s, &plan)
        .unwrap()
        .live_apply_script(dir.to_str().unwrap())
        .unwrap();
    // Stop before apply-layer (not installed on the host): everything up to it must work.
    let script = script.replace("sh /usr/lib/machinist/apply-layer --live", "echo applied");
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("root/etc/marker")).unwrap(),
        "here\n"
    );
    assert!(!tmp.path().join("pwned").exists());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("applied {}", dir.display())
    );
}

fn invalid_fields(cfg: &NodeConfig) -> Vec<(String, String)> {
    let plan = NetworkPlan::new(&[("node", cfg)]);
    let render = NodeLayer::render("node", cfg, &plan).unwrap_err();
    let validate = machinist_guest::validate(&[("node", cfg)]).unwrap_err();
    for err in [&render, &validate] {
        assert!(matches!(err, GuestError::Invalid(_)), "{err}");
    }
    match validate {
        GuestError::Invalid(list) => list.into_iter().map(|e| (e.field, e.message)).collect(),
        _ => unreachable!(),
    }
}

/// Newlines (and other control characters, and a trailing backslash that continues a line) in
/// anything written into a unit file would inject directives: rejected by `validate` and by
/// `render`, naming the field.
#[test]
fn unit_fields_cannot_inject_directives() {
    let cfg = NodeConfig::new()
        .service(
            ServiceSpec::new("app", "/bin/true\nExecStartPre=/bin/rm -rf /")
                .description("App\n[Service]\nUser=root")
                .after("network.target\nRequires=evil.service")
                .service_line("LimitNOFILE=1\nUser=root")
                .service_line("[Install]")
                .service_line("Nice=1 \\"),
        )
        .service(ServiceSpec::new("cont", "/bin/echo \\").description("tab\tis fine"))
        .service(ServiceSpec::new("cr", "/bin/true\rUser=root"))
        .user(UserSpec {
            description: Some("Bob\nu evil 0 \"x\" /root /bin/sh".into()),
            ..UserSpec::new("bob")
        });
    let errs = invalid_fields(&cfg);
    let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "services[0].description",
            "services[0].exec_start",
            "services[0].after[0]",
            "services[0].extra_service_lines[0]",
            "services[0].extra_service_lines[1]",
            "services[0].extra_service_lines[2]",
            "services[1].exec_start",
            "services[2].exec_start",
            "users[0].description",
        ],
        "{errs:#?}"
    );
    assert!(
        errs[0].1.contains("control character '\\n'"),
        "{}",
        errs[0].1
    );
    assert!(errs[5].1.contains("backslash"), "{}", errs[5].1);
    assert!(errs[4].1.contains("Key=Value"), "{}", errs[4].1);
}

/// Environment values may hold any character: they are escaped, never a raw newline.
#[test]
fn environment_values_are_escaped_not_rejected() {
    let cfg = NodeConfig::new()
        .service(ServiceSpec::new("app", "/bin/true").env("MULTI", "a\nUser=root\r\u{1b}\"%"));
    machinist_guest::validate(&[("node", &cfg)]).unwrap();
    let unit = machinist_guest::units::service_unit(&cfg.services[0]);
    assert!(
        unit.contains("Environment=\"MULTI=a\\nUser=root\\x0d\\x1b\\\"%%\"\n"),
        "{unit}"
    );
    assert!(!unit.lines().any(|l| l.starts_with("User=")), "{unit}");
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

/// Unit names follow systemd's rules in every field that names a unit: each rejected name is
/// reported once, naming the node, the field, the rule and what to write instead; `render`
/// rejects them too.
#[test]
fn unit_names_follow_systemd_rules() {
    let long = format!("{}.service", "a".repeat(250));
    let bad = NodeConfig::new()
        .service(ServiceSpec::new("-dash", "/bin/true"))
        .service(ServiceSpec::new("tmpl@", "/bin/true"))
        .service(ServiceSpec::new("tmpl2@.service", "/bin/true"))
        .service(ServiceSpec::script("esc\\x2dape", "true"))
        .service(
            ServiceSpec::new("app", "/bin/true")
                .after("-dash")
                .after("tmpl@")
                .before("getty@.service")
                .wants("@1.service")
                .wants(".service")
                .requires("my app.service")
                .requires("/mnt/data")
                .requires("bad\\escape.mount")
                .requires(long.as_str())
                .wanted_by(["multi-user", "getty@.target"]),
        )
        .first_boot(
            FirstBootScript::new("setup@", "true")
                .after("-x.service")
                .before("db@"),
        )
        .first_boot(FirstBootScript::new("esc\\x2d", "true"))
        .mask_unit("-dash.service")
        .mask_unit("tmpl@.service")
        .mask_unit("");
    let plan = NetworkPlan::new(&[("web", &bad)]);
    assert!(matches!(
        NodeLayer::render("web", &bad, &plan),
        Err(GuestError::Invalid(_))
    ));
    insta::assert_snapshot!("unit_name_errors", invalid(&[("web", &bad)]));
}

/// Names that systemd accepts stay valid, and each is written in full exactly once: a name
/// without a type is a service (`.service` is never doubled), other types are kept, escapes and
/// instances pass, and systemd's root units may be ordered against.
#[test]
fn valid_unit_names_render_in_full() {
    let cfg = NodeConfig::new()
        .service(
            ServiceSpec::new("app.service", "/bin/true")
                .after("postgresql")
                .after("-.mount")
                .after("mnt-my\\x2ddata.mount")
                .before("app2.socket")
                .wants("getty@tty1")
                .requires("postgresql@15-main.service")
                .wanted_by(["multi-user.target", "app2.socket"]),
        )
        .service(ServiceSpec::script("app2", "true").wanted_by(["sockets.target"]))
        .service(ServiceSpec::new("worker@", "/bin/echo %i").wanted_by(Vec::<String>::new()))
        .service(ServiceSpec::new("worker@1", "/bin/echo 1"))
        .first_boot(
            FirstBootScript::new("seed.service", "true")
                .after("app")
                .before("worker@1"),
        )
        .mask_unit("postgresql")
        .mask_unit("apt-daily.timer");
    machinist_guest::validate(&[("node", &cfg)]).unwrap();
    let plan = NetworkPlan::new(&[("node", &cfg)]);
    let layer = NodeLayer::render("node", &cfg, &plan).unwrap();
    let text = layer.describe();
    let units_dir = "root/etc/systemd/system";
    for path in [
        format!("{units_dir}/app.service"),
        format!("{units_dir}/app2.service"),
        format!("{units_dir}/worker@.service"),
        format!("{units_dir}/worker@1.service"),
        format!("{units_dir}/machinist-first-boot-seed.service"),
        format!("{units_dir}/multi-user.target.wants/app.service"),
        format!("{units_dir}/app2.socket.wants/app.service"),
        format!("{units_dir}/sockets.target.wants/app2.service"),
        format!("{units_dir}/postgresql.service"),
        format!("{units_dir}/apt-daily.timer"),
        "root/usr/lib/machinist/services/app2".to_string(),
        "root/usr/lib/machinist/first-boot/seed".to_string(),
    ] {
        assert!(layer.entries().contains_key(&path), "no {path} in\n{text}");
    }
    assert!(!text.contains(".service.service"), "{text}");
    assert!(
        !text.contains("worker@.service\n"),
        "a template is not started:\n{text}"
    );
    let app = match &layer.entries()[&format!("{units_dir}/app.service")] {
        machinist_guest::LayerEntry::File { contents, .. } => {
            String::from_utf8_lossy(contents).into_owned()
        }
        other => panic!("{other:?}"),
    };
    for line in [
        "After=postgresql.service -.mount mnt-my\\x2ddata.mount\n",
        "Before=app2.socket\n",
        "Wants=getty@tty1.service\n",
        "Requires=postgresql@15-main.service\n",
        "WantedBy=multi-user.target app2.socket\n",
    ] {
        assert!(app.contains(line), "no {line:?} in\n{app}");
    }
    let seed = match &layer.entries()[&format!("{units_dir}/machinist-first-boot-seed.service")] {
        machinist_guest::LayerEntry::File { contents, .. } => {
            String::from_utf8_lossy(contents).into_owned()
        }
        other => panic!("{other:?}"),
    };
    for line in [
        "After=app.service\n",
        "Before=worker@1.service\n",
        "ConditionPathExists=!/var/lib/machinist/first-boot/seed.done\n",
    ] {
        assert!(seed.contains(line), "no {line:?} in\n{seed}");
    }
    match &layer.entries()["units"] {
        machinist_guest::LayerEntry::File { contents, .. } => assert_eq!(
            String::from_utf8_lossy(contents),
            "app.service\napp2.service\nworker@1.service\nmachinist-first-boot-seed.service\n"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cfg.masked_unit_names(),
        ["postgresql.service", "apt-daily.timer"]
    );
}

/// `app` and `app.service` are the same unit: defined twice.
#[test]
fn service_suffix_is_one_name() {
    let cfg = NodeConfig::new()
        .service(ServiceSpec::new("app", "/bin/true"))
        .service(ServiceSpec::new("app.service", "/bin/true"));
    let msg = invalid(&[("node", &cfg)]);
    assert!(
        msg.contains("services[1].name: service \"app.service\" defined twice"),
        "{msg}"
    );
}

/// What NixOS tests declare and Debian images need spelled out: a node named with `_`, VLAN 0,
/// logind, a stateful firewall that also accepts an IP protocol.
#[test]
fn nixos_style_node_renders() {
    let router = NodeConfig::new()
        .vlans([0, 2])
        .packages(["dbus", "libpam-systemd"])
        .logind(true);
    let mut router = router;
    router.firewall.stateful = true;
    router.firewall.allowed_protocols.insert("vrrp".into());
    let other = NodeConfig::new().vlans([2]);
    let nodes = [("local_router", &router), ("other", &other)];
    machinist_guest::validate(&nodes).unwrap();
    let plan = NetworkPlan::new(&nodes);
    let planned = plan.node("local_router").unwrap();
    assert_eq!(planned.hostname, "local-router");
    assert_eq!(planned.interfaces[0].ipv4.to_string(), "192.168.0.1");
    assert_eq!(planned.interfaces[0].mac, "52:54:00:12:00:01");
    let names: Vec<(&str, &str)> = planned
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.alt_name.as_str()))
        .collect();
    assert_eq!(names, [("vlan0", "eth1"), ("vlan2", "eth2")]);
    let hosts = plan.hosts_file("other");
    assert!(
        hosts.contains("192.168.2.1 local-router local_router\n"),
        "{hosts}"
    );
    let layer = NodeLayer::render("local_router", &router, &plan)
        .unwrap()
        .describe();
    for want in [
        "AlternativeName=eth1",
        "AlternativeName=eth2",
        "ct state established,related accept",
        "meta l4proto { vrrp } accept",
        "etc/systemd/system/systemd-logind.service -> /lib/systemd/system/systemd-logind.service",
        "etc/udev/rules.d/70-uaccess.rules -> /lib/udev/rules.d/70-uaccess.rules",
    ] {
        assert!(layer.contains(want), "{want} missing from:\n{layer}");
    }
}

#[test]
fn logind_needs_its_packages_and_protocols_are_checked() {
    let mut cfg = NodeConfig::new().logind(true);
    cfg.firewall.allowed_protocols.insert("no such".into());
    let fields: Vec<(String, String)> = match machinist_guest::validate(&[("node", &cfg)]) {
        Err(GuestError::Invalid(list)) => list.into_iter().map(|e| (e.field, e.message)).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert!(
        fields
            .iter()
            .any(|(f, m)| f == "logind" && m.contains("add dbus and libpam-systemd")),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|(f, m)| f == "firewall.allowed_protocols" && m.contains("\"no such\"")),
        "{fields:?}"
    );
}

/// A node file at the generated `.network` path replaces it (the documented way to give a NIC
/// addresses outside the plan).
#[test]
fn a_node_file_replaces_the_generated_network_file() {
    let own = "[Match]\nMACAddress=52:54:00:12:01:01\n\n[Address]\nAddress=10.0.0.1/24\n";
    let cfg = NodeConfig::new().file(FileSpec::new(
        "/etc/systemd/network/10-machinist-vlan1.network",
        own,
    ));
    machinist_guest::validate(&[("a", &cfg)]).unwrap();
    let plan = NetworkPlan::new(&[("a", &cfg)]);
    let layer = NodeLayer::render("a", &cfg, &plan).unwrap().describe();
    assert!(layer.contains("Address=10.0.0.1/24"), "{layer}");
    assert!(!layer.contains("Address=192.168.1.1/24"), "{layer}");
}
