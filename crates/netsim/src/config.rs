//! Switch configuration and impairment descriptions.

use std::path::PathBuf;
use std::time::Duration;

/// How to start one switch (one VLAN).
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The VLAN number (used in names, logs and the summary).
    pub vlan: u8,
    /// Directory for the switch's sockets: `<dir>/<port>.sock` per stream port and `<dir>/vde/`
    /// for VDE clients. Created if missing. Keep it short: socket paths must stay < 108 bytes.
    pub dir: PathBuf,
    /// Capture every frame entering the switch into this pcap file (tcpdump/Wireshark).
    pub pcap: Option<PathBuf>,
    /// Seed of the RNG behind loss, jitter, duplication and reordering: the same seed and the
    /// same traffic give the same decisions.
    pub seed: u64,
    /// Bound of each port's outgoing queue, in frames (a slow reader loses frames beyond it,
    /// counted as `queue_full`). Also bounds each port's delayed (latency/rate) frames.
    pub queue_frames: usize,
    /// Bound of each port's outgoing queue, in bytes.
    pub queue_bytes: usize,
    /// Largest frame accepted on a stream port; a larger length header closes the port.
    pub max_frame: usize,
}

impl SwitchConfig {
    /// Defaults: no pcap, seed 0, 1024 frames / 2 MiB per port queue, 65535-byte frames.
    pub fn new(vlan: u8, dir: impl Into<PathBuf>) -> Self {
        Self {
            vlan,
            dir: dir.into(),
            pcap: None,
            seed: 0,
            queue_frames: 1024,
            queue_bytes: 2 << 20,
            max_frame: 65_535,
        }
    }

    /// Capture into `path`.
    pub fn with_pcap(mut self, path: impl Into<PathBuf>) -> Self {
        self.pcap = Some(path.into());
        self
    }

    /// Set the RNG seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Network impairments for a port (its "cable", both directions) or a pair of ports.
///
/// `Impairment::default()` is a perfect link; setting it removes an impairment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Probability in `[0, 1]` that a frame is dropped.
    pub loss: f64,
    /// Fixed one-way delay added to every frame.
    pub latency: Duration,
    /// Uniform random variation of the delay in `[-jitter, +jitter]` (total delay clamped at 0;
    /// like netem, jitter can reorder frames).
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability in `[0, 1]` that a frame is held back by [`REORDER_HOLD`] more than its
    /// normal delay, so that frames sent after it overtake it.
    pub reorder: f64,
    /// Bandwidth limit in bits per second (serialisation delay; a backlog over 100 ms, or over
    /// the time 64 KiB take at this rate if longer, drops frames counted as `rate`).
    pub rate_bps: Option<u64>,
}

/// Extra delay of a reordered frame.
pub const REORDER_HOLD: Duration = Duration::from_millis(2);

/// The longest delay (latency + jitter) an impairment may ask for: one hour.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

impl Impairment {
    /// A perfect link.
    pub fn none() -> Self {
        Self::default()
    }
    /// Set the loss probability.
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }
    /// Set the fixed delay.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }
    /// Set the jitter.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    /// Set the duplication probability.
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }
    /// Set the reordering probability.
    pub fn reorder(mut self, p: f64) -> Self {
        self.reorder = p;
        self
    }
    /// Set the bandwidth limit in bits per second.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.rate_bps = Some(bps);
        self
    }

    /// True when this impairment changes nothing.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        for (what, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{what} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.rate_bps == Some(0) {
            return Err("rate_bps must be positive (use block() to stop traffic)".into());
        }
        if self.latency.saturating_add(self.jitter) > MAX_DELAY {
            return Err(format!(
                "latency + jitter must be at most {} s (use block() to stop traffic), got {:?} + {:?}",
                MAX_DELAY.as_secs(),
                self.latency,
                self.jitter
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.loss > 0.0 {
            parts.push(format!("loss={}%", self.loss * 100.0));
        }
        if !self.latency.is_zero() {
            parts.push(format!("latency={:?}", self.latency));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("jitter={:?}", self.jitter));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("duplicate={}%", self.duplicate * 100.0));
        }
        if self.reorder > 0.0 {
            parts.push(format!("reorder={}%", self.reorder * 100.0));
        }
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate={r}bit/s"));
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        f.write_str(&parts.join(" "))
    }
}

/// What an impairment applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Every frame from or to this port (the port's cable).
    Port(String),
    /// Frames between these two ports, both directions.
    Pair(String, String),
}

impl Target {
    /// The same target with a pair's names in a canonical order.
    pub(crate) fn normalized(self) -> Self {
        match self {
            Target::Pair(a, b) if b < a => Target::Pair(b, a),
            t => t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Port(p) => write!(f, "port {p}"),
            Target::Pair(a, b) => write!(f, "pair {a}<->{b}"),
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Self {
        Target::Port(s.to_string())
    }
}

impl From<String> for Target {
    fn from(s: String) -> Self {
        Target::Port(s)
    }
}

impl From<(&str, &str)> for Target {
    fn from((a, b): (&str, &str)) -> Self {
        Target::Pair(a.to_string(), b.to_string())
    }
}
