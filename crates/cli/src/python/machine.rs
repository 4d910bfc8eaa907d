//! Python `Machine` objects over the driver's `machinist::Machine`, with the NixOS driver's method
//! names, signatures and defaults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::convert::{Flag, PathArg, Port, Seconds, Tty};
use super::{interrupt, polling, ErrorKind, ScriptError};

/// A NotSupported error for `what` on `m`.
fn not_supported(m: &machinist::Machine, what: &str, why: impl Into<String>) -> ScriptError {
    script_error(machinist::Error::NotSupported {
        machine: m.name().to_string(),
        what: what.to_string(),
        why: why.into(),
    })
}

/// A driver error as a [`ScriptError`] (decides the Python exception class).
pub fn script_error(e: machinist::Error) -> ScriptError {
    use machinist::Error as E;
    let kind = match &e {
        E::CommandFailed { .. }
        | E::UnexpectedSuccess { .. }
        | E::Timeout { .. }
        | E::Unit { .. }
        | E::Assertion { .. } => ErrorKind::Assertion,
        E::PollingCondition { .. } => ErrorKind::Polling,
        E::NotSupported { .. } => ErrorKind::NotSupported,
        E::Interrupted => ErrorKind::Interrupted,
        _ => ErrorKind::Machine,
    };
    ScriptError {
        kind,
        message: e.to_string(),
    }
}

/// Runs a blocking machine call: active polling conditions first (as NixOS does before every
/// command), then `f` with the GIL released and Ctrl-C wired to cancel it.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> machinist::Result<T> + Send) -> PyResult<T> {
    polling::check_active(py)?;
    interrupt::blocking(py, f)?.map_err(|e| script_error(e).to_py(py))
}

fn commands(args: &Bound<'_, PyTuple>) -> PyResult<Vec<String>> {
    args.iter().map(|a| a.extract::<String>()).collect()
}

fn secs(t: Option<Seconds>) -> Option<Duration> {
    t.map(|s| s.0)
}

/// One machine of the test (NixOS `Machine`): `server.succeed("echo hi")`.
#[pyclass(name = "Machine", module = "machinist", frozen)]
pub struct PyMachine {
    pub(crate) m: Arc<machinist::Machine>,
}

impl PyMachine {
    /// Wraps a driver machine.
    pub fn new(m: Arc<machinist::Machine>) -> Self {
        PyMachine { m }
    }
}

#[pymethods]
impl PyMachine {
    fn __repr__(&self) -> String {
        format!("<Machine {}>", self.m.name())
    }

    /// The machine's name.
    #[getter]
    fn name(&self) -> String {
        self.m.name().to_string()
    }

    /// True once QEMU runs.
    #[getter]
    fn booted(&self) -> bool {
        self.m.is_booted()
    }

    /// True when QEMU runs and the backdoor shell is connected.
    fn is_up(&self) -> bool {
        self.m.is_up()
    }

    /// Start the VM (does not wait for the guest to boot). allow_reboot=True keeps QEMU running
    /// across a guest reboot (reboot() works either way).
    #[pyo3(signature = (allow_reboot=Flag(false)), text_signature = "(self, allow_reboot=False)")]
    fn start(&self, py: Python<'_>, allow_reboot: Flag) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.start_with(allow_reboot.0))
    }

    /// Run a command; returns (exit code, output). check_output=False returns (-2, '') and
    /// check_return=False returns (-1, output), as in NixOS. The command is killed after
    /// `timeout` seconds (default 900, exit code 124); timeout=None waits as long as it runs.
    #[pyo3(signature = (command, check_return=Flag(true), check_output=Flag(true), timeout=Some(Seconds(machinist::timeouts::DEFAULT_TIMEOUT))), text_signature = "(self, command, check_return=True, check_output=True, timeout=900)")]
    fn execute(
        &self,
        py: Python<'_>,
        command: String,
        check_return: Flag,
        check_output: Flag,
        timeout: Option<Seconds>,
    ) -> PyResult<(i32, String)> {
        let t = secs(timeout);
        let m = self.m.clone();
        // timeout=None: no limit, as in NixOS.
        let t = t.unwrap_or(machinist::timeouts::NEVER);
        let (code, out) = run(py, move || m.execute_with(&command, t))?;
        Ok(match (check_output.0, check_return.0) {
            (false, _) => (-2, String::new()),
            (true, false) => (-1, out),
            (true, true) => (code, out),
        })
    }

