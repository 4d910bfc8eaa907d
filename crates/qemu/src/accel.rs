//! Accelerator choice: KVM only when a real guest boots under it.
//!
//! `/dev/kvm` can exist while guests hang under it (as on our own machines), so the probe boots
//! the test kernel with a tiny initramfs under KVM and requires a marker on the serial console
//! within [`PROBE_TIMEOUT`]. The verdict is cached per host, keyed by QEMU version and host
//! kernel release; `MACHINIST_ACCEL=kvm|tcg` overrides everything.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cache::cache_dir;
use crate::command::{Accel, Display, QemuCommand};
use crate::kernel::{test_kernel, AfterMarker, TinyInitramfs};
use crate::process::QemuProcess;
use crate::version::qemu_version;

/// How long the probe guest may take to print its marker.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_MARKER: &str = "MACHINIST-KVM-PROBE-OK";

/// How a choice was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChoiceSource {
    /// `MACHINIST_ACCEL` set it.
    Env,
    /// `/dev/kvm` is missing or not usable.
    NoKvm,
    /// A probe boot just ran.
    Probe,
    /// A cached probe verdict for this QEMU version and host kernel.
    Cache,
    /// The probe could not run (e.g. no probe kernel); not cached.
    ProbeUnavailable,
}

/// The accelerator to use and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Human-readable reason, e.g. "KVM present but a probe guest did not boot within 5 s".
    pub reason: String,
    /// How the choice was made.
    pub source: ChoiceSource,
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.accel, self.reason)
    }
}

/// The accelerator for this process: decided once (env override, `/dev/kvm`, cached verdict or
/// a probe boot of up to ~5 s), logged once with `tracing::info`, then memoised.
///
/// Blocking; from async code call it via `tokio::task::spawn_blocking` (the probe QEMU is still
/// forked from the dedicated spawner thread).
pub fn choose() -> AccelChoice {
    static CHOICE: OnceLock<AccelChoice> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let env = std::env::var("MACHINIST_ACCEL").ok();
            let c = decide(env.as_deref(), &cache_dir(), Path::new("/dev/kvm"));
            tracing::info!(accel = %c.accel, source = ?c.source, "accelerator: {} ({})", c.accel, c.reason);
            c
        })
        .clone()
}

/// The decision procedure behind [`choose`], with explicit inputs and no memoisation.
pub fn decide(env_override: Option<&str>, cache: &Path, kvm_device: &Path) -> AccelChoice {
    decide_with(env_override, cache, kvm_device, || probe_kvm(PROBE_TIMEOUT))
}

