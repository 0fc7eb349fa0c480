//! GraphQL administration of an org's members: `members`, `addMember`,
//! `setMemberRole`, `removeMember` (`users:read` / `users:write`). A user is
//! one person across orgs (identified by e-mail, later also by OAuth
//! identities); a membership gives them a role in the caller's org only.
//! The last admin member of an org cannot be removed or demoted. Changes
//! are audited.

use async_graphql::{Context, Object, SimpleObject};
use honeycell_auth::{Action, Op, Resource, Role, TenantContext};
use honeycell_control::{Membership, User};
use honeycell_types::ErrorClass;

use crate::ApiState;
use crate::error::ApiError;
use crate::graphql::authorized;
use crate::graphql_keys::RoleGql;

const MAX_EMAIL: usize = 254;

/// A member of the caller's org.
#[derive(SimpleObject)]
pub struct Member {
    user_id: String,
    email: String,
    role: String,
}

fn allowed<'a>(
    ctx: &'a Context<'_>,
    op: Op,
) -> async_graphql::Result<(&'a TenantContext, &'a ApiState)> {
    authorized(ctx, Action::new(Resource::Users, op))
}

fn audit(state: &ApiState, ctx: &TenantContext, action: &str, user_id: &str, detail: String) {
    let resource = format!("user/{user_id}");
    state.record(
        &ctx.org,
        &ctx.subject,
        action,
        &resource,
        "ok",
        Some(&detail),
    );
}

fn not_member(user_id: &str) -> ApiError {
    ApiError::new(
        ErrorClass::NotFound,
        "member_not_found",
        format!("user {user_id:?} is not a member of your org; list them with members"),
    )
}

fn check_email(email: &str) -> Result<String, ApiError> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= MAX_EMAIL
        && !e.chars().any(char::is_whitespace)
        && e.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if ok {
        Ok(e)
    } else {
        Err(ApiError::bad_request(
            "invalid_email",
            format!("{email:?} is not an e-mail address such as ada@example.com"),
        ))
    }
}

async fn member_of(state: &ApiState, m: &Membership) -> Result<Member, ApiError> {
    let email = state
        .control
        .user(&m.user_id)
        .await?
        .map(|u| u.email)
        .unwrap_or_default();
    Ok(Member {
        user_id: m.user_id.clone(),
        email,
        role: m.role.as_str().to_owned(),
    })
}

/// Refuses a change that would leave the org without an admin member.
async fn keep_an_admin(
    state: &ApiState,
    tenant: &TenantContext,
    user_id: &str,
    new_role: Option<Role>,
) -> Result<Membership, ApiError> {
    let members = state.control.members_of_org(&tenant.org).await?;
    let current = members
        .iter()
        .find(|m| m.user_id == user_id)
        .cloned()
        .ok_or_else(|| not_member(user_id))?;
    let admins = members.iter().filter(|m| m.role == Role::Admin).count();
    if current.role == Role::Admin && new_role != Some(Role::Admin) && admins == 1 {
        return Err(ApiError::new(
            ErrorClass::Conflict,
            "last_admin",
            "this is the org's last admin member; make another member admin first",
        ));
    }
    Ok(current)
}

#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The caller's org's members, by user id.
    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Member>> {
        let (tenant, state) = allowed(ctx, Op::Read)?;
        let mut out = Vec::new();
        for m in state
            .control
            .members_of_org(&tenant.org)
            .await
            .map_err(ApiError::from)?
        {
            out.push(member_of(state, &m).await?);
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct UserMutation;

#[Object]
impl UserMutation {
    /// Gives the user with `email` (created if new) `role` in the caller's
    /// org.
    async fn add_member(
        &self,
        ctx: &Context<'_>,
        email: String,
        role: RoleGql,
    ) -> async_graphql::Result<Member> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        let email = check_email(&email)?;
        let user = match state
            .control
            .user_by_email(&email)
            .await
            .map_err(ApiError::from)?
        {
            Some(u) => u,
            None => {
                let u = User::new(&email);
                state
                    .control
                    .create_user(&u)
                    .await
                    .map_err(ApiError::from)?;
                u
            }
        };
        let role = Role::from(role);
        state
            .control
            .set_membership(&tenant.org, &user.id, role)
            .await
            .map_err(ApiError::from)?;
        audit(
            state,
            tenant,
            "user.add",
            &user.id,
            format!("{email} as {role}"),
        );
        Ok(Member {
            user_id: user.id,
            email,
            role: role.as_str().to_owned(),
        })
    }

    /// Changes a member's role.
    async fn set_member_role(
        &self,
        ctx: &Context<'_>,
        user_id: String,
        role: RoleGql,
    ) -> async_graphql::Result<Member> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        let role = Role::from(role);
        let current = keep_an_admin(state, tenant, &user_id, Some(role)).await?;
        state
            .control
            .set_membership(&tenant.org, &user_id, role)
            .await
            .map_err(ApiError::from)?;
        audit(
            state,
            tenant,
            "user.role",
            &user_id,
            format!("{} -> {role}", current.role),
        );
        let m = Membership { role, ..current };
        Ok(member_of(state, &m).await?)
    }

    /// Removes a member from the caller's org (the user stays, for their
    /// other orgs).
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        user_id: String,
    ) -> async_graphql::Result<bool> {
        let (tenant, state) = allowed(ctx, Op::Write)?;
        keep_an_admin(state, tenant, &user_id, None).await?;
        let removed = state
            .control
            .remove_membership(&tenant.org, &user_id)
            .await
            .map_err(ApiError::from)?;
        if !removed {
            return Err(not_member(&user_id).into());
        }
        audit(state, tenant, "user.remove", &user_id, String::new());
        Ok(true)
    }
}
