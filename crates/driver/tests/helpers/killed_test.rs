//! Test helper, not a test: a test process for `vm_signal.rs` and `ct_single.rs` to kill. It
//! runs a one-machine test (an ad-hoc machine made with `create_machine`; a container node with
//! the second argument `container`), writes `<pid> <run directory>` and a newline to the file
//! named by its first argument once the machine answers, then waits to be killed (or for its
//! stdin to close, or 120 s).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use machinist::{NodeConfig, Test};

fn main() {
    let Some(info) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: machinist-driver-test-killed <info file> [container]");
        std::process::exit(2);
    };
    let node = match std::env::args().nth(2).as_deref() {
        Some("container") => NodeConfig::new().container(),
        _ => NodeConfig::new(),
    };
    let out = info.with_extension("out");
    let result = Test::new("vm-killed-test")
        .node("base", NodeConfig::new())
        .output_dir(out)
        .serial_stdout(false)
        .script(|t| {
            let m = t.create_machine("adhoc", node)?;
            assert_eq!(t.get_machine("adhoc")?.name(), "adhoc");
            m.succeed("true")?;
            // The ad-hoc machine is numbered after the declared ones.
            assert_eq!(m.succeed("hostname")?, "adhoc\n");
            let pid = m.pid().ok_or("the ad-hoc machine has no pid")?;
            std::fs::write(&info, format!("{pid} {}\n", t.run_dir().display()))?;
            // Wait to be killed; a closed stdin means the test that started us is gone.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = std::io::stdin().read(&mut [0u8; 1]);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(120));
            Ok(())
        })
        .run();
    if let Err(e) = result {
        eprintln!("machinist-driver-test-killed: {e}");
        std::process::exit(1);
    }
}