/// [`decide`] with the probe as a parameter (tests force its failure modes with a fake QEMU).
fn decide_with(
    env_override: Option<&str>,
    cache: &Path,
    kvm_device: &Path,
    probe: impl FnOnce() -> AccelChoice,
) -> AccelChoice {
    if let Some(v) = env_override.map(str::trim).filter(|v| !v.is_empty()) {
        return match v.to_ascii_lowercase().as_str() {
            "kvm" => choice(Accel::Kvm, "MACHINIST_ACCEL=kvm", ChoiceSource::Env),
            "tcg" => choice(Accel::Tcg, "MACHINIST_ACCEL=tcg", ChoiceSource::Env),
            other => {
                tracing::warn!("ignoring MACHINIST_ACCEL={other}: expected kvm or tcg");
                choice(
                    Accel::Tcg,
                    &format!("MACHINIST_ACCEL={other} is not kvm|tcg; using TCG"),
                    ChoiceSource::Env,
                )
            }
        };
    }
    if !kvm_device.exists() {
        return choice(
            Accel::Tcg,
            &format!("{} does not exist", kvm_device.display()),
            ChoiceSource::NoKvm,
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_device)
    {
        return choice(
            Accel::Tcg,
            &format!(
                "{} is not usable ({e}); add the user to group kvm to try KVM",
                kvm_device.display()
            ),
            ChoiceSource::NoKvm,
        );
    }
    let key = cache_key();
    let file = cache.join("accel.json");
    if let Some(c) = read_cache(&file, &key) {
        return c;
    }
    let c = probe();
    if c.source == ChoiceSource::Probe {
        write_cache(&file, &key, &c);
    }
    c
}

/// Every reason is one line: a multi-line one (e.g. an error with a nested cause) is logged in
/// full at debug level and condensed.
fn choice(accel: Accel, reason: &str, source: ChoiceSource) -> AccelChoice {
    let short = truncate_chars(&clean(reason), MAX_REASON_CHARS);
    if short != reason {
        tracing::debug!("accelerator reason in full: {reason}");
    }
    AccelChoice {
        accel,
        reason: short,
        source,
    }
}

/// Boots the test kernel under KVM and waits up to `timeout` for the probe marker on serial.
/// Returns KVM if it appeared, else TCG with the reason. Does not consult or write the cache.
pub fn probe_kvm(timeout: Duration) -> AccelChoice {
    let kernel = match test_kernel() {
        Ok(k) => k,
        Err(e) => {
            return choice(
                Accel::Tcg,
                &format!("KVM present but no probe kernel is available ({e})"),
                ChoiceSource::ProbeUnavailable,
            )
        }
    };
    let dir = match probe_dir() {
        Ok(d) => d,
        Err(e) => {
            return choice(
                Accel::Tcg,
                &format!("KVM present but the probe could not create a temp dir ({e})"),
                ChoiceSource::ProbeUnavailable,
            )
        }
    };
    let initrd = dir.path().join("probe.cpio");
    if let Err(e) = TinyInitramfs::new(PROBE_MARKER)
        .after(AfterMarker::Poweroff)
        .write(&kernel, &initrd)
    {
        return choice(
            Accel::Tcg,
            &format!("KVM present but the probe initramfs cannot be built ({e})"),
            ChoiceSource::ProbeUnavailable,
        );
    }
    let cmd = probe_command()
        .kernel(&kernel.vmlinuz)
        .initrd(&initrd)
        .append("console=ttyS0 panic=-1 quiet");
    run_probe(&cmd, timeout)
}

/// The probe's command line without its boot files.
fn probe_command() -> QemuCommand {
    QemuCommand::new("kvm-probe")
        .accel(Accel::Kvm)
        .memory_mib(256)
        .cores(1)
        .display(Display::None)
}

/// A private directory for the probe's initramfs: a fresh random name (`mkdtemp`, mode 0700),
/// never a path another user could predict and plant a symlink at. Removed on drop.
fn probe_dir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("machinist-kvm-probe-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

/// Starts `cmd` (a KVM guest that prints [`PROBE_MARKER`] on serial) and waits up to `timeout`
/// for the marker. Always kills and reaps QEMU before returning.
fn run_probe(cmd: &QemuCommand, timeout: Duration) -> AccelChoice {
    let started = Instant::now();
    let qemu = match QemuProcess::spawn(cmd) {
        Ok(q) => q,
        Err(e) => {
            return choice(
                Accel::Tcg,
                &format!("KVM present but the probe could not start QEMU ({e})"),
                ChoiceSource::ProbeUnavailable,
            )
        }
    };
    let hit =
        qemu.serial()
            .wait_for_blocking(0, PROBE_MARKER, |l| l.contains(PROBE_MARKER), timeout);
    let elapsed = started.elapsed();
    // Closed serial = QEMU exited by itself (or is about to): collect its status for the reason.
    let exited = match &hit {
        Err(crate::serial::SerialError::Closed { .. }) => {
            qemu.wait_timeout_blocking(Duration::from_secs(2))
        }
        _ => None,
    };
    // A guest hung under KVM may ignore SIGTERM: kill outright, don't wait for the grace.
    qemu.start_kill();
    if qemu.wait_timeout_blocking(Duration::from_secs(5)).is_none() {
        tracing::warn!(
            pid = qemu.pid(),
            "the KVM probe QEMU did not die within 5 s of SIGKILL"
        );
    }
    match (hit, exited) {
        (Ok(_), _) => choice(
            Accel::Kvm,
            &format!("a KVM probe guest booted in {:.2} s", elapsed.as_secs_f64()),
            ChoiceSource::Probe,
        ),
        (Err(_), Some(status)) => {
            let stderr = qemu.stderr_after_exit_blocking(Duration::from_secs(1));
            tracing::debug!(
                "the KVM probe QEMU exited with {}; its stderr:\n{}",
                crate::error::describe_status(&status),
                stderr.trim_end()
            );
            choice(
                Accel::Tcg,
                &probe_failure_reason(&status, &stderr),
                ChoiceSource::Probe,
            )
        }
        (Err(crate::serial::SerialError::Closed { .. }), None) => choice(
            Accel::Tcg,
            "KVM present but the probe QEMU closed its console without booting a guest",
            ChoiceSource::Probe,
        ),
        (Err(_), None) => choice(
            Accel::Tcg,
            &format!(
                "KVM present but a probe guest did not boot within {:.0} s",
                timeout.as_secs_f64()
            ),
            ChoiceSource::Probe,
        ),
    }
}

/// Longest message taken from QEMU's stderr into a reason, in characters.
pub const MAX_MESSAGE_CHARS: usize = 120;
/// Longest reason, in characters (longer ones are cut with `…`).
pub const MAX_REASON_CHARS: usize = 240;

/// The one-line reason for a probe QEMU that exited before its guest booted, e.g.
/// `KVM present but QEMU aborted under it: failed to set MSR 0x10a to 0x69`.
///
/// Pure: `status` says how QEMU ended ("aborted" for SIGABRT, "exited with code N", "was killed
/// by signal N (NAME)"); the message is QEMU's first meaningful stderr line (see
/// [`first_error_line`]), or a note that stderr was empty.
pub fn probe_failure_reason(status: &ExitStatus, stderr: &str) -> String {
    let how = describe_end(status);
    match first_error_line(stderr) {
        Some(msg) => format!("KVM present but QEMU {how} under it: {msg}"),
        None => format!("KVM present but QEMU {how} under it (nothing on stderr)"),
    }
}

/// How a process ended, as a verb phrase: `aborted`, `exited with code 1`, `was killed by
/// signal 11 (SIGSEGV)`.
fn describe_end(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else if status.signal() == Some(libc::SIGABRT) {
        "aborted".into()
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "unknown".into());
        format!("was killed by signal {sig} ({name})")
    } else {
        format!("ended with {status}")
    }
}

/// QEMU's first meaningful error in `stderr`, condensed to one line of at most
/// [`MAX_MESSAGE_CHARS`] characters; `None` when there is nothing to say.
///
/// The program prefix (`qemu-system-x86_64: `) and an `error: ` prefix are removed, and so is a
/// source location before an assertion (`../target/i386/kvm/kvm.c:2893: `). Plain error lines
/// win over assertion failures, which win over warnings (QEMU often warns about CPU features
/// before the real error).
pub fn first_error_line(stderr: &str) -> Option<String> {
    let mut best: Option<(u8, String)> = None;
    for raw in stderr.lines() {
        let line = clean(raw);
        if line.is_empty() {
            continue;
        }
        let line = strip_program(&line);
        let (rank, text) = classify(line);
        if text.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, text));
        }
        if rank == 0 {
            break;
        }
    }
    best.map(|(_, t)| truncate_chars(&t, MAX_MESSAGE_CHARS))
}

