//! Commands: what a person asks of a release through the annotation
//! `sluice.dev/command` on `app-primary` (`kubectl sluice approve`,
//! `promote`, `abort`, `retry`). The command is read before the machine
//! steps and cleared only once the decision it led to is saved (see
//! [`super::release`]).

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;

use super::api::{json_patch, publish};
use super::objects::primary_name;
use super::{Context, Error, KubeStatus, annotations};
use crate::machine::Command;

/// The command annotation's raw text, and the machine command it means.
/// An unknown command gets a Warning Event and means nothing; `retry`
/// forgets the rolled-back revision, so it may be released again.
pub(super) async fn read_command(
    ctx: &Context,
    d: &Deployment,
    primary: &Deployment,
    status: &mut KubeStatus,
) -> (Option<String>, Option<Command>) {
    let raw_command = take_command(primary);
    let command = match raw_command.as_deref() {
        None => None,
        Some("approve") => Some(Command::Approve),
        Some("abort") => Some(Command::Abort),
        Some("promote-full") => Some(Command::PromoteNow),
        Some("retry") => {
            status.failed_revision = None;
            Some(Command::Retry)
        }
        Some(other) => {
            publish(
                ctx,
                d,
                EventType::Warning,
                "UnknownCommand",
                format!(
                    "annotation {}: `{other}` is not a command; use approve, promote-full, abort or retry",
                    annotations::COMMAND
                ),
            )
            .await;
            None
        }
    };
    (raw_command, command)
}

pub(super) fn take_command(primary: &Deployment) -> Option<String> {
    primary.annotations().get(annotations::COMMAND).cloned()
}

/// Clears the command `read` (its text, as read when the reconcile began)
/// with a JSON patch that tests it first: a newer command a person left
/// meanwhile (an abort over a waiting approve) fails the test (422), stays,
/// and is read at the next reconcile, never silently erased.
pub(super) async fn clear_command(
    ctx: &Context,
    ns: &str,
    app: &str,
    read: &str,
) -> Result<(), Error> {
    let path = format!(
        "/metadata/annotations/{}",
        annotations::COMMAND.replace('~', "~0").replace('/', "~1")
    );
    let ops = vec![
        json!({"op": "test", "path": path, "value": read}),
        json!({"op": "remove", "path": path}),
    ];
    match json_patch(ctx, ns, &primary_name(app), ops).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 => {
            tracing::info!(%ns, %app, "a newer command came while `{read}` was carried out; it is read next");
            Ok(())
        }
        other => other,
    }
}
