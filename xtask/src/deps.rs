//! `cargo xtask deps`: the Debian packages the project needs, checked with dpkg and installed with apt.
//!
//! The package list lives in [`PACKAGES`] and nowhere else: `.ci/run`, `cargo xtask test` and
//! `cargo xtask test-postgrest` all come through [`ensure`].

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One Debian package and who needs it.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    /// The Debian package name.
    pub name: &'static str,
    /// Which crate or job needs it, and for what.
    pub why: &'static str,
}

/// Every Debian package the project needs on a fresh Debian 12 machine.
pub const PACKAGES: &[Package] = &[
    // crates/qemu and everything that boots a VM: qemu-system-x86_64 (pulls in seabios and
    // ipxe-qemu, whose efi-virtio.rom virtio-net-pci needs).
    Package {
        name: "qemu-system-x86",
        why: "qemu: runs every VM",
    },
    // crates/guest, driver: qemu-img for per-run qcow2 overlays. Installed at the SAME version as
    // qemu-system-x86 (see `QEMU_PAIR`): machines of this kind ship qemu-utils 10.0 from
    // bookworm-backports, which Breaks Debian 12's qemu-system-x86 7.2.
    Package {
        name: "qemu-utils",
        why: "guest/driver: qemu-img overlays",
    },
    // crates/guest: builds the Debian guest root filesystems.
    Package {
        name: "mmdebstrap",
        why: "guest: builds Debian images",
    },
    // crates/guest: mke2fs -d turns a root directory into an ext4 image without mounting.
    Package {
        name: "e2fsprogs",
        why: "guest: ext4 images (mke2fs -d)",
    },
    // crates/guest, qemu tests: inspecting and unpacking initramfs archives.
    Package {
        name: "cpio",
        why: "guest/qemu tests: initramfs inspection",
    },
    // crates/driver: container nodes boot the guest images with systemd-nspawn.
    Package {
        name: "systemd-container",
        why: "driver: container nodes (systemd-nspawn)",
    },
    // crates/qemu tests: the /bin/sh of the tiny test initramfs.
    Package {
        name: "busybox-static",
        why: "qemu tests: tiny initramfs",
    },
    // crates/ocr: get_screen_text / wait_for_text run the tesseract CLI ...
    Package {
        name: "tesseract-ocr",
        why: "ocr: tesseract CLI",
    },
    // ... with its English model.
    Package {
        name: "tesseract-ocr-eng",
        why: "ocr: English model",
    },
    // crates/cli: PyO3 embeds Debian's CPython (PYO3_PYTHON=/usr/bin/python3, libpython3.11).
    Package {
        name: "python3-dev",
        why: "cli: PyO3 links libpython3.11",
    },
    // crates/postgrest-lite: host-side tests start a real PostgreSQL server.
    Package {
        name: "postgresql",
        why: "postgrest-lite: host-side tests",
    },
    // crates/netsim: tests and bench read the switch's pcap captures.
    Package {
        name: "tcpdump",
        why: "netsim: pcap checks in tests/bench",
    },
    // crates/netsim: interop tests and bench against the real vde_switch / vde_plug.
    Package {
        name: "vde2",
        why: "netsim: vde_switch interop tests/bench",
    },
    // crates/ocr tests: the Lat15-VGA16 console font (read as PSF by the console reader test).
    Package {
        name: "console-setup-linux",
        why: "ocr tests: Lat15-VGA16 console font",
    },
    // crates/ocr bench only: renders the comparison baseline like NixOS does (convert).
    Package {
        name: "imagemagick",
        why: "ocr bench: NixOS-style baseline",
    },
    // apt, mmdebstrap and `apt-get download` of the test kernel over https mirrors.
    Package {
        name: "ca-certificates",
        why: "apt/mmdebstrap: https mirrors",
    },
];

/// The QEMU package pair that must be installed at the same version (`qemu-utils=<version of
/// qemu-system-x86>`, with `--allow-downgrades`).
const QEMU_PAIR: (&str, &str) = ("qemu-system-x86", "qemu-utils");

/// What dpkg says about one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `install ok installed` when the package is fully installed.
    pub status: String,
    /// The installed version, empty when not installed.
    pub version: String,
}

impl Installed {
    fn ok(&self) -> bool {
        self.status == "install ok installed"
    }
}

/// The result of checking the package list against dpkg.
#[derive(Debug, Default)]
pub struct Check {
    /// Packages that are not installed.
    pub missing: Vec<&'static str>,
    /// Set when qemu-utils is installed at another version than qemu-system-x86 (or without it).
    pub qemu_mismatch: Option<String>,
}

