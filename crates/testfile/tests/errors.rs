//! One snapshot per class of mistake: each message names the file, line:column and key.

use std::path::Path;

use machinist_testfile::{HostPrograms, NoHostPrograms, TestFile, TestFileError};

/// A test directory with a template, a host file and a script beside the test file.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.conf"),
        "user = @user@\nport = @port@\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("only-user.conf"), "user = @user@\n").unwrap();
    std::fs::write(dir.path().join("blob.bin"), [0u8, 1, 2]).unwrap();
    std::fs::write(dir.path().join("script.py"), "start_all()\n").unwrap();
    dir
}

fn error_of(text: &str) -> String {
    let dir = fixture();
    let err = TestFile::parse(&dir.path().join("test.toml"), text, &NoHostPrograms).unwrap_err();
    err.to_string()
        .replace(&dir.path().display().to_string(), "[DIR]")
}

const GOOD: &str = r#"
name = "good"
script_file = "script.py"

[vars]
user = "alice"
port = 4000

[nodes.server]
packages = ["curl"]

[[nodes.server.files]]
path = "/etc/app.conf"
template = "app.conf"
"#;

#[test]
fn the_good_file_loads() {
    let dir = fixture();
    let f = TestFile::parse(&dir.path().join("test.toml"), GOOD, &NoHostPrograms).unwrap();
    assert_eq!(f.name, "good");
    assert_eq!(
        f.nodes["server"].files[0].contents,
        "user = alice\nport = 4000\n"
    );
}

#[test]
fn unknown_top_level_key() {
    insta::assert_snapshot!(error_of(&GOOD.replace("script_file", "scrpt_file")));
}

#[test]
fn unknown_node_key_lists_the_valid_ones() {
    insta::assert_snapshot!(error_of(&GOOD.replace("packages", "pakages")));
}

#[test]
fn unknown_service_key() {
    insta::assert_snapshot!(error_of(&format!(
        "{GOOD}\n[[nodes.server.services]]\nname = \"app\"\nexec_strat = \"/bin/true\"\n"
    )));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(error_of(&GOOD.replace(
        "packages = [\"curl\"]",
        "packages = [\"curl\"]\ncores = \"two\""
    )));
}

#[test]
fn not_toml() {
    insta::assert_snapshot!(error_of("name = \"x\"\n[nodes.server\n"));
}

#[test]
fn missing_name() {
    insta::assert_snapshot!(error_of("[nodes.server]\n"));
}

#[test]
fn missing_source_file() {
    insta::assert_snapshot!(error_of(&format!(
        "{GOOD}\n[[nodes.server.files]]\npath = \"/usr/bin/blob\"\nsource = \"missing.bin\"\n"
    )));
}

#[test]
fn missing_template_and_script_files() {
    insta::assert_snapshot!(error_of(
        &GOOD
            .replace("\"app.conf\"", "\"nope.conf\"")
            .replace("\"script.py\"", "\"nope.py\"")
    ));
}

#[test]
fn template_variable_missing() {
    insta::assert_snapshot!(error_of(&GOOD.replace("port = 4000\n", "")));
}

#[test]
fn template_variable_unused() {
    insta::assert_snapshot!(error_of(
        &GOOD.replace("\"app.conf\"", "\"only-user.conf\"")
    ));
}

#[test]
fn template_vars_subset_names_an_unknown_variable() {
    insta::assert_snapshot!(error_of(&GOOD.replace(
        "template = \"app.conf\"",
        "template = \"only-user.conf\"\nvars = [\"usr\"]"
    )));
}

#[test]
fn template_vars_subset_renders() {
    let dir = fixture();
    let text = GOOD.replace(
        "template = \"app.conf\"",
        "template = \"only-user.conf\"\nvars = [\"user\"]",
    );
    let f = TestFile::parse(&dir.path().join("test.toml"), &text, &NoHostPrograms).unwrap();
    assert_eq!(f.nodes["server"].files[0].contents, "user = alice\n");
}

#[test]
fn bad_node_name() {
    insta::assert_snapshot!(error_of(
        &GOOD
            .replace("[nodes.server]", "[nodes.Web_1]")
            .replace("nodes.server.files", "nodes.Web_1.files")
    ));
}

