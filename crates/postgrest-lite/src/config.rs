//! PostgREST's configuration file format (the subset postgrest-lite understands).
//!
//! The format is the one PostgREST reads: one `key = value` per line, `#` starts a comment,
//! values are double-quoted strings (with `\"`, `\\`, `\n`, `\t` escapes and `$(VAR)`
//! environment interpolation, as PostgREST does), bare numbers, or bare `true`/`false`.
//! Example (the tutorial's `tutorial.conf`):
//!
//! ```ini
//! db-uri = "postgres://authenticator:mysecretpassword@localhost:5432/postgres"
//! db-schemas = "api"
//! db-anon-role = "web_anon"
//! server-port = 3000
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings PostgREST knows but postgrest-lite ignores (accepted silently).
const KNOWN_IGNORED: &[&str] = &[
    "admin-server-port",
    "app.settings",
    "db-channel",
    "db-channel-enabled",
    "db-config",
    "db-extra-search-path",
    "db-max-rows",
    "db-plan-enabled",
    "db-pool-acquisition-timeout",
    "db-pool-max-idletime",
    "db-pool-max-lifetime",
    "db-pre-config",
    "db-pre-request",
    "db-prepared-statements",
    "db-root-spec",
    "db-tx-end",
    "db-use-legacy-gucs",
    "jwt-aud",
    "jwt-role-claim-key",
    "jwt-secret-is-base64",
    "jwt-cache-max-lifetime",
    "log-level",
    "openapi-mode",
    "openapi-security-active",
    "openapi-server-proxy-uri",
    "raw-media-types",
    "server-cors-allowed-origins",
    "server-trace-header",
    "server-timing-enabled",
    "server-unix-socket",
    "server-unix-socket-mode",
];

/// The validated configuration postgrest-lite runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `db-uri`: libpq-style URI or key/value string used to connect as the authenticator.
    pub db_uri: String,
    /// `db-schemas` (or the older `db-schema`): exposed schemas; the first is the default.
    pub db_schemas: Vec<String>,
    /// `db-anon-role`: the role every request runs as (`SET LOCAL ROLE`).
    pub db_anon_role: String,
    /// `server-host`: PostgREST's host spec (`!4`, `*4`, `*`, `*6`, `!6`, an IP or a name).
    pub server_host: String,
    /// `server-port` (default 3000).
    pub server_port: u16,
    /// `db-pool` (default 10): maximum number of database connections.
    pub db_pool: usize,
    /// `db-statement-timeout` (postgrest-lite's own setting, seconds, default
    /// [`DEFAULT_STATEMENT_TIMEOUT`]; `0` means none): PostgreSQL's `statement_timeout` for every
    /// statement of a request, set with `set_config(…, true)` inside its transaction.
    pub db_statement_timeout: Duration,
    /// `server-header-read-timeout` (postgrest-lite's own setting, seconds, default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]): a client that has not sent a complete request head
    /// this long after it started one (or after connecting) is disconnected.
    pub server_header_read_timeout: Duration,
    /// `server-request-timeout` (postgrest-lite's own setting, seconds, default
    /// [`DEFAULT_REQUEST_TIMEOUT`]; `0` means none): a request not answered within this time
    /// gets a 504 and its database work is cancelled.
    pub server_request_timeout: Duration,
    /// Settings that were present but are not supported (reported in the startup log).
    pub ignored: Vec<String>,
}

/// Default of `db-statement-timeout`.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server-header-read-timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server-request-timeout` (above the statement timeout plus the pool's
/// acquisition timeout, so those answer first with their own errors).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source} (pass the path of a PostgREST config file)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not valid PostgREST config syntax.
    #[error("config file {path}, line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value of the wrong kind.
    #[error("config file {path}: invalid value for {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A required setting is missing.
    #[error("config file {path}: missing required setting {key} (e.g. {example})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: &'static str,
        /// An example line to add.
        example: &'static str,
    },
    /// A PostgREST setting postgrest-lite cannot honour safely (e.g. `jwt-secret`).
    #[error("config file {path}: {key} is set, but {message}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: &'static str,
        /// Why, and what to do instead.
        message: &'static str,
    },
}

