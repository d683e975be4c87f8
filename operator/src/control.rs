//! How `sluice promote` and `sluice abort` reach a running `sluice rollout`:
//! a Unix socket, by default `$XDG_RUNTIME_DIR/sluice-<route>.sock` (or
//! `/tmp/sluice-<route>.sock`), only reachable by local users the file mode
//! allows. One line per request, one JSON line back:
//! `{"ok":true,"phase":"Progressing","message":"..."}` or
//! `{"ok":false,"error":"..."}`.
//!
//! - Requests: `promote` (approve: the next passing tick at the last step
//!   promotes), `promote-full` (promote now, skipping the remaining steps
//!   and the analysis: `sluice promote --full`), `abort`, `status`.
//! - A request may also be a JSON object naming the release it is meant
//!   for: `{"request":"abort","route":"web","revision":"http://..."}` (the
//!   dashboard sends these). One that names another route or revision than
//!   the release this process drives is refused and nothing is done: a
//!   socket path given to several routes' rollouts over time must never
//!   steer a release the asker did not see.
//!   `sluice promote` and `sluice abort` send these too ([`command`]): the
//!   route they were given and the revision of the release (`--revision`,
//!   else the one the socket's release says it is of just before), so a
//!   socket given with `--control-socket` that drives another route, or a
//!   release that changed between the two requests, does nothing. The
//!   bare one-word requests stay accepted: the socket's protocol
//!   (docs/rollout.md) promises them to scripts, and a bare request steers
//!   only what the socket's own release is.
//!   A named request's fields are `request`, `route` and `revision`, each
//!   a string: any other field, or a name that is not a string
//!   (`"route": 5`), is refused, never read as no name. A revision names
//!   the release's when it is the same upstream URL once parsed
//!   (`http://h:1/` and `http://h:1` are one).
//! - A command the release cannot act on in its phase is refused saying
//!   why ([`Command::refused_in`]), never accepted and silently dropped.
//! - A release resumed from its state file (the rollout restarted
//!   mid-release) is answered with its saved phase, weight and revision
//!   from the start, never as `Initializing` until its first tick: the
//!   rollout seeds the status the socket reads with it before binding.
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::machine::{Command, Phase, Status};

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
    /// The rollout answered no, saying why.
    #[error("{0}")]
    Refused(String),
    /// The rollout did not answer (in time, or with a line that is an answer).
    #[error("{0}")]
    NoAnswer(String),
}

