//! Token derivation and hashing the orchestrator needs to give each workload its
//! router access token. Where the key lives (a file in the data dir) is the server's
//! business; this module only derives.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Hex SHA-256 of a token: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Derives each workload's router access token as HMAC-SHA256(key, workload id). The
/// service can show the owner the token at any time (create, adopt, refresh, import)
/// while the store keeps only its SHA-256, like every other token.
#[derive(Clone)]
pub struct AccessTokenKey(Arc<[u8; 32]>);

impl std::fmt::Debug for AccessTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokenKey(<secret>)")
    }
}

impl AccessTokenKey {
    /// A fresh random key (tests, and a first start).
    pub fn random() -> AccessTokenKey {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        AccessTokenKey(Arc::new(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> AccessTokenKey {
        AccessTokenKey(Arc::new(key))
    }

    /// The access token of a workload.
    pub fn token_for(&self, workload_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(b"workload-access-token:");
        mac.update(workload_id.as_bytes());
        format!("caw_{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// What the store keeps of it.
    pub fn hash_for(&self, workload_id: &str) -> String {
        hash_token(&self.token_for(workload_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_workload_and_stored_hashed() {
        let key = AccessTokenKey::from_bytes([7; 32]);
        assert_eq!(
            key.token_for("wl-1"),
            AccessTokenKey::from_bytes([7; 32]).token_for("wl-1")
        );
        assert_ne!(key.token_for("wl-1"), key.token_for("wl-2"));
        assert_ne!(
            key.token_for("wl-1"),
            AccessTokenKey::from_bytes([8; 32]).token_for("wl-1")
        );
        assert_eq!(key.hash_for("wl-1"), hash_token(&key.token_for("wl-1")));
    }
}
