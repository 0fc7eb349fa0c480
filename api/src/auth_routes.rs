//! Token endpoints: `POST /auth/token` (an API key in, an access token and
//! a refresh token out), `POST /auth/refresh` (rotation with reuse
//! detection), `POST /auth/logout`, and `GET /.well-known/jwks.json` (the
//! public halves of the server's signing keys). Every outcome that matters
//! is audited: logins, refreshes, reuse, logouts.

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use honeycell_auth::Credential;
use honeycell_control::TokenService;
use honeycell_types::{ErrorClass, OrgId};
use serde::Deserialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::http::Tenant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

fn tokens(state: &ApiState) -> Result<&TokenService, ApiError> {
    state.auth.tokens().ok_or_else(|| {
        ApiError::new(
            ErrorClass::NotFound,
            "tokens_disabled",
            "this server does not issue tokens",
        )
    })
}

fn audit(state: &ApiState, org: &OrgId, actor: &str, action: &str, resource: String, result: &str) {
    state.record(org, actor, action, &resource, result, None);
}

/// `POST /auth/token` with `Authorization: Bearer hck_…`: a token pair for
/// the key's org, role and scopes.
pub async fn token(
    State(state): State<ApiState>,
    Tenant(ctx): Tenant,
) -> Result<Response, ApiError> {
    let tokens = tokens(&state)?;
    let Credential::ApiKey { key_id, .. } = &ctx.credential else {
        return Err(ApiError::bad_request(
            "api_key_required",
            "POST /auth/token exchanges an API key (Authorization: Bearer hck_…); refresh access tokens with POST /auth/refresh",
        ));
    };
    let pair = tokens.issue(&ctx).await?;
    audit(
        &state,
        &ctx.org,
        &ctx.subject,
        "auth.login",
        format!("apikey/{key_id}"),
        "ok",
    );
    Ok(Json(pair).into_response())
}

/// How a refresh family appears in the audit log (a prefix of its id).
fn family_ref(family: &str) -> String {
    format!("refresh/{}", &family[..family.len().min(16)])
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected a JSON object {{\"refresh_token\": \"hcr_…\"}}: {e}"),
        )
    })
}

/// `POST /auth/refresh` `{"refresh_token": "hcr_…"}`: a new pair; the
/// presented token is retired.
pub async fn refresh(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bytes = crate::http::read_body(&state, body).await?;
    let tokens = tokens(&state)?;
    let peer = Some(addr.ip());
    if let Some(wait) = state.auth.blocked(peer) {
        return Err(honeycell_auth::Error::TooManyFailures {
            retry_after_secs: wait,
        }
        .into());
    }
    let RefreshBody { refresh_token } = self::body(&bytes)?;
    match tokens.refresh(&refresh_token).await {
        Ok((pair, old)) => {
            audit(
                &state,
                &old.org,
                &old.subject,
                "auth.refresh",
                family_ref(&old.family),
                "ok",
            );
            Ok(Json(pair).into_response())
        }
        Err(honeycell_control::Error::RefreshReuse {
            family,
            org,
            subject,
        }) => {
            // The login's access tokens are refused from now on: at once on
            // this cell, within the session cache's second elsewhere.
            state.auth.evict_session(&family);
            audit(
                &state,
                &org,
                &subject,
                "auth.refresh_reuse",
                family_ref(&family),
                "denied",
            );
            Err(ApiError::new(
                ErrorClass::Unauthenticated,
                "refresh_token_reused",
                "this refresh token was already used; every token of its login has been revoked, sign in again",
            ))
        }
        Err(e) => {
            if let honeycell_control::Error::Auth(a) = &e
                && a.suggests_guessing()
            {
                state.auth.failed(peer);
            }
            Err(e.into())
        }
    }
}

/// `POST /auth/logout` `{"refresh_token": "hcr_…"}`: revokes the token and
/// every token of its login, access tokens included (refused with
/// `session_revoked` within the session cache's second). 204 whether or not
/// the token was known.
pub async fn logout(
    State(state): State<ApiState>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bytes = crate::http::read_body(&state, body).await?;
    let tokens = tokens(&state)?;
    let RefreshBody { refresh_token } = self::body(&bytes)?;
    if let Some(t) = tokens.logout(&refresh_token).await? {
        state.auth.evict_session(&t.family);
        audit(
            &state,
            &t.org,
            &t.subject,
            "auth.logout",
            family_ref(&t.family),
            "ok",
        );
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /.well-known/jwks.json`: the server's public signing keys.
pub async fn jwks(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let tokens = tokens(&state)?;
    let set = tokens.jwks().await?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(set),
    )
        .into_response())
}
