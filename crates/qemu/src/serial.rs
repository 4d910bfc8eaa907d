//! Serial console capture: a bounded, searchable line buffer plus a broadcast of new lines.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

/// Lines kept by default (older lines are dropped from the buffer, not from subscribers).
pub const DEFAULT_MAX_LINES: usize = 20_000;
/// A "line" longer than this without a newline is cut and emitted as a line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why waiting for a serial line failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SerialError {
    /// No matching line arrived in time.
    #[error("no serial line from `{name}` matched {what} within {timeout:?}; last lines:\n{tail}")]
    Timeout {
        /// Machine name.
        name: String,
        /// Description of what was searched.
        what: String,
        /// The deadline.
        timeout: Duration,
        /// The last few lines seen.
        tail: String,
    },
    /// The console closed (QEMU exited) before a matching line arrived.
    #[error("serial console of `{name}` closed (QEMU exited) before a line matched {what}")]
    Closed {
        /// Machine name.
        name: String,
        /// Description of what was searched.
        what: String,
    },
}

/// A captured serial line with its index (0 = first line since QEMU started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLine {
    /// Position in the whole stream (not just the retained buffer).
    pub index: u64,
    /// The text, `\r` removed, invalid UTF-8 replaced.
    pub text: String,
    /// When the line was received.
    pub at: Instant,
}

struct State {
    lines: VecDeque<(Instant, String)>,
    first_index: u64,
    partial: Vec<u8>,
    closed: bool,
}

struct Inner {
    name: String,
    max_lines: usize,
    state: Mutex<State>,
    cond: Condvar,
    lines_tx: broadcast::Sender<String>,
    version: watch::Sender<u64>,
}

/// The serial console log of one machine. Cheap to clone (shared).
#[derive(Clone)]
pub struct SerialLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SerialLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLog")
            .field("name", &self.inner.name)
            .field("line_count", &self.line_count())
            .finish()
    }
}

