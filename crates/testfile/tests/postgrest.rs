//! `tests/postgrest/test.toml` declares exactly the nodes of the Rust tutorial
//! (`machinist_tests::postgrest::declare`), without booting anything.

use std::path::PathBuf;

use machinist_testfile::{HostPrograms, TestFile};
use machinist_tests::postgrest::{self, Tutorial, POSTGREST_OPTION};
use machinist_tests::postgrest_binary::{PostgrestBinary, PostgrestKind};

/// Provides `postgrest` as the given file (what the `machinist` command resolves at run time).
struct Postgrest(PathBuf);

impl HostPrograms for Postgrest {
    fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        (name == "postgrest")
            .then(|| self.0.clone())
            .ok_or_else(|| format!("unexpected host program {name}"))
    }
}

#[test]
fn the_test_file_declares_the_rust_tutorial_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("postgrest");
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    let binary = PostgrestBinary {
        path: bin.clone(),
        kind: PostgrestKind::Real,
    };
    let tutorial = Tutorial::default();
    let mut rust_server = postgrest::server_config(&tutorial, &binary).unwrap();
    // The Rust declaration also records which PostgREST it installs, as a sentence for the log;
    // the file does not (the command logs it). Everything else must be identical.
    assert!(rust_server.options.remove(POSTGREST_OPTION).is_some());
    let rust_client = postgrest::client_config();

    let file = TestFile::load(
        &postgrest::fixture_dir().join("test.toml"),
        &Postgrest(bin.clone()),
    )
    .unwrap();
    assert_eq!(file.name, "postgrest");
    assert_eq!(
        file.nodes.keys().collect::<Vec<_>>(),
        ["client", "server"],
        "the same node names"
    );
    // Compare the Debug dumps first: a mismatch shows the differing field.
    assert_eq!(
        format!("{:#?}", file.nodes["server"]),
        format!("{rust_server:#?}")
    );
    assert_eq!(file.nodes["server"], rust_server);
    assert_eq!(file.nodes["client"], rust_client);

    // The guide's script, from the file beside the test.
    let script = file.script.as_ref().unwrap();
    assert_eq!(
        std::fs::read_to_string(postgrest::fixture_dir().join("script.py")).unwrap(),
        script.source
    );
    file.declare().validate().unwrap();
}
