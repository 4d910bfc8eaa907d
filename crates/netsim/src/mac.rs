//! MAC addresses and the learning table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A 48-bit MAC packed into the low bits of a u64 (the key of the learning table).
pub(crate) fn mac_key(bytes: &[u8]) -> u64 {
    let mut k = 0u64;
    for b in &bytes[..6] {
        k = (k << 8) | u64::from(*b);
    }
    k
}

/// Format a packed MAC as `52:54:00:12:01:01`.
pub(crate) fn format_mac(k: u64) -> String {
    let b = k.to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

/// Multiplicative hash for u64 keys: the table is tiny and its keys are not attacker-chosen
/// in a way that matters (a test's own VMs), so SipHash would be wasted work on the hot path.
#[derive(Default)]
pub(crate) struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Already there.
    Known,
    /// New entry.
    Added,
    /// Moved from this port.
    Moved(u32),
    /// The table was full and was cleared first.
    Reset,
}

/// No MAC: a 48-bit MAC never has the top bits set.
pub(crate) const NO_MAC: u64 = u64::MAX;

/// MAC -> port index.
#[derive(Default)]
pub(crate) struct MacTable {
    map: HashMap<u64, u32, BuildHasherDefault<MacHasher>>,
}

impl MacTable {
    /// Learn (or move) `mac` to `port`.
    pub(crate) fn learn(&mut self, mac: u64, port: u32) -> Learned {
        match self.map.get_mut(&mac) {
            Some(p) if *p == port => Learned::Known,
            Some(p) => Learned::Moved(std::mem::replace(p, port)),
            None => {
                // Bound the table: a guest spraying random source MACs must not grow it forever.
                let reset = self.map.len() >= 65_536;
                if reset {
                    self.map.clear();
                }
                self.map.insert(mac, port);
                if reset {
                    Learned::Reset
                } else {
                    Learned::Added
                }
            }
        }
    }

    pub(crate) fn get(&self, mac: u64) -> Option<u32> {
        self.map.get(&mac).copied()
    }

    /// Forget every MAC learned on `port` (its client went away).
    pub(crate) fn forget_port(&mut self, port: u32) {
        self.map.retain(|_, p| *p != port);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn entries(&self) -> Vec<(u64, u32)> {
        let mut v: Vec<_> = self.map.iter().map(|(m, p)| (*m, *p)).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_forget() {
        let mut t = MacTable::default();
        let m = mac_key(&[0x52, 0x54, 0, 0x12, 1, 1]);
        assert_eq!(format_mac(m), "52:54:00:12:01:01");
        assert_eq!(t.learn(m, 1), Learned::Added);
        assert_eq!(t.learn(m, 1), Learned::Known);
        assert_eq!(t.get(m), Some(1));
        assert_eq!(t.learn(m, 2), Learned::Moved(1));
        assert_eq!(t.get(m), Some(2));
        t.forget_port(2);
        assert_eq!(t.get(m), None);
    }
}
