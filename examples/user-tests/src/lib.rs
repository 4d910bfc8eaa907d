//! A user's own integration tests with the `machinist` library: the nodes of the system under
//! test, declared once and shared by every test of the crate (see `tests/vm_greeter.rs`).

use machinist::{FileSpec, NodeConfig, ServiceSpec};

/// The port the greeter answers on.
pub const GREETER_PORT: u16 = 7000;

/// A node running the system under test: a tiny TCP service that answers every connection with
/// the contents of `/etc/greeter/message`.
pub fn greeter(message: &str) -> NodeConfig {
    NodeConfig::new()
        .file(FileSpec::new(
            "/etc/greeter/message",
            format!("{message}\n"),
        ))
        .service(ServiceSpec::new(
            "greeter",
            format!(
                "/bin/sh -c 'while true; do nc -l -N {GREETER_PORT} < /etc/greeter/message; done'"
            ),
        ))
        .open_tcp_port(u32::from(GREETER_PORT))
}

/// A node that only talks to the others.
pub fn client() -> NodeConfig {
    NodeConfig::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The declaration alone is checked without booting anything.
    #[test]
    fn the_nodes_validate() {
        machinist::Test::new("greeter-declaration")
            .node("greeter", greeter("hello"))
            .node("client", client())
            .validate()
            .expect("a valid declaration");
    }
}
