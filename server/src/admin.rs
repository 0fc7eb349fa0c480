//! Administration commands: `honeycell keys rotate|list|prune`,
//! `orgs set-tier`, `audit verify` (and `migrate`, offline only).
//!
//! [`run`] sends a command to the running server through its admin socket
//! (`admin_socket.rs`, `<data_dir>/admin.sock`) when one answers, so that
//! nothing needs stopping — the embedded store is one file that only the
//! server may open while it runs. When no server runs, it opens the store
//! itself on a runtime of its own ([`with_store`]), holding the data dir's
//! lock for the embedded store so that no server starts meanwhile. Both
//! ways run the same [`execute`] against the store and print the same
//! lines.
//!
//! Changes are audited like GraphQL ones, appended before the command
//! answers: `orgs set-tier` in the org's own log (`org.set_tier`), signing
//! key changes, which concern the whole server, in the log of
//! [`SERVER_AUDIT_ORG`] (`signing_key.rotate`, `signing_key.delete`). The
//! actor names the local user: `admin-socket:uid=1000(alice)` through the
//! server (the socket peer's credentials), `cli:uid=1000(alice)` offline.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use honeycell_control::{AuditDraft, KeyRingReload, Store, StoreKind, Tiers};
use honeycell_types::OrgId;
use serde::{Deserialize, Serialize};

use crate::Config;

/// The org whose audit log holds changes that concern the whole server
/// (signing keys). Read it with a token for this org
/// (`honeycell token --org _system --role admin`).
pub const SERVER_AUDIT_ORG: &str = "_system";

/// A command, as the CLI sends it to the admin socket (one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    KeysRotate,
    KeysList,
    KeysPrune,
    OrgsSetTier { org: String, tier: String },
    AuditVerify { org: Option<String> },
}

impl Command {
    /// The command line it came from, for logs and audit details.
    pub fn name(&self) -> &'static str {
        match self {
            Command::KeysRotate => "keys rotate",
            Command::KeysList => "keys list",
            Command::KeysPrune => "keys prune",
            Command::OrgsSetTier { .. } => "orgs set-tier",
            Command::AuditVerify { .. } => "audit verify",
        }
    }
}

/// What a command prints, one line each, and the exit status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub status: u8,
}

impl Outcome {
    fn ok(lines: Vec<String>) -> Outcome {
        Outcome { lines, status: 0 }
    }
}

/// What the commands take from the configuration of whoever runs them:
/// the server's own when it does.
pub(crate) struct Settings {
    pub tiers: Tiers,
    pub access_ttl: Duration,
    /// Fired after the signing keys change, so the cells reload them now.
    pub key_reload: Option<KeyRingReload>,
}

impl Settings {
    pub fn of(config: &Config, key_reload: Option<KeyRingReload>) -> anyhow::Result<Settings> {
        Ok(Settings {
            tiers: config.control.tiers(),
            access_ttl: config.control.token_ttls()?.0,
            key_reload,
        })
    }
}

/// Who runs a command, for the audit log.
pub(crate) struct Caller {
    /// e.g. `admin-socket:uid=1000(alice)`.
    pub actor: String,
    /// How it reached the store, e.g. `through the admin socket, pid 4242`.
    pub via: String,
}

impl Caller {
    fn record(&self, org: OrgId, action: &str, resource: String, detail: String) -> AuditDraft {
        AuditDraft {
            org,
            at_us: honeycell_types::now_us(),
            actor: self.actor.clone(),
            action: action.to_owned(),
            resource,
            result: "ok".to_owned(),
            trace_id: None,
            detail: Some(format!("{detail}; {}", self.via)),
        }
    }
}

/// `<kind>:uid=<uid>(<name>)`: the actor of a local user.
pub(crate) fn local_actor(kind: &str, uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{kind}:uid={uid}({name})"),
        None => format!("{kind}:uid={uid}"),
    }
}

/// The login name of `uid`, from the passwd database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero
        // ids) for getpwuid_r to fill in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local of the size passed; the
        // strings it writes into `buf` are read before `buf` goes.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded: pw_name points to a NUL-terminated
        // string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// Runs `command`: through the running server's admin socket when one
/// answers, else on the store directly.
pub fn run(config: &Config, command: &Command) -> anyhow::Result<Outcome> {
    config.validate()?;
    match crate::admin_socket::request(&config.data_dir, command)? {
        Some(reply) => reply,
        None => offline(config, command),
    }
}

