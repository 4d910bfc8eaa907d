//! Validation of node configurations before anything is built or booted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::config::{NodeConfig, IP_FORWARDING_SYSCTLS};
use crate::error::{FieldError, GuestError};
use crate::network::on_vlan_subnet;
use crate::unit_name::{self, Use};

/// Paths the node layer writes itself; user files may not claim them.
pub const RESERVED_PATHS: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/nftables.conf",
    crate::layer::SYSCTL_PATH,
    crate::layer::MODULES_LOAD_PATH,
];

struct Errors<'a> {
    node: &'a str,
    list: Vec<FieldError>,
}

impl Errors<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(FieldError {
            node: self.node.to_string(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Is `s` a valid host name label (RFC 1123: 1-63 of `[a-z0-9-]`, no leading/trailing `-`)?
pub fn is_valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Is `s` a valid user or group name (`[a-z_][a-z0-9_-]*`, at most 31 characters)?
pub fn is_valid_account_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b == b'_' => {}
        _ => return false,
    }
    s.len() <= 31
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.ends_with('/')
        && !p.split('/').any(|c| c == ".." || c == ".")
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/@+:=,%-".contains(&b))
}

/// Why `value` cannot be written on one line of a unit (or sysusers.d) file, if it cannot: a
/// newline or other control character would start a new line (a new directive or section), and a
/// trailing backslash would join the next line to this one.
pub fn unit_line_problem(value: &str) -> Option<String> {
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Some(format!(
            "{value:?} contains the control character {c:?}; one line of a unit file cannot hold it (it would inject a directive)"
        ));
    }
    if value.ends_with('\\') {
        return Some(format!(
            "{value:?} ends with a backslash, which would join the next line of the unit file to it"
        ));
    }
    None
}

/// Check the fields of `cfg` that are written into unit, sysusers.d and tmpfiles.d lines, so
/// that no value can inject a directive. [`validate`] runs it for every node, and
/// [`crate::NodeLayer::render`] runs it again so an unvalidated configuration cannot inject either.
pub(crate) fn check_rendered_fields(node: &str, cfg: &NodeConfig) -> Result<(), GuestError> {
    let mut e = Errors {
        node,
        list: Vec::new(),
    };
    rendered_fields(cfg, &mut e);
    if e.list.is_empty() {
        Ok(())
    } else {
        Err(GuestError::Invalid(e.list))
    }
}

