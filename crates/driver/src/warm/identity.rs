//! What a restored node still needs: the host's clock and fresh entropy, which no snapshot can
//! hold. The snapshot's main shell is armed inside a small perl program that is already loaded
//! and blocked reading its console (see [`super::build`]); after the restore the host writes the
//! wake-up payload, perl sets the clock and reseeds the kernel's random generator with system
//! calls (no process is started), and the shell greets. Everything else (hostname, addresses,
//! files, users, units and their state) is in the node snapshot, which was booted cold with the
//! node's own layer.

use std::time::Duration;

use crate::backend::ShellTransport;
use crate::error::{Error, Result};

/// The file a restored guest's wake-up program writes once the clock and entropy are set (its
/// existence tells a restored node from a cold-booted one).
pub(crate) const RESTORED_MARKER: &str = "/run/machinist-restored";

/// The shell variable holding the wake-up program's exit status in the restored main shell.
pub(crate) const STATUS_VAR: &str = "__machinist_restore";

/// How many random bytes the payload carries.
const SEED_BYTES: usize = 64;

/// The perl program the armed main shell runs: it confirms it is armed, blocks until the
/// payload arrives, then sets the clock (`clock_settime`, x86-64 system call 227), writes the
/// bytes to `/dev/urandom`, credits them (`RNDADDENTROPY`), forces a reseed of the CRNG
/// (`RNDRESEEDCRNG`) and writes [`RESTORED_MARKER`]. The payload is `<12 digits><body>`, the
/// body `<seconds> <nanoseconds> <hex bytes>`; `sysread` never reads past it. Free of single
/// quotes: the shell passes it in single quotes. With the argument `dry-run` it only prints
/// what it read (for tests on the host).
pub(crate) fn wake_program(armed: &str) -> String {
    format!(
        concat!(
            "use strict; $| = 1; my $dry = ($ARGV[0] // \"\") eq \"dry-run\"; print \"{armed}\\n\"; ",
            "sub take {{ my ($n, $buf) = (shift, \"\"); while (length($buf) < $n) {{ ",
            "my $r = sysread(STDIN, $buf, $n - length($buf), length($buf)); ",
            "die \"machinist-restore: reading the payload: \" . (defined $r ? \"end of input\" : $!) . \"\\n\" unless $r; }} $buf }} ",
            "my ($s, $ns, $hex) = split / /, take(take(12)); my $d = pack(\"H*\", $hex); ",
            "if ($dry) {{ print \"clock $s $ns, \" . length($d) . \" bytes\\n\"; exit 0; }} ",
            "syscall(227, 0, pack(\"qq\", $s, $ns)) == 0 or die \"machinist-restore: clock_settime: $!\\n\"; ",
            "open(my $f, \">\", \"/dev/urandom\") or die \"machinist-restore: /dev/urandom: $!\\n\"; ",
            "syswrite($f, $d); ",
            "ioctl($f, 0x40085203, pack(\"ii\", 8 * length($d), length($d)) . $d) or die \"machinist-restore: RNDADDENTROPY: $!\\n\"; ",
            "ioctl($f, 0x5207, 0) or die \"machinist-restore: RNDRESEEDCRNG: $!\\n\"; ",
            "open(my $m, \">\", \"{marker}\") or die \"machinist-restore: {marker}: $!\\n\"; ",
            "print $m \"ok\\n\"; close($m) or die \"machinist-restore: {marker}: $!\\n\";"
        ),
        armed = armed,
        marker = RESTORED_MARKER,
    )
}

/// A restored machine whose identity has not been applied yet (done on the first connect).
#[derive(Debug)]
pub(crate) struct PendingIdentity {
    pub(crate) key: String,
    /// Whether the payload was sent (by the eager task after the restore, or the first connect).
    pub(crate) sent: bool,
}

impl PendingIdentity {
    /// A restored node whose clock and entropy are still to be given.
    pub(crate) fn new(key: &str) -> Self {
        PendingIdentity {
            key: key.to_string(),
            sent: false,
        }
    }

    /// The bytes that wake the armed main shell (see [`wake_program`]). The clock value is
    /// taken now, right before sending.
    pub(crate) fn payload(&self) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; SEED_BYTES];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut seed);
        }
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let body = format!("{} {} {hex}", now.as_secs(), now.subsec_nanos());
        format!("{:012}{body}", body.len()).into_bytes()
    }
}

