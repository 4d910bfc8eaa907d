//! JSON-lines copy of the log (one object per line) in the output directory.
//!
//! Every record has `time` (seconds since the test started, 3 decimals) and `type`:
//!
//! | type | fields |
//! |---|---|
//! | `nest` | `id`, `parent` (or null), `machine` (or null), `message` |
//! | `finished` | `id`, `ok` (false when the block failed), `duration` (seconds) |
//! | `log` / `warning` / `error` | `parent`, `machine`, `message` |
//! | `serial` | `machine`, `line` |

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