/// `command` on the store, opened by this process.
fn offline(config: &Config, command: &Command) -> anyhow::Result<Outcome> {
    let settings = Settings::of(config, None)?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let caller = Caller {
        actor: local_actor("cli", uid),
        via: format!("directly on the store, pid {}", std::process::id()),
    };
    // The embedded store: no server may start while this process has its
    // file open (it would fail on redb's own lock, less clearly).
    let _lock = if config.control.store == StoreKind::Embedded {
        Some(lock_offline(&config.data_dir)?)
    } else {
        None
    };
    with_store(config, async |store| {
        execute(&store, &settings, &caller, command).await
    })
}

fn lock_offline(data_dir: &Path) -> anyhow::Result<crate::lock::DataDirLock> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("data_dir: cannot create {}", data_dir.display()))?;
    crate::lock::DataDirLock::acquire(data_dir).map_err(|e| match e {
        crate::lock::LockError::InUse { .. } => anyhow::Error::new(e).context(format!(
            "no server answered on {}, yet the data dir is locked: by a server starting or stopping (try again), one without an admin socket (its log says why; stop it first), or another admin command",
            data_dir.join(crate::admin_socket::SOCKET_FILE).display()
        )),
        e => e.into(),
    })
}

/// Validates the configuration, opens the store (applying migrations) on
/// a runtime of its own, and runs `work` with it.
fn with_store<T>(
    config: &Config,
    work: impl AsyncFnOnce(Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let (_, store) = config
            .control
            .prepare(&config.data_dir)
            .await
            .context("control plane store")?;
        work(store).await
    })
}

/// Opens the store, applying pending migrations; returns a line to print.
/// (Offline only: the server applies migrations itself when it starts.)
pub fn migrate(config: &Config) -> anyhow::Result<String> {
    with_store(config, async |store| {
        Ok(match &store {
            Store::Embedded(s) => format!(
                "embedded control plane store ready at {}",
                s.path().display()
            ),
            Store::Postgres(s) => format!(
                "PostgreSQL control plane store at schema version {} (TLS: {})",
                s.schema_version().await?,
                s.tls_mode()
            ),
        })
    })
}

/// Runs `command` against `store`: the one implementation of every admin
/// command, whoever opened the store.
pub(crate) async fn execute(
    store: &Store,
    settings: &Settings,
    caller: &Caller,
    command: &Command,
) -> anyhow::Result<Outcome> {
    match command {
        Command::KeysRotate => keys_rotate(store, settings, caller).await,
        Command::KeysList => keys_list(store).await,
        Command::KeysPrune => keys_prune(store, settings, caller).await,
        Command::OrgsSetTier { org, tier } => {
            orgs_set_tier(store, settings, caller, org, tier).await
        }
        Command::AuditVerify { org } => audit_verify(store, org.as_deref()).await,
    }
}

fn server_org() -> anyhow::Result<OrgId> {
    Ok(OrgId::new(SERVER_AUDIT_ORG)?)
}

/// Appends `drafts`; a change already made is named in the error.
async fn audit(store: &Store, drafts: Vec<AuditDraft>, done: &str) -> anyhow::Result<()> {
    store
        .append_audit(drafts)
        .await
        .with_context(|| format!("{done}, but its audit entry could not be written"))?;
    Ok(())
}

/// Verifies the audit hash chain of `org`, or of every org with entries:
/// one line per org; status 1 if any chain is broken.
async fn audit_verify(store: &Store, org: Option<&str>) -> anyhow::Result<Outcome> {
    let org = org.map(|o| OrgId::new(o).context("--org")).transpose()?;
    let orgs = match org {
        Some(o) => vec![o],
        None => store.audit_orgs().await?,
    };
    let mut out = Outcome::ok(Vec::with_capacity(orgs.len().max(1)));
    if orgs.is_empty() {
        out.lines.push("no audit entries yet".to_owned());
    }
    for org in orgs {
        match store.verify_audit(&org).await? {
            Ok(n) => out
                .lines
                .push(format!("{org}: {n} entries, hash chain intact")),
            Err(b) => {
                out.status = 1;
                out.lines
                    .push(format!("{org}: BROKEN at entry {}: {}", b.seq, b.reason));
            }
        }
    }
    Ok(out)
}

