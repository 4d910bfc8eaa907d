//! A VM test in a user's crate: two machines, the client reads the greeter's message over the
//! test network. Runs with `cargo test` (or `cargo nextest run`) on a host with what the
//! `machinist` crate's README lists (QEMU, mmdebstrap, root for the image build).

use example_user_tests::{client, greeter, GREETER_PORT};
use machinist::Test;

#[test]
fn vm_client_reads_the_greeting() {
    Test::new("greeter")
        .node("greeter", greeter("hello from the greeter"))
        .node("client", client())
        .script(|t| {
            t.start_all()?;
            let greeter = t.machine("greeter");
            greeter.wait_for_unit("greeter.service", 60)?;
            greeter.wait_for_open_port(GREETER_PORT, 60)?;
            let got = t
                .machine("client")
                .wait_until_succeeds(&format!("nc -N greeter {GREETER_PORT} </dev/null"), 60)?;
            assert_eq!(got.trim(), "hello from the greeter");
            Ok(())
        })
        .run()
        .expect("the greeter test passes");
}
