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

/// What an operation touches (roadmap 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Entity events: ingest and queries on every protocol.
    Events,
    /// Observer rules.
    Rules,
    /// The actions rules trigger (webhooks, Slack, e-mail), and executing them.
    Actions,
    /// Action delivery logs.
    Logs,
    /// Org settings.
    Settings,
    ApiKeys,
    Users,
    /// The org's audit log.
    Audit,
}

impl Resource {
    pub const ALL: [Resource; 8] = [
        Resource::Events,
        Resource::Rules,
        Resource::Actions,
        Resource::Logs,
        Resource::Settings,
        Resource::ApiKeys,
        Resource::Users,
        Resource::Audit,
    ];
}

/// Reading, or changing (create, update, delete, execute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
}

/// An operation a request wants to perform, checked with [`Role::permits`]
/// (and an API key's or token's scopes) in one place, `authorize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Action {
    pub resource: Resource,
    pub op: Op,
}

/// Permission names, in `Resource` order, read then write.
const PERMISSIONS: [&str; 16] = [
    "events:read",
    "events:write",
    "rules:read",
    "rules:write",
    "actions:read",
    "actions:write",
    "logs:read",
    "logs:write",
    "settings:read",
    "settings:write",
    "apikeys:read",
    "apikeys:write",
    "users:read",
    "users:write",
    "audit:read",
    "audit:write",
];

impl Action {
    pub const READ_EVENTS: Action = Action::new(Resource::Events, Op::Read);
    pub const WRITE_EVENTS: Action = Action::new(Resource::Events, Op::Write);

    pub const fn new(resource: Resource, op: Op) -> Action {
        Action { resource, op }
    }

    pub const fn read(resource: Resource) -> Action {
        Action::new(resource, Op::Read)
    }

    pub const fn write(resource: Resource) -> Action {
        Action::new(resource, Op::Write)
    }

    /// Every action, in permission order.
    pub fn all() -> impl Iterator<Item = Action> {
        Resource::ALL
            .into_iter()
            .flat_map(|r| [Action::read(r), Action::write(r)])
    }

    fn index(self) -> usize {
        self.resource as usize * 2 + self.op as usize
    }

    /// The permission's name (`resource:read|write`), as in 403 bodies and
    /// scopes.
    pub fn permission(self) -> &'static str {
        PERMISSIONS[self.index()]
    }

    pub fn from_permission(s: &str) -> Option<Action> {
        Action::all().find(|a| a.permission() == s)
    }
}

/// A set of actions (an API key's or token's scopes), as a bit set: cheap to
/// copy into every request's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActionSet(u16);

impl ActionSet {
    pub const ALL: ActionSet = ActionSet(u16::MAX);

    pub fn contains(self, a: Action) -> bool {
        self.0 & (1 << a.index()) != 0
    }

    /// Parses scope names; an empty list means every action.
    pub fn from_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<ActionSet, Error> {
        if scopes.is_empty() {
            return Ok(ActionSet::ALL);
        }
        let mut bits = 0u16;
        for s in scopes {
            let a = Action::from_permission(s.as_ref()).ok_or_else(|| Error::UnknownScope {
                got: s.as_ref().to_owned(),
            })?;
            bits |= 1 << a.index();
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
    /// role-to-permission policy lives (roadmap 5.3):
    ///
    /// | | events | rules | actions | logs | settings | apikeys | users | audit |
    /// |---|---|---|---|---|---|---|---|---|
    /// | admin | rw | rw | rw | rw | rw | rw | rw | rw |
    /// | operator | rw | rw | rw (execute) | r | r | – | – | – |
    /// | viewer | r | r | r | r | – | – | – | – |
    pub fn permits(self, action: Action) -> bool {
        use Resource::*;
        match self {
            Role::Admin => true,
            Role::Operator => match action.resource {
                Events | Rules | Actions => true,
                Logs | Settings => action.op == Op::Read,
                ApiKeys | Users | Audit => false,
            },
            Role::Viewer => {
                action.op == Op::Read && matches!(action.resource, Events | Rules | Actions | Logs)
            }
        }
    }
}

/// Exact, lower-case names only: `ADMIN` or `Admin` is refused rather than
/// read as `admin`, so that every spelling of a role in a claim, a record
/// or a flag is the one that [`Role::as_str`] writes (GraphQL's enum values,
/// `ADMIN`, are a separate type in `api`).
impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
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
