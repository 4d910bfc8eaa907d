//! From the file's shape to node configurations: paths resolved against the test file's
//! directory, templates rendered strictly, options typed, every problem located.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use machinist::{FileSpec, NodeConfig, Vars};
use toml::Spanned;

use crate::error::{Located, TestFileError};
use crate::raw::{RawFile, RawNode, RawTest};
use crate::{HostPrograms, ScriptPatch, ScriptSource, TestFile};

/// Collects problems while building.
struct Ctx<'a> {
    path: &'a Path,
    dir: &'a Path,
    text: &'a str,
    problems: Vec<Located>,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, key: Option<String>, message: impl Into<String>) {
        self.problems
            .push(Located::at(self.path, self.text, Some(span), key, message));
    }

    fn shown(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

pub(crate) fn build(
    path: &Path,
    text: &str,
    raw: RawTest,
    programs: &dyn HostPrograms,
) -> Result<TestFile, TestFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cx = Ctx {
        path,
        dir,
        text,
        problems: Vec::new(),
    };
    if !valid_test_name(raw.name.get_ref()) {
        cx.err(
            raw.name.span(),
            Some("name".into()),
            "the test name names its output directory: it must be non-empty, not `.` or `..`, \
             and contain no `/` or control character",
        );
    }
    let mut vars = BTreeMap::new();
    let mut typed = BTreeMap::new();
    for (k, v) in &raw.vars {
        let key = Some(format!("vars.{}", k.get_ref()));
        let text = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                cx.err(
                    v.span(),
                    key,
                    format!(
                        "a variable is a string, number or boolean, not {}",
                        other.type_str()
                    ),
                );
                continue;
            }
        };
        vars.insert(k.get_ref().clone(), text);
        typed.insert(k.get_ref().clone(), v.get_ref().clone());
    }
    if raw.nodes.is_empty() {
        cx.problems.push(Located::at(
            path,
            text,
            None,
            Some("nodes".into()),
            "no nodes: declare at least one `[nodes.NAME]` table",
        ));
    }
    let mut nodes = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for (name, node) in raw.nodes {
        if !valid_node_name(name.get_ref()) {
            cx.err(
                name.span(),
                Some(format!("nodes.{}", name.get_ref())),
                format!(
                    "node name `{}` is invalid: use 1-32 characters a-z, 0-9, `-` and `_`, starting with a letter \
                     (it is the machine's host name and its Python name)",
                    name.get_ref()
                ),
            );
        }
        let node_span = node.span();
        let (cfg, elem_spans) = node_config(
            &mut cx,
            name.get_ref(),
            node.into_inner(),
            &vars,
            &typed,
            programs,
        );
        spans.insert(name.get_ref().clone(), (node_span, elem_spans));
        nodes.insert(name.into_inner(), cfg);
    }
    if cx.problems.is_empty() {
        let pairs: Vec<(&str, &NodeConfig)> = nodes.iter().map(|(n, c)| (n.as_str(), c)).collect();
        if let Err(machinist_guest::GuestError::Invalid(list)) = machinist_guest::validate(&pairs) {
            for fe in list {
                let (node_span, elems) = spans
                    .get(&fe.node)
                    .cloned()
                    .unwrap_or((0..0, BTreeMap::new()));
                let (span, key) = match elems.get(element_of(&fe.field)) {
                    Some(s) => (s.clone(), format!("nodes.{}.{}", fe.node, fe.field)),
                    None => (node_span, format!("nodes.{}.{}", fe.node, fe.field)),
                };
                cx.err(span, Some(key), fe.message);
            }
        }
    }
    let script = match (
        script(&mut cx, raw.script, raw.script_file),
        raw.script_patch,
    ) {
        (Some(s), Some(patch)) => apply_script_patch(&mut cx, s, patch),
        (None, Some(patch)) => {
            if cx.problems.is_empty() {
                cx.err(
                    patch.span(),
                    Some("script_patch".into()),
                    "a patch needs a script to apply to: add `script_file` (or `script`)",
                );
            }
            None
        }
        (s, None) => s,
    };
    let global_timeout =
        raw.global_timeout
            .and_then(|t| match Duration::try_from_secs_f64(*t.get_ref()) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    cx.err(
                        t.span(),
                        Some("global_timeout".into()),
                        "a positive number of seconds",
                    );
                    None
                }
            });
    if !cx.problems.is_empty() {
        return Err(TestFileError::Invalid(cx.problems));
    }
    let file = TestFile {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        name: raw.name.into_inner(),
        vars,
        nodes,
        script,
        global_timeout,
    };
    // The driver's own check (node layers rendered, host files readable) as the last word.
    if let Err(e) = file.declare().validate() {
        return Err(TestFileError::Invalid(vec![Located::at(
            path,
            text,
            None,
            None,
            format!("the declaration is invalid: {e}"),
        )]));
    }
    Ok(file)
}

