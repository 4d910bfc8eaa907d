//! A VDE-style virtual Ethernet switch: stream and VDE ports, block, partitions, impairments,
//! counters and pcap.
//!
//! One [`Switch`] per VLAN runs on its own thread (one epoll loop: no runtime is needed, and
//! none is disturbed), so it can be started and controlled from blocking or async (tokio) code
//! alike; every handle method is quick and non-blocking except the explicit waits:
//!
//! - **Stream ports** ([`SwitchHandle::add_stream_port`]): one listening unix socket per
//!   machine, bound before QEMU starts, speaking QEMU's `-netdev stream` framing (4-byte
//!   big-endian length + frame). QEMU 7.2 cannot reconnect, so the listener stays for the
//!   switch's life; a restarted QEMU simply connects again.
//! - **VDE ports** ([`SwitchHandle::vde_dir`]): the libvdeplug protocol (control socket
//!   handshake + datagram data socket), for QEMU `-netdev vde` and Debian's `vde_plug`.
//! - **Learning switch**: unicast to the learned port, flood broadcast, multicast and unknown
//!   destinations, frames forwarded byte for byte (802.1Q tags included).
//! - **Impairments**, changed at any time and effective from the next frame:
//!   [`block`](SwitchHandle::block) (silent: carrier stays up),
//!   [`partition`](SwitchHandle::partition)/[`heal`](SwitchHandle::heal), and per-port or
//!   per-pair [`Impairment`]s (loss, latency, jitter, duplication, reordering, bandwidth) drawn
//!   from a seeded RNG.
//! - **Observability**: [`PortCounters`] (frames/bytes in and out, drops by reason), a pcap file
//!   per VLAN and a readable [`summary`](SwitchHandle::summary).
//!
//! ```no_run
//! use machinist_netsim::{Impairment, Switch, SwitchConfig};
//! use std::time::Duration;
//!
//! let sw = Switch::start(SwitchConfig::new(1, "/tmp/mt-run/vlan1").with_pcap("/tmp/mt-run/vlan1.pcap"))?;
//! let path = sw.add_stream_port("server")?; // QEMU: -netdev stream,server=off,addr.type=unix,addr.path=<path>
//! sw.add_stream_port("client")?;
//! sw.block("server")?;
//! sw.unblock("server")?;
//! sw.set_impairment(("server", "client"), Impairment::none().loss(0.1).latency(Duration::from_millis(20)))?;
//! println!("{}", sw.summary());
//! # Ok::<(), machinist_netsim::NetsimError>(())
//! ```

mod config;
mod core;
mod engine;
mod error;
mod framing;
mod handle;
mod mac;
mod pcap;
mod policy;
mod rng;
mod stats;
mod summary;
mod sys;
mod vde;

pub mod client;
pub mod tap;

#[cfg(feature = "bench")]
pub mod bench;

pub use config::{Impairment, SwitchConfig, Target, REORDER_HOLD};
pub use error::NetsimError;
pub use handle::{Switch, SwitchHandle};
pub use stats::{DropCounts, DropReason, PortCounters, PortKind};
