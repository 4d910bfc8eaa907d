//! Declaring and running a test: `Test::new(name).node(..).script(|t| ..).run()`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use machinist_guest::{ImageCache, NetworkPlan, NodeConfig, NodeLayer};

use crate::error::{Error, Result};
use crate::log::Logger;
use crate::run::{Declaration, Report, ScriptResult, TestRun};
use crate::timeouts::{TimeoutScale, DEFAULT_BOOT_DEADLINE, DEFAULT_GLOBAL_TIMEOUT};

type Script<'a> = Box<dyn FnOnce(&TestRun) -> ScriptResult + 'a>;

/// A test declaration (the `nixosTest { name; nodes; testScript; }` of NixOS).
///
/// ```no_run
/// use machinist::{NodeConfig, Test};
/// Test::new("hello")
///     .node("machine", NodeConfig::new())
///     .script(|t| {
///         let m = t.machine("machine");
///         assert_eq!(m.succeed("echo hello")?, "hello\n");
///         Ok(())
///     })
///     .run()
///     .unwrap();
/// ```
pub struct Test<'a> {
    name: String,
    nodes: BTreeMap<String, NodeConfig>,
    global_timeout: Duration,
    boot_deadline: Duration,
    output_dir: Option<PathBuf>,
    keep_state: bool,
    script: Option<Script<'a>>,
    logger: Option<Logger>,
    image_cache: Option<ImageCache>,
    print_serial: bool,
    warm_start: Option<bool>,
    backend: Option<crate::BackendKind>,
    errors: Vec<String>,
}

impl std::fmt::Debug for Test<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Test")
            .field("name", &self.name)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("global_timeout", &self.global_timeout)
            .finish_non_exhaustive()
    }
}

impl<'a> Test<'a> {
    /// A new test called `name` (used for the output directory and the JUnit suite).
    pub fn new(name: &str) -> Self {
        Test {
            name: name.to_string(),
            nodes: BTreeMap::new(),
            global_timeout: DEFAULT_GLOBAL_TIMEOUT,
            boot_deadline: DEFAULT_BOOT_DEADLINE,
            output_dir: None,
            keep_state: false,
            script: None,
            logger: None,
            image_cache: None,
            print_serial: true,
            warm_start: None,
            backend: None,
            errors: Vec::new(),
        }
    }

    /// Declares a node (a machine) with its configuration.
    pub fn node(mut self, name: &str, config: NodeConfig) -> Self {
        if self.nodes.insert(name.to_string(), config).is_some() {
            self.errors.push(format!("node `{name}` is declared twice"));
        }
        self
    }

    /// The global timeout (default 1 h, scaled): when it expires every machine is stopped and the
    /// run fails with [`Error::GlobalTimeout`].
    pub fn global_timeout(mut self, timeout: Duration) -> Self {
        self.global_timeout = timeout;
        self
    }

    /// The boot deadline of each machine (default 300 s, scaled).
    pub fn boot_deadline(mut self, deadline: Duration) -> Self {
        self.boot_deadline = deadline;
        self
    }

    /// Where logs, JUnit, console logs, pcaps and screenshots go (default
    /// `$MACHINIST_OUTPUT_DIR/<name>`, else `<tmp>/machinist-out-<uid>/<name>`, a directory of this user with mode 0700).
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// Keep the run directory (disk overlays, sockets) after the run (NixOS `--keep-vm-state`).
    pub fn keep_state(mut self, keep: bool) -> Self {
        self.keep_state = keep;
        self
    }

    /// The test script.
    pub fn script(mut self, script: impl FnOnce(&TestRun) -> ScriptResult + 'a) -> Self {
        self.script = Some(Box::new(script));
        self
    }

    /// Use this logger instead of stderr (e.g. [`Logger::silent`] or a captured writer).
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Use this image cache (default: `ImageCache::from_env()`).
    pub fn image_cache(mut self, cache: ImageCache) -> Self {
        self.image_cache = Some(cache);
        self
    }

    /// Start with serial lines hidden on the terminal (`serial_stdout_off()` from the start).
    pub fn serial_stdout(mut self, on: bool) -> Self {
        self.print_serial = on;
        self
    }

    /// Warm start (default: on unless `MACHINIST_WARM_START=0`): each machine's first start
    /// restores a saved, booted guest of the same image and shape and then applies the node's
    /// identity; `false` cold-boots every machine. Nodes with kernel or QEMU arguments always
    /// boot cold.
    pub fn warm_start(mut self, on: bool) -> Self {
        self.warm_start = Some(on);
        self
    }

