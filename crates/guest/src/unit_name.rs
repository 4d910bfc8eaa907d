//! systemd unit names (systemd.unit(5)): which names a node configuration may give, and the full
//! name (with its unit-type suffix) each one stands for.
//!
//! A unit name is `prefix[@instance].type`: `prefix` and `instance` are letters, digits and
//! `:_.-` (the instance may also hold `@`), other characters written as `\xNN` escapes the way
//! `systemd-escape` writes them; `type` is one of [`UNIT_TYPES`]; at most [`UNIT_NAME_MAX`]
//! characters in all. `prefix@.type` is a template: it exists only as a file, and is started,
//! enabled, waited on or ordered against as an instance `prefix@instance.type`.
//!
//! On top of systemd's rules: a name may not start with `-` (systemctl would read it as an
//! option; only systemd's own root units `-.mount` and `-.slice` may be ordered against).
//!
//! Like `systemctl`, a name without a unit-type suffix means a service: `postgresql` and
//! `postgresql.service` are the same unit, and `.service` is never added twice.

/// The unit types systemd knows: the suffix after a unit name's last `.`.
pub const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// The longest unit name systemd accepts, suffix included.
pub const UNIT_NAME_MAX: usize = 255;

/// systemd's root mount and root slice: the only unit names starting with `-` a node may order
/// against.
const ROOT_UNITS: &[&str] = &["-.mount", "-.slice"];

/// The unit type of `name` if it ends with `.<type>` of a known type (`foo.socket` -> `socket`).
pub(crate) fn unit_type(name: &str) -> Option<&str> {
    let (prefix, suffix) = name.rsplit_once('.')?;
    (!prefix.is_empty() && UNIT_TYPES.contains(&suffix)).then_some(suffix)
}

