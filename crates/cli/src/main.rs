//! The `machinist` binary: `machinist list | run <test> | interactive <test> | build-images |
//! doctor`, with the project's bundled tests (`hello`, `postgrest`).

fn main() -> std::process::ExitCode {
    machinist_cli::main(machinist_cli::bundled::tests())
}