/// Control characters (escape sequences, `\r`, tabs) become spaces; runs of whitespace collapse.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `qemu-system-x86_64: msg` or `/usr/bin/qemu-system-x86_64: msg` -> `msg`.
fn strip_program(line: &str) -> &str {
    if let Some((head, rest)) = line.split_once(": ") {
        let prog = head.rsplit('/').next().unwrap_or(head);
        if !head.contains(' ') && prog.starts_with("qemu") {
            return rest.trim_start();
        }
    }
    line
}

/// (rank, text): 0 = an error, 1 = an assertion failure, 2 = a warning.
fn classify(line: &str) -> (u8, String) {
    let lower = line.to_ascii_lowercase();
    if lower.starts_with("warning:") {
        return (2, line.to_string());
    }
    if line.contains("Assertion `") || lower.contains("assertion failed") {
        // "../target/i386/kvm/kvm.c:2893: kvm_buf_set_msrs: Assertion ..." -> drop the location.
        let text = match line.split_once(": ") {
            Some((loc, rest)) if is_source_location(loc) => rest,
            _ => line,
        };
        return (1, text.to_string());
    }
    for prefix in ["error: ", "error:"] {
        if lower.starts_with(prefix) {
            return (0, line[prefix.len()..].trim_start().to_string());
        }
    }
    (0, line.to_string())
}

