//! Record types of tenants, their API tokens and the audit log.

use std::fmt;

/// What a token may do. `write` includes `read`; `admin` includes both and the
/// operator's calls (tenants, tokens, the route feed), and only tokens of the operator
/// tenant may hold it. `route` is separate: it opens the tenant's workloads through the
/// router, and it is the only tenant scope the router accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u8);

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
    Route,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Admin, Scope::Route];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Route => "route",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
            Scope::Route => 8,
        }
    }
}

impl Scopes {
    pub const NONE: Scopes = Scopes(0);

    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// Whether a call that needs `scope` is allowed (with the implied scopes).
    pub fn allows(self, scope: Scope) -> bool {
        let held = |s: Scope| self.0 & s.bit() != 0;
        match scope {
            Scope::Read => held(Scope::Read) || held(Scope::Write) || held(Scope::Admin),
            Scope::Write => held(Scope::Write) || held(Scope::Admin),
            Scope::Admin => held(Scope::Admin),
            Scope::Route => held(Scope::Route),
        }
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Parses `read,route` (any order, spaces allowed); the error names what is wrong.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == part)
                .ok_or_else(|| {
                    format!("{part:?} is not a scope; use read, write, admin or route")
                })?;
            scopes.push(scope);
        }
        if scopes.is_empty() {
            return Err("no scope given; use one or more of read, write, admin, route".into());
        }
        Ok(Scopes::of(&scopes))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::as_str)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// An API token as stored: only its SHA-256, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (`tok-…`), for listing, revoking and the audit log.
    pub id: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub tenant_id: String,
    /// Where the token came from or what it is for (`bootstrap-env`, `ci`).
    pub label: String,
    pub scopes: Scopes,
    pub created_at: i64,
    /// Unix seconds after which the token is refused; `None` never expires.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    /// Whether the token authenticates at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// One write made through the API, and by which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the store, increasing.
    pub id: i64,
    pub tenant_id: String,
    /// The token that made the call (`tok-…`).
    pub token_id: String,
    /// The call, such as `ApplyWorkload`.
    pub action: String,
    /// What it was about: a workload, run, tenant or token id.
    pub target: String,
    /// `ok`, or the reason it was refused.
    pub outcome: String,
    /// Unix milliseconds.
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_imply_what_they_should_and_round_trip() {
        let write = Scopes::parse("write").unwrap();
        assert!(write.allows(Scope::Read) && write.allows(Scope::Write));
        assert!(!write.allows(Scope::Admin) && !write.allows(Scope::Route));
        let admin = Scopes::parse("admin").unwrap();
        assert!(admin.allows(Scope::Write) && !admin.allows(Scope::Route));
        let route = Scopes::parse("route").unwrap();
        assert!(route.allows(Scope::Route) && !route.allows(Scope::Read));
        assert_eq!(
            Scopes::parse(" route , read").unwrap().to_string(),
            "read,route"
        );
        assert!(Scopes::parse("root")
            .unwrap_err()
            .contains("\"root\" is not a scope"));
        assert!(Scopes::parse("").is_err());
    }
}
