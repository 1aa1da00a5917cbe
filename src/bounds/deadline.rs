//! A deadline: the moment by which an operation must have answered, carried through every
//! step of it so that each wait (a queue, a lease, a statement) is bounded by what is left.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

/// The deadline passed before the work finished.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the deadline of {}s passed", .0.as_secs_f64().round())]
pub struct Expired(pub Duration);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The whole time this operation was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Runs `work`, giving up (and dropping it) when the deadline passes.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, Expired> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| Expired(self.budget))
    }

    /// A PostgreSQL `statement_timeout` value (milliseconds) for what is left, a little short
    /// of it so that the server's own cancellation (which names the statement) comes before
    /// the deadline itself; at least 1 ms (0 would mean "no timeout").
    pub fn statement_timeout_ms(&self) -> u64 {
        let left = self.remaining().as_millis() as u64;
        // Room for the error to travel back on a loaded machine.
        let margin = (left / 4).clamp(500, 5000);
        left.saturating_sub(margin).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_past_the_deadline_is_dropped() {
        let d = Deadline::after(Duration::from_millis(50));
        let slow = d.run(tokio::time::sleep(Duration::from_secs(3))).await;
        assert!(slow.is_err());
        assert_eq!(d.remaining(), Duration::ZERO);
        assert_eq!(d.statement_timeout_ms(), 1);
        let d = Deadline::after(Duration::from_secs(2));
        assert!(d.run(async { 7 }).await.is_ok_and(|v| v == 7));
        let ms = d.statement_timeout_ms();
        assert!((1000..1600).contains(&ms), "{ms}");
    }
}
