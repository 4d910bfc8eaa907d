//! Shared helpers for the socket-level tests.
#![allow(dead_code)]

use std::time::Duration;

use machinist_netsim::client::{ethernet_frame, node_mac, StreamClient};
use machinist_netsim::{Switch, SwitchConfig, SwitchHandle};

pub const T: Duration = Duration::from_secs(2);
pub const QUIET: Duration = Duration::from_millis(150);

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ns")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

pub fn switch(dir: &tempfile::TempDir, seed: u64) -> SwitchHandle {
    Switch::start(
        SwitchConfig::new(1, dir.path().join("sw"))
            .with_pcap(dir.path().join("vlan1.pcap"))
            .with_seed(seed),
    )
    .expect("switch starts")
}

/// Stream ports named `names`, each with a connected client.
pub fn clients(sw: &SwitchHandle, names: &[&str]) -> Vec<StreamClient> {
    names
        .iter()
        .map(|n| {
            let path = sw.add_stream_port(n).expect("port");
            let c = StreamClient::connect(&path).expect("connect");
            sw.wait_connected(n, T).expect("connected");
            c
        })
        .collect()
}

pub fn mac(n: u8) -> [u8; 6] {
    node_mac(1, n)
}

pub fn frame(dst: [u8; 6], src: u8, tag: &str) -> Vec<u8> {
    ethernet_frame(dst, mac(src), tag.as_bytes())
}

/// Receive a frame within `T` or panic.
pub fn expect(c: &mut StreamClient, want: &[u8]) {
    let got = c.recv(T).expect("recv").expect("a frame within 2 s");
    assert_eq!(got, want);
}

/// Assert nothing arrives for a short while.
pub fn expect_nothing(c: &mut StreamClient) {
    if let Some(f) = c.recv(QUIET).expect("recv") {
        panic!("unexpected frame: {:02x?}", &f[..f.len().min(40)]);
    }
}

/// Wait (up to 10 s) until `cond` holds on the switch's counters.
pub fn wait_for(sw: &SwitchHandle, what: &str, mut cond: impl FnMut(&SwitchHandle) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond(sw) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            sw.summary()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Receive exactly `n` frames (10 s deadline), calling `f` on each.
pub fn recv_n(c: &mut StreamClient, n: usize, mut f: impl FnMut(&[u8])) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while got < n {
        assert!(
            std::time::Instant::now() < deadline,
            "received {got} of {n} frames"
        );
        got += c
            .recv_with(Duration::from_millis(100), n - got, &mut f)
            .expect("recv");
    }
}