    /// What every node runs on unless its configuration says (`NodeConfig::container()`);
    /// without this, `MACHINIST_BACKEND=vm|container`, else VMs.
    pub fn backend(mut self, backend: crate::BackendKind) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The test's default backend: [`Test::backend`], else `MACHINIST_BACKEND`, else none (VMs).
    fn default_backend(&self) -> Result<Option<crate::BackendKind>> {
        if self.backend.is_some() {
            return Ok(self.backend);
        }
        match std::env::var("MACHINIST_BACKEND") {
            Ok(v) if !v.trim().is_empty() => machinist_guest::NodeBackend::parse(&v)
                .map(Some)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "MACHINIST_BACKEND=`{v}`: expected `vm` or `container`"
                    ))
                }),
            _ => Ok(None),
        }
    }

    /// Checks the declaration without booting anything: node names, node configurations
    /// (guest crate), the node layers (files, units, users) and the timeout scale.
    pub fn validate(&self) -> Result<()> {
        let mut problems = self.errors.clone();
        if !valid_test_name(&self.name) {
            problems.push(format!(
                "test name `{}` is invalid: it names the output directory, so it must be \
                 non-empty, not `.` or `..`, and contain no `/`, NUL or control character",
                self.name.escape_debug()
            ));
        }
        if self.nodes.is_empty() {
            problems.push("no nodes: declare at least one with .node(name, NodeConfig)".into());
        }
        for name in self.nodes.keys() {
            if !valid_node_name(name) {
                problems.push(format!(
                    "node name `{name}` is invalid: use 1-32 characters a-z, 0-9, `-` and `_`, starting with a letter"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        // Validated with the backend each node will run on (a test's or the run's default
        // included), so that the container rules apply to every container node.
        let default = self.default_backend()?;
        let nodes: Vec<(&str, NodeConfig)> = self
            .nodes
            .iter()
            .map(|(n, c)| {
                let mut c = c.clone();
                if c.backend.is_none() && default == Some(crate::BackendKind::Container) {
                    c.backend = Some(crate::BackendKind::Container);
                }
                (n.as_str(), c)
            })
            .collect();
        let pairs: Vec<(&str, &NodeConfig)> = nodes.iter().map(|(n, c)| (*n, c)).collect();
        machinist_guest::validate(&pairs).map_err(|e| Error::Invalid(e.to_string()))?;
        let plan = NetworkPlan::new(&pairs);
        for (n, c) in &pairs {
            NodeLayer::render(n, c, &plan).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        TimeoutScale::from_env()?;
        Ok(())
    }

    /// Validates, then runs the script with every machine declared (not started: call
    /// `t.start_all()` or let the first command start a machine), then cleans up. On failure the
    /// output directory holds the artefacts, listed at the end of the log.
    pub fn run(mut self) -> Result<Report> {
        let script = self
            .script
            .take()
            .ok_or_else(|| Error::Invalid("no script: add one with .script(|t| { ... })".into()))?;
        let run = self.start()?;
        let outcome = run.run_script(script);
        run.finish(outcome)
    }

    /// Validates and sets everything up (images, switches, machines declared but not started)
    /// and returns the running test, for interactive use (REPL, Python). Call
    /// [`TestRun::finish`] at the end (dropping it also cleans up, without the report).
    pub fn start(mut self) -> Result<TestRun> {
        self.validate()?;
        if let Some(crate::BackendKind::Container) = self.default_backend()? {
            for cfg in self.nodes.values_mut() {
                cfg.backend
                    .get_or_insert(machinist_guest::NodeBackend::Container);
            }
        }
        TestRun::start(Declaration {
            name: self.name,
            nodes: self.nodes,
            global_timeout: self.global_timeout,
            boot_deadline: self.boot_deadline,
            output_dir: self.output_dir,
            keep_state: self.keep_state,
            logger: self.logger,
            image_cache: self.image_cache,
            print_serial: self.print_serial,
            warm_start: self.warm_start,
        })
    }
}

fn valid_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// A test name is one path component of the output directory.
fn valid_test_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.chars().any(char::is_control)
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn test_names_are_one_path_component() {
        for bad in ["", ".", "..", "a/b", "/abs", "../up", "tab\tname", "nul\0"] {
            assert!(!valid_test_name(bad), "{bad:?}");
        }
        for good in ["postgrest", "vm-single", "a.b", "..x", "ünïcode"] {
            assert!(valid_test_name(good), "{good:?}");
        }
        let e = Test::new("..")
            .node("m", NodeConfig::new())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("test name `..` is invalid"), "{e}");
    }
}
