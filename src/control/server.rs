//! The daemon's side of the control socket: binding it, admitting clients, framing lines.
//!
//! Who may talk: the socket file is mode 0660, and each client's uid, read from the kernel
//! (`SO_PEERCRED`), must be the socket's owner or root; anyone else is told so and closed.
//! How many: [`MAX_CLIENTS`] connections, each reading at most [`MAX_LINE`] bytes a line and
//! closed after [`IDLE_TIMEOUT`] of silence. A bad line gets an error line; the next good line
//! on the same connection is answered as if nothing happened.

use super::{error, Request, ANSWER_TIMEOUT, IDLE_TIMEOUT, MAX_CLIENTS, MAX_LINE};
use serde_json::Value;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

/// Mode of the socket file: owner and group may connect (the uid check still applies).
pub const SOCKET_MODE: u32 = 0o660;

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Value>);

/// A bound control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
}

impl ControlSocket {
    /// Binds `path`: creates its directory if missing, replaces a stale socket left by a
    /// daemon that died, and refuses to take over one that another daemon still answers on
    /// (or a file that is not a socket).
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        use std::io::{Error, ErrorKind};
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(Error::new(
                        ErrorKind::AddrInUse,
                        "another daemon is answering on this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        let owner = std::fs::metadata(path)?.uid();
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until the task is dropped, handing each request to `calls`.
    pub async fn serve(&self, calls: mpsc::Sender<Call>) {
        let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
        let mut clients = JoinSet::new();
        loop {
            while clients.try_join_next().is_some() {}
            let mut sock = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    log::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let uid = match sock.peer_cred() {
                Ok(c) => c.uid(),
                Err(e) => {
                    log::warn!("control client without credentials: {e}");
                    continue;
                }
            };
            if uid != 0 && uid != self.owner {
                log::warn!(
                    "control client uid {uid} refused (owner {} and root only)",
                    self.owner
                );
                let msg = format!(
                    "uid {uid} may not use this socket (only uid {} and root)",
                    self.owner
                );
                let _ = write_value(&mut sock, &error(&msg)).await;
                continue;
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let msg = format!("busy: {MAX_CLIENTS} control connections are open");
                let _ = write_value(&mut sock, &error(&msg)).await;
                continue;
            };
            let calls = calls.clone();
            clients.spawn(async move {
                let _permit = permit;
                if let Err(e) = client(sock, calls).await {
                    log::debug!("control client: {e}");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn write_value(sock: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    sock.write_all(line.as_bytes()).await
}

/// Reads lines and answers each, in order, until the client goes or stays silent too long.
async fn client(mut sock: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // Skipping the rest of an overlong line, up to its newline.
    let mut skipping = false;
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, sock.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let mut data = &chunk[..n];
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (piece, rest, complete) = match nl {
                Some(k) => (&data[..k], &data[k + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if skipping {
                skipping = !complete;
                continue;
            }
            if buf.len() + piece.len() > MAX_LINE {
                buf.clear();
                skipping = !complete;
                let msg = format!("line longer than {MAX_LINE} bytes");
                write_value(&mut sock, &error(&msg)).await?;
                continue;
            }
            buf.extend_from_slice(piece);
            if !complete {
                break;
            }
            let line = std::mem::take(&mut buf);
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let answer = match Request::parse(text) {
                Ok(req) => ask(&calls, req).await,
                Err(e) => error(&e),
            };
            write_value(&mut sock, &answer).await?;
        }
    }
}

async fn ask(calls: &mpsc::Sender<Call>, req: Request) -> Value {
    let (tx, rx) = oneshot::channel();
    let sent = tokio::time::timeout(ANSWER_TIMEOUT, calls.send((req, tx))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return error("the daemon is busy or stopping; try again");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(v)) => v,
        _ => error("the daemon did not answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A daemon that answers every request with its name.
    async fn echo(mut rx: mpsc::Receiver<Call>) {
        while let Some((req, tx)) = rx.recv().await {
            let _ = tx.send(json!({"ok": true, "req": format!("{req:?}")}));
        }
    }

    #[test]
    fn bad_lines_get_errors_and_the_connection_stays_usable() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("cs-ctl-{}", std::process::id()));
            let path = dir.join("sub").join("ctl.sock");
            let _ = std::fs::remove_dir_all(&dir);
            let sock = ControlSocket::bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, SOCKET_MODE);
            // A second daemon on the same path is refused while the first answers.
            assert!(ControlSocket::bind(&path).is_err());
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(echo(rx));
            let server = async move { sock.serve(tx).await };
            let client = async {
                let mut c = UnixStream::connect(&path).await.unwrap();
                let long = vec![b'x'; MAX_LINE + 10];
                let mut input = b"garbage\n\n{\"cmd\":\"status\"}\n".to_vec();
                input.extend_from_slice(&long);
                input.extend_from_slice(b"\n{\"cmd\":\"zap\",\"channel\":\"b\"}\n");
                c.write_all(&input).await.unwrap();
                c.shutdown().await.unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).await.unwrap();
                out
            };
            let out = tokio::select! {
                _ = server => unreachable!("the server runs until dropped"),
                out = client => out,
            };
            let lines: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 4, "{out}");
            assert_eq!(lines[0]["ok"], false);
            assert_eq!(lines[1]["req"], "Status");
            assert!(lines[2]["error"].as_str().unwrap().contains("longer than"));
            assert_eq!(lines[3]["req"], "Zap { channel: \"b\" }");
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
