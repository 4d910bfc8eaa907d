//! The PostgREST tutorial of the NixOS integration-testing guide as a two-machine test.
//!
//! `server` runs PostgreSQL (Debian's package) with the tutorial's `setup.sql` run once as the
//! database superuser after Postgres is up, and a `postgrest` service (the tutorial's
//! `tutorial.conf`) as the system user `authenticator` in group `database`; the firewall opens only
//! the PostgREST port. `client` has curl. The script is the guide's: start everything, curl the
//! todos from the client until it works, compare the JSON with the tutorial's two rows. Further
//! subtests cut the network, crash the server, and revoke the anonymous role's grant.
//!
//! Shared constants live in one [`Tutorial`] value used by the server's configuration, both
//! templates and the script (which reads it back from the server node, like the guide's
//! `testScript = { nodes }: …`).

use std::path::PathBuf;

use machinist::{
    presets, template_text, vars, FileSpec, FirstBootScript, GroupSpec, NodeConfig, ScriptResult,
    ServiceSpec, Test, TestRun, UserSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::postgrest_binary::PostgrestBinary;

/// The tutorial's shared constants (the guide's `tutorial.user` and `tutorial.port` options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tutorial {
    /// The database login role and system user PostgREST runs as.
    pub user: String,
    /// The port PostgREST listens on.
    pub port: u16,
}

impl Default for Tutorial {
    fn default() -> Self {
        Tutorial {
            user: "authenticator".into(),
            port: 3000,
        }
    }
}

/// The name of the node option holding the [`Tutorial`] (`nodes.server.config.tutorial.port`).
pub const TUTORIAL_OPTION: &str = "tutorial";

/// The PostgreSQL major version of the server image (Debian 12's).
const PG_MAJOR: u32 = 15;

/// Where its programs are (the direct paths, not Debian's perl `pg_wrapper`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The server node's option that says which PostgREST it runs (a sentence, for the log).
pub const POSTGREST_OPTION: &str = "postgrest";

/// The tutorial's database setup (`tests/postgrest/setup.sql`, a template using `@user@`),
/// embedded so that an installed `machinist` needs no source tree.
pub const SETUP_SQL: &str = include_str!("../postgrest/setup.sql");
/// PostgREST's configuration (`tests/postgrest/tutorial.conf`, using `@user@` and `@port@`).
pub const TUTORIAL_CONF: &str = include_str!("../postgrest/tutorial.conf");

/// Where the template files live in the source tree (`tests/postgrest/`).
pub fn fixture_dir() -> PathBuf {
    crate::postgrest_binary::workspace_root().join("tests/postgrest")
}

/// The guide's `script.py` files, for `machinist run postgrest --script …`.
pub fn guide_scripts() -> [PathBuf; 2] {
    [
        fixture_dir().join("script.py"),
        fixture_dir().join("script-final.py"),
    ]
}

/// Everything that goes wrong before a VM boots.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// A template did not render (missing or unused variable).
    #[error(transparent)]
    Template(#[from] machinist::TemplateError),
}

/// The server: PostgreSQL + PostgREST, as the guide's `server.nix`.
pub fn server_config(
    tutorial: &Tutorial,
    postgrest: &PostgrestBinary,
) -> Result<NodeConfig, DeclareError> {
    let dir = fixture_dir();
    let name = |file: &str| dir.join(file).display().to_string();
    let vars = vars! { "user" => &tutorial.user, "port" => tutorial.port };
    // setup.sql only uses @user@; tutorial.conf uses both. Strict rendering rejects an unused
    // variable, so each template gets exactly the variables it uses.
    let setup = template_text(
        "/etc/postgrest/setup.sql",
        &name("setup.sql"),
        SETUP_SQL,
        &vars! { "user" => &tutorial.user },
    )?;
    let conf = template_text(
        "/etc/postgrest/tutorial.conf",
        &name("tutorial.conf"),
        TUTORIAL_CONF,
        &vars,
    )?;
    // PostgreSQL 15 (Debian 12's) run directly as `postgresql.service`, as NixOS'
    // `services.postgresql` does, without Debian's perl `pg_ctlcluster` wrapper.
    Ok(presets::postgresql_direct(NodeConfig::new(), PG_MAJOR)
        .option(TUTORIAL_OPTION, tutorial)
        .option(POSTGREST_OPTION, postgrest.to_string())
        .open_tcp_port(u32::from(tutorial.port))
        .group(GroupSpec::new("database"))
        .user(UserSpec::new(&tutorial.user).group("database"))
        .file(setup)
        .file(conf.owner("root", "database").mode(0o640))
        .file(FileSpec::from_host("/usr/local/bin/postgrest", &postgrest.path).mode(0o755))
        // NixOS `services.postgresql.initialScript`: once, as the superuser, after Postgres is up
        // and before PostgREST starts.
        .first_boot(
            FirstBootScript::new(
                "postgres-initial-script",
                format!(
                    "for _ in $(seq 600); do {PG_BIN}/pg_isready -q && break; sleep 0.1; done\n\
                     {PG_BIN}/psql -v ON_ERROR_STOP=1 --quiet -f /etc/postgrest/setup.sql\n"
                ),
            )
            .user("postgres")
            .after("postgresql.service")
            .before("postgrest.service"),
        )
        .service(
            ServiceSpec::new(
                "postgrest",
                "/usr/local/bin/postgrest /etc/postgrest/tutorial.conf",
            )
            .description("PostgREST (tutorial)")
            .after("postgresql.service")
            .wants("postgresql.service")
            .wanted_by(["multi-user.target"])
            .user(&tutorial.user)
            .group("database"),
        ))
}

