//! Learning, flooding, 802.1Q, block, partition and robustness over real unix sockets.

mod common;

use std::time::Duration;

use common::*;
use machinist_netsim::client::{StreamClient, BROADCAST};
use machinist_netsim::{DropReason, NetsimError, Switch, SwitchConfig};

#[test]
fn learns_floods_and_forwards_unicast() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b", "c"]);
    // Broadcast from a reaches b and c, not a.
    let f = frame(BROADCAST, 1, "hello all");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
    expect(&mut c[2], &f);
    expect_nothing(&mut c[0]);
    // Unknown unicast floods.
    let f = frame(mac(9), 2, "who is 9");
    c[1].send(&f).unwrap();
    expect(&mut c[0], &f);
    expect(&mut c[2], &f);
    // a's MAC was learned: b -> a goes only to a.
    let f = frame(mac(1), 2, "to a");
    c[1].send(&f).unwrap();
    expect(&mut c[0], &f);
    expect_nothing(&mut c[2]);
    // b's MAC was learned from the previous frames.
    let f = frame(mac(2), 3, "to b");
    c[2].send(&f).unwrap();
    expect(&mut c[1], &f);
    expect_nothing(&mut c[0]);
    // Multicast floods.
    let f = frame([0x01, 0x00, 0x5e, 0, 0, 1], 1, "mcast");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
    expect(&mut c[2], &f);
    let counters = sw.port_counters("a").unwrap();
    assert_eq!(counters.frames_in, 2);
    assert_eq!(counters.frames_out, 2);
    assert!(counters.connected);
}

#[test]
fn vlan_tagged_and_odd_frames_pass_byte_for_byte() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b"]);
    // 802.1Q: dst, src, 0x8100, TCI (VLAN 100), inner ethertype 0x0800, payload.
    let mut tagged = Vec::new();
    tagged.extend_from_slice(&BROADCAST);
    tagged.extend_from_slice(&mac(1));
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
    tagged.extend((0..100u8).map(|i| i.wrapping_mul(7)));
    c[0].send(&tagged).unwrap();
    expect(&mut c[1], &tagged);
    // A jumbo frame (stream ports carry up to 65535 bytes) and a minimal 14-byte frame.
    let jumbo: Vec<u8> = BROADCAST
        .iter()
        .chain(mac(1).iter())
        .copied()
        .chain((0..9000u32).map(|i| i as u8))
        .collect();
    c[0].send(&jumbo).unwrap();
    expect(&mut c[1], &jumbo);
    let tiny: Vec<u8> = BROADCAST
        .iter()
        .chain(mac(1).iter())
        .copied()
        .chain([0x88, 0xb5])
        .collect();
    c[0].send(&tiny).unwrap();
    expect(&mut c[1], &tiny);
}

#[test]
fn block_is_silent_and_reversible() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b"]);
    let ab = frame(mac(2), 1, "a to b");
    let ba = frame(mac(1), 2, "b to a");
    c[0].send(&ab).unwrap();
    expect(&mut c[1], &ab);
    sw.block("b").unwrap();
    c[0].send(&ab).unwrap();
    c[1].send(&ba).unwrap();
    expect_nothing(&mut c[1]);
    expect_nothing(&mut c[0]);
    let b = sw.port_counters("b").unwrap();
    assert!(b.connected, "block keeps the client connected (carrier up)");
    assert_eq!(b.drops.get(DropReason::Blocked), 2, "{b:?}");
    assert!(sw.summary().contains("blocked: b"), "{}", sw.summary());
    sw.unblock("b").unwrap();
    c[1].send(&ba).unwrap();
    expect(&mut c[0], &ba);
    c[0].send(&ab).unwrap();
    expect(&mut c[1], &ab);
    assert!(matches!(
        sw.block("nope"),
        Err(NetsimError::UnknownPort { .. })
    ));
}

#[test]
fn partition_and_heal() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b", "c", "d"]);
    sw.partition([vec!["a", "b"], vec!["c"]]).unwrap();
    // a's broadcast reaches b only; d is in the implicit "others" group with nobody.
    let f = frame(BROADCAST, 1, "side 1");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
    expect_nothing(&mut c[2]);
    expect_nothing(&mut c[3]);
    let f = frame(BROADCAST, 3, "side 2");
    c[2].send(&f).unwrap();
    expect_nothing(&mut c[0]);
    expect_nothing(&mut c[1]);
    expect_nothing(&mut c[3]);
    assert_eq!(
        sw.port_counters("a")
            .unwrap()
            .drops
            .get(DropReason::Partition),
        1
    );
    assert!(matches!(
        sw.partition([vec!["a"], vec!["a"]]),
        Err(NetsimError::InvalidPartition { .. })
    ));
    sw.heal();
    let f = frame(BROADCAST, 3, "healed");
    c[2].send(&f).unwrap();
    expect(&mut c[0], &f);
    expect(&mut c[1], &f);
    expect(&mut c[3], &f);
}

