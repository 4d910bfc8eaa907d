//! One machine, booted once, exercising most Machine methods.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use machinist::{Error, NodeConfig, StartKind, Test, WaitForUnit};

/// Warm start (the default): the machine is restored from a snapshot.
#[test]
fn vm_single_machine_methods() {
    single_machine_methods(true);
}

/// The same with a cold boot (`MACHINIST_WARM_START=0`).
#[test]
fn vm_single_machine_methods_cold() {
    single_machine_methods(false);
}

fn single_machine_methods(warm: bool) {
    let _lock = common::vm_lock();
    let out = common::out_dir(if warm { "vm_single" } else { "vm_single_cold" });
    let host_dir = tempfile::tempdir().unwrap();
    let report = Test::new("vm-single")
        .node("machine", NodeConfig::new().user_net(true).open_tcp_port(8080))
        .warm_start(warm)
        .output_dir(&out)
        .serial_stdout(false)
        .script(|t| {
            let m = t.machine("machine");
            let t0 = Instant::now();
            t.start_all()?;
            let started = t0.elapsed();
            // Right after start_all, a short wait must work: the boot is not charged to it.
            m.wait_until_succeeds("true", Duration::from_secs(3))?;
            let first = t0.elapsed();
            eprintln!("METRIC start_all returned after {:.2} s; first command done after {:.2} s", started.as_secs_f64(), first.as_secs_f64());
            assert!(m.is_up());
            // The warm variant really was restored (a failed restore falls back to a cold boot,
            // which would make this test a second cold-boot test).
            let want = if warm { StartKind::Restored } else { StartKind::Cold };
            assert_eq!(m.last_start(), Some(want), "how the machine was started");

            // Per-command latency.
            let n = 30;
            let mut lat = Vec::new();
            for _ in 0..n {
                let s = Instant::now();
                m.execute("true")?;
                lat.push(s.elapsed());
            }
            lat.sort();
            eprintln!("METRIC execute(\"true\") median {:.1} ms, p90 {:.1} ms", lat[n / 2].as_secs_f64() * 1e3, lat[n * 9 / 10].as_secs_f64() * 1e3);
            let s = Instant::now();
            for _ in 0..10 {
                m.succeed("echo hi")?;
            }
            eprintln!("METRIC succeed(\"echo hi\") mean {:.1} ms", s.elapsed().as_secs_f64() * 100.0);

            // execute / succeed / fail.
            assert_eq!(m.execute("echo out; exit 3")?, (3, "out\n".to_string()));
            assert_eq!(m.succeed(["echo a", "echo b"])?, "a\nb\n");
            assert_eq!(m.fail("false")?, "");
            match m.succeed("echo oops; exit 7") {
                Err(Error::CommandFailed { machine, command, code, output }) => {
                    assert_eq!((machine.as_str(), command.as_str(), code, output.as_str()), ("machine", "echo oops; exit 7", 7, "oops\n"));
                }
                other => panic!("expected CommandFailed, got {other:?}"),
            }
            assert!(matches!(m.fail("true"), Err(Error::UnexpectedSuccess { .. })));
            // set -euo pipefail like NixOS.
            assert_ne!(m.execute("false | true")?.0, 0);
            // Host-side timeout => exit code 124 and a usable shell.
            let s = Instant::now();
            assert_eq!(m.execute_with("sleep 30", Duration::from_secs(1))?.0, 124);
            assert!(s.elapsed() < Duration::from_secs(10));
            assert_eq!(m.succeed("echo still-here")?, "still-here\n");

            // Waits inside the guest.
            let s = Instant::now();
            m.wait_until_succeeds("test -e /tmp/flag || { touch /tmp/flag; false; }", 10)?;
            eprintln!("METRIC wait_until_succeeds (2 attempts) {:.2} s", s.elapsed().as_secs_f64());
            m.wait_until_fails("test -e /tmp/gone-soon && rm /tmp/gone-soon; test -e /tmp/nope", 10)?;
            let s = Instant::now();
            let e = m.wait_until_succeeds("false", 2).unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            assert!(s.elapsed() < Duration::from_secs(8), "{:?}", s.elapsed());
            m.sleep(1)?;

            // systemd.
            m.wait_for_unit("multi-user.target", 60)?;
            m.require_unit_state("multi-user.target", "active")?;
            let info = m.get_unit_info("multi-user.target")?;
            assert_eq!(info["ActiveState"], "active");
            assert_eq!(m.get_unit_property("multi-user.target", "ActiveState")?, "active");
            let (rc, _) = m.systemctl("is-active multi-user.target")?;
            assert_eq!(rc, 0);
            m.succeed("systemd-run --unit=broken --service-type=oneshot false || true")?;
            let s = Instant::now();
            let e = m.wait_for_unit("broken.service", 60).unwrap_err();
            assert!(matches!(&e, Error::Unit { reason, .. } if reason.contains("failed")), "{e}");
            // The error carries what the guest says about the unit: status and journal lines.
            let Error::Unit { details, .. } = &e else { unreachable!() };
            for want in ["--- systemctl status", "broken.service", "--- last 30 journal lines"] {
                assert!(details.contains(want), "no {want:?} in the details:\n{details}");
            }
            let e = m.wait_for_unit("does-not-exist.service", 60).unwrap_err();
            assert!(matches!(&e, Error::Unit { reason, .. } if reason.contains("no pending jobs")), "{e}");
            assert!(s.elapsed() < Duration::from_secs(10), "fail fast: {:?}", s.elapsed());
            let e = m
                .wait_for_unit_with("does-not-exist.service", WaitForUnit { tolerate_inactive: true, timeout: Some(Duration::from_secs(2)), ..Default::default() })
                .unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            // Names systemd rejects fail at once (not after the timeout).
            let s = Instant::now();
            let e = m.wait_for_unit("tmpl@.service", 60).unwrap_err();
            assert!(matches!(&e, Error::Unit { reason, .. } if reason.contains("cannot be queried")), "{e}");
            assert!(s.elapsed() < Duration::from_secs(10), "fail fast: {:?}", s.elapsed());
            // A unit whose name starts with a dash is passed after `--`: seen, started, stopped.
            m.succeed("systemd-run --unit=-dash --service-type=exec sleep 600")?;
            m.wait_for_unit("-dash.service", 30)?;
            assert_eq!(m.get_unit_property("-dash.service", "ActiveState")?, "active");
            assert_eq!(m.stop_job("-dash.service")?.0, 0);
            assert_eq!(m.get_unit_info("-dash.service")?["ActiveState"], "inactive");

            // A wait whose attempt leaves a background process holding stdout says so at once,
            // naming the machine and the command once.
            let s = Instant::now();
            let e = m.wait_until_succeeds("sleep 500 &", 20).unwrap_err();
            let Error::BackgroundProcess { pids, .. } = &e else { panic!("expected BackgroundProcess, got {e}") };
            assert!(!pids.is_empty(), "{e}");
            assert!(s.elapsed() < Duration::from_secs(5), "{:?}", s.elapsed());
            let msg = e.to_string();
            assert_eq!((msg.matches("sleep 500 &").count(), msg.matches("machine:").count()), (1, 1), "{msg}");
            m.succeed(format!("kill {}", pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")))?;
            // An attempt that hangs ends soon after the deadline (before: 10 s after it) and the
            // error says what the last attempt did.
            let s = Instant::now();
            let e = m.wait_until_succeeds("echo trying; sleep 500", 3).unwrap_err();
            let took = s.elapsed();
            // 3 s, the last attempt's 3 s grace, a 2 s kill grace, and a round trip.
            assert!(took < Duration::from_secs(10), "{took:?}");
            assert!(e.to_string().contains("still running at the deadline"), "{e}");
            assert!(matches!(&e, Error::Timeout { last_output, .. } if last_output == "trying\n"), "{e:?}");
            eprintln!("METRIC wait_until_succeeds(hanging, 3 s) ended after {:.2} s", took.as_secs_f64());

            // Jobs, ports, sockets, files.
            m.succeed("systemd-run --unit=listener nc -lk 127.0.0.1 4444")?;
            m.wait_for_unit("listener.service", 30)?;
            m.wait_for_open_port(4444, 30)?;
            assert_eq!(m.stop_job("listener.service")?.0, 0);
            m.wait_for_closed_port(4444, 30)?;
            assert_eq!(m.start_job("multi-user.target")?.0, 0);
            m.succeed("systemd-run --unit=usock nc -lkU /tmp/test.sock")?;
            m.wait_for_open_unix_socket("/tmp/test.sock", false, 30)?;
            m.succeed("(sleep 1; touch /tmp/later) >/dev/null 2>&1 &")?;
            m.wait_for_file("/tmp/later", 30)?;

            // Copies.
            std::fs::write(host_dir.path().join("f.txt"), "from host\n").unwrap();
            std::fs::create_dir_all(host_dir.path().join("d/sub")).unwrap();
            std::fs::write(host_dir.path().join("d/sub/x"), "x\n").unwrap();
            m.copy_from_host(host_dir.path().join("f.txt"), "/root/in/f.txt")?;
            assert_eq!(m.succeed("cat /root/in/f.txt")?, "from host\n");
            m.copy_from_host(host_dir.path().join("d"), "/root/d")?;
            assert_eq!(m.succeed("cat /root/d/sub/x")?, "x\n");
            m.copy_from_host_via_shell(host_dir.path().join("f.txt"), "/root/shell.txt")?;
            assert_eq!(m.succeed("cat /root/shell.txt")?, "from host\n");
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(host_dir.path().join("big.bin"), &big).unwrap();
            m.copy_from_host(host_dir.path().join("big.bin"), "/root/big.bin")?;
            let back = m.copy_from_machine("/root/big.bin", "copies")?;
            assert_eq!(std::fs::read(&back).unwrap(), big);
            let dir_back = m.copy_from_machine("/root/d", "copies")?;
            assert_eq!(std::fs::read_to_string(dir_back.join("sub/x")).unwrap(), "x\n");

            // Monitor, QMP events.
            assert!(m.send_monitor_command("info status")?.contains("running"));
            m.qmp_command("stop", serde_json::Value::Null)?;
            m.qmp_command("cont", serde_json::Value::Null)?;
            m.send_monitor_command("stop")?;
            let m2 = m.clone();
            let resume = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                m2.send_monitor_command("cont")
            });
            let ev = m.wait_for_qmp_event(|e| e.event == "RESUME", 30)?;
            assert_eq!(ev.event, "RESUME");
            resume.join().unwrap()?;

            // Serial console.
            // Text printed before the call is found (the buffer is kept since the start).
            m.succeed("echo early-marker > /dev/ttyS0")?;
            m.sleep(0.5)?;
            m.wait_for_console_text("early-marker", 30)?;
            m.succeed("echo console-marker-42 > /dev/ttyS0")?;
            assert_eq!(m.wait_for_console_text("console-marker-\\d+", 30)?, "console-marker-42");
            assert!(m.get_console_log().contains("console-marker-42"));
            m.send_console("\n")?;

            // Screen, keys, OCR, ttys.
            m.succeed("chvt 1 || true; clear > /dev/tty1 || true; echo HELLO-OCR-4711 > /dev/tty1")?;
            let shot = m.screenshot("screen")?;
            assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
            m.wait_until_tty_matches(1, "HELLO-OCR", 30)?;
            assert!(m.get_tty_text(1)?.contains("HELLO-OCR-4711"));
            m.dump_tty_contents(1)?;
            let s = Instant::now();
            m.wait_for_text("HELLO-OCR-4711", 60)?;
            eprintln!("METRIC wait_for_text {:.2} s", s.elapsed().as_secs_f64());
            let screen = m.get_screen_text()?;
            assert!(screen.contains("HELLO-OCR-4711"), "{screen}");
            let boxes = m.find_text("HELLO-OCR-4711")?;
            assert!(boxes.first().is_some_and(|b| b.width > 0 && b.height > 0), "{boxes:?}");
            assert!(!m.get_screen_text_variants()?.is_empty());
            m.send_key("shift-a")?;
            m.send_chars("ls\n")?;

            // Links: carrier follows set_link.
            m.set_link(false)?;
            m.wait_until_succeeds("test \"$(cat /sys/class/net/vlan1/carrier)\" = 0", 20)?;
            m.set_link(true)?;
            m.wait_until_succeeds("test \"$(cat /sys/class/net/vlan1/carrier)\" = 1", 20)?;

            // forward_port through the user-mode NIC.
            m.succeed("systemd-run --unit=fwd bash -c 'while :; do echo forwarded | nc -l -p 8080 -q 1; done'")?;
            m.wait_for_open_port(8080, 30)?;
            let host_port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            m.forward_port(host_port, 8080)?;
            // Retry: slirp connects to the guest asynchronously.
            let mut got = String::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                got.clear();
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", host_port)) {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let _ = c.read_to_string(&mut got);
                }
                if got == "forwarded\n" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            assert_eq!(got, "forwarded\n");

            // A background process holding stdout is reported, not a hang.
            let s = Instant::now();
            let e = m.execute("sleep 100 &").unwrap_err();
            assert!(matches!(&e, Error::BackgroundProcess { .. }), "{e}");
            let msg = e.to_string();
            assert_eq!((msg.matches("sleep 100 &").count(), msg.matches("machine").count()), (1, 1), "{msg}");
            assert!(s.elapsed() < Duration::from_secs(10));
            m.succeed("true")?;

            // The guest's root shell dies and systemd re-spawns it: the command's error says so
            // and the next command runs in the new shell.
            let e = m.execute("kill -9 $$").unwrap_err();
            assert!(e.to_string().contains("re-spawned"), "{e}");
            assert_eq!(m.succeed("echo reborn")?, "reborn\n");

            // Output lines reach the log as they arrive (checked in log.jsonl below).
            m.succeed("echo streamed-line-1; sleep 0.2; echo streamed-line-2")?;

            m.log("all methods checked");
            m.nested("a nested block", || Ok(()))?;
            t.subtest("a subtest", || m.succeed("true"))?;
            Ok(())
        })
        .run()
        .unwrap_or_else(|e| panic!("test failed: {e}"));
    let junit = std::fs::read_to_string(&report.junit).unwrap();
    assert!(junit.contains("a subtest"));
    assert!(report.output_dir.join("machine-console.log").exists());
    let json = std::fs::read_to_string(report.output_dir.join("log.jsonl")).unwrap();
    for want in ["streamed-line-1", "streamed-line-2"] {
        assert!(
            json.lines()
                .any(|l| l.contains(r#""type":"output""#) && l.contains(want)),
            "no output record with {want} in log.jsonl"
        );
    }
    assert!(common::qemus_with("machine")
        .iter()
        .all(|&p| !common::alive(p)));
}