#[test]
fn bad_unit_name() {
    insta::assert_snapshot!(error_of(&format!(
        "{GOOD}\n[[nodes.server.services]]\nname = \"my app\"\nexec_start = \"/bin/true\"\n"
    )));
}

#[test]
fn a_file_needs_exactly_one_content() {
    insta::assert_snapshot!(error_of(&format!(
        "{GOOD}\n[[nodes.server.files]]\npath = \"/x\"\ncontents = \"a\"\nsource = \"blob.bin\"\n"
    )));
}

#[test]
fn bad_variable_type_and_option_variable() {
    insta::assert_snapshot!(error_of(
        &GOOD
            .replace("port = 4000", "port = 4000\nlist = [1, 2]")
            .replace(
                "packages = [\"curl\"]",
                "packages = [\"curl\"]\noptions.app = { port = \"@prot@\" }"
            )
    ));
}

#[test]
fn script_and_script_file_together() {
    insta::assert_snapshot!(error_of(&GOOD.replace(
        "script_file = \"script.py\"",
        "script_file = \"script.py\"\nscript = \"start_all()\""
    )));
}

#[test]
fn unknown_host_program() {
    insta::assert_snapshot!(error_of(&format!(
        "{GOOD}\n[[nodes.server.files]]\npath = \"/usr/bin/x\"\nhost_program = \"x\"\n"
    )));
}

#[test]
fn unreadable_test_file() {
    let err = TestFile::load(Path::new("/nonexistent/test.toml"), &NoHostPrograms).unwrap_err();
    assert!(matches!(err, TestFileError::Read { .. }));
    insta::assert_snapshot!(err.to_string());
}

struct Fixed(std::path::PathBuf);

impl HostPrograms for Fixed {
    fn resolve(&self, name: &str) -> Result<std::path::PathBuf, String> {
        (name == "tool")
            .then(|| self.0.clone())
            .ok_or_else(|| format!("unknown {name}"))
    }
}

#[test]
fn options_sources_host_programs_and_inline_script() {
    let dir = fixture();
    let text = r#"name = "full"
script = '''
start_all()
server.succeed("true")
'''

[vars]
port = 4000

[nodes.server]
memory_mib = 768
cores = 1
vlans = [1, 2]
options.app = { port = "@port@", name = "x" }

[[nodes.server.files]]
path = "/usr/bin/blob"
source = "blob.bin"
mode = 0o755

[[nodes.server.files]]
path = "/usr/bin/tool"
host_program = "tool"
"#;
    let f = TestFile::parse(
        &dir.path().join("test.toml"),
        text,
        &Fixed(dir.path().join("blob.bin")),
    )
    .unwrap();
    let server = &f.nodes["server"];
    assert_eq!(
        server.options["app"],
        serde_json::json!({"port": 4000, "name": "x"})
    );
    assert_eq!((server.memory_mib, server.cores), (768, 1));
    assert_eq!(server.vlans, vec![1, 2]);
    assert_eq!(server.files[0].source, Some(dir.path().join("blob.bin")));
    assert_eq!(server.files[0].mode, 0o755);
    assert_eq!(server.files[1].source, Some(dir.path().join("blob.bin")));
    let script = f.script.unwrap();
    assert_eq!(script.first_line, 3);
    // Line 4 of the test file is line 4 of the script.
    assert_eq!(
        script.source.lines().nth(3),
        Some("server.succeed(\"true\")")
    );
}

const ROUTER: &str = r#"
name = "router"
script = "start_all()"

[nodes.a]
default_gateway = { vlan = 1, via = "192.168.1.3" }

[nodes.router]
vlans = [1, 2]
ip_forwarding = true
sysctls = { "net.ipv4.conf.all.rp_filter" = "0", "net.core.somaxconn" = 1024 }
kernel_modules = ["dummy"]

[[nodes.router.routes]]
vlan = 2
destination = "10.0.2.0/24"
via = "192.168.2.9"
"#;

