//! The human log on stderr, in the NixOS driver's format.

use std::io::Write;

/// ANSI styles used by the NixOS driver (colorama names).
pub(crate) mod style {
    pub const BRIGHT: &str = "\x1b[1m";
    pub const DIM: &str = "\x1b[2m";
    pub const GREEN: &str = "\x1b[32m";
    pub const RED: &str = "\x1b[31m";
    pub const YELLOW: &str = "\x1b[33m";
    pub const RESET: &str = "\x1b[0m";
}

/// Where human log lines go, and whether they get colours.
pub(crate) struct Terminal {
    pub(crate) out: Box<dyn Write + Send>,
    pub(crate) color: bool,
}

/// What kind of terminal line to print (decides the colour).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Start of a nested block: bright green message.
    Nest,
    /// Plain log line.
    Info,
    /// Serial console line (`<machine> # <line>`): dim.
    Serial,
    /// A line of a guest command's output (`<machine> | <line>`): dim.
    Output,
    /// Warning: yellow.
    Warning,
    /// Error: red.
    Error,
}

impl Terminal {
    /// Formats one line exactly like the NixOS `TerminalLogger` and writes it.
    pub(crate) fn line(&mut self, kind: Kind, machine: Option<&str>, message: &str) {
        let text = format_line(kind, machine, message, self.color);
        // A log line must never fail the test; stderr errors are ignored on purpose.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// The bytes of one terminal line (with trailing newline).
pub(crate) fn format_line(kind: Kind, machine: Option<&str>, message: &str, color: bool) -> String {
    use style::*;
    let body = match (kind, color) {
        (Kind::Serial | Kind::Output, _) => {
            let m = machine.unwrap_or("machine");
            let sep = if kind == Kind::Serial { '#' } else { '|' };
            if color {
                format!("{DIM}{m} {sep} {message}{RESET}")
            } else {
                format!("{m} {sep} {message}")
            }
        }
        (_, false) => prefix(machine, message),
        (Kind::Nest, true) => prefix(machine, &format!("{BRIGHT}{GREEN}{message}{RESET}")),
        (Kind::Info, true) => prefix(machine, message),
        (Kind::Warning, true) => prefix(machine, &format!("{YELLOW}{message}{RESET}")),
        (Kind::Error, true) => prefix(machine, &format!("{RED}{message}{RESET}")),
    };
    format!("{body}\n")
}

fn prefix(machine: Option<&str>, message: &str) -> String {
    match machine {
        Some(m) => format!("{m}: {message}"),
        None => message.to_string(),
    }
}
