//! The machinist command: run tests, Python test scripts, the interactive REPL, list and doctor.
