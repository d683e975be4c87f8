//! How `sluice promote` and `sluice abort` reach a running `sluice rollout`:
//! a Unix socket, by default `$XDG_RUNTIME_DIR/sluice-<route>.sock` (or
//! `/tmp/sluice-<route>.sock`), only reachable by local users the file mode
//! allows. One line per request (`promote`, `abort`, `status`), one JSON line
//! back: `{"ok":true,"phase":"WaitingPromotion"}` or `{"ok":false,"error":..}`.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::machine::{Command, Status};

pub fn default_socket(route: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("sluice-{route}.sock"))
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another `sluice rollout` is already driving this route (socket {0} answers)")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no `sluice rollout` is running for this route (cannot connect to {path}: {source})")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// The listening side, removed from the file system on drop.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    pub async fn bind(
        path: &Path,
        commands: mpsc::UnboundedSender<Command>,
        status: watch::Receiver<Option<Status>>,
    ) -> Result<Self, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let commands = commands.clone();
                let status = status.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let phase = || {
                        status
                            .borrow()
                            .as_ref()
                            .map(|s| s.phase.as_str())
                            .unwrap_or("Initializing")
                    };
                    let reply = match line.trim() {
                        "promote" | "abort" => {
                            let cmd = if line.trim() == "promote" {
                                Command::Approve
                            } else {
                                Command::Abort
                            };
                            let terminal = status
                                .borrow()
                                .as_ref()
                                .is_some_and(|s| s.phase.is_terminal());
                            if terminal {
                                json!({"ok": false, "error": format!("the release has already ended ({})", phase())})
                            } else if commands.send(cmd).is_ok() {
                                json!({"ok": true, "phase": phase()})
                            } else {
                                json!({"ok": false, "error": "the release is shutting down"})
                            }
                        }
                        "status" => {
                            json!({"ok": true, "phase": phase(), "status": *status.borrow()})
                        }
                        other => {
                            json!({"ok": false, "error": format!("unknown request `{other}`; use promote, abort or status")})
                        }
                    };
                    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                });
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            task,
        })
    }
}

/// Sends one request to a running rollout and returns its JSON answer.
pub async fn request(path: &Path, what: &str) -> Result<serde_json::Value, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{what}\n").as_bytes())
        .await
        .map_err(|e| ControlError::Refused(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| ControlError::Refused(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| ControlError::Refused(format!("bad answer `{line}`: {e}")))?;
    if value["ok"] == true {
        Ok(value)
    } else {
        Err(ControlError::Refused(
            value["error"].as_str().unwrap_or("refused").to_string(),
        ))
    }
}
