//! The bundled tests a `machinist` binary knows (`machinist list`, `machinist run <name>`).
//!
//! Placeholder shape until the driver's `Test` API exists: a test is a name, a one-line
//! description and a function that runs it with the command line's options.
// TODO(issue 9): hold a `fn() -> machinist::Test` once crates/driver has Test, so that `run`,
// `--script` and `interactive` all start from the same declared nodes.

use crate::args::RunArgs;

/// Why a test run did not pass.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The test ran and failed (exit code 1).
    #[error("test failed: {0}")]
    Failed(String),
    /// The test could not be set up: bad input, missing packages, no image (exit code 2).
    #[error("setup error: {0}")]
    Setup(String),
}

/// The function that runs one bundled test.
pub type RunFn = Box<dyn Fn(&RunArgs) -> Result<(), RunError> + Send + Sync>;

/// One bundled test.
pub struct BundledTest {
    /// The name `machinist run <name>` takes.
    pub name: String,
    /// One line for `machinist list`.
    pub about: String,
    /// Runs the test.
    pub run: RunFn,
}

impl BundledTest {
    /// A bundled test named `name`.
    pub fn new(
        name: impl Into<String>,
        about: impl Into<String>,
        run: impl Fn(&RunArgs) -> Result<(), RunError> + Send + Sync + 'static,
    ) -> Self {
        BundledTest {
            name: name.into(),
            about: about.into(),
            run: Box::new(run),
        }
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
            format!("unknown test `{name}`: this binary bundles no tests")
        } else {
            let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
            format!(
                "unknown test `{name}`; bundled tests: {} (see `machinist list`)",
                names.join(", ")
            )
        }
    })
}
