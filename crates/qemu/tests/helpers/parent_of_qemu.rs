//! Test helper, not a test: the parent process that `vm_parent_sigkill_kills_qemu`
//! (`tests/vm.rs`) SIGKILLs to prove that QEMU dies with its parent.
//!
//! Starts a paused QEMU (no guest code runs), prints `QEMU_PID=<pid>` on stdout, then waits
//! until its stdin closes (the test process exited) or 120 s pass, whichever comes first.

use std::io::{Read, Write};
use std::time::Duration;

use machinist_qemu::{QemuCommand, QemuProcess, Serial};

fn main() {
    let cmd = QemuCommand::new("orphan")
        .memory_mib(64)
        .cores(1)
        .serial(Serial::None)
        .arg("-S");
    let qemu = match QemuProcess::spawn(&cmd) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("parent_of_qemu: {e}");
            std::process::exit(1);
        }
    };
    println!("QEMU_PID={}", qemu.pid());
    let _ = std::io::stdout().flush();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(120));
    drop(qemu);
}
