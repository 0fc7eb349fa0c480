//! Sign-in through OAuth2 / OpenID Connect providers: the authorization-code
//! flow with PKCE, `state` and `nonce`, ending in a Honeycell token pair.
//!
//! Providers. Generic OIDC (discovery document, ID token checked against
//! the provider's JWKS: signature, issuer, audience, expiry, nonce) with
//! presets for Google, Keycloak and Azure AD, and GitHub, which speaks plain
//! OAuth2 (no ID token: the user comes from its REST API). Discovery
//! documents are cached per cell for ten minutes and fetched again early
//! when an ID token is signed by a key the cached JWKS lacks (key rotation
//! at the provider).
//!
//! The flow. [`OAuth::start`] makes a random `state`, a PKCE verifier and a
//! nonce, keeps them in the control store (only the state's SHA-256 is the
//! key) and answers with the provider's authorization URL; the caller also
//! sets the state in a cookie, binding the login to the browser that
//! started it. [`OAuth::finish`] takes the stored login exactly once (a
//! replayed callback finds nothing), exchanges the code with the PKCE
//! verifier, checks the ID token, maps the identity to a user and one of
//! its org memberships, and issues tokens like `/auth/token` does.
//!
//! Identities. `(provider, subject)` is linked to a user on first sign-in:
//! to the user with the same e-mail address when the provider vouches for
//! it (`email_verified`, GitHub's verified primary address) and
//! `link_verified_email` is on, so that an admin can add a member by e-mail
//! and the person signs in with their company account; otherwise, with
//! `default_org` and `default_role` set, a new user is made a member there;
//! otherwise the sign-in is refused.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_auth::{ActionSet, Credential, Quota, Role, TenantContext};
use honeycell_types::{ErrorClass, OrgId, now_us};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse as _,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::budget::Budgets;
use crate::error::{Error, Result};
use crate::model::{AuditDraft, OAuthLogin, User};
use crate::{AuditSink, Store, TokenPair, TokenService};

/// How long a cached discovery document (and its JWKS) is trusted.
const DISCOVERY_TTL: Duration = Duration::from_secs(600);
/// The earliest a discovery document is fetched again after a signature
/// failure (failures must not make us hammer the provider).
const REDISCOVER_AFTER: Duration = Duration::from_secs(1);
/// Calls to providers give up after this.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// `[oauth]`: sign-in through OAuth2/OIDC providers.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// This server's base URL as browsers reach it; a provider's redirect
    /// URI is `<public_url>/auth/oauth/<name>/callback` unless it sets
    /// `redirect_url`.
    pub public_url: Option<String>,
    /// How long a user has to finish signing in at the provider.
    pub login_timeout: String,
    /// Set the `Secure` attribute on the login cookie (on by default; turn
    /// off only for plain-HTTP development).
    pub secure_cookie: bool,
    /// Sign-ins one source address may start per minute (one budget per
    /// process, whichever cell the requests land on); each start stores a
    /// login until it is finished or expires.
    pub max_starts_per_minute: u32,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            login_timeout: "10m".into(),
            secure_cookie: true,
            max_starts_per_minute: 30,
            providers: BTreeMap::new(),
        }
    }
}

/// Which kind of provider: sets defaults for the issuer, URLs and scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect provider: `issuer` is required.
    Oidc,
    /// Google: issuer `https://accounts.google.com`.
    Google,
    /// Keycloak: `issuer` is the realm URL, `https://host/realms/<realm>`.
    Keycloak,
    /// Azure AD (Microsoft Entra ID): `tenant` (a tenant id or domain) is
    /// required; the issuer is `https://login.microsoftonline.com/<tenant>/v2.0`.
    Azure,
    /// GitHub (OAuth2, no ID token): the user comes from its REST API.
    Github,
}

