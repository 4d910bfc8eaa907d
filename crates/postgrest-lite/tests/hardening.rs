//! postgrest-lite behaves like the server it stands in for when clients or queries misbehave:
//! slow clients are dropped, long statements are stopped, a request the client abandoned does
//! not leave its connection in the pool, request values never become SQL text, and JWTs are
//! refused exactly like a PostgREST without `jwt-secret` refuses them.
//!
//! Each test runs against a real PostgreSQL cluster (see `common`) and talks raw TCP.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, get, pg_or_skip, try_request, PgCluster, Server, SETUP_SQL};

const BIN: &str = env!("CARGO_BIN_EXE_postgrest-lite");

/// The body the guide shows for `curl http://server:3000/todos`.
const TUTORIAL_BODY: &str = "[{\"id\":1,\"done\":false,\"task\":\"finish tutorial 0\",\"due\":null}, \n {\"id\":2,\"done\":false,\"task\":\"pat self on back\",\"due\":null}]";

/// The tutorial's config plus `extra` lines; the server is up (first non-503) on return.
fn start_with(pg: &PgCluster, extra: &str) -> Server {
    let port = free_port();
    let conf = format!("{}{extra}", common::tutorial_conf(pg.port, port));
    let server = Server::spawn(Path::new(BIN), &conf, port);
    server.wait_for("/todos", Duration::from_secs(30), |r| r.status != 503);
    server
}

/// A cluster with the tutorial loaded and a view `api.slow` that sleeps `secs` per read.
fn cluster_with_slow_view(secs: f64) -> Option<PgCluster> {
    let bin = pg_or_skip("hardening")?;
    let pg = PgCluster::start_new(&bin);
    pg.psql(SETUP_SQL);
    pg.psql(&format!(
        "create view api.slow as select 1 as n from pg_sleep({secs});\n\
         grant select on api.slow to web_anon;"
    ));
    Some(pg)
}

/// Rows of `pg_stat_activity` for postgrest-lite's connections, as `state|query` lines.
fn backends(pg: &PgCluster) -> Vec<String> {
    pg.psql(
        "\\pset format unaligned\n\\pset tuples_only on\n\
         select state || '|' || query from pg_stat_activity \
         where application_name = 'postgrest-lite' order by pid;",
    )
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}

/// A client that sends a request line and then one header byte every 200 ms (slowloris) is
/// disconnected once `server-header-read-timeout` has passed, while others are served.
#[test]
fn slowloris_client_is_dropped() {
    let Some(pg) = cluster_with_slow_view(0.0) else {
        return;
    };
    let server = start_with(&pg, "server-header-read-timeout = 1\n");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let t0 = Instant::now();
    stream
        .write_all(b"GET /todos HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write request line");
    let mut closed_after = None;
    let mut buf = [0u8; 1024];
    while t0.elapsed() < Duration::from_secs(8) {
        if stream.write_all(b"a").is_err() {
            closed_after = Some(t0.elapsed());
            break;
        }
        match stream.read(&mut buf) {
            Ok(_) => {
                // EOF, or an error response followed by the close: either way it was dropped.
                closed_after = Some(t0.elapsed());
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(t0.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "a client trickling header bytes was still connected after 8 s (header-read timeout 1 s)\n{}",
            server.stderr()
        )
    });
    eprintln!("slowloris client dropped after {closed_after:?} (server-header-read-timeout = 1)");
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(3),
        "dropped after {closed_after:?}, expected about 1 s"
    );
    assert_eq!(get(server.port, "/todos").body, TUTORIAL_BODY);
}

