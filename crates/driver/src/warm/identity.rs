//! A restored machine's identity: the script and node layer its armed main shell reads and
//! runs after the restore (clock, entropy, NIC names and MACs, the node layer), waking the
//! armed shells, and checking the result on the first connect.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::{cache, WarmPlan};
use crate::backend::ShellTransport;
use crate::error::{Error, Result};

/// Where the restored main shell writes the identity script, its log and exit code.
pub(crate) const RESTORE_SCRIPT: &str = "/run/machinist-restore.sh";
/// The identity script's output.
pub(crate) const RESTORE_LOG: &str = "/run/machinist-restore.log";
/// The identity script's exit code.
pub(crate) const RESTORE_RC: &str = "/run/machinist-restore.rc";
/// Where the restored main shell writes the node layer's archive.
pub(crate) const RESTORE_LAYER_TAR: &str = "/run/machinist-layer.tar";

/// A restored machine whose identity has not been applied yet (done on the first connect).
#[derive(Debug)]
pub(crate) struct PendingIdentity {
    pub(crate) key: String,
    /// Whether the payload was sent (by the eager task after the restore, or the first connect).
    pub(crate) sent: bool,
    pub(crate) script: String,
    pub(crate) layer_tar: Arc<Vec<u8>>,
}

impl PendingIdentity {
    /// The bytes that wake the armed main shell: the identity script and the layer archive, each
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
        s.push_str(&self.script);
        s.push_str("mark done\n");
        let mut out = format!("{:012}", s.len()).into_bytes();
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(format!("{:012}", self.layer_tar.len()).as_bytes());
        out.extend_from_slice(&self.layer_tar);
        out
    }
}

pub(crate) fn identity_script(plan: &WarmPlan) -> String {
    let mut s = String::new();
    // One `ip -batch` for every NIC (each program run costs ~0.1 s under TCG); the interfaces are
    // found by the builder's MACs, read with the shell's own `read`.
    s.push_str(
        "machinist_nic() {\n  local f a\n  for f in /sys/class/net/*; do\n    read -r a < \"$f/address\" || continue\n    if [ \"$a\" = \"$1\" ]; then\n      printf 'link set dev %s down\\nlink set dev %s address %s name %s\\n' \"${f##*/}\" \"${f##*/}\" \"$2\" \"$3\"\n      return 0\n    fi\n  done\n  echo \"machinist: no NIC with MAC $1\" >&2\n  return 1\n}\n",
    );
    if !plan.nic_names.is_empty() {
        s.push_str("{\n");
        for (i, (name, mac)) in plan.nic_names.iter().zip(&plan.nic_macs).enumerate() {
            let _ = writeln!(s, "machinist_nic {} {mac} {name}", cache::builder_mac(i));
        }
        s.push_str("} > /run/machinist-nics\nip -batch /run/machinist-nics\n");
    }
    if !plan.masked.is_empty() {
        let _ = writeln!(
            s,
            "systemctl stop -- {} 2>/dev/null || true",
            plan.masked.join(" ")
        );
    }
    s.push_str("mark nics\n");
    s.push_str(&machinist_guest::NodeLayer::apply_tar_script(
        RESTORE_LAYER_TAR,
        "/run/machinist-layer",
    ));
    s
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
    use std::path::PathBuf;

    fn plan() -> WarmPlan {
        WarmPlan {
            image_hash: "h".into(),
            plain_initrd: PathBuf::from("/nonexistent/initrd"),
            layer_tar: Arc::new(vec![7u8; 1000]),
            masked: vec!["postgresql.service".into()],
            nic_names: vec!["vlan1".into(), "vlan2".into()],
            nic_macs: vec!["52:54:00:12:01:01".into(), "52:54:00:12:02:01".into()],
        }
    }

    /// The wake-up payload is `<12 digits><script><12 digits><archive>`, as the armed shell
    /// reads it with `head -c`.
    #[test]
    fn payload_is_two_length_prefixed_parts() {
        let p = PendingIdentity {
            key: "k".into(),
            sent: false,
            script: identity_script(&plan()),
            layer_tar: plan().layer_tar,
        };
        let bytes = p.payload();
        let n: usize = std::str::from_utf8(&bytes[..12]).unwrap().parse().unwrap();
        let script = std::str::from_utf8(&bytes[12..12 + n]).unwrap();
        assert!(script.starts_with("set -euo pipefail\n"));
        assert!(script.contains("date -s @"));
        assert!(script.ends_with("mark done\n"));
        let rest = &bytes[12 + n..];
        let m: usize = std::str::from_utf8(&rest[..12]).unwrap().parse().unwrap();
        assert_eq!(m, 1000);
        assert_eq!(&rest[12..], &[7u8; 1000][..]);
    }

    /// The identity script is valid bash and renames each NIC found by its builder MAC.
    #[test]
    fn identity_script_is_valid_bash() {
        let s = identity_script(&plan());
        assert!(s.contains("machinist_nic 52:54:00:ee:00:01 52:54:00:12:01:01 vlan1\n"));
        assert!(s.contains("machinist_nic 52:54:00:ee:00:02 52:54:00:12:02:01 vlan2\n"));
        assert!(s.contains("systemctl stop -- postgresql.service"));
        assert!(s.ends_with("--live /run/machinist-layer\n"), "{s}");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
