//! An OpenID Connect provider for tests, speaking the real endpoints over
//! HTTP: discovery, authorize, token (with PKCE S256 checked), JWKS and
//! userinfo, plus GitHub's OAuth2 endpoints and user API. ID tokens are
//! signed ES256 with a key made at start. Knobs make it misbehave the ways
//! a test needs: a wrong nonce, an expired token, a token signed by a key
//! its JWKS does not hold, a rotated key.
//!
//! The "browser" is [`TestProvider::sign_in`]: it follows the server's
//! redirect to the provider, gets the code and calls the server's callback
//! with the cookie the server set, as a browser would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The person who "logs in" at the provider.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

/// Ways to misbehave, for the next ID tokens.
#[derive(Clone, Debug, Default)]
pub struct Knobs {
    /// Put this nonce in the ID token instead of the one asked for.
    pub nonce: Option<String>,
    /// Issue ID tokens that expired an hour ago.
    pub expired: bool,
    /// Sign with a key that is not in the JWKS (same kid).
    pub wrong_key: bool,
    /// Keep the e-mail address out of the ID token (only userinfo has it).
    pub email_only_in_userinfo: bool,
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let encoding =
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key PEM");
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).expect("JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Key {
            kid: kid.to_owned(),
            encoding,
            jwk,
        }
    }
}

struct Grant {
    user: TestUser,
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
}

struct Inner {
    issuer: String,
    client_id: String,
    client_secret: String,
    user: Option<TestUser>,
    knobs: Knobs,
    key: Key,
    stray: Key,
    codes: HashMap<String, Grant>,
    access: HashMap<String, TestUser>,
    discovery_reads: usize,
    /// What the last token request carried (to check PKCE is used).
    last_code_verifier: Option<String>,
}