/// The client: curl, as the guide's `client.nix`.
pub fn client_config() -> NodeConfig {
    NodeConfig::new().package("curl")
}

/// The two nodes, without a script (the `machinist` command attaches a Python script or the REPL).
pub fn declare(
    tutorial: &Tutorial,
    postgrest: &PostgrestBinary,
) -> Result<Test<'static>, DeclareError> {
    Ok(Test::new("postgrest")
        .node("server", server_config(tutorial, postgrest)?)
        .node("client", client_config()))
}

/// The two nodes with the built-in script.
pub fn test(
    tutorial: &Tutorial,
    postgrest: &PostgrestBinary,
) -> Result<Test<'static>, DeclareError> {
    Ok(declare(tutorial, postgrest)?.script(script))
}

/// The tutorial's two rows.
pub fn expected_todos() -> Value {
    json!([
        {"id": 1, "done": false, "task": "finish tutorial 0", "due": null},
        {"id": 2, "done": false, "task": "pat self on back", "due": null},
    ])
}

fn check(cond: bool, what: impl FnOnce() -> String) -> machinist::Result<()> {
    if cond {
        Ok(())
    } else {
        Err(machinist::Error::Script(what()))
    }
}

fn parse_json(machine: &str, text: &str) -> machinist::Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        machinist::Error::Script(format!("{machine}: output is not JSON ({e}): {text:?}"))
    })
}

fn psql(sql: &str) -> String {
    format!("runuser -u postgres -- {PG_BIN}/psql -v ON_ERROR_STOP=1 --quiet --no-align --tuples-only -c \"{sql}\"")
}

/// The built-in script: the guide's assertion, then the subtests that make it worth trusting.
pub fn script(t: &TestRun) -> ScriptResult {
    let tutorial: Tutorial = t.node("server").option(TUTORIAL_OPTION)?;
    let (server, client) = (t.machine("server"), t.machine("client"));
    let url = format!("http://server:{}/todos", tutorial.port);
    let curl = format!("curl --fail --silent {url}");
    let which: String = t.node("server").option(POSTGREST_OPTION)?;
    t.log(&format!("PostgREST on the server: {which}"));

    t.start_all()?;
    t.subtest("the guide's script: curl the todos from the client", || {
        let actual = parse_json("client", &client.wait_until_succeeds(&curl, 55)?)?;
        check(actual == expected_todos(), || {
            format!("expected {}, got {actual}", expected_todos())
        })
    })?;

    t.subtest(
        "block() on the server cuts the client off, unblock() restores it",
        || {
            server.block()?;
            // curl's exit code 28 is "operation timed out": the packets vanish (a refused
            // connection, 7, would mean something else answered).
            let (code, _) = client.execute(&format!("curl --fail --silent --max-time 2 {url}"))?;
            if code != 28 {
                return Err(machinist::Error::Script(format!(
                    "curl to the blocked server exited with {code}, not 28 (timed out)"
                )));
            }
            server.unblock()?;
            client.wait_until_succeeds(&curl, 30)?;
            Ok(())
        },
    )?;

    t.subtest(
        "a row inserted with psql survives crash() and a restart",
        || {
            server.succeed(psql(
                "insert into api.todos (task) values ('survive the crash')",
            ))?;
            server.crash()?;
            server.start()?;
            let rows = parse_json("client", &client.wait_until_succeeds(&curl, 120)?)?;
            let tasks: Vec<&str> = rows
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["task"].as_str())
                .collect();
            check(
                tasks == ["finish tutorial 0", "pat self on back", "survive the crash"],
                || format!("rows after the crash: {rows}"),
            )
        },
    )?;

    t.subtest(
        "the anonymous role without its grant gets PostgREST's permission error",
        || {
            server.succeed(psql("revoke select on api.todos from web_anon"))?;
            let out = client.succeed(format!(
                "curl --silent --write-out '\\n%{{http_code}}' {url}"
            ))?;
            let (body, status) = out.rsplit_once('\n').unwrap_or((&out, ""));
            check(status == "401" || status == "403", || {
                format!("expected HTTP 401/403, got {status:?}: {body}")
            })?;
            let err = parse_json("client", body)?;
            for key in ["code", "message", "details", "hint"] {
                check(err.get(key).is_some(), || {
                    format!("error body lacks {key:?}: {body}")
                })?;
            }
            check(err["code"] == "42501", || {
                format!("expected code 42501, got {body}")
            })?;
            server.succeed(psql("grant select on api.todos to web_anon"))?;
            client.wait_until_succeeds(&curl, 30)?;
            Ok(())
        },
    )?;
    Ok(())
}