/// `services[2].name` -> `services[2]`.
fn element_of(field: &str) -> &str {
    match field.find(']') {
        Some(i) => &field[..=i],
        None => field,
    }
}

type ElemSpans = BTreeMap<String, Range<usize>>;

fn node_config(
    cx: &mut Ctx<'_>,
    node: &str,
    raw: RawNode,
    vars: &BTreeMap<String, String>,
    typed: &BTreeMap<String, toml::Value>,
    programs: &dyn HostPrograms,
) -> (NodeConfig, ElemSpans) {
    let mut spans = ElemSpans::new();
    let mut cfg = NodeConfig::new();
    cfg.hostname = raw.hostname;
    cfg.packages = raw.packages.into_iter().collect();
    for (i, f) in raw.files.into_iter().enumerate() {
        spans.insert(format!("files[{i}]"), f.span());
        if let Some(spec) = file_spec(cx, node, i, f, vars, programs) {
            cfg.files.push(spec);
        }
    }
    fn take<T>(spans: &mut ElemSpans, what: &str, list: Vec<Spanned<T>>) -> Vec<T> {
        list.into_iter()
            .enumerate()
            .map(|(i, s)| {
                spans.insert(format!("{what}[{i}]"), s.span());
                s.into_inner()
            })
            .collect()
    }
    cfg.services = take(&mut spans, "services", raw.services);
    cfg.first_boot = take(&mut spans, "first_boot", raw.first_boot);
    cfg.users = take(&mut spans, "users", raw.users);
    cfg.groups = take(&mut spans, "groups", raw.groups);
    if let Some(fw) = raw.firewall {
        cfg.firewall = fw;
    }
    if let Some(v) = raw.vlans {
        cfg.vlans = v;
    }
    cfg.user_net = raw.user_net;
    if let Some(m) = raw.memory_mib {
        cfg.memory_mib = m;
    }
    if let Some(c) = raw.cores {
        cfg.cores = c;
    }
    cfg.masked_units = raw.masked_units;
    cfg.kernel_args = raw.kernel_args;
    cfg.qemu_args = raw.qemu_args;
    for (k, v) in raw.sysctls {
        spans.insert(format!("sysctls.{k}"), v.span());
        let value = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            other => {
                cx.err(
                    v.span(),
                    Some(format!("nodes.{node}.sysctls.{k}")),
                    format!(
                        "a kernel variable's value is a string or an integer (\"1\", 1), not {}",
                        other.type_str()
                    ),
                );
                continue;
            }
        };
        cfg.sysctls.insert(k, value);
    }
    cfg.ip_forwarding = raw.ip_forwarding;
    cfg.logind = raw.logind;
    cfg.routes = take(&mut spans, "routes", raw.routes);
    if let Some(g) = raw.default_gateway {
        for k in ["default_gateway.vlan", "default_gateway.via"] {
            spans.insert(k.to_string(), g.span());
        }
        cfg.default_gateway = Some(g.into_inner());
    }
    if let Some(m) = raw.kernel_modules {
        spans.insert("kernel_modules".to_string(), m.span());
        cfg.kernel_modules = m.into_inner().into_iter().collect();
    }
    for (k, v) in raw.options {
        let key = format!("nodes.{node}.options.{k}");
        match option_value(v.get_ref(), typed) {
            Ok(json) => {
                cfg.options.insert(k, json);
            }
            Err(msg) => cx.err(v.span(), Some(key), msg),
        }
    }
    (cfg, spans)
}