/// A running provider; stops when dropped.
pub struct TestProvider {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

impl TestProvider {
    /// Starts on a free port of 127.0.0.1 with client `honeycell-test`.
    pub async fn start() -> TestProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test provider");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Mutex::new(Inner {
            issuer: format!("http://127.0.0.1:{}", addr.port()),
            client_id: "honeycell-test".into(),
            client_secret: "provider-secret".into(),
            user: None,
            knobs: Knobs::default(),
            key: Key::new("key-1"),
            stray: Key::new("key-1"),
            codes: HashMap::new(),
            access: HashMap::new(),
            discovery_reads: 0,
            last_code_verifier: None,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .route("/userinfo", get(userinfo))
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
            .route("/api/user", get(github_user))
            .route("/api/user/emails", get(github_emails))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestProvider { inner, addr, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// `[oauth.providers.<name>]` TOML for this provider as `kind`
    /// (`oidc`, `keycloak` or `github`), plus `extra` lines.
    pub fn provider_toml(&self, name: &str, kind: &str, extra: &str) -> String {
        let inner = self.lock();
        let location = if kind == "github" {
            format!(
                "authorize_url = \"{0}/login/oauth/authorize\"\ntoken_url = \"{0}/login/oauth/access_token\"\napi_url = \"{0}/api\"",
                self.issuer()
            )
        } else {
            format!("issuer = \"{}\"", self.issuer())
        };
        format!(
            "[oauth.providers.{name}]\nkind = \"{kind}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n{location}\n{extra}\n",
            inner.client_id, inner.client_secret
        )
    }

    /// Who signs in next.
    pub fn login_as(&self, user: TestUser) {
        self.lock().user = Some(user);
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        self.lock().knobs = knobs;
    }

    /// A new signing key (the old one leaves the JWKS).
    pub fn rotate_key(&self) {
        let mut inner = self.lock();
        let n = inner.discovery_reads;
        inner.key = Key::new(&format!("key-rotated-{n}"));
    }

    pub fn discovery_reads(&self) -> usize {
        self.lock().discovery_reads
    }

    pub fn last_code_verifier(&self) -> Option<String> {
        self.lock().last_code_verifier.clone()
    }

    /// Walks the browser part of a sign-in against `http_base` (the
    /// server's URL): start (with `?org=` when given), the provider's
    /// authorize page, the callback with the server's cookie. Returns the
    /// callback's status and JSON body.
    pub async fn sign_in(
        &self,
        http_base: &str,
        provider: &str,
        org: Option<&str>,
    ) -> (u16, Value) {
        let steps = self.begin(http_base, provider, org).await;
        let (callback, cookie) = steps;
        finish_callback(&callback, cookie.as_deref()).await
    }

    /// The first two steps of [`TestProvider::sign_in`]: the callback URL
    /// the provider sent the browser to and the cookie the server set.
    pub async fn begin(
        &self,
        http_base: &str,
        provider: &str,
        org: Option<&str>,
    ) -> (String, Option<String>) {
        let browser = no_redirects();
        let mut url = format!("{http_base}/auth/oauth/{provider}/start");
        if let Some(org) = org {
            url.push_str(&format!("?org={org}"));
        }
        let start = browser.get(&url).send().await.expect("GET start");
        assert_eq!(start.status(), 302, "start: {:?}", start.text().await);
        let cookie = start
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let to_provider = location(&start);
        let at_provider = browser
            .get(&to_provider)
            .send()
            .await
            .expect("GET the provider's authorize page");
        assert_eq!(
            at_provider.status(),
            303,
            "authorize: {:?}",
            at_provider.text().await
        );
        (location(&at_provider), cookie)
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned()
}

/// Calls the server's callback URL with `cookie` (`name=value`) as a browser would.
pub async fn finish_callback(callback: &str, cookie: Option<&str>) -> (u16, Value) {
    let mut req = no_redirects().get(callback);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let resp = req.send().await.expect("GET callback");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

type Shared = State<Arc<Mutex<Inner>>>;

fn lock(s: &Arc<Mutex<Inner>>) -> std::sync::MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn discovery(State(s): Shared) -> Json<Value> {
    let mut inner = lock(&s);
    inner.discovery_reads += 1;
    let i = inner.issuer.clone();
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "email", "email_verified"]
    }))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(State(s): Shared, Query(q): Query<AuthorizeQuery>) -> Response {
    let mut inner = lock(&s);
    if q.client_id != inner.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if q.response_type.as_deref().is_some_and(|t| t != "code") {
        return (StatusCode::BAD_REQUEST, "response_type must be code").into_response();
    }
    if q.code_challenge.is_some() && q.code_challenge_method.as_deref() != Some("S256") {
        return (StatusCode::BAD_REQUEST, "only S256 PKCE").into_response();
    }
    let Some(user) = inner.user.clone() else {
        return (StatusCode::FORBIDDEN, "nobody is logged in at the provider").into_response();
    };
    let code = random();
    inner.codes.insert(
        code.clone(),
        Grant {
            user,
            nonce: q.nonce,
            challenge: q.code_challenge,
            redirect_uri: q.redirect_uri.clone(),
        },
    );
    let sep = if q.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    Redirect::to(&format!(
        "{}{sep}code={code}&state={}",
        q.redirect_uri,
        urlencode(&q.state)
    ))
    .into_response()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn token_error(what: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": what})),
    )
        .into_response()
}

async fn token(State(s): Shared, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let mut inner = lock(&s);
    // Client authentication: HTTP Basic or the form.
    let (id, secret) = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(pair) => match pair.split_once(':') {
            Some((i, s)) => (i.to_owned(), s.to_owned()),
            None => (String::new(), String::new()),
        },
        None => (
            f.client_id.clone().unwrap_or_default(),
            f.client_secret.clone().unwrap_or_default(),
        ),
    };
    if id != inner.client_id || secret != inner.client_secret {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if f.grant_type != "authorization_code" {
        return token_error("grant_type must be authorization_code");
    }
    inner.last_code_verifier = f.code_verifier.clone();
    let Some(grant) = inner.codes.remove(&f.code) else {
        return token_error("unknown or used code");
    };
    if f.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return token_error("redirect_uri differs from the authorize request");
    }
    if let Some(challenge) = &grant.challenge {
        let Some(verifier) = &f.code_verifier else {
            return token_error("code_verifier missing");
        };
        if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != *challenge {
            return token_error("PKCE code_verifier does not match the challenge");
        }
    }
    let access = random();
    inner.access.insert(access.clone(), grant.user.clone());
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "openid email profile",
    });
    // GitHub-style requests (no nonce) get no ID token.
    if let Some(nonce) = grant.nonce {
        let knobs = inner.knobs.clone();
        let iat = if knobs.expired { now() - 7200 } else { now() };
        let mut claims = json!({
            "iss": inner.issuer,
            "sub": grant.user.subject,
            "aud": inner.client_id,
            "iat": iat,
            "exp": iat + 3600,
            "nonce": knobs.nonce.clone().unwrap_or(nonce),
        });
        if !knobs.email_only_in_userinfo
            && let Some(email) = &grant.user.email
        {
            claims["email"] = json!(email);
            claims["email_verified"] = json!(grant.user.email_verified);
        }
        let key = if knobs.wrong_key {
            &inner.stray
        } else {
            &inner.key
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let id_token =
            jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign the ID token");
        body["id_token"] = json!(id_token);
    }
    Json(body).into_response()
}

async fn jwks(State(s): Shared) -> Json<JwkSet> {
    let inner = lock(&s);
    Json(JwkSet {
        keys: vec![inner.key.jwk.clone()],
    })
}

fn bearer_user(s: &Arc<Mutex<Inner>>, headers: &HeaderMap) -> Option<TestUser> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .to_owned();
    lock(s).access.get(&token).cloned()
}

async fn userinfo(State(s): Shared, headers: HeaderMap) -> Response {
    let Some(user) = bearer_user(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(json!({
        "sub": user.subject,
        "email": user.email,
        "email_verified": user.email_verified,
    }))
    .into_response()
}

async fn github_user(State(s): Shared, headers: HeaderMap) -> Response {
    let Some(user) = bearer_user(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let id: u64 = user.subject.parse().unwrap_or(0);
    Json(json!({ "id": id, "login": format!("user{id}"), "email": Value::Null })).into_response()
}

async fn github_emails(State(s): Shared, headers: HeaderMap) -> Response {
    let Some(user) = bearer_user(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let emails: Vec<Value> = user
        .email
        .iter()
        .map(|e| json!({"email": e, "primary": true, "verified": user.email_verified}))
        .collect();
    Json(Value::Array(emails)).into_response()
}
