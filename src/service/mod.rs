//! Building blocks of the environment service that bound its work: per-key leases (one change
//! to a key at a time, across replicas, without holding a connection), per-target work queues
//! (heavy work is admitted a few at a time) and deadlines (nothing waits forever).

pub mod deadline;
pub mod lease;
pub mod queue;

pub use deadline::Deadline;
pub use lease::{Lease, Leases};
pub use queue::{QueueFull, WorkQueue};
