//! Per-port counters: atomics written by the switch thread, snapshots read by anyone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// The port is blocked ([`crate::SwitchHandle::block`]).
    Blocked = 0,
    /// Source and destination are in different partition groups.
    Partition,
    /// Random loss of an impairment.
    Loss,
    /// The port's bounded queue (or delayed-frame bound) was full.
    QueueFull,
    /// A bandwidth limit's backlog was full.
    Rate,
    /// The frame was malformed (shorter than an Ethernet header, or oversized on a VDE port).
    Malformed,
    /// The destination port had no connected client.
    Disconnected,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Blocked,
        DropReason::Partition,
        DropReason::Loss,
        DropReason::QueueFull,
        DropReason::Rate,
        DropReason::Malformed,
        DropReason::Disconnected,
    ];

    /// The reason's name in summaries (`blocked`, `queue_full`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Blocked => "blocked",
            DropReason::Partition => "partition",
            DropReason::Loss => "loss",
            DropReason::QueueFull => "queue_full",
            DropReason::Rate => "rate",
            DropReason::Malformed => "malformed",
            DropReason::Disconnected => "disconnected",
        }
    }
}

/// Drop counts of one port, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts(pub [u64; 7]);

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }
    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// How a port is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A `-netdev stream` port listening at this path.
    Stream {
        /// The listening socket.
        path: std::path::PathBuf,
    },
    /// A TAP device read and written by the switch (a container's NIC).
    Tap {
        /// The interface's name on the host when it was attached.
        interface: String,
    },
    /// A VDE protocol port; the client's description (e.g. `QEMU user=root pid=7637`).
    Vde {
        /// What the client said about itself.
        description: String,
    },
}

/// A snapshot of one port's counters.
///
/// Ingress drops (`blocked` sender, `malformed`, loss on the sender's own cable) count on the
/// sending port; everything else counts on the port the frame was going to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCounters {
    /// The port's name (machine name for stream ports, `vde<N>` for VDE ports).
    pub name: String,
    /// How it is attached.
    pub kind: PortKind,
    /// A client is connected now.
    pub connected: bool,
    /// How many clients have connected over the switch's life.
    pub connections: u64,
    /// Frames received from the port's client.
    pub frames_in: u64,
    /// Bytes received from the port's client.
    pub bytes_in: u64,
    /// Frames queued for the port's client (delivered unless the client goes away).
    pub frames_out: u64,
    /// Bytes queued for the port's client.
    pub bytes_out: u64,
    /// Dropped frames by reason.
    pub drops: DropCounts,
    /// Why the last client connection was closed, if one was.
    pub last_close: Option<String>,
}

/// The live counters of one port.
#[derive(Debug, Default)]
pub(crate) struct PortStats {
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub drops: [AtomicU64; 7],
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub last_close: Mutex<Option<String>>,
}

/// Add to a counter that only the switch thread writes (no locked read-modify-write needed).
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl PortStats {
    #[inline]
    pub(crate) fn count_drop(&self, r: DropReason) {
        bump(&self.drops[r as usize], 1);
    }

    pub(crate) fn snapshot(&self, name: &str, kind: &PortKind) -> PortCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut drops = DropCounts::default();
        for (i, d) in self.drops.iter().enumerate() {
            drops.0[i] = l(d);
        }
        PortCounters {
            name: name.to_string(),
            kind: kind.clone(),
            connected: self.connected.load(Ordering::Acquire),
            connections: l(&self.connections),
            frames_in: l(&self.frames_in),
            bytes_in: l(&self.bytes_in),
            frames_out: l(&self.frames_out),
            bytes_out: l(&self.bytes_out),
            drops,
            last_close: self.last_close.lock().map(|g| g.clone()).unwrap_or(None),
        }
    }
}
