//! GraphQL `auditLog`: the caller's org's audit entries, newest first, with
//! filters and backwards paging by sequence number. Needs `audit:read`
//! (admins); the org
//! comes from the credential, so no argument can name another org.

use async_graphql::{Context, Object, SimpleObject};
use honeycell_auth::{Action, Resource};
use honeycell_control::{AuditEntry as Entry, AuditQuery};

use crate::error::ApiError;
use crate::graphql::authorized;
use crate::json::rfc3339_us;

const DEFAULT_PAGE: i32 = 50;
const MAX_PAGE: i32 = 1_000;

/// One audit entry.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// 1, 2, 3, … per org, without gaps.
    seq: u64,
    /// RFC 3339, microseconds.
    at: String,
    actor: String,
    action: String,
    resource: String,
    result: String,
    trace_id: Option<String>,
    detail: Option<String>,
    /// This entry's link in the org's hash chain (hex SHA-256).
    hash: String,
}

impl From<Entry> for AuditEntry {
    fn from(e: Entry) -> Self {
        AuditEntry {
            seq: e.seq,
            at: rfc3339_us(e.draft.at_us),
            actor: e.draft.actor,
            action: e.draft.action,
            resource: e.draft.resource,
            result: e.draft.result,
            trace_id: e.draft.trace_id,
            detail: e.draft.detail,
            hash: hex::encode(e.hash),
        }
    }
}

/// A page of entries; pass `nextBefore` as `before` for older ones.
#[derive(SimpleObject)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    next_before: Option<u64>,
}

#[derive(Default)]
pub struct AuditQueryRoot;

#[Object]
impl AuditQueryRoot {
    /// The audit log of the caller's org, newest first.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "first.unwrap_or(DEFAULT_PAGE).max(1) as usize + child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        action: Option<String>,
        actor: Option<String>,
        since: Option<String>,
        until: Option<String>,
        before: Option<u64>,
        first: Option<i32>,
    ) -> async_graphql::Result<AuditPage> {
        let (tenant, state) = authorized(ctx, Action::read(Resource::Audit))?;
        let first = first.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("first must be 1 to {MAX_PAGE}"),
            )
            .into());
        }
        let mut q = AuditQuery::new(tenant.org.clone(), first as usize);
        q.action = action;
        q.actor = actor;
        let time = |name: &'static str, s: &str| {
            honeycell_cell::query::parse_time(s).map_err(|reason| {
                ApiError::bad_request("invalid_time", format!("{name}: {reason}"))
            })
        };
        q.since_us = since.as_deref().map(|s| time("since", s)).transpose()?;
        q.until_us = until.as_deref().map(|s| time("until", s)).transpose()?;
        q.before_seq = before;
        let entries = state.control.audit_page(&q).await.map_err(ApiError::from)?;
        let next_before = (entries.len() == first as usize)
            .then(|| entries.last().map(|e| e.seq))
            .flatten()
            .filter(|&s| s > 1);
        Ok(AuditPage {
            entries: entries.into_iter().map(AuditEntry::from).collect(),
            next_before,
        })
    }
}
