//! The bundled tests a `machinist` binary knows (`machinist list`, `machinist run <name>`).

use std::sync::Arc;

use crate::args::RunArgs;
use crate::python::session::RustScript;

/// Builds a test's declaration (nodes, options) from the command line's options.
pub type Declare =
    Box<dyn Fn(&RunArgs) -> Result<machinist::Test<'static>, machinist::Error> + Send + Sync>;

/// A test's own script.
#[derive(Clone)]
pub enum Script {
    /// A Rust closure over the running test.
    Rust(RustScript),
    /// A Python test script (run like `--script`).
    Python {
        /// The file name shown in tracebacks.
        filename: String,
        /// The source.
        source: String,
    },
    /// None: only `--script` and `interactive` make sense.
    None,
}

/// One bundled test.
pub struct BundledTest {
    /// The name `machinist run <name>` takes.
    pub name: String,
    /// One line for `machinist list`.
    pub about: String,
    /// Declares the test (nodes and their configuration); no script.
    pub declare: Declare,
    /// The test's own script.
    pub script: Script,
}

impl BundledTest {
    /// A bundled test named `name` whose nodes `declare` builds (without a script: add one with
    /// [`BundledTest::rust_script`] or [`BundledTest::python_script`]).
    pub fn new(
        name: impl Into<String>,
        about: impl Into<String>,
        declare: impl Fn(&RunArgs) -> Result<machinist::Test<'static>, machinist::Error>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        BundledTest {
            name: name.into(),
            about: about.into(),
            declare: Box::new(declare),
            script: Script::None,
        }
    }

    /// The test's script as a Rust closure.
    pub fn rust_script(
        mut self,
        script: impl Fn(&machinist::TestRun) -> machinist::ScriptResult + Send + Sync + 'static,
    ) -> Self {
        self.script = Script::Rust(Arc::new(script));
        self
    }

    /// The test's script in Python (NixOS `testScript`).
    pub fn python_script(mut self, filename: impl Into<String>, source: impl Into<String>) -> Self {
        self.script = Script::Python {
            filename: filename.into(),
            source: source.into(),
        };
        self
    }
}

impl std::fmt::Debug for BundledTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundledTest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Finds `name`, or says which names exist.
pub fn find<'a>(tests: &'a [BundledTest], name: &str) -> Result<&'a BundledTest, String> {
    tests.iter().find(|t| t.name == name).ok_or_else(|| {
        if tests.is_empty() {
            format!("unknown test `{name}`: this binary bundles no tests, and it is not a test file (a `.toml` file, or a directory holding a `test.toml`)")
        } else {
            let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
            format!(
                "unknown test `{name}`; bundled tests: {} (see `machinist list`); a test file is a path to a `.toml` file or to a directory holding a `test.toml`",
                names.join(", ")
            )
        }
    })
}
