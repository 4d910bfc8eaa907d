//! Copies between the host and a guest through the backdoor shell (there is no shared
//! directory): uploads travel as base64 in commands; downloads come back as a base64 stream that
//! is decoded to disk as it arrives (never logged, never held whole in memory) and, for
//! directories, unpacked entry by entry with the guest's tar treated as untrusted input.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::archive::{tar_dir, unpack, Base64Sink};
use super::scripts::quote;
use super::Machine;
use crate::error::{Error, Result};
use crate::timeouts::DEFAULT_TIMEOUT;

/// Output kept by the shell while a download streams (the data goes to disk line by line).
const DOWNLOAD_OUTPUT_LIMIT: usize = 64 * 1024;

/// Refused archive entries logged one by one; beyond this only the count is logged.
const MAX_REFUSAL_LINES: usize = 20;

impl Machine {
    /// Copies a host file or directory into the guest at `target` (NixOS `copy_from_host`).
    /// There is no shared directory: the data travels through the backdoor as base64 (a tar
    /// stream for directories), in chunks.
    pub fn copy_from_host(&self, source: impl AsRef<Path>, target: &str) -> Result<()> {
        let source = source.as_ref();
        self.nested(&format!("copying {} to {target}", source.display()), || {
            let meta = std::fs::metadata(source)
                .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
            let parent = Path::new(target)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            if meta.is_dir() {
                let tar = tar_dir(source)?;
                self.upload(&tar, "/tmp/.machinist-upload.tar")?;
                self.succeed(format!(
                    "mkdir -p {t} && tar -x -f /tmp/.machinist-upload.tar -C {t} && rm -f /tmp/.machinist-upload.tar",
                    t = quote(target)
                ))?;
            } else {
                let data = std::fs::read(source)
                    .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
                self.succeed(format!("mkdir -p {}", quote(&parent)))?;
                self.upload(&data, target)?;
                let mode = meta.permissions().mode() & 0o7777;
                self.succeed(format!("chmod {mode:o} {}", quote(target)))?;
            }
            Ok(())
        })
    }

