//! `machinist doctor`: is this host ready to run Machinist tests?
//!
//! Each check yields a [`Finding`]; anything missing names the Debian package to install and makes
//! the command exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The state of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Present and usable.
    Ok,
    /// Usable, but worth knowing (e.g. low disk space).
    Warn,
    /// Missing: install this Debian package.
    Missing {
        /// The Debian package that provides it.
        package: &'static str,
    },
}

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked ("QEMU", "accelerator", ...).
    pub what: &'static str,
    /// The outcome.
    pub state: State,
    /// Version, path, reason.
    pub detail: String,
}

impl Finding {
    fn ok(what: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            what,
            state: State::Ok,
            detail: detail.into(),
        }
    }
}

/// Runs `program args` and returns the first line of its output, or None when it cannot run.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // tesseract prints its version on stderr in some builds.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn tool(what: &'static str, program: &str, args: &[&str], package: &'static str) -> Finding {
    match first_line(program, args) {
        Some(v) => Finding::ok(what, v),
        None => Finding {
            what,
            state: State::Missing { package },
            detail: format!("`{program}` not found or not working"),
        },
    }
}

/// The QEMU version line (`QEMU emulator version 7.2.22 (...)`), from the program itself (a
/// missing or broken QEMU is reported with the package to install).
fn qemu() -> Finding {
    tool(
        "QEMU",
        "qemu-system-x86_64",
        &["--version"],
        "qemu-system-x86",
    )
}

/// qemu-img must come from the same QEMU release as qemu-system-x86_64.
fn qemu_img(qemu: &Finding) -> Finding {
    let mut f = tool("qemu-img", "qemu-img", &["--version"], "qemu-utils");
    if f.state == State::Ok && qemu.state == State::Ok {
        let release = |line: &str| {
            line.split_whitespace()
                .find(|w| w.starts_with(char::is_numeric))
                .map(str::to_string)
        };
        if release(&f.detail) != release(&qemu.detail) {
            f.state = State::Warn;
            f.detail
                .push_str(" (differs from qemu-system-x86_64: run `cargo xtask deps`)");
        }
    }
    f
}

/// The accelerator Machinist will use and why: `machinist_qemu::accel::choose()` (the
/// `MACHINIST_ACCEL` override, a cached verdict, or a real probe boot under KVM of up to ~5 s,
/// taken under the host-wide VM lock).
fn accelerator(qemu_ok: bool) -> Finding {
    if !qemu_ok && std::env::var_os("MACHINIST_ACCEL").is_none() {
        return Finding {
            what: "accelerator",
            state: State::Warn,
            detail: "unknown: QEMU is missing".into(),
        };
    }
    // The probe boots a guest: one VM at a time on this host. Only wait for the VM lock when a
    // probe will really run (no override, /dev/kvm present, no cached verdict for this host).
    let _lock = probe_needed().then(|| {
        eprintln!(
            "machinist doctor: probing KVM with a short guest boot (waiting for the VM lock)"
        );
        machinist_qemu::VmTestLock::acquire_timeout(machinist::timeouts::VM_LOCK_WAIT).ok()
    });
    let c = machinist_qemu::accel::choose();
    Finding::ok("accelerator", format!("{} ({})", c.accel, c.reason))
}