/// A statement running longer than `db-statement-timeout` is stopped by PostgreSQL; the client
/// gets PostgREST's error for it (SQLSTATE 57014, HTTP 500) and the single pooled connection
/// keeps working.
#[test]
fn statement_timeout_stops_long_queries() {
    let Some(pg) = cluster_with_slow_view(3.0) else {
        return;
    };
    let server = start_with(&pg, "db-pool = 1\ndb-statement-timeout = 0.5\n");
    let t0 = Instant::now();
    let r = get(server.port, "/slow");
    let took = t0.elapsed();
    eprintln!("GET /slow (pg_sleep 3 s, statement timeout 0.5 s) answered in {took:?}");
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(
        r.body,
        r#"{"code":"57014","details":null,"hint":null,"message":"canceling statement due to statement timeout"}"#
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    for _ in 0..3 {
        assert_eq!(get(server.port, "/todos").body, TUTORIAL_BODY);
    }
    let rows = backends(&pg);
    assert_eq!(rows.len(), 1, "db-pool = 1 but: {rows:?}");
    assert!(rows[0].starts_with("idle|"), "{rows:?}");
}

/// A client that hangs up while its query runs: the query is cancelled and its connection
/// discarded (not returned to the pool busy or inside the transaction), so the next request
/// on the one-connection pool is served at once.
#[test]
fn abandoned_request_discards_its_connection() {
    let Some(pg) = cluster_with_slow_view(5.0) else {
        return;
    };
    let server = start_with(&pg, "db-pool = 1\n");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send request");
    // Wait until the sleep runs, then hang up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let running_slow = |b: &String| b.starts_with("active|") && b.contains("\"slow\"");
    while !backends(&pg).iter().any(running_slow) {
        assert!(Instant::now() < deadline, "the slow query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    stream.shutdown(Shutdown::Both).expect("hang up");
    drop(stream);

    let t0 = Instant::now();
    let r = get(server.port, "/todos");
    let took = t0.elapsed();
    eprintln!("GET /todos right after a client abandoned GET /slow (5 s): {took:?}");
    assert_eq!(r.body, TUTORIAL_BODY);
    assert!(
        took < Duration::from_secs(2),
        "the next request waited {took:?}: the abandoned connection went back to the pool"
    );
    // No postgrest-lite backend is left sleeping or idle in a transaction.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let rows = backends(&pg);
        let stale: Vec<_> = rows
            .iter()
            .filter(|b| running_slow(b) || b.starts_with("idle in transaction"))
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "abandoned work still on the server: {stale:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.stderr();
    assert!(log.contains("discarded"), "{log}");
}

/// With `server-request-timeout`, a request that takes too long as a whole is answered 504
/// and its query is cancelled.
#[test]
fn request_timeout_cancels_the_query() {
    let Some(pg) = cluster_with_slow_view(5.0) else {
        return;
    };
    let server = start_with(
        &pg,
        "db-pool = 1\ndb-statement-timeout = 0\nserver-request-timeout = 1\n",
    );
    let t0 = Instant::now();
    let r = get(server.port, "/slow");
    let took = t0.elapsed();
    eprintln!(
        "GET /slow (5 s) with server-request-timeout = 1: {} after {took:?}",
        r.status
    );
    assert_eq!(r.status, 504, "{r:?}");
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON error body");
    assert_eq!(body["code"], "57014", "{}", r.body);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let t1 = Instant::now();
    assert_eq!(get(server.port, "/todos").body, TUTORIAL_BODY);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
}

/// Every value of a request reaches PostgreSQL as a bound parameter: with `log_statement =
/// all`, hostile values show up only in the `parameters:` detail lines, never in statement
/// text; the table survives; bodies of write requests are never read into SQL at all.
#[test]
fn values_are_bound_parameters_never_sql_text() {
    let Some(pg) = cluster_with_slow_view(0.0) else {
        return;
    };
    pg.psql("alter system set log_statement = 'all';\nselect pg_reload_conf();");
    let server = start_with(&pg, "");
    let port = server.port;
    let hostile = "x'; drop table api.todos; -- HOSTILE";
    let enc = "x'%3B%20drop%20table%20api.todos%3B%20--%20HOSTILE";
    for (path, status) in [
        (format!("/todos?task=eq.{enc}"), 200),
        (format!("/todos?task=neq.{enc}&id=eq.1"), 200),
        (format!("/todos?task=like.*{enc}*"), 200),
        (format!("/todos?task=in.(%22{enc}%22,{enc}2)"), 200),
        (format!("/todos?task=match.{enc}"), 200),
        (format!("/todos?id=eq.1{enc}"), 400),
        (format!("/todos?due=gt.{enc}"), 400),
    ] {
        let r = get(port, &path);
        assert_eq!(r.status, status, "{path}: {r:?}");
        if status == 200 {
            assert!(r.body == "[]" || path.contains("neq"), "{path}: {}", r.body);
        }
    }
    let r = try_request(
        port,
        "GET",
        &format!("/todos?task=eq.{enc}"),
        &[("Accept-Profile", "api")],
    )
    .expect("GET");
    assert_eq!(r.status, 200);
    // Write requests with hostile bodies: refused before the body could reach SQL.
    for method in ["POST", "PATCH", "PUT", "DELETE"] {
        let body = format!("{{\"task\":\"{}\"}}", hostile.replace('\'', "\\'"));
        let len = body.len().to_string();
        let r = raw_with_body(port, method, "/todos", &body, &len);
        assert!(r.contains(" 405 "), "{method}: {r}");
        assert!(r.contains("PGRST117"), "{method}: {r}");
    }
    assert_eq!(
        get(port, "/todos?order=id").body,
        TUTORIAL_BODY,
        "table intact"
    );

    // The server log of PostgreSQL: the marker only in parameter details.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = pg.log();
        if log.matches("HOSTILE").count() >= 7 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("HOSTILE")).collect();
    assert!(
        lines.len() >= 7,
        "log_statement = all logged too few hostile values: {lines:#?}"
    );
    for line in &lines {
        assert!(
            line.contains("DETAIL:  parameters:")
                || line.contains("invalid input syntax")
                || line.contains("CONTEXT:  unnamed portal parameter"),
            "a request value reached PostgreSQL as SQL text:\n{line}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("execute <unnamed>:")
                && l.contains("\"api\".\"todos\".\"task\" = $1")),
        "no parameterised statement in the log:\n{log}"
    );
}

fn raw_with_body(port: u16, method: &str, path: &str, body: &str, len: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A bearer token is answered as PostgREST without `jwt-secret` answers it (500 `PGRST300`
/// "Server lacks JWT secret"), never served as the anonymous role; other `Authorization`
/// schemes and an empty token are anonymous in PostgREST too.
#[test]
fn bearer_tokens_are_refused_like_postgrest() {
    let Some(pg) = cluster_with_slow_view(0.0) else {
        return;
    };
    let server = start_with(&pg, "");
    let port = server.port;
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoidG9kb191c2VyIn0.c2lnbmF0dXJl";
    for (value, path) in [
        (format!("Bearer {token}"), "/todos"),
        (format!("bearer {token}"), "/todos"),
        (format!("Bearer {token}"), "/"),
        (format!("Bearer {token}"), "/nope/deeper"),
        ("Bearer x".to_string(), "/todos?id=eq.1"),
    ] {
        let r = try_request(port, "GET", path, &[("Authorization", &value)]).expect("GET");
        assert_eq!(r.status, 500, "{value} {path}: {r:?}");
        assert_eq!(
            r.body,
            r#"{"code":"PGRST300","details":null,"hint":null,"message":"Server lacks JWT secret"}"#
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    for value in ["Basic dXNlcjpwYXNz", "Bearer ", "Token abc"] {
        let r = try_request(port, "GET", "/todos", &[("Authorization", value)]).expect("GET");
        assert_eq!((r.status, r.body.as_str()), (200, TUTORIAL_BODY), "{value}");
    }
}

/// `jwt-secret` in the config: postgrest-lite cannot verify tokens, so it refuses to start
/// (exit 1, naming the setting and the file) instead of serving every token as anonymous.
#[test]
fn jwt_secret_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("tutorial.conf");
    std::fs::write(
        &conf,
        format!(
            "{}jwt-secret = \"reallyreallyreallyreallyverysafe\"\n",
            common::tutorial_conf(free_port(), free_port())
        ),
    )
    .expect("write config");
    for args in [
        vec![conf.as_os_str()],
        vec!["--dump-config".as_ref(), conf.as_os_str()],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postgrest-lite");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postgrest-lite {args:?} kept running with jwt-secret set");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("jwt-secret"), "{err}");
        assert!(err.contains(&conf.display().to_string()), "{err}");
        assert!(!err.contains("reallyreally"), "secret leaked: {err}");
    }
}
