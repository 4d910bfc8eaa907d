//! `postgrest-lite <config-file>`: invoked exactly like PostgREST (also when installed as
//! `postgrest`).

use std::path::Path;
use std::process::ExitCode;

use postgrest_lite::config::Config;

const USAGE: &str = "\
Usage: postgrest-lite FILENAME
       postgrest-lite --dump-config FILENAME
       postgrest-lite --help | --version | --example

postgrest-lite: a read-only PostgREST-compatible server (tutorial subset).
FILENAME is a PostgREST configuration file (db-uri, db-schemas, db-anon-role,
server-host, server-port, db-pool; postgrest-lite's own db-statement-timeout,
server-header-read-timeout, server-request-timeout). jwt-secret is refused:
JWT is not implemented.";

const EXAMPLE: &str = "\
## postgrest-lite configuration (PostgREST syntax)
db-uri = \"postgres://authenticator:mysecretpassword@localhost:5432/postgres\"
db-schemas = \"api\"
db-anon-role = \"web_anon\"
# server-host = \"!4\"
server-port = 3000
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dump, file) = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ["--version" | "-v"] => {
            println!(
                "postgrest-lite {} (PostgREST-compatible subset, not PostgREST)",
                postgrest_lite::VERSION
            );
            return ExitCode::SUCCESS;
        }
        ["--example" | "-e"] => {
            print!("{EXAMPLE}");
            return ExitCode::SUCCESS;
        }
        ["--dump-config", file] => (true, file.to_string()),
        [file] if !file.starts_with('-') => (false, file.to_string()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(1);
        }
    };
    let path = Path::new(&file);
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postgrest-lite: {e}");
            return ExitCode::from(1);
        }
    };
    if dump {
        print!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    let path_shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    eprintln!(
        "postgrest-lite {} (PostgREST-compatible subset, not the real PostgREST) starting",
        postgrest_lite::VERSION
    );
    eprintln!(
        "postgrest-lite: read config file {}: db-uri = {:?}, db-schemas = {:?}, db-anon-role = {:?}, server-host = {:?}, server-port = {}, db-pool = {}, db-statement-timeout = {:?}, server-header-read-timeout = {:?}, server-request-timeout = {:?}",
        path_shown.display(),
        config.redacted_db_uri(),
        config.db_schemas.join(","),
        config.db_anon_role,
        config.server_host,
        config.server_port,
        config.db_pool,
        config.db_statement_timeout,
        config.server_header_read_timeout,
        config.server_request_timeout
    );
    for key in &config.ignored {
        if Config::is_known_postgrest_setting(key) {
            eprintln!("postgrest-lite: ignoring unsupported PostgREST setting {key}");
        } else {
            eprintln!("postgrest-lite: warning: unknown setting {key} (typo?) ignored");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postgrest-lite: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(postgrest_lite::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postgrest-lite: {e}");
            ExitCode::from(1)
        }
    }
}
