//! A bounded queue whose items one background task handles in order: the
//! shape of every outbound call that must never hold up a decision (chat
//! notes, `event` and `post-rollout` webhooks).
//!
//! - [`OrderedQueue::push`] never waits: an item that finds the queue full
//!   (`depth` items waiting) is refused, and the caller counts and logs
//!   the drop as its callers' metrics say.
//! - One task per queue handles the items one after the other, in the
//!   order they were pushed, so a receiver sees them as they happened.
//! - [`OrderedQueue::finish`] closes the queue and waits, up to a deadline,
//!   for what it holds (a process about to exit); what is left then is
//!   given up: the task is aborted, the item in its hands cut short at
//!   its next await, and nothing more is handled.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a queue's task does with each item, in order; `&mut self` keeps
/// what it learns from one item to the next (pacing, a failure logged).
pub trait Handler<T>: Send + 'static {
    fn handle(&mut self, item: T) -> impl Future<Output = ()> + Send;
}

/// A bounded queue and the task that empties it (see the module docs).
pub struct OrderedQueue<T> {
    tx: mpsc::Sender<T>,
    worker: JoinHandle<()>,
}

impl<T> std::fmt::Debug for OrderedQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedQueue")
            .field("waiting", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish()
    }
}

impl<T: Send + 'static> OrderedQueue<T> {
    /// Starts the task (on the current runtime) that gives `handler` each
    /// item pushed, with up to `depth` waiting.
    pub fn start(depth: usize, mut handler: impl Handler<T>) -> Self {
        let (tx, mut rx) = mpsc::channel::<T>(depth);
        let worker = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                handler.handle(item).await;
            }
        });
        Self { tx, worker }
    }

    /// Queues `item` behind the others, never waiting; false: the queue
    /// was full (or its task gone) and the item is dropped.
    pub fn push(&self, item: T) -> bool {
        self.tx.try_send(item).is_ok()
    }

    /// Closes the queue and waits until `deadline` for the items it holds
    /// to be handled; whether they all were. At the deadline the task is
    /// aborted (a dropped handle would leave it running, detached).
    pub async fn finish(self, deadline: tokio::time::Instant) -> bool {
        drop(self.tx);
        let mut worker = self.worker;
        if tokio::time::timeout_at(deadline, &mut worker).await.is_ok() {
            return true;
        }
        worker.abort();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records each item after a pause, so items pile up behind it.
    struct Slow(Arc<Mutex<Vec<u32>>>, Duration);

    impl Handler<u32> for Slow {
        async fn handle(&mut self, item: u32) {
            tokio::time::sleep(self.1).await;
            self.0.lock().unwrap().push(item);
        }
    }

    /// Items are handled in the order pushed; past `depth` waiting (and
    /// one in the task's hands) a push is refused; `finish` waits for the
    /// rest.
    #[tokio::test]
    async fn items_are_handled_in_order_and_a_full_queue_refuses() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = OrderedQueue::start(4, Slow(seen.clone(), Duration::from_millis(20)));
        let taken: Vec<bool> = (0..8).map(|i| queue.push(i)).collect();
        let kept = taken.iter().filter(|t| **t).count();
        assert!((4..=5).contains(&kept), "{taken:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        assert!(queue.finish(deadline).await);
        let expected: Vec<u32> = (0..8).filter(|i| taken[*i as usize]).collect();
        assert_eq!(*seen.lock().unwrap(), expected);
    }

    /// `finish` gives up at its deadline, saying so, and stops the task:
    /// neither the item in its hands nor the ones waiting are handled
    /// after it.
    #[tokio::test]
    async fn finish_gives_up_at_its_deadline_and_stops_the_task() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = OrderedQueue::start(4, Slow(seen.clone(), Duration::from_millis(200)));
        assert!(queue.push(1));
        assert!(queue.push(2));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!queue.finish(deadline).await);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*seen.lock().unwrap(), [0u32; 0], "handled after finish");
    }
}
