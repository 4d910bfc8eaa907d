//! Helpers shared by the cli's integration tests.

pub mod pty;
