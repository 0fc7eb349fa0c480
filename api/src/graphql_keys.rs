//! GraphQL administration of API keys: `apiKeys`, `createApiKey`,
//! `rotateApiKey`, `revokeApiKey`. Needs `apikeys:read` / `apikeys:write`
//! (admins), always
//! within the caller's org; the key text is returned once, at creation or
//! rotation, and only its hash is stored. Every change goes to the audit
//! log (refusals too, through the GraphQL handler).

use async_graphql::{Context, Enum, Object, SimpleObject};
use honeycell_auth::{Action, ActionSet, Op, Resource, Role, TenantContext};
use honeycell_control::{ApiKey as KeyRecord, generate_api_key};
use honeycell_types::{ErrorClass, now_us};

use crate::ApiState;
use crate::error::ApiError;
use crate::graphql::authorized;
use crate::json::rfc3339_us;

const MAX_NAME: usize = 100;
const DEFAULT_EXPIRY: &str = "90d";
const MAX_EXPIRY_DAYS: u64 = 3_650;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "Role")]
pub enum RoleGql {
    Admin,
    Operator,
    Viewer,
}

impl From<RoleGql> for Role {
    fn from(r: RoleGql) -> Role {
        match r {
            RoleGql::Admin => Role::Admin,
            RoleGql::Operator => Role::Operator,
            RoleGql::Viewer => Role::Viewer,
        }
    }
}

/// An API key as its org's admins see it (never the secret).
#[derive(SimpleObject)]
pub struct ApiKey {
    id: String,
    name: String,
    role: String,
    /// Empty: everything the role permits.
    scopes: Vec<String>,
    created_by: String,
    created_at: String,
    expires_at: String,
    revoked_at: Option<String>,
    /// Updated in batches every few seconds, not on every request.
    last_used_at: Option<String>,
}

impl From<&KeyRecord> for ApiKey {
    fn from(k: &KeyRecord) -> Self {
        ApiKey {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.as_str().to_owned(),
            scopes: k.scopes.clone(),
            created_by: k.created_by.clone(),
            created_at: rfc3339_us(k.created_at_us),
            expires_at: rfc3339_us(k.expires_at_us),
            revoked_at: k.revoked_at_us.map(rfc3339_us),
            last_used_at: k.last_used_us.map(rfc3339_us),
        }
    }
}

/// A new key: `key` is shown this once.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// `hck_<id>_<secret>`; send it as `Authorization: Bearer <key>`.
    key: String,
    api_key: ApiKey,
}

fn audit(state: &ApiState, ctx: &TenantContext, action: &str, resource: String, result: &str) {
    state.record(&ctx.org, &ctx.subject, action, &resource, result, None);
}

/// The caller, if it may `op` API keys.
fn allowed<'a>(
    ctx: &'a Context<'_>,
    op: Op,
) -> async_graphql::Result<(&'a TenantContext, &'a ApiState)> {
    authorized(ctx, Action::new(Resource::ApiKeys, op))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorClass::NotFound,
        "api_key_not_found",
        format!("no live API key {id:?} in your org; list them with apiKeys"),
    )
}

/// Makes, stores and returns a key for `tenant`'s org.
async fn create(
    state: &ApiState,
    tenant: &TenantContext,
    name: String,
    role: Role,
    scopes: Vec<String>,
    ttl: std::time::Duration,
) -> async_graphql::Result<CreatedApiKey> {
    let new = generate_api_key();
    let now = now_us();
    let record = KeyRecord {
        id: new.id,
        org: tenant.org.clone(),
        name,
        secret_sha256: new.secret_sha256,
        role,
        scopes,
        created_by: tenant.subject.clone(),
        created_at_us: now,
        expires_at_us: now.saturating_add(ttl.as_micros().min(i64::MAX as u128) as i64),
        revoked_at_us: None,
        last_used_us: None,
    };
    state
        .control
        .insert_api_key(&record)
        .await
        .map_err(ApiError::from)?;
    Ok(CreatedApiKey {
        key: new.plaintext,
        api_key: ApiKey::from(&record),
    })
}

#[derive(Default)]
pub struct ApiKeyQuery;

#[Object]
impl ApiKeyQuery {
    /// The caller's org's API keys (live, expired and revoked).
    async fn api_keys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiKey>> {
        let (tenant, state) = allowed(ctx, Op::Read)?;
        let keys = state
            .control
            .api_keys_of_org(&tenant.org)
            .await
            .map_err(ApiError::from)?;
        Ok(keys.iter().map(ApiKey::from).collect())
    }
}

#[derive(Default)]
pub struct ApiKeyMutation;

#[Object]
impl ApiKeyMutation {
    /// Creates a key. `scopes` narrow the role (`<resource>:read|write` for
    /// events, rules, actions, logs, settings, apikeys, users, audit);
    /// `expiresIn` is a duration such as
    /// `90d` (the default) or `12h`.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default_with = "RoleGql::Operator")] role: RoleGql,
        #[graphql(default)] scopes: Vec<String>,
        expires_in: Option<String>,
    ) -> async_graphql::Result<CreatedApiKey> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(ApiError::bad_request(
                "invalid_name",
                format!("name must be 1 to {MAX_NAME} characters"),
            )
            .into());
        }
        ActionSet::from_scopes(&scopes).map_err(ApiError::from)?;
        let text = expires_in.as_deref().unwrap_or(DEFAULT_EXPIRY);
        let ttl = humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(
                "invalid_expiry",
                format!("expiresIn {text:?}: {e}; use a duration such as 90d or 12h"),
            )
        })?;
        if ttl.is_zero() || ttl.as_secs() > MAX_EXPIRY_DAYS * 86_400 {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                format!("expiresIn must be between 1s and {MAX_EXPIRY_DAYS} days"),
            )
            .into());
        }
        let created = create(state, tenant, name, role.into(), scopes, ttl).await?;
        audit(
            state,
            tenant,
            "apikey.create",
            format!("apikey/{}", created.api_key.id),
            "ok",
        );
        Ok(created)
    }

    /// Revokes a key at once (every cell refuses it within a second).
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<ApiKey> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        let revoked = state
            .control
            .revoke_api_key(&tenant.org, &id, now_us())
            .await
            .map_err(ApiError::from)?;
        if !revoked {
            return Err(not_found(&id).into());
        }
        state.auth.evict(&id);
        audit(state, tenant, "apikey.revoke", format!("apikey/{id}"), "ok");
        let key = state
            .control
            .api_key(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| not_found(&id))?;
        Ok(ApiKey::from(&key))
    }

    /// Replaces a key with a new one of the same name, role, scopes and
    /// lifetime, and revokes the old one.
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<CreatedApiKey> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        let old = state
            .control
            .api_key(&id)
            .await
            .map_err(ApiError::from)?
            .filter(|k| k.org == tenant.org && k.revoked_at_us.is_none())
            .ok_or_else(|| not_found(&id))?;
        let lifetime = (old.expires_at_us - old.created_at_us).max(1_000_000) as u64;
        let created = create(
            state,
            tenant,
            old.name.clone(),
            old.role,
            old.scopes.clone(),
            std::time::Duration::from_micros(lifetime),
        )
        .await?;
        state
            .control
            .revoke_api_key(&tenant.org, &id, now_us())
            .await
            .map_err(ApiError::from)?;
        state.auth.evict(&id);
        audit(
            state,
            tenant,
            "apikey.rotate",
            format!("apikey/{id} -> apikey/{}", created.api_key.id),
            "ok",
        );
        Ok(created)
    }
}
