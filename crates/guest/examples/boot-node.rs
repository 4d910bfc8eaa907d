//! Boot one node from the cached base image and print where the boot time goes:
//! `cargo run -p machinist-guest --features bench --example boot-node [-- stock]` (takes the VM
//! lock; builds the image if needed).

use std::time::Duration;

use machinist_guest::testvm::{BootSpec, TestVm};
use machinist_guest::{ImageCache, ImageSpec, NetworkPlan, NodeLayer, Profile, Progress};

fn main() {
    let stock = std::env::args().any(|a| a == "stock");
    let spec = if stock {
        ImageSpec::base().profile(Profile::Stock)
    } else {
        ImageSpec::base()
    };
    let image = ImageCache::from_env()
        .ensure(&spec, Progress::Lines)
        .expect("image");
    let cfg = machinist_guest::bench::bench_node();
    let plan = NetworkPlan::new(&[("bench", &cfg)]);
    let layer = NodeLayer::render("bench", &cfg, &plan).expect("layer");
    let dir = tempfile::tempdir().expect("tempdir");
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM lock");
    let mut boot = BootSpec::new("bench", dir.path());
    if stock {
        boot.base_initrd = image.debian_initrd.clone();
    }
    let sw = dir.path().join("sw.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sw).expect("bind");
    boot.nics.push(machinist_qemu::Nic::stream(
        "nic-vlan1",
        machinist_guest::mac_for(1, 1),
        &sw,
    ));
    let t = std::time::Instant::now();
    let mut vm = TestVm::boot(&image, Some(&layer), &boot).expect("boot");
    println!("greeting after {:.2} s", vm.greeting_after.as_secs_f64());
    let (_, up) = vm.run("cat /proc/uptime", Duration::from_secs(10)).unwrap();
    println!("uptime at greeting: {up}");
    vm.run(
        "until systemctl is-active -q multi-user.target; do sleep 0.05; done",
        Duration::from_secs(120),
    )
    .unwrap();
    println!("multi-user after {:.2} s", t.elapsed().as_secs_f64());
    for cmd in [
        "systemd-analyze time",
        "systemd-analyze blame | head -25",
        "dmesg | grep -iE 'calibrat|lpj|tsc|clocksource|Run /init|Freeing unused|random' | head -20",
        "dmesg | awk '{print $1 $2}' | tr -d '[]' | awk -F. 'NR>1 && $1+0 != p {print; p=$1+0}' | head; dmesg | tail -3",
        "systemd-analyze critical-chain multi-user.target",
        "systemctl list-units --state=failed --no-legend",
        "systemctl list-jobs --no-legend",
        "ip -br addr",
        "systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic machinist-backdoor@hvc0.service",
        "journalctl -b -o short-monotonic --no-pager | grep -v \" kernel: \" | head -70",
        "cat /proc/cmdline; systemctl show -p UnitPath --value",
        "nft list ruleset | head -5",
    ] {
        let (code, out) = vm.run(cmd, Duration::from_secs(60)).unwrap();
        println!("$ {cmd}  (exit {code})\n{out}");
    }
    println!("--- serial\n{}", vm.qemu.serial().lines().join("\n"));
}
