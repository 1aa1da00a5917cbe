//! Passwords made ahead of time. A SCRAM-SHA-256 verifier costs 4096 rounds of PBKDF2 —
//! milliseconds — which a warm hand-out should not spend while its caller waits: a few
//! password/verifier pairs are kept ready and made again off the request path (on the blocking
//! pool). Each pair is handed out once and only ever lives in this process's memory.

use crate::backend::Secret;
use rand::distributions::{Alphanumeric, DistString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How many pairs are kept ready, and below how many they are made again.
const KEEP: usize = 32;
const LOW: usize = 8;

#[derive(Default)]
pub struct PasswordStash {
    ready: Mutex<Vec<(Secret, String)>>,
    filling: AtomicBool,
}

impl PasswordStash {
    /// A fresh random password and its verifier; made on the spot when none is ready.
    pub fn take(self: &Arc<Self>) -> (Secret, String) {
        let (taken, left) = {
            let mut ready = self.ready.lock().unwrap();
            (ready.pop(), ready.len())
        };
        if left < LOW && !self.filling.swap(true, Ordering::SeqCst) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let this = self.clone();
                rt.spawn_blocking(move || {
                    while this.ready.lock().unwrap().len() < KEEP {
                        let pair = new_password();
                        this.ready.lock().unwrap().push(pair);
                    }
                    this.filling.store(false, Ordering::SeqCst);
                });
            } else {
                self.filling.store(false, Ordering::SeqCst);
            }
        }
        taken.unwrap_or_else(new_password)
    }
}

/// A random 32-character password and its SCRAM-SHA-256 verifier; only the verifier is sent.
fn new_password() -> (Secret, String) {
    let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    (Secret::new(password), verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_password_is_handed_out_once_with_its_verifier() {
        let stash = Arc::new(PasswordStash::default());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let (password, verifier) = stash.take();
            assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
            assert!(
                seen.insert(password.expose().to_owned()),
                "a password came twice"
            );
            tokio::task::yield_now().await;
        }
    }
}
