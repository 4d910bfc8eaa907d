//! postgrest-lite against a real PostgreSQL (a throwaway cluster per test), following the
//! PostgREST tutorial: setup.sql verbatim, then HTTP requests over raw TCP.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_port, get, pg_or_skip, try_request, PgCluster, Server, SETUP_SQL};

const BIN: &str = env!("CARGO_BIN_EXE_postgrest-lite");

/// The body the guide shows for `curl http://server:3000/todos` (json_agg's formatting).
const TUTORIAL_BODY: &str = "[{\"id\":1,\"done\":false,\"task\":\"finish tutorial 0\",\"due\":null}, \n {\"id\":2,\"done\":false,\"task\":\"pat self on back\",\"due\":null}]";

fn start(pg: &PgCluster) -> Server {
    let port = free_port();
    let server = Server::spawn(Path::new(BIN), &common::tutorial_conf(pg.port, port), port);
    server.wait_for("/todos", Duration::from_secs(30), |r| r.status != 503);
    server
}

fn ids(body: &str) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(|row| row["id"].as_i64().expect("id"))
        .collect()
}

#[test]
fn tutorial_end_to_end() {
    let Some(bin) = pg_or_skip("tutorial_end_to_end") else {
        return;
    };
    let pg = PgCluster::start_new(&bin);
    pg.psql(SETUP_SQL);
    let server = start(&pg);
    let port = server.port;

    // The guide's curl: byte-identical body and PostgREST's headers.
    let r = get(port, "/todos");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, TUTORIAL_BODY);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("content-range"), Some("0-1/*"));
    insta::assert_snapshot!("todos", r.summary());

    // Filters.
    let cases: &[(&str, &[i64])] = &[
        ("/todos?id=eq.1", &[1]),
        ("/todos?id=neq.1", &[2]),
        ("/todos?id=gt.1", &[2]),
        ("/todos?id=gte.1", &[1, 2]),
        ("/todos?id=lt.2", &[1]),
        ("/todos?id=lte.2", &[1, 2]),
        ("/todos?task=like.*tutorial*", &[1]),
        ("/todos?task=like.pat%25", &[2]),
        ("/todos?task=ilike.*BACK", &[2]),
        ("/todos?due=is.null", &[1, 2]),
        ("/todos?due=is.not_null", &[]),
        ("/todos?done=is.false", &[1, 2]),
        ("/todos?done=is.true", &[]),
        ("/todos?id=in.(2,3)", &[2]),
        ("/todos?id=in.()", &[]),
        ("/todos?id=not.eq.1", &[2]),
        ("/todos?id=not.in.(1)", &[2]),
        ("/todos?task=eq.pat%20self%20on%20back", &[2]),
        ("/todos?task=eq.pat+self+on+back", &[2]),
        ("/todos?task=in.(%22pat%20self%20on%20back%22,x)", &[2]),
        (
            "/todos?task=in.(%22a,b%22,%22finish%20tutorial%200%22)",
            &[1],
        ),
        ("/todos?id=gt.0&id=lt.2", &[1]),
        // Ordering, limit, offset.
        ("/todos?order=id.desc", &[2, 1]),
        ("/todos?order=id.asc", &[1, 2]),
        ("/todos?order=done,id.desc", &[2, 1]),
        ("/todos?limit=1", &[1]),
        ("/todos?offset=1", &[2]),
        ("/todos?order=id.desc&limit=1&offset=1", &[1]),
        ("/todos?limit=0", &[]),
        ("/todos?offset=5", &[]),
    ];
    for (path, want) in cases {
        let r = get(port, path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(ids(&r.body), *want, "{path}: {}", r.body);
    }

    // select= keeps the requested columns in order; aliases rename.
    let r = get(port, "/todos?select=task,id&id=eq.2");
    assert_eq!(r.body, "[{\"task\":\"pat self on back\",\"id\":2}]");
    let r = get(port, "/todos?select=n:id&order=id.desc");
    assert_eq!(r.body, "[{\"n\":2}, \n {\"n\":1}]");
    let r = get(port, "/todos?order=id.desc&limit=1&offset=1");
    assert_eq!(r.header("content-range"), Some("1-1/*"));
    let r = get(port, "/todos?id=eq.42");
    assert_eq!(r.body, "[]");
    assert_eq!(r.header("content-range"), Some("*/*"));
    insta::assert_snapshot!("empty", r.summary());
    let r = try_request(port, "HEAD", "/todos", &[]).expect("HEAD /todos");
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    // Timestamps and nulls ordering (a row with a due date, added by the superuser).
    pg.psql("insert into api.todos (task, due) values ('with due', '2024-01-02T03:04:05Z');");
    assert_eq!(
        ids(&get(port, "/todos?order=due.desc.nullslast,id").body),
        [3, 1, 2]
    );
    assert_eq!(
        ids(&get(port, "/todos?order=due.asc.nullsfirst,id").body),
        [1, 2, 3]
    );
    assert_eq!(ids(&get(port, "/todos?due=gt.2024-01-01").body), [3]);
    let r = get(port, "/todos?select=due&id=eq.3");
    assert!(r.body.starts_with("[{\"due\":\"2024-01-"), "{}", r.body);

    // SQL injection attempts are data, not SQL.
    let r = get(port, "/todos?id=eq.1';drop%20table%20api.todos;--");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("\"code\":\"22P02\""), "{}", r.body);
    let r = get(port, "/todos?task=eq.x'%20or%20'1'='1");
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = get(port, "/todos?task=eq.x\\'%20or%201=1;--");
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = get(port, "/todos?select=id,task%20from%20api.todos;--");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("\"code\":\"42703\""), "{}", r.body);
    let r = get(port, "/todos?order=id;drop%20table%20api.todos");
    assert_eq!(r.status, 400, "{r:?}");
    let r = get(port, "/todos%22;drop%20table%20api.todos;--");
    assert_eq!(r.status, 404, "{r:?}");
    let r = get(port, "/todos?limit=1;drop%20table%20api.todos");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        ids(&get(port, "/todos?order=id").body),
        [1, 2, 3],
        "table intact"
    );

    // Views, awkward identifiers, values with quotes/backslashes/unicode, a second schema.
    pg.psql(
        r#"create view api.titles as select id, upper(task) as "Title" from api.todos;
           grant select on api.titles to web_anon;
           create table api."we""ird name" ("Col ""x""" text, "select" int);
           insert into api."we""ird name" values ('it''s', 1), ('back\slash', 2), ('été', 3);
           grant select on api."we""ird name" to web_anon;
           create schema other;
           create table other.todos (id int, note text);
           insert into other.todos values (7, 'from other');
           grant usage on schema other to web_anon;
           grant select on other.todos to web_anon;"#,
    );
    let r = get(port, "/titles?select=Title&id=eq.1");
    assert_eq!(r.body, "[{\"Title\":\"FINISH TUTORIAL 0\"}]");
    let weird = "/we%22ird%20name";
    let r = get(
        port,
        &format!("{weird}?select=select&order=select.desc&limit=1"),
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "[{\"select\":3}]"),
        "{r:?}"
    );
    let col = "Col%20%22x%22";
    for (value, want) in [("it's", 1), ("back%5Cslash", 2), ("%C3%A9t%C3%A9", 3)] {
        let r = get(port, &format!("{weird}?select=select&{col}=eq.{value}"));
        assert_eq!(r.body, format!("[{{\"select\":{want}}}]"), "{value}: {r:?}");
    }
    let r = get(port, &format!("{weird}?select=select&{col}=like.*'*"));
    assert_eq!(r.body, "[{\"select\":1}]");
    let r = get(
        port,
        &format!("{weird}?select=select&{col}=in.(%22it's%22,back%5Cslash)"),
    );
    assert_eq!(r.body, "[{\"select\":1}, \n {\"select\":2}]");
    // db-schemas has one schema here: `other` is not exposed.
    let r = try_request(port, "GET", "/todos", &[("Accept-Profile", "other")]).expect("GET");
    assert_eq!(r.status, 406, "{r:?}");

    // Errors in PostgREST's shape and statuses.
    let r = get(port, "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"code":"42P01","details":null,"hint":null,"message":"relation \"api.nope\" does not exist"}"#
    );
    insta::assert_snapshot!("unknown_relation", r.summary());
    let r = get(port, "/todos?id=xx.1");
    assert_eq!(r.status, 400);
    insta::assert_snapshot!("bad_filter", r.summary());
    let r = get(port, "/todos?order=id.sideways");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("PGRST100"), "{}", r.body);
    let r = get(port, "/todos?nope=eq.1");
    assert_eq!(r.status, 400);
    insta::assert_snapshot!("unknown_column", r.summary());
    let r = get(port, "/todos?id=eq.abc");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("22P02"), "{}", r.body);
    let r = try_request(port, "POST", "/todos", &[("Content-Length", "0")]).expect("POST");
    assert_eq!(r.status, 405);
    assert!(r.body.contains("PGRST117"), "{}", r.body);
    let r = get(port, "/a/b");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("PGRST125"), "{}", r.body);
    let r = try_request(port, "GET", "/todos", &[("Accept-Profile", "nope")]).expect("GET");
    assert_eq!(r.status, 406);
    assert!(r.body.contains("PGRST106"), "{}", r.body);

    // GET /: a minimal OpenAPI listing of what the anonymous role can read.
    let r = get(port, "/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openapi+json; charset=utf-8")
    );
    let doc: serde_json::Value = serde_json::from_str(&r.body).expect("openapi JSON");
    assert!(doc["paths"]["/todos"]["get"].is_object(), "{}", r.body);

    // Without its grant the anonymous role gets 401 in PostgREST's shape.
    pg.psql("revoke select on api.todos from web_anon;");
    let r = get(port, "/todos");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.body,
        r#"{"code":"42501","details":null,"hint":null,"message":"permission denied for table todos"}"#
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    insta::assert_snapshot!("permission_denied", r.summary());
    let r = get(port, "/");
    assert!(
        !r.body.contains("/todos"),
        "revoked table still listed: {}",
        r.body
    );

    // Two exposed schemas: the first is the default, Accept-Profile picks another.
    let port2 = free_port();
    let conf = common::tutorial_conf(pg.port, port2)
        .replace("db-schemas = \"api\"", "db-schemas = \"api, other\"");
    let s2 = Server::spawn(Path::new(BIN), &conf, port2);
    s2.wait_for("/", Duration::from_secs(30), |r| r.status == 200);
    let r = try_request(port2, "GET", "/todos", &[("Accept-Profile", "other")]).expect("GET");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "[{\"id\":7,\"note\":\"from other\"}]")
    );
    assert_eq!(get(port2, "/todos").status, 401, "default schema is api");

    // The request log names the server and the requests.
    let log = server.stderr();
    assert!(
        log.contains("postgrest-lite listening on 127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains("read config file"), "{log}");
    assert!(log.contains("\"GET /todos HTTP/1.1\" 200"), "{log}");
    assert!(
        !log.contains("mysecretpassword"),
        "password leaked into log: {log}"
    );
}

/// Started before PostgreSQL (as a systemd unit right after postgresql.service would be) and
/// installed under the name `postgrest`: answers 503 while the database is missing, connects
/// once it is up, and survives a database restart.
#[test]
fn starts_before_postgres_and_reconnects() {
    let Some(bin) = pg_or_skip("starts_before_postgres_and_reconnects") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let renamed = dir.path().join("postgrest");
    std::fs::copy(BIN, &renamed).expect("copy the binary as `postgrest`");

    let mut pg = PgCluster::init(&bin, free_port());
    let port = free_port();
    let mut server = Server::spawn(&renamed, &common::tutorial_conf(pg.port, port), port);
    let r = server.wait_for("/todos", Duration::from_secs(30), |_| true);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("PGRST000"), "{}", r.body);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.stderr().contains("database not reachable"),
        "{}",
        server.stderr()
    );

    pg.start();
    pg.psql(SETUP_SQL);
    let r = server.wait_for("/todos", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(r.body, TUTORIAL_BODY);
    assert!(
        server.stderr().contains("connected to"),
        "{}",
        server.stderr()
    );

    // Database restart: requests fail with 503 while it is down, then work again.
    pg.stop();
    let r = get(port, "/todos");
    assert_eq!(r.status, 503, "{r:?}");
    pg.start();
    let r = server.wait_for("/todos", Duration::from_secs(30), |r| r.status == 200);
    assert_eq!(r.body, TUTORIAL_BODY);

    let status = server.stop().expect("server exited after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Command-line behaviour that needs no database.
#[test]
fn command_line() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("postgrest-lite "));

    let out = std::process::Command::new(BIN).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));

    let out = std::process::Command::new(BIN)
        .arg("/nonexistent/tutorial.conf")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tutorial.conf"), "{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("t.conf");
    std::fs::write(&conf, common::tutorial_conf(5432, 3000)).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("--dump-config")
        .arg(&conf)
        .output()
        .expect("run");
    assert!(out.status.success());
    insta::assert_snapshot!("dump_config", String::from_utf8_lossy(&out.stdout));
}