/// Sends a restored machine's identity payload to its armed main shell and wakes its control
/// shell, once (`pending.sent` records it); the caller holds the machine's shell slot, so the
/// eager wake after the restore and the first connect never both send.
pub(crate) async fn wake(
    name: &str,
    pending: &mut PendingIdentity,
    transport: &mut ShellTransport,
    within: Duration,
) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if pending.sent {
        return Ok(());
    }
    pending.sent = true;
    let payload = pending.payload();
    let wake = async {
        let (a, b) = tokio::join!(
            transport.main.write_all(&payload),
            transport.control.write_all(b"\n")
        );
        a.and(b)
    };
    match tokio::time::timeout(within, wake).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::backend(
            Some(name),
            "waking the restored backdoor",
            e,
        )),
        Err(_) => Err(Error::backend(
            Some(name),
            "waking the restored backdoor",
            format!(
                "the restored guest did not read its identity within {} s",
                within.as_secs()
            ),
        )),
    }
}

/// After the first connect of a restored machine: fails unless its wake-up program exited 0
/// (its error, if any, is on the serial console). One round trip, no guest process.
pub(crate) async fn check(
    name: &str,
    shell: &mut machinist_backdoor::Shell,
    key: &str,
    timeout: Duration,
) -> Result<()> {
    let mut ignore = |_: &[u8]| {};
    let cmd = format!("echo \"${{{STATUS_VAR}:-missing}}\"");
    let out = shell
        .execute(&cmd, Some(timeout), &mut ignore)
        .await
        .map_err(|e| Error::backend(Some(name), "checking the restored identity", e))?;
    let text = out.stdout_lossy();
    if text.trim() == "0" {
        return Ok(());
    }
    Err(Error::NotRunning {
        machine: name.to_string(),
        message: format!(
            "setting the clock and entropy after the warm start from snapshot {key} failed \
             (status {}; the reason is in the machine's console log; run with \
             MACHINIST_WARM_START=0 to boot cold)",
            text.trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload is `<12 digits><seconds> <nanoseconds> <hex>` and carries the host's clock.
    #[test]
    fn payload_is_length_prefixed_clock_and_entropy() {
        let bytes = PendingIdentity::new("k").payload();
        let n: usize = std::str::from_utf8(&bytes[..12]).unwrap().parse().unwrap();
        let body = std::str::from_utf8(&bytes[12..]).unwrap();
        assert_eq!(body.len(), n);
        let parts: Vec<&str> = body.split(' ').collect();
        assert_eq!(parts.len(), 3, "{body}");
        let secs: u64 = parts[0].parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now - secs < 5, "clock {secs} vs {now}");
        assert!(parts[1].parse::<u32>().unwrap() < 1_000_000_000);
        assert_eq!(parts[2].len(), 2 * SEED_BYTES);
        assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    /// Two payloads carry different entropy.
    #[test]
    fn every_payload_has_its_own_entropy() {
        let hex = |b: Vec<u8>| {
            String::from_utf8(b)
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_ne!(
            hex(PendingIdentity::new("k").payload()),
            hex(PendingIdentity::new("k").payload())
        );
    }

    /// The wake-up program is valid perl that a shell can pass in single quotes, and it reads
    /// exactly the payload (run with `dry-run`: it reports what it parsed instead of setting
    /// anything).
    #[test]
    fn wake_program_reads_exactly_the_payload() {
        use std::io::Write as _;
        let prog = wake_program("ARMED");
        assert!(!prog.contains('\''), "no single quotes: {prog}");
        let mut child = std::process::Command::new("perl")
            .args(["-e", &prog, "dry-run"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("perl (in every Debian system) runs");
        let payload = PendingIdentity::new("k").payload();
        let body = String::from_utf8(payload[12..].to_vec()).unwrap();
        let mut input = payload.clone();
        input.extend_from_slice(b"NOT READ");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut fields = body.split(' ');
        let (s, ns) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("ARMED\nclock {s} {ns}, {SEED_BYTES} bytes\n")
        );
    }

    /// A payload cut short is an error naming the step, not a hang or a clock set to garbage.
    #[test]
    fn wake_program_rejects_a_short_payload() {
        use std::io::Write as _;
        let mut child = std::process::Command::new("perl")
            .args(["-e", &wake_program("ARMED"), "dry-run"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"000000000040123")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("machinist-restore: reading the payload: end of input"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
