//! The connection pool: connections as the authenticator (from `db-uri`), created on demand up
//! to `db-pool`, dropped when broken; plus the startup loop that waits for PostgreSQL.
//!
//! A connection goes back to the pool only after its request's transaction has ended
//! (`COMMIT` or `ROLLBACK` answered). A request abandoned in between (the client hung up, the
//! request timed out) drops its [`PooledClient`] mid-work: the running statement is cancelled
//! and the connection closed, never handed to the next request busy or inside a transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, SimpleQueryMessage};

use crate::sql::{Params, TextParam};

/// How long a request waits for a free connection (PostgREST's `db-pool-acquisition-timeout`).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout used when `db-uri` does not set one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay of the startup retry loop; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between two startup connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the pool could not hand out a connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `db-uri` is not a valid connection string.
    #[error("invalid db-uri {uri}: {source} (expected postgres://user:password@host:port/db)")]
    BadUri {
        /// The redacted URI.
        uri: String,
        /// The parse error.
        source: tokio_postgres::Error,
    },
    /// The startup loop has not connected yet.
    #[error("not connected to the database yet (still retrying {uri})")]
    NotReady {
        /// The redacted URI.
        uri: String,
    },
    /// Every connection is busy for longer than [`ACQUIRE_TIMEOUT`].
    #[error("timed out after {0:?} waiting for a free database connection")]
    Exhausted(Duration),
    /// Connecting failed.
    #[error("cannot connect to {uri}: {source}")]
    Connect {
        /// The redacted URI.
        uri: String,
        /// The driver error.
        source: tokio_postgres::Error,
    },
}

/// A small pool of connections to PostgreSQL as the authenticator role.
pub struct Pool {
    config: tokio_postgres::Config,
    uri: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    ready: AtomicBool,
}

/// A connection borrowed from the [`Pool`]; goes back to the pool on drop unless broken or
/// dropped in the middle of [`PooledClient::run_as_role`].
pub struct PooledClient<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    /// True when the connection was freshly opened for this request.
    pub fresh: bool,
    /// True from `BEGIN` until the transaction is known to be over.
    in_transaction: bool,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for PooledClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl PooledClient<'_> {
    /// Drops the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.client = None;
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.in_transaction {
                // Abandoned mid-request: its statement may still be running and its
                // transaction is open. Cancel the statement and close the connection (which
                // ends the transaction on the server); the pool opens a fresh one.
                eprintln!(
                    "postgrest-lite: request abandoned during its database work; its connection to {} is cancelled and discarded",
                    self.pool.uri
                );
                if !client.is_closed() {
                    let token = client.cancel_token();
                    if let Ok(handle) = tokio::runtime::Handle::try_current() {
                        handle.spawn(async move {
                            let _ =
                                tokio::time::timeout(CONNECT_TIMEOUT, token.cancel_query(NoTls))
                                    .await;
                        });
                    }
                }
                return;
            }
            if !client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(client);
            }
        }
    }
}

impl Pool {
    /// Parses `db-uri` (a `postgres://` URI or libpq key/value string). `redacted_uri` is what
    /// logs and errors show.
    pub fn new(db_uri: &str, redacted_uri: &str, size: usize) -> Result<Pool, PoolError> {
        let mut config: tokio_postgres::Config =
            db_uri.parse().map_err(|source| PoolError::BadUri {
                uri: redacted_uri.to_string(),
                source,
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("postgrest-lite");
        }
        Ok(Pool {
            config,
            uri: redacted_uri.to_string(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            ready: AtomicBool::new(false),
        })
    }

    /// The redacted URI, for messages.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The role `db-uri` logs in as (the authenticator), if it names one.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// Whether the startup loop has connected once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn open(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let uri = self.uri.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgrest-lite: database connection to {uri} closed: {e}");
            }
        });
        Ok(client)
    }

    /// Connects until it works, sleeping with exponential backoff between attempts and
    /// logging each failure on one line; then marks the pool ready. Runs until success.
    pub async fn connect_with_retry(&self) {
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1u32;
        loop {
            match self.open().await {
                Ok(client) => {
                    let version = client
                        .simple_query("SHOW server_version")
                        .await
                        .ok()
                        .and_then(|msgs| {
                            msgs.into_iter().find_map(|m| match m {
                                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                _ => None,
                            })
                        })
                        .unwrap_or_else(|| "unknown".into());
                    eprintln!(
                        "postgrest-lite: connected to {} (PostgreSQL {version}) after {attempt} attempt(s)",
                        self.uri
                    );
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(client);
                    self.ready.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    eprintln!(
                        "postgrest-lite: database not reachable at {} (attempt {attempt}): {}; retrying in {:.1}s",
                        self.uri,
                        one_line(&e),
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }

    /// Borrows a connection: an idle healthy one, or a new one (one attempt).
    pub async fn get(&self) -> Result<PooledClient<'_>, PoolError> {
        if !self.is_ready() {
            return Err(PoolError::NotReady {
                uri: self.uri.clone(),
            });
        }
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| PoolError::Exhausted(ACQUIRE_TIMEOUT))?
            .expect("semaphore never closed");
        let idle = loop {
            let candidate = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match candidate {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let (client, fresh) = match idle {
            Some(c) => (c, false),
            None => (
                self.open().await.map_err(|source| PoolError::Connect {
                    uri: self.uri.clone(),
                    source,
                })?,
                true,
            ),
        };
        Ok(PooledClient {
            pool: self,
            client: Some(client),
            fresh,
            in_transaction: false,
            _permit: permit,
        })
    }
}

/// The driver error and its cause on one line (tokio-postgres hides the cause otherwise).
pub fn one_line(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s.replace('\n', " ")
}

impl PooledClient<'_> {
    /// Runs `sql` with `params` as `anon_role` in a read-only transaction and returns its
    /// first row (`None` when it returned none):
    /// `BEGIN READ ONLY`; `set_config('role', $1, true)` and
    /// `set_config('statement_timeout', $2, true)`; the statement; `COMMIT`. Every value,
    /// the role included, is a bound parameter. On an error from PostgreSQL the transaction is
    /// rolled back. If this future is dropped before the transaction has ended, dropping the
    /// client cancels the statement and discards the connection.
    pub async fn run_as_role(
        &mut self,
        anon_role: &str,
        statement_timeout: Duration,
        sql: &str,
        params: &Params,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        self.in_transaction = true;
        let client = self.client.as_ref().expect("client present until drop");
        let result = async {
            client
                .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY")
                .await?;
            let role = TextParam(anon_role.to_string());
            let timeout = TextParam(statement_timeout.as_millis().to_string());
            client
                .query_typed(
                    "SELECT pg_catalog.set_config('role', $1, true), \
                     pg_catalog.set_config('statement_timeout', $2, true)",
                    &[
                        (&role as &(dyn ToSql + Sync), Type::TEXT),
                        (&timeout as &(dyn ToSql + Sync), Type::TEXT),
                    ],
                )
                .await?;
            let rows = client.query_typed(sql, &params.typed()).await?;
            client.batch_execute("COMMIT").await?;
            Ok(rows.into_iter().next())
        }
        .await;
        match result {
            Ok(row) => {
                self.in_transaction = false;
                Ok(row)
            }
            Err(e) => {
                if !client.is_closed() && client.batch_execute("ROLLBACK").await.is_ok() {
                    self.in_transaction = false;
                }
                Err(e)
            }
        }
    }
}
