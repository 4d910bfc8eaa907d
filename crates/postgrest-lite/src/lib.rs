//! postgrest-lite: a small, read-only, PostgREST-compatible HTTP server for the PostgREST
//! tutorial's subset.
//!
//! It reads PostgREST's configuration file ([`config::Config`]), connects to PostgreSQL as the
//! authenticator ([`db::Pool`]), and answers `GET /<table-or-view>` by running, in a read-only
//! transaction, `set_config('role', <db-anon-role>, true)` and one
//! `SELECT coalesce(json_agg(…), '[]')` built from PostgREST's query syntax
//! ([`query::ReadPlan`]), every request value a bound parameter ([`sql::Params`]), so the body
//! is byte-identical to PostgREST's. Errors use PostgREST's JSON shape and status codes
//! ([`error::ApiError`]); slow clients, long statements and abandoned requests are bounded by
//! timeouts (see [`config::Config`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = postgrest_lite::config::Config::load(std::path::Path::new("tutorial.conf"))?;
//! postgrest_lite::server::serve(config).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod db;
pub mod error;
pub mod query;
pub mod server;
pub mod sql;

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `Content-Type` of every JSON response, as PostgREST sends it.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";
