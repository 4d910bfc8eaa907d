//! The tests the `machinist` binary bundles: `hello` (one machine, the guide's interactive
//! session) and `postgrest` (the PostgREST tutorial from the tests crate).

use machinist::{NodeConfig, Test};
use machinist_tests::postgrest::{self, Tutorial};
use machinist_tests::postgrest_binary;

use crate::registry::BundledTest;

/// Every bundled test, in `machinist list` order.
pub fn tests() -> Vec<BundledTest> {
    vec![hello(), postgrest_tutorial()]
}

/// `hello`: one Debian machine named `machine`.
pub fn hello() -> BundledTest {
    BundledTest::new(
        "hello",
        "one Debian machine (`machine`): the guide's interactive session",
        |_args| Ok(Test::new("hello").node("machine", NodeConfig::new())),
    )
    .python_script(
        "hello.py",
        "start_all()\nassert machine.succeed('echo \"Hello, world!\"') == 'Hello, world!\\n'\n",
    )
}

/// `postgrest`: the PostgREST tutorial (`server`: Postgres + PostgREST, `client`: curl) with the
/// tests crate's built-in script. `--postgrest PATH` (or `MACHINIST_POSTGREST`) installs a real
/// PostgREST binary instead of postgrest-lite.
pub fn postgrest_tutorial() -> BundledTest {
    BundledTest::new(
        "postgrest",
        "the PostgREST tutorial: Postgres + PostgREST on `server`, curl on `client`",
        |args| {
            let binary =
                postgrest_binary::resolve(args.postgrest.as_deref()).map_err(|e| match e {
                    postgrest_binary::BinaryError::BadUserBinary { .. } => {
                        machinist::Error::Invalid(e.to_string())
                    }
                    other => machinist::Error::Script(other.to_string()),
                })?;
            eprintln!("machinist: PostgREST server: {binary}");
            postgrest::declare(&Tutorial::default(), &binary)
                .map_err(|e| machinist::Error::Invalid(e.to_string()))
        },
    )
    .rust_script(postgrest::script)
}