/// Measured numbers for the report: time from spawn to the first 200, and sequential request
/// latency over keep-alive-less raw TCP (bounds are generous; the numbers are printed).
#[test]
fn startup_and_latency_numbers() {
    let Some(bin) = pg_or_skip("startup_and_latency_numbers") else {
        return;
    };
    let pg = PgCluster::start_new(&bin);
    pg.psql(SETUP_SQL);
    let port = free_port();
    let t0 = std::time::Instant::now();
    let server = Server::spawn(Path::new(BIN), &common::tutorial_conf(pg.port, port), port);
    server.wait_for("/todos", Duration::from_secs(30), |r| r.status == 200);
    let startup = t0.elapsed();
    let n = 200;
    let t1 = std::time::Instant::now();
    for _ in 0..n {
        assert_eq!(get(port, "/todos").body, TUTORIAL_BODY);
    }
    let per_request = t1.elapsed() / n;
    eprintln!(
        "postgrest-lite numbers: spawn-to-first-200 {startup:?}, GET /todos {per_request:?} per request (sequential, {n} requests)\n--- server stderr (head) ---\n{}",
        server.stderr().lines().take(6).collect::<Vec<_>>().join("\n")
    );
    assert!(
        startup < Duration::from_secs(10),
        "startup took {startup:?}"
    );
    assert!(per_request < Duration::from_millis(100), "{per_request:?}");
}
