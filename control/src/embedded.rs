//! The embedded control store: one redb file under the data directory.
//!
//! Records are stored as JSON values under string keys; secondary indexes
//! (e-mail → user, org → keys, family → refresh tokens, user ↔ org) are
//! tables of their own, updated in the same write transaction. Composite
//! keys are `a \0 b` byte strings (org ids, user ids and key ids cannot hold
//! a NUL), so a prefix scan is a range `[a\0, a\x01)`. redb transactions
//! are synchronous and a commit fsyncs, so every call runs on tokio's
//! blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use honeycell_auth::Role;
use honeycell_types::OrgId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::audit::{GENESIS, chain};
use crate::error::{Error, Result};
use crate::model::{
    ApiKey, AuditDraft, AuditEntry, AuditQuery, Membership, OAuthLogin, Org, RefreshState,
    RefreshToken, Rotation, SigningKey, User,
};

type Json = &'static [u8];
const ORGS: TableDefinition<&str, Json> = TableDefinition::new("orgs");
const USERS: TableDefinition<&str, Json> = TableDefinition::new("users");
const USER_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("user_emails");
const IDENTITIES: TableDefinition<&[u8], &str> = TableDefinition::new("identities");
const MEMBERS: TableDefinition<&[u8], &str> = TableDefinition::new("members");
const MEMBERS_BY_USER: TableDefinition<&[u8], &str> = TableDefinition::new("members_by_user");
const API_KEYS: TableDefinition<&str, Json> = TableDefinition::new("api_keys");
const API_KEYS_BY_ORG: TableDefinition<&[u8], ()> = TableDefinition::new("api_keys_by_org");
const REFRESH: TableDefinition<&str, Json> = TableDefinition::new("refresh_tokens");
const REFRESH_BY_FAMILY: TableDefinition<&[u8], ()> = TableDefinition::new("refresh_by_family");
const SIGNING_KEYS: TableDefinition<&str, Json> = TableDefinition::new("signing_keys");
const AUDIT: TableDefinition<&[u8], Json> = TableDefinition::new("audit");
const AUDIT_HEADS: TableDefinition<&str, Json> = TableDefinition::new("audit_heads");
const OAUTH_LOGINS: TableDefinition<&str, Json> = TableDefinition::new("oauth_logins");

/// The embedded store. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// The range of every `a \0 …` key.
fn prefix(a: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = a.as_bytes().to_vec();
    lo.push(0);
    let mut hi = a.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

fn second(k: &[u8]) -> &str {
    let at = k.iter().position(|&b| b == 0).map_or(k.len(), |i| i + 1);
    std::str::from_utf8(&k[at..]).unwrap_or_default()
}

fn audit_key(org: &OrgId, seq: u64) -> Vec<u8> {
    let mut k = prefix(org.as_str()).0;
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain records to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, e))
}

fn role(what: &str, s: &str) -> Result<Role> {
    s.parse().map_err(|e| Error::corrupt(what, e))
}

