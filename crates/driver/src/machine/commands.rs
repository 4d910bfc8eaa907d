//! Command-level Machine methods: succeed/fail, waits, systemd, files, ports, copies.

use std::collections::BTreeMap;
use std::time::Duration;

use super::scripts::{self, quote};
use super::{Commands, Machine};
use crate::ctx::Deadline;
use crate::error::{Error, Result};
use crate::timeouts::{IntoTimeout, Wait, DEFAULT_TIMEOUT};

/// Options of [`Machine::wait_for_unit_with`].
#[derive(Debug, Clone, Default)]
pub struct WaitForUnit {
    /// Check a user unit of this user (`systemctl --user`).
    pub user: Option<String>,
    /// Timeout (default 900 s).
    pub timeout: Option<Duration>,
    /// Keep waiting while the unit is `inactive` with no pending jobs instead of failing at once
    /// (NixOS fails fast there; oneshot units, user units and logind races pass through that
    /// state transiently).
    pub tolerate_inactive: bool,
}

impl Machine {
    fn timeout_or_default(&self, t: impl IntoTimeout) -> Duration {
        self.ctx.timeouts.arg(t, DEFAULT_TIMEOUT)
    }

    /// Runs each command, requiring exit code 0 (NixOS `succeed`); returns the concatenated
    /// stdout. No timeout, as in NixOS (use [`Machine::succeed_timeout`]).
    pub fn succeed(&self, commands: impl Commands) -> Result<String> {
        self.succeed_timeout(commands, None)
    }

    /// [`Machine::succeed`] with a timeout per command (expired = exit code 124 = failure).
    pub fn succeed_timeout(
        &self,
        commands: impl Commands,
        timeout: impl IntoTimeout,
    ) -> Result<String> {
        self.run_each(commands, timeout, "must succeed", |cmd, code, output| {
            (code != 0).then(|| Error::CommandFailed {
                machine: self.name().to_string(),
                command: cmd.to_string(),
                code,
                output: output.to_string(),
            })
        })
    }

    /// Runs each command, requiring a non-zero exit code (NixOS `fail`); returns the
    /// concatenated stdout.
    pub fn fail(&self, commands: impl Commands) -> Result<String> {
        self.fail_timeout(commands, None)
    }

    /// [`Machine::fail`] with a timeout per command.
    pub fn fail_timeout(
        &self,
        commands: impl Commands,
        timeout: impl IntoTimeout,
    ) -> Result<String> {
        self.run_each(commands, timeout, "must fail", |cmd, code, output| {
            (code == 0).then(|| Error::UnexpectedSuccess {
                machine: self.name().to_string(),
                command: cmd.to_string(),
                output: output.to_string(),
            })
        })
    }

    /// Runs each command in a nested `<what>: <cmd>` block; `unexpected(cmd, code, output)` names
    /// the error when the exit code is not the wanted one (the output is logged first). Returns
    /// the concatenated stdout.
    fn run_each(
        &self,
        commands: impl Commands,
        timeout: impl IntoTimeout,
        what: &str,
        unexpected: impl Fn(&str, i32, &str) -> Option<Error>,
    ) -> Result<String> {
        let t = timeout.into_timeout().map(|d| self.ctx.scaled(d));
        let mut output = String::new();
        for cmd in commands.commands() {
            let out = self.nested(&format!("{what}: {cmd}"), || {
                let (code, out) = self.run_command(&cmd, t)?;
                let out = String::from_utf8_lossy(&out).into_owned();
                match unexpected(&cmd, code, &out) {
                    Some(e) => {
                        self.log_line(&format!("output: {out}"));
                        Err(e)
                    }
                    None => Ok(out),
                }
            })?;
            output.push_str(&out);
        }
        Ok(output)
    }

    /// How long a guest loop's last attempt may run past its deadline, in microseconds.
    fn grace_us(&self) -> u128 {
        self.ctx.timeouts.of(Wait::AttemptGrace).as_micros()
    }

    /// Runs a guest-side loop script with a guest deadline of `t`; returns (code, stdout).
    /// The loop prints only the deciding attempt's output, at its end: it is logged then, like a
    /// command's output, without the loop's own trailer line.
    fn guest_loop(&self, script: &str, t: Duration) -> Result<(i32, String)> {
        let slack = self.ctx.timeouts.of(Wait::GuestLoopSlack);
        let (code, out) = self.run_command_quiet(script, Some(t + slack))?;
        let out = String::from_utf8_lossy(&out).into_owned();
        let (attempt, _) = scripts::split_trailer(code, &out);
        for line in attempt.lines() {
            self.ctx.logger.output(self.name(), line);
        }
        Ok((code, out))
    }

