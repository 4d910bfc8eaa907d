//! The readable switch report printed in test logs on failure.

use std::fmt::Write;
use std::path::Path;

use crate::stats::{DropReason, PortCounters, PortKind};

/// Render the summary (pure, so it can be snapshot-tested).
pub(crate) fn render(
    vlan: u8,
    pcap: Option<&Path>,
    ports: &[PortCounters],
    policy: &[String],
    macs: &[(String, String)],
) -> String {
    let mut s = String::new();
    let _ = write!(s, "switch vlan{vlan}: {} port(s)", ports.len());
    match pcap {
        Some(p) => {
            let _ = writeln!(s, ", capture {}", p.display());
        }
        None => s.push('\n'),
    }
    let _ = writeln!(
        s,
        "  {:<16} {:<6} {:<12} {:>9} {:>11} {:>10} {:>11}  drops",
        "port", "kind", "state", "frames_in", "bytes_in", "frames_out", "bytes_out"
    );
    for p in ports {
        let kind = match p.kind {
            PortKind::Stream { .. } => "stream",
            PortKind::Vde { .. } => "vde",
            PortKind::Tap { .. } => "tap",
        };
        let state = if p.connected {
            "connected"
        } else {
            "disconnected"
        };
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| p.drops.get(**r) > 0)
            .map(|r| format!("{}={}", r.name(), p.drops.get(*r)))
            .collect();
        let drops = if drops.is_empty() {
            "-".to_string()
        } else {
            drops.join(" ")
        };
        let _ = writeln!(
            s,
            "  {:<16} {:<6} {:<12} {:>9} {:>11} {:>10} {:>11}  {}",
            p.name, kind, state, p.frames_in, p.bytes_in, p.frames_out, p.bytes_out, drops
        );
        if let Some(reason) = &p.last_close {
            let _ = writeln!(s, "  {:<16} last close: {reason}", "");
        }
    }
    for line in policy {
        let _ = writeln!(s, "  {line}");
    }
    if !macs.is_empty() {
        let list: Vec<String> = macs.iter().map(|(m, p)| format!("{m}@{p}")).collect();
        let _ = writeln!(s, "  learned: {}", list.join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DropCounts;

    #[test]
    fn summary_layout() {
        let mut drops = DropCounts::default();
        drops.0[DropReason::Blocked as usize] = 3;
        drops.0[DropReason::Loss as usize] = 1;
        let ports = vec![
            PortCounters {
                name: "client".into(),
                kind: PortKind::Stream {
                    path: "/run/sw/client.sock".into(),
                },
                connected: true,
                connections: 1,
                frames_in: 10,
                bytes_in: 980,
                frames_out: 7,
                bytes_out: 686,
                drops,
                last_close: None,
            },
            PortCounters {
                name: "vde1".into(),
                kind: PortKind::Vde {
                    description: "QEMU".into(),
                },
                connected: false,
                connections: 2,
                frames_in: 0,
                bytes_in: 0,
                frames_out: 0,
                bytes_out: 0,
                drops: DropCounts::default(),
                last_close: Some("bad frame: zero-length frame header".into()),
            },
        ];
        let out = render(
            1,
            Some(Path::new("/out/vlan1.pcap")),
            &ports,
            &["blocked: client".to_string()],
            &[("52:54:00:12:01:01".into(), "client".into())],
        );
        insta::assert_snapshot!(out);
    }
}