fn rendered_fields(cfg: &NodeConfig, e: &mut Errors<'_>) {
    let line = |e: &mut Errors<'_>, field: String, v: &str| {
        if let Some(p) = unit_line_problem(v) {
            e.push(field, p);
        }
    };
    let unit = |e: &mut Errors<'_>, field: String, name: &str, what: Use| {
        if let Some(p) = unit_name::problem(name, what) {
            e.push(field, p);
        }
    };
    let unit_list = |e: &mut Errors<'_>, field: String, list: &[String], what: Use| {
        for (j, u) in list.iter().enumerate() {
            unit(e, format!("{field}[{j}]"), u, what);
        }
    };
    let account = |e: &mut Errors<'_>, field: String, v: &str, what: &str| {
        if !is_valid_account_name(v) {
            e.push(
                field,
                format!("{v:?} is not a valid {what} name ([a-z_][a-z0-9_-]*, max 31)"),
            );
        }
    };
    for (i, s) in cfg.services.iter().enumerate() {
        let f = |k: &str| format!("services[{i}].{k}");
        let service = Use::Service {
            started: !s.wanted_by.is_empty(),
            file_name: s.script.is_some(),
        };
        unit(e, f("name"), &s.name, service);
        if let Some(d) = &s.description {
            line(e, f("description"), d);
        }
        if let Some(c) = &s.exec_start {
            line(e, f("exec_start"), c);
        }
        if let Some(d) = &s.working_directory {
            line(e, f("working_directory"), d);
        }
        if let Some(u) = &s.user {
            account(e, f("user"), u, "user");
        }
        if let Some(g) = &s.group {
            account(e, f("group"), g, "group");
        }
        for (k, list) in [
            ("after", &s.after),
            ("before", &s.before),
            ("wants", &s.wants),
            ("requires", &s.requires),
        ] {
            unit_list(e, f(k), list, Use::Reference);
        }
        unit_list(e, f("wanted_by"), &s.wanted_by, Use::WantedBy);
        for (j, l) in s.extra_service_lines.iter().enumerate() {
            let field = f(&format!("extra_service_lines[{j}]"));
            let key_ok = l.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim_end();
                k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && k.chars().all(|c| c.is_ascii_alphanumeric())
            });
            if let Some(p) = unit_line_problem(l) {
                e.push(field, p);
            } else if !key_ok {
                e.push(
                    field,
                    format!("{l:?} is not a `Key=Value` line (e.g. `LimitNOFILE=4096`)"),
                );
            }
        }
    }
    for (i, fb) in cfg.first_boot.iter().enumerate() {
        unit(e, format!("first_boot[{i}].name"), &fb.name, Use::FirstBoot);
        unit_list(
            e,
            format!("first_boot[{i}].after"),
            &fb.after,
            Use::Reference,
        );
        unit_list(
            e,
            format!("first_boot[{i}].before"),
            &fb.before,
            Use::Reference,
        );
    }
    unit_list(e, "masked_units".into(), &cfg.masked_units, Use::Mask);
    kernel_and_routes(cfg, e);
    for (i, u) in cfg.users.iter().enumerate() {
        if let Some(d) = &u.description {
            line(e, format!("users[{i}].description"), d);
        }
        if let Some(sh) = &u.shell {
            if !valid_path(sh) {
                e.push(
                    format!("users[{i}].shell"),
                    format!("{sh:?} is not an absolute path of letters, digits and ._/@+:=,%-"),
                );
            }
        }
        if let Some(g) = &u.group {
            account(e, format!("users[{i}].group"), g, "group");
        }
        for (j, g) in u.extra_groups.iter().enumerate() {
            account(e, format!("users[{i}].extra_groups[{j}]"), g, "group");
        }
    }
    for (i, g) in cfg.groups.iter().enumerate() {
        for (j, m) in g.members.iter().enumerate() {
            account(e, format!("groups[{i}].members[{j}]"), m, "user");
        }
    }
}

/// Is `key` a kernel variable name as sysctl.d writes it: dotted (or slashed) components of
/// `[a-z0-9_-]`, starting with a letter or digit?
pub fn is_valid_sysctl_key(key: &str) -> bool {
    key.len() <= 255
        && key.split(['.', '/']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Is `name` a kernel module name (1-55 of `[A-Za-z0-9_-]`, as `modprobe` takes it)?
pub fn is_valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 55
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `10.0.2.0/24` or `2001:db8:5::/64` as an address and prefix length; the address must be the
/// network's own (no host bits set), as the kernel requires of a route's destination.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s.split_once('/').ok_or_else(|| {
        format!("{s:?} is not in CIDR notation (an address, `/` and a prefix length: 10.0.2.0/24)")
    })?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("{s:?}: the prefix length must be a number 0..={max}"))?;
    let host_bits = match addr {
        IpAddr::V4(a) => u32::from(a).checked_shl(u32::from(len)).unwrap_or(0) != 0,
        IpAddr::V6(a) => u128::from(a).checked_shl(u32::from(len)).unwrap_or(0) != 0,
    };
    if host_bits {
        return Err(format!(
            "{s:?} has host bits set: a destination is a network address (e.g. 10.0.2.0/24)"
        ));
    }
    Ok((addr, len))
}