/// `path/file.c:123`.
fn is_source_location(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((file, line)) => {
            !file.contains(' ')
                && (file.ends_with(".c") || file.ends_with(".h") || file.ends_with(".rs"))
                && !line.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// At most `max` characters; a cut string ends with `…`.
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

/// Whether `reason` is one line a user can read at a glance (what every reason must be).
pub fn is_one_line(reason: &str) -> bool {
    !reason.is_empty()
        && !reason.chars().any(char::is_control)
        && reason.chars().count() <= MAX_REASON_CHARS
}

/// `<QEMU version line>|<host kernel release>`.
pub fn cache_key() -> String {
    let qemu = qemu_version()
        .map(|v| v.text)
        .unwrap_or_else(|_| "qemu-unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "kernel-unknown".into());
    format!("{qemu}|{kernel}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    key: String,
    choice: AccelChoice,
}

fn read_cache(file: &Path, key: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(file).ok()?;
    let e: CacheEntry = serde_json::from_str(&text).ok()?;
    if e.key != key {
        return None;
    }
    if !is_one_line(&e.choice.reason) {
        // Written by an older version that kept QEMU's whole stderr: probe again (and rewrite).
        tracing::debug!(
            "ignoring the cached accelerator verdict in {}: its reason is not one line",
            file.display()
        );
        return None;
    }
    Some(AccelChoice {
        source: ChoiceSource::Cache,
        reason: truncate_chars(
            &format!("{} (cached probe verdict)", e.choice.reason),
            MAX_REASON_CHARS,
        ),
        ..e.choice
    })
}

fn write_cache(file: &Path, key: &str, c: &AccelChoice) {
    let entry = CacheEntry {
        key: key.to_string(),
        choice: c.clone(),
    };
    let write = || -> std::io::Result<()> {
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::warn!(
            "cannot cache the accelerator verdict in {}: {e}",
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::testutil::{fake_qemu, gone_within, read_pid};

    const MSR_ERROR: &str = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
        qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion \
        `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";

    fn aborted() -> ExitStatus {
        ExitStatus::from_raw(libc::SIGABRT)
    }

    fn code(n: i32) -> ExitStatus {
        ExitStatus::from_raw(n << 8)
    }

    fn assert_one_line(c: &AccelChoice) {
        assert!(is_one_line(&c.reason), "not one line: {:?}", c.reason);
    }

    #[test]
    fn reason_from_two_line_abort() {
        assert_eq!(
            probe_failure_reason(&aborted(), MSR_ERROR),
            "KVM present but QEMU aborted under it: failed to set MSR 0x10a to 0x69"
        );
    }

    #[test]
    fn reason_from_assertion_only() {
        let stderr = "qemu-system-x86_64: ../target/i386/kvm/kvm.c:2893: kvm_buf_set_msrs: \
                      Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";
        assert_eq!(
            probe_failure_reason(&aborted(), stderr),
            "KVM present but QEMU aborted under it: kvm_buf_set_msrs: Assertion \
             `ret == cpu->kvm_msr_buf->nmsrs' failed."
        );
    }

    #[test]
    fn reason_with_empty_stderr() {
        assert_eq!(
            probe_failure_reason(&code(1), ""),
            "KVM present but QEMU exited with code 1 under it (nothing on stderr)"
        );
        assert_eq!(
            probe_failure_reason(&aborted(), " \n\r\n"),
            "KVM present but QEMU aborted under it (nothing on stderr)"
        );
    }

    #[test]
    fn reason_skips_warnings_before_the_error() {
        let stderr = "qemu-system-x86_64: warning: host doesn't support requested feature: \
                      CPUID.01H:ECX.pni [bit 0]\r\n\
                      /usr/bin/qemu-system-x86_64: -accel kvm: Could not access KVM kernel \
                      module: Permission denied\n\
                      qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied\n";
        assert_eq!(
            probe_failure_reason(&code(1), stderr),
            "KVM present but QEMU exited with code 1 under it: -accel kvm: Could not access KVM \
             kernel module: Permission denied"
        );
        // Warnings alone are still better than nothing.
        let only = "qemu-system-x86_64: warning: host doesn't support requested feature: \
                    CPUID.01H:ECX.pni [bit 0]\n";
        assert_eq!(
            first_error_line(only).unwrap(),
            "warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]"
        );
    }

    #[test]
    fn reason_is_bounded_and_clean() {
        let long = format!(
            "qemu-system-x86_64: \x1b[31m{}\x1b[0m\ttail\n{}",
            "x".repeat(5000),
            "second line\n".repeat(100)
        );
        let r = probe_failure_reason(&ExitStatus::from_raw(libc::SIGSEGV), &long);
        assert!(
            r.starts_with("KVM present but QEMU was killed by signal 11 (SIGSEGV) under it: "),
            "{r}"
        );
        assert!(r.ends_with('…'), "{r}");
        assert!(
            !r.contains('\x1b') && !r.contains('\n') && !r.contains('\t'),
            "{r:?}"
        );
        let msg = first_error_line(&long).unwrap();
        assert_eq!(msg.chars().count(), MAX_MESSAGE_CHARS);
        assert!(is_one_line(&r), "{r}");
    }

    #[test]
    fn every_reason_is_one_line() {
        let c = choice(
            Accel::Tcg,
            &format!(
                "KVM present but no probe kernel is available (apt-get failed:\nE: {}\nW: x)",
                "y".repeat(400)
            ),
            ChoiceSource::ProbeUnavailable,
        );
        assert_one_line(&c);
        assert!(
            c.reason
                .starts_with("KVM present but no probe kernel is available (apt-get failed: E: y"),
            "{c}"
        );
    }

    #[test]
    fn env_override_and_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let c = decide(Some("kvm"), dir.path(), Path::new("/nonexistent/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Kvm, ChoiceSource::Env));
        let c = decide(Some(" TCG "), dir.path(), Path::new("/dev/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Tcg, ChoiceSource::Env));
        let c = decide(Some("xen"), dir.path(), Path::new("/dev/kvm"));
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("xen"));
        let c = decide(None, dir.path(), Path::new("/nonexistent/kvm"));
        assert_eq!((c.accel, c.source), (Accel::Tcg, ChoiceSource::NoKvm));
        assert_eq!(c.reason, "/nonexistent/kvm does not exist");
    }

    #[test]
    fn kvm_device_that_cannot_be_opened() {
        // A directory cannot be opened read-write, even by root (a chmod 000 file could).
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::create_dir(&dev).unwrap();
        let c = decide_with(None, dir.path(), &dev, || {
            panic!("no probe without a usable device")
        });
        assert_eq!((c.accel, c.source), (Accel::Tcg, ChoiceSource::NoKvm));
        assert!(c.reason.contains("is not usable"), "{c}");
        assert!(c.reason.contains("group kvm"), "{c}");
        assert_one_line(&c);
    }

    #[test]
    fn qemu_aborting_under_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let qemu = fake_qemu(
            dir.path(),
            "qemu-abort",
            &format!(
                "ulimit -c 0\nprintf '%s' {} >&2\nkill -ABRT $$\nsleep 5\n",
                crate::shell_quote(MSR_ERROR)
            ),
        );
        let t = Instant::now();
        let c = decide_with(None, dir.path(), &dev, || {
            run_probe(&probe_command().binary(&qemu), Duration::from_secs(10))
        });
        assert_eq!(
            (c.accel, c.source),
            (Accel::Tcg, ChoiceSource::Probe),
            "{c}"
        );
        assert_eq!(
            c.reason,
            "KVM present but QEMU aborted under it: failed to set MSR 0x10a to 0x69"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // The verdict is cached, still one line.
        let again = decide_with(None, dir.path(), &dev, || panic!("the cache should answer"));
        assert_eq!(
            (again.accel, again.source),
            (Accel::Tcg, ChoiceSource::Cache)
        );
        assert_eq!(
            again.reason,
            "KVM present but QEMU aborted under it: failed to set MSR 0x10a to 0x69 \
             (cached probe verdict)"
        );
    }

    #[test]
    fn qemu_hanging_under_kvm_is_given_up_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let qemu = fake_qemu(
            dir.path(),
            "qemu-hang",
            &format!("echo $$ > {d}/pid\nsleep 600 &\necho $! > {d}/child\nwait\n"),
        );
        let t = Instant::now();
        let c = run_probe(&probe_command().binary(&qemu), Duration::from_secs(1));
        let took = t.elapsed();
        assert_eq!(
            (c.accel, c.source),
            (Accel::Tcg, ChoiceSource::Probe),
            "{c}"
        );
        assert_eq!(
            c.reason,
            "KVM present but a probe guest did not boot within 1 s"
        );
        assert!(took < Duration::from_secs(3), "gave up after {took:?}");
        for f in ["pid", "child"] {
            let pid = read_pid(&dir.path().join(f));
            assert!(
                gone_within(pid, Duration::from_secs(2)),
                "the probe left process {pid} ({f}) behind"
            );
        }
    }

    #[test]
    fn a_probe_guest_that_boots_means_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(
            dir.path(),
            "qemu-ok",
            &format!("echo 'Linux version 6.1'\necho {PROBE_MARKER}\nexec sleep 600\n"),
        );
        let c = run_probe(&probe_command().binary(&qemu), Duration::from_secs(10));
        assert_eq!(
            (c.accel, c.source),
            (Accel::Kvm, ChoiceSource::Probe),
            "{c}"
        );
        assert!(c.reason.starts_with("a KVM probe guest booted in "), "{c}");
    }

    #[test]
    fn probe_dir_is_private_and_unpredictable() {
        use std::os::unix::fs::PermissionsExt;
        let a = probe_dir().unwrap();
        let b = probe_dir().unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains(&std::process::id().to_string()),
            "the name derives from the pid: {name}"
        );
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists(), "removed on drop");
    }

    #[test]
    fn cache_roundtrip_checks_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("accel.json");
        let c = choice(
            Accel::Tcg,
            "KVM present but a probe guest did not boot within 5 s",
            ChoiceSource::Probe,
        );
        write_cache(&f, "k1", &c);
        let back = read_cache(&f, "k1").unwrap();
        assert_eq!(back.accel, Accel::Tcg);
        assert_eq!(back.source, ChoiceSource::Cache);
        assert!(back.reason.starts_with("KVM present but"));
        assert!(read_cache(&f, "k2").is_none());
        assert!(cache_key().contains('|'));
    }

    #[test]
    fn a_cached_multi_line_reason_is_probed_again() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let old = CacheEntry {
            key: cache_key(),
            choice: AccelChoice {
                accel: Accel::Tcg,
                reason: format!(
                    "KVM present but QEMU exited with signal 6 (SIGABRT) under it: {}",
                    MSR_ERROR.trim()
                ),
                source: ChoiceSource::Probe,
            },
        };
        let f = dir.path().join("accel.json");
        std::fs::write(&f, serde_json::to_vec(&old).unwrap()).unwrap();
        let c = decide_with(None, dir.path(), &dev, || {
            choice(Accel::Tcg, "fresh probe verdict", ChoiceSource::Probe)
        });
        assert_eq!(
            (c.source, c.reason.as_str()),
            (ChoiceSource::Probe, "fresh probe verdict")
        );
        // ... and the entry was rewritten.
        let c = decide_with(None, dir.path(), &dev, || panic!("the cache should answer"));
        assert_eq!(c.reason, "fresh probe verdict (cached probe verdict)");
    }
}
