//! Sign-in through OAuth2/OIDC providers over HTTP:
//! `GET /auth/oauth/{provider}/start[?org=ORG]` sends the browser to the
//! provider (302) and binds the login to it with the `hc_oauth_state`
//! cookie; `GET /auth/oauth/{provider}/callback?code=…&state=…` finishes it
//! and answers with a token pair as `/auth/token` does, plus the org, role
//! and user it is for. The flow itself lives in `honeycell_control::OAuth`.

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use honeycell_control::OAuth;
use honeycell_types::{ErrorClass, OrgId};
use serde::Deserialize;
use serde_json::json;

use crate::ApiState;
use crate::error::ApiError;

/// The cookie holding the state of a login in progress.
pub const STATE_COOKIE: &str = "hc_oauth_state";

#[derive(Deserialize)]
pub struct StartQuery {
    org: Option<String>,
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn oauth(state: &ApiState) -> Result<&OAuth, ApiError> {
    state.oauth.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorClass::NotFound,
            "oauth_disabled",
            "sign-in through OAuth providers is not configured ([oauth.providers.<name>])",
        )
    })
}

fn cookie(path: &str, value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn state_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == STATE_COOKIE)
        .map(|(_, value)| value)
}

/// `GET /auth/oauth/{provider}/start[?org=ORG]`.
pub async fn start(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Path(provider): Path<String>,
    Query(q): Query<StartQuery>,
) -> Result<Response, ApiError> {
    let oauth = oauth(&state)?;
    if let Some(wait) = state.auth.blocked(Some(addr.ip())) {
        return Err(honeycell_auth::Error::TooManyFailures {
            retry_after_secs: wait,
        }
        .into());
    }
    let org = q
        .org
        .map(OrgId::new)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_org", format!("org: {e}")))?;
    let started = oauth.start(&provider, org, Some(addr.ip())).await?;
    let location = HeaderValue::from_str(&started.authorize_url).map_err(|_| {
        ApiError::new(
            ErrorClass::Internal,
            "internal",
            "the provider's authorization URL is not a valid header",
        )
    })?;
    let mut resp = StatusCode::FOUND.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::SET_COOKIE,
        cookie(
            &format!("/auth/oauth/{provider}"),
            &started.state,
            oauth.login_ttl().as_secs(),
            oauth.secure_cookie(),
        ),
    );
    Ok(resp)
}

/// `GET /auth/oauth/{provider}/callback?code=…&state=…`.
pub async fn callback(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let oauth = oauth(&state)?;
    let peer = Some(addr.ip());
    if let Some(wait) = state.auth.blocked(peer) {
        return Err(honeycell_auth::Error::TooManyFailures {
            retry_after_secs: wait,
        }
        .into());
    }
    if let Some(error) = q.error {
        return Err(ApiError::new(
            ErrorClass::Unauthenticated,
            "provider_refused",
            format!(
                "{provider} did not sign you in: {error}{}",
                q.error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ));
    }
    let (Some(code), Some(st)) = (q.code, q.state) else {
        return Err(ApiError::bad_request(
            "invalid_callback",
            "the callback needs code and state query parameters (as the provider sends them)",
        ));
    };
    match oauth
        .finish(&provider, &code, &st, state_cookie(&headers))
        .await
    {
        Ok(signed) => {
            let mut body = serde_json::to_value(&signed.tokens).unwrap_or_else(|_| json!({}));
            body["org"] = json!(signed.org.as_str());
            body["role"] = json!(signed.role.as_str());
            body["provider"] = json!(signed.provider);
            body["user"] = json!({ "id": signed.user.id, "email": signed.user.email });
            let mut resp = Json(body).into_response();
            let headers = resp.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::SET_COOKIE,
                cookie(
                    &format!("/auth/oauth/{provider}"),
                    "",
                    0,
                    oauth.secure_cookie(),
                ),
            );
            Ok(resp)
        }
        Err(e) => {
            // Forged or replayed callbacks and bad ID tokens count against
            // the source address, like failed API keys.
            if let honeycell_control::Error::Login { code, .. } = &e
                && matches!(
                    *code,
                    "state_mismatch"
                        | "unknown_state"
                        | "invalid_id_token"
                        | "code_exchange_failed"
                )
            {
                state.auth.failed(peer);
            }
            tracing::info!(%provider, error = %e, "sign-in refused");
            Err(e.into())
        }
    }
}
