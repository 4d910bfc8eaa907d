//! Test harness: a throwaway PostgreSQL cluster (initdb + postgres in a temp dir, as `nobody`
//! when running as root), a postgrest-lite child process, and a tiny raw-TCP HTTP client.
//! Every process is killed on drop (and gets SIGKILL if the test process dies).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the PostgreSQL server binaries are: `$PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` holding `initdb` and `postgres`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Returns the binaries, or prints a loud skip message and returns `None`. Under CI (`CI` set)
/// a missing PostgreSQL is a failure: `cargo xtask deps` installs it there.
pub fn pg_or_skip(test: &str) -> Option<PathBuf> {
    match pg_bin_dir() {
        Some(dir) => Some(dir),
        None if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") => {
            panic!(
                "{test}: PostgreSQL server binaries not found (looked in $PG_BINDIR and \
                 /usr/lib/postgresql/*/bin); CI installs them with `cargo xtask deps`"
            )
        }
        None => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPING {test}: PostgreSQL server binaries not found\n\
                 !!! (looked in $PG_BINDIR and /usr/lib/postgresql/*/bin).\n\
                 !!! Install them with `cargo xtask deps` or `apt-get install postgresql`.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("run `id`");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("`id {flag} {user}` gave no number: is there a `{user}` user?"))
}

/// A command that runs `program` as `nobody` when we are root (PostgreSQL refuses root), and
/// dies with SIGKILL if the test process dies.
fn unprivileged(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--pdeathsig=SIGKILL",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        let mut cmd = Command::new(program);
        with_pdeathsig(&mut cmd);
        cmd
    }
}

fn with_pdeathsig(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn terminate(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill on our own child's pid (not yet reaped, so not reused).
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:`port` and on a
/// unix socket in the directory. Stopped (fast shutdown, then SIGKILL) on drop.
pub struct PgCluster {
    /// The temp dir (data, socket, log).
    pub dir: tempfile::TempDir,
    /// TCP port.
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl PgCluster {
    /// Runs initdb (superuser `postgres`, local trust, host scram-sha-256) without starting.
    pub fn init(bin: &Path, port: u16) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("postgrest-lite-pg-")
            .tempdir()
            .expect("create temp dir for the cluster");
        std::fs::create_dir(dir.path().join("sock")).expect("create socket dir");
        if is_root() {
            let (uid, gid) = (id_of("-u", "nobody"), id_of("-g", "nobody"));
            for p in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown temp dir");
            }
        }
        let out = unprivileged(&bin.join("initdb"))
            .args(["-D"])
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .env("LC_ALL", "C")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PgCluster {
            dir,
            port,
            bin: bin.to_path_buf(),
            child: None,
        }
    }

    /// initdb + start + wait until it accepts connections.
    pub fn start_new(bin: &Path) -> PgCluster {
        let mut pg = PgCluster::init(bin, free_port());
        pg.start();
        pg
    }

    /// Socket directory.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `postgres` and waits (deadline 60 s) until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "postgres already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open postgres log");
        let child = unprivileged(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.sock())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=20",
            ])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.sock())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 60 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
    }

    /// Runs SQL as the superuser through psql (ON_ERROR_STOP); panics with psql's output on
    /// failure.
    pub fn psql(&self, sql: &str) -> String {
        let mut child = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.sock())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        child
            .stdin
            .take()
            .expect("psql stdin")
            .write_all(sql.as_bytes())
            .expect("write SQL to psql");
        let out = child.wait_with_output().expect("wait for psql");
        assert!(
            out.status.success(),
            "psql failed on:\n{sql}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tutorial's setup.sql, verbatim.
pub const SETUP_SQL: &str = include_str!("../fixtures/setup.sql");

/// The tutorial's config, pointed at the test cluster and a test port.
pub fn tutorial_conf(pg_port: u16, http_port: u16) -> String {
    format!(
        "# the tutorial's tutorial.conf, with test ports\n\
         db-uri = \"postgres://authenticator:mysecretpassword@localhost:{pg_port}/postgres\"\n\
         db-schemas = \"api\"\n\
         db-anon-role = \"web_anon\"\n\
         server-host = \"127.0.0.1\"\n\
         server-port = {http_port}\n"
    )
}

/// A running postgrest-lite (or any binary path, e.g. a copy named `postgrest`).
pub struct Server {
    /// HTTP port.
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Writes `conf` to a temp file and runs `binary <file>`.
    pub fn spawn(binary: &Path, conf: &str, port: u16) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("postgrest-lite-srv-")
            .tempdir()
            .expect("temp dir for the config");
        let conf_path = dir.path().join("tutorial.conf");
        std::fs::write(&conf_path, conf).expect("write config");
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(binary);
        cmd.arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create server log"));
        with_pdeathsig(&mut cmd);
        let child = cmd.spawn().expect("spawn postgrest-lite");
        Server {
            port,
            child,
            log,
            _dir: dir,
        }
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET path` until `pred` holds (deadline `within`); returns that response.
    pub fn wait_for(
        &self,
        path: &str,
        within: Duration,
        pred: impl Fn(&Response) -> bool,
    ) -> Response {
        let deadline = Instant::now() + within;
        loop {
            let last = match try_request(self.port, "GET", path, &[]) {
                Ok(r) if pred(&r) => return r,
                other => other,
            };
            assert!(
                Instant::now() < deadline,
                "GET {path} did not reach the expected state within {within:?}; last: {last:?}\nserver stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait (SIGKILL after 5 s); returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes as text.
    pub body: String,
}

impl Response {
    /// First header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Status, the headers that matter, and the body: what snapshots store.
    pub fn summary(&self) -> String {
        let mut s = format!("HTTP {}\n", self.status);
        for name in ["content-type", "content-range"] {
            if let Some(v) = self.header(name) {
                s.push_str(&format!("{name}: {v}\n"));
            }
        }
        s.push('\n');
        s.push_str(&self.body);
        s
    }
}

/// `METHOD path` over a raw TCP connection (HTTP/1.1, `Connection: close`).
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// `GET path`, panicking on connection errors.
pub fn get(port: u16, path: &str) -> Response {
    try_request(port, "GET", path, &[]).unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked && !head {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?,
    })
}
