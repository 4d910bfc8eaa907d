//! The backdoor transport of a container: the container listens on a unix socket (its systemd
//! socket unit, in a directory bound from the run directory); the host connects once the socket
//! exists. The machine gets one end of a socket pair at once (it starts without waiting for the
//! guest, as a VM does) and a relay task joins the other end to the container's socket as soon
//! as it accepts.

use std::path::PathBuf;
use std::time::Duration;

use std::process::ExitStatus;
use tokio::net::UnixStream;

use tokio::sync::watch;

/// How often the host tries to connect while the container boots.
const CONNECT_POLL: Duration = Duration::from_millis(10);

/// One end of a new socket pair, and the task relaying the other end to `path` once the
/// container listens there. The task gives up (closing its end) once `exit` is set.
pub(crate) fn connect_later(
    path: PathBuf,
    mut exit: watch::Receiver<Option<ExitStatus>>,
) -> std::io::Result<(UnixStream, tokio::task::JoinHandle<()>)> {
    let (near, mut far_side) = UnixStream::pair()?;
    let task = tokio::spawn(async move {
        let mut far = loop {
            if exit.borrow().is_some() {
                return;
            }
            if let Ok(s) = UnixStream::connect(&path).await {
                break s;
            }
            tokio::select! {
                () = tokio::time::sleep(CONNECT_POLL) => {}
                _ = exit.changed() => {}
            }
        };
        let _ = tokio::io::copy_bidirectional(&mut far_side, &mut far).await;
    });
    Ok((near, task))
}