/// `[oauth.providers.<name>]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub client_id: String,
    /// The client secret; prefer `client_secret_env`.
    pub client_secret: Option<String>,
    /// The environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// OIDC issuer URL (its `/.well-known/openid-configuration` is read).
    pub issuer: Option<String>,
    /// Azure AD tenant.
    pub tenant: Option<String>,
    /// Scopes to ask for; defaults: `openid email profile` (OIDC),
    /// `read:user user:email` (GitHub).
    pub scopes: Option<Vec<String>>,
    /// Overrides `<public_url>/auth/oauth/<name>/callback`.
    pub redirect_url: Option<String>,
    /// GitHub only (GitHub Enterprise, or tests): the authorize, token and
    /// REST API URLs.
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub api_url: Option<String>,
    /// Unknown users become members of this org with `default_role`;
    /// without both, they are refused.
    pub default_org: Option<String>,
    pub default_role: Option<String>,
    /// Link a first sign-in to the user with the same e-mail address when
    /// the provider says the address is verified.
    #[serde(default = "yes")]
    pub link_verified_email: bool,
}

fn yes() -> bool {
    true
}

impl OAuthConfig {
    /// Checks every provider's settings (secrets from the environment are
    /// read by [`OAuth::new`]).
    pub fn validate(&self) -> Result<()> {
        self.login_timeout()?;
        if self.max_starts_per_minute == 0 {
            return Err(Error::Config(
                "oauth.max_starts_per_minute must be at least 1".into(),
            ));
        }
        for (name, p) in &self.providers {
            Provider::new(self, name, p)?;
        }
        Ok(())
    }

    /// The process's budgets of sign-in starts per address
    /// (`max_starts_per_minute`): make them once and give every cell's
    /// [`OAuth`] the same.
    pub fn start_budgets(&self) -> Budgets<IpAddr> {
        Budgets::new(self.max_starts_per_minute, Duration::from_secs(60))
    }

    pub fn login_timeout(&self) -> Result<Duration> {
        humantime::parse_duration(&self.login_timeout).map_err(|e| {
            Error::Config(format!(
                "oauth.login_timeout {:?}: {e} (use e.g. \"10m\")",
                self.login_timeout
            ))
        })
    }
}

/// A provider ready to use: its settings checked and resolved.
struct Provider {
    name: String,
    kind: ProviderKind,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    issuer: Option<IssuerUrl>,
    github: Option<GithubUrls>,
    default_member: Option<(OrgId, Role)>,
    link_verified_email: bool,
    discovery: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

#[derive(Clone)]
struct GithubUrls {
    authorize: oauth2::AuthUrl,
    token: oauth2::TokenUrl,
    api: String,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("oauth.providers.{name}: {msg}"))
}