/// One raw value from the file: the decoded text and whether it was quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue {
    /// Decoded value text.
    pub text: String,
    /// True when the value was a double-quoted string.
    pub quoted: bool,
}

/// Parses the `key = value` lines of a config file into a map (later keys win).
///
/// `env` resolves `$(VAR)` interpolations inside quoted strings (unknown variables become "").
pub fn parse_pairs(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, RawValue>, ConfigError> {
    let mut out = BTreeMap::new();
    for (idx, line) in text.lines().enumerate() {
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: idx + 1,
            message,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = trimmed.split_once('=') else {
            return Err(syntax(format!("expected `key = value`, found {trimmed:?}")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(syntax(format!("invalid setting name {key:?}")));
        }
        let value = parse_value(rest.trim(), env).map_err(syntax)?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// Parses one value: a quoted string, or a bare token, followed by an optional comment.
fn parse_value(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RawValue, String> {
    if let Some(body) = s.strip_prefix('"') {
        let mut text = String::new();
        let mut chars = body.chars();
        loop {
            match chars.next() {
                None => return Err("unterminated string (missing closing \")".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => text.push('\n'),
                    Some('t') => text.push('\t'),
                    Some('r') => text.push('\r'),
                    Some(c @ ('"' | '\\' | '$')) => text.push(c),
                    Some(c) => return Err(format!("unknown escape \\{c} in string")),
                    None => return Err("unterminated string (missing closing \")".into()),
                },
                Some('$') if chars.as_str().starts_with('(') => {
                    let rest = &chars.as_str()[1..];
                    let Some(end) = rest.find(')') else {
                        return Err("unterminated $(VAR) interpolation".into());
                    };
                    text.push_str(&env(&rest[..end]).unwrap_or_default());
                    chars = rest[end + 1..].chars();
                }
                Some(c) => text.push(c),
            }
        }
        let tail = chars.as_str().trim();
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(format!("unexpected text after the closing quote: {tail:?}"));
        }
        Ok(RawValue { text, quoted: true })
    } else {
        let token = s.split('#').next().unwrap_or("").trim();
        if token.is_empty() {
            return Err("missing value after `=`".into());
        }
        if token.contains(char::is_whitespace) {
            return Err(format!(
                "bare value {token:?} contains spaces (put strings in double quotes)"
            ));
        }
        Ok(RawValue {
            text: token.to_string(),
            quoted: false,
        })
    }
}

impl Config {
    /// Reads and validates a PostgREST config file, interpolating `$(VAR)` from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Validates config text (`path` is only used in error messages).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut pairs = parse_pairs(text, path, env)?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let db_uri = pairs
            .remove("db-uri")
            .map(|v| v.text)
            .unwrap_or_else(|| "postgresql://".to_string());
        let schemas_raw = match (pairs.remove("db-schemas"), pairs.remove("db-schema")) {
            (Some(v), _) | (None, Some(v)) => v.text,
            (None, None) => "public".to_string(),
        };
        let db_schemas: Vec<String> = schemas_raw
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if db_schemas.is_empty() {
            return Err(invalid(
                "db-schemas",
                "no schema listed (e.g. db-schemas = \"api\")".into(),
            ));
        }
        let db_anon_role = match pairs.remove("db-anon-role") {
            Some(v) if !v.text.is_empty() => v.text,
            _ => {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                    key: "db-anon-role",
                    example: "db-anon-role = \"web_anon\"",
                })
            }
        };
        let server_host = pairs
            .remove("server-host")
            .map(|v| v.text)
            .unwrap_or_else(|| "!4".to_string());
        let server_port = match pairs.remove("server-port") {
            None => 3000,
            Some(v) => v.text.parse::<u16>().map_err(|_| {
                invalid(
                    "server-port",
                    format!("{:?} is not a port number (0-65535)", v.text),
                )
            })?,
        };
        let db_pool = match pairs.remove("db-pool") {
            None => 10,
            Some(v) => match v.text.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(invalid(
                        "db-pool",
                        format!("{:?} is not a positive integer", v.text),
                    ))
                }
            },
        };
        if pairs.remove("jwt-secret").is_some() {
            return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                key: "jwt-secret",
                message: "postgrest-lite does not implement JWT authentication: it would serve \
                          every request as db-anon-role where PostgREST checks the token. Remove \
                          jwt-secret to run the anonymous part of the tutorial, or run the real \
                          PostgREST (MACHINIST_POSTGREST=/path/to/postgrest)",
            });
        }
        let mut seconds = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
            match pairs.remove(key) {
                None => Ok(default),
                Some(v) => parse_seconds(&v.text).ok_or_else(|| {
                    invalid(
                        key,
                        format!(
                            "{:?} is not a number of seconds (e.g. 10 or 0.5; 0 means none)",
                            v.text
                        ),
                    )
                }),
            }
        };
        let db_statement_timeout = seconds("db-statement-timeout", DEFAULT_STATEMENT_TIMEOUT)?;
        let server_header_read_timeout =
            seconds("server-header-read-timeout", DEFAULT_HEADER_READ_TIMEOUT)?;
        let server_request_timeout = seconds("server-request-timeout", DEFAULT_REQUEST_TIMEOUT)?;
        if server_header_read_timeout.is_zero() {
            return Err(invalid(
                "server-header-read-timeout",
                "0 would let slow clients hold connections forever; use a positive number of seconds"
                    .into(),
            ));
        }
        let ignored = pairs.into_keys().collect();
        Ok(Config {
            db_uri,
            db_schemas,
            db_anon_role,
            server_host,
            server_port,
            db_pool,
            db_statement_timeout,
            server_header_read_timeout,
            server_request_timeout,
            ignored,
        })
    }

    /// Whether an ignored key is a PostgREST setting (vs. an unknown one, likely a typo).
    pub fn is_known_postgrest_setting(key: &str) -> bool {
        KNOWN_IGNORED.contains(&key) || key.starts_with("app.settings.")
    }

    /// The db-uri with any password replaced by `***` (safe to log).
    pub fn redacted_db_uri(&self) -> String {
        redact_uri(&self.db_uri)
    }

    /// Resolves `server-host`/`server-port` into the addresses to bind, PostgREST-style:
    /// `!4` and `*4` bind IPv4 any, `*`, `*6` and `!6` bind IPv6 any (dual-stack where the
    /// OS allows), anything else is an IP address or a host name.
    pub fn bind_addrs(&self) -> Result<Vec<SocketAddr>, std::io::Error> {
        let port = self.server_port;
        let addrs = match self.server_host.as_str() {
            "!4" | "*4" => vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)],
            "*" | "*6" | "!6" => vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)],
            host => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                match host.parse::<IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, port)],
                    Err(_) => (host, port).to_socket_addrs()?.collect(),
                }
            }
        };
        Ok(addrs)
    }

    /// The config as `key = value` lines (what `--dump-config` prints).
    pub fn dump(&self) -> String {
        format!(
            "db-anon-role = {:?}\ndb-pool = {}\ndb-schemas = {:?}\ndb-statement-timeout = {}\ndb-uri = {:?}\nserver-header-read-timeout = {}\nserver-host = {:?}\nserver-port = {}\nserver-request-timeout = {}\n",
            self.db_anon_role,
            self.db_pool,
            self.db_schemas.join(","),
            self.db_statement_timeout.as_secs_f64(),
            self.db_uri,
            self.server_header_read_timeout.as_secs_f64(),
            self.server_host,
            self.server_port,
            self.server_request_timeout.as_secs_f64()
        )
    }
}

