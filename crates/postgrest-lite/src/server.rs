//! The HTTP side: routes, handlers, request log, startup and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{one_line, run_as_role, Pool, PoolError};
use crate::error::ApiError;
use crate::query::{parse_query_string, ReadPlan};
use crate::sql::quote_literal;
use crate::JSON_CONTENT_TYPE;

/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database settings are unusable.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// `server-host` did not resolve.
    #[error("cannot resolve server-host {host:?}: {source}")]
    Resolve {
        /// The host spec.
        host: String,
        /// The resolver error.
        source: std::io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source} (is another server using server-port {port}?)")]
    Bind {
        /// The address.
        addr: String,
        /// The port.
        port: u16,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The accept loop failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Shared state of all handlers.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The database pool.
    pub pool: Pool,
}

/// Builds the router: `GET /` (OpenAPI-ish listing), `GET /<relation>`, JSON 404 elsewhere.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(root))
        .route("/{relation}", any(read_relation))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Binds the configured address, then serves forever (until SIGTERM/SIGINT) while a
/// background task connects to PostgreSQL with retries; requests before that get 503.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let pool = Pool::new(&config.db_uri, &config.redacted_db_uri(), config.db_pool)?;
    let addrs = config.bind_addrs().map_err(|source| ServeError::Resolve {
        host: config.server_host.clone(),
        source,
    })?;
    let mut last_err = None;
    let mut listener = None;
    for addr in &addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => last_err = Some((addr.to_string(), e)),
        }
    }
    let listener = match (listener, last_err) {
        (Some(l), _) => l,
        (None, Some((addr, source))) => {
            return Err(ServeError::Bind {
                addr,
                port: config.server_port,
                source,
            })
        }
        (None, None) => {
            return Err(ServeError::Resolve {
                host: config.server_host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            })
        }
    };
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    let state = Arc::new(AppState { config, pool });
    eprintln!("postgrest-lite listening on {local}");

    let connector = state.clone();
    tokio::spawn(async move { connector.pool.connect_with_retry().await });

    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    eprintln!("postgrest-lite: shutting down");
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => Err(ServeError::Serve(e)),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// One line per request on stderr: peer, role, request line, status, body size.
async fn log_request(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let line = format!(
        "{} - {} \"{} {} {:?}\"",
        peer.ip(),
        state.config.db_anon_role,
        req.method(),
        req.uri(),
        req.version()
    );
    let resp = next.run(req).await;
    let len = resp
        .body()
        .size_hint()
        .exact()
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    eprintln!("{line} {} {len}", resp.status().as_u16());
    resp
}

fn json_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::NotReady { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PGRST000",
            "Database connection error. Retrying the connection.",
        )
        .details(e.to_string()),
        PoolError::Exhausted(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "PGRST003",
            "Timed out acquiring connection from connection pool.",
        ),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PGRST000",
            "Database connection error. Retrying the connection.",
        )
        .details(other.to_string()),
    }
}

/// Runs `sql` as the anonymous role; a connection that turns out broken is replaced once.
async fn query_as_anon(state: &AppState, sql: &str) -> Result<Vec<Option<String>>, ApiError> {
    for attempt in 0..2 {
        let client = state.pool.get().await.map_err(pool_error)?;
        match run_as_role(&client, &state.config.db_anon_role, sql).await {
            Ok(row) => return Ok(row),
            Err(e) if e.as_db_error().is_some() => return Err(ApiError::from_db(&e, true)),
            Err(e) => {
                let fresh = client.fresh;
                client.discard();
                eprintln!(
                    "postgrest-lite: database connection failed: {}",
                    one_line(&e)
                );
                if fresh || attempt == 1 {
                    return Err(ApiError::from_db(&e, true));
                }
            }
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Picks the schema: the `Accept-Profile` header's if given (must be exposed), else the first.
fn pick_schema(config: &Config, headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get("accept-profile").and_then(|v| v.to_str().ok()) {
        None => Ok(config.db_schemas[0].clone()),
        Some(p) if config.db_schemas.iter().any(|s| s == p.trim()) => Ok(p.trim().to_string()),
        Some(_) => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "PGRST106",
            format!(
                "The schema must be one of the following: {}",
                config.db_schemas.join(", ")
            ),
        )),
    }
}

fn read_only(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "PGRST117",
            format!("Unsupported HTTP method: {method}"),
        )
        .details("postgrest-lite is read-only: only GET and HEAD are implemented")
        .hint("use the real PostgREST (MACHINIST_POSTGREST=/path/to/postgrest) for writes"))
    }
}

/// `GET /<relation>`: the rows as a JSON array built by `json_agg`.
async fn read_relation(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    Path(relation): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    read_only(&method)?;
    let schema = pick_schema(&state.config, &headers)?;
    let pairs = parse_query_string(query.as_deref().unwrap_or(""));
    let plan = ReadPlan::from_pairs(&pairs)?;
    let sql = plan.to_sql(&schema, &relation)?;
    let row = query_as_anon(&state, &sql).await?;
    let body = row
        .first()
        .cloned()
        .flatten()
        .unwrap_or_else(|| "[]".into());
    let count: u64 = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let start = plan.offset.unwrap_or(0);
    let range = if count == 0 {
        "*/*".to_string()
    } else {
        format!("{start}-{}/*", start + count - 1)
    };
    let mut resp = json_response(StatusCode::OK, JSON_CONTENT_TYPE, body);
    if let Ok(v) = HeaderValue::from_str(&range) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// `GET /`: a minimal Swagger 2.0 document listing the relations of the schema that the
/// anonymous role may read.
async fn root(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read_only(&method)?;
    let schema = pick_schema(&state.config, &headers)?;
    let schema_lit = quote_literal(&schema)
        .ok_or_else(|| ApiError::parse("invalid schema", "schema names cannot contain NUL"))?;
    let sql = format!(
        "SELECT coalesce(json_agg(c.relname::text ORDER BY c.relname), '[]')::text \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {schema_lit} AND c.relkind IN ('r','v','m','f','p') \
         AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
    );
    let row = query_as_anon(&state, &sql).await?;
    let names: Vec<String> = row
        .first()
        .cloned()
        .flatten()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let mut paths = serde_json::Map::new();
    paths.insert(
        "/".into(),
        serde_json::json!({"get": {"summary": "This description", "produces": ["application/openapi+json"]}}),
    );
    for name in names {
        paths.insert(
            format!("/{name}"),
            serde_json::json!({"get": {
                "tags": [name],
                "produces": ["application/json"],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    let doc = serde_json::json!({
        "swagger": "2.0",
        "info": {
            "title": "postgrest-lite",
            "description": format!("Read-only PostgREST-compatible subset serving schema {schema}"),
            "version": crate::VERSION,
        },
        "basePath": "/",
        "schemes": ["http"],
        "produces": ["application/json"],
        "paths": paths,
    });
    Ok(json_response(
        StatusCode::OK,
        "application/openapi+json; charset=utf-8",
        doc.to_string(),
    ))
}

async fn not_found(method: Method) -> ApiError {
    match read_only(&method) {
        Err(e) => e,
        Ok(()) => ApiError::new(
            StatusCode::NOT_FOUND,
            "PGRST125",
            "Invalid path specified in request URL",
        )
        .details("postgrest-lite serves GET / and GET /<table-or-view> only"),
    }
}
