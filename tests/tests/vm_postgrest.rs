//! The PostgREST tutorial end to end in two real QEMU machines (the README's main job runs the
//! same declaration through `cargo xtask test-postgrest`).

use machinist_tests::postgrest::{self, Tutorial};
use machinist_tests::postgrest_binary;

#[test]
fn vm_postgrest_tutorial() {
    let _lock = machinist_qemu::VmTestLock::acquire().expect("VM test lock");
    let binary = postgrest_binary::resolve(None).expect("postgrest binary");
    eprintln!("PostgREST server: {binary}");
    let out = std::env::temp_dir()
        .join("machinist-tests")
        .join("postgrest");
    let _ = std::fs::remove_dir_all(&out);
    let report = postgrest::test(&Tutorial::default(), &binary)
        .expect("declaration")
        .output_dir(&out)
        .run();
    if let Err(e) = report {
        panic!(
            "PostgREST tutorial test failed: {e}\nartefacts in {}",
            out.display()
        );
    }
}
