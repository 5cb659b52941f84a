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

    fn agent_mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(b"agent-token:");
        mac.update(body.as_bytes());
        mac
    }

    /// An agent token: scoped to the one launch (`run_id`) of one instance, expiring
    /// at `expires_at` (unix seconds). Derived, like access tokens, so nothing secret
    /// is stored; fencing comes from checking the run against the workload on use.
    pub fn agent_token(&self, kind: AgentTokenKind, run_id: &str, expires_at: i64) -> String {
        let body = format!("caa1.{}.{run_id}.{expires_at}", kind.as_str());
        let mac = hex::encode(self.agent_mac(&body).finalize().into_bytes());
        format!("{body}.{mac}")
    }

    /// The claims of a token this key made; `None` for anything else. Expiry is the
    /// caller's to check, since a heartbeat may refresh a recently expired token.
    pub fn verify_agent_token(&self, token: &str) -> Option<AgentClaims> {
        let (body, mac) = token.rsplit_once('.')?;
        let mac = hex::decode(mac).ok()?;
        self.agent_mac(body).verify_slice(&mac).ok()?;
        let mut parts = body.split('.');
        let (Some("caa1"), Some(kind), Some(run_id), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        Some(AgentClaims {
            kind: AgentTokenKind::parse(kind)?,
            run_id: run_id.to_string(),
            expires_at: expires.parse().ok()?,
        })
    }
}

/// What an agent token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentTokenKind {
    /// Booted with the instance: registers once.
    Registration,
    /// Given at registration and refreshed by heartbeats: every other call.
    Session,
}

impl AgentTokenKind {
    fn as_str(self) -> &'static str {
        match self {
            AgentTokenKind::Registration => "reg",
            AgentTokenKind::Session => "ses",
        }
    }

    fn parse(text: &str) -> Option<AgentTokenKind> {
        match text {
            "reg" => Some(AgentTokenKind::Registration),
            "ses" => Some(AgentTokenKind::Session),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClaims {
    pub kind: AgentTokenKind,
    /// The run that launched the instance.
    pub run_id: String,
    /// Unix seconds.
    pub expires_at: i64,
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

    #[test]
    fn agent_tokens_carry_their_claims_and_refuse_any_change() {
        let key = AccessTokenKey::from_bytes([7; 32]);
        let token = key.agent_token(AgentTokenKind::Session, "run-ab12", 1_900_000_000);
        assert_eq!(
            key.verify_agent_token(&token),
            Some(AgentClaims {
                kind: AgentTokenKind::Session,
                run_id: "run-ab12".into(),
                expires_at: 1_900_000_000
            })
        );
        // Another key, another run, a later expiry, another kind: all refused.
        assert_eq!(
            AccessTokenKey::from_bytes([8; 32]).verify_agent_token(&token),
            None
        );
        for forged in [
            token.replace("run-ab12", "run-ab13"),
            token.replace("1900000000", "1900000001"),
            token.replace(".ses.", ".reg."),
            format!("{token}0"),
            String::new(),
            "caa1.ses.run.1.zz".into(),
        ] {
            assert_eq!(key.verify_agent_token(&forged), None, "{forged}");
        }
        assert_ne!(
            token,
            key.agent_token(AgentTokenKind::Registration, "run-ab12", 1_900_000_000)
        );
    }
}
