//! The project's bundled VM tests, declared once and used by the test suite (`cargo xtask test`),
//! by the `machinist` command (`machinist run postgrest`, `machinist interactive postgrest`) and
//! by `cargo xtask test-postgrest`.
//!
//! The flagship is [`postgrest`]: the PostgREST tutorial from the guide our users come from, as a
//! two-machine test (Postgres + PostgREST on `server`, curl on `client`).

pub mod postgrest;
pub mod postgrest_binary;
