//! An async QMP client (QEMU Machine Protocol), written by hand on tokio.
//!
//! One reader task demultiplexes the socket: replies go to the caller whose `id` they carry,
//! events go to a broadcast channel. When the socket closes (QEMU exited), every pending and
//! future call fails at once with [`QmpError::Disconnected`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Default deadline for the typed helpers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted QMP message line.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Errors from QMP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// QEMU answered with an error.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The connection closed (QEMU exited or quit) before the reply.
    #[error("QMP connection closed{}: QEMU has exited or closed the monitor",
        if command.is_empty() { String::new() } else { format!(" while waiting for `{command}`") })]
    Disconnected {
        /// The command that was waiting (empty when not tied to a command).
        command: String,
    },
    /// No reply within the deadline.
    #[error("QMP command `{command}` got no reply within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// Socket error.
    #[error("QMP I/O error ({context}): {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error text.
        message: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
}

impl QmpError {
    /// The QEMU error class of a [`QmpError::Command`].
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        QmpError::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

/// An asynchronous QMP event (`RESET`, `SHUTDOWN`, `STOP`, `NIC_RX_FILTER_CHANGED`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name.
    pub event: String,
    /// Event data (`Null` when absent).
    pub data: Value,
    /// QEMU's timestamp as (seconds, microseconds).
    pub timestamp: (i64, i64),
}

/// `query-status` result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// Run state (`running`, `paused`, `inmigrate`, `shutdown`, ...).
    pub status: String,
}

/// `query-migrate` result (the fields Machinist uses; everything else is in `raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    pub status: String,
    /// Error description when `failed`.
    pub error_desc: Option<String>,
    /// The full reply.
    pub raw: Value,
}

/// Screendump image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreendumpFormat {
    /// Binary PPM (P6).
    Ppm,
    /// PNG (QEMU 7.1+).
    Png,
}

/// QEMU's version from the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpVersion {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Micro.
    pub micro: u64,
    /// Package string (e.g. `Debian 1:7.2+dfsg-7+deb12u18+b3`).
    pub package: String,
}

type Reply = Result<Value, QmpError>;

struct Pending {
    waiters: HashMap<u64, (String, oneshot::Sender<Reply>)>,
    closed: bool,
    events: Option<broadcast::Sender<QmpEvent>>,
}