impl Check {
    /// True when nothing needs installing.
    pub fn satisfied(&self) -> bool {
        self.missing.is_empty() && self.qemu_mismatch.is_none()
    }
}

/// Asks dpkg (one `dpkg-query` call) about `names`.
pub fn query(names: &[&str]) -> Result<BTreeMap<String, Installed>> {
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\t${Version}\n")
        .args(names)
        .stdin(Stdio::null())
        .stderr(Stdio::null()) // "no packages found matching X" for missing ones
        .output()
        .context("running dpkg-query (is this a Debian machine? dpkg is required)")?;
    Ok(parse_dpkg_query(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `dpkg-query -W -f='${Package}\t${Status}\t${Version}\n'` output.
pub fn parse_dpkg_query(text: &str) -> BTreeMap<String, Installed> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let name = f.next()?.split(':').next()?.to_string();
            let status = f.next()?.to_string();
            let version = f.next().unwrap_or("").to_string();
            Some((name, Installed { status, version }))
        })
        .collect()
}

/// Compares the package list with what dpkg reports.
pub fn check_against(packages: &[Package], dpkg: &BTreeMap<String, Installed>) -> Check {
    let mut check = Check::default();
    for p in packages {
        if !dpkg.get(p.name).is_some_and(Installed::ok) {
            check.missing.push(p.name);
        }
    }
    let (sys, utils) = QEMU_PAIR;
    if let (Some(s), Some(u)) = (dpkg.get(sys), dpkg.get(utils)) {
        if s.ok() && u.ok() && s.version != u.version {
            check.qemu_mismatch = Some(format!(
                "{utils} {} does not match {sys} {}",
                u.version, s.version
            ));
        }
    }
    // qemu-utils present but qemu-system-x86 missing is the fresh-machine case: both get
    // reinstalled as a pair below because qemu-system-x86 is in `missing`.
    check
}

/// The apt-get install arguments (after `install`) for what `check` found missing; `qemu_version`
/// is the candidate version of qemu-system-x86 that qemu-utils is pinned to.
pub fn install_args(check: &Check, qemu_version: &str) -> Vec<String> {
    let (sys, utils) = QEMU_PAIR;
    let qemu_involved =
        check.qemu_mismatch.is_some() || check.missing.iter().any(|m| *m == sys || *m == utils);
    let mut args: Vec<String> = [
        "-y",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if qemu_involved {
        args.push("--allow-downgrades".into());
    }
    for m in &check.missing {
        if *m != sys && *m != utils {
            args.push(m.to_string());
        }
    }
    if qemu_involved {
        args.push(format!("{sys}={qemu_version}"));
        args.push(format!("{utils}={qemu_version}"));
    }
    args
}

/// The shell command a non-root user should run (printed, not executed).
pub fn manual_command(check: &Check) -> String {
    let args = install_args(check, "$V");
    let needs_v = args.iter().any(|a| a.ends_with("=$V"));
    let mut cmd = String::from("sudo apt-get update && ");
    if needs_v {
        cmd.push_str("V=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}') && ");
    }
    cmd.push_str("sudo DEBIAN_FRONTEND=noninteractive apt-get install");
    for a in args {
        cmd.push(' ');
        if a.contains('$') {
            cmd.push_str(&format!("\"{a}\""));
        } else {
            cmd.push_str(&a);
        }
    }
    cmd
}

/// True when running as root (apt-get install is allowed).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn apt(args: &[String]) -> Result<()> {
    eprintln!("xtask deps: apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// The candidate version of qemu-system-x86 according to `apt-cache policy`.
fn qemu_candidate() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["policy", QEMU_PAIR.0])
        .stdin(Stdio::null())
        .output()
        .context("running apt-cache policy qemu-system-x86")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_candidate(&text).with_context(|| {
        format!("apt-cache policy qemu-system-x86 names no candidate version:\n{text}")
    })
}

/// Extracts `Candidate:` from `apt-cache policy` output.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// Makes sure every package in [`PACKAGES`] is installed: a dpkg check first (fast path), then,
/// as root, `apt-get update` and `apt-get install`; not as root, prints the command and fails.
pub fn ensure() -> Result<()> {
    ensure_packages(PACKAGES)
}

