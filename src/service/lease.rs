//! Per-key exclusion: every change to an environment key happens under that key's lease.
//!
//! Within a process, one mutex per key queues the callers; across replicas, a row in the
//! control store (`key_leases`) names the holder until it expires. Taking, renewing and
//! releasing a lease are single statements, so no pooled connection is held while the work
//! runs. One task per process renews every lease it holds every `RENEW_EVERY`; a replica that
//! is killed stops renewing and its keys are free again after `TTL`. The renewal also carries
//! cancellation: a DELETE on any replica marks the row, and the holder of a create, reset or
//! migrate of that key stops (see [`Lease::stopped`]).

use crate::bounds::Deadline;
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a lease outlives its last renewal: the bound on how long a killed replica's keys
/// stay taken.
pub const TTL: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// What a lease's holder is doing, as recorded in its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Create,
    Delete,
    Extend,
    Rotate,
    Reset,
    Migrate,
    Sweep,
    Reconcile,
    Quota,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Create => "create",
            Purpose::Delete => "delete",
            Purpose::Extend => "extend",
            Purpose::Rotate => "rotate",
            Purpose::Reset => "reset",
            Purpose::Migrate => "migrate",
            Purpose::Sweep => "sweep",
            Purpose::Reconcile => "reconcile",
            Purpose::Quota => "quota",
        }
    }

    /// Work a DELETE of the same key may stop: the environment is going away anyway.
    pub const CANCELLABLE: [Purpose; 3] = [Purpose::Create, Purpose::Reset, Purpose::Migrate];
}

/// Why a lease's holder must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A DELETE of the key asked for it.
    Cancelled,
    /// The lease could not be renewed in time (or was taken over): another replica may act on
    /// the key now.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another operation on this key is still running")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Held {
    key: String,
    purpose: Purpose,
    stop: watch::Sender<Option<Stop>>,
}

pub struct Leases {
    store: Store,
    replica: Uuid,
    local: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    held: Mutex<HashMap<Uuid, Held>>,
}