struct Shared {
    pending: Mutex<Pending>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    version: QmpVersion,
    reader: tokio::task::AbortHandle,
    default_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A QMP connection. Cheap to clone; clones share the connection. Needs a tokio runtime.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Qmp {
    /// Accepts QEMU's connection on `listener` (the driver listens; QEMU connects as a client)
    /// and completes the handshake, all within `timeout`.
    pub async fn accept(
        listener: &tokio::net::UnixListener,
        timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (stream, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| QmpError::Timeout {
                command: "(waiting for QEMU to connect to the QMP socket)".into(),
                timeout,
            })?
            .map_err(|e| QmpError::io("accepting the QMP connection", e))?;
        Self::handshake(stream, deadline, timeout).await
    }

    /// Connects to a QMP socket QEMU listens on (`-qmp unix:PATH,server=on`), within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = tokio::time::timeout_at(deadline, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                command: format!("(connecting to {})", path.display()),
                timeout,
            })?
            .map_err(|e| QmpError::io(format!("connecting to {}", path.display()), e))?;
        Self::handshake(stream, deadline, timeout).await
    }

    /// Runs the handshake (greeting + `qmp_capabilities`) on an established stream.
    pub async fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        Self::handshake(stream, tokio::time::Instant::now() + timeout, timeout).await
    }

    async fn handshake(
        stream: UnixStream,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Qmp, QmpError> {
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        let n = tokio::time::timeout_at(deadline, read_line(&mut reader, &mut line))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "(greeting)".into(),
                timeout,
            })??;
        if n == 0 {
            return Err(QmpError::Disconnected {
                command: "(greeting)".into(),
            });
        }
        let greeting: Value = serde_json::from_slice(&line)
            .map_err(|e| QmpError::Protocol(format!("bad greeting: {e}")))?;
        let v = greeting
            .get("QMP")
            .ok_or_else(|| QmpError::Protocol(format!("greeting without `QMP`: {greeting}")))?;
        let q = &v["version"]["qemu"];
        let version = QmpVersion {
            major: q["major"].as_u64().unwrap_or(0),
            minor: q["minor"].as_u64().unwrap_or(0),
            micro: q["micro"].as_u64().unwrap_or(0),
            package: v["version"]["package"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_string(),
        };
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                waiters: HashMap::new(),
                closed: false,
                events: Some(events),
            }),
        });
        let reader_task = tokio::spawn(read_loop(reader, shared.clone()));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(write),
                next_id: AtomicU64::new(1),
                version,
                reader: reader_task.abort_handle(),
                default_timeout: DEFAULT_TIMEOUT,
            }),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        qmp.execute("qmp_capabilities", Value::Null, left).await?;
        Ok(qmp)
    }

    /// QEMU's version from the greeting.
    pub fn version(&self) -> &QmpVersion {
        &self.inner.version
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// Subscribes to events arriving from now on. When the connection closes the receiver
    /// reports `Closed`.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        match &self.inner.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Runs `command` with `arguments` (`Value::Null` or an object) and returns its `return`
    /// value. Several callers may run commands at once; replies are matched by `id`.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.shared.lock();
            if p.closed {
                return Err(QmpError::Disconnected {
                    command: command.into(),
                });
            }
            p.waiters.insert(id, (command.to_string(), tx));
        }
        let mut msg = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON serialisation cannot fail");
        bytes.push(b'\n');
        tracing::trace!(target: "machinist_qemu::qmp", "-> {msg}");

        let deadline = tokio::time::Instant::now() + timeout;
        let result = tokio::time::timeout_at(deadline, async {
            {
                let mut w = self.inner.writer.lock().await;
                if let Err(e) = w.write_all(&bytes).await {
                    return if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) {
                        Err(QmpError::Disconnected {
                            command: command.into(),
                        })
                    } else {
                        Err(QmpError::io(format!("sending `{command}`"), e))
                    };
                }
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(QmpError::Disconnected {
                    command: command.into(),
                }),
            }
        })
        .await;
        match result {
            Ok(r) => {
                if r.is_err() {
                    self.inner.shared.lock().waiters.remove(&id);
                }
                r
            }
            Err(_) => {
                self.inner.shared.lock().waiters.remove(&id);
                Err(QmpError::Timeout {
                    command: command.into(),
                    timeout,
                })
            }
        }
    }

    async fn exec_default(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute(command, arguments, self.inner.default_timeout)
            .await
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.exec_default("query-status", Value::Null).await?;
        serde_json::from_value(v.clone())
            .map_err(|e| QmpError::Protocol(format!("bad query-status reply {v}: {e}")))
    }

    /// `screendump` of the primary display into `path` (made absolute) in `format`; returns the
    /// absolute path of the written file.
    pub async fn screendump(
        &self,
        path: &Path,
        format: ScreendumpFormat,
    ) -> Result<PathBuf, QmpError> {
        let abs = std::path::absolute(path)
            .map_err(|e| QmpError::io(format!("resolving {}", path.display()), e))?;
        let mut args = json!({ "filename": abs.to_string_lossy() });
        if format == ScreendumpFormat::Png {
            args["format"] = json!("png");
        }
        self.exec_default("screendump", args).await?;
        Ok(abs)
    }

    /// `send-key` with QKeyCode names pressed together, e.g. `["ctrl", "alt", "delete"]` or
    /// `["a"]`; `hold_time_ms` defaults to QEMU's 100 ms.
    pub async fn send_key(&self, keys: &[&str], hold_time_ms: Option<u32>) -> Result<(), QmpError> {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        let mut args = json!({ "keys": keys });
        if let Some(h) = hold_time_ms {
            args["hold-time"] = json!(h);
        }
        self.exec_default("send-key", args).await.map(drop)
    }

    /// `send-key` for an HMP-style combo, as NixOS's `send_key`: `ctrl-alt-delete`, `shift-a`,
    /// `ret`, `shift-0x02`.
    pub async fn send_key_combo(&self, combo: &str) -> Result<(), QmpError> {
        let keys = crate::keys::parse_combo(combo).map_err(|desc| QmpError::Command {
            command: "send-key".into(),
            class: "InvalidKey".into(),
            desc,
        })?;
        let keys: Vec<Value> = keys.iter().map(crate::keys::Key::to_json).collect();
        self.exec_default("send-key", json!({ "keys": keys }))
            .await
            .map(drop)
    }

    /// Types `text` on the keyboard (US layout), one `send-key` per character with `delay`
    /// after each, as NixOS's `send_chars`. Characters without a key are an error (nothing is
    /// typed).
    pub async fn send_chars(&self, text: &str, delay: Duration) -> Result<(), QmpError> {
        let combos: Vec<String> = text
            .chars()
            .map(|c| {
                crate::keys::char_to_combo(c).ok_or_else(|| QmpError::Command {
                    command: "send-key".into(),
                    class: "InvalidKey".into(),
                    desc: format!("no key for character {c:?} on a US layout"),
                })
            })
            .collect::<Result<_, _>>()?;
        for combo in combos {
            self.send_key_combo(&combo).await?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        Ok(())
    }

    /// `set_link`: plug (`up = true`) or unplug a NIC by device id (e.g. `nic-vlan1`).
    pub async fn set_link(&self, name: &str, up: bool) -> Result<(), QmpError> {
        self.exec_default("set_link", json!({ "name": name, "up": up }))
            .await
            .map(drop)
    }

    /// `system_reset` (hard reset; a `RESET` event follows).
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.exec_default("system_reset", Value::Null)
            .await
            .map(drop)
    }

    /// `system_powerdown` (ACPI power button).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.exec_default("system_powerdown", Value::Null)
            .await
            .map(drop)
    }

    /// `stop` (pause the vCPUs).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.exec_default("stop", Value::Null).await.map(drop)
    }

    /// `cont` (resume the vCPUs).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.exec_default("cont", Value::Null).await.map(drop)
    }

    /// `quit`: QEMU exits at once (a crash from the guest's point of view). A connection that
    /// closes before the reply counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.exec_default("quit", Value::Null).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `human-monitor-command`: runs an HMP command line and returns its output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        let v = self
            .exec_default(
                "human-monitor-command",
                json!({ "command-line": command_line }),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// `migrate` to `uri` (e.g. `exec:cat > /run/state`); returns when the migration started.
    /// Do not `stop` the VM first, or the destination comes up paused.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.exec_default("migrate", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let raw = self.exec_default("query-migrate", Value::Null).await?;
        Ok(MigrationInfo {
            status: raw["status"].as_str().unwrap_or("none").to_string(),
            error_desc: raw["error-desc"].as_str().map(str::to_string),
            raw,
        })
    }

    /// Polls `query-migrate` until the migration completes; fails on `failed`/`cancelled` or
    /// after `timeout`.
    pub async fn wait_migration(&self, timeout: Duration) -> Result<MigrationInfo, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.query_migrate().await?;
            match info.status.as_str() {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    return Err(QmpError::Command {
                        command: "migrate".into(),
                        class: format!("migration {}", info.status),
                        desc: info.error_desc.unwrap_or_else(|| "no error given".into()),
                    })
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    command: "migrate (waiting for completion)".into(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits for the next event named `name` on `rx`, within `timeout`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<QmpEvent>,
    name: &str,
    timeout: Duration,
) -> Result<QmpEvent, QmpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if ev.event == name => return Ok(ev),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!("QMP event receiver lagged by {n} events");
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Err(QmpError::Disconnected {
                    command: format!("(waiting for event {name})"),
                })
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    command: format!("(waiting for event {name})"),
                    timeout,
                })
            }
        }
    }
}

