//! The QMP monitor of a machine whose backend has one: HMP commands, QMP commands and events.

use super::{Machine, Running};
use crate::error::{Error, Result};
use crate::timeouts::{IntoTimeout, Wait, DEFAULT_QMP_EVENT_TIMEOUT};

impl Machine {
    /// The QMP monitor of the running node, or the typed error of a backend without one.
    pub(super) fn monitor(&self, run: &Running, what: &str) -> Result<machinist_qemu::Qmp> {
        run.instance
            .qmp()
            .cloned()
            .map_err(|u| self.unsupported(what, u))
    }

    /// Sends an HMP monitor command (NixOS `send_monitor_command`; via QMP
    /// `human-monitor-command`) and returns its output.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.ctx.before_command()?;
        let run = self.require_running("send a monitor command")?;
        let name = self.name.clone();
        let cmd = command.to_string();
        let qmp = self.monitor(&run, "send_monitor_command")?;
        self.ctx.block_on(true, async move {
            qmp.human_monitor_command(&cmd)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("monitor command `{cmd}`"), e))
        })
    }

    /// Runs a QMP command with JSON arguments and returns its `return` value.
    pub fn qmp_command(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let run = self.require_running("send a QMP command")?;
        let name = self.name.clone();
        let cmd = command.to_string();
        let t = self.ctx.timeouts.of(Wait::QmpCommand);
        let qmp = self.monitor(&run, "qmp_command")?;
        self.ctx.block_on(true, async move {
            qmp.execute(&cmd, arguments, t)
                .await
                .map_err(|e| Error::backend(Some(&name), format!("QMP command `{cmd}`"), e))
        })
    }

    /// Waits for the next QMP event accepted by `filter` (NixOS `wait_for_qmp_event`, default
    /// timeout 600 s); other events are dropped.
    pub fn wait_for_qmp_event(
        &self,
        filter: impl Fn(&machinist_qemu::QmpEvent) -> bool,
        timeout: impl IntoTimeout,
    ) -> Result<machinist_qemu::QmpEvent> {
        let run = self.require_running("wait for a QMP event")?;
        let t = self.ctx.timeouts.arg(timeout, DEFAULT_QMP_EVENT_TIMEOUT);
        let mut rx = self.monitor(&run, "wait_for_qmp_event")?.subscribe();
        let name = self.name.clone();
        self.ctx.block_on(true, async move {
            let deadline = tokio::time::Instant::now() + t;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(ev)) if filter(&ev) => return Ok(ev),
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(_)) => {
                        return Err(Error::NotRunning {
                            machine: name,
                            message: "QMP connection closed while waiting for an event".into(),
                        })
                    }
                    Err(_) => {
                        return Err(Error::Timeout {
                            machine: Some(name),
                            what: "a matching QMP event".into(),
                            timeout: t,
                            elapsed: t,
                            last_output: String::new(),
                        })
                    }
                }
            }
        })
    }
}
