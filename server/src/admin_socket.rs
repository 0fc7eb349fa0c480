//! The running server's admin socket, `<data_dir>/admin.sock`: how
//! `honeycell keys|orgs|audit` reach a running server instead of opening
//! its store, which the embedded store allows one process at a time
//! (`admin.rs` decides which way a command goes).
//!
//! Protocol: one command per connection. The client writes one JSON line
//! (an [`admin::Command`], at most 64 KiB, within 5 s); the server runs it
//! against its own store, appends its audit entries, answers one JSON line
//! ([`Reply`]) and closes.
//!
//! Access: the socket is created with mode 0600 (under a umask of 0177, so
//! it is never reachable by others, not even for a moment), and the peer's
//! credentials (SO_PEERCRED) must be the server's own user or root; they
//! name the actor in the audit log (`admin-socket:uid=1000(alice)`).
//!
//! It is served by a thread of its own (`admin-socket`, a current-thread
//! runtime with its own store handle: the embedded store's shared one, or
//! a small PostgreSQL pool of its own), never by a cell; at most
//! [`MAX_AT_ONCE`] commands run at once. It is bound once the data dir is
//! locked and the store prepared — a socket file found then was left by a
//! server that died, and is replaced — and removed when the server stops.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use honeycell_control::{Store, StoreOpener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use crate::admin::{self, Caller, Command, Outcome, Settings};

/// The socket's name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
const MAX_REQUEST: u64 = 64 * 1024;
/// A client has this long to send its command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// And this long to take the answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands run at once; further connections wait to be accepted.
const MAX_AT_ONCE: usize = 4;
/// How long the CLI waits for the answer (`audit verify` reads every
/// entry of every org).
const CLIENT_WAIT: Duration = Duration::from_secs(600);
const MAX_REPLY: u64 = 256 * 1024 * 1024;
/// Commands still running at shutdown get this long to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Done(Outcome),
    /// The command was refused or failed: the message, as the CLI prints it.
    Failed(String),
}

/// The serving socket; dropping it stops the thread (commands running get
/// [`DRAIN`] to finish) and removes the file.
pub(crate) struct AdminSocket {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminSocket {
    /// Binds `<data_dir>/admin.sock` and serves it. The caller holds the
    /// data dir's lock, and no other thread creates files yet (the umask is
    /// the process's). `None`, with a warning, when the socket cannot be
    /// made: the server runs, and admin commands need it stopped.
    pub fn start(data_dir: &Path, opener: StoreOpener, settings: Settings) -> Option<AdminSocket> {
        let path = data_dir.join(SOCKET_FILE);
        let listener = match bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "no admin socket: `honeycell keys|orgs|audit` cannot reach this server and, on the embedded store, need it stopped"
                );
                return None;
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("admin-socket".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(serve(listener, opener, settings, stopped)),
                    Err(e) => tracing::error!(error = %e, "admin socket: cannot start a runtime"),
                }
            });
        match spawned {
            Ok(thread) => {
                tracing::info!(path = %path.display(), "admin socket listening");
                Some(AdminSocket {
                    path,
                    stop: Some(stop),
                    thread: Some(thread),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "no admin socket: cannot start its thread");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}

/// Replaces a socket file left behind, then binds under a umask that
/// leaves the owner alone read and write.
fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; move it away",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    opener: StoreOpener,
    settings: Settings,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin socket: cannot listen");
            return;
        }
    };
    let store = match opener.open().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "admin socket: cannot open the control plane store");
            return;
        }
    };
    let shared = Arc::new((store, settings));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_AT_ONCE));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. out of descriptors: wait rather than spin.
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        running.spawn(async move {
            let (store, settings) = &*shared;
            answer(stream, store, settings).await;
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("admin socket: commands still running at shutdown were abandoned");
    }
}