/// Why `via` cannot be a gateway on VLAN `vlan` of a node with `vlans`, if it cannot.
fn gateway_problem(vlans: &[u8], vlan: u8, via: &str) -> Option<String> {
    if !vlans.contains(&vlan) {
        return Some(format!(
            "VLAN {vlan} is not one of the node's VLANs ({vlans:?}): a route leaves through a NIC the node has"
        ));
    }
    let Ok(addr) = via.parse::<IpAddr>() else {
        return Some(format!("{via:?} is not an IPv4 or IPv6 address"));
    };
    if !on_vlan_subnet(addr, vlan) {
        return Some(format!(
            "{via} is not on VLAN {vlan}'s subnet (192.168.{vlan}.1-254 or 2001:db8:{vlan:x}::N): the gateway must be reachable on that VLAN"
        ));
    }
    None
}

/// Sysctls, kernel modules, static routes and the default gateway: each is written into a line
/// of a layer file, so they are checked whenever a layer is rendered.
fn kernel_and_routes(cfg: &NodeConfig, e: &mut Errors<'_>) {
    let container = cfg.backend == Some(crate::config::NodeBackend::Container);
    for (k, v) in &cfg.sysctls {
        let field = format!("sysctls.{k}");
        if !is_valid_sysctl_key(k) {
            e.push(
                &field,
                format!("{k:?} is not a kernel variable name (dotted components of [a-z0-9_-], e.g. net.ipv4.ip_forward)"),
            );
        } else if container && !k.starts_with("net.") && !k.starts_with("net/") {
            e.push(
                &field,
                format!("{k} is not a net.* variable: a container shares the host's kernel and can set only its own network namespace's variables; run the node as a VM"),
            );
        }
        if v.trim().is_empty() {
            e.push(
                &field,
                "the value is empty: give the value to write (e.g. \"1\")",
            );
        } else if v.chars().any(char::is_control) || v.ends_with('\\') {
            e.push(
                &field,
                format!("{v:?} must be one line of printable text (no control character, no trailing backslash)"),
            );
        }
        if cfg.ip_forwarding && IP_FORWARDING_SYSCTLS.contains(&k.as_str()) && v.trim() != "1" {
            e.push(
                &field,
                format!("{k} = {v:?} contradicts ip_forwarding = true, which sets it to 1; drop one of them"),
            );
        }
    }
    for m in &cfg.kernel_modules {
        if !is_valid_module_name(m) {
            e.push(
                "kernel_modules",
                format!("{m:?} is not a kernel module name (1-55 of [A-Za-z0-9_-], e.g. dummy)"),
            );
        }
    }
    if container && !cfg.kernel_modules.is_empty() {
        e.push(
            "kernel_modules",
            "a container shares the host's kernel and cannot load modules: load them on the host (modprobe) and drop them here, or run the node as a VM",
        );
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        let dest = parse_cidr(&r.destination);
        if let Err(m) = &dest {
            e.push(format!("routes[{i}].destination"), m.clone());
        }
        if !cfg.vlans.contains(&r.vlan) {
            if let Some(m) = gateway_problem(&cfg.vlans, r.vlan, &r.via) {
                e.push(format!("routes[{i}].vlan"), m);
            }
            continue;
        }
        if let Some(m) = gateway_problem(&cfg.vlans, r.vlan, &r.via) {
            e.push(format!("routes[{i}].via"), m);
        } else if let (Ok((d, _)), Ok(via)) = (&dest, r.via.parse::<IpAddr>()) {
            if d.is_ipv4() != via.is_ipv4() {
                e.push(
                    format!("routes[{i}].via"),
                    format!(
                        "{} and {} are not of the same IP version",
                        r.destination, r.via
                    ),
                );
            }
        }
    }
    if let Some(g) = &cfg.default_gateway {
        let field = if cfg.vlans.contains(&g.vlan) {
            "default_gateway.via"
        } else {
            "default_gateway.vlan"
        };
        if let Some(m) = gateway_problem(&cfg.vlans, g.vlan, &g.via) {
            e.push(field, m);
        }
    }
}

