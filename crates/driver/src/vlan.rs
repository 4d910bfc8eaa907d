//! A virtual LAN: one in-process switch (crate netsim) per VLAN number, with a pcap capture.

use std::path::Path;
use std::sync::Arc;

use machinist_netsim::SwitchHandle;

use crate::error::{Error, Result};

/// A VLAN of the test (NixOS `vlan<N>`): the switch every node on it is plugged into.
///
/// Each machine's NIC on this VLAN is the switch port named after the machine.
#[derive(Clone)]
pub struct VLan {
    pub(crate) nr: u8,
    pub(crate) switch: Arc<SwitchHandle>,
}

impl std::fmt::Debug for VLan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VLan").field("nr", &self.nr).finish()
    }
}

impl VLan {
    /// The VLAN number.
    pub fn nr(&self) -> u8 {
        self.nr
    }

    /// The underlying switch (block, partition, impairments, counters; see crate netsim).
    pub fn switch(&self) -> &SwitchHandle {
        &self.switch
    }

    /// The pcap capture of every frame on this VLAN.
    pub fn pcap_path(&self) -> Option<&Path> {
        self.switch.pcap_path()
    }

    /// Drops every frame to and from `machine` on this VLAN (carrier stays up).
    pub fn block(&self, machine: &str) -> Result<()> {
        self.switch
            .block(machine)
            .map_err(|e| Error::backend(Some(machine), format!("blocking on vlan {}", self.nr), e))
    }

    /// Undoes [`VLan::block`].
    pub fn unblock(&self, machine: &str) -> Result<()> {
        self.switch.unblock(machine).map_err(|e| {
            Error::backend(Some(machine), format!("unblocking on vlan {}", self.nr), e)
        })
    }

    /// A human summary of ports, counters and policies (logged on failure).
    pub fn summary(&self) -> String {
        self.switch.summary()
    }
}
