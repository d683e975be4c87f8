//! The webhooks that never gate a release, `event` and `post-rollout`, go
//! out in the background: a slow or dead endpoint (its `timeout`, times
//! `retries` + 1, and the pauses between) never delays a tick, an abort or
//! a routing action. Each release has one queue, sent in order by one task,
//! so a receiver sees its events as they happened.
//!
//! Each lane is a [`crate::ordered_queue::OrderedQueue`], the mechanism
//! the chat notifications' channels use too.
//!
//! Up to [`DEPTH`] calls wait; a call that finds the queue full is dropped,
//! and the first drop (and then every one after a call went out again) is
//! logged, with the count so far. An event's `metadata.timestamp` is when
//! it happened, not when its call went out.
//!
//! `sluice rollout` waits for the queue once the release has ended (up to
//! [`FLUSH`], a Ctrl-C cuts it short), and sends `post-rollout` itself,
//! before that and never queued: at the end of a release nothing waits on
//! it. The operator queues `post-rollout` too, on a queue of its own, so it
//! never waits behind a slow `event` endpoint; the operator's queues live
//! as long as it does (a restart loses what is still queued).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::HttpClient;
use crate::ordered_queue::{Handler, OrderedQueue};
use crate::plan::{Plan, WebhookKind};
use crate::webhook::WebhookPayload;

/// How many calls may wait in one release's queue.
pub const DEPTH: usize = 64;

/// How long `sluice rollout` waits at its end for the calls still queued.
pub const FLUSH: Duration = Duration::from_secs(10);

/// What one queued call sends.
#[derive(Clone, Debug)]
pub enum Call {
    /// Every hook of a kind that never gates (`post-rollout`).
    Notify(WebhookKind),
    /// Every `event` hook, with the event's text and when it happened.
    Event {
        warning: bool,
        message: String,
        at: std::time::SystemTime,
    },
}

struct Job {
    http: HttpClient,
    plan: Plan,
    call: Call,
    payload: WebhookPayload,
}

/// One release's queue of background webhook calls. Cheap to clone; the
/// sending task starts with the first call.
#[derive(Clone, Debug, Default)]
pub struct HookQueue {
    /// The `event` calls, and the others (`post-rollout`), each in order.
    inner: Arc<Mutex<[Option<OrderedQueue<Job>>; 2]>>,
    dropped: Arc<AtomicU64>,
    /// Whether the next drop is logged.
    warn_next: Arc<AtomicBool>,
}

/// A lane's task: each call in turn; after each, the next drop is logged.
struct Caller {
    warn_next: Arc<AtomicBool>,
}

impl Handler<Job> for Caller {
    async fn handle(&mut self, job: Job) {
        run(&job).await;
        self.warn_next.store(true, Ordering::Relaxed);
    }
}

impl HookQueue {
    /// Queues `call` (only if the plan has a hook for it). Never waits.
    pub fn send(&self, http: &HttpClient, plan: &Plan, call: Call, payload: &WebhookPayload) {
        let kind = match &call {
            Call::Notify(kind) => *kind,
            Call::Event { .. } => WebhookKind::Event,
        };
        if plan.webhooks_of(kind).next().is_none() {
            return;
        }
        let job = Job {
            http: http.clone(),
            plan: plan.clone(),
            call,
            payload: payload.clone(),
        };
        let mut inner = self.inner.lock().expect("the hook queue's lock");
        let lane = usize::from(kind != WebhookKind::Event);
        let queue = inner[lane].get_or_insert_with(|| self.start());
        if !queue.push(job) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.warn_next.swap(false, Ordering::Relaxed) {
                tracing::warn!(release = %payload.name, dropped = n, "{} webhook calls are still queued behind a slow endpoint: this {} call is dropped (further drops are counted, not logged, until the queue moves again)", DEPTH, kind.as_str());
            }
        }
    }

    fn start(&self) -> OrderedQueue<Job> {
        self.warn_next.store(true, Ordering::Relaxed);
        let caller = Caller {
            warn_next: self.warn_next.clone(),
        };
        OrderedQueue::start(DEPTH, caller)
    }

    /// Calls dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for the calls queued so far (a process about to
    /// exit); those still queued then are logged and given up.
    pub async fn flush(&self, limit: Duration) {
        let lanes = std::mem::take(&mut *self.inner.lock().expect("the hook queue's lock"));
        let deadline = tokio::time::Instant::now() + limit;
        for queue in lanes.into_iter().flatten() {
            if !queue.finish(deadline).await {
                tracing::warn!(
                    ?limit,
                    "webhook calls still unsent at exit (a slow endpoint)"
                );
            }
        }
    }
}

