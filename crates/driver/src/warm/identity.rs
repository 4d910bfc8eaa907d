//! What a restored node still needs: the host's clock and fresh entropy, which no snapshot can
//! hold. Its armed main shell reads and runs a short script after the restore; this module
//! writes it, wakes the armed shells, and checks the result on the first connect. Everything
//! else (hostname, addresses, files, users, units and their state) is in the node snapshot,
//! which was booted cold with the node's own layer.

use std::fmt::Write as _;
use std::time::Duration;

use crate::backend::ShellTransport;
use crate::error::{Error, Result};

/// Where the restored main shell writes the identity script, its log and exit code.
pub(crate) const RESTORE_SCRIPT: &str = "/run/machinist-restore.sh";
/// The identity script's output.
pub(crate) const RESTORE_LOG: &str = "/run/machinist-restore.log";
/// The identity script's exit code.
pub(crate) const RESTORE_RC: &str = "/run/machinist-restore.rc";
/// Where the restored main shell writes the archive of the wake-up payload (empty for node
/// snapshots: their layer was applied at their cold boot).
pub(crate) const RESTORE_LAYER_TAR: &str = "/run/machinist-layer.tar";

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

    /// The bytes that wake the armed main shell: the script and an (empty) archive, each
    /// preceded by its length as 12 digits. The clock value is taken now, right before sending.
    pub(crate) fn payload(&self) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 64];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut seed);
        }
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let esc: String = seed.iter().map(|b| format!("\\x{b:02x}")).collect();
        let mut s = String::from(
            "set -euo pipefail\nmark() { local up _; read -r up _ </proc/uptime; echo \"machinist-restore: $1 at $up\"; }\nmark start\n",
        );
        let _ = writeln!(
            s,
            "date -s @{}.{:09} >/dev/null",
            now.as_secs(),
            now.subsec_nanos()
        );
        s.push_str("mark clock\n");
        // Entropy: mix host bytes in, then credit them (RNDADDENTROPY) and force a reseed of the
        // CRNG (RNDRESEEDCRNG), so machines restored from one snapshot diverge at once.
        let _ = writeln!(s, "printf '{esc}' > /dev/urandom");
        s.push_str("mark urandom\n");
        let _ = writeln!(
            s,
            "perl -e 'open(my $f, \">\", \"/dev/urandom\") or die \"open: $!\"; my $d = pack(\"H*\", $ARGV[0]); ioctl($f, 0x40085203, pack(\"ii\", 8 * length($d), length($d)) . $d) or die \"RNDADDENTROPY: $!\"; ioctl($f, 0x5207, 0) or die \"RNDRESEEDCRNG: $!\";' {hex} || echo 'machinist: entropy mixed in but not credited (perl ioctl failed)'"
        );
        s.push_str("mark clock+entropy\n");
        s.push_str("mark done\n");
        let mut out = format!("{:012}", s.len()).into_bytes();
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(format!("{:012}", 0).as_bytes());
        out
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

/// After the first connect of a restored machine: fails unless its identity script exited 0
/// (with the script's exit code and log).
pub(crate) async fn check(
    name: &str,
    shell: &mut machinist_backdoor::Shell,
    key: &str,
    timeout: Duration,
) -> Result<()> {
    let mut ignore = |_: &[u8]| {};
    let cmd = format!(
        "rc=$(cat {RESTORE_RC} 2>/dev/null || echo missing); echo \"$rc\"; [ \"$rc\" = 0 ] || tail -n 40 {RESTORE_LOG}"
    );
    let out = shell
        .execute(&cmd, Some(timeout), &mut ignore)
        .await
        .map_err(|e| Error::backend(Some(name), "checking the restored identity", e))?;
    let text = out.stdout_lossy();
    if text.lines().next() == Some("0") {
        return Ok(());
    }
    Err(Error::NotRunning {
        machine: name.to_string(),
        message: format!(
            "applying the node's identity after the warm start from snapshot {key} failed \
             (run with MACHINIST_WARM_START=0 to boot cold); exit code and log:\n{text}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wake-up payload is `<12 digits><script><12 digits>` (no archive), as the armed shell
    /// reads it with `head -c`; the script is valid bash that sets the clock and the entropy.
    #[test]
    fn payload_is_a_length_prefixed_script_and_an_empty_archive() {
        let bytes = PendingIdentity::new("k").payload();
        let n: usize = std::str::from_utf8(&bytes[..12]).unwrap().parse().unwrap();
        let script = std::str::from_utf8(&bytes[12..12 + n]).unwrap();
        assert!(script.starts_with("set -euo pipefail\n"));
        assert!(script.contains("date -s @"));
        assert!(script.contains("RNDRESEEDCRNG"));
        assert!(script.ends_with("mark done\n"));
        assert_eq!(&bytes[12 + n..], b"000000000000");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Two payloads carry different entropy.
    #[test]
    fn every_payload_has_its_own_entropy() {
        assert_ne!(
            PendingIdentity::new("k").payload(),
            PendingIdentity::new("k").payload()
        );
    }
}
