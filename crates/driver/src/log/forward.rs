//! The leaf crates (qemu, backdoor, netsim, ocr, guest) report warnings through `tracing`; this
//! forwards every `WARN` and `ERROR` event into the log of each running test (terminal, JSON
//! lines, JUnit), so that a switch rejecting a client or a QMP oddity reaches the user.
//!
//! A process-wide `tracing` subscriber is installed the first time a test starts, unless the
//! program already installed its own (then that one gets the events and nothing is forwarded).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Once, Weak};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use super::{Inner, Logger};

static LOGGERS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Forwards events to `logger` until the returned guard is dropped.
pub(crate) fn attach(logger: &Logger) -> Attached {
    install();
    let weak = Arc::downgrade(&logger.inner);
    loggers().push(weak.clone());
    Attached(weak)
}

/// Stops forwarding to a logger when dropped.
pub(crate) struct Attached(Weak<Inner>);

impl Drop for Attached {
    fn drop(&mut self) {
        loggers().retain(|w| !w.ptr_eq(&self.0) && w.strong_count() > 0);
    }
}

fn loggers() -> std::sync::MutexGuard<'static, Vec<Weak<Inner>>> {
    LOGGERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Forward);
        // Err: the program has a subscriber of its own; leave it in charge.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct Forward;

impl<S: Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Fields::default();
        event.record(&mut text);
        let line = format!("{}: {}", event.metadata().target(), text.finish());
        // Upgrade first, log after releasing the registry lock.
        let targets: Vec<Logger> = loggers()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| Logger { inner })
            .collect();
        for logger in targets {
            if level == Level::ERROR {
                logger.error(None, &line);
            } else {
                logger.warning(None, &line);
            }
        }
    }
}

/// The event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn finish(self) -> String {
        if self.rest.is_empty() {
            self.message
        } else {
            format!("{} ({})", self.message, self.rest.trim_start())
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn leaf_crate_warnings_reach_the_test_log_while_attached() {
        let logger = Logger::silent();
        let buf = Buf::default();
        logger.write_json_to_writer(buf.clone());
        let guard = attach(&logger);
        tracing::warn!(target: "machinist_netsim::handle", port = 3, "rejected a client: bad greeting");
        tracing::info!(target: "machinist_netsim::handle", "too chatty to forward");
        drop(guard);
        tracing::warn!(target: "machinist_netsim::handle", "after the test ended");
        logger.flush();
        let json = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            json.contains("machinist_netsim::handle: rejected a client: bad greeting (port=3)"),
            "{json}"
        );
        assert!(json.contains(r#""type":"warning""#), "{json}");
        assert!(!json.contains("too chatty"), "{json}");
        assert!(!json.contains("after the test ended"), "{json}");
    }
}
