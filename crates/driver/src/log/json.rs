//! JSON-lines copy of the log (one object per line) in the output directory.
//!
//! Every record has `time` (seconds since the test started, 3 decimals) and `type`:
//!
//! | type | fields |
//! |---|---|
//! | `nest` | `id`, `parent` (or null), `machine` (or null), `message` |
//! | `finished` | `id`, `ok` (false when the block failed), `duration` (seconds) |
//! | `log` / `warning` / `error` | `parent`, `machine`, `message` |
//! | `serial` / `output` | `machine`, `line` |
//! | `event` | `parent`, `machine` (or null), `event` |
//!
//! A typed [`super::Event`] adds an `event` object (`name` and the event's fields) to the record
//! of its line, or to the `nest` / `finished` record of the block it opens or closes, or makes an
//! `event` record of its own when it has no human line.

use serde_json::{json, Value};
use std::io::Write;

pub(crate) struct JsonSink {
    pub(crate) out: Box<dyn Write + Send>,
}

impl JsonSink {
    pub(crate) fn write(&mut self, record: Value) {
        let mut line = record.to_string();
        line.push('\n');
        let _ = self.out.write_all(line.as_bytes());
    }

    pub(crate) fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

pub(crate) fn seconds(d: std::time::Duration) -> Value {
    // Round to milliseconds so the file stays readable.
    json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The `event` object of a record.
pub(crate) fn event(e: &super::Event) -> Value {
    serde_json::to_value(e)
        .unwrap_or_else(|err| json!({ "name": "unserializable", "error": err.to_string() }))
}
