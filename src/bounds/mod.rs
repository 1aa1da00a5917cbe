//! What bounds every piece of work, below the service and the backends alike: a deadline
//! carried through each step (nothing waits forever), and per-target work queues (heavy work is
//! admitted a few at a time, and the rest told to come back rather than pile up).

pub mod deadline;
pub mod queue;

pub use deadline::Deadline;
pub use queue::{QueueFull, WorkQueue};