/// Parses a non-negative, finite number of seconds (`10`, `0.5`) of at most a day.
fn parse_seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// Replaces the password of a `postgres://user:password@host` URI (or a `password=` pair) with
/// `***`.
pub fn redact_uri(uri: &str) -> String {
    if let Some(scheme_end) = uri.find("://") {
        let rest = &uri[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &uri[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        return uri.to_string();
    }
    uri.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.conf"), &|name| {
            (name == "PASS").then(|| "s3cret".to_string())
        })
    }

    #[test]
    fn tutorial_conf() {
        let c = parse(
            "db-uri = \"postgres://authenticator:mysecretpassword@localhost:5432/postgres\"\n\
             db-schemas = \"api\"\ndb-anon-role = \"web_anon\"\nserver-port = 3000\n",
        )
        .unwrap();
        assert_eq!(
            c.db_uri,
            "postgres://authenticator:mysecretpassword@localhost:5432/postgres"
        );
        assert_eq!(c.db_schemas, vec!["api"]);
        assert_eq!(c.db_anon_role, "web_anon");
        assert_eq!(c.server_port, 3000);
        assert_eq!(c.server_host, "!4");
        assert_eq!(
            c.redacted_db_uri(),
            "postgres://authenticator:***@localhost:5432/postgres"
        );
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn comments_quotes_interpolation_and_defaults() {
        let c = parse(
            "# a comment\n\n  db-uri = \"postgres://a:$(PASS)@h/db\" # trailing\n\
             db-schema = \"api, other\"\ndb-anon-role = \"we\\\"ird\"\n\
             server-host = \"127.0.0.1\"\nserver-port = \"3001\"\njwt-aud = \"x\"\ndb-pool = 2\n",
        )
        .unwrap();
        assert_eq!(c.db_uri, "postgres://a:s3cret@h/db");
        assert_eq!(c.db_schemas, vec!["api", "other"]);
        assert_eq!(c.db_anon_role, "we\"ird");
        assert_eq!(c.server_port, 3001);
        assert_eq!(c.db_pool, 2);
        assert_eq!(c.ignored, vec!["jwt-aud"]);
        assert_eq!(
            c.bind_addrs().unwrap(),
            vec!["127.0.0.1:3001".parse().unwrap()]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("db-uri \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse("db-uri = \"x\n").unwrap_err().to_string();
        assert!(e.contains("unterminated"), "{e}");
        let e = parse("db-uri = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("db-anon-role"), "{e}");
        let e = parse("db-anon-role = \"a\"\nserver-port = 99999\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server-port"), "{e}");
        let e = parse("db-anon-role = a b\n").unwrap_err().to_string();
        assert!(e.contains("double quotes"), "{e}");
    }

    #[test]
    fn jwt_secret_is_refused() {
        let e = parse("db-anon-role = \"a\"\njwt-secret = \"$(PASS)\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file t.conf: jwt-secret is set"),
            "{e}"
        );
        assert!(e.contains("does not implement JWT"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn timeouts() {
        let c = parse("db-anon-role = \"a\"\n").unwrap();
        assert_eq!(c.db_statement_timeout, DEFAULT_STATEMENT_TIMEOUT);
        assert_eq!(c.server_header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(c.server_request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let c = parse(
            "db-anon-role = \"a\"\ndb-statement-timeout = 0.25\n\
             server-header-read-timeout = \"2\"\nserver-request-timeout = 0\n",
        )
        .unwrap();
        assert_eq!(c.db_statement_timeout, Duration::from_millis(250));
        assert_eq!(c.server_header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.server_request_timeout, Duration::ZERO);
        assert!(c.ignored.is_empty());
        for bad in [
            "db-statement-timeout = -1",
            "db-statement-timeout = nan",
            "db-statement-timeout = 1e20",
            "server-request-timeout = soon",
            "server-header-read-timeout = 0",
        ] {
            let e = parse(&format!("db-anon-role = \"a\"\n{bad}\n"))
                .unwrap_err()
                .to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn host_specs() {
        let mut c = parse("db-anon-role = \"a\"\n").unwrap();
        assert_eq!(
            c.bind_addrs().unwrap(),
            vec!["0.0.0.0:3000".parse().unwrap()]
        );
        c.server_host = "*".into();
        assert_eq!(c.bind_addrs().unwrap(), vec!["[::]:3000".parse().unwrap()]);
        c.server_host = "::1".into();
        assert_eq!(c.bind_addrs().unwrap(), vec!["[::1]:3000".parse().unwrap()]);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_uri("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_uri("host=h user=u password=p dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }
}
