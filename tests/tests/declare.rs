//! The PostgREST test's declaration, checked without booting anything.

use machinist_tests::postgrest::{self, Tutorial};
use machinist_tests::postgrest_binary::{PostgrestBinary, PostgrestKind};

fn fake_binary() -> (tempfile::TempDir, PostgrestBinary) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postgrest");
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    (
        dir,
        PostgrestBinary {
            path,
            kind: PostgrestKind::Real,
        },
    )
}

#[test]
fn templates_render_the_shared_constants() {
    let (_dir, bin) = fake_binary();
    let tutorial = Tutorial {
        user: "alice".into(),
        port: 4000,
    };
    let server = postgrest::server_config(&tutorial, &bin).unwrap();
    let file = |p: &str| {
        server
            .files
            .iter()
            .find(|f| f.path == p)
            .unwrap()
            .contents
            .clone()
    };
    insta::assert_snapshot!("tutorial.conf", file("/etc/postgrest/tutorial.conf"));
    insta::assert_snapshot!("setup.sql", file("/etc/postgrest/setup.sql"));
    assert!(server.firewall.allowed_tcp_ports.contains(&4000));
}

#[test]
fn the_declaration_validates_before_booting() {
    let (_dir, bin) = fake_binary();
    postgrest::test(&Tutorial::default(), &bin)
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn a_missing_user_binary_is_named() {
    let err = machinist_tests::postgrest_binary::resolve(Some("/nonexistent/postgrest".as_ref()))
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/postgrest"), "{err}");
    assert!(err.to_string().contains("MACHINIST_POSTGREST"), "{err}");
}