/// The full unit name `name` stands for: unchanged if it ends with a unit-type suffix
/// (`.socket`, `.timer`, `.target`, `.service`, ...), otherwise with `.service` appended (as
/// `systemctl` does): `postgresql` -> `postgresql.service`, never `foo.service.service`.
pub fn full_unit_name(name: &str) -> String {
    if unit_type(name).is_some() {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// `name` without a trailing `.service` (the stem a service or first-boot script is named by).
pub(crate) fn service_stem(name: &str) -> &str {
    match name.strip_suffix(".service") {
        Some(stem) if !stem.is_empty() => stem,
        _ => name,
    }
}

/// How a name is used, which decides what it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A unit the node orders against or depends on (`after`, `before`, `wants`, `requires`):
    /// systemd's root units `-.mount` and `-.slice` are allowed.
    Reference,
    /// A unit whose `.wants/` directory is written (`wanted_by`): the type must be given.
    WantedBy,
    /// A unit the node masks.
    Mask,
    /// A service the node defines; `started` if something starts it (its `wanted_by` is not
    /// empty), which a template cannot be.
    Service {
        /// The service is wanted by a unit, so started.
        started: bool,
        /// The name is also a file name in an `ExecStart=` line (script service), where
        /// systemd would decode `\` escapes.
        file_name: bool,
    },
    /// A first-boot script: part of `machinist-first-boot-<name>.service`, started at boot, and
    /// the name of its script and stamp file.
    FirstBoot,
}

/// Why `name`, used as `what`, breaks systemd's unit-name rules, if it does: the message names
/// the value, the rule and what to write instead.
pub(crate) fn problem(name: &str, what: Use) -> Option<String> {
    if name.is_empty() {
        return Some(match what {
            Use::Service { .. } | Use::FirstBoot => {
                "the name is empty: give one, e.g. `app` (unit `app.service`)".to_string()
            }
            _ => "an empty unit name: give one, e.g. `postgresql.service`".to_string(),
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_.-@\\".contains(*c)))
    {
        let hint = if c == '/' {
            "; for a path, write the name `systemd-escape --path` gives (`/mnt/my data` -> `mnt-my\\x20data.mount`)".to_string()
        } else if c.is_ascii_graphic() || c == ' ' {
            format!(
                "; write it as the escape `systemd-escape` gives (`\\x{:02x}`)",
                c as u32
            )
        } else {
            String::new()
        };
        return Some(format!(
            "`{}`: {c:?} is not allowed in a unit name (letters, digits and `:_.-@`, other characters as `\\xNN` escapes){hint}",
            name.escape_debug()
        ));
    }
    if let Some(p) = bad_escape(name) {
        return Some(format!(
            "`{name}`: a `\\` in a unit name must start an escape `\\xNN` of two hex digits (as `systemd-escape` writes them, e.g. `foo\\x2dbar`); found `{p}`"
        ));
    }
    if name.contains('\\')
        && matches!(
            what,
            Use::FirstBoot
                | Use::Service {
                    file_name: true,
                    ..
                }
        )
    {
        return Some(format!(
            "`{name}`: this name is also a script's file name, where systemd would decode the `\\` escape; use letters, digits and `:_.-@`"
        ));
    }
    let full = match what {
        Use::FirstBoot => format!("machinist-first-boot-{}.service", service_stem(name)),
        Use::Service { .. } => format!("{}.service", service_stem(name)),
        _ => full_unit_name(name),
    };
    if what == Use::WantedBy && unit_type(name).is_none() {
        return Some(format!(
            "`{name}`: wanted_by needs the unit's type, e.g. `{name}.target` (or `{name}.service`)"
        ));
    }
    // A first-boot name is not at the start of its unit's name.
    let root_unit = what == Use::Reference && ROOT_UNITS.contains(&name);
    if name.starts_with('-') && what != Use::FirstBoot && !root_unit {
        let rest = name.trim_start_matches('-');
        let example = if rest.is_empty() || rest.starts_with('.') {
            "app".to_string()
        } else {
            rest.to_string()
        };
        return Some(format!(
            "`{name}`: a unit name cannot start with `-` (systemctl would read it as an option); rename it, e.g. `{example}`"
        ));
    }
    // prefix[@instance].type
    let stem = match unit_type(&full) {
        Some(t) => &full[..full.len() - t.len() - 1],
        None => full.as_str(),
    };
    let only_type = name
        .strip_prefix('.')
        .is_some_and(|t| UNIT_TYPES.contains(&t));
    if stem.is_empty() || only_type {
        return Some(format!(
            "`{name}`: a unit name needs a name before its type, e.g. `app.service`"
        ));
    }
    if let Some((prefix, instance)) = stem.split_once('@') {
        if prefix.is_empty() {
            return Some(format!(
                "`{name}`: a unit name needs a name before `@`, e.g. `app{}`",
                &name[name.find('@').unwrap_or(0)..]
            ));
        }
        let template_ok = matches!(what, Use::Service { started: false, .. });
        if instance.is_empty() && !template_ok {
            let example = match name.find("@.") {
                Some(at) => format!("{}@1{}", &name[..at], &name[at + 1..]),
                None => format!("{name}1"),
            };
            let extra = match what {
                Use::Service { .. } => {
                    " (to define a template that other units start as instances, leave its wanted_by empty)"
                }
                Use::Mask => " (mask each instance by name)",
                _ => "",
            };
            return Some(format!(
                "`{name}`: a template needs an instance, e.g. `{example}`{extra}"
            ));
        }
    }
    if full.len() > UNIT_NAME_MAX {
        let full_note = if full != name {
            format!(" as `{}...`", &full[..40])
        } else {
            String::new()
        };
        return Some(format!(
            "`{}...`: a unit name is at most {UNIT_NAME_MAX} characters with its suffix; this one is {}{full_note}: shorten it",
            &name[..name.len().min(40)],
            full.len()
        ));
    }
    None
}

/// The first `\` in `name` that does not start `\xNN` (two hex digits), with what follows it.
fn bad_escape(name: &str) -> Option<&str> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let ok = bytes.get(i + 1) == Some(&b'x')
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 3).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Some(&name[i..name.len().min(i + 4)]);
            }
            i += 4;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_added_once_and_other_types_kept() {
        assert_eq!(full_unit_name("postgresql"), "postgresql.service");
        assert_eq!(full_unit_name("postgresql.service"), "postgresql.service");
        assert_eq!(full_unit_name("app.v2"), "app.v2.service");
        for kept in [
            "a.socket",
            "a.timer",
            "multi-user.target",
            "-.mount",
            "a.path",
            "a@1.slice",
        ] {
            assert_eq!(full_unit_name(kept), kept);
        }
        assert_eq!(service_stem("app.service"), "app");
        assert_eq!(service_stem("app"), "app");
        assert_eq!(service_stem(".service"), ".service");
    }

    #[test]
    fn systemd_rules() {
        let ok = [
            "postgresql",
            "postgresql.service",
            "postgresql@15-main.service",
            "getty@tty1",
            "network-online.target",
            "dev-disk-by\\x2dlabel-data.device",
            "a@b@c.service",
            "-.mount",
            "x:y_z.socket",
        ];
        for n in ok {
            assert_eq!(problem(n, Use::Reference), None, "{n}");
        }
        let bad = [
            ("", "empty"),
            ("-dash", "cannot start with `-`"),
            ("tmpl@", "a template needs an instance, e.g. `tmpl@1`"),
            (
                "tmpl@.service",
                "a template needs an instance, e.g. `tmpl@1.service`",
            ),
            ("@1", "a name before `@`"),
            (".service", "a name before its type"),
            ("a b", "' ' is not allowed"),
            ("/mnt/x", "systemd-escape --path"),
            ("a\\x2", "`\\x2`"),
            ("a\\n", "must start an escape"),
        ];
        for (n, want) in bad {
            let p = problem(n, Use::Reference).unwrap_or_default();
            assert!(p.contains(want), "{n}: {p}");
        }
        // 247 + ".service" = 255 characters: the longest name.
        assert_eq!(problem(&"a".repeat(247), Use::Reference), None);
        let p = problem(&"a".repeat(248), Use::Reference).unwrap_or_default();
        assert!(p.contains("at most 255 characters"), "{p}");
        assert!(p.contains("this one is 256"), "{p}");
    }
}
