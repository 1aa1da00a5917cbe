//! Sealing of stored passwords with XChaCha20-Poly1305, bound to the environment id.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use uuid::Uuid;

const NONCE_LEN: usize = 24;

#[derive(Clone)]
pub struct Sealer(XChaCha20Poly1305);

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(key.into()))
    }

    /// nonce ‖ ciphertext; the id is authenticated so a sealed value cannot be moved to another row.
    pub fn seal(&self, env_id: Uuid, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: env_id.as_bytes(),
        };
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("encryption cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, env_id: Uuid, sealed: &[u8]) -> Option<String> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let plain = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: env_id.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&[7; 32]);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = s.seal(a, "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.open(a, &sealed).as_deref(), Some("hunter2"));
        assert_eq!(s.open(b, &sealed), None);
        assert_eq!(Sealer::new(&[8; 32]).open(a, &sealed), None);
    }
}
