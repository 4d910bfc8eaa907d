//! The PostgREST tutorial end to end with both nodes as systemd-nspawn containers: the same
//! declaration and script as `vm_postgrest`, subtests included (cut network, crash and restart,
//! revoked grant), on the container backend.

use machinist::BackendKind;
use machinist_tests::postgrest::{self, Tutorial};
use machinist_tests::postgrest_binary;

#[test]
fn ct_postgrest_tutorial() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let binary = postgrest_binary::resolve(None).expect("postgrest binary");
    eprintln!("PostgREST server: {binary}");
    let out = std::env::temp_dir()
        .join("machinist-tests")
        .join("ct-postgrest");
    let _ = std::fs::remove_dir_all(&out);
    let report = postgrest::declare(&Tutorial::default(), &binary)
        .expect("declaration")
        .backend(BackendKind::Container)
        .script(|t| {
            for name in ["server", "client"] {
                let backend = t.machine(name).backend();
                if backend != BackendKind::Container {
                    return Err(format!("{name} runs on {backend:?}, not as a container").into());
                }
            }
            postgrest::script(t)
        })
        .output_dir(&out)
        .run();
    let report = match report {
        Ok(r) => r,
        Err(e) => panic!(
            "PostgREST tutorial test (containers) failed: {e}\nartefacts in {}",
            out.display()
        ),
    };
    // Every subtest of the built-in script ran (and passed, or the run would have failed).
    let junit = std::fs::read_to_string(&report.junit).expect("JUnit report");
    for subtest in [
        "curl the todos from the client",
        "block() on the server",
        "survives crash()",
        "the anonymous role without its grant",
    ] {
        assert!(
            junit.contains(subtest),
            "no subtest {subtest:?} in {}",
            report.junit.display()
        );
    }
}