    /// Writes `data` to `target` in the guest through the shell, base64 in 48 KiB chunks.
    fn upload(&self, data: &[u8], target: &str) -> Result<()> {
        use base64::Engine;
        let q = quote(target);
        if data.is_empty() {
            self.run_checked(&format!(": > {q}"))?;
        }
        for (i, chunk) in data.chunks(48 * 1024).enumerate() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            let redirect = if i == 0 { ">" } else { ">>" };
            self.run_checked(&format!("echo -n {b64} | base64 -d {redirect} {q}"))?;
        }
        Ok(())
    }

    /// Runs a command quietly (no nested log), failing on a non-zero exit.
    fn run_checked(&self, cmd: &str) -> Result<String> {
        let (code, out) = self.run_command(cmd, Some(self.ctx.timeouts.scaled(DEFAULT_TIMEOUT)))?;
        let out = String::from_utf8_lossy(&out).into_owned();
        if code != 0 {
            return Err(Error::CommandFailed {
                machine: self.name().to_string(),
                command: shorten(cmd),
                code,
                output: out,
            });
        }
        Ok(out)
    }

    /// Copies a host file into the guest with `echo -n <base64> | base64 -d > target`
    /// (NixOS `copy_from_host_via_shell`; files only).
    pub fn copy_from_host_via_shell(&self, source: impl AsRef<Path>, target: &str) -> Result<()> {
        let source = source.as_ref();
        let data = std::fs::read(source)
            .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
        self.upload(&data, target)
    }

    /// Copies a guest file or directory to `<output dir>/<target_dir>/<name>` (NixOS
    /// `copy_from_machine`); returns the host path.
    ///
    /// The guest is untrusted: a directory arrives as a tar stream that is unpacked entry by
    /// entry, keeping only regular files, directories and symlinks that stay inside the copy;
    /// no device node, fifo or hard link, no setuid/setgid/sticky bit, no ownership, no path
    /// outside the destination and no write through a symlink. Refused entries are logged.
    /// The data is decoded to disk as it streams in and never appears in the log.
    pub fn copy_from_machine(&self, source: &str, target_dir: &str) -> Result<PathBuf> {
        let name = Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        let dest_dir = self.ctx.out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir)
            .map_err(|e| Error::io(format!("creating {}", dest_dir.display()), e))?;
        let dest = dest_dir.join(&name);
        self.nested(
            &format!("copying {source} from the machine to {}", dest.display()),
            || {
                let q = quote(source);
                let is_dir = self.run_command(&format!("test -d {q}"), None)?.0 == 0;
                let partial =
                    dest_dir.join(format!(".{name}.machinist-partial-{}", unique_suffix()));
                let cmd = if is_dir {
                    format!("tar -c -C {q} . | base64 -w 76")
                } else {
                    format!("base64 -w 76 < {q}")
                };
                let r = self.download(&cmd, &partial).and_then(|_| {
                    if is_dir {
                        self.unpack_download(&partial, &dest)
                    } else {
                        fs::set_permissions(&partial, fs::Permissions::from_mode(0o644))
                            .map_err(|e| Error::io(format!("writing {}", partial.display()), e))?;
                        fs::rename(&partial, &dest).map_err(|e| {
                            Error::io(
                                format!("moving {} to {}", partial.display(), dest.display()),
                                e,
                            )
                        })
                    }
                });
                let _ = fs::remove_file(&partial);
                r.map(|()| dest.clone())
            },
        )
    }

    /// Runs `cmd` (which prints base64) and decodes its output into the new file `into` as it
    /// arrives. The output lines bypass the log; the shell keeps only a small tail of them.
    fn download(&self, cmd: &str, into: &Path) -> Result<()> {
        // Also starts the machine and waits for the shell when needed.
        self.ctx.before_command()?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(into)
            .map_err(|e| Error::io(format!("creating {}", into.display()), e))?;
        let mut sink = Base64Sink::new(file);
        let timeout = self.ctx.timeouts.scaled(DEFAULT_TIMEOUT);
        let r = self.with_shell(async |shell| {
            let old = shell.output_limit();
            shell.set_output_limit(DOWNLOAD_OUTPUT_LIMIT);
            let r = shell
                .execute(cmd, Some(timeout), &mut |line| sink.line(line))
                .await;
            shell.set_output_limit(old);
            r
        })?;
        let failed = |what: String| Error::CommandFailed {
            machine: self.name().to_string(),
            command: shorten(cmd),
            code: 1,
            output: what,
        };
        match r {
            Ok(o) if o.code == 0 => {}
            Ok(o) => {
                return Err(Error::CommandFailed {
                    machine: self.name().to_string(),
                    command: shorten(cmd),
                    code: o.code,
                    output: "(output not shown: it is file data; the guest's error message is \
                             in the serial log)"
                        .into(),
                })
            }
            Err(machinist_backdoor::ShellError::Timeout { timeout, .. }) => {
                return Err(failed(format!(
                    "the copy did not finish within {}; raise the timeout scale \
                     (MACHINIST_TIMEOUT_SCALE) or copy less",
                    humantime(timeout)
                )))
            }
            Err(e) => {
                return Err(Error::backend(
                    Some(self.name()),
                    format!("running `{}`", shorten(cmd)),
                    e,
                ))
            }
        }
        sink.finish()
            .map_err(|why| failed(format!("the guest's data could not be decoded: {why}")))?;
        Ok(())
    }

    /// Unpacks the downloaded tar file `tar` into `dest` (created if needed), logging every
    /// refused entry.
    fn unpack_download(&self, tar: &Path, dest: &Path) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(dest)
                .map_err(|e| Error::io(format!("removing the symlink {}", dest.display()), e))?,
            Ok(_) => {
                return Err(Error::bad_argument(
                    Some(self.name()),
                    format!(
                        "{} exists and is not a directory; remove it or copy to another target_dir",
                        dest.display()
                    ),
                ))
            }
            Err(_) => {}
        }
        if !dest.is_dir() {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(dest)
                .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        }
        let file =
            File::open(tar).map_err(|e| Error::io(format!("reading {}", tar.display()), e))?;
        let mut refused = 0usize;
        let summary = unpack(std::io::BufReader::new(file), dest, &mut |line: &str| {
            refused += 1;
            if refused <= MAX_REFUSAL_LINES {
                self.log_line(&format!("copy_from_machine: {line}"));
            }
        })?;
        if summary.refused > 0 {
            self.log_line(&format!(
                "copy_from_machine: {} of {} archive entries were refused (see above); unpacked \
                 {} files, {} directories and {} symlinks into {}",
                summary.refused,
                summary.refused + summary.files + summary.dirs + summary.symlinks,
                summary.files,
                summary.dirs,
                summary.symlinks,
                dest.display()
            ));
        }
        Ok(())
    }
}

/// A command cut to 200 characters for an error message.
fn shorten(cmd: &str) -> String {
    if cmd.chars().count() > 200 {
        format!("{}...", cmd.chars().take(200).collect::<String>())
    } else {
        cmd.to_string()
    }
}

/// A duration as `N s` for messages.
fn humantime(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

/// A suffix for a temporary file name: the process id and a per-process counter.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
