//! Rendering of systemd units, networkd files, sysusers.d, tmpfiles.d and the nftables ruleset.

use std::fmt::Write as _;

use crate::config::{FirewallSpec, FirstBootScript, GroupSpec, ServiceSpec, UserSpec};
use crate::network::{Interface, UserInterface};
use crate::unit_name::{full_unit_name, service_stem};

/// Where script services are installed.
pub const SERVICE_SCRIPT_DIR: &str = "/usr/lib/machinist/services";
/// Where first-boot scripts are installed.
pub const FIRST_BOOT_DIR: &str = "/usr/lib/machinist/first-boot";
/// Where first-boot stamps are written.
pub const FIRST_BOOT_STAMP_DIR: &str = "/var/lib/machinist/first-boot";

fn quote_env(key: &str, value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    // Control characters as C escapes (systemd unescapes them): a raw newline would end the line.
    let escaped: String = escaped
        .chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            c if c.is_control() && (c as u32) < 0x80 => format!("\\x{:02x}", c as u32),
            c if c.is_control() => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect();
    format!("\"{key}={escaped}\"")
}

/// A `Key=` line of unit names, each written in full (`postgresql` -> `postgresql.service`).
fn line_list(out: &mut String, key: &str, items: &[String]) {
    if !items.is_empty() {
        let names: Vec<String> = items.iter().map(|u| full_unit_name(u)).collect();
        let _ = writeln!(out, "{key}={}", names.join(" "));
    }
}

