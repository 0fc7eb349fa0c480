use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// What a credential may do inside its org. Carried in the `role` claim.
///
/// The enum is deliberately exhaustive: adding a role must make the compiler
/// point at every `match` that decides permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including managing the org itself (keys, users, tokens).
    Admin,
    /// Day-to-day work: sending events and managing observer rules.
    Operator,
    /// Read-only access to events and aggregates.
    Viewer,
}

/// An operation a request wants to perform, checked with [`Role::permits`].
/// Resource-level RBAC will extend this (or take a resource next to it); the
/// call sites stay `role.permits(action)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Query events and aggregates (HTTP, GraphQL, Flight `DoGet`).
    ReadEvents,
    /// Ingest events (`POST /v1/events`, Flight `DoPut`).
    WriteEvents,
    /// Create, change or delete observer rules.
    ManageRules,
    /// Org administration: users, API keys, tokens, quotas.
    Administer,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::ReadEvents,
        Action::WriteEvents,
        Action::ManageRules,
        Action::Administer,
    ];

    /// The permission's name, as in 403 bodies and API-key scopes.
    pub fn permission(self) -> &'static str {
        match self {
            Action::ReadEvents => "events:read",
            Action::WriteEvents => "events:write",
            Action::ManageRules => "rules:manage",
            Action::Administer => "org:administer",
        }
    }

    pub fn from_permission(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.permission() == s)
    }
}

/// A set of actions (an API key's scopes), as a bit set: cheap to copy into
/// every request's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    pub const ALL: ActionSet = ActionSet(0b1111);

    fn bit(a: Action) -> u8 {
        1 << (a as u8)
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & Self::bit(a) != 0
    }

    /// Parses scope names; an empty list means every action.
    pub fn from_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<ActionSet, Error> {
        if scopes.is_empty() {
            return Ok(ActionSet::ALL);
        }
        let mut bits = 0;
        for s in scopes {
            let a = Action::from_permission(s.as_ref()).ok_or_else(|| Error::UnknownScope {
                got: s.as_ref().to_owned(),
            })?;
            bits |= Self::bit(a);
        }
        Ok(ActionSet(bits))
    }
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];
    /// The accepted spellings, for error messages and CLI help.
    pub const ALLOWED: &'static str = "admin, operator, viewer";

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may perform `action`. The single place where the
    /// role-to-permission policy lives.
    pub fn permits(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => !matches!(action, Action::Administer),
            Role::Viewer => matches!(action, Action::ReadEvents),
        }
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownRole { got: s.to_owned() })
    }
}

/// Serialised as its lower-case name, the same text as the `role` claim.
impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
