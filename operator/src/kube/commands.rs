//! Commands: what a person asks of a release through the annotation
//! `sluice.dev/command` on `app-primary` (`kubectl sluice approve`,
//! `promote`, `abort`, `retry`). The command is read before the machine
//! steps and cleared only once the decision it led to is saved (see
//! [`super::release`]).

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;

use super::api::{merge_patch, publish};
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

pub(super) async fn clear_command(ctx: &Context, ns: &str, app: &str) -> Result<(), Error> {
    merge_patch::<Deployment>(
        &ctx.client,
        ns,
        &primary_name(app),
        json!({"metadata": {"annotations": {annotations::COMMAND: null}}}),
    )
    .await
}
