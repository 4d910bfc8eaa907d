//! Declaration checks that need no VM.

use machinist::{template_file, vars, Error, FileSpec, NodeConfig, Test};

#[test]
fn validation_rejects_bad_declarations_before_booting() {
    let e = Test::new("t").script(|_| Ok(())).run().unwrap_err();
    assert!(e.to_string().contains("no nodes"), "{e}");
    let e = Test::new("t")
        .node("Bad_Name", NodeConfig::new())
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("Bad_Name"), "{e}");
    let e = Test::new("t")
        .node("a", NodeConfig::new())
        .node("a", NodeConfig::new())
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("declared twice"), "{e}");
    let e = Test::new("t")
        .node("a", NodeConfig::new())
        .run()
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(Test::new("t")
        .node("a", NodeConfig::new())
        .validate()
        .is_ok());
}

#[test]
fn template_file_renders_into_a_file_spec() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tutorial.conf");
    std::fs::write(
        &p,
        "db-uri = \"postgres://@user@:pw@localhost:5432/postgres\"\nserver-port = @port@\n",
    )
    .unwrap();
    let f: FileSpec = template_file(
        "/etc/postgrest.conf",
        &p,
        &vars! { "user" => "authenticator", "port" => 3000 },
    )
    .unwrap();
    assert_eq!(f.path, "/etc/postgrest.conf");
    assert!(f.contents.contains("postgres://authenticator:pw@localhost"));
    let e = template_file("/etc/x", &p, &vars! { "user" => "u" })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tutorial.conf:2:15: placeholder @port@ has no value"),
        "{e}"
    );
}