/// Reads one command, runs it, answers.
async fn answer(mut stream: UnixStream, store: &Store, settings: &Settings) {
    let reply = match read_command(&mut stream).await {
        Ok((command, caller)) => {
            tracing::info!(command = command.name(), actor = %caller.actor, "admin command");
            match admin::execute(store, settings, &caller, &command).await {
                Ok(outcome) => Reply::Done(outcome),
                Err(e) => {
                    tracing::warn!(command = command.name(), error = %format!("{e:#}"), "admin command failed");
                    Reply::Failed(format!("{e:#}"))
                }
            }
        }
        Err(refused) => {
            tracing::warn!(reason = %refused, "admin socket: request refused");
            Reply::Failed(refused)
        }
    };
    let mut line = match serde_json::to_vec(&reply) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin socket: cannot encode an answer");
            return;
        }
    };
    line.push(b'\n');
    let sent = tokio::time::timeout(REPLY_TIMEOUT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::warn!("admin socket: the client did not take its answer");
    }
}

/// The peer's command and who it is; the error is the refusal to send.
async fn read_command(stream: &mut UnixStream) -> Result<(Command, Caller), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() != me && cred.uid() != 0 {
        return Err(format!(
            "refused: uid {} is neither the server's user (uid {me}) nor root",
            cred.uid()
        ));
    }
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new((&mut *stream).take(MAX_REQUEST + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no complete command within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("cannot read the command: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() as u64 > MAX_REQUEST {
        return Err(format!("a command is at most {MAX_REQUEST} bytes"));
    }
    if line.last() != Some(&b'\n') {
        return Err("the command must end with a newline".to_owned());
    }
    let command: Command = serde_json::from_slice(&line)
        .map_err(|e| format!("not a command this server knows: {e}"))?;
    let via = match cred.pid() {
        Some(pid) => format!("through the admin socket, pid {pid}"),
        None => "through the admin socket".to_owned(),
    };
    Ok((
        command,
        Caller {
            actor: admin::local_actor("admin-socket", cred.uid()),
            via,
        },
    ))
}

/// Sends `command` to the server running on `data_dir`: `None` when none
/// listens there (no socket file, a stale one, or a path too long for a
/// socket), else its answer.
pub(crate) fn request(
    data_dir: &Path,
    command: &Command,
) -> anyhow::Result<Option<anyhow::Result<Outcome>>> {
    use std::io::ErrorKind;
    let path = data_dir.join(SOCKET_FILE);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::InvalidInput
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach the running server through {} (run this as the server's user)",
                path.display()
            )));
        }
    };
    let answer = exchange(&mut stream, command).with_context(|| {
        format!(
            "the running server did not answer through {}",
            path.display()
        )
    })?;
    let reply: Reply = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the running server's answer through {} is not one this honeycell understands (another version?)",
            path.display()
        )
    })?;
    Ok(Some(match reply {
        Reply::Done(outcome) => Ok(outcome),
        Reply::Failed(message) => Err(anyhow::anyhow!(message)),
    }))
}

/// Writes `command`, reads the answer's line.
fn exchange(
    stream: &mut std::os::unix::net::UnixStream,
    command: &Command,
) -> std::io::Result<Vec<u8>> {
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_read_timeout(Some(CLIENT_WAIT))?;
    let mut line = serde_json::to_vec(command)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = Vec::new();
    std::io::BufReader::new(stream.take(MAX_REPLY)).read_until(b'\n', &mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_are_one_json_line_each() {
        let c = Command::OrgsSetTier {
            org: "acme".into(),
            tier: "pro".into(),
        };
        let text = serde_json::to_string(&c).expect("encode");
        assert_eq!(
            text,
            r#"{"command":"orgs_set_tier","org":"acme","tier":"pro"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).expect("decode"), c);
        assert!(serde_json::from_str::<Command>(r#"{"command":"rm_rf"}"#).is_err());
        let r = serde_json::to_string(&Reply::Failed("no".into())).expect("encode");
        assert_eq!(r, r#"{"failed":"no"}"#);
    }

    #[test]
    fn the_socket_is_the_owners_alone_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET_FILE);
        let first = bind(&path).expect("bind");
        drop(first);
        // The file stays behind, as after kill -9.
        assert!(path.exists());
        let _second = bind(&path).expect("a stale socket is replaced");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let other = dir.path().join("not-a-socket");
        std::fs::write(&other, b"x").expect("write");
        assert!(bind(&other).is_err(), "a regular file is never removed");
        assert_eq!(std::fs::read(&other).expect("read"), b"x");
    }
}
