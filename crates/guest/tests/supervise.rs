//! `kill -9` of a process in the middle of a supervised command (as an image build runs
//! mmdebstrap, apt-get and mkfs) leaves nothing of the command behind.
//!
//! The test re-runs its own binary as the "builder": that process starts a long command through
//! `supervise::run` (the function every build step goes through), the command starts a background
//! grandchild, and the test SIGKILLs the builder.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machinist_guest::supervise;

const ROLE: &str = "MACHINIST_SUPERVISE_TEST_PIDFILE";
const NAME: &str = "kill_9_of_the_builder_leaves_no_build_process";

/// Running and not a zombie (a zombie waits for whoever inherited it to reap it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn kill_9_of_the_builder_leaves_no_build_process() {
    if let Ok(pidfile) = std::env::var(ROLE) {
        // The builder: a long step with a grandchild, like mmdebstrap running apt-get.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("sleep 600 & echo $$ $! > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait")
            .arg("build-step")
            .arg(&pidfile);
        let r = supervise::run(&cmd, Stdio::null(), Stdio::null(), Duration::from_secs(600));
        panic!("the builder should have been killed, the step ended: {r:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let mut builder = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(ROLE, &pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            break text
                .split_whitespace()
                .map(|p| p.parse::<i32>().unwrap())
                .collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            let _ = builder.kill();
            let _ = builder.wait();
            panic!("the builder never started its step");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    // kill -9 of the builder.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(builder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = builder.wait();

    let t = Instant::now();
    while pids.iter().any(|&p| alive(p)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "build processes {left:?} survived kill -9 of the builder"
    );
    eprintln!(
        "step and grandchild gone {:.0} ms after kill -9",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