/// True when `accel::choose()` would boot a probe guest.
// Reads the accelerator cache (`<cache>/accel.json`, `{"key": accel::cache_key(), ...}`)
// directly.
fn probe_needed() -> bool {
    if std::env::var_os("MACHINIST_ACCEL").is_some_and(|v| !v.is_empty())
        || !Path::new("/dev/kvm").exists()
    {
        return false;
    }
    let cached = std::fs::read_to_string(cache_dir().join("accel.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["key"].as_str() == Some(&machinist_qemu::accel::cache_key()));
    !cached
}

fn tesseract() -> Vec<Finding> {
    let mut v = vec![tool(
        "tesseract",
        "tesseract",
        &["--version"],
        "tesseract-ocr",
    )];
    if v[0].state == State::Ok {
        let langs = Command::new("tesseract")
            .arg("--list-langs")
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default();
        v.push(if langs.lines().any(|l| l.trim() == "eng") {
            Finding::ok("tesseract eng", "English model present")
        } else {
            Finding {
                what: "tesseract eng",
                state: State::Missing {
                    package: "tesseract-ocr-eng",
                },
                detail: "no English model".into(),
            }
        });
    }
    v
}

/// Machinist's cache directory: `$MACHINIST_CACHE_DIR`, else `$XDG_CACHE_HOME/machinist`, else
/// `~/.cache/machinist` (the same rule as every crate: `machinist_qemu::cache_dir`).
pub fn cache_dir() -> PathBuf {
    machinist_qemu::cache_dir()
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Below this, image builds may fail (an image is ~1 GiB plus overlays and logs).
const LOW_DISK: u64 = 5 << 30;

fn cache() -> Vec<Finding> {
    let dir = cache_dir();
    let exists = if dir.exists() {
        ""
    } else {
        " (not created yet)"
    };
    let mut v = vec![Finding::ok(
        "cache directory",
        format!("{}{exists}", dir.display()),
    )];
    v.push(match free_bytes(&dir) {
        Some(b) if b < LOW_DISK => Finding {
            what: "free disk",
            state: State::Warn,
            detail: format!("{:.1} GiB: image builds need about 5 GiB; set MACHINIST_CACHE_DIR to a bigger disk", gib(b)),
        },
        Some(b) => Finding::ok("free disk", format!("{:.1} GiB", gib(b))),
        None => Finding { what: "free disk", state: State::Warn, detail: "unknown (statvfs failed)".into() },
    });
    v
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Runs every check.
pub fn run_checks() -> Vec<Finding> {
    let q = qemu();
    let img = qemu_img(&q);
    let qemu_ok = q.state == State::Ok;
    let mut v = vec![q, img, accelerator(qemu_ok)];
    v.extend(tesseract());
    v.push(tool(
        "mmdebstrap",
        "mmdebstrap",
        &["--version"],
        "mmdebstrap",
    ));
    v.push(tool("mke2fs", "mke2fs", &["-V"], "e2fsprogs"));
    v.extend(cache());
    v.push(containers());
    v.push(stale_run_dirs());
    v
}

/// The cgroup hierarchy at `/sys/fs/cgroup`, as container nodes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// The unified (v2) hierarchy.
    V2,
    /// The legacy (v1) hierarchies, with systemd's `name=systemd` one: the container backend
    /// gives the container the legacy hierarchy too (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0`).
    V1,
    /// Neither: no cgroup file system is mounted where systemd-nspawn needs it.
    Missing,
}

impl Cgroups {
    /// Looks at this host's `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        match nix::sys::statfs::statfs(root) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Cgroups::V2,
            Ok(_) if root.join("systemd").is_dir() => Cgroups::V1,
            _ => Cgroups::Missing,
        }
    }
}

/// The packages the container backend's host check may name (`machinist::container_host_problem`
/// says "install the Debian package <name>").
const CONTAINER_PACKAGES: [&str; 3] = ["systemd-container", "util-linux", "iproute2"];

/// Container nodes (systemd-nspawn): usable on this host or not, and why.
fn containers() -> Finding {
    container_finding(machinist::container_host_problem(), Cgroups::detect())
}

/// The container finding from the driver's host check (`problem`: why containers cannot run)
/// and the cgroup hierarchy. A missing program is `Missing` with its package; any other reason
/// (not root, no TAP devices, no overlayfs, no cgroups) is a warning: VMs do not need it.
pub fn container_finding(problem: Option<String>, cgroups: Cgroups) -> Finding {
    const WHAT: &str = "containers";
    let cgroup_note = match cgroups {
        Cgroups::V2 => "cgroup v2",
        Cgroups::V1 => {
            "cgroup v1 (the containers get the legacy hierarchy: SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0)"
        }
        Cgroups::Missing => "no cgroup hierarchy at /sys/fs/cgroup",
    };
    match problem {
        Some(why) => {
            let package = CONTAINER_PACKAGES
                .into_iter()
                .find(|p| why.contains(&format!("package {p}")));
            Finding {
                what: WHAT,
                state: match package {
                    Some(package) => State::Missing { package },
                    None => State::Warn,
                },
                detail: format!("unavailable, VMs only: {why}; {cgroup_note}"),
            }
        }
        None if cgroups == Cgroups::Missing => Finding {
            what: WHAT,
            state: State::Warn,
            detail: format!(
                "unavailable, VMs only: {cgroup_note}; systemd-nspawn needs cgroups mounted \
                 there (mount cgroup2 on /sys/fs/cgroup)"
            ),
        },
        None => Finding::ok(
            WHAT,
            format!("usable (systemd-nspawn, root, /dev/net/tun, overlayfs); {cgroup_note}"),
        ),
    }
}

/// Removes run directories left behind by killed test processes (their owner is gone).
fn stale_run_dirs() -> Finding {
    let base = machinist::stale::run_dir_base();
    let removed = machinist::stale::remove_stale_run_dirs(&base);
    let detail = if removed.is_empty() {
        format!("none left behind in {}", base.display())
    } else {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        format!(
            "removed {} left behind by killed test processes: {}",
            removed.len(),
            names.join(", ")
        )
    };
    Finding::ok("run directories", detail)
}

/// The report as printed, plus a closing line naming what to install.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let mark = match f.state {
            State::Ok => "ok     ",
            State::Warn => "warn   ",
            State::Missing { .. } => "MISSING",
        };
        out.push_str(&format!("{mark} {:<16} {}\n", f.what, f.detail));
    }
    let mut missing: Vec<&str> = findings
        .iter()
        .filter_map(|f| match f.state {
            State::Missing { package } => Some(package),
            _ => None,
        })
        .collect();
    missing.dedup();
    if missing.is_empty() {
        out.push_str("machinist doctor: this host can run Machinist tests\n");
    } else {
        out.push_str(&format!(
            "machinist doctor: missing Debian packages: {}\n  install them with: apt-get install {}   (or: cargo xtask deps)\n",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    out
}

/// True when something is missing (exit code 1).
pub fn any_missing(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| matches!(f.state, State::Missing { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_missing_packages() {
        let findings = vec![
            Finding::ok("QEMU", "QEMU emulator version 7.2.22"),
            Finding::ok("accelerator", "tcg (MACHINIST_ACCEL=tcg)"),
            Finding {
                what: "tesseract",
                state: State::Missing {
                    package: "tesseract-ocr",
                },
                detail: "`tesseract` not found or not working".into(),
            },
            Finding {
                what: "free disk",
                state: State::Warn,
                detail: "1.0 GiB".into(),
            },
            Finding {
                what: "mmdebstrap",
                state: State::Missing {
                    package: "mmdebstrap",
                },
                detail: "`mmdebstrap` not found or not working".into(),
            },
        ];
        assert!(any_missing(&findings));
        insta::assert_snapshot!(render(&findings));
    }

    #[test]
    fn all_ok_report() {
        let findings = vec![Finding::ok("QEMU", "7.2")];
        assert!(!any_missing(&findings));
        assert!(render(&findings).ends_with("this host can run Machinist tests\n"));
    }

    #[test]
    fn container_findings() {
        let findings = vec![
            container_finding(None, Cgroups::V2),
            container_finding(None, Cgroups::V1),
            container_finding(None, Cgroups::Missing),
            container_finding(
                Some(
                    "container nodes need root (mounts, namespaces and systemd-nspawn); run the \
                     test as root or use VMs"
                        .into(),
                ),
                Cgroups::V2,
            ),
            container_finding(
                Some(
                    "systemd-nspawn not found: install the Debian package systemd-container \
                     (`cargo xtask deps` does)"
                        .into(),
                ),
                Cgroups::V1,
            ),
        ];
        assert_eq!(findings[0].state, State::Ok);
        assert_eq!(findings[2].state, State::Warn);
        assert_eq!(findings[3].state, State::Warn);
        assert_eq!(
            findings[4].state,
            State::Missing {
                package: "systemd-container"
            }
        );
        insta::assert_snapshot!(render(&findings));
    }

    #[test]
    fn this_hosts_container_finding_agrees_with_the_driver() {
        let f = containers();
        assert_eq!(
            f.state == State::Ok,
            machinist::container_host_problem().is_none() && Cgroups::detect() != Cgroups::Missing,
            "{f:?}"
        );
    }

    #[test]
    fn free_bytes_walks_up_to_an_existing_directory() {
        assert!(free_bytes(Path::new("/tmp/does/not/exist/yet")).unwrap() > 0);
    }
}
