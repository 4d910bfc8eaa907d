//! A machine's network: `block`/`unblock` (NixOS: the first NIC unplugged), blocking at the
//! switch on every VLAN, NIC links (`set_link`), and port forwarding through the user-mode NIC.

use super::Machine;
use crate::error::{Error, Result};

impl Machine {
    /// Unplugs the machine's first NIC, as NixOS' `block()` does: the interface NixOS calls
    /// `eth1` (the first VLAN the node lists) loses its carrier (QMP `set_link` for a VM, the
    /// TAP device's carrier for a container); the machine's other NICs stay up. Only a running
    /// machine can be unplugged. [`Machine::block_at_switch`] cuts a machine off on every VLAN
    /// instead, silently, carrier up, also before it starts.
    pub fn block(&self) -> Result<()> {
        let vlan = self.first_nic_vlan("block()")?;
        self.require_running("block() (unplug its first NIC)")?;
        self.log_line(&format!(
            "unplugging eth1 (vlan{vlan}): carrier lost, as NixOS block()"
        ));
        self.set_link_vlan(vlan, false)
    }

    /// Undoes [`Machine::block`]: the first NIC is plugged in again.
    pub fn unblock(&self) -> Result<()> {
        let vlan = self.first_nic_vlan("unblock()")?;
        self.require_running("unblock() (plug its first NIC in)")?;
        self.log_line(&format!("plugging eth1 (vlan{vlan}) in again"));
        self.set_link_vlan(vlan, true)
    }

    /// The VLAN of the machine's first NIC (NixOS' `eth1`).
    fn first_nic_vlan(&self, what: &str) -> Result<u8> {
        self.backend
            .spec()
            .nics
            .first()
            .map(|n| n.vlan.nr())
            .ok_or_else(|| {
                Error::bad_argument(
                    Some(&self.name),
                    format!(
                        "{what}: machine `{}` has no VLAN NIC to unplug (give the node a VLAN)",
                        self.name
                    ),
                )
            })
    }

    /// Drops every frame to and from this machine on all its VLANs, at the switch: the guest
    /// keeps its carrier and sees silence (like pulling the cable *behind* a switch). Works
    /// before the machine starts too. NixOS' `block()` unplugs the first NIC instead:
    /// [`Machine::block`].
    pub fn block_at_switch(&self) -> Result<()> {
        self.log_line("blocking network traffic at the switch on all VLANs");
        for v in &self.vlans {
            v.block(&self.name)?;
        }
        Ok(())
    }

    /// Undoes [`Machine::block_at_switch`].
    pub fn unblock_at_switch(&self) -> Result<()> {
        self.log_line("unblocking network traffic at the switch on all VLANs");
        for v in &self.vlans {
            v.unblock(&self.name)?;
        }
        Ok(())
    }

    /// Plugs (`true`) or unplugs (`false`) the NICs on every VLAN (QMP `set_link` for a VM): the
    /// guest sees carrier loss on each ([`Machine::block`] does it to the first NIC only).
    pub fn set_link(&self, up: bool) -> Result<()> {
        for n in self.backend.spec().nics.clone() {
            self.set_link_vlan(n.vlan.nr(), up)?;
        }
        Ok(())
    }

    /// [`Machine::set_link`] for the NIC on one VLAN.
    pub fn set_link_vlan(&self, vlan: u8, up: bool) -> Result<()> {
        let nic = self
            .backend
            .spec()
            .nics
            .iter()
            .find(|n| n.vlan.nr() == vlan)
            .ok_or_else(|| {
                Error::bad_argument(
                    Some(&self.name),
                    format!("machine `{}` has no NIC on vlan {vlan}", self.name),
                )
            })?;
        let run = self.require_running("set a link")?;
        let (name, id) = (self.name.clone(), nic.id.clone());
        self.ctx.block_on(true, async move {
            run.instance
                .set_link(&id, up)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("set_link {id} {up}"), e))
        })
    }

    /// Forwards host TCP port `host_port` (on 127.0.0.1) to `guest_port` through the node's
    /// user-mode NIC (NixOS `forward_port`; the node needs `user_net(true)`).
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<()> {
        let Some((id, _)) = &self.backend.spec().user_nic else {
            return Err(Error::bad_argument(Some(&self.name), format!(
                "machine `{}` has no user-mode NIC: declare it with NodeConfig::user_net(true) to use forward_port",
                self.name
            )));
        };
        let netdev = format!("{id}-netdev");
        let out = self.send_monitor_command(&format!(
            "hostfwd_add {netdev} tcp:127.0.0.1:{host_port}-:{guest_port}"
        ))?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(Error::Assertion {
                machine: self.name.clone(),
                message: format!("hostfwd_add failed: {}", out.trim()),
            })
        }
    }
}