fn file_spec(
    cx: &mut Ctx<'_>,
    node: &str,
    i: usize,
    f: Spanned<RawFile>,
    vars: &BTreeMap<String, String>,
    programs: &dyn HostPrograms,
) -> Option<FileSpec> {
    let span = f.span();
    let f = f.into_inner();
    let key = |k: &str| Some(format!("nodes.{node}.files[{i}].{k}"));
    let given = [
        f.contents.is_some(),
        f.source.is_some(),
        f.template.is_some(),
        f.host_program.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        cx.err(
            span,
            Some(format!("nodes.{node}.files[{i}]")),
            format!(
                "file {}: give exactly one of `contents`, `source`, `template` or `host_program` ({given} given)",
                f.path
            ),
        );
        return None;
    }
    if let (Some(v), None) = (&f.vars, &f.template) {
        cx.err(v.span(), key("vars"), "`vars` only applies to a `template`");
        return None;
    }
    let mut spec = if let Some(c) = f.contents {
        FileSpec::new(&f.path, c)
    } else if let Some(src) = f.source {
        let abs = cx.dir.join(src.get_ref());
        if !abs.is_file() {
            let shown = cx.shown(src.get_ref());
            cx.err(
                src.span(),
                key("source"),
                format!("no such file {shown} (paths are relative to the test file's directory)"),
            );
            return None;
        }
        FileSpec::from_host(&f.path, abs)
    } else if let Some(t) = f.template {
        let abs = cx.dir.join(t.get_ref());
        let text = match std::fs::read_to_string(&abs) {
            Ok(s) => s,
            Err(e) => {
                let shown = cx.shown(t.get_ref());
                cx.err(
                    t.span(),
                    key("template"),
                    format!("cannot read template {shown}: {e} (paths are relative to the test file's directory)"),
                );
                return None;
            }
        };
        let mut chosen = Vars::new();
        match &f.vars {
            None => {
                for (k, v) in vars {
                    chosen.insert(k, v);
                }
            }
            Some(list) => {
                for name in list.get_ref() {
                    match vars.get(name) {
                        Some(v) => chosen.insert(name, v),
                        None => {
                            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                            cx.err(
                                list.span(),
                                key("vars"),
                                format!(
                                    "`{name}` is not in [vars] (known: {})",
                                    if known.is_empty() {
                                        "none".into()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                            return None;
                        }
                    }
                }
            }
        }
        let shown = abs.display().to_string();
        match machinist::substitute_named(&shown, &text, &chosen) {
            Ok(rendered) => FileSpec::from_template(&f.path, shown, rendered),
            Err(e) => {
                cx.err(t.span(), key("template"), e.to_string());
                return None;
            }
        }
    } else {
        let p = f.host_program.expect("checked");
        match programs.resolve(p.get_ref()) {
            Ok(host) => FileSpec::from_host(&f.path, host),
            Err(e) => {
                cx.err(p.span(), key("host_program"), e);
                return None;
            }
        }
    };
    if let Some(m) = f.mode {
        spec.mode = m;
    }
    if let Some(o) = f.owner {
        spec.owner = o;
    }
    if let Some(g) = f.group {
        spec.group = g;
    }
    Some(spec)
}

/// A TOML option as JSON; a string that is exactly `@name@` becomes the variable `name` with its
/// TOML type (`port = "@port@"` is the number 3000).
fn option_value(
    v: &toml::Value,
    typed: &BTreeMap<String, toml::Value>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => {
            let name = s
                .strip_prefix('@')
                .and_then(|r| r.strip_suffix('@'))
                .filter(|n| {
                    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            match name {
                Some(n) => match typed.get(n) {
                    Some(val) => option_value(val, typed)?,
                    None => {
                        return Err(format!(
                            "`@{n}@` names no variable in [vars] (known: {})",
                            if typed.is_empty() {
                                "none".to_string()
                            } else {
                                typed.keys().cloned().collect::<Vec<_>>().join(", ")
                            }
                        ))
                    }
                },
                None => J::String(s.clone()),
            }
        }
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or("a float option must be finite")?,
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(
            a.iter()
                .map(|x| option_value(x, typed))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| option_value(x, typed).map(|j| (k.clone(), j)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn script(
    cx: &mut Ctx<'_>,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
) -> Option<ScriptSource> {
    match (inline, file) {
        (Some(_), Some(f)) => {
            cx.err(
                f.span(),
                Some("script_file".into()),
                "give either `script` or `script_file`, not both",
            );
            None
        }
        (Some(s), None) => {
            let span = s.span();
            let before = &cx.text[..span.start];
            let line = before.matches('\n').count() + 1;
            let raw = &cx.text[span.start..];
            let multi = raw.starts_with("\"\"\"") || raw.starts_with("'''");
            let after_quotes = &raw[if multi { 3 } else { 1 }..];
            let first_line =
                if multi && (after_quotes.starts_with('\n') || after_quotes.starts_with("\r\n")) {
                    line + 1
                } else {
                    line
                };
            Some(ScriptSource {
                filename: cx.path.display().to_string(),
                source: format!("{}{}", "\n".repeat(first_line - 1), s.get_ref()),
                first_line,
                patch: None,
            })
        }
        (None, Some(f)) => {
            let abs = cx.dir.join(f.get_ref());
            match std::fs::read_to_string(&abs) {
                Ok(source) => Some(ScriptSource {
                    filename: abs.display().to_string(),
                    source,
                    first_line: 1,
                    patch: None,
                }),
                Err(e) => {
                    let shown = cx.shown(f.get_ref());
                    cx.err(
                        f.span(),
                        Some("script_file".into()),
                        format!("cannot read the script {shown}: {e} (paths are relative to the test file's directory)"),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

/// Applies `script_patch` (a unified diff, e.g. `diff -u script.py patched.py`) to the script.
fn apply_script_patch(
    cx: &mut Ctx<'_>,
    mut script: ScriptSource,
    patch: Spanned<String>,
) -> Option<ScriptSource> {
    let abs = cx.dir.join(patch.get_ref());
    let shown = cx.shown(patch.get_ref());
    let key = Some("script_patch".to_string());
    let text = match std::fs::read_to_string(&abs) {
        Ok(t) => t,
        Err(e) => {
            cx.err(
                patch.span(),
                key,
                format!("cannot read the patch {shown}: {e} (paths are relative to the test file's directory)"),
            );
            return None;
        }
    };
    let parsed = match diffy::Patch::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            cx.err(
                patch.span(),
                key,
                format!("{shown} is not a unified diff: {e} (make it with `diff -u script.py patched.py`)"),
            );
            return None;
        }
    };
    let changed_lines = parsed
        .hunks()
        .iter()
        .flat_map(|h| h.lines())
        .filter(|l| !matches!(l, diffy::Line::Context(_)))
        .count();
    match diffy::apply(&script.source, &parsed) {
        Ok(source) => {
            script.source = source;
            script.filename = format!("{} (patched by {})", script.filename, abs.display());
            script.patch = Some(ScriptPatch {
                path: abs,
                changed_lines,
            });
            Some(script)
        }
        Err(e) => {
            cx.err(
                patch.span(),
                key,
                format!("{shown} does not apply to the script: {e} (regenerate it against the current script)"),
            );
            None
        }
    }
}

/// The driver's rule for node names (host name and Python identifier friendly).
fn valid_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// A test name is one path component of the output directory.
fn valid_test_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.chars().any(char::is_control)
}
