//! Offline administration commands: `honeycell migrate`, `audit verify`,
//! `keys rotate|list|prune` and `orgs set-tier`. Each opens the configured
//! control-plane store on a runtime of its own ([`with_store`]), does its
//! work and exits; none needs the server to be running (with the embedded
//! store, the server must not be running: redb locks its file).

use anyhow::Context as _;
use honeycell_control::Store;
use honeycell_types::OrgId;

use crate::Config;

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

/// One org's verification result, as printed.
pub struct Verified {
    pub org: OrgId,
    pub result: Result<u64, honeycell_control::ChainBreak>,
}

/// Verifies the audit hash chain of `org`, or of every org with entries.
pub fn audit_verify(config: &Config, org: Option<&str>) -> anyhow::Result<Vec<Verified>> {
    let org = org.map(|o| OrgId::new(o).context("--org")).transpose()?;
    with_store(config, async |store| {
        let orgs = match org {
            Some(o) => vec![o],
            None => store.audit_orgs().await?,
        };
        let mut out = Vec::with_capacity(orgs.len());
        for org in orgs {
            let result = store.verify_audit(&org).await?;
            out.push(Verified { org, result });
        }
        Ok(out)
    })
}

/// `honeycell keys rotate`: a new signing key; the others are retired (they
/// keep verifying until the tokens they signed expire).
pub fn keys_rotate(config: &Config) -> anyhow::Result<String> {
    with_store(config, async |store| {
        let kid = honeycell_control::rotate_signing_key(&store).await?;
        Ok(format!(
            "new signing key {kid}; earlier keys retired: they verify until their tokens expire (control.access_token_ttl), then `honeycell keys prune` deletes them; running servers pick the new key up within 30 s"
        ))
    })
}

/// `honeycell keys list`: one line per signing key.
pub fn keys_list(config: &Config) -> anyhow::Result<Vec<String>> {
    with_store(config, async |store| {
        Ok(store
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
            .collect())
    })
}

/// `honeycell keys prune`: deletes keys retired longer ago than the access
/// token lifetime (no token they signed can still be valid).
pub fn keys_prune(config: &Config) -> anyhow::Result<String> {
    let (access_ttl, _) = config.control.token_ttls()?;
    with_store(config, async |store| {
        let cutoff = honeycell_types::now_us() - access_ttl.as_micros() as i64;
        let mut deleted = Vec::new();
        for k in store.signing_keys().await? {
            if k.retired_at_us.is_some_and(|t| t < cutoff)
                && store.delete_signing_key(&k.kid).await?
            {
                deleted.push(k.kid);
            }
        }
        Ok(if deleted.is_empty() {
            "no retired key is old enough to delete".to_owned()
        } else {
            format!("deleted {}", deleted.join(", "))
        })
    })
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}

/// `honeycell orgs set-tier ORG TIER`: records the org (if new) with `tier`.
pub fn orgs_set_tier(config: &Config, org: &str, tier: &str) -> anyhow::Result<String> {
    let org = OrgId::new(org).context("ORG")?;
    let tiers = config.control.tiers();
    if !tiers.names().any(|t| t == tier) {
        anyhow::bail!(
            "unknown tier {tier:?}; configured tiers: {}",
            tiers.names().collect::<Vec<_>>().join(", ")
        );
    }
    with_store(config, async |store| {
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
        Ok(format!(
            "{org} is on tier {tier}; running servers apply it within 5 s"
        ))
    })
}