    /// Run each command; each must succeed. Returns the concatenated output.
    #[pyo3(signature = (*commands, timeout=None))]
    fn succeed(
        &self,
        py: Python<'_>,
        commands: &Bound<'_, PyTuple>,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let (cmds, t) = (self::commands(commands)?, secs(timeout));
        let m = self.m.clone();
        run(py, move || m.succeed_timeout(cmds, t))
    }

    /// Run each command; each must fail. Returns the concatenated output.
    #[pyo3(signature = (*commands, timeout=None))]
    fn fail(
        &self,
        py: Python<'_>,
        commands: &Bound<'_, PyTuple>,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let (cmds, t) = (self::commands(commands)?, secs(timeout));
        let m = self.m.clone();
        run(py, move || m.fail_timeout(cmds, t))
    }

    /// Repeat the command until it succeeds (default timeout 900 s); returns its output.
    #[pyo3(signature = (command, timeout=None))]
    fn wait_until_succeeds(
        &self,
        py: Python<'_>,
        command: String,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_until_succeeds(&command, t))
    }

    /// Repeat the command until it fails (default timeout 900 s); returns its output.
    #[pyo3(signature = (command, timeout=None))]
    fn wait_until_fails(
        &self,
        py: Python<'_>,
        command: String,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_until_fails(&command, t))
    }

    /// Sleep `secs` seconds in guest time (`sleep` in the guest).
    fn sleep(&self, py: Python<'_>, secs: Seconds) -> PyResult<()> {
        let d = secs.0;
        let m = self.m.clone();
        run(py, move || m.sleep(d))
    }

    /// `systemctl <q>` (as `user` with `systemctl --user`); returns (exit code, output).
    #[pyo3(signature = (q, user=None))]
    fn systemctl(
        &self,
        py: Python<'_>,
        q: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        let m = self.m.clone();
        run(py, move || match user {
            Some(u) => m.systemctl_user(&q, &u),
            None => m.systemctl(&q),
        })
    }

    /// `systemctl show <unit>` as a dict.
    #[pyo3(signature = (unit, user=None))]
    fn get_unit_info(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
    ) -> PyResult<BTreeMap<String, String>> {
        let m = self.m.clone();
        run(py, move || m.get_unit_info_user(&unit, user.as_deref()))
    }

    /// One property of a unit.
    #[pyo3(signature = (unit, property, user=None))]
    fn get_unit_property(
        &self,
        py: Python<'_>,
        unit: String,
        property: String,
        user: Option<String>,
    ) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || {
            m.get_unit_property_user(&unit, &property, user.as_deref())
        })
    }

    /// Wait until a systemd unit is active (fails at once if it failed).
    #[pyo3(signature = (unit, user=None, timeout=None))]
    fn wait_for_unit(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || {
            m.wait_for_unit_with(
                &unit,
                machinist::WaitForUnit {
                    user,
                    timeout: t,
                    ..Default::default()
                },
            )
        })
    }

    /// Check a unit's ActiveState once.
    #[pyo3(signature = (unit, require_state="active".to_string()), text_signature = "(self, unit, require_state='active')")]
    fn require_unit_state(
        &self,
        py: Python<'_>,
        unit: String,
        require_state: String,
    ) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.require_unit_state(&unit, &require_state))
    }

    /// `systemctl start <job>`; returns (exit code, output).
    #[pyo3(signature = (job, user=None))]
    fn start_job(
        &self,
        py: Python<'_>,
        job: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        let m = self.m.clone();
        run(py, move || match user {
            Some(u) => m.systemctl_user(&format!("start {job}"), &u),
            None => m.start_job(&job),
        })
    }

    /// `systemctl stop <job>`; returns (exit code, output).
    #[pyo3(signature = (job, user=None))]
    fn stop_job(
        &self,
        py: Python<'_>,
        job: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        let m = self.m.clone();
        run(py, move || match user {
            Some(u) => m.systemctl_user(&format!("stop {job}"), &u),
            None => m.stop_job(&job),
        })
    }

    /// Wait until a file exists in the guest.
    #[pyo3(signature = (filename, timeout=None))]
    fn wait_for_file(
        &self,
        py: Python<'_>,
        filename: PathArg,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_file(&filename.0, t))
    }

    /// Wait until a TCP port accepts connections.
    #[pyo3(signature = (port, addr="localhost".to_string(), timeout=None), text_signature = "(self, port, addr='localhost', timeout=None)")]
    fn wait_for_open_port(
        &self,
        py: Python<'_>,
        port: Port,
        addr: String,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_open_port_on(&addr, port.0, t))
    }

    /// Wait until a TCP port refuses connections.
    #[pyo3(signature = (port, addr="localhost".to_string(), timeout=None), text_signature = "(self, port, addr='localhost', timeout=None)")]
    fn wait_for_closed_port(
        &self,
        py: Python<'_>,
        port: Port,
        addr: String,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_closed_port_on(&addr, port.0, t))
    }

    /// Wait until a unix socket accepts connections.
    #[pyo3(signature = (addr, is_datagram=Flag(false), timeout=None), text_signature = "(self, addr, is_datagram=False, timeout=None)")]
    fn wait_for_open_unix_socket(
        &self,
        py: Python<'_>,
        addr: PathArg,
        is_datagram: Flag,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || {
            m.wait_for_open_unix_socket(&addr.0, is_datagram.0, t)
        })
    }

    /// Copy a host file or directory into the guest.
    fn copy_from_host(&self, py: Python<'_>, source: PathArg, target: PathArg) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.copy_from_host(&source.0, &target.0))
    }

    /// Copy a host file into the guest through the shell (base64).
    fn copy_from_host_via_shell(
        &self,
        py: Python<'_>,
        source: PathArg,
        target: PathArg,
    ) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.copy_from_host_via_shell(&source.0, &target.0))
    }

    /// Copy a guest file or directory into the output directory; returns the host path.
    #[pyo3(signature = (source, target_dir=PathArg(String::new())), text_signature = "(self, source, target_dir='')")]
    fn copy_from_machine(
        &self,
        py: Python<'_>,
        source: PathArg,
        target_dir: PathArg,
    ) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || m.copy_from_machine(&source.0, &target_dir.0))
            .map(|p| p.display().to_string())
    }

    /// Deprecated NixOS name of copy_from_machine.
    #[pyo3(signature = (source, target_dir=PathArg(String::new())), text_signature = "(self, source, target_dir='')")]
    fn copy_from_vm(
        &self,
        py: Python<'_>,
        source: PathArg,
        target_dir: PathArg,
    ) -> PyResult<String> {
        self.copy_from_machine(py, source, target_dir)
    }

    /// A log line attributed to this machine.
    fn log(&self, msg: &str) {
        self.m.log(msg);
    }

    /// Power off cleanly and wait for QEMU to exit.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.shutdown())
    }

    /// Simulate a power failure (QEMU quits at once).
    fn crash(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.crash())
    }

    /// Reboot the guest (Ctrl-Alt-Delete); needs no flag: with start(allow_reboot=True) the same
    /// QEMU keeps running, otherwise QEMU exits and the machine is started again. The next
    /// command waits for the new boot.
    fn reboot(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.reboot())
    }

    /// Wait for QEMU to exit.
    fn wait_for_shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.wait_for_shutdown())
    }

    /// A human monitor (HMP) command; returns its output.
    fn send_monitor_command(&self, py: Python<'_>, command: String) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || m.send_monitor_command(&command))
    }

    /// A QMP command; returns its result as a dict/list/value.
    #[pyo3(signature = (command, arguments=None))]
    fn qmp_command(
        &self,
        py: Python<'_>,
        command: String,
        arguments: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let json = py.import("json")?;
        let args: serde_json::Value = match arguments {
            Some(a) if !a.is_none() => {
                serde_json::from_str(&json.call_method1("dumps", (a,))?.extract::<String>()?)
                    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?
            }
            _ => serde_json::Value::Null,
        };
        let m = self.m.clone();
        let v = run(py, move || m.qmp_command(&command, args))?;
        Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
    }

    /// Wait for a QMP event accepted by `event_filter(event_dict)` (default timeout 600 s).
    #[pyo3(signature = (event_filter, timeout=None))]
    fn wait_for_qmp_event(
        &self,
        py: Python<'_>,
        event_filter: Py<PyAny>,
        timeout: Option<Seconds>,
    ) -> PyResult<Py<PyAny>> {
        let t = secs(timeout);
        let m = self.m.clone();
        let ev = run(py, move || {
            m.wait_for_qmp_event(
                |ev| {
                    Python::attach(|py| {
                        event_dict(py, ev)
                            .and_then(|d| event_filter.call1(py, (d,)))
                            .and_then(|r| r.bind(py).is_truthy())
                            .unwrap_or(false)
                    })
                },
                t,
            )
        })?;
        Ok(event_dict(py, &ev)?.into_any().unbind())
    }

    /// Press a key (QEMU key name, e.g. "ctrl-alt-delete", "ret", or one character), then wait
    /// `delay` seconds (default 0.01; None: no wait).
    #[pyo3(signature = (key, delay=Some(Seconds(machinist::timeouts::Pace::KeyDelay.get())), log=Flag(true)), text_signature = "(self, key, delay=0.01, log=True)")]
    fn send_key(
        &self,
        py: Python<'_>,
        key: String,
        delay: Option<Seconds>,
        log: Flag,
    ) -> PyResult<()> {
        let d = secs(delay).unwrap_or_default();
        let m = self.m.clone();
        run(py, move || m.send_key_with(&key, d, log.0))
    }

    /// Type characters as key presses, `delay` seconds apart (default 0.01; None: no wait).
    #[pyo3(signature = (chars, delay=Some(Seconds(machinist::timeouts::Pace::KeyDelay.get()))), text_signature = "(self, chars, delay=0.01)")]
    fn send_chars(&self, py: Python<'_>, chars: String, delay: Option<Seconds>) -> PyResult<()> {
        let d = secs(delay).unwrap_or_default();
        let m = self.m.clone();
        run(py, move || m.send_chars_with(&chars, d))
    }

    /// Write characters to the serial console.
    fn send_console(&self, py: Python<'_>, chars: String) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.send_console(&chars))
    }

    /// Save a PNG screenshot (relative names go to the output directory); returns its path.
    fn screenshot(&self, py: Python<'_>, filename: PathArg) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || m.screenshot(&filename.0)).map(|p| p.display().to_string())
    }

    /// The text on the screen (OCR).
    fn get_screen_text(&self, py: Python<'_>) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || m.get_screen_text())
    }

    /// The text on the screen, once per preprocessing variant.
    fn get_screen_text_variants(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let m = self.m.clone();
        run(py, move || m.get_screen_text_variants())
    }

    /// Wait until the screen shows text matching `regex`; returns the text.
    #[pyo3(signature = (regex, timeout=None))]
    fn wait_for_text(
        &self,
        py: Python<'_>,
        regex: String,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_text(&regex, t))
    }

    /// Wait until the serial console output matches `regex`; returns the matching text.
    #[pyo3(signature = (regex, timeout=None))]
    fn wait_for_console_text(
        &self,
        py: Python<'_>,
        regex: String,
        timeout: Option<Seconds>,
    ) -> PyResult<String> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_console_text(&regex, t))
    }

    /// Everything the serial console printed since the machine started.
    fn get_console_log(&self) -> String {
        self.m.get_console_log()
    }

    /// The text of virtual terminal `tty` (1 or "1").
    fn get_tty_text(&self, py: Python<'_>, tty: Tty) -> PyResult<String> {
        let m = self.m.clone();
        run(py, move || m.get_tty_text(tty.0))
    }

    /// Wait until virtual terminal `tty` (1 or "1") matches `regexp` (default timeout 900 s).
    #[pyo3(signature = (tty, regexp, timeout=None))]
    fn wait_until_tty_matches(
        &self,
        py: Python<'_>,
        tty: Tty,
        regexp: String,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_until_tty_matches(tty.0, &regexp, t))
    }

    /// Write virtual terminal `tty`'s text (1 or "1") to the guest journal.
    fn dump_tty_contents(&self, py: Python<'_>, tty: Tty) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.dump_tty_contents(tty.0))
    }

    /// Wait for the X server (default timeout 900 s). Raises NotSupportedError at once on a guest
    /// without an X server.
    #[pyo3(signature = (timeout=None))]
    fn wait_for_x(&self, py: Python<'_>, timeout: Option<Seconds>) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_x(t))
    }

    /// The X window names (needs an X server and xwininfo in the guest, else NotSupportedError).
    fn get_window_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let m = self.m.clone();
        run(py, move || m.get_window_names())
    }

    /// Wait for an X window whose name matches `regexp` (default timeout 900 s; NotSupportedError
    /// on a guest without X or xwininfo).
    #[pyo3(signature = (regexp, timeout=None))]
    fn wait_for_window(
        &self,
        py: Python<'_>,
        regexp: String,
        timeout: Option<Seconds>,
    ) -> PyResult<()> {
        let t = secs(timeout);
        let m = self.m.clone();
        run(py, move || m.wait_for_window(&regexp, t))
    }

    /// Forward a host TCP port to the guest (needs user networking).
    #[pyo3(signature = (host_port=Port(8080), guest_port=Port(80)), text_signature = "(self, host_port=8080, guest_port=80)")]
    fn forward_port(&self, py: Python<'_>, host_port: Port, guest_port: Port) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.forward_port(host_port.0, guest_port.0))
    }

    /// Unplug the machine's first NIC (eth1, its first VLAN), as NixOS does: the guest sees its
    /// carrier go; other NICs stay up. unblock() plugs it in again. block_at_switch() cuts the
    /// machine off every VLAN silently instead.
    fn block(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.block())
    }

    /// Plug the first NIC in again after block().
    fn unblock(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.unblock())
    }

    /// Cut the machine off every VLAN: its frames are dropped at the switch, while the guest's
    /// NICs keep their carrier (link up) and see silence. Works before start() too.
    /// unblock_at_switch() reconnects it.
    fn block_at_switch(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.block_at_switch())
    }

    /// Reconnect the machine after block_at_switch(): frames flow again.
    fn unblock_at_switch(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.unblock_at_switch())
    }

    /// A root shell in the guest on this terminal (no prompt; lines are sent on Enter). Leave it
    /// with Ctrl-] then Enter, or Ctrl-D (end of input); then the REPL is back and the machine
    /// usable. Ctrl-C is not forwarded to the guest: it takes effect (KeyboardInterrupt) once
    /// the shell is left. NixOS' `address` form (socat to another endpoint) is not supported.
    #[pyo3(signature = (address=None))]
    fn shell_interact(&self, py: Python<'_>, address: Option<String>) -> PyResult<()> {
        if let Some(a) = address {
            return Err(not_supported(
                &self.m,
                "shell_interact(address)",
                format!(
                    "forwarding the shell to {a:?} is not implemented; call shell_interact() \
                     without an address to use this terminal"
                ),
            )
            .to_py(py));
        }
        let m = self.m.clone();
        // Not cancellable: cancelling would drop the raw attachment half-way and leave the
        // backdoor shell out of step.
        py.detach(move || m.shell_interact())
            .map_err(|e| script_error(e).to_py(py))?;
        py.check_signals()
    }

    /// Type on the serial console from this terminal until Ctrl-D (or end of input).
    fn console_interact(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m.clone();
        run(py, move || m.console_interact())
    }

    /// NixOS' switch from the initrd's backdoor to the system's (`testing.initrdBackdoor`).
    /// Always raises NotSupportedError: Machinist guests start the backdoor once the real root
    /// is mounted, so there is no initrd stage to switch from.
    fn switch_root(&self, py: Python<'_>) -> PyResult<()> {
        Err(not_supported(
            &self.m,
            "switch_root",
            "Machinist has no backdoor in the initrd (the shell starts after the switch to the \
             real root), so there is nothing to switch; drop the call, the machine is already \
             in its final root",
        )
        .to_py(py))
    }
}

fn event_dict<'py>(py: Python<'py>, ev: &machinist_qemu::QmpEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("event", &ev.event)?;
    let data = py
        .import("json")?
        .call_method1("loads", (ev.data.to_string(),))?;
    d.set_item("data", data)?;
    let ts = PyDict::new(py);
    ts.set_item("seconds", ev.timestamp.0)?;
    ts.set_item("microseconds", ev.timestamp.1)?;
    d.set_item("timestamp", ts)?;
    Ok(d)
}