#[derive(Serialize, serde::Deserialize)]
struct Head {
    seq: u64,
    #[serde(with = "hex::serde")]
    hash: [u8; 32],
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(&path).map_err(|e| Error::embedded(&path, e))?;
        // Every table exists from the start, so read transactions never meet
        // a missing one.
        let txn = db.begin_write().map_err(|e| Error::embedded(&path, e))?;
        {
            let p = &path;
            let err = |e: redb::TableError| Error::embedded(p, e);
            txn.open_table(ORGS).map_err(err)?;
            txn.open_table(USERS).map_err(err)?;
            txn.open_table(USER_EMAILS).map_err(err)?;
            txn.open_table(IDENTITIES).map_err(err)?;
            txn.open_table(MEMBERS).map_err(err)?;
            txn.open_table(MEMBERS_BY_USER).map_err(err)?;
            txn.open_table(API_KEYS).map_err(err)?;
            txn.open_table(API_KEYS_BY_ORG).map_err(err)?;
            txn.open_table(REFRESH).map_err(err)?;
            txn.open_table(REFRESH_BY_FAMILY).map_err(err)?;
            txn.open_table(SIGNING_KEYS).map_err(err)?;
            txn.open_table(AUDIT).map_err(err)?;
            txn.open_table(AUDIT_HEADS).map_err(err)?;
            txn.open_table(OAUTH_LOGINS).map_err(err)?;
        }
        txn.commit().map_err(|e| Error::embedded(&path, e))?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool with the database.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Path) -> std::result::Result<T, Failure> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&db, &path).map_err(|e| e.into_error(&path)))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.run(|db, _| {
            db.begin_read()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn create_org(&self, org: &Org) -> Result<()> {
        let org = org.clone();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(ORGS)?;
                if t.get(org.id.as_str())?.is_some() {
                    return Err(Failure::Conflict(format!("org {}", org.id)));
                }
                t.insert(org.id.as_str(), enc(&org).as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn org(&self, id: &OrgId) -> Result<Option<Org>> {
        let id = id.clone();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(ORGS)?;
            t.get(id.as_str())?
                .map(|v| dec("org", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn set_org_tier(&self, id: &OrgId, tier: &str) -> Result<bool> {
        let (id, tier) = (id.clone(), tier.to_owned());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let found = {
                let mut t = txn.open_table(ORGS)?;
                let current: Option<Org> = t
                    .get(id.as_str())?
                    .map(|v| dec("org", v.value()))
                    .transpose()
                    .map_err(Failure::Other)?;
                match current {
                    Some(mut org) => {
                        org.tier = tier;
                        t.insert(id.as_str(), enc(&org).as_slice())?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    pub(crate) async fn create_user(&self, user: &User) -> Result<()> {
        let mut user = user.clone();
        user.email = user.email.to_lowercase();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut users = txn.open_table(USERS)?;
                let mut emails = txn.open_table(USER_EMAILS)?;
                if users.get(user.id.as_str())?.is_some() {
                    return Err(Failure::Conflict(format!("user {}", user.id)));
                }
                if emails.get(user.email.as_str())?.is_some() {
                    return Err(Failure::Conflict(format!(
                        "a user with e-mail {}",
                        user.email
                    )));
                }
                users.insert(user.id.as_str(), enc(&user).as_slice())?;
                emails.insert(user.email.as_str(), user.id.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn user(&self, id: &str) -> Result<Option<User>> {
        let id = id.to_owned();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(USERS)?;
            t.get(id.as_str())?
                .map(|v| dec("user", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let email = email.to_lowercase();
        self.run(move |db, _| {
            let txn = db.begin_read()?;
            let Some(id) = txn
                .open_table(USER_EMAILS)?
                .get(email.as_str())?
                .map(|v| v.value().to_owned())
            else {
                return Ok(None);
            };
            let t = txn.open_table(USERS)?;
            t.get(id.as_str())?
                .map(|v| dec("user", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn set_membership(
        &self,
        org: &OrgId,
        user_id: &str,
        role: Role,
    ) -> Result<()> {
        let (org, user_id) = (org.clone(), user_id.to_owned());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                txn.open_table(MEMBERS)?
                    .insert(key2(org.as_str(), &user_id).as_slice(), role.as_str())?;
                txn.open_table(MEMBERS_BY_USER)?
                    .insert(key2(&user_id, org.as_str()).as_slice(), role.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn remove_membership(&self, org: &OrgId, user_id: &str) -> Result<bool> {
        let (org, user_id) = (org.clone(), user_id.to_owned());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let found = {
                let a = txn
                    .open_table(MEMBERS)?
                    .remove(key2(org.as_str(), &user_id).as_slice())?
                    .is_some();
                txn.open_table(MEMBERS_BY_USER)?
                    .remove(key2(&user_id, org.as_str()).as_slice())?;
                a
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    pub(crate) async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<Membership>> {
        let user_id = user_id.to_owned();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(MEMBERS_BY_USER)?;
            let (lo, hi) = prefix(&user_id);
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..hi.as_slice())? {
                let (k, v) = row?;
                let org = OrgId::new(second(k.value()))
                    .map_err(|e| Failure::Other(Error::corrupt("membership", e)))?;
                out.push(Membership {
                    org,
                    user_id: user_id.clone(),
                    role: role("membership", v.value()).map_err(Failure::Other)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn members_of_org(&self, org: &OrgId) -> Result<Vec<Membership>> {
        let org = org.clone();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(MEMBERS)?;
            let (lo, hi) = prefix(org.as_str());
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..hi.as_slice())? {
                let (k, v) = row?;
                out.push(Membership {
                    org: org.clone(),
                    user_id: second(k.value()).to_owned(),
                    role: role("membership", v.value()).map_err(Failure::Other)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn link_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<()> {
        let (k, user_id) = (key2(provider, subject), user_id.to_owned());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            txn.open_table(IDENTITIES)?
                .insert(k.as_slice(), user_id.as_str())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn user_by_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<User>> {
        let k = key2(provider, subject);
        self.run(move |db, _| {
            let txn = db.begin_read()?;
            let Some(id) = txn
                .open_table(IDENTITIES)?
                .get(k.as_slice())?
                .map(|v| v.value().to_owned())
            else {
                return Ok(None);
            };
            let t = txn.open_table(USERS)?;
            t.get(id.as_str())?
                .map(|v| dec("user", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn insert_oauth_login(&self, login: &OAuthLogin) -> Result<()> {
        let login = login.clone();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(OAUTH_LOGINS)?;
                // Logins abandoned at the provider: few, and short-lived.
                let now = honeycell_types::now_us();
                let mut expired = Vec::new();
                for row in t.iter()? {
                    let (k, v) = row?;
                    let l: OAuthLogin = dec("oauth login", v.value()).map_err(Failure::Other)?;
                    if l.expires_at_us < now {
                        expired.push(k.value().to_owned());
                    }
                }
                for k in expired {
                    t.remove(k.as_str())?;
                }
                if t.get(login.state_sha256.as_str())?.is_some() {
                    return Err(Failure::Conflict("oauth login state".into()));
                }
                t.insert(login.state_sha256.as_str(), enc(&login).as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn take_oauth_login(
        &self,
        state_sha256: &str,
        now_us: i64,
    ) -> Result<Option<OAuthLogin>> {
        let k = state_sha256.to_owned();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let taken = {
                let mut t = txn.open_table(OAUTH_LOGINS)?;
                t.remove(k.as_str())?
                    .map(|v| dec::<OAuthLogin>("oauth login", v.value()))
                    .transpose()
                    .map_err(Failure::Other)?
            };
            txn.commit()?;
            Ok(taken.filter(|l| l.expires_at_us >= now_us))
        })
        .await
    }

    pub(crate) async fn insert_api_key(&self, key: &ApiKey) -> Result<()> {
        let key = key.clone();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut keys = txn.open_table(API_KEYS)?;
                if keys.get(key.id.as_str())?.is_some() {
                    return Err(Failure::Conflict(format!("API key {}", key.id)));
                }
                keys.insert(key.id.as_str(), enc(&key).as_slice())?;
                txn.open_table(API_KEYS_BY_ORG)?
                    .insert(key2(key.org.as_str(), &key.id).as_slice(), ())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let id = id.to_owned();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(API_KEYS)?;
            t.get(id.as_str())?
                .map(|v| dec("API key", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn api_keys_of_org(&self, org: &OrgId) -> Result<Vec<ApiKey>> {
        let org = org.clone();
        self.run(move |db, _| {
            let txn = db.begin_read()?;
            let index = txn.open_table(API_KEYS_BY_ORG)?;
            let keys = txn.open_table(API_KEYS)?;
            let (lo, hi) = prefix(org.as_str());
            let mut out = Vec::new();
            for row in index.range(lo.as_slice()..hi.as_slice())? {
                let (k, _) = row?;
                if let Some(v) = keys.get(second(k.value()))? {
                    out.push(dec("API key", v.value()).map_err(Failure::Other)?);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn revoke_api_key(&self, org: &OrgId, id: &str, at_us: i64) -> Result<bool> {
        let (org, id) = (org.clone(), id.to_owned());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let done = {
                let mut t = txn.open_table(API_KEYS)?;
                let current: Option<ApiKey> = t
                    .get(id.as_str())?
                    .map(|v| dec("API key", v.value()))
                    .transpose()
                    .map_err(Failure::Other)?;
                match current {
                    Some(mut k) if k.org == org && k.revoked_at_us.is_none() => {
                        k.revoked_at_us = Some(at_us);
                        t.insert(id.as_str(), enc(&k).as_slice())?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit()?;
            Ok(done)
        })
        .await
    }

    pub(crate) async fn api_keys_revoked_since(&self, since_us: i64) -> Result<Vec<(String, i64)>> {
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(API_KEYS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (_, v) = row?;
                let k: ApiKey = dec("API key", v.value()).map_err(Failure::Other)?;
                if let Some(at) = k.revoked_at_us.filter(|&at| at >= since_us) {
                    out.push((k.id, at));
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn touch_api_keys(&self, uses: &[(String, i64)]) -> Result<()> {
        let uses = uses.to_vec();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(API_KEYS)?;
                for (id, at) in uses {
                    let current: Option<ApiKey> = t
                        .get(id.as_str())?
                        .map(|v| dec("API key", v.value()))
                        .transpose()
                        .map_err(Failure::Other)?;
                    if let Some(mut k) = current
                        && k.last_used_us.is_none_or(|t| t < at)
                    {
                        k.last_used_us = Some(at);
                        t.insert(id.as_str(), enc(&k).as_slice())?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn insert_refresh(&self, token: &RefreshToken) -> Result<()> {
        let token = token.clone();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            put_refresh(&txn, &token, true)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn refresh(&self, id: &str) -> Result<Option<RefreshToken>> {
        let id = id.to_owned();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(REFRESH)?;
            t.get(id.as_str())?
                .map(|v| dec("refresh token", v.value()))
                .transpose()
                .map_err(Failure::Other)
        })
        .await
    }

    pub(crate) async fn rotate_refresh(
        &self,
        id: &str,
        now_us: i64,
        next: &RefreshToken,
    ) -> Result<Rotation> {
        let (id, next) = (id.to_owned(), next.clone());
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let current: Option<RefreshToken> = txn
                .open_table(REFRESH)?
                .get(id.as_str())?
                .map(|v| dec("refresh token", v.value()))
                .transpose()
                .map_err(Failure::Other)?;
            let outcome = match current {
                None => Rotation::Unknown,
                Some(old) => match old.state {
                    RefreshState::Revoked => Rotation::Revoked(old),
                    RefreshState::Rotated => {
                        revoke_family(&txn, &old.family)?;
                        Rotation::ReuseDetected(old)
                    }
                    RefreshState::Active if now_us >= old.expires_at_us => Rotation::Expired(old),
                    RefreshState::Active => {
                        let mut retired = old.clone();
                        retired.state = RefreshState::Rotated;
                        put_refresh(&txn, &retired, false)?;
                        let mut next = next;
                        next.family = old.family.clone();
                        put_refresh(&txn, &next, true)?;
                        Rotation::Rotated(old)
                    }
                },
            };
            txn.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub(crate) async fn revoke_refresh_family(&self, family: &str) -> Result<u64> {
        let family = family.to_owned();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let n = revoke_family(&txn, &family)?;
            txn.commit()?;
            Ok(n)
        })
        .await
    }

    pub(crate) async fn refresh_family_revoked(&self, family: &str) -> Result<bool> {
        let family = family.to_owned();
        self.run(move |db, _| {
            let txn = db.begin_read()?;
            let index = txn.open_table(REFRESH_BY_FAMILY)?;
            let tokens = txn.open_table(REFRESH)?;
            let (lo, hi) = prefix(&family);
            for row in index.range(lo.as_slice()..hi.as_slice())? {
                let id = second(row?.0.value()).to_owned();
                let token: Option<RefreshToken> = tokens
                    .get(id.as_str())?
                    .map(|v| dec("refresh token", v.value()))
                    .transpose()
                    .map_err(Failure::Other)?;
                if token.is_some_and(|t| t.state == RefreshState::Revoked) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    pub(crate) async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        let key = key.clone();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(SIGNING_KEYS)?;
                if t.get(key.kid.as_str())?.is_some() {
                    return Err(Failure::Conflict(format!("signing key {}", key.kid)));
                }
                t.insert(key.kid.as_str(), enc(&key).as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(SIGNING_KEYS)?;
            let mut out: Vec<SigningKey> = Vec::new();
            for row in t.iter()? {
                let (_, v) = row?;
                out.push(dec("signing key", v.value()).map_err(Failure::Other)?);
            }
            out.sort_by(|a, b| (a.created_at_us, &a.kid).cmp(&(b.created_at_us, &b.kid)));
            Ok(out)
        })
        .await
    }

    pub(crate) async fn retire_signing_key(&self, kid: &str, at_us: i64) -> Result<bool> {
        let kid = kid.to_owned();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let found = {
                let mut t = txn.open_table(SIGNING_KEYS)?;
                let current: Option<SigningKey> = t
                    .get(kid.as_str())?
                    .map(|v| dec("signing key", v.value()))
                    .transpose()
                    .map_err(Failure::Other)?;
                match current {
                    Some(mut k) => {
                        if k.retired_at_us.is_none() {
                            k.retired_at_us = Some(at_us);
                            t.insert(kid.as_str(), enc(&k).as_slice())?;
                        }
                        true
                    }
                    None => false,
                }
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    pub(crate) async fn delete_signing_key(&self, kid: &str) -> Result<bool> {
        let kid = kid.to_owned();
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let found = txn
                .open_table(SIGNING_KEYS)?
                .remove(kid.as_str())?
                .is_some();
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    pub(crate) async fn append_audit(&self, drafts: Vec<AuditDraft>) -> Result<Vec<AuditEntry>> {
        self.run(move |db, _| {
            let txn = db.begin_write()?;
            let mut out = Vec::with_capacity(drafts.len());
            {
                let mut heads = txn.open_table(AUDIT_HEADS)?;
                let mut log = txn.open_table(AUDIT)?;
                for (org, drafts) in crate::by_org(drafts) {
                    let head = match heads.get(org.as_str())? {
                        Some(v) => {
                            let h: Head = dec("audit head", v.value()).map_err(Failure::Other)?;
                            (h.seq, h.hash)
                        }
                        None => (0, GENESIS),
                    };
                    let (entries, (seq, hash)) = chain(head, drafts);
                    for e in &entries {
                        log.insert(audit_key(&org, e.seq).as_slice(), enc(e).as_slice())?;
                    }
                    heads.insert(org.as_str(), enc(&Head { seq, hash }).as_slice())?;
                    out.extend(entries);
                }
            }
            txn.commit()?;
            Ok(out)
        })
        .await
    }

    pub(crate) async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let q = q.clone();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(AUDIT)?;
            let lo = audit_key(&q.org, 0);
            let hi = audit_key(&q.org, q.before_seq.unwrap_or(u64::MAX));
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..hi.as_slice())?.rev() {
                if out.len() >= q.limit {
                    break;
                }
                let (_, v) = row?;
                let e: AuditEntry = dec("audit entry", v.value()).map_err(Failure::Other)?;
                if q.matches(&e) {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn audit_range(
        &self,
        org: &OrgId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let org = org.clone();
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(AUDIT)?;
            let lo = audit_key(&org, after_seq.saturating_add(1));
            let hi = prefix(org.as_str()).1;
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..hi.as_slice())?.take(limit) {
                let (_, v) = row?;
                out.push(dec("audit entry", v.value()).map_err(Failure::Other)?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn audit_orgs(&self) -> Result<Vec<OrgId>> {
        self.run(move |db, _| {
            let t = db.begin_read()?.open_table(AUDIT_HEADS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, _) = row?;
                out.push(
                    OrgId::new(k.value())
                        .map_err(|e| Failure::Other(Error::corrupt("audit head", e)))?,
                );
            }
            Ok(out)
        })
        .await
    }
}

fn put_refresh(
    txn: &redb::WriteTransaction,
    token: &RefreshToken,
    new: bool,
) -> std::result::Result<(), Failure> {
    let mut t = txn.open_table(REFRESH)?;
    if new && t.get(token.id.as_str())?.is_some() {
        return Err(Failure::Conflict(format!("refresh token {}", token.id)));
    }
    t.insert(token.id.as_str(), enc(token).as_slice())?;
    if new {
        txn.open_table(REFRESH_BY_FAMILY)?
            .insert(key2(&token.family, &token.id).as_slice(), ())?;
    }
    Ok(())
}

fn revoke_family(txn: &redb::WriteTransaction, family: &str) -> std::result::Result<u64, Failure> {
    let ids: Vec<String> = {
        let index = txn.open_table(REFRESH_BY_FAMILY)?;
        let (lo, hi) = prefix(family);
        let mut ids = Vec::new();
        for row in index.range(lo.as_slice()..hi.as_slice())? {
            ids.push(second(row?.0.value()).to_owned());
        }
        ids
    };
    let mut t = txn.open_table(REFRESH)?;
    let mut active = 0;
    for id in ids {
        let current: Option<RefreshToken> = t
            .get(id.as_str())?
            .map(|v| dec("refresh token", v.value()))
            .transpose()
            .map_err(Failure::Other)?;
        if let Some(mut tok) = current
            && tok.state != RefreshState::Revoked
        {
            if tok.state == RefreshState::Active {
                active += 1;
            }
            tok.state = RefreshState::Revoked;
            t.insert(id.as_str(), enc(&tok).as_slice())?;
        }
    }
    Ok(active)
}

/// What a transaction closure can fail with: any redb error (converted with
/// `?`), a conflict, or an already-formed error.
enum Failure {
    Redb(redb::Error),
    Conflict(String),
    Other(Error),
}

macro_rules! redb_failure {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::Redb(e.into())
            }
        }
    )*};
}
redb_failure!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl Failure {
    fn into_error(self, path: &Path) -> Error {
        match self {
            Failure::Redb(e) => Error::embedded(path, e),
            Failure::Conflict(what) => Error::Conflict { what },
            Failure::Other(e) => e,
        }
    }
}
