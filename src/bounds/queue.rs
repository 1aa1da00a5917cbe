//! A per-target work queue: heavy work (cold clones, template builds, caller migrations,
//! resets, pool refills) runs at most `max_concurrent` at a time, because loading data
//! saturates a server long before its connection limit; at most `max_queued` callers wait, each
//! within its deadline, and the rest are told to come back later instead of piling up.
//! Warm hand-outs never enter it.

use super::deadline::Deadline;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct WorkQueue {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    waiting: AtomicUsize,
    /// Moving average of how long one piece of work holds its place, in milliseconds.
    average_ms: AtomicU64,
}

/// Why a caller was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum QueueFull {
    #[error(
        "{queued} requests are already waiting for this target's {running} provisioning slots"
    )]
    Full {
        queued: usize,
        running: usize,
        retry_after: Duration,
    },
    #[error("the deadline passed while waiting for a provisioning slot ({queued} ahead)")]
    Expired { queued: usize },
}

/// A place in the running set; given back (and its time recorded) when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    queue: Arc<WorkQueue>,
    since: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let took = self.since.elapsed().as_millis() as u64;
        let avg = self.queue.average_ms.load(Ordering::Relaxed);
        self.queue
            .average_ms
            .store((avg * 7 + took) / 8, Ordering::Relaxed);
    }
}

impl WorkQueue {
    pub fn new(max_concurrent: usize, max_queued: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            max_queued,
            waiting: AtomicUsize::new(0),
            average_ms: AtomicU64::new(200),
        })
    }

    pub fn running(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a place within `deadline`; refuses at once when the queue is full.
    pub async fn admit(self: &Arc<Self>, deadline: &Deadline) -> Result<Admitted, QueueFull> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(self.admitted(permit));
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Decrement(&self.waiting);
        if ahead >= self.max_queued {
            let per_slot = self.average_ms.load(Ordering::Relaxed).max(50);
            let wait_ms = per_slot * (ahead as u64 + 1) / self.max_concurrent as u64;
            return Err(QueueFull::Full {
                queued: ahead,
                running: self.running(),
                retry_after: Duration::from_millis(wait_ms)
                    .clamp(Duration::from_secs(1), Duration::from_secs(120)),
            });
        }
        match deadline.run(self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.admitted(permit)),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(QueueFull::Expired { queued: ahead }),
        }
    }

    /// Waits for a place without a deadline, outside the count of waiting callers: background
    /// work (pool refills) that nobody is waiting for.
    pub async fn admit_background(self: &Arc<Self>) -> Admitted {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.admitted(permit)
    }

    fn admitted(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Admitted {
        Admitted {
            _permit: permit,
            queue: self.clone(),
            since: Instant::now(),
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_a_few_queues_the_rest_and_refuses_past_the_queue() {
        let q = WorkQueue::new(2, 1);
        let d = Deadline::after(Duration::from_secs(5));
        let a = q.admit(&d).await.unwrap();
        let _b = q.admit(&d).await.unwrap();
        assert_eq!(q.running(), 2);
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let d = Deadline::after(Duration::from_secs(5));
            q2.admit(&d).await.map(|_| ())
        });
        while q.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let full = q.admit(&d).await.err().expect("queue is full");
        assert!(
            matches!(full, QueueFull::Full { retry_after, .. } if retry_after >= Duration::from_secs(1))
        );
        drop(a);
        waiter
            .await
            .unwrap()
            .expect("the waiter got the freed place");
        let short = Deadline::after(Duration::from_millis(20));
        let q3 = WorkQueue::new(1, 10);
        let _hold = q3.admit(&short).await.unwrap();
        assert!(matches!(
            q3.admit(&short).await,
            Err(QueueFull::Expired { .. })
        ));
        assert_eq!(q3.queued(), 0);
    }
}