    fn wait_until(
        &self,
        command: &str,
        want_success: bool,
        timeout: impl IntoTimeout,
    ) -> Result<String> {
        let t = self.timeout_or_default(timeout);
        let what = if want_success { "success" } else { "failure" };
        self.nested(&format!("waiting for {what}: {command}"), || {
            self.timed_wait(t, |t| {
                let deadline = Deadline::new(t);
                let script =
                    scripts::wait_until(command, want_success, t.as_micros(), self.grace_us());
                let (code, out) = self.guest_loop(&script, t)?;
                self.wait_outcome(command, command, code, &out, t, &deadline)
            })
        })
    }

    /// Turns a guest wait loop's exit code and output into the result: the successful
    /// attempt's output, a [`Error::BackgroundProcess`] for an attempt that left a process
    /// holding its output, or a [`Error::Timeout`] that says what the last attempt did.
    fn wait_outcome(
        &self,
        command: &str,
        what: &str,
        code: i32,
        out: &str,
        t: Duration,
        deadline: &Deadline,
    ) -> Result<String> {
        match scripts::parse_wait(code, out) {
            scripts::WaitEnd::Done(out) => Ok(out),
            scripts::WaitEnd::Background { output, code, pids } => Err(Error::BackgroundProcess {
                machine: self.name().to_string(),
                command: command.to_string(),
                code,
                pids,
                output,
            }),
            scripts::WaitEnd::TimedOut { output, last_code } => {
                let last = match last_code {
                    Some(124 | 137) => {
                        "the last attempt was still running at the deadline and was killed"
                            .to_string()
                    }
                    Some(c) => format!("the last attempt exited with code {c}"),
                    // The guest loop itself was cut off by the host (no trailer).
                    None => "the last attempt did not finish".to_string(),
                };
                Err(Error::Timeout {
                    machine: Some(self.name().to_string()),
                    what: format!("{what} ({last})"),
                    timeout: t,
                    elapsed: deadline.elapsed(),
                    last_output: output,
                })
            }
        }
    }

    /// Repeats `command` until it succeeds (NixOS `wait_until_succeeds`); returns its stdout.
    /// The loop runs inside the guest (one round trip); the time spent booting is not counted.
    pub fn wait_until_succeeds(&self, command: &str, timeout: impl IntoTimeout) -> Result<String> {
        self.wait_until(command, true, timeout)
    }

    /// Repeats `command` until it fails (NixOS `wait_until_fails`); returns its stdout.
    pub fn wait_until_fails(&self, command: &str, timeout: impl IntoTimeout) -> Result<String> {
        self.wait_until(command, false, timeout)
    }

    /// Sleeps `secs` in *guest* time (NixOS `sleep`: `succeed("sleep N")`).
    pub fn sleep(&self, duration: impl IntoTimeout) -> Result<()> {
        let d = duration.into_timeout().unwrap_or_default();
        self.succeed(format!("sleep {}", d.as_secs_f64())).map(drop)
    }

    /// `systemctl <query>` (NixOS `systemctl`); returns (exit code, stdout).
    pub fn systemctl(&self, query: &str) -> Result<super::ExecResult> {
        self.execute(&scripts::systemctl(query, None))
    }

    /// `systemctl --user <query>` as `user` (NixOS `systemctl(q, user)`).
    pub fn systemctl_user(&self, query: &str, user: &str) -> Result<super::ExecResult> {
        self.execute(&scripts::systemctl(query, Some(user)))
    }

    /// All properties of `unit` (`systemctl show`), NixOS `get_unit_info`.
    pub fn get_unit_info(&self, unit: &str) -> Result<BTreeMap<String, String>> {
        self.get_unit_info_user(unit, None)
    }