async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<usize, QmpError> {
    line.clear();
    let mut limited = (&mut *reader).take(MAX_LINE as u64);
    let n = limited
        .read_until(b'\n', line)
        .await
        .map_err(|e| QmpError::io("reading from QMP", e))?;
    if n > 0 && !line.ends_with(b"\n") && n >= MAX_LINE {
        return Err(QmpError::Protocol(format!(
            "QMP message longer than {MAX_LINE} bytes"
        )));
    }
    Ok(n)
}

async fn read_loop(mut reader: BufReader<tokio::net::unix::OwnedReadHalf>, shared: Arc<Shared>) {
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line).await {
            Ok(0) => break,
            Ok(_) => dispatch(&shared, &line),
            Err(e) => {
                tracing::debug!("QMP reader stops: {e}");
                break;
            }
        }
    }
    // Closed: fail every waiter now and end event streams.
    let waiters = {
        let mut p = shared.lock();
        p.closed = true;
        p.events = None;
        std::mem::take(&mut p.waiters)
    };
    for (_, (command, tx)) in waiters {
        let _ = tx.send(Err(QmpError::Disconnected { command }));
    }
}

fn dispatch(shared: &Shared, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    tracing::trace!(target: "machinist_qemu::qmp", "<- {text}");
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("ignoring a non-JSON QMP line ({e}): {text}");
            return;
        }
    };
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ev = QmpEvent {
            event: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp: (
                v["timestamp"]["seconds"].as_i64().unwrap_or(0),
                v["timestamp"]["microseconds"].as_i64().unwrap_or(0),
            ),
        };
        tracing::debug!(target: "machinist_qemu::qmp", event = %ev.event, "QMP event {}", ev.data);
        if let Some(tx) = &shared.lock().events {
            let _ = tx.send(ev);
        }
        return;
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        tracing::warn!("ignoring a QMP reply without our id: {text}");
        return;
    };
    let Some((command, tx)) = shared.lock().waiters.remove(&id) else {
        tracing::debug!("QMP reply for id {id} nobody waits for (timed out?)");
        return;
    };
    let reply = if let Some(r) = v.get("return") {
        Ok(r.clone())
    } else if let Some(err) = v.get("error") {
        Err(QmpError::Command {
            command,
            class: err["class"].as_str().unwrap_or("unknown").to_string(),
            desc: err["desc"].as_str().unwrap_or("").to_string(),
        })
    } else {
        Err(QmpError::Protocol(format!(
            "reply to `{command}` without return or error: {text}"
        )))
    };
    let _ = tx.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A scripted QMP peer: reads commands and answers them (out of order for the first two),
    /// interleaving an event.
    async fn fake_qemu(stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian\"}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
        let mut held: Vec<Value> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let v: Value = serde_json::from_str(&line).unwrap();
            let id = v["id"].clone();
            match v["execute"].as_str().unwrap() {
                "qmp_capabilities" => {
                    assert!(v.get("arguments").is_none());
                    w.write_all(format!("{{\"return\": {{}}, \"id\": {id}}}\r\n").as_bytes())
                        .await
                        .unwrap();
                }
                "slow" | "fast" => {
                    held.push(v);
                    if held.len() == 2 {
                        w.write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESET\", \"data\": {\"guest\": false}}\n").await.unwrap();
                        for h in held.drain(..).rev() {
                            let reply = json!({"return": h["execute"], "id": h["id"]});
                            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                        }
                    }
                }
                "bad" => {
                    let reply =
                        json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
                "hang" => {}
                "die" => return,
                other => panic!("unexpected {other}"),
            }
        }
    }

    #[tokio::test]
    async fn correlation_events_errors_and_disconnect() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(fake_qemu(b));
        let qmp = Qmp::from_stream(a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.version().minor, 2);
        let mut events = qmp.subscribe();
        let t = Duration::from_secs(5);
        let (slow, fast) = tokio::join!(
            qmp.execute("slow", json!({"x": 1}), t),
            qmp.execute("fast", Value::Null, t)
        );
        assert_eq!(slow.unwrap(), json!("slow"));
        assert_eq!(fast.unwrap(), json!("fast"));
        let ev = wait_event(&mut events, "RESET", t).await.unwrap();
        assert_eq!(ev.data["guest"], json!(false));
        assert_eq!(ev.timestamp, (1, 2));

        let err = qmp.execute("bad", Value::Null, t).await.unwrap_err();
        assert_eq!(err.class(), Some("GenericError"));
        assert_eq!(
            err.to_string(),
            "QMP command `bad` failed: GenericError: nope"
        );

        let err = qmp
            .execute("hang", Value::Null, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");

        // A pending call fails with Disconnected as soon as the peer goes away.
        let q2 = qmp.clone();
        let pending = tokio::spawn(async move {
            q2.execute("hang", Value::Null, Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let _ = qmp
            .execute("die", Value::Null, Duration::from_secs(30))
            .await;
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(qmp.is_closed());
        let err = qmp.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
        assert!(matches!(
            wait_event(&mut events, "RESET", t).await,
            Err(QmpError::Disconnected { .. })
        ));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_greeting_is_a_protocol_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"hello\n").await.unwrap();
        let err = Qmp::from_stream(a, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err}");
        let (a, _b) = UnixStream::pair().unwrap();
        let err = Qmp::from_stream(a, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }
}
