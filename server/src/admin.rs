//! Offline administration commands: `honeycell migrate` and
//! `honeycell audit verify`. Each opens the configured control-plane store
//! on a runtime of its own, does its work and exits; neither needs the
//! server to be running.

use anyhow::Context as _;
use honeycell_control::Store;
use honeycell_types::OrgId;

use crate::Config;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

/// Opens the store, applying pending migrations; returns a line to print.
pub fn migrate(config: &Config) -> anyhow::Result<String> {
    config.validate()?;
    runtime()?.block_on(async {
        let (_, store) = config
            .control
            .prepare(&config.data_dir)
            .await
            .context("control plane store")?;
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
    config.validate()?;
    let org = org.map(|o| OrgId::new(o).context("--org")).transpose()?;
    runtime()?.block_on(async {
        let (_, store) = config
            .control
            .prepare(&config.data_dir)
            .await
            .context("control plane store")?;
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