/// `honeycell keys rotate`: a new signing key; the others are retired (they
/// keep verifying until the tokens they signed expire).
async fn keys_rotate(
    store: &Store,
    settings: &Settings,
    caller: &Caller,
) -> anyhow::Result<Outcome> {
    let retired: Vec<String> = store
        .signing_keys()
        .await?
        .into_iter()
        .filter(|k| k.retired_at_us.is_none())
        .map(|k| k.kid)
        .collect();
    let kid = honeycell_control::rotate_signing_key(store).await?;
    let pickup = match &settings.key_reload {
        Some(reload) => {
            reload.fire();
            "this server signs with it from now on"
        }
        None => "running servers pick the new key up within control.signing_key_reload (30 s)",
    };
    let detail = if retired.is_empty() {
        "new signing key".to_owned()
    } else {
        format!("new signing key; retired {}", retired.join(", "))
    };
    audit(
        store,
        vec![caller.record(
            server_org()?,
            "signing_key.rotate",
            format!("signing_key/{kid}"),
            detail,
        )],
        &format!("new signing key {kid}"),
    )
    .await?;
    Ok(Outcome::ok(vec![format!(
        "new signing key {kid}; earlier keys retired: they verify until their tokens expire (control.access_token_ttl), then `honeycell keys prune` deletes them; {pickup}"
    )]))
}

/// `honeycell keys list`: one line per signing key.
async fn keys_list(store: &Store) -> anyhow::Result<Outcome> {
    Ok(Outcome::ok(
        store
            .signing_keys()
            .await?
            .iter()
            .map(|k| {
                format!(
                    "{} {} created {}{}",
                    k.kid,
                    k.alg,
                    rfc3339(k.created_at_us),
                    k.retired_at_us
                        .map(|t| format!(", retired {}", rfc3339(t)))
                        .unwrap_or_else(|| ", signing".to_owned())
                )
            })
            .collect(),
    ))
}

/// `honeycell keys prune`: deletes keys retired longer ago than the access
/// token lifetime (no token they signed can still be valid).
async fn keys_prune(
    store: &Store,
    settings: &Settings,
    caller: &Caller,
) -> anyhow::Result<Outcome> {
    let cutoff = honeycell_types::now_us() - settings.access_ttl.as_micros() as i64;
    let mut deleted = Vec::new();
    for k in store.signing_keys().await? {
        if k.retired_at_us.is_some_and(|t| t < cutoff) && store.delete_signing_key(&k.kid).await? {
            deleted.push(k.kid);
        }
    }
    if deleted.is_empty() {
        return Ok(Outcome::ok(vec![
            "no retired key is old enough to delete".to_owned(),
        ]));
    }
    if let Some(reload) = &settings.key_reload {
        reload.fire();
    }
    let org = server_org()?;
    let drafts = deleted
        .iter()
        .map(|kid| {
            caller.record(
                org.clone(),
                "signing_key.delete",
                format!("signing_key/{kid}"),
                "retired key deleted".to_owned(),
            )
        })
        .collect();
    let line = format!("deleted {}", deleted.join(", "));
    audit(store, drafts, &line).await?;
    Ok(Outcome::ok(vec![line]))
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}

/// `honeycell orgs set-tier ORG TIER`: records the org (if new) with `tier`.
async fn orgs_set_tier(
    store: &Store,
    settings: &Settings,
    caller: &Caller,
    org: &str,
    tier: &str,
) -> anyhow::Result<Outcome> {
    let org = OrgId::new(org).context("ORG")?;
    let tiers = &settings.tiers;
    if !tiers.names().any(|t| t == tier) {
        anyhow::bail!(
            "unknown tier {tier:?}; configured tiers: {}",
            tiers.names().collect::<Vec<_>>().join(", ")
        );
    }
    let was = store.org(&org).await?.map(|o| o.tier);
    if !store.set_org_tier(&org, tier).await? {
        store
            .create_org(&honeycell_control::Org {
                id: org.clone(),
                name: org.to_string(),
                tier: tier.to_owned(),
                created_at_us: honeycell_types::now_us(),
            })
            .await?;
    }
    let detail = match was {
        Some(w) => format!("tier {tier} (was {w})"),
        None => format!("tier {tier} (new org record)"),
    };
    audit(
        store,
        vec![caller.record(org.clone(), "org.set_tier", format!("org/{org}"), detail)],
        &format!("{org} is on tier {tier}"),
    )
    .await?;
    Ok(Outcome::ok(vec![format!(
        "{org} is on tier {tier}; running servers apply it within 5 s (each cell caches an org's tier that long)"
    )]))
}
