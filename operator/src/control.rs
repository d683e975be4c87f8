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
    #[error("{0} exists and is not a socket; give --control-socket a path of its own")]
    NotASocket(PathBuf),
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
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket left by a rollout that ended is taken over;
            // any other file there is the user's, and stays.
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
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

/// How long `sluice promote` / `abort` wait for a rollout's answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one request to a running rollout and returns its JSON answer;
/// a rollout that does not answer within [`ANSWER_TIMEOUT`] is an error.
pub async fn request(path: &Path, what: &str) -> Result<serde_json::Value, ControlError> {
    request_within(path, what, ANSWER_TIMEOUT).await
}

async fn request_within(
    path: &Path,
    what: &str,
    limit: std::time::Duration,
) -> Result<serde_json::Value, ControlError> {
    tokio::time::timeout(limit, request_once(path, what))
        .await
        .unwrap_or_else(|_| {
            Err(ControlError::Refused(format!(
                "no answer from {} within {limit:?} (is the rollout stuck?)",
                path.display()
            )))
        })
}

async fn request_once(path: &Path, what: &str) -> Result<serde_json::Value, ControlError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = scratch("file");
        let path = dir.join("precious.txt");
        std::fs::write(&path, "precious data").unwrap();
        let (commands, _keep) = mpsc::unbounded_channel();
        let (_status_tx, status) = watch::channel(None);
        let err = ControlSocket::bind(&path, commands, status)
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, ControlError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious data");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_rollout_that_never_answers_is_an_error_in_time() {
        let dir = scratch("silent");
        let path = dir.join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let err = request_within(&path, "status", std::time::Duration::from_millis(300))
            .await
            .expect_err("no answer");
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