/// A held lease; released when dropped (prefer [`Lease::release`], which waits for it).
pub struct Lease {
    key: String,
    holder: Uuid,
    leases: Arc<Leases>,
    stop: watch::Receiver<Option<Stop>>,
    released: bool,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl Leases {
    /// Starts the renewal task of this process; it ends when the last `Arc` is dropped.
    pub fn start(store: Store) -> Arc<Self> {
        let leases = Arc::new(Self {
            store,
            replica: Uuid::new_v4(),
            local: Default::default(),
            held: Default::default(),
        });
        tokio::spawn(renew_loop(Arc::downgrade(&leases)));
        leases
    }

    fn local(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.local.lock().unwrap();
        map.retain(|_, m| Arc::strong_count(m) > 1);
        map.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for the lease of `key` until `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &str,
        purpose: Purpose,
        deadline: &Deadline,
    ) -> Result<Lease, LeaseError> {
        let local = deadline
            .run(self.local(key).lock_owned())
            .await
            .map_err(|_| LeaseError::Busy)?;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(lease) = self.take(key, purpose).await? {
                return Ok(lease.with_guard(local));
            }
            // Another replica holds it: poll, backing off, within the deadline.
            let jitter = Duration::from_millis(rand::random::<u64>() % 10);
            if deadline.remaining() <= pause {
                return Err(LeaseError::Busy);
            }
            tokio::time::sleep(pause + jitter).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Takes the lease of `key` only if nobody holds it now.
    pub async fn try_acquire(
        self: &Arc<Self>,
        key: &str,
        purpose: Purpose,
    ) -> Result<Option<Lease>, LeaseError> {
        let Ok(local) = self.local(key).try_lock_owned() else {
            return Ok(None);
        };
        Ok(self.take(key, purpose).await?.map(|l| l.with_guard(local)))
    }

    /// One attempt at the row (the caller holds the key's local mutex).
    async fn take(
        self: &Arc<Self>,
        key: &str,
        purpose: Purpose,
    ) -> Result<Option<Unguarded>, LeaseError> {
        let holder = Uuid::new_v4();
        if !self
            .store
            .take_lease(key, holder, self.replica, purpose.as_str(), TTL)
            .await?
        {
            return Ok(None);
        }
        let (tx, rx) = watch::channel(None);
        self.held.lock().unwrap().insert(
            holder,
            Held {
                key: key.to_owned(),
                purpose,
                stop: tx,
            },
        );
        Ok(Some(Unguarded {
            key: key.to_owned(),
            holder,
            leases: self.clone(),
            stop: rx,
        }))
    }

    /// Asks whoever runs a create, reset or migrate of `key` (here or on another replica) to
    /// stop. Answers whether anyone was asked.
    pub async fn cancel(&self, key: &str) -> Result<bool, StoreError> {
        let mut asked = false;
        for held in self.held.lock().unwrap().values() {
            if held.key == key && Purpose::CANCELLABLE.contains(&held.purpose) {
                held.stop.send_replace(Some(Stop::Cancelled));
                asked = true;
            }
        }
        let purposes = Purpose::CANCELLABLE.map(Purpose::as_str);
        Ok(self.store.request_lease_cancel(key, &purposes).await? || asked)
    }

    fn signal(&self, holder: Uuid, stop: Stop) {
        if let Some(h) = self.held.lock().unwrap().get(&holder) {
            if h.stop.borrow().is_none() || stop == Stop::Lost {
                h.stop.send_replace(Some(stop));
            }
        }
    }
}

/// A lease taken in the store before the local guard is attached.
struct Unguarded {
    key: String,
    holder: Uuid,
    leases: Arc<Leases>,
    stop: watch::Receiver<Option<Stop>>,
}

impl Unguarded {
    fn with_guard(self, local: tokio::sync::OwnedMutexGuard<()>) -> Lease {
        Lease {
            key: self.key,
            holder: self.holder,
            leases: self.leases,
            stop: self.stop,
            released: false,
            _local: local,
        }
    }
}

impl Lease {
    /// Resolves when the holder must stop: a DELETE asked for it, or the lease was lost.
    pub async fn stopped(&self) -> Stop {
        let mut rx = self.stop.clone();
        let stop = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.expect("waited for Some"),
            // The sender lives in `held` until this lease is released.
            Err(_) => Stop::Lost,
        };
        stop
    }

    /// Gives the key back now.
    pub async fn release(mut self) {
        self.released = true;
        self.leases.held.lock().unwrap().remove(&self.holder);
        if let Err(e) = self
            .leases
            .store
            .release_lease(&self.key, self.holder)
            .await
        {
            // It expires on its own within TTL.
            tracing::warn!(error = %e, "could not release a key lease");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.leases.held.lock().unwrap().remove(&self.holder);
        let (leases, key, holder) = (self.leases.clone(), self.key.clone(), self.holder);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let release = async move {
                let _ = leases.store.release_lease(&key, holder).await;
            };
            rt.spawn(tracing::Instrument::instrument(
                release,
                tracing::Span::current(),
            ));
        }
    }
}

async fn renew_loop(leases: Weak<Leases>) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let holders: Vec<Uuid> = leases.held.lock().unwrap().keys().copied().collect();
        if holders.is_empty() {
            last_renewed = tokio::time::Instant::now();
            continue;
        }
        match leases.store.renew_leases(&holders, TTL).await {
            Ok(kept) => {
                last_renewed = tokio::time::Instant::now();
                for holder in &holders {
                    match kept.iter().find(|(h, _)| h == holder) {
                        None => leases.signal(*holder, Stop::Lost),
                        Some((_, true)) => leases.signal(*holder, Stop::Cancelled),
                        Some((_, false)) => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew key leases");
                // Past the TTL another replica may take the keys: our holders must stop.
                if last_renewed.elapsed() + RENEW_EVERY >= TTL {
                    for holder in holders {
                        leases.signal(holder, Stop::Lost);
                    }
                }
            }
        }
    }
}