#[test]
fn routing_keys_load() {
    let dir = fixture();
    let f = TestFile::parse(&dir.path().join("test.toml"), ROUTER, &NoHostPrograms).unwrap();
    let (a, r) = (&f.nodes["a"], &f.nodes["router"]);
    assert_eq!(
        a.default_gateway,
        Some(machinist_guest::DefaultGateway {
            vlan: 1,
            via: "192.168.1.3".into()
        })
    );
    assert!(r.ip_forwarding && !a.ip_forwarding);
    assert_eq!(r.sysctls["net.ipv4.conf.all.rp_filter"], "0");
    assert_eq!(r.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(
        r.kernel_modules.iter().collect::<Vec<_>>(),
        [&"dummy".to_string()]
    );
    assert_eq!(
        r.routes,
        [machinist_guest::Route::new(2, "10.0.2.0/24", "192.168.2.9")]
    );
}

#[test]
fn sysctl_value_of_the_wrong_type() {
    insta::assert_snapshot!(error_of(&ROUTER.replace("= 1024", "= [1024]")));
}

#[test]
fn bad_sysctl_key() {
    insta::assert_snapshot!(error_of(
        &ROUTER.replace("net.core.somaxconn", "net.core.Some Max")
    ));
}

#[test]
fn sysctl_contradicting_ip_forwarding() {
    insta::assert_snapshot!(error_of(&ROUTER.replace(
        "\"net.core.somaxconn\" = 1024",
        "\"net.ipv4.ip_forward\" = \"0\""
    )));
}

#[test]
fn route_destination_is_not_a_network() {
    insta::assert_snapshot!(error_of(&ROUTER.replace("10.0.2.0/24", "10.0.2.5/24")));
}

#[test]
fn route_gateway_off_its_vlan() {
    insta::assert_snapshot!(error_of(&ROUTER.replace("192.168.2.9", "192.168.1.9")));
}

#[test]
fn unknown_route_key_lists_the_valid_ones() {
    insta::assert_snapshot!(error_of(
        &ROUTER.replace("via = \"192.168.2.9\"", "gateway = \"192.168.2.9\"")
    ));
}

#[test]
fn default_gateway_on_a_vlan_the_node_lacks() {
    insta::assert_snapshot!(error_of(&ROUTER.replace("vlan = 1, via", "vlan = 2, via")));
}

#[test]
fn bad_kernel_module_name() {
    insta::assert_snapshot!(error_of(
        &ROUTER.replace("[\"dummy\"]", "[\"dummy\", \"no/such\"]")
    ));
}

/// A patch for the fixture's `script.py` (`start_all()`), adding one line.
const GOOD_PATCH: &str =
    "--- a/script.py\n+++ b/script.py\n@@ -1 +1,2 @@\n start_all()\n+server.succeed(\"true\")\n";

#[test]
fn a_script_patch_is_applied_and_counted() {
    let dir = fixture();
    std::fs::write(dir.path().join("script.patch"), GOOD_PATCH).unwrap();
    let text = GOOD.replace(
        "script_file = \"script.py\"",
        "script_file = \"script.py\"\nscript_patch = \"script.patch\"",
    );
    let f = TestFile::parse(&dir.path().join("test.toml"), &text, &NoHostPrograms).unwrap();
    let script = f.script.unwrap();
    assert_eq!(script.source, "start_all()\nserver.succeed(\"true\")\n");
    let patch = script.patch.unwrap();
    assert_eq!(patch.changed_lines, 1);
    assert_eq!(patch.path, dir.path().join("script.patch"));
}

#[test]
fn a_script_patch_that_does_not_apply() {
    let dir = fixture();
    std::fs::write(
        dir.path().join("script.patch"),
        GOOD_PATCH.replace(" start_all()", " start_all(1)"),
    )
    .unwrap();
    let text = GOOD.replace(
        "script_file = \"script.py\"",
        "script_file = \"script.py\"\nscript_patch = \"script.patch\"",
    );
    let err = TestFile::parse(&dir.path().join("test.toml"), &text, &NoHostPrograms)
        .unwrap_err()
        .to_string()
        .replace(&dir.path().display().to_string(), "[DIR]");
    insta::assert_snapshot!(err);
}

#[test]
fn a_script_patch_without_a_script() {
    insta::assert_snapshot!(error_of(&GOOD.replace(
        "script_file = \"script.py\"",
        "script_patch = \"script.patch\""
    )));
}