#[test]
fn malformed_input_closes_only_that_port() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b", "zero", "big", "trunc"]);
    // Zero length header.
    c[2].send_raw(&[0, 0, 0, 0]).unwrap();
    assert!(c[2].is_closed_by_switch(T));
    // Oversized length header.
    c[3].send_raw(&[0x00, 0x10, 0x00, 0x00, 1, 2, 3]).unwrap();
    assert!(c[3].is_closed_by_switch(T));
    // Truncated frame then EOF.
    c[4].send_raw(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    drop(c.pop());
    // A runt (shorter than an Ethernet header) is dropped, the port stays.
    c[0].send(&[1, 2, 3]).unwrap();
    // The others still work.
    let f = frame(mac(2), 1, "still fine");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
    let deadline = std::time::Instant::now() + T;
    loop {
        let t = sw.port_counters("trunc").unwrap();
        if !t.connected {
            assert!(t.last_close.unwrap().contains("truncated"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "trunc not closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let zero = sw.port_counters("zero").unwrap();
    assert!(!zero.connected);
    assert!(zero.last_close.unwrap().contains("zero-length"));
    let big = sw.port_counters("big").unwrap();
    assert!(big.last_close.unwrap().contains("exceeds"));
    assert_eq!(
        sw.port_counters("a")
            .unwrap()
            .drops
            .get(DropReason::Malformed),
        1
    );
    // The listener stays: a new client (a restarted QEMU) can join the closed port.
    let mut again = StreamClient::connect(&dir.path().join("sw/zero.sock")).unwrap();
    sw.wait_connected("zero", T).unwrap();
    let f = frame(BROADCAST, 1, "welcome back");
    c[0].send(&f).unwrap();
    expect(&mut again, &f);
    assert_eq!(sw.port_counters("zero").unwrap().connections, 2);
}

#[test]
fn second_client_on_a_port_is_refused() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b"]);
    let mut intruder = StreamClient::connect(&dir.path().join("sw/b.sock")).unwrap();
    assert!(intruder.is_closed_by_switch(T));
    let f = frame(BROADCAST, 1, "to the real b");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
}

#[test]
fn slow_reader_gets_a_bounded_queue() {
    let dir = tmpdir();
    let mut cfg = SwitchConfig::new(1, dir.path().join("sw"));
    cfg.queue_bytes = 100_000;
    let sw = Switch::start(cfg).unwrap();
    let mut c = clients(&sw, &["fast", "stuck"]);
    // "stuck" never reads: the kernel buffers fill, then the switch's queue, then drops.
    let f = frame(BROADCAST, 1, &"x".repeat(1400));
    for _ in 0..3000 {
        c[0].send(&f).unwrap();
    }
    let deadline = std::time::Instant::now() + T;
    loop {
        let s = sw.port_counters("stuck").unwrap();
        if s.frames_out + s.drops.get(DropReason::QueueFull) == 3000 {
            assert!(s.drops.get(DropReason::QueueFull) > 1000, "{s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The switch still serves the other port.
    let mut other = {
        let p = sw.add_stream_port("late").unwrap();
        StreamClient::connect(&p).unwrap()
    };
    sw.wait_connected("late", T).unwrap();
    let f = frame(BROADCAST, 1, "after the flood");
    c[0].send(&f).unwrap();
    expect(&mut other, &f);
}

#[test]
fn paths_and_names_are_checked() {
    let long = format!("/tmp/{}", "d".repeat(110));
    let err = Switch::start(SwitchConfig::new(1, &long)).unwrap_err();
    assert!(matches!(err, NetsimError::PathTooLong { .. }), "{err}");
    assert!(err.to_string().contains("shorter than 108 bytes"));
    let _ = std::fs::remove_dir_all(&long);
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    assert!(matches!(
        sw.add_stream_port("a/b"),
        Err(NetsimError::InvalidPortName { .. })
    ));
    assert!(matches!(
        sw.add_stream_port("vde3"),
        Err(NetsimError::InvalidPortName { .. })
    ));
    sw.add_stream_port("a").unwrap();
    assert!(matches!(
        sw.add_stream_port("a"),
        Err(NetsimError::DuplicatePort { .. })
    ));
    let name = "n".repeat(60);
    let deep = tempfile::Builder::new()
        .prefix(&"p".repeat(45))
        .tempdir_in("/tmp")
        .unwrap();
    let sw2 = Switch::start(SwitchConfig::new(2, deep.path())).unwrap();
    assert!(matches!(
        sw2.add_stream_port(&name),
        Err(NetsimError::PathTooLong { .. })
    ));
    assert!(matches!(
        sw.wait_connected("a", Duration::from_millis(50)),
        Err(NetsimError::Timeout { .. })
    ));
}

#[test]
fn shutdown_removes_sockets_and_closes_clients() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a"]);
    let sock = dir.path().join("sw/a.sock");
    assert!(sock.exists());
    sw.shutdown();
    assert!(c[0].is_closed_by_switch(T));
    assert!(!sock.exists());
    assert!(!dir.path().join("sw/vde/ctl").exists());
    sw.shutdown(); // idempotent
}

#[test]
fn a_mac_that_moves_is_relearned() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut c = clients(&sw, &["a", "b", "c"]);
    for i in 0..3 {
        let f = frame(BROADCAST, 1, &format!("from a {i}"));
        c[0].send(&f).unwrap();
        expect(&mut c[1], &f);
        expect(&mut c[2], &f);
    }
    // MAC 1 moves to c (a migrated VM).
    let f = frame(BROADCAST, 1, "now on c");
    c[2].send(&f).unwrap();
    expect(&mut c[0], &f);
    expect(&mut c[1], &f);
    let to1 = frame(mac(1), 2, "to mac 1");
    c[1].send(&to1).unwrap();
    expect(&mut c[2], &to1);
    expect_nothing(&mut c[0]);
    // And back to a: a's cached last MAC must not hide the move.
    let f = frame(BROADCAST, 1, "back on a");
    c[0].send(&f).unwrap();
    expect(&mut c[1], &f);
    expect(&mut c[2], &f);
    c[1].send(&to1).unwrap();
    expect(&mut c[0], &to1);
    expect_nothing(&mut c[2]);
    std::thread::sleep(Duration::from_millis(300));
    let table = sw.mac_table();
    assert!(
        table.contains(&("52:54:00:12:01:01".to_string(), "a".to_string())),
        "{table:?}"
    );
}
