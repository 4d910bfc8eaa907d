//! Each class of mistake `machinist check` finds, without booting anything.

use std::time::Instant;

use super::*;

const NODES: &[&str] = &["server", "client"];

fn problems(source: &str) -> Vec<String> {
    Python::attach(|py| check_script(py, source, "t.py", NODES))
        .unwrap()
        .into_iter()
        .map(|p| p.to_string())
        .collect()
}

fn one(source: &str) -> String {
    let p = problems(source);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

#[test]
fn the_guide_scripts_pass() {
    for path in machinist_tests::postgrest::guide_scripts() {
        let source = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            problems(&source),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn unknown_machine_name() {
    let p = one("start_all()\nservr.succeed('true')\n");
    assert!(p.starts_with("t.py:2:1: "), "{p}");
    assert!(p.contains("no machine or name `servr`"), "{p}");
    assert!(p.contains("did you mean server"), "{p}");
}

#[test]
fn unknown_machine_method() {
    let p = one("server.wait_for_unti('postgresql')\n");
    assert!(p.contains("Machine has no method `wait_for_unti`"), "{p}");
    assert!(p.contains("did you mean wait_for_unit"), "{p}");
}

#[test]
fn too_many_positional_arguments() {
    let p = one("\n\nclient.wait_for_unit('a', 'root', 5, 6)\n");
    assert!(
        p.starts_with("t.py:3:1: `client.wait_for_unit` takes (unit, user=None, timeout=None)"),
        "{p}"
    );
    assert!(p.contains("too many positional arguments"), "{p}");
}

#[test]
fn missing_argument() {
    let p = one("server.wait_for_open_port()\n");
    assert!(p.contains("`server.wait_for_open_port` takes"), "{p}");
    assert!(p.contains("missing a required argument: 'port'"), "{p}");
}

#[test]
fn unknown_keyword_argument() {
    let p = one("server.succeed('true', tmeout=5)\n");
    assert!(p.contains("unexpected keyword argument 'tmeout'"), "{p}");
}

#[test]
fn unknown_function_and_global_arity() {
    let all = problems("start_al()\nstart_all(1)\nsubtest()\n");
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all[0].contains("no function or name `start_al`") && all[0].contains("start_all"),
        "{all:#?}"
    );
    assert!(
        all[1].starts_with("t.py:2:1: `start_all` takes ()"),
        "{all:#?}"
    );
    assert!(all[2].contains("`subtest` takes (name)"), "{all:#?}");
}

#[test]
fn property_called_like_a_method() {
    let p = one("server.name()\n");
    assert!(p.contains("is a property"), "{p}");
}

#[test]
fn syntax_error_names_the_line() {
    let p = one("start_all()\nif True\n    pass\n");
    assert!(p.starts_with("t.py:2:"), "{p}");
    assert!(p.contains("SyntaxError"), "{p}");
}

#[test]
fn names_the_script_binds_are_not_machines() {
    let source = "\
import json
from os import path
def helper(m, *cmds):
    return m.succeed(*cmds)
for m in machines:
    m.anything(1, 2, 3)
helper(server, 'true')
with subtest('x') as s:
    s.whatever()
server.succeed(*['a', 'b'], **{'timeout': 3})
client.execute('true', check_return=False, timeout=None)
json.loads(client.succeed('echo {}'))
retry(lambda last: True, 10)
";
    assert_eq!(problems(source), Vec::<String>::new());
}

#[test]
fn a_single_node_is_also_machine() {
    let found = Python::attach(|py| {
        check_script(
            py,
            "machine.succeed('true')\nmachine.sucked()\n",
            "t.py",
            &["only"],
        )
    })
    .unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].line, 2);
}

#[test]
fn every_mistake_at_once_snapshot() {
    let source = "\
start_all()
servr.succeed('true')
server.succed('true')
client.wait_for_unit()
client.wait_for_open_port(80, 'localhost', 3, 4)
server.succeed('true', tmeout=1)
strat_all()
";
    insta::assert_snapshot!(problems(source).join("\n"));
}

#[test]
fn checking_is_fast() {
    let source = std::fs::read_to_string(&machinist_tests::postgrest::guide_scripts()[1]).unwrap();
    // The first call initialises the interpreter; the check itself is what `run` adds.
    problems(&source);
    let started = Instant::now();
    problems(&source);
    let took = started.elapsed();
    assert!(took.as_millis() < 500, "checking took {took:?}");
}

#[test]
fn check_file_reports_file_and_script_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("test.toml");
    std::fs::write(
        &toml,
        "name = \"t\"\nscript = '''\nstart_all()\nweb.succeed('true')\n'''\n[nodes.server]\n",
    )
    .unwrap();
    let err = check_file(&toml, &machinist_testfile::NoHostPrograms).unwrap_err();
    let CheckError::Script(p) = &err else {
        panic!("{err}")
    };
    // The inline script's line numbers are the test file's.
    assert_eq!((p[0].line, p[0].file.as_str()), (4, toml.to_str().unwrap()));
    std::fs::write(&toml, "name = \"t\"\n[nodes.server]\ncors = 2\n").unwrap();
    let err = check_file(&toml, &machinist_testfile::NoHostPrograms).unwrap_err();
    assert!(matches!(err, CheckError::File(_)), "{err}");
    assert!(
        err.to_string().contains(":3:1: key `nodes.server.cors`"),
        "{err}"
    );
}

#[test]
fn stubs_declare_every_method_with_its_docstring() {
    let text = Python::attach(|py| stubs::render(py, &["server", "client"])).unwrap();
    assert!(text.contains("class Machine:"), "{text}");
    assert!(
        text.contains("    def succeed(self, *commands, timeout=None) -> Any:"),
        "{text}"
    );
    assert!(
        text.contains("    def wait_for_unit(self, unit, user=None, timeout=None) -> Any:"),
        "{text}"
    );
    assert!(text.contains("def start_all() -> Any:"), "{text}");
    assert!(
        text.contains("server: Machine\nclient: Machine") || text.contains("server: Machine"),
        "{text}"
    );
    assert!(
        text.contains("Run each command; each must succeed."),
        "{text}"
    );
    // The stubs are valid Python.
    Python::attach(|py| {
        let code = std::ffi::CString::new(text.clone()).unwrap();
        py.run(&code, None, None)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
    });
}