/// A bash script file with strict mode.
pub fn script_file(body: &str) -> String {
    let mut s = String::from("#!/bin/bash\nset -euo pipefail\n");
    s.push_str(body);
    if !body.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The unit file of a service.
pub fn service_unit(s: &ServiceSpec) -> String {
    let mut out = String::from("[Unit]\n");
    let desc = s
        .description
        .clone()
        .unwrap_or_else(|| format!("{} (machinist node service)", service_stem(&s.name)));
    let _ = writeln!(out, "Description={desc}");
    line_list(&mut out, "After", &s.after);
    line_list(&mut out, "Before", &s.before);
    line_list(&mut out, "Wants", &s.wants);
    line_list(&mut out, "Requires", &s.requires);
    out.push_str("\n[Service]\n");
    let _ = writeln!(out, "Type={}", s.service_type.as_str());
    match (&s.exec_start, &s.script) {
        (Some(cmd), _) => {
            let _ = writeln!(out, "ExecStart={cmd}");
        }
        (None, Some(_)) => {
            let _ = writeln!(
                out,
                "ExecStart={SERVICE_SCRIPT_DIR}/{}",
                service_stem(&s.name)
            );
        }
        (None, None) => {}
    }
    if let Some(u) = &s.user {
        let _ = writeln!(out, "User={u}");
    }
    if let Some(g) = &s.group {
        let _ = writeln!(out, "Group={g}");
    }
    for (k, v) in &s.environment {
        let _ = writeln!(out, "Environment={}", quote_env(k, v));
    }
    if let Some(d) = &s.working_directory {
        let _ = writeln!(out, "WorkingDirectory={d}");
    }
    let _ = writeln!(out, "Restart={}", s.restart.as_str());
    if s.remain_after_exit {
        out.push_str("RemainAfterExit=yes\n");
    }
    for l in &s.extra_service_lines {
        let _ = writeln!(out, "{l}");
    }
    if !s.wanted_by.is_empty() {
        out.push_str("\n[Install]\n");
        line_list(&mut out, "WantedBy", &s.wanted_by);
    }
    out
}

/// The unit file of a first-boot script: runs once (a stamp, synced to disk so that a crash
/// right after it does not run it again against durable state such as a database).
pub fn first_boot_unit(f: &FirstBootScript) -> String {
    let name = service_stem(&f.name);
    let mut out = String::from("[Unit]\n");
    let _ = writeln!(out, "Description=Machinist first-boot script {name}");
    let _ = writeln!(
        out,
        "ConditionPathExists=!{FIRST_BOOT_STAMP_DIR}/{name}.done"
    );
    line_list(&mut out, "After", &f.after);
    line_list(&mut out, "Requires", &f.after);
    line_list(&mut out, "Before", &f.before);
    out.push_str("\n[Service]\nType=oneshot\nRemainAfterExit=yes\n");
    let _ = writeln!(out, "User={}", f.user);
    let _ = writeln!(out, "ExecStart={FIRST_BOOT_DIR}/{name}");
    let _ = writeln!(
        out,
        "ExecStartPost=+/bin/sh -c 'mkdir -p {FIRST_BOOT_STAMP_DIR} && touch {n}.done && sync -f {n}.done'",
        n = format_args!("{FIRST_BOOT_STAMP_DIR}/{name}")
    );
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}

/// `.link` file naming the NIC with this MAC (and giving it an alternative name, if any).
pub fn link_file(name: &str, alt_name: Option<&str>, mac: &str) -> String {
    let alt = alt_name
        .map(|a| format!("AlternativeName={a}\n"))
        .unwrap_or_default();
    format!("[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n{alt}")
}

/// `.network` file for a VLAN NIC: static addresses, no DHCP, no RA, no default route.
pub fn vlan_network_file(iface: &Interface) -> String {
    format!(
        "[Match]\nMACAddress={mac}\n\n[Link]\nRequiredForOnline=yes\n\n[Network]\nDHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=ipv6\nConfigureWithoutCarrier=yes\n\n[Address]\nAddress={v4}/24\n\n[Address]\nAddress={v6}/64\nDuplicateAddressDetection=none\n",
        mac = iface.mac,
        v4 = iface.ipv4,
        v6 = iface.ipv6,
    )
}

/// `.network` file for the user-mode NIC: static 10.0.2.15/24, no gateway.
pub fn user_network_file(iface: &UserInterface) -> String {
    format!(
        "[Match]\nMACAddress={mac}\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nDHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n\n[Address]\nAddress={v4}/24\n",
        mac = iface.mac,
        v4 = iface.ipv4,
    )
}

/// sysusers.d content: groups, users, memberships.
pub fn sysusers(users: &[UserSpec], groups: &[GroupSpec]) -> String {
    let mut out = String::from("# Generated by machinist-guest\n");
    for g in groups {
        let id = g.gid.map_or("-".to_string(), |g| g.to_string());
        let _ = writeln!(out, "g {} {id}", g.name);
    }
    for u in users {
        let uid = u.uid.map_or("-".to_string(), |u| u.to_string());
        let id = match &u.group {
            Some(g) => format!("{uid}:{g}"),
            None => uid,
        };
        let gecos = u.description.clone().unwrap_or_else(|| u.name.clone());
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/bash".into());
        let _ = writeln!(
            out,
            "u {} {id} \"{}\" {} {shell}",
            u.name,
            gecos.replace('"', "'"),
            u.effective_home()
        );
    }
    for u in users {
        for g in &u.extra_groups {
            let _ = writeln!(out, "m {} {g}", u.name);
        }
    }
    for g in groups {
        for m in &g.members {
            let _ = writeln!(out, "m {m} {}", g.name);
        }
    }
    out
}

/// tmpfiles.d content: home directories.
pub fn tmpfiles(users: &[UserSpec]) -> String {
    let mut out = String::from("# Generated by machinist-guest\n");
    for u in users {
        let group = u.group.clone().unwrap_or_else(|| u.name.clone());
        let _ = writeln!(out, "d {} 0700 {} {group} -", u.effective_home(), u.name);
    }
    let _ = writeln!(out, "d {FIRST_BOOT_STAMP_DIR} 0755 root root -");
    out
}

/// The unit loading the node's nftables ruleset.
pub const FIREWALL_UNIT: &str = "machinist-firewall.service";

/// The firewall unit. It loads its modules itself (one `modprobe -a`, libkmod) and is ordered
/// before `multi-user.target` only, so neither systemd-modules-load, sysctl nor networkd wait for
/// netfilter (seconds under TCG); it runs in parallel with them.
pub fn firewall_unit() -> String {
    format!(
        "[Unit]\nDescription=Machinist firewall (nftables ruleset of the node layer)\nDefaultDependencies=no\nBefore=multi-user.target shutdown.target\nConflicts=shutdown.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStartPre=-/sbin/modprobe -a {}\nExecStart=/usr/sbin/nft -f /etc/nftables.conf\nExecReload=/usr/sbin/nft -f /etc/nftables.conf\nExecStop=/usr/sbin/nft flush ruleset\n\n[Install]\nWantedBy=sysinit.target\n",
        NFTABLES_MODULES.join(" ")
    )
}

/// Kernel modules the ruleset needs (their dependencies are loaded by libkmod).
pub const NFTABLES_MODULES: &[&str] = &["nf_tables", "nft_reject_inet"];

fn port_set(ports: &std::collections::BTreeSet<u32>) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nftables ruleset (`/etc/nftables.conf`).
///
/// Stateless on purpose: connection tracking (nf_conntrack + defrag modules) costs seconds of
/// boot under TCG. Replies are recognised without it: TCP segments that are not connection
/// attempts (anything but SYN without ACK), UDP to the ephemeral port range (32768-60999, where
/// client sockets live), ICMP echo replies and errors. New TCP connections and UDP datagrams to
/// ports that are not open are refused. `stateful` adds connection tracking (NixOS' behaviour).
pub fn nftables(fw: &FirewallSpec) -> String {
    let mut out =
        String::from("#!/usr/sbin/nft -f\n# Generated by machinist-guest\nflush ruleset\n");
    if !fw.enable {
        out.push_str("# firewall disabled\n");
        return out;
    }
    out.push_str("\ntable inet machinist {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    out.push_str("\t\tiif \"lo\" accept\n");
    if fw.stateful {
        out.push_str("\t\tct state established,related accept\n");
        out.push_str("\t\tct state invalid drop\n");
    }
    out.push_str("\t\ttcp flags & (syn | ack) != syn accept\n");
    out.push_str("\t\tudp dport 32768-60999 accept\n");
    out.push_str("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-reply, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, mld-listener-report, mld2-listener-report } accept\n");
    out.push_str("\t\ticmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } accept\n");
    if fw.allow_ping {
        out.push_str("\t\ticmp type echo-request accept\n");
        out.push_str("\t\ticmpv6 type echo-request accept\n");
    }
    if !fw.allowed_tcp_ports.is_empty() {
        let _ = writeln!(
            out,
            "\t\ttcp dport {{ {} }} accept",
            port_set(&fw.allowed_tcp_ports)
        );
    }
    if !fw.allowed_udp_ports.is_empty() {
        let _ = writeln!(
            out,
            "\t\tudp dport {{ {} }} accept",
            port_set(&fw.allowed_udp_ports)
        );
    }
    if !fw.allowed_protocols.is_empty() {
        let names: Vec<&str> = fw.allowed_protocols.iter().map(String::as_str).collect();
        let _ = writeln!(out, "\t\tmeta l4proto {{ {} }} accept", names.join(", "));
    }
    if fw.reject_packets {
        out.push_str("\t\tmeta l4proto tcp reject with tcp reset\n");
        out.push_str("\t\treject\n");
    }
    out.push_str("\t}\n}\n");
    out
}