impl SerialLog {
    /// An empty log for machine `name` retaining at most `max_lines` lines.
    pub fn new(name: impl Into<String>, max_lines: usize) -> Self {
        let (lines_tx, _) = broadcast::channel(4096);
        let (version, _) = watch::channel(0);
        SerialLog {
            inner: Arc::new(Inner {
                name: name.into(),
                max_lines: max_lines.max(1),
                state: Mutex::new(State {
                    lines: VecDeque::new(),
                    first_index: 0,
                    partial: Vec::new(),
                    closed: false,
                }),
                cond: Condvar::new(),
                lines_tx,
                version,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds raw console bytes: complete lines are stored and broadcast.
    pub fn push_bytes(&self, data: &[u8]) {
        let mut any = false;
        {
            let mut st = self.lock();
            for &b in data {
                match b {
                    b'\n' => {
                        let raw = std::mem::take(&mut st.partial);
                        self.store(&mut st, decode(&raw));
                        any = true;
                    }
                    b'\r' => {}
                    _ => {
                        st.partial.push(b);
                        if st.partial.len() >= MAX_LINE_BYTES {
                            let raw = std::mem::take(&mut st.partial);
                            self.store(&mut st, decode(&raw));
                            any = true;
                        }
                    }
                }
            }
        }
        if any {
            self.notify();
        }
    }

    /// Stores and broadcasts one line. Broadcasting under the lock keeps
    /// [`SerialLog::subscribe_with_history`] gap-free.
    fn store(&self, st: &mut State, line: String) {
        tracing::trace!(target: "machinist_qemu::serial", machine = %self.inner.name, "{line}");
        let _ = self.inner.lines_tx.send(line.clone());
        st.lines.push_back((Instant::now(), line));
        if st.lines.len() > self.inner.max_lines {
            st.lines.pop_front();
            st.first_index += 1;
        }
    }

    /// Marks the console as closed (QEMU exited); a pending partial line is flushed.
    pub fn close(&self) {
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            if !st.partial.is_empty() {
                let raw = std::mem::take(&mut st.partial);
                self.store(&mut st, decode(&raw));
            }
        }
        self.notify();
    }

    fn notify(&self) {
        self.inner.cond.notify_all();
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Subscribes to lines arriving from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.lines_tx.subscribe()
    }

    /// The retained lines plus a receiver of every later line, with no gap and no duplicate
    /// (for loggers that attach after QEMU started).
    pub fn subscribe_with_history(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let st = self.lock();
        let rx = self.inner.lines_tx.subscribe();
        (st.lines.iter().map(|(_, l)| l.clone()).collect(), rx)
    }

    /// The retained lines.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// The retained lines with the time each was received.
    pub fn timed_lines(&self) -> Vec<SerialLine> {
        let st = self.lock();
        st.lines
            .iter()
            .enumerate()
            .map(|(i, (at, l))| SerialLine {
                index: st.first_index + i as u64,
                text: l.clone(),
                at: *at,
            })
            .collect()
    }

    /// The last `n` retained lines joined with newlines.
    pub fn tail(&self, n: usize) -> String {
        let st = self.lock();
        let skip = st.lines.len().saturating_sub(n);
        st.lines
            .iter()
            .skip(skip)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text after the last newline (e.g. a prompt), if any.
    pub fn partial_line(&self) -> String {
        decode(&self.lock().partial)
    }

    /// Number of complete lines seen since start (the index the next line will get).
    pub fn line_count(&self) -> u64 {
        let st = self.lock();
        st.first_index + st.lines.len() as u64
    }

    /// Whether the console has closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether a retained line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().lines.iter().any(|(_, l)| l.contains(needle))
    }

    /// The first retained line at index >= `from` for which `pred` holds.
    pub fn find(&self, from: u64, pred: impl Fn(&str) -> bool) -> Option<SerialLine> {
        let st = self.lock();
        find_in(&st, from, &pred)
    }

    /// Waits until a line at index >= `from` satisfies `pred` (lines already captured count).
    /// `what` describes the search in errors.
    pub async fn wait_for(
        &self,
        from: u64,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<SerialLine, SerialError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.version.subscribe();
        loop {
            {
                let st = self.lock();
                if let Some(hit) = find_in(&st, from, &pred) {
                    return Ok(hit);
                }
                if st.closed {
                    return Err(self.closed_err(what));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.closed_err(what)),
                Err(_) => return Err(self.timeout_err(what, timeout)),
            }
        }
    }

    /// Blocking variant of [`SerialLog::wait_for`] (for code outside a runtime).
    pub fn wait_for_blocking(
        &self,
        from: u64,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<SerialLine, SerialError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(hit) = find_in(&st, from, &pred) {
                return Ok(hit);
            }
            if st.closed {
                drop(st);
                return Err(self.closed_err(what));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(self.timeout_err(what, timeout));
            }
            st = self
                .inner
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn closed_err(&self, what: &str) -> SerialError {
        SerialError::Closed {
            name: self.inner.name.clone(),
            what: what.to_string(),
        }
    }

    fn timeout_err(&self, what: &str, timeout: Duration) -> SerialError {
        SerialError::Timeout {
            name: self.inner.name.clone(),
            what: what.to_string(),
            timeout,
            tail: self.tail(10),
        }
    }
}

fn find_in(st: &State, from: u64, pred: &dyn Fn(&str) -> bool) -> Option<SerialLine> {
    let skip = from.saturating_sub(st.first_index) as usize;
    st.lines
        .iter()
        .enumerate()
        .skip(skip)
        .find(|(_, (_, l))| pred(l))
        .map(|(i, (at, l))| SerialLine {
            index: st.first_index + i as u64,
            text: l.clone(),
            at: *at,
        })
}

fn decode(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cleaned_and_bounded() {
        let log = SerialLog::new("vm", 3);
        let mut rx = log.subscribe();
        log.push_bytes(b"one\r\ntw");
        assert_eq!(log.lines(), vec!["one"]);
        assert_eq!(log.partial_line(), "tw");
        log.push_bytes(b"o\r\n\xff\xfebad\nfour\nfive\n");
        assert_eq!(log.lines(), vec!["\u{fffd}\u{fffd}bad", "four", "five"]);
        assert_eq!(log.line_count(), 5);
        assert_eq!(rx.try_recv().unwrap(), "one");
        assert_eq!(rx.try_recv().unwrap(), "two");
        assert!(log.contains("fou"));
        assert_eq!(log.find(0, |l| l.starts_with('f')).unwrap().index, 3);
        assert_eq!(log.find(4, |l| l.starts_with('f')).unwrap().text, "five");
        log.push_bytes(b"prompt$ ");
        log.close();
        assert_eq!(log.tail(1), "prompt$ ");
        assert!(log.is_closed());
        let (hist, mut rx2) = log.subscribe_with_history();
        assert_eq!(hist.len(), 3);
        assert!(rx2.try_recv().is_err());
        let timed = log.timed_lines();
        assert_eq!(timed.last().unwrap().index, 5);
        assert!(timed[0].at <= timed[2].at);
    }

    #[test]
    fn overlong_line_is_cut() {
        let log = SerialLog::new("vm", 10);
        log.push_bytes(&vec![b'x'; MAX_LINE_BYTES + 5]);
        assert_eq!(log.line_count(), 1);
        assert_eq!(log.partial_line().len(), 5);
    }

    #[tokio::test]
    async fn wait_for_sees_old_and_new_lines_and_closing() {
        let log = SerialLog::new("vm", 100);
        log.push_bytes(b"early\n");
        let hit = log
            .wait_for(0, "early", |l| l == "early", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(hit.index, 0);
        let l2 = log.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            l2.push_bytes(b"MARKER 42\n");
        });
        let hit = log
            .wait_for(
                1,
                "MARKER",
                |l| l.contains("MARKER"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(hit.text, "MARKER 42");
        t.await.unwrap();
        let err = log
            .wait_for(0, "nothing", |_| false, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, SerialError::Timeout { .. }));
        assert!(err.to_string().contains("MARKER 42"), "{err}");
        log.close();
        let err = log
            .wait_for_blocking(0, "nothing", |_| false, Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(err, SerialError::Closed { .. }));
    }
}
