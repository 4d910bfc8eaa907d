//! Real QEMU on the switch, with no guest OS: the firmware's iPXE (SeaBIOS + efi-virtio.rom)
//! broadcasts DHCP requests through a `-netdev stream` port and a `-netdev vde` port.
//! Boots QEMU, so it holds the host VM lock and is named `vm_*`.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use machinist_netsim::client::StreamClient;
use machinist_qemu::VmTestLock;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu(netdev: &str, mac: &str) -> Qemu {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "128",
    ])
    .args(["-display", "none", "-boot", "n", "-netdev", netdev])
    .args(["-device", &format!("virtio-net-pci,netdev=n1,mac={mac}")])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Qemu(
        cmd.spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86)"),
    )
}

/// Wait for a DHCP request (IPv4 UDP 68 -> 67) from `mac`.
fn wait_dhcp(obs: &mut StreamClient, mac: [u8; 6], timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(f) = obs.recv(Duration::from_millis(500)).unwrap() {
            let dhcp = f.len() > 42
                && f[6..12] == mac
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[34..36] == [0, 68]
                && f[36..38] == [0, 67];
            if dhcp {
                return f;
            }
        }
    }
    panic!("no DHCP request from {mac:02x?} within {timeout:?}");
}

#[test]
fn vm_qemu_firmware_dhcp_crosses_stream_and_vde_ports() {
    let t0 = Instant::now();
    let _lock = VmTestLock::acquire_timeout(Duration::from_secs(900)).expect("VM lock");
    eprintln!("VM lock acquired after {:?}", t0.elapsed());
    let t0 = Instant::now();
    let dir = tmpdir();
    let sw = switch(&dir, 1);
    let mut obs = clients(&sw, &["observer"]).pop().unwrap();
    let path = sw.add_stream_port("m1").unwrap();
    let m1 = qemu(
        &format!(
            "stream,id=n1,server=off,addr.type=unix,addr.path={}",
            path.display()
        ),
        "52:54:00:12:01:01",
    );
    sw.wait_connected("m1", Duration::from_secs(30)).unwrap();
    let m2 = qemu(
        &format!("vde,id=n1,sock={}", sw.vde_dir().display()),
        "52:54:00:12:01:02",
    );
    sw.wait_connected("vde1", Duration::from_secs(30)).unwrap();
    let f1 = wait_dhcp(&mut obs, mac(1), Duration::from_secs(90));
    let f2 = wait_dhcp(&mut obs, mac(2), Duration::from_secs(90));
    assert_eq!(&f1[0..6], &[0xff; 6]);
    assert_eq!(&f2[0..6], &[0xff; 6]);
    match sw.port_counters("vde1").unwrap().kind {
        machinist_netsim::PortKind::Vde { description } => {
            assert!(description.starts_with("QEMU"), "{description}")
        }
        k => panic!("{k:?}"),
    }
    // block() silences a machine without touching its link.
    sw.block("m1").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    while obs.recv(Duration::from_millis(50)).unwrap().is_some() {}
    let before = sw.port_counters("m1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = sw.port_counters("m1").unwrap();
        if now.frames_in > before.frames_in {
            assert!(now.connected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m1 sent nothing more while blocked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing from m1 reached the observer while blocked.
    while let Some(f) = obs.recv(Duration::from_millis(100)).unwrap() {
        assert_ne!(&f[6..12], &mac(1), "a frame from blocked m1 got through");
    }
    drop(m1);
    drop(m2);
    // QEMU's exit closes its ports.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.port_counters("m1").unwrap().connected || sw.port_counters("vde1").unwrap().connected {
        assert!(
            Instant::now() < deadline,
            "ports still connected after QEMU exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{}\nQEMU part took {:?}", sw.summary(), t0.elapsed());
}