impl Provider {
    fn new(config: &OAuthConfig, name: &str, p: &ProviderConfig) -> Result<Provider> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(name, "a provider name may hold only a-z, 0-9, - and _"));
        }
        if p.client_id.trim().is_empty() {
            return Err(bad(name, "client_id is empty"));
        }
        let client_secret = match (&p.client_secret, &p.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    name,
                    "set client_secret or client_secret_env, not both",
                ));
            }
            (Some(s), None) => Some(ClientSecret::new(s.clone())),
            (None, Some(var)) => Some(ClientSecret::new(std::env::var(var).map_err(|_| {
                bad(
                    name,
                    format!("client_secret_env names {var}, which is not set"),
                )
            })?)),
            (None, None) => None,
        };
        let redirect = match (&p.redirect_url, &config.public_url) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => {
                format!("{}/auth/oauth/{name}/callback", base.trim_end_matches('/'))
            }
            (None, None) => {
                return Err(bad(
                    name,
                    "no redirect URL: set oauth.public_url (or this provider's redirect_url)",
                ));
            }
        };
        let redirect =
            RedirectUrl::new(redirect).map_err(|e| bad(name, format!("redirect URL: {e}")))?;
        let issuer = match (p.kind, &p.issuer, &p.tenant) {
            (ProviderKind::Github, Some(_), _) => {
                return Err(bad(
                    name,
                    "GitHub has no issuer: set authorize_url, token_url and api_url for GitHub Enterprise",
                ));
            }
            (ProviderKind::Github, None, _) => None,
            (ProviderKind::Google, None, _) => Some("https://accounts.google.com".to_owned()),
            (ProviderKind::Azure, None, Some(tenant)) => {
                Some(format!("https://login.microsoftonline.com/{tenant}/v2.0"))
            }
            (ProviderKind::Azure, None, None) => {
                return Err(bad(
                    name,
                    "Azure AD needs tenant (a tenant id or domain; \"common\" cannot be checked)",
                ));
            }
            (_, Some(issuer), _) => Some(issuer.clone()),
            (ProviderKind::Keycloak, None, _) => {
                return Err(bad(
                    name,
                    "Keycloak needs issuer: the realm URL, https://<host>/realms/<realm>",
                ));
            }
            (ProviderKind::Oidc, None, _) => {
                return Err(bad(name, "issuer is required for an OIDC provider"));
            }
        };
        let issuer = issuer
            .map(|i| IssuerUrl::new(i).map_err(|e| bad(name, format!("issuer: {e}"))))
            .transpose()?;
        let github = if p.kind == ProviderKind::Github {
            let url =
                |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.into());
            Some(GithubUrls {
                authorize: oauth2::AuthUrl::new(url(
                    &p.authorize_url,
                    "https://github.com/login/oauth/authorize",
                ))
                .map_err(|e| bad(name, format!("authorize_url: {e}")))?,
                token: oauth2::TokenUrl::new(url(
                    &p.token_url,
                    "https://github.com/login/oauth/access_token",
                ))
                .map_err(|e| bad(name, format!("token_url: {e}")))?,
                api: url(&p.api_url, "https://api.github.com")
                    .trim_end_matches('/')
                    .to_owned(),
            })
        } else {
            if p.authorize_url.is_some() || p.token_url.is_some() || p.api_url.is_some() {
                return Err(bad(
                    name,
                    "authorize_url, token_url and api_url are for GitHub; OIDC providers publish theirs in discovery",
                ));
            }
            None
        };
        if p.kind == ProviderKind::Github && client_secret.is_none() {
            return Err(bad(
                name,
                "GitHub needs client_secret (or client_secret_env)",
            ));
        }
        let default_member = match (&p.default_org, &p.default_role) {
            (Some(org), Some(role)) => Some((
                OrgId::new(org.clone()).map_err(|e| bad(name, format!("default_org: {e}")))?,
                role.parse::<Role>()
                    .map_err(|e| bad(name, format!("default_role: {e}")))?,
            )),
            (None, None) => None,
            _ => {
                return Err(bad(
                    name,
                    "set default_org and default_role together (or neither, to refuse unknown users)",
                ));
            }
        };
        let scopes = p.scopes.clone().unwrap_or_else(|| match p.kind {
            ProviderKind::Github => vec!["read:user".into(), "user:email".into()],
            _ => vec!["openid".into(), "email".into(), "profile".into()],
        });
        Ok(Provider {
            name: name.to_owned(),
            kind: p.kind,
            client_id: ClientId::new(p.client_id.clone()),
            client_secret,
            redirect,
            scopes,
            issuer,
            github,
            default_member,
            link_verified_email: p.link_verified_email,
            discovery: Mutex::new(None),
        })
    }
}

/// An OIDC client as discovery leaves it: authorization and token
/// endpoints from the document (userinfo when it names one).
type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

impl Provider {
    /// This provider's OIDC client over its discovery document.
    fn oidc_client(&self, metadata: CoreProviderMetadata) -> OidcClient {
        CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone())
    }
}

/// Who the provider says signed in.
#[derive(Clone, Debug)]
struct Identity {
    subject: String,
    email: Option<String>,
    email_verified: bool,
}

/// Where to send the browser, and the state to bind to it (a cookie).
#[derive(Clone, Debug)]
pub struct Started {
    pub authorize_url: String,
    pub state: String,
}

/// A finished sign-in.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub tokens: TokenPair,
    pub org: OrgId,
    pub user: User,
    pub role: Role,
    pub provider: String,
}

/// The OAuth2/OIDC sign-in of one cell.
#[derive(Clone)]
pub struct OAuth {
    inner: Arc<Inner>,
}

