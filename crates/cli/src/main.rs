//! The `machinist` binary: `machinist list | run <test> | interactive <test> | doctor`.

fn main() -> std::process::ExitCode {
    // TODO(issue 9/10): bundle the project's tests (the PostgREST tutorial test) once the driver
    // and tests crates expose them.
    machinist_cli::main(Vec::new())
}
