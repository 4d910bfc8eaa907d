//! A machine's network: `block`/`unblock` at the switch, NIC links (`set_link`), and port
//! forwarding through the user-mode NIC.

use super::Machine;
use crate::error::{Error, Result};

impl Machine {
    /// Drops every frame to and from this machine on all its VLANs, at the switch: the guest
    /// keeps its carrier and sees silence (like pulling the cable *behind* a switch). NixOS'
    /// `block()` instead unplugs the NIC (carrier loss): that is [`Machine::set_link`]`(false)`.
    pub fn block(&self) -> Result<()> {
        self.log_line("blocking network traffic on all VLANs");
        for v in &self.vlans {
            v.block(&self.name)?;
        }
        Ok(())
    }

    /// Undoes [`Machine::block`].
    pub fn unblock(&self) -> Result<()> {
        self.log_line("unblocking network traffic on all VLANs");
        for v in &self.vlans {
            v.unblock(&self.name)?;
        }
        Ok(())
    }

    /// Plugs (`true`) or unplugs (`false`) the NICs on every VLAN with QMP `set_link`: the guest
    /// sees carrier loss (NixOS `block()` semantics, but on every VLAN NIC, not just the first).
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
