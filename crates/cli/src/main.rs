//! The `machinist` binary: `machinist list | run <test> | interactive <test> | doctor`.

use machinist::{NodeConfig, Test};
use machinist_cli::BundledTest;

/// The tests this binary bundles. The PostgREST tutorial test lives in the tests crate, which
/// builds its own binary with `machinist_cli::main` (see `cargo xtask interactive postgrest`).
fn bundled() -> Vec<BundledTest> {
    vec![BundledTest::new(
        "hello",
        "one Debian machine (`machine`): the guide's interactive session",
        |_args| Ok(Test::new("hello").node("machine", NodeConfig::new())),
    )
    .python_script(
        "hello.py",
        "start_all()\nassert machine.succeed('echo \"Hello, world!\"') == 'Hello, world!\\n'\n",
    )]
}

fn main() -> std::process::ExitCode {
    machinist_cli::main(bundled())
}