async fn run(job: &Job) {
    match &job.call {
        Call::Notify(kind) => {
            if let Some((false, results)) =
                crate::webhook::run_gate(&job.http, &job.plan, *kind, &job.payload).await
            {
                for r in results.iter().filter(|r| !r.passed) {
                    tracing::warn!(release = %job.payload.name, hook = %r.hook, url = %r.url, detail = %r.detail, "{} webhook failed", kind.as_str());
                }
            }
        }
        Call::Event {
            warning,
            message,
            at,
        } => {
            let event = crate::webhook::Event {
                warning: *warning,
                message,
                at: *at,
            };
            crate::webhook::send_event(&job.http, &job.plan, &job.payload, &event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A hook that takes `delay` to answer each call, counting the calls
    /// it answered and recording each body's `eventMessage` and
    /// `timestamp`.
    async fn slow_hook(delay: Duration) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let answered = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (answered.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head and the JSON body: read until the body parses.
                let body = loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((_, body)) = text.split_once("\r\n\r\n")
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
                    {
                        break Some(v);
                    }
                };
                let Some(body) = body else { continue };
                tokio::time::sleep(delay).await;
                let field = |name: &str| {
                    body["metadata"][name]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                s.lock().unwrap().push(format!(
                    "{} at {}",
                    field("eventMessage"),
                    field("timestamp")
                ));
                a.fetch_add(1, Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        (url, answered, seen)
    }

    fn payload() -> WebhookPayload {
        WebhookPayload {
            name: "web".into(),
            namespace: None,
            kind: "",
            phase: "Progressing",
            canary_weight: 10.0,
            revision: "r1".into(),
        }
    }

    /// Sending never waits for a slow endpoint; the calls go out in order,
    /// each with the time of its event, and `flush` waits for them.
    #[tokio::test]
    async fn a_slow_event_hook_never_delays_the_sender_and_its_events_keep_their_order() {
        let (url, answered, seen) = slow_hook(Duration::from_millis(300)).await;
        let plan = Plan {
            webhooks: crate::plan::parse_webhooks(
                &format!("- {{type: event, url: '{url}'}}\n"),
                "t",
            )
            .unwrap(),
            ..Plan::default()
        };
        let queue = HookQueue::default();
        for i in 0..3 {
            let call = Call::Event {
                warning: false,
                message: format!("event {i}"),
                // When each happened, not when its call goes out.
                at: std::time::UNIX_EPOCH + Duration::from_secs(1000 + i),
            };
            queue.send(&HttpClient::plain(), &plan, call, &payload());
        }
        assert_eq!(answered.load(Ordering::SeqCst), 0, "nothing was waited for");
        queue.flush(Duration::from_secs(10)).await;
        assert_eq!(answered.load(Ordering::SeqCst), 3);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "event 0 at 1000000",
                "event 1 at 1001000",
                "event 2 at 1002000"
            ]
        );
        assert_eq!(queue.dropped(), 0);
    }

    /// `post-rollout` has a lane of its own: it never waits behind a hung
    /// `event` endpoint.
    #[tokio::test]
    async fn post_rollout_never_waits_behind_a_hung_event_hook() {
        let (hung, _, _) = slow_hook(Duration::from_secs(30)).await;
        let (fast, calls) = crate::webhook::tests::hook_answering(200).await;
        let plan = Plan {
            webhooks: crate::plan::parse_webhooks(
                &format!(
                    "- {{type: event, url: '{hung}', timeout: 60s}}\n- {{type: post-rollout, url: '{fast}'}}\n"
                ),
                "t",
            )
            .unwrap(),
            ..Plan::default()
        };
        let queue = HookQueue::default();
        let event = Call::Event {
            warning: true,
            message: "rolled back".into(),
            at: std::time::SystemTime::now(),
        };
        queue.send(&HttpClient::plain(), &plan, event, &payload());
        let post = Call::Notify(WebhookKind::PostRollout);
        queue.send(&HttpClient::plain(), &plan, post, &payload());
        for _ in 0..100 {
            if calls.load(Ordering::SeqCst) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("post-rollout waited behind the hung event hook");
    }

    /// A queue full behind a hung endpoint drops, and counts, what no
    /// longer fits; a plan without such hooks queues nothing.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (url, _, _) = slow_hook(Duration::from_secs(30)).await;
        let plan = Plan {
            webhooks: crate::plan::parse_webhooks(
                &format!("- {{type: post-rollout, url: '{url}', timeout: 60s}}\n"),
                "t",
            )
            .unwrap(),
            ..Plan::default()
        };
        let queue = HookQueue::default();
        for _ in 0..DEPTH + 5 {
            queue.send(
                &HttpClient::plain(),
                &plan,
                Call::Notify(WebhookKind::PostRollout),
                &payload(),
            );
        }
        // One is in the worker's hands or still queued: at most DEPTH + 1 kept.
        assert!((4..=5).contains(&queue.dropped()), "{}", queue.dropped());
        let none = HookQueue::default();
        none.send(
            &HttpClient::plain(),
            &Plan::default(),
            Call::Notify(WebhookKind::PostRollout),
            &payload(),
        );
        assert!(
            none.inner.lock().unwrap().iter().all(Option::is_none),
            "no task for no hook"
        );
    }
}
