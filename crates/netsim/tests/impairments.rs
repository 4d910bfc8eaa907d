//! Loss statistics with a fixed seed, latency bounds, duplication, rate limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use machinist_netsim::client::BROADCAST;
use machinist_netsim::{DropReason, Impairment, NetsimError};

/// Send `n` unicast frames a -> b with `imp` on b's cable; return how many arrived.
fn run_loss(seed: u64, n: usize, imp: Impairment) -> (usize, u64) {
    let dir = tmpdir();
    let sw = switch(&dir, seed);
    let mut c = clients(&sw, &["a", "b"]);
    // Teach the switch where b is.
    let hello = frame(BROADCAST, 2, "hello");
    c[1].send(&hello).unwrap();
    expect(&mut c[0], &hello);
    sw.set_impairment("b", imp).unwrap();
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| frame(mac(2), 1, &format!("frame {i}")))
        .collect();
    for chunk in frames.chunks(50) {
        let refs: Vec<&[u8]> = chunk.iter().map(|f| f.as_slice()).collect();
        c[0].send_batch(&refs).unwrap();
    }
    // Wait until the switch has read every frame, then take exactly what it delivered.
    wait_for(&sw, "the switch to read every frame", |sw| {
        sw.port_counters("a").unwrap().frames_in == n as u64
    });
    std::thread::sleep(Duration::from_millis(50));
    let b = sw.port_counters("b").unwrap();
    let mut got = 0;
    recv_n(&mut c[1], b.frames_out as usize, |_| got += 1);
    assert!(
        c[1].recv(QUIET).unwrap().is_none(),
        "more frames than counted"
    );
    (got, b.drops.get(DropReason::Loss))
}

#[test]
fn loss_follows_the_probability_and_the_seed() {
    let (got, lost) = run_loss(42, 5000, Impairment::none().loss(0.3));
    assert_eq!(got as u64 + lost, 5000);
    assert!(
        (3300..=3700).contains(&got),
        "30% loss of 5000 delivered {got}"
    );
    // Same seed, same traffic: the same decisions.
    let (got2, _) = run_loss(42, 5000, Impairment::none().loss(0.3));
    assert_eq!(got, got2);
    let (got3, _) = run_loss(43, 5000, Impairment::none().loss(0.3));
    assert_ne!(got, got3, "a different seed should differ");
}

#[test]
fn duplication_delivers_twice() {
    let (got, _) = run_loss(7, 2000, Impairment::none().duplicate(0.5));
    assert!(
        (2850..=3150).contains(&got),
        "50% duplication of 2000 delivered {got}"
    );
}

#[test]
fn latency_and_jitter_stay_in_bounds() {
    let dir = tmpdir();
    let sw = switch(&dir, 5);
    let mut c = clients(&sw, &["a", "b"]);
    let lat = Duration::from_millis(40);
    let jit = Duration::from_millis(10);
    sw.set_impairment(("a", "b"), Impairment::none().latency(lat).jitter(jit))
        .unwrap();
    for i in 0..10 {
        let f = frame(BROADCAST, 1, &format!("ping {i}"));
        let t0 = Instant::now();
        c[0].send(&f).unwrap();
        expect(&mut c[1], &f);
        let dt = t0.elapsed();
        assert!(
            dt >= lat - jit,
            "frame {i} arrived after {dt:?}, before latency-jitter"
        );
        assert!(
            dt < lat + jit + Duration::from_millis(200),
            "frame {i} took {dt:?}"
        );
    }
    // Effective from the next frame: remove it and frames are fast again.
    sw.set_impairment(("b", "a"), Impairment::none()).unwrap();
    // The fastest of five is below the impaired minimum (one slow frame on a loaded host is
    // not a latency).
    let fastest = (0..5)
        .map(|i| {
            let f = frame(BROADCAST, 1, &format!("fast {i}"));
            let t0 = Instant::now();
            c[0].send(&f).unwrap();
            expect(&mut c[1], &f);
            t0.elapsed()
        })
        .min()
        .unwrap();
    assert!(fastest < lat - jit, "{fastest:?}");
}

#[test]
fn rate_limit_spreads_frames_out() {
    let dir = tmpdir();
    let sw = switch(&dir, 5);
    let mut c = clients(&sw, &["a", "b"]);
    // 1 Mbit/s: 20 frames of 1000 bytes = 160 ms of serialisation.
    sw.set_impairment("a", Impairment::none().rate_bps(1_000_000))
        .unwrap();
    let f = frame(BROADCAST, 1, &"r".repeat(986));
    assert_eq!(f.len(), 1000);
    let t0 = Instant::now();
    for _ in 0..20 {
        c[0].send(&f).unwrap();
    }
    for _ in 0..20 {
        expect(&mut c[1], &f);
    }
    let dt = t0.elapsed();
    assert!(
        dt >= Duration::from_millis(150),
        "20 kB at 1 Mbit/s took only {dt:?}"
    );
    assert!(dt < Duration::from_millis(1000), "{dt:?}");
    // A burst beyond the backlog (64 KiB of serialisation, 524 ms) is dropped, counted as `rate`.
    for _ in 0..100 {
        c[0].send(&f).unwrap();
    }
    wait_for(&sw, "the burst to be paced or dropped", |sw| {
        let a = sw.port_counters("a").unwrap();
        let b = sw.port_counters("b").unwrap();
        b.frames_out + a.drops.get(DropReason::Rate) == 120
    });
    let rate_drops = sw.port_counters("a").unwrap().drops.get(DropReason::Rate);
    recv_n(&mut c[1], 100 - rate_drops as usize, |_| {});
    assert!((20..=50).contains(&rate_drops), "{rate_drops}");
}

#[test]
fn reordering_lets_later_frames_overtake() {
    let dir = tmpdir();
    let sw = switch(&dir, 11);
    let mut c = clients(&sw, &["a", "b"]);
    sw.set_impairment("b", Impairment::none().reorder(0.3))
        .unwrap();
    for i in 0..200u32 {
        c[0].send(&frame(BROADCAST, 1, &format!("{i:05}"))).unwrap();
    }
    let mut order = Vec::new();
    recv_n(&mut c[1], 200, |f| {
        order.push(String::from_utf8_lossy(&f[14..19]).parse::<u32>().unwrap())
    });
    // Frames that arrive after a later-sent frame: ~30% of them.
    let mut max = 0;
    let late = order
        .iter()
        .filter(|&&i| {
            let is_late = i < max;
            max = max.max(i);
            is_late
        })
        .count();
    assert!((20..=100).contains(&late), "{late} of 200 frames overtaken");
}

#[test]
fn bad_impairments_are_rejected() {
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    sw.add_stream_port("a").unwrap();
    let e = sw
        .set_impairment("a", Impairment::none().loss(1.5))
        .unwrap_err();
    assert!(matches!(e, NetsimError::InvalidImpairment { .. }), "{e}");
    assert!(e.to_string().contains("loss"));
    // A delay no test could wait for (and that would overflow the switch's clock) is refused.
    let e = sw
        .set_impairment("a", Impairment::none().latency(Duration::MAX))
        .unwrap_err();
    assert!(e.to_string().contains("latency + jitter"), "{e}");
    assert!(matches!(
        sw.set_impairment(("a", "ghost"), Impairment::none().loss(0.1)),
        Err(NetsimError::UnknownPort { .. })
    ));
}