    /// [`Machine::get_unit_info`] for a user unit.
    pub fn get_unit_info_user(
        &self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let q = format!("--no-pager show -- {}", quote(unit));
        let (code, out) = self.execute(&scripts::systemctl(&q, user))?;
        if code != 0 {
            return Err(Error::Assertion {
                machine: self.name().to_string(),
                message: format!(
                    "retrieving systemctl info for unit \"{unit}\"{} failed with exit code {code}",
                    user.map(|u| format!(" under user \"{u}\""))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(parse_properties(&out))
    }

    /// One property of `unit` (NixOS `get_unit_property`).
    pub fn get_unit_property(&self, unit: &str, property: &str) -> Result<String> {
        self.get_unit_property_user(unit, property, None)
    }

    /// [`Machine::get_unit_property`] for a user unit.
    pub fn get_unit_property_user(
        &self,
        unit: &str,
        property: &str,
        user: Option<&str>,
    ) -> Result<String> {
        let q = format!(
            "--no-pager show --property={} -- {}",
            quote(property),
            quote(unit)
        );
        let (code, out) = self.execute(&scripts::systemctl(&q, user))?;
        if code != 0 {
            return Err(Error::Assertion {
                machine: self.name().to_string(),
                message: format!("retrieving systemctl property \"{property}\" for unit \"{unit}\" failed with exit code {code}"),
            });
        }
        let props = parse_properties(&out);
        props
            .get(property)
            .cloned()
            .ok_or_else(|| Error::Assertion {
                machine: self.name().to_string(),
                message: format!(
                    "systemctl show did not report property \"{property}\" of unit \"{unit}\""
                ),
            })
    }

    /// Waits until `unit` is active (NixOS `wait_for_unit`); fails at once when it is `failed`,
    /// or `inactive` with no pending jobs.
    pub fn wait_for_unit(&self, unit: &str, timeout: impl IntoTimeout) -> Result<()> {
        self.wait_for_unit_with(
            unit,
            WaitForUnit {
                timeout: timeout.into_timeout(),
                ..Default::default()
            },
        )
    }

    /// [`Machine::wait_for_unit`] with options (user unit, tolerate transient `inactive`).
    pub fn wait_for_unit_with(&self, unit: &str, opts: WaitForUnit) -> Result<()> {
        let t = self.timeout_or_default(opts.timeout);
        let user = opts.user.clone();
        let msg = match &user {
            Some(u) => format!("waiting for unit {unit} with user {u}"),
            None => format!("waiting for unit {unit}"),
        };
        self.nested(&msg, || {
            self.timed_wait(t, |t| {
                let deadline = Deadline::new(t);
                let u = user.clone();
                let script = scripts::wait_for_unit(
                    unit,
                    &move |q| scripts::systemctl(q, u.as_deref()),
                    opts.tolerate_inactive,
                    user.is_none(),
                    t.as_micros(),
                );
                let (code, out) = self.guest_loop(&script, t)?;
                let unit_err = |reason: String, details: String| Error::Unit {
                    machine: self.name().to_string(),
                    unit: unit.to_string(),
                    reason,
                    details,
                };
                match code {
                    0 => Ok(()),
                    2 => Err(unit_err(
                        format!(
                            "cannot be queried (is the name valid?): {}",
                            out.trim().replace('\n', " ")
                        ),
                        String::new(),
                    )),
                    3 => Err(unit_err(
                        "reached state \"failed\"".into(),
                        self.unit_diagnostics(unit, user.as_deref()),
                    )),
                    4 => Err(unit_err(
                        "is inactive and there are no pending jobs".into(),
                        self.unit_diagnostics(unit, user.as_deref()),
                    )),
                    _ => Err(Error::Timeout {
                        machine: Some(self.name().to_string()),
                        what: format!("unit {unit} to become active (last state: {})", out.trim()),
                        timeout: t,
                        elapsed: deadline.elapsed(),
                        last_output: String::new(),
                    }),
                }
            })
        })
    }

    /// `systemctl status` and the last journal lines of a unit, logged and returned for an
    /// error message (empty if the guest cannot tell).
    fn unit_diagnostics(&self, unit: &str, user: Option<&str>) -> String {
        let script = scripts::unit_diagnostics(unit, user);
        match self.run_command(&script, Some(self.ctx.timeouts.of(Wait::UnitDiagnostics))) {
            Ok((_, out)) => {
                let text = String::from_utf8_lossy(&out).trim_end().to_string();
                for line in text.lines() {
                    self.log_line(line);
                }
                text
            }
            Err(e) => {
                self.log_line(&format!("cannot read the status of unit {unit}: {e}"));
                String::new()
            }
        }
    }

    /// Fails unless `unit`'s ActiveState is `state` (NixOS `require_unit_state`, default "active").
    pub fn require_unit_state(&self, unit: &str, state: &str) -> Result<()> {
        self.nested(
            &format!("checking if unit '{unit}' has reached state '{state}'"),
            || {
                let info = self.get_unit_info(unit)?;
                let actual = info.get("ActiveState").cloned().unwrap_or_default();
                if actual != state {
                    return Err(Error::Unit {
                        machine: self.name().to_string(),
                        unit: unit.to_string(),
                        reason: format!("is in state \"{actual}\", expected \"{state}\""),
                        details: String::new(),
                    });
                }
                Ok(())
            },
        )
    }

    /// `systemctl start <job>` (NixOS `start_job`); returns (exit code, stdout).
    pub fn start_job(&self, job: &str) -> Result<super::ExecResult> {
        self.systemctl(&format!("start -- {}", quote(job)))
    }

    /// `systemctl stop <job>` (NixOS `stop_job`).
    pub fn stop_job(&self, job: &str) -> Result<super::ExecResult> {
        self.systemctl(&format!("stop -- {}", quote(job)))
    }

    /// Waits until `path` exists in the guest (NixOS `wait_for_file`).
    pub fn wait_for_file(&self, path: &str, timeout: impl IntoTimeout) -> Result<()> {
        let t = self.timeout_or_default(timeout);
        self.nested(&format!("waiting for file '{path}'"), || {
            self.wait_loop(
                &format!("test -e {}", quote(path)),
                true,
                t,
                &format!("file {path}"),
            )
        })
    }

    fn wait_loop(&self, probe: &str, want_success: bool, t: Duration, what: &str) -> Result<()> {
        self.timed_wait(t, |t| {
            let deadline = Deadline::new(t);
            let (code, out) = self.guest_loop(
                &scripts::wait_until(probe, want_success, t.as_micros(), self.grace_us()),
                t,
            )?;
            self.wait_outcome(probe, what, code, &out, t, &deadline)
                .map(drop)
        })
    }

    /// Waits until TCP `port` accepts connections on localhost (NixOS `wait_for_open_port`).
    /// Uses bash's `/dev/tcp`, so the guest needs no `nc`.
    pub fn wait_for_open_port(&self, port: u16, timeout: impl IntoTimeout) -> Result<()> {
        self.wait_for_open_port_on("localhost", port, timeout)
    }

    /// [`Machine::wait_for_open_port`] on another address.
    pub fn wait_for_open_port_on(
        &self,
        addr: &str,
        port: u16,
        timeout: impl IntoTimeout,
    ) -> Result<()> {
        let t = self.timeout_or_default(timeout);
        self.nested(&format!("waiting for TCP port {port} on {addr}"), || {
            self.wait_loop(
                &scripts::tcp_probe(addr, port),
                true,
                t,
                &format!("TCP port {port} on {addr} to open"),
            )
        })
    }

    /// Waits until TCP `port` on localhost refuses connections (NixOS `wait_for_closed_port`).
    pub fn wait_for_closed_port(&self, port: u16, timeout: impl IntoTimeout) -> Result<()> {
        self.wait_for_closed_port_on("localhost", port, timeout)
    }

    /// [`Machine::wait_for_closed_port`] on another address.
    pub fn wait_for_closed_port_on(
        &self,
        addr: &str,
        port: u16,
        timeout: impl IntoTimeout,
    ) -> Result<()> {
        let t = self.timeout_or_default(timeout);
        self.nested(
            &format!("waiting for TCP port {port} on {addr} to be closed"),
            || {
                self.wait_loop(
                    &scripts::tcp_probe(addr, port),
                    false,
                    t,
                    &format!("TCP port {port} on {addr} to close"),
                )
            },
        )
    }

    /// Waits until the unix socket `path` accepts connections (NixOS
    /// `wait_for_open_unix_socket`; uses `nc -U` or `socat` if the guest has one, else checks
    /// that a socket file exists).
    pub fn wait_for_open_unix_socket(
        &self,
        path: &str,
        is_datagram: bool,
        timeout: impl IntoTimeout,
    ) -> Result<()> {
        let t = self.timeout_or_default(timeout);
        self.nested(&format!("waiting for UNIX socket {path}"), || {
            self.wait_loop(
                &scripts::unix_probe(path, is_datagram),
                true,
                t,
                &format!("unix socket {path}"),
            )
        })
    }
}

/// Parses `systemctl show` output (`Key=Value` lines).
pub(crate) fn parse_properties(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn properties() {
        let p = super::parse_properties("ActiveState=active\nDescription=a=b\n\nbroken\n");
        assert_eq!(p["ActiveState"], "active");
        assert_eq!(p["Description"], "a=b");
        assert_eq!(p.len(), 2);
    }
}
