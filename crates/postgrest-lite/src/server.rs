//! The HTTP side: connections (with a header-read timeout), routes, handlers, the request
//! log and deadline, startup and shutdown.

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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{one_line, Pool, PoolError};
use crate::error::ApiError;
use crate::query::{parse_query_string, ReadPlan};
use crate::sql::Params;
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
/// Every request is logged, refused if it carries a bearer token (see [`bearer_token`]) and
/// answered 504 if it outlives `server-request-timeout`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(root))
        .route("/{relation}", any(read_relation))
        .fallback(not_found)
        .layer(middleware::from_fn(refuse_jwt))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
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

    let header_timeout = state.config.server_header_read_timeout;
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: log, breathe, keep serving.
                    eprintln!("postgrest-lite: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = ConnectInfoService {
            inner: TowerToHyperService::new(app.clone()),
            peer,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are the client's (hung up, sent garbage, too slow): nothing to do.
            let _ = conn.await;
        });
    }
    eprintln!("postgrest-lite: shutting down");
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// The router as a hyper service for one connection, tagging each request with the peer
/// address (what `ConnectInfo` extracts).
#[derive(Clone)]
struct ConnectInfoService {
    inner: TowerToHyperService<Router>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectInfoService {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        Request<hyper::body::Incoming>,
    >>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<
        Request<hyper::body::Incoming>,
    >>::Error;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<
        Request<hyper::body::Incoming>,
    >>::Future;

    fn call(&self, mut req: Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(req)
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

/// Answers a request that outlives `server-request-timeout` with 504; dropping the handler
/// cancels its database work (see [`crate::db::PooledClient`]).
async fn request_deadline(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.config.server_request_timeout;
    if limit.is_zero() {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "57014",
            "canceling statement due to request timeout",
        )
        .details(format!(
            "postgrest-lite stopped the request after {:?} (server-request-timeout)",
            limit
        ))
        .into_response(),
    }
}

/// The token of an `Authorization` header as PostgREST reads it: the second space-separated
/// word after `Bearer` or `bearer`; empty (anonymous) for any other header.
pub fn bearer_token(headers: &HeaderMap) -> &str {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "";
    };
    let mut words = value.split(' ');
    match (words.next(), words.next()) {
        (Some("Bearer" | "bearer"), Some(token)) => token,
        _ => "",
    }
}

/// A request with a bearer token gets what PostgREST without `jwt-secret` answers: 500,
/// `PGRST300`, "Server lacks JWT secret". postgrest-lite cannot verify tokens, and serving the
/// request as the anonymous role would let a test pass that real PostgREST fails.
async fn refuse_jwt(req: Request, next: Next) -> Response {
    if bearer_token(req.headers()).is_empty() {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "PGRST300",
        "Server lacks JWT secret",
    )
    .into_response()
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

/// Runs `sql` with `params` as the anonymous role and returns its first row; a connection
/// that turns out broken is replaced once.
async fn query_as_anon(
    state: &AppState,
    sql: &str,
    params: &Params,
) -> Result<Option<tokio_postgres::Row>, ApiError> {
    for attempt in 0..2 {
        let mut client = state.pool.get().await.map_err(pool_error)?;
        let outcome = client
            .run_as_role(
                &state.config.db_anon_role,
                state.config.db_statement_timeout,
                sql,
                params,
            )
            .await;
        match outcome {
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
    let (sql, params) = plan.to_sql(&schema, &relation)?;
    let row = query_as_anon(&state, &sql, &params).await?;
    let body = row
        .as_ref()
        .and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
        .unwrap_or_else(|| "[]".into());
    let count: u64 = row
        .as_ref()
        .and_then(|r| r.try_get::<_, Option<i64>>(1).ok().flatten())
        .and_then(|c| u64::try_from(c).ok())
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
    let mut params = Params::new();
    let schema_param = params
        .push(&schema)
        .ok_or_else(|| ApiError::parse("invalid schema", "schema names cannot contain NUL"))?;
    let sql = format!(
        "SELECT coalesce(json_agg(c.relname::text ORDER BY c.relname), '[]')::text \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {schema_param} AND c.relkind IN ('r','v','m','f','p') \
         AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
    );
    let row = query_as_anon(&state, &sql, &params).await?;
    let names: Vec<String> = row
        .as_ref()
        .and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
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