/// [`ensure`] for an arbitrary package list (check-features has extra ones).
pub fn ensure_packages(packages: &[Package]) -> Result<()> {
    let names: Vec<&str> = packages.iter().map(|p| p.name).collect();
    let check = check_against(packages, &query(&names)?);
    if check.satisfied() {
        eprintln!("xtask deps: all {} Debian packages present", packages.len());
        return Ok(());
    }
    if !check.missing.is_empty() {
        eprintln!("xtask deps: missing Debian packages:");
        for p in packages.iter().filter(|p| check.missing.contains(&p.name)) {
            eprintln!("  {:<20} {}", p.name, p.why);
        }
    }
    if let Some(m) = &check.qemu_mismatch {
        eprintln!("xtask deps: {m}; reinstalling both at the same version");
    }
    if !is_root() {
        bail!(
            "not root, so not installing. Run:\n  {}\nthen run this command again.",
            manual_command(&check)
        );
    }
    apt(&[
        "update".into(),
        "-o".into(),
        "DPkg::Lock::Timeout=300".into(),
    ])?;
    let version = qemu_candidate().unwrap_or_default();
    let mut args = vec!["install".to_string()];
    args.extend(install_args(&check, &version));
    apt(&args)?;
    let after = check_against(packages, &query(&names)?);
    if !after.satisfied() {
        bail!(
            "still missing after apt-get install: {:?} {}",
            after.missing,
            after.qemu_mismatch.unwrap_or_default()
        );
    }
    eprintln!(
        "xtask deps: installed; all {} Debian packages present",
        packages.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpkg(entries: &[(&str, &str, &str)]) -> BTreeMap<String, Installed> {
        entries
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    Installed {
                        status: s.to_string(),
                        version: v.to_string(),
                    },
                )
            })
            .collect()
    }

    const OK: &str = "install ok installed";

    #[test]
    fn parses_dpkg_query_output_with_arch_suffix() {
        let m = parse_dpkg_query(
            "qemu-utils\tinstall ok installed\t1:7.2\nlibfoo:amd64\tdeinstall ok config-files\t\n",
        );
        assert!(m["qemu-utils"].ok());
        assert!(!m["libfoo"].ok());
    }

    #[test]
    fn all_present_is_satisfied() {
        let all: Vec<(&str, &str, &str)> = PACKAGES.iter().map(|p| (p.name, OK, "1:7.2")).collect();
        assert!(check_against(PACKAGES, &dpkg(&all)).satisfied());
    }

    #[test]
    fn fresh_machine_pins_qemu_utils_to_qemu_system_version() {
        // A fresh machine of this kind: qemu-utils 10.0 from backports, no qemu-system-x86.
        let check = check_against(
            PACKAGES,
            &dpkg(&[
                ("qemu-utils", OK, "1:10.0.2+ds-2+deb13u1~bpo12+1"),
                ("cpio", OK, "2.13"),
            ]),
        );
        assert!(check.missing.contains(&"qemu-system-x86"));
        assert!(!check.missing.contains(&"qemu-utils"));
        let args = install_args(&check, "1:7.2+dfsg-7+deb12u18+b3");
        assert!(args.contains(&"--allow-downgrades".to_string()));
        assert!(args.contains(&"qemu-utils=1:7.2+dfsg-7+deb12u18+b3".to_string()));
        assert!(args.contains(&"qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3".to_string()));
        assert!(!args.contains(&"cpio".to_string()));
    }

    #[test]
    fn version_mismatch_is_detected() {
        let mut all: Vec<(&str, &str, &str)> =
            PACKAGES.iter().map(|p| (p.name, OK, "1:7.2")).collect();
        all.retain(|e| e.0 != "qemu-utils");
        all.push(("qemu-utils", OK, "1:10.0"));
        let check = check_against(PACKAGES, &dpkg(&all));
        assert!(check.missing.is_empty());
        assert!(check.qemu_mismatch.is_some());
    }

    #[test]
    fn no_qemu_pin_when_qemu_is_fine() {
        let check = Check {
            missing: vec!["tcpdump"],
            qemu_mismatch: None,
        };
        let args = install_args(&check, "X");
        assert!(!args
            .iter()
            .any(|a| a.contains("qemu") || a == "--allow-downgrades"));
        assert_eq!(args.last().unwrap(), "tcpdump");
    }

    #[test]
    fn manual_command_is_copy_pasteable() {
        let check = Check {
            missing: vec!["qemu-system-x86", "vde2"],
            qemu_mismatch: None,
        };
        insta::assert_snapshot!(manual_command(&check));
    }

    #[test]
    fn parses_apt_cache_policy() {
        let policy =
            "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(parse_candidate("  Candidate: (none)\n"), None);
    }
}
