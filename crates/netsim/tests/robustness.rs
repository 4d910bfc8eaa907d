//! Garbage on every kind of socket: the switch closes or drops, never panics, keeps serving.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use common::*;
use machinist_netsim::client::{StreamClient, VdeClient, BROADCAST};
use machinist_netsim::SwitchHandle;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn handle_is_send_and_sync() {
    assert_send_sync::<SwitchHandle>();
}

/// xorshift64*: test-local pseudo-random bytes.
struct Rand(u64);
impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Up to `max` random bytes.
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.next() % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_garbage_never_disturbs_healthy_ports() {
    let dir = tmpdir();
    let sw = switch(&dir, 3);
    let mut good = clients(&sw, &["good1", "good2"]);
    let mut r = Rand(0x1234_5678);
    for round in 0..40 {
        let name = format!("junk{round}");
        let path = sw.add_stream_port(&name).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        // Random bytes, sometimes starting with a plausible header.
        let mut junk = r.bytes(3000);
        if round % 3 == 0 {
            let len = (r.next() % 200) as u32;
            junk.splice(0..0, len.to_be_bytes());
        }
        let _ = s.write_all(&junk);
        if round % 2 == 0 {
            drop(s); // EOF mid-garbage
        }
        // Garbage on the VDE control socket and its data path.
        let mut ctl = UnixStream::connect(sw.vde_dir().join("ctl")).unwrap();
        let _ = ctl.write_all(&r.bytes(400));
        drop(ctl);
    }
    // A VDE client sending random datagrams of every size.
    let mut v = VdeClient::connect(sw.vde_dir(), 0, "fuzz").unwrap();
    for _ in 0..300 {
        let _ = v.send(&r.bytes(1600));
    }
    // Datagrams straight at a data socket path are not possible without a handshake, but a
    // stray datagram socket poking the ctl socket must not hurt either.
    let stray = UnixDatagram::unbound().unwrap();
    let _ = stray.send_to(b"hello", sw.vde_dir().join("ctl"));
    // Healthy ports still work both ways.
    let f = frame(BROADCAST, 1, "still alive");
    good[0].send(&f).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = good[1].recv(T).unwrap().expect("a frame");
        if got == f {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    let g = frame(mac(1), 2, "and back");
    good[1].send(&g).unwrap();
    loop {
        let got = good[0].recv(T).unwrap().expect("a frame");
        if got == g {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    let summary = sw.summary();
    assert!(summary.contains("good1"), "{summary}");
    let mut late = StreamClient::connect(&dir.path().join("sw/junk1.sock")).unwrap();
    sw.wait_connected("junk1", T).unwrap();
    let h = frame(BROADCAST, 1, "late joiner");
    good[0].send(&h).unwrap();
    loop {
        let got = late.recv(T).unwrap().expect("a frame");
        if got == h {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
}
