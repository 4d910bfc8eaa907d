# Calls every public method of `Machine` and every test-level function from Python, each with a
# check of what it returned or did (run by vm_python_api.rs on two machines: `alpha` with a
# user-mode NIC, `beta`, both on VLAN 1). `SCRATCH` (a host directory) is defined before this
# file by the test. python_api_script_covers_every_method fails when a method is added to
# `Machine` without being called here.

import datetime
import os
import pathlib
import socket
import threading
import time


def raises(exc, fn, *contains):
    """Calls fn, which must raise exc with each of `contains` in its message; returns the error."""
    try:
        fn()
    except exc as e:
        for c in contains:
            assert c in str(e), f"{c!r} not in {e}"
        return e
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


def with_stdin(data, fn):
    """Runs fn with the process's stdin reading `data` (then end of input)."""
    path = os.path.join(SCRATCH, "stdin")
    with open(path, "wb") as f:
        f.write(data)
    saved = os.dup(0)
    fd = os.open(path, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    try:
        return fn()
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def stderr_of(fn):
    """Runs fn with fd 2 (the driver's terminal log) sent to a file; returns what it printed."""
    path = os.path.join(SCRATCH, "stderr")
    saved = os.dup(2)
    with open(path, "w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            fn()
            time.sleep(1)  # serial lines are printed by the reader as they arrive
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def host_file(name, text):
    p = pathlib.Path(SCRATCH, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


with subtest("start, start_all, name, booted, is_up"):
    assert alpha.name == "alpha" and beta.name == "beta"
    assert not alpha.booted
    alpha.start(allow_reboot=True)
    assert alpha.booted
    start_all()
    assert beta.booted
    alpha.wait_for_unit("multi-user.target", timeout=300)
    beta.wait_for_unit("multi-user.target", timeout=datetime.timedelta(minutes=5))
    assert alpha.is_up() and beta.is_up()

with subtest("execute, succeed, fail and their timeouts"):
    assert alpha.execute("echo hi; exit 3") == (3, "hi\n")
    assert alpha.execute("echo hi; exit 3", check_return=False) == (-1, "hi\n")
    assert alpha.execute("echo hi", check_output=0) == (-2, "")
    assert alpha.execute("echo x", timeout=None) == (0, "x\n")
    assert alpha.execute("sleep 30", timeout=1)[0] == 124
    assert alpha.succeed("echo a", "echo b") == "a\nb\n"
    assert alpha.fail("echo no; false", timeout=10.5) == "no\n"
    raises(RequestedAssertionFailed, lambda: alpha.succeed("false"), "`false` failed")
    raises(AssertionError, lambda: alpha.fail("true"), "unexpectedly succeeded")
    for bad in (1e20, float("nan"), float("inf"), -1):
        raises(ValueError, lambda: alpha.succeed("true", timeout=bad), "between 0 and", "None")
        raises(ValueError, lambda: alpha.wait_for_unit("x", timeout=bad), "between 0 and")
        raises(ValueError, lambda: alpha.sleep(bad), "between 0 and")
    raises(TypeError, lambda: alpha.succeed("true", timeout="soon"), "timedelta")

with subtest("waits: wait_until_succeeds, wait_until_fails, wait_for_file, sleep"):
    alpha.succeed("systemd-run sh -c 'sleep 2; touch /tmp/later'")
    assert alpha.wait_until_succeeds("cat /tmp/later && echo there", timeout=60) == "there\n"
    alpha.succeed("systemd-run sh -c 'sleep 2; rm /tmp/later'")
    assert alpha.wait_until_fails("test -e /tmp/later && echo present", timeout=60) == ""
    alpha.succeed("systemd-run sh -c 'sleep 1; touch /tmp/api-file'")
    alpha.wait_for_file("/tmp/api-file", timeout=60)
    alpha.succeed("test -e /tmp/api-file")
    t0 = time.monotonic()
    alpha.sleep(1)
    alpha.sleep(datetime.timedelta(milliseconds=500))
    assert time.monotonic() - t0 >= 1.5

with subtest("systemd: systemctl, get_unit_info, get_unit_property, start_job, stop_job"):
    assert alpha.systemctl("is-active multi-user.target") == (0, "active\n")
    info = alpha.get_unit_info("multi-user.target")
    assert info["Id"] == "multi-user.target" and info["ActiveState"] == "active", info
    assert alpha.get_unit_property("multi-user.target", "ActiveState") == "active"
    unit = host_file(
        "api-echo.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo started > /run/api-echo'\n",
    )
    alpha.copy_from_host_via_shell(unit, "/etc/systemd/system/api-echo.service")
    alpha.succeed("systemctl daemon-reload")
    assert alpha.start_job("api-echo.service")[0] == 0
    alpha.wait_for_unit("api-echo.service", timeout=60)
    alpha.require_unit_state("api-echo.service")
    assert alpha.succeed("cat /run/api-echo") == "started\n"
    assert alpha.stop_job("api-echo.service")[0] == 0
    alpha.require_unit_state("api-echo.service", require_state="inactive")
    raises(AssertionError, lambda: alpha.require_unit_state("api-echo.service"), "inactive")

with subtest("ports and sockets, forward_port"):
    alpha.succeed(
        "systemd-run --unit=api-tcp sh -c 'while true; do echo hello-from-alpha | nc -l -N 8123; done'"
    )
    alpha.wait_for_open_port(8123, timeout=60)
    alpha.wait_for_open_port("8123", addr="127.0.0.1", timeout=60)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host_port = s.getsockname()[1]
    alpha.forward_port(host_port, 8123)
    got = b""
    deadline = time.monotonic() + 30
    while b"hello-from-alpha" not in got and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", host_port), timeout=5) as c:
                got = c.recv(100)
        except OSError:
            time.sleep(0.5)
    assert got == b"hello-from-alpha\n", got
    alpha.systemctl("stop api-tcp")
    alpha.wait_for_closed_port(8123, timeout=60)
    raises(AssertionError, lambda: alpha.wait_for_open_port(8124, timeout=2))
    alpha.succeed("systemd-run --unit=api-unix nc -lkU /run/api.sock")
    alpha.wait_for_open_unix_socket("/run/api.sock", timeout=60)
    alpha.succeed("systemd-run --unit=api-dgram nc -lkuU /run/api-dgram.sock")
    alpha.wait_for_open_unix_socket(pathlib.PurePosixPath("/run/api-dgram.sock"), is_datagram=True, timeout=60)
    raises(AssertionError, lambda: alpha.wait_for_open_unix_socket("/run/none.sock", timeout=2))

with subtest("copies: copy_from_host, copy_from_machine, copy_from_vm"):
    alpha.copy_from_host(str(host_file("hostfile.txt", "from the host\n")), "/root/hostfile.txt")
    assert alpha.succeed("cat /root/hostfile.txt") == "from the host\n"
    host_file("dir/a.txt", "in a dir\n")
    alpha.copy_from_host(pathlib.Path(SCRATCH, "dir"), "/root/dir")
    assert alpha.succeed("cat /root/dir/a.txt") == "in a dir\n"
    alpha.succeed("mkdir -p /root/out && echo from-guest > /root/out/g.txt")
    p = alpha.copy_from_machine("/root/out/g.txt")
    assert pathlib.Path(p).read_text() == "from-guest\n", p
    p = alpha.copy_from_vm("/root/out", "sub")
    assert pathlib.Path(p, "g.txt").read_text() == "from-guest\n", p
    assert "sub" in pathlib.Path(p).parts, p

with subtest("logs: log, serial_stdout_off, serial_stdout_on, get_console_log, wait_for_console_text"):
    alpha.log("api-machine-log-line")
    log("api-test-log-line")

    def serial(marker):
        def emit():
            alpha.succeed(f"echo {marker} > /dev/ttyS0")
            assert marker in alpha.wait_for_console_text(marker, timeout=60)

        return emit

    serial_stdout_off()
    hidden = stderr_of(serial("api-serial-hidden"))
    serial_stdout_on()
    shown = stderr_of(serial("api-serial-shown"))
    # A serial line on the terminal reads "alpha # <line>" (the command's own log names it too).
    assert "alpha # api-serial-hidden" not in hidden, hidden
    assert "alpha # api-serial-shown" in shown, shown
    console = alpha.get_console_log()
    assert "api-serial-hidden" in console and "api-serial-shown" in console

with subtest("monitor and QMP: send_monitor_command, qmp_command, wait_for_qmp_event"):
    assert "running" in alpha.send_monitor_command("info status")
    assert alpha.qmp_command("query-status")["status"] == "running"
    assert "alpha" in alpha.qmp_command("human-monitor-command", {"command-line": "info name"})
    threading.Timer(1.0, lambda: alpha.send_monitor_command("stop")).start()
    ev = alpha.wait_for_qmp_event(lambda e: e["event"] == "STOP", timeout=60)
    alpha.send_monitor_command("cont")
    assert ev["event"] == "STOP" and "seconds" in ev["timestamp"], ev
    assert alpha.qmp_command("query-status")["status"] == "running"

with subtest("keyboard and virtual terminals: send_key, send_chars, tty text"):
    # A reader on tty1 in place of its getty: what the keyboard types lands in /tmp/kbd.
    alpha.copy_from_host_via_shell(
        host_file("kbd.sh", 'read -r line\necho "got:$line" > /tmp/kbd\n'), "/root/kbd.sh"
    )
    alpha.succeed(
        "systemctl stop getty@tty1.service || true",
        "printf '\\033c' > /dev/tty1",
        "systemd-run --unit=api-kbd -p StandardInput=tty-force -p TTYPath=/dev/tty1 sh /root/kbd.sh",
    )
    alpha.wait_for_unit("api-kbd.service", timeout=60)
    alpha.send_chars("Hi-there", delay=None)
    alpha.send_key("ret", delay=0.05, log=False)
    assert alpha.wait_until_succeeds("cat /tmp/kbd", timeout=60) == "got:Hi-there\n"
    assert "Hi-there" in alpha.get_tty_text("1")
    assert "Hi-there" in alpha.get_tty_text(1)
    alpha.wait_until_tty_matches("1", "Hi-the", timeout=30)
    raises(ValueError, lambda: alpha.get_tty_text("one"), "tty")
    alpha.dump_tty_contents("1")
    alpha.wait_until_succeeds("journalctl -b --no-pager | grep -q Hi-there", timeout=60)

with subtest("screen: screenshot, get_screen_text, get_screen_text_variants, wait_for_text"):
    alpha.succeed("printf '\\033c\\n\\n   MACHINIST SCREEN CHECK\\n' > /dev/tty1")
    shot = alpha.screenshot("api-shot")
    assert shot.endswith("api-shot.png")
    assert pathlib.Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SCREEN" in alpha.wait_for_text("SCREEN CHECK", timeout=120)
    assert "SCREEN" in alpha.get_screen_text()
    variants = alpha.get_screen_text_variants()
    assert len(variants) >= 2 and any("SCREEN" in v for v in variants), variants

with subtest("serial console input: send_console, console_interact"):
    alpha.copy_from_host_via_shell(
        host_file("serial.sh", 'read -r line < /dev/ttyS0\necho "got:$line" > "$1"\n'), "/root/serial.sh"
    )
    alpha.succeed("systemd-run --unit=api-serial1 sh /root/serial.sh /tmp/serial1")
    alpha.wait_for_unit("api-serial1.service", timeout=60)
    alpha.sleep(0.5)
    alpha.send_console("console-typed\n")
    assert alpha.wait_until_succeeds("cat /tmp/serial1", timeout=60) == "got:console-typed\n"
    alpha.succeed("systemd-run --unit=api-serial2 sh /root/serial.sh /tmp/serial2")
    alpha.wait_for_unit("api-serial2.service", timeout=60)
    alpha.sleep(0.5)
    with_stdin(b"interact-typed\n\x04ignored", alpha.console_interact)
    assert alpha.wait_until_succeeds("cat /tmp/serial2", timeout=60) == "got:interact-typed\n"

with subtest("shell_interact: commands from stdin, left with Ctrl-]"):
    with_stdin(b"echo shell-typed > /tmp/shell\n\x1d\n", alpha.shell_interact)
    assert alpha.succeed("cat /tmp/shell") == "shell-typed\n"
    raises(NotSupportedError, lambda: alpha.shell_interact(address="tcp:127.0.0.1:4444"), "address")

with subtest("network: block, unblock (NixOS: eth1 unplugged)"):
    alpha.succeed("ping -c1 -W5 beta")
    alpha.block()
    alpha.fail("ping -c1 -W2 beta")
    # NixOS' block(): the first NIC (eth1, an alternative name of vlan1) loses its carrier.
    assert alpha.succeed("cat /sys/class/net/vlan1/carrier").strip() == "0", "carrier kept"
    alpha.succeed("ip link show eth1 | grep -q NO-CARRIER")
    alpha.unblock()
    alpha.wait_until_succeeds("ping -c1 -W2 beta", timeout=60)

with subtest("network: block_at_switch, unblock_at_switch"):
    alpha.block_at_switch()
    alpha.fail("ping -c1 -W2 beta")
    # The carrier stays up: frames are dropped at the switch.
    assert "0" not in alpha.succeed("cat /sys/class/net/*/carrier").split(), "carrier lost"
    alpha.unblock_at_switch()
    alpha.wait_until_succeeds("ping -c1 -W2 beta", timeout=60)

with subtest("not supported here: wait_for_x, get_window_names, wait_for_window, switch_root"):
    for call in (
        lambda: alpha.wait_for_x(timeout=90),
        alpha.get_window_names,
        lambda: alpha.wait_for_window("xterm", timeout=90),
    ):
        t0 = time.monotonic()
        e = raises(NotSupportedError, call, "alpha", "not supported", "no X server", "install")
        assert isinstance(e, MachineError) and isinstance(e, MachinistError)
        assert time.monotonic() - t0 < 30, "the whole timeout was waited"
    raises(NotSupportedError, alpha.switch_root, "switch_root", "initrd")

with subtest("test-level functions: test_script, retry, polling_condition"):
    test_script()
    assert INNER == "inner-ran\n", INNER
    calls = []
    retry(lambda last: calls.append(last) or len(calls) >= 2, timeout_seconds=30)
    assert calls == [False, False], calls
    raises(AssertionError, lambda: retry(lambda last: False, timeout_seconds=1), "timed out")
    raises(ValueError, lambda: retry(lambda last: True, timeout_seconds=float("nan")), "between 0 and")

    @polling_condition(seconds_interval=1)
    def beta_answers():
        "beta answers"
        beta.succeed("true")

    with beta_answers:
        assert beta.succeed("echo guarded") == "guarded\n"
    assert beta_answers.check(force=True) is True
    beta_answers.wait(timeout=30)

    @polling_condition(seconds_interval=0, description="a host file that never exists")
    def never():
        return os.path.exists("/nonexistent/api")

    assert never.check(force=True) is False
    raises(MachinistError, lambda: never.wait(timeout=1), "timed out")

    def guarded():
        with never:
            alpha.succeed("true")

    raises(PollingConditionError, guarded, "never exists")

with subtest("power: reboot, crash, shutdown, wait_for_shutdown, join_all"):
    boot1 = alpha.succeed("cat /proc/sys/kernel/random/boot_id")
    alpha.reboot()
    assert alpha.succeed("cat /proc/sys/kernel/random/boot_id") != boot1
    alpha.succeed("echo persisted > /root/persist && sync")
    alpha.crash()
    assert not alpha.booted and not alpha.is_up()
    alpha.start()
    assert alpha.succeed("cat /root/persist") == "persisted\n"
    alpha.shutdown()
    assert not alpha.booted
    beta.succeed("systemd-run sh -c 'sleep 2; systemctl poweroff'")
    assert beta.booted
    beta.wait_for_shutdown()
    assert not beta.booted
    join_all()
    assert not any(m.booted for m in machines)