struct Inner {
    providers: BTreeMap<String, Provider>,
    http: reqwest::Client,
    store: Store,
    tokens: TokenService,
    audit: AuditSink,
    login_ttl: Duration,
    secure_cookie: bool,
    /// Sign-ins started per source address (a token bucket each), shared
    /// by every cell's `OAuth`.
    starts: Arc<Budgets<IpAddr>>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field(
                "providers",
                &self.inner.providers.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn refused(class: ErrorClass, code: &'static str, message: impl Into<String>) -> Error {
    Error::Login {
        class,
        code,
        message: message.into(),
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

impl OAuth {
    /// `starts`: the process's budgets of sign-in starts, made once by
    /// [`OAuthConfig::start_budgets`] and shared by every cell.
    pub fn new(
        config: &OAuthConfig,
        store: Store,
        tokens: TokenService,
        audit: AuditSink,
        starts: Arc<Budgets<IpAddr>>,
    ) -> Result<OAuth> {
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            providers.insert(name.clone(), Provider::new(config, name, p)?);
        }
        // No redirects: a provider answering with one is misconfigured, and
        // following them would let a discovery document point us anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .user_agent(concat!("honeycell/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("oauth: HTTP client: {e}")))?;
        Ok(OAuth {
            inner: Arc::new(Inner {
                providers,
                http,
                store,
                tokens,
                audit,
                login_ttl: config.login_timeout()?,
                secure_cookie: config.secure_cookie,
                starts,
            }),
        })
    }

    /// How long a started sign-in stays valid.
    pub fn login_ttl(&self) -> Duration {
        self.inner.login_ttl
    }

    /// Whether the login cookie carries `Secure`.
    pub fn secure_cookie(&self) -> bool {
        self.inner.secure_cookie
    }

    /// The configured providers' names.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.inner.providers.keys().map(String::as_str)
    }

    fn provider(&self, name: &str) -> Result<&Provider> {
        self.inner.providers.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.providers().collect();
            refused(
                ErrorClass::NotFound,
                "unknown_provider",
                format!(
                    "no sign-in provider {name:?}; configured: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// The provider's discovery document, cached; `fresh` fetches it again
    /// (at most every [`REDISCOVER_AFTER`]).
    async fn metadata(&self, p: &Provider, fresh: bool) -> Result<CoreProviderMetadata> {
        {
            let cached = p.discovery.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, m)) = &*cached {
                let age = at.elapsed();
                if (!fresh && age < DISCOVERY_TTL) || (fresh && age < REDISCOVER_AFTER) {
                    return Ok(m.clone());
                }
            }
        }
        let issuer = p
            .issuer
            .clone()
            .ok_or_else(|| Error::Config(format!("oauth.providers.{}: no issuer", p.name)))?;
        let m = CoreProviderMetadata::discover_async(issuer.clone(), &self.inner.http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %p.name, error = %error_chain(&e), "OIDC discovery failed");
                refused(
                    ErrorClass::Unavailable,
                    "provider_unavailable",
                    format!(
                        "cannot read the discovery document of {} ({}): {}",
                        p.name,
                        issuer.as_str(),
                        error_chain(&e)
                    ),
                )
            })?;
        *p.discovery.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    /// Starts a sign-in for a browser at `peer`: stores the login and
    /// returns the provider URL.
    pub async fn start(
        &self,
        provider: &str,
        org: Option<OrgId>,
        peer: Option<IpAddr>,
    ) -> Result<Started> {
        let p = self.provider(provider)?;
        if let Some(ip) = peer
            && let Err(wait) = self.inner.starts.take(ip)
        {
            return Err(refused(
                ErrorClass::Overloaded {
                    retry_after: Duration::from_secs(wait),
                },
                "too_many_sign_ins",
                "too many sign-ins started from this address; try again later",
            ));
        }
        let state = random_token();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = if p.kind == ProviderKind::Github {
            String::new()
        } else {
            random_token()
        };
        let url = match &p.github {
            Some(gh) => {
                let client = oauth2::basic::BasicClient::new(p.client_id.clone())
                    .set_auth_uri(gh.authorize.clone())
                    .set_redirect_uri(p.redirect.clone());
                let st = state.clone();
                let mut req = client
                    .authorize_url(move || CsrfToken::new(st))
                    .set_pkce_challenge(challenge);
                for s in &p.scopes {
                    req = req.add_scope(Scope::new(s.clone()));
                }
                req.url().0
            }
            None => {
                let metadata = self.metadata(p, false).await?;
                let client = p.oidc_client(metadata);
                let (st, n) = (state.clone(), nonce.clone());
                let mut req = client
                    .authorize_url(
                        CoreAuthenticationFlow::AuthorizationCode,
                        move || CsrfToken::new(st),
                        move || Nonce::new(n),
                    )
                    .set_pkce_challenge(challenge);
                for s in p.scopes.iter().filter(|s| s.as_str() != "openid") {
                    req = req.add_scope(Scope::new(s.clone()));
                }
                req.url().0
            }
        };
        self.inner
            .store
            .insert_oauth_login(&OAuthLogin {
                state_sha256: sha256_hex(&state),
                provider: p.name.clone(),
                pkce_verifier: verifier.secret().clone(),
                nonce,
                org,
                expires_at_us: now_us().saturating_add(self.inner.login_ttl.as_micros() as i64),
            })
            .await?;
        Ok(Started {
            authorize_url: url.to_string(),
            state,
        })
    }

    /// Finishes a sign-in from the provider's callback. `cookie_state` is
    /// the state the browser kept from [`OAuth::start`].
    pub async fn finish(
        &self,
        provider: &str,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
    ) -> Result<SignedIn> {
        let p = self.provider(provider)?;
        // The state must be the one this browser was given: a callback
        // carrying someone else's login is refused before anything else.
        let bound = cookie_state
            .is_some_and(|c| subtle::ConstantTimeEq::ct_eq(c.as_bytes(), state.as_bytes()).into());
        if !bound {
            return Err(refused(
                ErrorClass::BadRequest,
                "state_mismatch",
                "the state does not match this browser's sign-in (cookie hc_oauth_state): start again at /auth/oauth/{provider}/start",
            ));
        }
        let login = self
            .inner
            .store
            .take_oauth_login(&sha256_hex(state), now_us())
            .await?
            .ok_or_else(|| {
                refused(
                    ErrorClass::BadRequest,
                    "unknown_state",
                    "this sign-in is unknown, expired or already finished: start again",
                )
            })?;
        if login.provider != p.name {
            return Err(refused(
                ErrorClass::BadRequest,
                "state_mismatch",
                format!(
                    "this sign-in was started with provider {}, not {}",
                    login.provider, p.name
                ),
            ));
        }
        let verifier = PkceCodeVerifier::new(login.pkce_verifier.clone());
        let identity = match &p.github {
            Some(gh) => self.github_identity(p, gh, code, verifier).await?,
            None => self.oidc_identity(p, code, verifier, &login.nonce).await?,
        };
        let (user, org, role) = self.user_for(p, &identity, login.org.as_ref()).await?;
        let ctx = TenantContext {
            org: org.clone(),
            subject: format!("user:{}", user.id),
            role,
            credential: Credential::Jwt {
                key_id: None,
                expires_at: 0,
                token_id: None,
                session_id: None,
                scopes: ActionSet::ALL,
            },
            quota: Quota::default(),
        };
        let tokens = self.inner.tokens.issue(&ctx).await?;
        self.audit(&org, &ctx.subject, "auth.login", p, "ok", None);
        Ok(SignedIn {
            tokens,
            org,
            user,
            role,
            provider: p.name.clone(),
        })
    }

    fn audit(
        &self,
        org: &OrgId,
        actor: &str,
        action: &str,
        p: &Provider,
        result: &str,
        detail: Option<String>,
    ) {
        self.inner.audit.record(AuditDraft {
            org: org.clone(),
            at_us: now_us(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: format!("oauth/{}", p.name),
            result: result.to_owned(),
            trace_id: None,
            detail,
        });
    }

    async fn oidc_identity(
        &self,
        p: &Provider,
        code: &str,
        verifier: PkceCodeVerifier,
        nonce: &str,
    ) -> Result<Identity> {
        let metadata = self.metadata(p, false).await?;
        let client = p.oidc_client(metadata);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| {
                refused(
                    ErrorClass::Unavailable,
                    "provider_unavailable",
                    format!("{}: {e}", p.name),
                )
            })?
            .set_pkce_verifier(verifier)
            .request_async(&self.inner.http)
            .await
            .map_err(|e| exchange_failed(p, &e))?;
        let id_token = response.id_token().ok_or_else(|| {
            refused(
                ErrorClass::Unauthenticated,
                "invalid_id_token",
                format!(
                    "{} answered without an ID token (is the openid scope granted?)",
                    p.name
                ),
            )
        })?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(c) => c.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(first)) => {
                // Perhaps the provider rotated its keys since we cached its
                // JWKS: read them again, once, and retry.
                let fresh = self.metadata(p, true).await?;
                let client = p.oidc_client(fresh);
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| {
                        invalid_id_token(p, &format!("{first}; after reloading the JWKS: {e}"))
                    })?
                    .clone()
            }
            Err(e) => return Err(invalid_id_token(p, &e.to_string())),
        };
        let mut identity = Identity {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
        };
        // Some providers keep the address out of the ID token: ask the
        // userinfo endpoint, for the same subject.
        if identity.email.is_none()
            && let Ok(request) = client.user_info(
                response.access_token().clone(),
                Some(claims.subject().clone()),
            )
        {
            let info: std::result::Result<openidconnect::core::CoreUserInfoClaims, _> =
                request.request_async(&self.inner.http).await;
            match info {
                Ok(info) => {
                    identity.email = info.email().map(|e| e.as_str().to_owned());
                    identity.email_verified = info.email_verified().unwrap_or(false);
                }
                Err(e) => {
                    tracing::warn!(provider = %p.name, error = %error_chain(&e), "userinfo failed")
                }
            }
        }
        Ok(identity)
    }

    async fn github_identity(
        &self,
        p: &Provider,
        gh: &GithubUrls,
        code: &str,
        verifier: PkceCodeVerifier,
    ) -> Result<Identity> {
        let mut client = oauth2::basic::BasicClient::new(p.client_id.clone())
            .set_auth_uri(gh.authorize.clone())
            .set_token_uri(gh.token.clone())
            .set_redirect_uri(p.redirect.clone());
        if let Some(secret) = &p.client_secret {
            client = client.set_client_secret(secret.clone());
        }
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(verifier)
            .request_async(&self.inner.http)
            .await
            .map_err(|e| exchange_failed(p, &e))?;
        let token = oauth2::TokenResponse::access_token(&response)
            .secret()
            .clone();
        #[derive(Deserialize)]
        struct GithubUser {
            id: u64,
            email: Option<String>,
        }
        #[derive(Deserialize)]
        struct GithubEmail {
            email: String,
            primary: bool,
            verified: bool,
        }
        let get = |path: &str| {
            self.inner
                .http
                .get(format!("{}{path}", gh.api))
                .bearer_auth(&token)
                .header("accept", "application/vnd.github+json")
        };
        let unavailable = |e: reqwest::Error| {
            refused(
                ErrorClass::Unavailable,
                "provider_unavailable",
                format!("{} API: {}", p.name, error_chain(&e)),
            )
        };
        let user: GithubUser = get("/user")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        // The verified primary address, when the user lets us see it.
        let emails: Vec<GithubEmail> = match get("/user/emails")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let verified = emails.iter().find(|e| e.primary && e.verified);
        Ok(Identity {
            subject: user.id.to_string(),
            email: verified.map(|e| e.email.clone()).or(user.email),
            email_verified: verified.is_some(),
        })
    }

    /// The user behind `identity`, and the org and role to sign in with.
    async fn user_for(
        &self,
        p: &Provider,
        identity: &Identity,
        asked: Option<&OrgId>,
    ) -> Result<(User, OrgId, Role)> {
        let store = &self.inner.store;
        let mut user = store.user_by_identity(&p.name, &identity.subject).await?;
        if user.is_none()
            && p.link_verified_email
            && identity.email_verified
            && let Some(email) = &identity.email
            && let Some(existing) = store.user_by_email(email).await?
        {
            store
                .link_identity(&p.name, &identity.subject, &existing.id)
                .await?;
            user = Some(existing);
        }
        let user = match user {
            Some(u) => u,
            None => {
                let Some((org, role)) = &p.default_member else {
                    return Err(refused(
                        ErrorClass::Forbidden,
                        "unknown_user",
                        format!(
                            "no Honeycell user is linked to this {} account{}: ask an org admin to add you as a member (addMember) and sign in again",
                            p.name,
                            match (&identity.email, identity.email_verified) {
                                (Some(e), true) => format!(" ({e})"),
                                (Some(e), false) => format!(" ({e}, not verified by {})", p.name),
                                _ => String::new(),
                            }
                        ),
                    ));
                };
                // Users need a unique address; without a verified one the
                // identity itself stands in.
                let user = User::new(&match (&identity.email, identity.email_verified) {
                    (Some(e), true) => e.clone(),
                    _ => format!("{}+{}@oauth.invalid", p.name, identity.subject),
                });
                store.create_user(&user).await.map_err(|e| match e {
                    Error::Conflict { .. } => refused(
                        ErrorClass::Conflict,
                        "email_taken",
                        format!(
                            "a user with this e-mail address exists but {} did not verify it, so the accounts are not linked",
                            p.name
                        ),
                    ),
                    e => e,
                })?;
                store
                    .link_identity(&p.name, &identity.subject, &user.id)
                    .await?;
                store.set_membership(org, &user.id, *role).await?;
                self.audit(
                    org,
                    &format!("user:{}", user.id),
                    "user.create",
                    p,
                    "ok",
                    Some(format!("first sign-in; member with role {}", role.as_str())),
                );
                user
            }
        };
        let memberships = store.memberships_of_user(&user.id).await?;
        let chosen = match asked {
            Some(org) => memberships.iter().find(|m| &m.org == org).ok_or_else(|| {
                refused(
                    ErrorClass::Forbidden,
                    "not_a_member",
                    format!("you are not a member of org {org}"),
                )
            })?,
            None => match memberships.as_slice() {
                [only] => only,
                [] => {
                    return Err(refused(
                        ErrorClass::Forbidden,
                        "not_a_member",
                        "you are not a member of any org: ask an org admin to add you",
                    ));
                }
                many => {
                    return Err(refused(
                        ErrorClass::BadRequest,
                        "org_required",
                        format!(
                            "you are a member of several orgs ({}): start again with ?org=<one of them>",
                            many.iter()
                                .map(|m| m.org.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            },
        };
        Ok((user.clone(), chosen.org.clone(), chosen.role))
    }
}

fn exchange_failed(p: &Provider, e: &dyn std::error::Error) -> Error {
    refused(
        ErrorClass::Unauthenticated,
        "code_exchange_failed",
        format!(
            "{} refused the authorization code: {}",
            p.name,
            error_chain(e)
        ),
    )
}

fn invalid_id_token(p: &Provider, why: &str) -> Error {
    tracing::warn!(provider = %p.name, reason = %why, "ID token refused");
    refused(
        ErrorClass::Unauthenticated,
        "invalid_id_token",
        format!("the ID token from {} was refused: {why}", p.name),
    )
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(toml: &str) -> Result<Provider> {
        let p: ProviderConfig = toml::from_str(toml).map_err(|e| Error::Config(e.to_string()))?;
        let config = OAuthConfig {
            public_url: Some("https://hc.example.com/".into()),
            ..OAuthConfig::default()
        };
        Provider::new(&config, "p", &p)
    }

    #[test]
    fn presets_resolve_their_issuers_and_urls() -> Result<()> {
        let google = provider("kind = \"google\"\nclient_id = \"x\"")?;
        assert_eq!(
            google.issuer.as_ref().map(|i| i.as_str()),
            Some("https://accounts.google.com")
        );
        assert_eq!(
            google.redirect.as_str(),
            "https://hc.example.com/auth/oauth/p/callback"
        );
        assert_eq!(google.scopes, ["openid", "email", "profile"]);
        let azure =
            provider("kind = \"azure\"\nclient_id = \"x\"\ntenant = \"contoso.onmicrosoft.com\"")?;
        assert_eq!(
            azure.issuer.as_ref().map(|i| i.as_str()),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0")
        );
        let github = provider("kind = \"github\"\nclient_id = \"x\"\nclient_secret = \"s\"")?;
        assert!(github.issuer.is_none());
        let urls = github
            .github
            .as_ref()
            .map(|g| (g.authorize.as_str().to_owned(), g.api.clone()));
        assert_eq!(
            urls,
            Some((
                "https://github.com/login/oauth/authorize".to_owned(),
                "https://api.github.com".to_owned()
            ))
        );
        assert_eq!(github.scopes, ["read:user", "user:email"]);
        // Names become URL path segments.
        assert!(matches!(
            Provider::new(
                &OAuthConfig::default(),
                "a/b",
                &toml::from_str::<ProviderConfig>("kind = \"google\"\nclient_id = \"x\"")
                    .map_err(|e| Error::Config(e.to_string()))?
            ),
            Err(Error::Config(_))
        ));
        Ok(())
    }
}