/// The release a socket steers: its route, and whether it is an
/// experiment (which never promotes).
#[derive(Clone, Debug)]
pub struct Target {
    pub route: String,
    pub experiment: bool,
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
        target: Target,
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
        // Only this user may steer the release: the socket is made 0600
        // (whatever the umask, e.g. in a shared /tmp), and a peer of
        // another user (root aside) is refused.
        {
            use std::os::unix::fs::PermissionsExt;
            let bind_error = |source| ControlError::Bind {
                path: path.to_path_buf(),
                source,
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(bind_error)?;
        }
        let owner = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).map(|m| m.uid()).ok()
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let commands = commands.clone();
                let status = status.clone();
                let target = target.clone();
                let peer = stream.peer_cred().ok().map(|c| c.uid());
                if !matches!((peer, owner), (Some(p), Some(o)) if p == o || p == 0) {
                    let mut stream = stream;
                    let refusal = json!({"ok": false, "error": "the control socket answers only the user running the release"});
                    tokio::spawn(async move {
                        let _ = stream.write_all(format!("{refusal}\n").as_bytes()).await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let current = status.borrow().clone();
                    let (mut reply, command) = answer(&line, &target, current.as_ref());
                    if let Some(cmd) = command
                        && commands.send(cmd).is_err()
                    {
                        reply = json!({"ok": false, "error": "the release is shutting down"});
                    }
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

/// The answer to one request line, and the command to pass to the
/// release when it is accepted.
fn answer(line: &str, target: &Target, status: Option<&Status>) -> (Value, Option<Command>) {
    let refuse = |why: String| (json!({"ok": false, "error": why}), None);
    let phase = status.map(|s| s.phase).unwrap_or(Phase::Initializing);
    let line = line.trim();
    let (request, route, revision) = if line.starts_with('{') {
        let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(line) else {
            return refuse(format!("`{line}` is not a request"));
        };
        // A name that is not a string would otherwise read as no name, and
        // a misspelt key be ignored: either way an asker who meant one
        // release would steer whichever the socket drives.
        if let Some(k) = v
            .keys()
            .find(|k| !matches!(k.as_str(), "request" | "route" | "revision"))
        {
            return refuse(format!(
                "nothing was done: `{k}` is not a field of a request (they are request, route and revision)"
            ));
        }
        let mut text = |k: &str| match v.remove(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("nothing was done: `{k}` must be a string")),
        };
        match (text("request"), text("route"), text("revision")) {
            (Ok(request), Ok(route), Ok(revision)) => {
                (request.unwrap_or_default(), route, revision)
            }
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return refuse(e),
        }
    } else {
        (line.to_string(), None, None)
    };
    if let Some(route) = route
        && route != target.route
    {
        return refuse(format!(
            "nothing was done: this socket steers the release on route `{}`, not `{route}`",
            target.route
        ));
    }
    let live_revision = status.map(|s| s.revision.as_str());
    if let Some(revision) = revision
        && !live_revision.is_some_and(|live| same_revision(live, &revision))
    {
        return refuse(format!(
            "nothing was done: the release on route `{}` is of revision {}, not {revision}",
            target.route,
            live_revision.unwrap_or("(not started yet)")
        ));
    }
    let (cmd, what) = match request.as_str() {
        "status" => {
            return (
                json!({"ok": true, "phase": phase.as_str(), "status": status}),
                None,
            );
        }
        "promote" => (
            Command::Approve,
            "promotion approved; it promotes on a passing tick once every step has passed",
        ),
        "promote-full" => (
            Command::PromoteNow,
            "promotion requested now, skipping the remaining steps and the analysis",
        ),
        "abort" => (Command::Abort, "rollback requested"),
        other => {
            return refuse(format!(
                "unknown request `{other}`; use promote, promote-full, abort or status"
            ));
        }
    };
    if let Some(why) = cmd.refused_in(phase, target.experiment) {
        return refuse(format!("nothing was done: {why}"));
    }
    (
        json!({"ok": true, "phase": phase.as_str(), "message": what}),
        Some(cmd),
    )
}

/// Whether a request's `revision` names the release's: the same text, or
/// the same upstream once parsed (`http://h:1/` is `http://h:1`), as the
/// rollout compares upstream URLs elsewhere.
fn same_revision(live: &str, asked: &str) -> bool {
    let parse = sluice_proxy::config::UpstreamUrl::parse;
    live == asked || matches!((parse(live), parse(asked)), (Ok(a), Ok(b)) if a == b)
}

/// What `sluice promote` / `sluice abort` send: request `what` named with
/// `route` and the release's revision, as the dashboard names them, so a
/// socket steering another release refuses it and does nothing. The
/// revision is `revision` when given, else the one the socket's release
/// answers a `status` (also naming `route`) with just before; a release
/// that has not ticked yet has none to name, and the request names the
/// route alone. Returns the answer and the revision named.
pub async fn command(
    path: &Path,
    route: &str,
    revision: Option<&str>,
    what: &str,
) -> Result<(Value, Option<String>), ControlError> {
    let revision = match revision {
        Some(r) => Some(r.to_string()),
        None => {
            let status = json!({"request": "status", "route": route}).to_string();
            request(path, &status).await?["status"]["revision"]
                .as_str()
                .map(str::to_string)
        }
    };
    let mut named = json!({"request": what, "route": route});
    if let Some(r) = &revision {
        named["revision"] = json!(r);
    }
    let answer = request(path, &named.to_string()).await?;
    Ok((answer, revision))
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
            Err(ControlError::NoAnswer(format!(
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
        .map_err(|e| ControlError::NoAnswer(format!("cannot send to {}: {e}", path.display())))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| {
            ControlError::NoAnswer(format!("cannot read the answer of {}: {e}", path.display()))
        })?;
    let value: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| ControlError::NoAnswer(format!("bad answer `{line}`: {e}")))?;
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

    fn target(route: &str) -> Target {
        Target {
            route: route.into(),
            experiment: false,
        }
    }

    /// A socket steering route `api`'s release of `http://v2`
    /// (Progressing), bound in scratch directory `name`: its path, what it
    /// passes on, and what keeps it open.
    async fn api_socket(
        name: &str,
    ) -> (
        PathBuf,
        mpsc::UnboundedReceiver<Command>,
        (ControlSocket, watch::Sender<Option<Status>>),
    ) {
        let path = scratch(name).join("control.sock");
        let (commands, received) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Some(status(Phase::Progressing, "http://v2")));
        let socket = ControlSocket::bind(&path, target("api"), commands, status_rx)
            .await
            .unwrap();
        (path, received, (socket, status_tx))
    }

    fn status(phase: Phase, revision: &str) -> Status {
        Status {
            phase,
            revision: revision.into(),
            step: 0,
            canary_weight_bp: 2000,
            passed_steps: 0,
            failed_checks: 0,
            approved: false,
            started_at: 0.0,
            last_progress_at: 0.0,
            last_transition_at: 0.0,
            message: String::new(),
            unconfirmed: None,
            queued_revision: None,
            step_started_at: 0.0,
            gate: None,
            undecided: false,
            failure_counted_at: None,
        }
    }

    /// The socket is its user's alone, whatever the umask: mode 0600.
    #[tokio::test]
    async fn the_socket_is_made_for_its_user_alone() {
        use std::os::unix::fs::PermissionsExt;
        let (path, _received, _socket) = api_socket("mode").await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        // Its user is answered.
        let answer = request(&path, "status").await.unwrap();
        assert!(answer.to_string().contains("Progressing"), "{answer}");
    }

    /// A request naming another route or revision than the release this
    /// socket steers is refused and passes nothing on; `promote-full`
    /// (plain or named) becomes a promotion now, `promote` an approval.
    #[tokio::test]
    async fn a_request_for_another_release_does_nothing_and_promote_full_promotes_now() {
        let (path, mut received, _socket) = api_socket("target").await;
        let named = |request: &str, route: &str, revision: &str| {
            json!({"request": request, "route": route, "revision": revision}).to_string()
        };
        for (line, why) in [
            (named("abort", "web", "http://v2"), "route `api`, not `web`"),
            (
                named("abort", "api", "http://v1"),
                "of revision http://v2, not http://v1",
            ),
        ] {
            let err = request(&path, &line).await.expect_err(&line);
            assert!(
                matches!(&err, ControlError::Refused(e) if e.contains(why) && e.starts_with("nothing was done")),
                "{line}: {err}"
            );
            assert!(received.try_recv().is_err(), "{line} passed a command on");
        }
        let ok = request(&path, &named("promote-full", "api", "http://v2"))
            .await
            .unwrap();
        assert_eq!(ok["phase"], "Progressing");
        assert!(ok["message"].as_str().unwrap().contains("now"), "{ok}");
        assert_eq!(received.recv().await, Some(Command::PromoteNow));
        request(&path, "promote-full").await.unwrap();
        assert_eq!(received.recv().await, Some(Command::PromoteNow));
        request(&path, "promote").await.unwrap();
        assert_eq!(received.recv().await, Some(Command::Approve));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A named request with a name that is not a string, or a field that
    /// is not one of a request's, is refused rather than read as unnamed;
    /// a revision written another way for the same upstream is the same.
    #[test]
    fn a_malformed_named_request_is_refused_and_a_revision_is_compared_as_a_url() {
        let api = target("api");
        let live = status(Phase::Progressing, "http://h:1");
        for line in [
            r#"{"request":"abort","route":5}"#,
            r#"{"request":"abort","route":"api","revision":null}"#,
            r#"{"request":"abort","route":"api","revison":"http://other:1"}"#,
            r#"{"request":["abort"]}"#,
            r#"["abort"]"#,
        ] {
            let (reply, cmd) = answer(line, &api, Some(&live));
            assert_eq!(reply["ok"], false, "{line}: {reply}");
            assert_eq!(cmd, None, "{line}");
        }
        for revision in ["http://h:1/", "http://h:1"] {
            let line = json!({"request": "abort", "route": "api", "revision": revision});
            let (reply, cmd) = answer(&line.to_string(), &api, Some(&live));
            assert_eq!(cmd, Some(Command::Abort), "{revision}: {reply}");
        }
        let other = json!({"request": "abort", "route": "api", "revision": "http://h:2/"});
        assert_eq!(answer(&other.to_string(), &api, Some(&live)).1, None);
    }

    /// What the CLI sends names the route it was given and the release's
    /// revision: a socket driving another route, or a release of another
    /// revision than the one asked for, does nothing; the socket's own
    /// release takes it.
    #[tokio::test]
    async fn the_cli_names_its_route_and_revision_so_another_release_is_not_steered() {
        let (path, mut received, _socket) = api_socket("cli").await;
        let err = command(&path, "web", None, "abort")
            .await
            .expect_err("another route");
        assert!(
            err.to_string().contains(
                "nothing was done: this socket steers the release on route `api`, not `web`"
            ),
            "{err}"
        );
        let err = command(&path, "api", Some("http://v1"), "promote-full")
            .await
            .expect_err("another revision");
        assert!(err.to_string().contains("not http://v1"), "{err}");
        assert!(received.try_recv().is_err(), "a command was passed on");
        let (answer, revision) = command(&path, "api", None, "abort").await.unwrap();
        assert_eq!(revision.as_deref(), Some("http://v2"));
        assert_eq!(answer["message"], "rollback requested");
        assert_eq!(received.recv().await, Some(Command::Abort));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A command the release cannot act on in its phase is refused saying
    /// why, never accepted and dropped.
    #[test]
    fn a_command_the_phase_cannot_take_is_refused_saying_why() {
        let web = target("web");
        for (phase, line, why) in [
            (Phase::Succeeded, "abort", "already ended (Succeeded)"),
            (Phase::Promoting, "abort", "promotion is already under way"),
            (Phase::Initializing, "promote-full", "no traffic yet"),
        ] {
            let (reply, cmd) = answer(line, &web, Some(&status(phase, "v2")));
            assert_eq!(reply["ok"], false, "{line} in {phase:?}");
            assert!(reply["error"].as_str().unwrap().contains(why), "{reply}");
            assert_eq!(cmd, None);
        }
        let experiment = Target {
            experiment: true,
            ..web
        };
        let (reply, cmd) = answer(
            "promote-full",
            &experiment,
            Some(&status(Phase::Progressing, "v2")),
        );
        assert!(
            reply["error"].as_str().unwrap().contains("never promotes"),
            "{reply}"
        );
        assert_eq!(cmd, None);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = scratch("file");
        let path = dir.join("precious.txt");
        std::fs::write(&path, "precious data").unwrap();
        let (commands, _keep) = mpsc::unbounded_channel();
        let (_status_tx, status) = watch::channel(None);
        let err = ControlSocket::bind(&path, target("web"), commands, status)
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
