//! The network plan: node numbers, MACs and addresses, /etc/hosts.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;

/// The `[Route]` sections of the node's `.network` file for its NIC on `vlan`: its static routes
/// through that VLAN (`Destination=` and `Gateway=`) and its default gateway if it is there
/// (`Gateway=` only). Empty when the node routes nothing through `vlan`.
pub(crate) fn route_sections(cfg: &NodeConfig, vlan: u8) -> String {
    let mut out = String::new();
    for r in cfg.routes.iter().filter(|r| r.vlan == vlan) {
        out.push_str(&format!(
            "\n[Route]\nDestination={}\nGateway={}\n",
            r.destination, r.via
        ));
    }
    if let Some(g) = cfg.default_gateway.as_ref().filter(|g| g.vlan == vlan) {
        out.push_str(&format!("\n[Route]\nGateway={}\n", g.via));
    }
    out
}

/// Is `addr` on VLAN `vlan`'s subnet (`192.168.<vlan>.0/24` or `2001:db8:<vlan>::/64`), and not
/// that subnet's network or broadcast address?
pub fn on_vlan_subnet(addr: std::net::IpAddr, vlan: u8) -> bool {
    match addr {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 192 && o[1] == 168 && o[2] == vlan && o[3] != 0 && o[3] != 255
        }
        std::net::IpAddr::V6(a) => {
            let s = a.segments();
            s[0] == 0x2001
                && s[1] == 0xdb8
                && s[2] == vlan as u16
                && s[3] == 0
                && a != Ipv6Addr::new(0x2001, 0xdb8, vlan as u16, 0, 0, 0, 0, 0)
        }
    }
}

/// One NIC of a node on a VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// VLAN number (0..=255, as NixOS allows).
    pub vlan: u8,
    /// Interface name in the guest (`vlan<v>`, set by a systemd .link file).
    pub name: String,
    /// Its alternative name, NixOS's name for it: `eth<i>` for the node's i-th VLAN (1-based, in
    /// the order the node lists its VLANs), so scripts written for NixOS find `eth1`.
    pub alt_name: String,
    /// MAC `52:54:00:12:<vlan hex>:<node hex>`.
    pub mac: String,
    /// `192.168.<vlan>.<node>`.
    pub ipv4: Ipv4Addr,
    /// `2001:db8:<vlan>::<node>`.
    pub ipv6: Ipv6Addr,
}

impl Interface {
    /// QEMU NIC id used for this interface (`nic-vlan<v>`).
    pub fn qemu_id(&self) -> String {
        format!("nic-vlan{}", self.vlan)
    }
}

/// The user-mode NIC (QEMU slirp, `restrict=on`), if the node has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInterface {
    /// Interface name in the guest (`user0`).
    pub name: String,
    /// MAC `52:54:00:13:00:<node hex>` (outside the VLAN NICs' `52:54:00:12:…`).
    pub mac: String,
    /// Static guest address 10.0.2.15/24 (no default route).
    pub ipv4: Ipv4Addr,
}

/// A node's place in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    /// Node name.
    pub name: String,
    /// Host name.
    pub hostname: String,
    /// Node number (1.. in name order).
    pub number: u8,
    /// NICs on VLANs, in the order of the node's `vlans`.
    pub interfaces: Vec<Interface>,
    /// The user-mode NIC, if any.
    pub user_interface: Option<UserInterface>,
}

/// Addresses of every node on every VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    nodes: BTreeMap<String, PlannedNode>,
}

/// `52:54:00:12:<a>:<b>`.
pub fn mac_for(vlan: u8, node: u8) -> String {
    format!("52:54:00:12:{vlan:02x}:{node:02x}")
}

impl NetworkPlan {
    /// Number the nodes 1.. in name order and assign addresses. Call [`crate::validate`] first:
    /// more than 254 nodes are truncated here.
    pub fn new(nodes: &[(&str, &NodeConfig)]) -> NetworkPlan {
        let mut sorted: Vec<&(&str, &NodeConfig)> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut map = BTreeMap::new();
        for (i, (name, cfg)) in sorted.into_iter().enumerate().take(254) {
            let n = (i + 1) as u8;
            let interfaces = cfg
                .vlans
                .iter()
                .enumerate()
                .map(|(i, &v)| Interface {
                    vlan: v,
                    name: format!("vlan{v}"),
                    alt_name: format!("eth{}", i + 1),
                    mac: mac_for(v, n),
                    ipv4: Ipv4Addr::new(192, 168, v, n),
                    ipv6: Ipv6Addr::new(0x2001, 0xdb8, v as u16, 0, 0, 0, 0, n as u16),
                })
                .collect();
            let user_interface = cfg.user_net.then(|| UserInterface {
                name: "user0".into(),
                mac: format!("52:54:00:13:00:{n:02x}"),
                ipv4: Ipv4Addr::new(10, 0, 2, 15),
            });
            map.insert(
                name.to_string(),
                PlannedNode {
                    name: name.to_string(),
                    hostname: cfg.effective_hostname(name),
                    number: n,
                    interfaces,
                    user_interface,
                },
            );
        }
        NetworkPlan { nodes: map }
    }

    /// The planned node called `name`.
    pub fn node(&self, name: &str) -> Option<&PlannedNode> {
        self.nodes.get(name)
    }

    /// All nodes in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &PlannedNode> {
        self.nodes.values()
    }

    /// /etc/hosts for `for_node`: localhost, then every node on every VLAN (IPv4 and IPv6).
    pub fn hosts_file(&self, for_node: &str) -> String {
        let mut out =
            String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        if let Some(me) = self.nodes.get(for_node) {
            if me.interfaces.is_empty() {
                out.push_str(&format!("127.0.1.1 {}\n", me.hostname));
            }
        }
        for node in self.nodes.values() {
            let names = if node.hostname == node.name {
                node.name.clone()
            } else {
                format!("{} {}", node.hostname, node.name)
            };
            for iface in &node.interfaces {
                out.push_str(&format!("{} {}\n", iface.ipv4, names));
            }
            for iface in &node.interfaces {
                out.push_str(&format!("{} {}\n", iface.ipv6, names));
            }
        }
        out
    }
}
