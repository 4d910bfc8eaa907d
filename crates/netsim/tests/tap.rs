//! A TAP port: frames cross between a stream port and the host kernel's interface (an ARP
//! request answered by the kernel), counters count them, `block()` drops them, and the port
//! closes when the interface goes away. Needs root (`/dev/net/tun`, `ip`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use machinist_netsim::client::StreamClient;
use machinist_netsim::{tap, PortKind};

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// An ARP request from `src_mac` 10.250.<k>.2 for 10.250.<k>.1.
fn arp_request(src_mac: [u8; 6], k: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[10, 250, k, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 250, k, 1]);
    f
}

fn is_arp_reply_to(f: &[u8], mac: [u8; 6]) -> bool {
    f.len() >= 42 && f[..6] == mac && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
}

#[test]
fn tap_port_forwards_both_ways_and_closes_when_the_interface_goes() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let path = sw.add_stream_port("peer").unwrap();
    let mut peer = StreamClient::connect(&path).unwrap();
    let k = (std::process::id() % 200) as u8 + 1;
    let name = format!("mntap{}", std::process::id() % 100_000);
    let fd = tap::create(&name).unwrap();
    // A second descriptor of the same device, for the carrier ioctl.
    let ctl = fd.try_clone().unwrap();
    // Declared before its device: policy can name it; then the device attaches to it.
    sw.reserve_tap_port("ct").unwrap();
    assert!(sw.reserve_tap_port("ct").is_err(), "a second reservation");
    sw.block("ct").unwrap();
    sw.unblock("ct").unwrap();
    assert!(!sw.port_counters("ct").unwrap().connected);
    sw.add_tap_port("ct", fd, &name).unwrap();
    // Frames to the interface while it is down are dropped; the port stays connected.
    peer.send(&arp_request([0x52, 0x54, 0, 0x12, 0x01, 0x08], k))
        .unwrap();
    wait_for(&sw, "a drop while down", |sw| {
        sw.port_counters("ct").unwrap().drops.total() > 0
    });
    assert!(sw.port_counters("ct").unwrap().connected);
    ip(&["addr", "add", &format!("10.250.{k}.1/24"), "dev", &name]);
    ip(&["link", "set", "dev", &name, "up"]);
    let me = [0x52, 0x54, 0, 0x12, 0x01, 0x09];
    let reply_within = |peer: &mut StreamClient, secs: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(f)) = peer.recv(Duration::from_millis(200)) {
                if is_arp_reply_to(&f, me) {
                    return true;
                }
            }
        }
        false
    };
    let reply = |peer: &mut StreamClient| reply_within(peer, 5);
    peer.send(&arp_request(me, k)).unwrap();
    assert!(
        reply(&mut peer),
        "the host kernel's ARP reply came back through the TAP port"
    );
    let c = sw.port_counters("ct").unwrap();
    assert!(
        c.connected && c.frames_in >= 1 && c.frames_out >= 1,
        "{c:?}"
    );
    assert_eq!(
        c.kind,
        PortKind::Tap {
            interface: name.clone()
        }
    );
    // The carrier can be dropped and raised through a second descriptor.
    tap::set_carrier(std::os::fd::AsRawFd::as_raw_fd(&ctl), false).unwrap();
    tap::set_carrier(std::os::fd::AsRawFd::as_raw_fd(&ctl), true).unwrap();

    // block() drops frames to and from it.
    sw.block("ct").unwrap();
    peer.send(&arp_request(me, k)).unwrap();
    assert!(!reply_within(&mut peer, 1), "blocked: no reply");
    sw.unblock("ct").unwrap();
    peer.send(&arp_request(me, k)).unwrap();
    assert!(reply(&mut peer), "unblocked: replies again");

    // Deleting the interface closes the port; a new device reattaches to it.
    drop(ctl);
    ip(&["link", "del", "dev", &name]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sw.port_counters("ct").unwrap().connected {
        assert!(
            std::time::Instant::now() < deadline,
            "the port stays connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fd = tap::create(&name).unwrap();
    sw.add_tap_port("ct", fd, &name).unwrap();
    ip(&["addr", "add", &format!("10.250.{k}.1/24"), "dev", &name]);
    ip(&["link", "set", "dev", &name, "up"]);
    peer.send(&arp_request(me, k)).unwrap();
    assert!(reply(&mut peer), "a new device on the same port works");
    assert_eq!(sw.port_counters("ct").unwrap().connections, 2);
    // Detaching another device name leaves it; detaching this one closes the port at once.
    sw.detach_tap("ct", "not-this-one").unwrap();
    assert!(sw.port_counters("ct").unwrap().connected);
    sw.detach_tap("ct", &name).unwrap();
    assert!(!sw.port_counters("ct").unwrap().connected);
    peer.send(&arp_request(me, k)).unwrap();
    assert!(!reply_within(&mut peer, 1), "detached: no reply");
    // Dropping the switch closes the device: the interface is gone.
    drop(sw);
    let gone = Command::new("ip")
        .args(["link", "show", "dev", &name])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "interface {name} left behind");
}
