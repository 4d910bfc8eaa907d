//! A declared node as the script sees it: its configuration, typed options and addresses
//! (the NixOS driver's `testScript = { nodes }: …`).

use machinist_guest::{NodeConfig, PlannedNode};
use serde::de::DeserializeOwned;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// A node of the test: `t.node("server").config()`, `.option::<Tutorial>("tutorial")`, `.ip(1)`.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) name: String,
    pub(crate) config: NodeConfig,
    pub(crate) plan: PlannedNode,
}

impl Node {
    /// The node (and machine) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's full configuration, exactly as declared.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A typed user option attached with `NodeConfig::option(key, value)`
    /// (`nodes.server.config.tutorial.port` in NixOS is `t.node("server").option::<Tutorial>("tutorial")?.port`).
    pub fn option<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let value = self.config.options.get(key).ok_or_else(|| {
            Error::bad_argument(
                None,
                format!(
                "node `{}` has no option `{key}` (options: {}); attach it with NodeConfig::option",
                self.name,
                self.config.options.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            )
        })?;
        serde_json::from_value(value.clone()).map_err(|e| {
            Error::bad_argument(
                None,
                format!(
                    "option `{key}` of node `{}` does not have the requested type: {e}",
                    self.name
                ),
            )
        })
    }

    /// The node number (1.. in name order), as used in MACs and addresses.
    pub fn number(&self) -> u8 {
        self.plan.number
    }

    /// The guest hostname.
    pub fn hostname(&self) -> &str {
        &self.plan.hostname
    }

    /// The node's network plan (interfaces, MACs, addresses).
    pub fn plan(&self) -> &PlannedNode {
        &self.plan
    }

    /// IPv4 address on `vlan` (`192.168.<vlan>.<n>`), if the node is on that VLAN.
    pub fn ip(&self, vlan: u8) -> Option<Ipv4Addr> {
        self.plan
            .interfaces
            .iter()
            .find(|i| i.vlan == vlan)
            .map(|i| i.ipv4)
    }

    /// IPv6 address on `vlan` (`2001:db8:<vlan>::<n>`), if the node is on that VLAN.
    pub fn ipv6(&self, vlan: u8) -> Option<Ipv6Addr> {
        self.plan
            .interfaces
            .iter()
            .find(|i| i.vlan == vlan)
            .map(|i| i.ipv6)
    }

    /// The primary IPv4 address (first VLAN), like NixOS' `networking.primaryIPAddress`.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.plan.interfaces.first().map(|i| i.ipv4)
    }

    /// The VLANs the node is attached to.
    pub fn vlans(&self) -> Vec<u8> {
        self.plan.interfaces.iter().map(|i| i.vlan).collect()
    }
}