/// Check every node; return all problems at once, each naming the node and the field.
pub fn validate(nodes: &[(&str, &NodeConfig)]) -> Result<(), GuestError> {
    let mut all = Vec::new();
    let mut seen = BTreeSet::new();
    if nodes.len() > 254 {
        all.push(FieldError {
            node: "*".into(),
            field: "nodes".into(),
            message: format!("{} nodes; at most 254 fit on a /24 VLAN", nodes.len()),
        });
    }
    for (name, cfg) in nodes {
        let mut e = Errors {
            node: name,
            list: Vec::new(),
        };
        if !seen.insert(*name) {
            e.push("name", "duplicate node name: each node needs a unique name");
        }
        if !is_valid_hostname(&name.replace('_', "-")) {
            e.push(
                "name",
                "not a valid node name: use 1-63 lowercase letters, digits, '-' and '_', not starting or ending with '-' or '_'",
            );
        }
        if let Some(h) = &cfg.hostname {
            if !is_valid_hostname(h) {
                e.push("hostname", format!("{h:?} is not a valid host name"));
            }
        }
        validate_node(cfg, &mut e);
        all.extend(e.list);
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(GuestError::Invalid(all))
    }
}

fn validate_node(cfg: &NodeConfig, e: &mut Errors<'_>) {
    rendered_fields(cfg, e);
    if cfg.logind {
        let missing: Vec<&str> = ["dbus", "libpam-systemd"]
            .into_iter()
            .filter(|p| !cfg.packages.contains(*p))
            .collect();
        if !missing.is_empty() {
            e.push(
                "logind",
                format!(
                    "logind needs the packages dbus and libpam-systemd: add {}",
                    missing.join(" and ")
                ),
            );
        }
    }
    for p in &cfg.packages {
        let ok = !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
            });
        if !ok {
            e.push(
                "packages",
                format!("{p:?} is not a valid Debian package name"),
            );
        }
    }
    if cfg.memory_mib < 128 {
        e.push(
            "memory_mib",
            format!("{} MiB is too small (min 128)", cfg.memory_mib),
        );
    }
    if cfg.cores == 0 || cfg.cores > 64 {
        e.push("cores", format!("{} is out of range 1..=64", cfg.cores));
    }
    let mut vl = BTreeSet::new();
    for (i, v) in cfg.vlans.iter().enumerate() {
        if !vl.insert(*v) {
            e.push(format!("vlans[{i}]"), format!("VLAN {v} listed twice"));
        }
    }
    for (kind, ports) in [
        ("allowed_tcp_ports", &cfg.firewall.allowed_tcp_ports),
        ("allowed_udp_ports", &cfg.firewall.allowed_udp_ports),
    ] {
        for p in ports {
            if *p == 0 || *p > 65535 {
                e.push(
                    format!("firewall.{kind}"),
                    format!("port {p} is out of range 1..=65535"),
                );
            }
        }
    }
    for p in &cfg.firewall.allowed_protocols {
        let number = p.parse::<u16>().map(|n| n <= 255);
        let name_ok = !p.is_empty()
            && p.len() <= 32
            && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !(name_ok || number == Ok(true)) {
            e.push(
                "firewall.allowed_protocols",
                format!("{p:?} is not an IP protocol: give its name in /etc/protocols (\"vrrp\", \"gre\") or its number (0-255)"),
            );
        }
    }
    // Accounts.
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in cfg.groups.iter().enumerate() {
        if !is_valid_account_name(&g.name) {
            e.push(
                format!("groups[{i}].name"),
                format!(
                    "{:?} is not a valid group name ([a-z_][a-z0-9_-]*, max 31)",
                    g.name
                ),
            );
        }
        if groups.insert(&g.name, i).is_some() {
            e.push(
                format!("groups[{i}].name"),
                format!("group {:?} defined twice", g.name),
            );
        }
        if let Some(gid) = g.gid {
            if gid == 0 || gid >= 60000 {
                e.push(
                    format!("groups[{i}].gid"),
                    format!("gid {gid} is out of range 1..60000"),
                );
            }
        }
    }
    let mut users = BTreeSet::new();
    for (i, u) in cfg.users.iter().enumerate() {
        if !is_valid_account_name(&u.name) {
            e.push(
                format!("users[{i}].name"),
                format!(
                    "{:?} is not a valid user name ([a-z_][a-z0-9_-]*, max 31)",
                    u.name
                ),
            );
        }
        if u.name == "root" {
            e.push(format!("users[{i}].name"), "root already exists");
        }
        if !users.insert(u.name.as_str()) {
            e.push(
                format!("users[{i}].name"),
                format!("user {:?} defined twice", u.name),
            );
        }
        if let Some(uid) = u.uid {
            if uid == 0 || uid >= 60000 {
                e.push(
                    format!("users[{i}].uid"),
                    format!("uid {uid} is out of range 1..60000"),
                );
            }
        }
        if let Some(h) = &u.home {
            if !valid_path(h) {
                e.push(
                    format!("users[{i}].home"),
                    format!("{h:?} is not an absolute path"),
                );
            }
        }
    }
    // Files.
    let mut paths: BTreeMap<&str, String> = BTreeMap::new();
    for (i, f) in cfg.files.iter().enumerate() {
        let field = format!("files[{i}].path");
        if !valid_path(&f.path) {
            e.push(
                &field,
                format!(
                    "{:?} must be an absolute normalised path of letters, digits and ._/@+:=,%-",
                    f.path
                ),
            );
        }
        if RESERVED_PATHS.contains(&f.path.as_str()) {
            e.push(
                &field,
                format!(
                    "{} is written by the node layer; use the config field instead",
                    f.path
                ),
            );
        }
        if let Some(prev) = paths.insert(&f.path, field.clone()) {
            e.push(&field, format!("two files at {}: also {prev}", f.path));
        }
        if f.mode > 0o7777 {
            e.push(
                format!("files[{i}].mode"),
                format!("{:o} is not a permission mode", f.mode),
            );
        }
        if !is_valid_account_name(&f.owner) {
            e.push(
                format!("files[{i}].owner"),
                format!("{:?} is not a user name", f.owner),
            );
        }
        if !is_valid_account_name(&f.group) {
            e.push(
                format!("files[{i}].group"),
                format!("{:?} is not a group name", f.group),
            );
        }
    }
    // Units.
    let mut units = BTreeSet::new();
    for (i, s) in cfg.services.iter().enumerate() {
        if !units.insert(s.unit_name()) {
            e.push(
                format!("services[{i}].name"),
                format!("service {:?} defined twice", s.name),
            );
        }
        match (&s.exec_start, &s.script) {
            (None, None) => e.push(format!("services[{i}]"), "needs exec_start or script"),
            (Some(_), Some(_)) => e.push(
                format!("services[{i}]"),
                "set exec_start or script, not both",
            ),
            _ => {}
        }
        let unit_path = format!("/etc/systemd/system/{}", s.unit_name());
        if let Some(prev) = paths.get(unit_path.as_str()) {
            e.push(
                format!("services[{i}].name"),
                format!("two files at {unit_path}: also {prev}"),
            );
        }
        for key in s.environment.keys() {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                e.push(
                    format!("services[{i}].environment"),
                    format!("{key:?} is not a variable name"),
                );
            }
        }
    }
    for (i, f) in cfg.first_boot.iter().enumerate() {
        if !units.insert(f.unit_name()) {
            e.push(
                format!("first_boot[{i}].name"),
                format!("first-boot script {:?} defined twice", f.name),
            );
        }
        if !is_valid_account_name(&f.user) {
            e.push(
                format!("first_boot[{i}].user"),
                format!("{:?} is not a user name", f.user),
            );
        }
    }
}
